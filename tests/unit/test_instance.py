"""The trio driver of VRRP instances, with fake ports under trio's MockClock."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface

import pytest
import trio
import trio.testing

from pyalived.config.model import (
    Authentication,
    AuthType,
    Config,
    GlobalDefs,
    InitialState,
    Notify,
    ScriptUser,
    TrackInterface,
    TrackScriptRef,
    VirtualIP,
    VrrpInstance,
    VrrpScript,
    VrrpSyncGroup,
)
from pyalived.daemon import DaemonOptions, run_daemon
from pyalived.vrrp import packet
from pyalived.vrrp.counters import VrrpCounters
from pyalived.vrrp.fsm import State
from pyalived.vrrp.instance import Instance
from pyalived.vrrp.runtime import VrrpPorts, run_vrrp
from tests.unit.fakes import (
    FakeAddressManager,
    FakeLinkWatcher,
    FakeScriptRunner,
    FakeSocketFactory,
    FakeVmacManager,
    SentDatagram,
)

MASTER_DOWN_90 = 3 + (256 - 90) / 256  # RFC 3768 §6.1: 3 * Advertisement_Interval + Skew_Time
PRIMARY = IPv4Address("198.18.0.11")
PEER = IPv4Address("198.18.0.12")
VIP = VirtualIP(IPv4Interface("198.18.0.100/24"))
GROUP = IPv4Address("224.0.0.18")


def instance_conf(**changes: object) -> VrrpInstance:
    base = VrrpInstance(
        name="VI_1",
        interface="eth0",
        virtual_router_id=51,
        priority=90,
        advert_int=1.0,
        virtual_ipaddress=(VIP,),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class Rig:
    """Fake ports plus helpers to look at what the instance did."""

    def __init__(self, links_up: Sequence[str] = ("eth0",)) -> None:
        self.sockets = FakeSocketFactory()
        self.addresses = FakeAddressManager()
        self.vmac = FakeVmacManager()
        self.links = FakeLinkWatcher(up=links_up)
        self.scripts = FakeScriptRunner()
        self.counters = VrrpCounters()
        self.ports = VrrpPorts(
            sockets=self.sockets,
            addresses=self.addresses,
            vmac=self.vmac,
            links=self.links,
            scripts=self.scripts,
            primary_ip=lambda ifname: PRIMARY,
        )

    def sent(self, ifname: str = "eth0", proto: int = packet.VRRP_PROTO) -> list[SentDatagram]:
        sock = self.sockets.advert.get((ifname, proto))
        return list(sock.sent) if sock else []

    def priorities(self, ifname: str = "eth0", proto: int = packet.VRRP_PROTO) -> list[int]:
        return [packet.parse_datagram(s.datagram).advert.priority for s in self.sent(ifname, proto)]

    def inject(self, datagram: bytes, ifname: str = "eth0", proto: int = packet.VRRP_PROTO) -> None:
        self.sockets.advert[(ifname, proto)].inject(datagram)


def state(inst: Instance) -> State:
    return inst.state


def advert_from(src: IPv4Address, priority: int, **changes: object) -> bytes:
    fields: dict[str, object] = {
        "vrid": 51,
        "priority": priority,
        "advert_int": 1,
        "addresses": (VIP.ip,),
    }
    fields.update(changes)
    return packet.build_datagram(src, GROUP, packet.Advert(**fields))  # type: ignore[arg-type]


@asynccontextmanager
async def running(
    rig: Rig, config: Config
) -> AsyncIterator[tuple[trio.Nursery, list[Instance], float]]:
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        instances = await nursery.start(run_vrrp, config, rig.ports, rig.counters)
        yield nursery, instances, start
        nursery.cancel_scope.cancel()


async def test_backup_alone_becomes_master_with_exact_timing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    config = Config(vrrp_instances=(instance_conf(),))
    async with running(rig, config) as (_, (inst,), start):
        assert state(inst) is State.BACKUP
        await trio.sleep(MASTER_DOWN_90 - 0.001)
        assert state(inst) is State.BACKUP
        assert rig.sent() == []
        await trio.sleep(0.001 + 5.5)
        assert state(inst) is State.MASTER
        sent = rig.sent()
        times = [s.time - start for s in sent]
        assert times == [MASTER_DOWN_90 + k for k in range(6)]
        assert all(s.dst == GROUP for s in sent)
        first = packet.parse_datagram(sent[0].datagram)
        assert first.src == PRIMARY
        assert first.advert.priority == 90
        assert first.advert.addresses == (VIP.ip,)
        garps = rig.sockets.garp["eth0"].sent
        assert [(g.time - start, g.ips, g.count) for g in garps] == [
            (MASTER_DOWN_90, (VIP.ip,), 5),
            (MASTER_DOWN_90 + 5.0, (VIP.ip,), 5),
        ]
        assert [(c.time - start, c.op, c.default_dev) for c in rig.addresses.calls] == [
            (0, "remove", "eth0"),  # leftovers of an earlier run, as keepalived does
            (MASTER_DOWN_90, "add", "eth0"),
        ]
        assert ("eth0", "198.18.0.100/24") in rig.addresses.present
    # the stop: priority-0 advert, VIPs removed, sockets closed
    assert rig.priorities()[-1] == 0
    assert rig.addresses.calls[-1].op == "remove"
    assert rig.addresses.present == set()
    assert rig.sockets.advert[("eth0", packet.VRRP_PROTO)].closed
    assert rig.counters.transitions[("VI_1", "MASTER")] == 1


async def test_advert_and_garp_go_out_before_the_vips_are_added(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    seen_at_add: list[tuple[int, int]] = []
    original_add = rig.addresses.add

    async def add(default_dev: str, vips: Sequence[VirtualIP]) -> None:
        seen_at_add.append((len(rig.sent()), len(rig.sockets.garp["eth0"].sent)))
        await original_add(default_dev, vips)

    rig.addresses.add = add  # type: ignore[method-assign]
    async with running(rig, Config(vrrp_instances=(instance_conf(),))):
        await trio.sleep(4)
    assert seen_at_add == [(1, 1)]


async def test_higher_priority_master_keeps_us_backup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    async with running(rig, Config(vrrp_instances=(instance_conf(),))) as (_, (inst,), _start):
        for _ in range(10):
            rig.inject(advert_from(PEER, 100))
            await trio.sleep(1)
        assert state(inst) is State.BACKUP
        assert rig.sent() == []
        assert rig.counters.adverts_received["VI_1"] == 10
        # the master goes silent: Master_Down_Interval after its last advert
        last = trio.current_time() - 1
        await trio.sleep(5)
        assert state(inst) is State.MASTER
        assert rig.sent()[0].time == pytest.approx(last + MASTER_DOWN_90, abs=1e-9)


async def test_malformed_datagrams_are_counted_and_never_reach_the_machine(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    conf = instance_conf(authentication=Authentication(AuthType.PASS, b"secret"))
    good = packet.build_datagram(
        PEER,
        GROUP,
        packet.Advert(vrid=51, priority=200, advert_int=1, addresses=(VIP.ip,)),
        auth=AuthType.PASS,
        auth_key=b"secret",
    )
    async with running(rig, Config(vrrp_instances=(conf,))) as (_, (inst,), start):
        for _ in range(3):
            rig.inject(b"\x45\x00")  # truncated
            rig.inject(advert_from(PEER, 200, vrid=52))  # not ours
            rig.inject(
                packet.build_datagram(
                    PEER,
                    GROUP,
                    packet.Advert(vrid=51, priority=200, advert_int=1, addresses=(VIP.ip,)),
                    auth=AuthType.PASS,
                    auth_key=b"wrong",
                )
            )
            bad_ttl = bytearray(good)
            bad_ttl[8] = 64
            rig.inject(bytes(bad_ttl))
            await trio.sleep(1)
        # none of the higher-priority adverts counted: the backup took over on time
        await trio.sleep(1)
        assert state(inst) is State.MASTER
        assert rig.sent()[0].time - start == MASTER_DOWN_90
    assert rig.counters.adverts_received["VI_1"] == 0
    assert rig.counters.rx_errors["truncated"] == 3
    assert rig.counters.rx_errors["unknown_vrid"] == 3
    assert sum(rig.counters.rx_errors.values()) == 12
    per_instance = sum(n for (name, _), n in rig.counters.instance_rx_errors.items())
    assert per_instance == 3  # the wrong password, caught by verify


async def test_notify_scripts_get_keepalived_arguments(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    conf = instance_conf(
        notify=Notify(master="/etc/to_master.sh 'a b'", stop="/etc/stop.sh", generic="/etc/n.sh")
    )
    async with running(rig, Config(vrrp_instances=(conf,))):
        await trio.sleep(4)
    argvs = [n.argv for n in rig.scripts.notified]
    # entering BACKUP at start is notified too (no notify_backup script here)
    assert argvs[0] == ("/etc/n.sh", "INSTANCE", "VI_1", "BACKUP", "90")
    assert argvs[1:3] == [
        ("/etc/to_master.sh", "a b"),
        ("/etc/n.sh", "INSTANCE", "VI_1", "MASTER", "90"),
    ]
    assert argvs[3:] == [("/etc/stop.sh",), ("/etc/n.sh", "INSTANCE", "VI_1", "STOP", "90")]


async def test_failing_weight_zero_script_means_fault(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    healthy = True
    rig.scripts.results["/bin/chk"] = lambda: 0 if healthy else 1
    conf = instance_conf(track_script=(TrackScriptRef("chk"),))
    config = Config(
        vrrp_scripts=(VrrpScript("chk", "/bin/chk", interval=1.0),),
        vrrp_instances=(conf,),
    )
    async with running(rig, config) as (_, (inst,), _start):
        await trio.sleep(5)
        assert state(inst) is State.MASTER
        healthy = False
        await trio.sleep(1.5)
        assert state(inst) is State.FAULT
        assert rig.addresses.present == set()
        healthy = True
        await trio.sleep(1)
        assert state(inst) is not State.FAULT


async def test_negative_weight_lowers_the_advertised_priority(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    rig.scripts.results["/bin/chk"] = 1
    conf = instance_conf(track_script=(TrackScriptRef("chk", weight=-20),))
    config = Config(
        vrrp_scripts=(VrrpScript("chk", "/bin/chk", interval=1.0),),
        vrrp_instances=(conf,),
    )
    async with running(rig, config) as (_, (inst,), _start):
        await trio.sleep(6)
        assert state(inst) is State.MASTER
        assert set(rig.priorities()) == {70}


async def test_tracked_interface_down_means_fault(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    async with running(rig, Config(vrrp_instances=(instance_conf(),))) as (_, (inst,), _start):
        await trio.sleep(5)
        assert state(inst) is State.MASTER
        rig.links.set("eth0", False)
        await trio.testing.wait_all_tasks_blocked()
        assert state(inst) is State.FAULT


async def test_unicast_peers_each_get_the_advert(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig()
    peers = (IPv4Address("198.18.0.12"), IPv4Address("198.18.0.13"))
    conf = instance_conf(
        unicast_src_ip=IPv4Address("198.18.0.21"), unicast_peer=peers, state=InitialState.BACKUP
    )
    async with running(rig, Config(vrrp_instances=(conf,))):
        await trio.sleep(4)
    sent = rig.sent()
    assert [s.dst for s in sent[:2]] == list(peers)
    assert {packet.parse_datagram(s.datagram).src for s in sent} == {IPv4Address("198.18.0.21")}


async def test_vmac_carries_adverts_garps_and_vips(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig()
    own_dev = VirtualIP(IPv4Interface("198.18.1.5/24"), dev="eth1")
    conf = instance_conf(use_vmac=True, virtual_ipaddress=(VIP, own_dev))
    async with running(rig, Config(vrrp_instances=(conf,))):
        assert rig.vmac.present == {"vrrp.51": ("eth0", 51)}
        await trio.sleep(4)
        assert rig.sent("vrrp.51")
        assert rig.sockets.garp["vrrp.51"].sent[0].ips == (VIP.ip,)
        assert rig.sockets.garp["eth1"].sent[0].ips == (own_dev.ip,)
        assert {c.default_dev for c in rig.addresses.calls} == {"vrrp.51"}
    assert rig.vmac.present == {}
    assert [c[1] for c in rig.vmac.calls] == ["create", "delete"]


async def test_vmac_xmit_base_sends_adverts_from_the_base_interface(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    conf = instance_conf(use_vmac=True, vmac_xmit_base=True)
    async with running(rig, Config(vrrp_instances=(conf,))):
        await trio.sleep(4)
        assert rig.sent("eth0")
        assert rig.sent("vrrp.51") == []


async def test_two_instances_share_one_receiver(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig()
    a = instance_conf()
    b = instance_conf(name="VI_2", virtual_router_id=52, priority=90)
    async with running(rig, Config(vrrp_instances=(a, b))) as (_, (ia, ib), _start):
        for _ in range(6):
            rig.inject(advert_from(PEER, 100, vrid=52))
            await trio.sleep(1)
        assert state(ia) is State.MASTER
        assert state(ib) is State.BACKUP
    assert list(rig.sockets.advert) == [("eth0", packet.VRRP_PROTO)]


async def test_sigterm_stops_the_daemon_gracefully(autojump_clock: trio.testing.MockClock) -> None:
    rig = Rig()

    @asynccontextmanager
    async def fake_ports(config: Config) -> AsyncIterator[VrrpPorts]:
        yield rig.ports

    config = Config(vrrp_instances=(instance_conf(),))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_daemon(
                    config,
                    DaemonOptions(),
                    ports=fake_ports,
                    counters=rig.counters,
                    task_status=task_status,
                )
            )
            await trio.sleep(5)
            assert rig.addresses.present
            os.kill(os.getpid(), signal.SIGHUP)  # acknowledged, ignored
            await trio.sleep(1)
            os.kill(os.getpid(), signal.SIGTERM)
    assert rig.priorities()[-1] == 0
    assert rig.addresses.present == set()


async def test_sync_group_members_follow_each_other(autojump_clock: trio.testing.MockClock) -> None:
    """A member held BACKUP by a master keeps its group BACKUP; a fault takes the group down."""
    rig = Rig(links_up=("eth0", "eth1"))
    a = instance_conf(track_interface=(TrackInterface("eth1"),))
    b = instance_conf(name="VI_2", virtual_router_id=52)
    group = VrrpSyncGroup("G1", ("VI_1", "VI_2"), notify=Notify(generic="/etc/group.sh"))
    config = Config(vrrp_instances=(a, b), vrrp_sync_groups=(group,))
    async with running(rig, config) as (_, (ia, ib), _start):
        # VI_2 hears a higher-priority master, VI_1 hears nobody: keepalived keeps
        # VI_1 BACKUP too, since the group cannot be MASTER as a whole.
        for _ in range(6):
            rig.inject(advert_from(PEER, 100, vrid=52))
            await trio.sleep(1)
        assert (state(ia), state(ib)) == (State.BACKUP, State.BACKUP)
        # The master of VRID 52 goes away: VI_2's timer expires and the group follows.
        await trio.sleep(MASTER_DOWN_90 + 0.01)
        assert (state(ia), state(ib)) == (State.MASTER, State.MASTER)
        # A fault on one member takes every member to FAULT.
        rig.links.set("eth1", False)
        await trio.testing.wait_all_tasks_blocked()
        assert (state(ia), state(ib)) == (State.FAULT, State.FAULT)
        assert rig.addresses.present == set()
    group_calls = [n.argv for n in rig.scripts.notified if n.argv[0] == "/etc/group.sh"]
    assert [c[1:] for c in group_calls] == [
        ("GROUP", "G1", "BACKUP"),
        ("GROUP", "G1", "MASTER"),
        ("GROUP", "G1", "FAULT"),
        ("GROUP", "G1", "STOP"),
    ]


async def test_notify_lines_run_as_their_own_user_else_script_user(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An instance's and a sync group's notify lines with ``USER [GROUP]`` run as that
    user; the others as global_defs' script_user and script_group."""
    rig = Rig()
    a = instance_conf(notify=Notify(master="/etc/m.sh", master_user=ScriptUser("nobody"),
                                    backup="/etc/b.sh", generic="/etc/n.sh",
                                    generic_user=ScriptUser("daemon", "adm")))
    b = instance_conf(name="VI_2", virtual_router_id=52)
    group = VrrpSyncGroup("G1", ("VI_1", "VI_2"), notify=Notify(
        master="/etc/g.sh", master_user=ScriptUser("operator", "users"), backup="/etc/gb.sh"))
    defs = GlobalDefs(script_user="keepalived_script", script_group="staff")
    config = Config(global_defs=defs, vrrp_instances=(a, b), vrrp_sync_groups=(group,))
    async with running(rig, config):
        await trio.sleep(MASTER_DOWN_90 + 1)
    runs = {(n.argv[0], n.argv[3] if n.argv[0] == "/etc/n.sh" else "", n.user, n.group)
            for n in rig.scripts.notified}
    assert runs == {
        ("/etc/b.sh", "", "keepalived_script", "staff"),
        ("/etc/m.sh", "", "nobody", None),
        ("/etc/n.sh", "BACKUP", "daemon", "adm"),
        ("/etc/n.sh", "MASTER", "daemon", "adm"),
        ("/etc/n.sh", "STOP", "daemon", "adm"),
        ("/etc/gb.sh", "", "keepalived_script", "staff"),
        ("/etc/g.sh", "", "operator", "users"),
    }
