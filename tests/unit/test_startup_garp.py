"""Start-up settings and gratuitous ARP pacing: parsing and the driver's exact times.

The parser cases follow keepalived 2.2.7 (``keepalived -t`` and its SIGUSR1
dump, quoted in each case); the driver runs on fake ports under trio's
autojump clock, so every time asserted is exact.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest
import trio
import trio.testing

from pyalived.config import load as load_file
from pyalived.config.model import (
    Config,
    GarpGroup,
    GlobalDefs,
    InitialState,
    Notify,
    VirtualIP,
)
from pyalived.config.parser import SystemInterfaces
from pyalived.vrrp import packet
from pyalived.vrrp.compile import build_tracking
from pyalived.vrrp.fsm import State
from pyalived.vrrp.garp_pacing import GarpPacer
from tests.unit.fakes import EveryScriptRuns
from tests.unit.test_instance import (
    MASTER_DOWN_90,
    PEER,
    VIP,
    Rig,
    advert_from,
    instance_conf,
    running,
)

# ----------------------------------------------------------------------------- config


def load(tmp_path: Path, text: str, exists: object = None) -> tuple[Config | None, list[str]]:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    res = load_file(str(conf), interface_exists=exists or (lambda name: name == "eth0"),
                    scripts=EveryScriptRuns())
    return res.config, [f"{d.location.line}: {d.severity.name.lower()}: {d.message}"
                        for d in res.diagnostics]


INSTANCE = (
    "vrrp_instance A {\n    interface eth0\n    virtual_router_id 5\n"
    "    virtual_ipaddress {\n        198.18.0.100\n    }\n}\n"
)


def test_vrrp_min_garp_sets_one_garp_and_no_second_burst(tmp_path: Path) -> None:
    # keepalived's dump with vrrp_min_garp: delay 0, repeat 1, refresh 0.
    config, diags = load(tmp_path, "global_defs {\n    vrrp_min_garp\n}\n" + INSTANCE)
    assert config is not None and diags == []
    (inst,) = config.vrrp_instances
    assert (inst.garp_master_delay, inst.garp_master_repeat, inst.garp_master_refresh) == (
        0.0, 1, 0.0)


@pytest.mark.parametrize("order", ["before", "after"])
def test_explicit_garp_settings_win_over_vrrp_min_garp(tmp_path: Path, order: str) -> None:
    # keepalived: "vrrp_garp_master_repeat 3 / vrrp_garp_master_delay 7" give 3 and 7
    # whether they come before or after vrrp_min_garp.
    explicit = "    vrrp_garp_master_repeat 3\n    vrrp_garp_master_delay 7\n"
    body = ("    vrrp_min_garp\n" + explicit) if order == "after" else (
        explicit + "    vrrp_min_garp\n")
    config, diags = load(tmp_path, "global_defs {\n" + body + "}\n" + INSTANCE)
    assert config is not None and diags == []
    (inst,) = config.vrrp_instances
    assert (inst.garp_master_delay, inst.garp_master_repeat) == (7.0, 3)


def test_garp_interval_defaults_from_vrrp_garp_interval(tmp_path: Path) -> None:
    second = INSTANCE.replace("A {", "B {").replace("id 5", "id 6").replace(
        "    interface eth0\n", "    interface eth0\n    garp_interval 0.2\n")
    config, diags = load(tmp_path, "global_defs {\n    vrrp_garp_interval 0.05\n}\n"
                         + INSTANCE + second)
    assert config is not None, diags
    assert [i.garp_interval for i in config.vrrp_instances] == [0.05, 0.2]


def test_garp_groups_are_read_and_checked_as_keepalived_does(tmp_path: Path) -> None:
    text = (
        "garp_group {\n    garp_interval 0.05\n    gna_interval 0.01\n    interface eth0\n}\n"
        "garp_group {\n    garp_interval 0.1\n    interfaces {\n        eth1\n        eth0\n"
        "    }\n}\n"
        "garp_group {\n    interface eth2\n}\n"  # keepalived: "does not have any delay set"
        "garp_group {\n    gna_interval -1\n    interface eth3\n}\n"
    )
    config, diags = load(tmp_path, text + INSTANCE)
    assert diags == [
        "6: warning: garp_group already specified for eth0; ignored",
        "13: warning: garp_group does not have any delay set; ignored",
        "17: error: gna_interval -1 is outside [0, 4294.97]",
        "16: warning: garp_group does not have any delay set; ignored",
    ]
    assert config is None  # the bad number refuses the file
    config, diags = load(tmp_path, text.split("garp_group {\n    interface eth2")[0] + INSTANCE)
    assert config is not None, diags
    assert config.global_defs.garp_groups == (
        GarpGroup(("eth0",), 0.05, 0.01, config.global_defs.garp_groups[0].location),
        GarpGroup(("eth1",), 0.1, 0.0, config.global_defs.garp_groups[1].location),
    )


def test_startup_and_shutdown_scripts_with_their_timeouts(tmp_path: Path) -> None:
    text = (
        "global_defs {\n    enable_script_security\n"
        "    startup_script \"/usr/local/bin/up.sh --now\" nobody nogroup\n"
        "    shutdown_script /usr/local/bin/down.sh\n"
        "    startup_script_timeout 3\n}\n"
    )
    config, diags = load(tmp_path, text + INSTANCE)
    assert config is not None and diags == []
    start, stop = config.global_defs.startup_script, config.global_defs.shutdown_script
    assert start is not None and stop is not None
    assert (start.command, start.user, start.group, start.timeout) == (
        "/usr/local/bin/up.sh --now", "nobody", "nogroup", 3.0)
    assert (stop.command, stop.user, stop.timeout) == ("/usr/local/bin/down.sh", None, 10.0)


def test_bad_startup_values_are_errors_at_their_line(tmp_path: Path) -> None:
    # keepalived: "startup_script_timeout '0' must be in [1, 1000]",
    # "vrrp_startup_delay '5000' is invalid" (its range ends at 4294.967295)
    text = ("global_defs {\n    startup_script_timeout 0\n    shutdown_script_timeout 1001\n"
            "    vrrp_startup_delay 5000\n    dynamic_interfaces sometimes\n}\n")
    config, diags = load(tmp_path, text + INSTANCE)
    assert config is None
    assert diags == [
        "2: error: startup_script_timeout 0 is outside [1, 1000]",
        "3: error: shutdown_script_timeout 1001 is outside [1, 1000]",
        "4: error: vrrp_startup_delay 5000 is outside [0.001, 4294.97]",
        "5: warning: unknown dynamic_interfaces option 'sometimes'; ignored",
    ]


def test_a_missing_interface_is_refused_unless_dynamic_interfaces(tmp_path: Path) -> None:
    late = INSTANCE.replace("interface eth0", "interface late0")
    config, diags = load(tmp_path, late)
    assert config is None
    assert diags == ["2: error: interface late0 of vrrp_instance A does not exist"]
    # keepalived -t says nothing of it with dynamic_interfaces, wherever global_defs is.
    config, diags = load(tmp_path, late + "global_defs {\n    dynamic_interfaces\n}\n")
    assert config is not None and diags == []
    assert config.global_defs.dynamic_interfaces
    assert not config.global_defs.dynamic_interfaces_allow_changes
    config, diags = load(tmp_path, "global_defs {\n    dynamic_interfaces allow_if_changes\n}\n"
                         + late)
    assert config is not None and config.global_defs.dynamic_interfaces_allow_changes


def test_vrrp_startup_delay_is_read(tmp_path: Path) -> None:
    config, diags = load(tmp_path, "global_defs {\n    vrrp_startup_delay 5.5\n}\n" + INSTANCE)
    assert config is not None and diags == []
    assert config.global_defs.vrrp_startup_delay == 5.5
    assert GlobalDefs().vrrp_startup_delay == 0.0


def test_net_namespace_is_a_top_level_keyword(tmp_path: Path) -> None:
    config, diags = load(tmp_path, "net_namespace blue\n" + INSTANCE)
    assert config is not None and diags == []
    assert config.global_defs.net_namespace == "blue"
    # Inside global_defs keepalived does not know it either ("Unknown keyword").
    config, diags = load(tmp_path, "global_defs {\n    net_namespace blue\n}\n" + INSTANCE)
    assert diags == ["2: warning: unknown keyword 'net_namespace' in global_defs; block skipped"] \
        or diags[0].startswith("2: warning:")
    assert config is not None and config.global_defs.net_namespace is None


def test_a_net_namespace_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    # keepalived: "Failed to open /run/netns/NAME", and it exits.
    config, diags = load(tmp_path, "net_namespace pyalived-none-such\n" + INSTANCE,
                         SystemInterfaces())
    assert config is None
    assert diags[0] == ("1: error: network namespace pyalived-none-such does not exist "
                        "(/run/netns/pyalived-none-such)")


# ----------------------------------------------------------------------------- the pacer


def test_the_pacer_spaces_a_burst_and_the_next_one_on_the_same_interface() -> None:
    pacer = GarpPacer()
    key, interval = pacer.pace("eth0", arp=True, own=0.1)
    assert (key, interval) == ("if:eth0", 0.1)
    assert pacer.reserve(key, arp=True, interval=interval, n=3, now=10.0) == pytest.approx(
        [10.0, 10.1, 10.2])
    # A second burst asked for at 10.05 waits for the first one's last frame + interval.
    assert pacer.reserve(key, arp=True, interval=interval, n=2, now=10.05) == pytest.approx(
        [10.3, 10.4])
    # NAs have their own pace; another interface too.
    assert pacer.reserve(key, arp=False, interval=0.1, n=1, now=10.05) == [10.05]
    assert pacer.reserve("if:eth1", arp=True, interval=0.1, n=1, now=10.05) == [10.05]
    # Long after, a burst starts at once again; no interval, no pacing.
    assert pacer.reserve(key, arp=True, interval=0.1, n=1, now=20.0) == [20.0]
    assert pacer.reserve(key, arp=True, interval=0.0, n=2, now=20.0) == [20.0, 20.0]


def test_a_garp_group_shares_one_pace_over_its_interfaces() -> None:
    pacer = GarpPacer([GarpGroup(("eth0", "eth1"), garp_interval=0.5, gna_interval=0.25)])
    k0, i0 = pacer.pace("eth0", arp=True, own=0.0)
    k1, i1 = pacer.pace("eth1", arp=True, own=0.0)
    assert k0 == k1 and i0 == i1 == 0.5
    assert pacer.pace("eth1", arp=False, own=0.0)[1] == 0.25
    assert pacer.pace("eth2", arp=True, own=0.01) == ("if:eth2", 0.01)
    assert pacer.reserve(k0, arp=True, interval=i0, n=2, now=1.0) == [1.0, 1.5]
    assert pacer.reserve(k1, arp=True, interval=i1, n=1, now=1.0) == [2.0]


# ----------------------------------------------------------------------------- the driver

VIP2 = VirtualIP(IPv4Interface("198.18.0.101/24"))


def garp_times(rig: Rig, ifname: str, start: float) -> list[tuple[float, tuple[IPv4Address, ...],
                                                                  int]]:
    return [(round(g.time - start, 9), g.ips, g.count) for g in rig.sockets.garp[ifname].sent]


async def test_garp_interval_spaces_the_gratuitous_arps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    conf = instance_conf(virtual_ipaddress=(VIP, VIP2), garp_master_repeat=2,
                         garp_interval=0.1, garp_master_delay=5.0)
    async with running(rig, Config(vrrp_instances=(conf,))) as (_, (inst,), start):
        await trio.sleep(MASTER_DOWN_90 + 1)
        assert inst.state is State.MASTER
        t = round(MASTER_DOWN_90, 9)
        assert garp_times(rig, "eth0", start) == [
            (t, (VIP.ip,), 1), (round(t + 0.1, 9), (VIP.ip,), 1),
            (round(t + 0.2, 9), (VIP2.ip,), 1), (round(t + 0.3, 9), (VIP2.ip,), 1),
        ]
        # The second burst, garp_master_delay later, is spaced the same way.
        await trio.sleep(5)
        second = garp_times(rig, "eth0", start)[4:]
        assert [s[0] for s in second] == pytest.approx([t + 5 + k * 0.1 for k in range(4)])
        assert rig.counters.garps_sent[conf.name] == 8


async def test_instances_on_one_interface_share_its_pace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    a = instance_conf(name="A", garp_master_repeat=3, garp_interval=0.2)
    b = instance_conf(name="B", virtual_router_id=52, virtual_ipaddress=(VIP2,),
                      garp_master_repeat=3, garp_interval=0.2)
    async with running(rig, Config(vrrp_instances=(a, b))) as (_, instances, start):
        await trio.sleep(MASTER_DOWN_90 + 2)
        assert [i.state for i in instances] == [State.MASTER, State.MASTER]
        t = MASTER_DOWN_90
        sent = garp_times(rig, "eth0", start)
        # Both became MASTER at the same moment; the GARPs of the second in line
        # queue behind the first's.
        assert [s[0] for s in sent] == pytest.approx([t + k * 0.2 for k in range(6)])
        ips = [s[1] for s in sent]
        assert {ips[0], ips[3]} == {(VIP.ip,), (VIP2.ip,)}
        assert ips == [ips[0]] * 3 + [ips[3]] * 3


async def test_a_garp_group_paces_across_its_interfaces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig(links_up=("eth0", "eth1"))
    a = instance_conf(name="A", garp_master_repeat=2)
    b = instance_conf(name="B", interface="eth1", virtual_ipaddress=(VIP2,),
                      garp_master_repeat=2)
    group = GarpGroup(("eth0", "eth1"), garp_interval=0.25)
    config = Config(GlobalDefs(garp_groups=(group,)), vrrp_instances=(a, b))
    async with running(rig, config) as (_, _instances, start):
        await trio.sleep(MASTER_DOWN_90 + 2)
        t = MASTER_DOWN_90
        # Whichever instance comes first takes the first two slots of the group.
        eth0 = [s[0] for s in garp_times(rig, "eth0", start)]
        eth1 = [s[0] for s in garp_times(rig, "eth1", start)]
        first, second = sorted([eth0, eth1])
        assert first + second == pytest.approx([t + k * 0.25 for k in range(4)])


async def test_paced_garps_stop_when_the_instance_is_no_longer_master(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    conf = instance_conf(garp_master_repeat=5, garp_interval=0.5)
    async with running(rig, Config(vrrp_instances=(conf,))) as (_, (inst,), _start):
        await trio.sleep(MASTER_DOWN_90 + 0.6)  # two GARPs out, three due
        assert inst.state is State.MASTER
        rig.sockets.advert[("eth0", 112)].inject(advert_from(PEER, 200))
        await trio.sleep(1)  # the three left were due over this second
        assert inst.state is State.BACKUP
        assert len(rig.sockets.garp["eth0"].sent) == 2


async def test_vrrp_min_garp_sends_one_garp_per_vip_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    config, diags = load(tmp_path, "global_defs {\n    vrrp_min_garp\n}\n" + INSTANCE.replace(
        "interface eth0\n", "interface eth0\n    priority 90\n"))
    assert config is not None, diags
    rig = Rig()
    async with running(rig, config) as (_, (inst,), _start):
        await trio.sleep(MASTER_DOWN_90 + 30)
        assert inst.state is State.MASTER
        assert [(g.ips, g.count) for g in rig.sockets.garp["eth0"].sent] == [
            ((IPv4Address("198.18.0.100"),), 1)]


async def test_startup_delay_holds_back_the_instances(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # keepalived 2.2.7, vrrp_startup_delay 3, alone on the LAN: MASTER at 3 s plus
    # Master_Down_Interval; the owner at 3 s.
    rig = Rig()
    backup = instance_conf(name="B")
    owner = instance_conf(name="O", virtual_router_id=52, priority=255,
                          state=InitialState.MASTER, virtual_ipaddress=(VIP2,))
    config = Config(GlobalDefs(vrrp_startup_delay=3.0), vrrp_instances=(backup, owner))
    async with running(rig, config) as (_, (b, o), start):
        await trio.sleep_until(start + 3 - 0.001)
        assert rig.sockets.advert == {}  # nothing opened, nothing sent
        assert (b.state, o.state) == (State.INIT, State.INIT)
        await trio.sleep_until(start + 3)
        await trio.testing.wait_all_tasks_blocked()
        assert o.state is State.MASTER
        assert b.state is State.BACKUP
        sent = rig.sockets.advert[("eth0", 112)].sent
        assert [s.time - start for s in sent] == pytest.approx([3.0])
        await trio.sleep_until(start + 3 + MASTER_DOWN_90 - 0.001)
        assert b.state is State.BACKUP
        await trio.sleep(0.002)
        assert b.state is State.MASTER


async def test_a_reload_during_the_startup_delay_is_what_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    conf = instance_conf()
    config = Config(GlobalDefs(vrrp_startup_delay=2.0), vrrp_instances=(conf,))
    async with running(rig, config) as (_, (inst,), start):
        await trio.sleep(1)
        new = replace(conf, priority=255, state=InitialState.MASTER)
        await inst.reconfigure(new, build_tracking(replace(config, vrrp_instances=(new,)), new))
        await trio.sleep_until(start + 2 - 0.001)
        assert inst.state is State.INIT
        await trio.sleep_until(start + 2)
        await trio.testing.wait_all_tasks_blocked()
        assert inst.state is State.MASTER  # as the owner it now is, at the end of the delay


async def test_a_missing_interface_holds_the_instance_in_fault_until_it_appears(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from pyalived.vrrp.runtime import run_vrrp

    rig = Rig(links_up=())
    present: dict[str, int] = {}
    rig.ports.interface_index = present.get
    conf = instance_conf(interface="late0", notify=Notify(fault="/bin/fault"))
    config = Config(GlobalDefs(dynamic_interfaces=True), vrrp_instances=(conf,))
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        (inst,) = await nursery.start(run_vrrp, config, rig.ports, rig.counters)
        assert inst.state is State.FAULT
        assert [c.argv for c in rig.scripts.notified] == [("/bin/fault",)]
        await trio.sleep(60)
        assert inst.state is State.FAULT and rig.sockets.advert == {}
        # The interface is created (down, then up): BACKUP, then MASTER on its own.
        present["late0"] = 7
        rig.links.set("late0", False)
        await trio.sleep(0.5)
        assert inst.state is State.FAULT  # it exists, but is down
        appeared = trio.current_time()
        rig.links.set("late0", True)
        await trio.testing.wait_all_tasks_blocked()
        assert inst.state is State.BACKUP
        await trio.sleep(MASTER_DOWN_90 + 0.1)
        assert inst.state is State.MASTER
        sent = rig.sockets.advert[("late0", 112)].sent
        assert sent[0].time - appeared == pytest.approx(MASTER_DOWN_90, abs=1e-6)
        assert start < appeared
        # Deleted: FAULT (the link watcher reports a deleted link as down).
        del present["late0"]
        rig.links.set("late0", False)
        await trio.testing.wait_all_tasks_blocked()
        assert inst.state is State.FAULT
        # Created again, under another index: the old sockets belong to the deleted
        # link, so new ones are opened; the instance hears a master on them.
        old_sock = rig.sockets.advert[("late0", 112)]
        present["late0"] = 8
        rig.links.set("late0", True)
        await trio.testing.wait_all_tasks_blocked()
        assert inst.state is State.BACKUP
        new_sock = rig.sockets.advert[("late0", 112)]
        assert new_sock is not old_sock and old_sock.closed
        for _ in range(10):
            new_sock.inject(advert_from(PEER, 200))
            await trio.sleep(1)
        assert inst.state is State.BACKUP
        assert new_sock.sent == []
        recreated = trio.current_time() - 1  # the master's last advert
        await trio.sleep(MASTER_DOWN_90 + 0.1)
        assert inst.state is State.MASTER
        assert new_sock.sent[0].time - recreated == pytest.approx(MASTER_DOWN_90, abs=1e-6)
        nursery.cancel_scope.cancel()


async def test_a_recreated_interface_waits_for_its_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from pyalived.vrrp.runtime import run_vrrp

    rig = Rig()
    present = {"eth0": 2}
    rig.ports.interface_index = present.get
    addresses = {"eth0": IPv4Address("198.18.0.11")}

    def primary(ifname: str) -> IPv4Address:
        if ifname not in addresses:
            raise OSError(f"interface {ifname} has no IPv4 address")
        return addresses[ifname]

    rig.ports.primary_ip = primary
    conf = instance_conf(priority=255, state=InitialState.MASTER)
    config = Config(GlobalDefs(dynamic_interfaces=True), vrrp_instances=(conf,))
    async with trio.open_nursery() as nursery:
        (inst,) = await nursery.start(run_vrrp, config, rig.ports, rig.counters)
        await trio.testing.wait_all_tasks_blocked()
        assert inst.state is State.MASTER
        del present["eth0"], addresses["eth0"]
        rig.links.set("eth0", False)
        await trio.testing.wait_all_tasks_blocked()
        assert inst.state is State.FAULT
        present["eth0"] = 9  # back, up, but without its address for a while
        rig.links.set("eth0", True)
        await trio.sleep(10)
        assert inst.state is State.FAULT
        addresses["eth0"] = IPv4Address("198.18.0.12")  # another one, even
        # Seen at the next poll, at most a second later: out of FAULT.  (The poll
        # may fall on the very instant this sleep ends, in either order: hence the
        # margin.)
        await trio.sleep(1.01)
        assert inst.state is State.BACKUP
        await trio.sleep(3 + 1 / 256 + 0.01)  # even the owner waits Master_Down after FAULT
        assert inst.state is State.MASTER
        sent = rig.sockets.advert[("eth0", 112)].sent
        assert packet.parse_datagram(sent[-1].datagram).src == IPv4Address("198.18.0.12")
        nursery.cancel_scope.cancel()


async def test_without_dynamic_interfaces_nothing_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    rig.ports.interface_index = lambda name: None  # not consulted
    async with running(rig, Config(vrrp_instances=(instance_conf(),))) as (_, (inst,), _s):
        assert inst.state is State.BACKUP
