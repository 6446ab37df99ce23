"""Configuration reload: the pure plan, and the VRRP runtime applying it (fake ports,
trio's MockClock, exact times)."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from ipaddress import IPv4Interface

import pytest
import trio
import trio.testing

from pyalived.config import Diagnostic, LoadResult, Severity
from pyalived.config.model import (
    Authentication,
    AuthType,
    Config,
    InitialState,
    Location,
    TrackScriptRef,
    VirtualIP,
    VrrpScript,
    VrrpSyncGroup,
)
from pyalived.daemon import DaemonOptions, Loader, ThreadLoader, run_daemon
from pyalived.metrics import Metrics
from pyalived.reload import (
    VipChange,
    instance_key,
    plan_reload,
    reload_vip_change,
    vip_difference,
)
from pyalived.sdnotify import Notifier
from pyalived.vrrp import packet
from pyalived.vrrp.fsm import State
from pyalived.vrrp.instance import Instance
from pyalived.vrrp.runtime import VrrpPorts, VrrpRuntime
from tests.unit.test_instance import VIP, Rig, instance_conf

VIP2 = VirtualIP(IPv4Interface("198.18.0.101/24"))
VIP3 = VirtualIP(IPv4Interface("198.18.0.102/24"))
VIP4 = VirtualIP(IPv4Interface("198.18.0.103/24"))
VIP5 = VirtualIP(IPv4Interface("198.18.0.104/32"))
CHK = VrrpScript(name="chk", script="/bin/chk", interval=2.0, weight=-20)


def moved(conf_location_line: int) -> Location:
    return Location("/etc/keepalived/keepalived.conf", conf_location_line)


# ---- the plan ----------------------------------------------------------------


def test_identical_configs_and_moved_lines_keep_everything() -> None:
    a = instance_conf(location=moved(3), virtual_ipaddress=(replace(VIP, location=moved(9)),))
    b = instance_conf(location=moved(30), virtual_ipaddress=(replace(VIP, location=moved(40)),))
    plan = plan_reload(Config(vrrp_instances=(a,)), Config(vrrp_instances=(b,)))
    assert plan.kept == ((a, b),)
    assert plan.empty
    assert plan.summary() == (
        "VRRP instances: 1 kept, 0 updated, 0 restarted, 0 added, 0 removed"
    )


def test_instances_are_matched_by_vrid_and_interface_not_by_name() -> None:
    old = Config(vrrp_instances=(instance_conf(name="VI_1"),))
    new = Config(vrrp_instances=(instance_conf(name="web"),))
    plan = plan_reload(old, new)
    (upd,) = plan.updated
    assert upd.changed == {"name"}
    assert not upd.restart
    assert plan.added == () and plan.removed == ()


def test_other_vrid_or_interface_is_a_new_instance() -> None:
    old = Config(vrrp_instances=(instance_conf(),))
    new = Config(vrrp_instances=(instance_conf(virtual_router_id=52),
                                 instance_conf(name="VI_3", interface="eth1")))
    plan = plan_reload(old, new)
    assert [c.virtual_router_id for c in plan.added] == [52, 51]
    assert plan.removed == (old.vrrp_instances[0],)
    assert instance_key(plan.added[1]) == (51, 4, "eth1")


def test_vip_changes_are_updated_in_place_with_the_difference() -> None:
    old = Config(vrrp_instances=(instance_conf(virtual_ipaddress=(VIP, VIP2)),))
    new = Config(vrrp_instances=(instance_conf(
        virtual_ipaddress=(replace(VIP, location=moved(7)), VIP3)),))
    (upd,) = plan_reload(old, new).updated
    assert upd.changed == {"virtual_ipaddress"}
    assert not upd.restart
    assert upd.vips_added == (VIP3,)
    assert upd.vips_removed == (VIP2,)


def test_priority_advert_int_preempt_are_in_place() -> None:
    old = Config(vrrp_instances=(instance_conf(),))
    new = Config(vrrp_instances=(instance_conf(priority=120, advert_int=2.0, nopreempt=True),))
    (upd,) = plan_reload(old, new).in_place
    assert upd.changed == {"priority", "advert_int", "nopreempt"}


def test_identity_changes_restart_the_instance() -> None:
    base = instance_conf()
    for changed, expected in [
        (instance_conf(use_vmac=True), "use_vmac"),
        (instance_conf(authentication=Authentication(AuthType.AH, b"secret")),
         "authentication_type"),
        (instance_conf(priority=255), "address_owner"),
        (instance_conf(unicast_src_ip=VIP2.ip), "unicast_src_ip"),
    ]:
        plan = plan_reload(Config(vrrp_instances=(base,)), Config(vrrp_instances=(changed,)))
        (upd,) = plan.restarted
        assert expected in upd.changed


def test_password_change_alone_is_in_place() -> None:
    a = instance_conf(authentication=Authentication(AuthType.PASS, b"one"))
    b = instance_conf(authentication=Authentication(AuthType.PASS, b"two"))
    (upd,) = plan_reload(Config(vrrp_instances=(a,)), Config(vrrp_instances=(b,))).in_place
    assert upd.changed == {"authentication"}


def test_a_redefined_script_updates_exactly_its_users() -> None:
    user = instance_conf(track_script=(TrackScriptRef("chk"),))
    other = instance_conf(name="VI_2", virtual_router_id=52)
    old = Config(vrrp_scripts=(CHK,), vrrp_instances=(user, other))
    new = replace(old, vrrp_scripts=(replace(CHK, interval=5.0),))
    plan = plan_reload(old, new)
    assert [(u.new.name, u.changed) for u in plan.updated] == [("VI_1", frozenset({"tracking"}))]
    assert plan.kept == ((other, other),)
    assert plan.scripts_changed == ("chk",)


def test_sync_group_membership_change_restarts_its_members() -> None:
    a, b = instance_conf(), instance_conf(name="VI_2", virtual_router_id=52)
    old = Config(vrrp_instances=(a, b))
    new = replace(old, vrrp_sync_groups=(VrrpSyncGroup("G", ("VI_1", "VI_2")),))
    plan = plan_reload(old, new)
    assert [u.new.name for u in plan.restarted] == ["VI_1", "VI_2"]
    assert "restarted (sync_group)" in plan.summary()


# ---- the VIP work of an in-place reload ------------------------------------------


def test_vip_difference_ignores_locations_and_keeps_order() -> None:
    added, removed = vip_difference(
        (VIP, VIP2, VIP3), (VIP3, replace(VIP, location=moved(7)), VIP4, VIP5)
    )
    assert added == (VIP4, VIP5)
    assert removed == (VIP2,)


def test_vip_difference_counts_another_dev_or_label_as_another_vip() -> None:
    on_eth1 = replace(VIP, dev="eth1")
    labelled = replace(VIP2, label="eth0:web")
    added, removed = vip_difference((VIP, VIP2), (on_eth1, labelled))
    assert added == (on_eth1, labelled)
    assert removed == (VIP, VIP2)


def test_a_master_removes_the_dropped_vips_and_adds_and_announces_only_the_new() -> None:
    change = reload_vip_change((VIP, VIP2), (replace(VIP, location=moved(7)), VIP3), State.MASTER)
    assert change == VipChange(remove=(VIP2,), add=(VIP3,), announce=(VIP3,))


def test_a_master_whose_vips_only_moved_does_nothing() -> None:
    moved_vips = (replace(VIP, location=moved(7)), replace(VIP2, location=moved(8)))
    assert reload_vip_change((VIP, VIP2), moved_vips, State.MASTER) == VipChange()


def test_a_master_losing_every_vip_only_removes() -> None:
    assert reload_vip_change((VIP, VIP2), (), State.MASTER) == VipChange(remove=(VIP, VIP2))


@pytest.mark.parametrize("state", [State.BACKUP, State.FAULT, State.INIT])
def test_an_instance_that_is_not_master_holds_no_vips_and_does_nothing(state: State) -> None:
    assert reload_vip_change((VIP, VIP2), (VIP3,), state) == VipChange()


# ---- the runtime applying a plan ------------------------------------------------


@asynccontextmanager
async def runtime(rig: Rig, config: Config) -> AsyncIterator[tuple[VrrpRuntime, float]]:
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        rt = VrrpRuntime(config, rig.ports, rig.counters)
        await nursery.start(rt.run)
        yield rt, start
        nursery.cancel_scope.cancel()


def owner(**changes: object) -> Config:
    """A config whose instance is MASTER from t=0 (address owner), adverts at 0, 1, 2, ..."""
    conf = instance_conf(priority=255, state=InitialState.MASTER, **changes)
    return Config(vrrp_instances=(conf,))


def advert_times(rig: Rig, start: float, vrid: int | None = None) -> list[float]:
    return [
        s.time - start for s in rig.sent()
        if vrid is None or packet.parse_datagram(s.datagram).advert.vrid == vrid
    ]


def state_of(inst: Instance) -> State:
    return inst.state


async def reload(rt: VrrpRuntime, config: Config) -> None:
    await rt.apply(config, plan_reload(rt.config, config))


async def test_adding_a_vip_to_a_master_announces_only_the_new_vip(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    async with runtime(rig, owner()) as (rt, start):
        (inst,) = rt.instances
        await trio.sleep(2.5)
        calls_before = len(rig.addresses.calls)
        await reload(rt, owner(virtual_ipaddress=(VIP, VIP2)))
        assert rt.instances == [inst]  # the same object keeps running
        await trio.sleep(2.0)
        assert inst.state is State.MASTER
        assert advert_times(rig, start) == [0, 1, 2, 3, 4]  # no extra advert
        garps = [(g.time - start, g.ips) for g in rig.sockets.garp["eth0"].sent]
        assert garps == [(0, (VIP.ip,)), (2.5, (VIP2.ip,))]
        assert [(c.op, c.vips) for c in rig.addresses.calls[calls_before:]] == [
            ("add", (VIP2,))]
        last = packet.parse_datagram(rig.sent()[-1].datagram).advert
        assert last.addresses == (VIP.ip, VIP2.ip)
        assert rig.counters.transitions[("VI_1", "MASTER")] == 1


async def test_removing_a_vip_from_a_master_deletes_only_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    async with runtime(rig, owner(virtual_ipaddress=(VIP, VIP2))) as (rt, _start):
        await trio.sleep(1.5)
        await reload(rt, owner(virtual_ipaddress=(VIP,)))
        assert rig.addresses.calls[-1].op == "remove"
        assert rig.addresses.calls[-1].vips == (VIP2,)
        assert rig.addresses.present == {("eth0", "198.18.0.100/24")}
        assert len(rig.sockets.garp["eth0"].sent) == 1  # the start-up burst only


async def test_adding_an_instance_leaves_the_first_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    first = owner()
    second = instance_conf(name="VI_2", virtual_router_id=52, virtual_ipaddress=(VIP3,))
    async with runtime(rig, first) as (rt, start):
        (inst,) = rt.instances
        await trio.sleep(1.5)
        await reload(rt, Config(vrrp_instances=(*first.vrrp_instances, second)))
        assert rt.instances[0] is inst
        await trio.sleep(5.0)
        assert advert_times(rig, start, vrid=51) == [0, 1, 2, 3, 4, 5, 6]
        garps = [(g.time - start, g.ips) for g in rig.sockets.garp["eth0"].sent]
        # VI_1's two start-up bursts (0 and garp_master_delay 5 s), nothing at the reload
        assert [t for t, ips in garps if ips == (VIP.ip,)] == [0, 5]
        assert rt.instances[1].name == "VI_2"
        assert rt.instances[1].state is State.MASTER  # alone: Master_Down after 3.6 s
        assert inst.state is State.MASTER


async def test_a_removed_master_sends_priority_zero_and_drops_its_vips(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    other = instance_conf(name="VI_2", virtual_router_id=52, virtual_ipaddress=(VIP3,))
    config = Config(vrrp_instances=(*owner().vrrp_instances, other))
    async with runtime(rig, config) as (rt, start):
        await trio.sleep(1.5)
        await reload(rt, Config(vrrp_instances=(other,)))
        assert [i.name for i in rt.instances] == ["VI_2"]
        sent = [packet.parse_datagram(s.datagram).advert for s in rig.sent()]
        assert [(a.vrid, a.priority) for a in sent][-1] == (51, 0)
        assert advert_times(rig, start, vrid=51) == [0, 1, 1.5]
        assert ("eth0", "198.18.0.100/24") not in rig.addresses.present
        await trio.sleep(3.0)
        assert advert_times(rig, start, vrid=51) == [0, 1, 1.5]


async def test_advert_int_change_applies_from_the_next_advert(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    async with runtime(rig, owner()) as (rt, start):
        await trio.sleep(1.5)
        await reload(rt, owner(advert_int=2.0))
        await trio.sleep(5.0)
        assert advert_times(rig, start) == [0, 1, 2, 4, 6]
        assert rt.instances[0].state is State.MASTER


async def test_priority_change_of_a_backup_keeps_its_state_and_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    async with runtime(rig, Config(vrrp_instances=(instance_conf(),))) as (rt, _start):
        (inst,) = rt.instances
        await trio.sleep(1.0)
        await reload(rt, Config(vrrp_instances=(instance_conf(priority=120),)))
        assert inst.machine.effective_priority == 120
        await trio.sleep(3 + (256 - 90) / 256 - 1.0 - 0.001)
        assert inst.state is State.BACKUP and rig.sent() == []
        await trio.sleep(0.002)  # the Master_Down timer armed at start is kept
        assert state_of(inst) is State.MASTER
        assert packet.parse_datagram(rig.sent()[0].datagram).advert.priority == 120


async def test_auth_type_change_restarts_the_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    async with runtime(rig, owner()) as (rt, _start):
        (old,) = rt.instances
        await trio.sleep(1.5)
        await reload(rt, owner(authentication=Authentication(AuthType.AH, b"secret")))
        (new,) = rt.instances
        assert new is not old
        assert rig.priorities()[-1] == 0  # the old one's graceful stop (IP protocol 112)
        await trio.sleep(0.5)
        assert new.state is State.MASTER
        assert rig.sent(proto=packet.AH_PROTO)


async def test_a_changed_script_weight_is_reapplied(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    rig.scripts.results["/bin/chk"] = 1  # failing
    conf = instance_conf(priority=100, track_script=(TrackScriptRef("chk"),))
    old = Config(vrrp_scripts=(CHK,), vrrp_instances=(conf,))
    async with runtime(rig, old) as (rt, start):
        (inst,) = rt.instances
        await trio.sleep(0.5)
        assert inst.machine.effective_priority == 80
        await reload(rt, replace(old, vrrp_scripts=(replace(CHK, weight=-30),)))
        await trio.sleep(0.5)
        assert inst.machine.effective_priority == 70
        runs = [r.time - start for r in rig.scripts.runs]
        assert runs == [0, 0.5]  # the redefined script's tracker restarted at once
        assert rt.instances == [inst]


# ---- the daemon's SIGHUP --------------------------------------------------------


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__(None)
        self.sent: list[dict[str, str | int]] = []

    def notify(self, fields: Mapping[str, str | int]) -> bool:
        self.sent.append(dict(fields))
        return True


@dataclass
class FakeLoader:
    """Stands for re-reading the file: returns whatever the test put in ``result``."""

    result: LoadResult

    async def __call__(self) -> LoadResult:
        return self.result


async def test_sighup_applies_a_valid_config_and_refuses_an_invalid_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()

    @asynccontextmanager
    async def fake_ports(config: Config) -> AsyncIterator[VrrpPorts]:
        yield rig.ports

    notifier = RecordingNotifier()
    metrics = Metrics(rig.counters)
    loader = FakeLoader(LoadResult(owner(virtual_ipaddress=(VIP, VIP2)), (), 0))
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_daemon(
                owner(), DaemonOptions(), ports=fake_ports, counters=rig.counters,
                notifier=notifier, metrics=metrics, loader=loader, task_status=task_status,
            )
        )
        start = trio.current_time()
        (inst,) = metrics.instances
        await trio.sleep(1.5)
        os.kill(os.getpid(), signal.SIGHUP)
        await trio.sleep(1.0)
        assert metrics.reload_success
        assert [g.ips for g in rig.sockets.garp["eth0"].sent][-1] == (VIP2.ip,)
        assert notifier.sent[-2]["RELOADING"] == 1
        assert notifier.sent[-1]["READY"] == 1
        bad = Diagnostic(Severity.ERROR, Location("/etc/keepalived/keepalived.conf", 7),
                         "unknown keyword")
        loader.result = LoadResult(None, (bad,), 1)
        os.kill(os.getpid(), signal.SIGHUP)
        await trio.sleep(1.0)
        assert not metrics.reload_success
        assert metrics.instances == (inst,)
        assert inst.state is State.MASTER
        assert rig.addresses.present == {
            ("eth0", "198.18.0.100/24"), ("eth0", "198.18.0.101/24")}
        assert advert_times(rig, start) == [0, 1, 2, 3]  # nothing extra
        os.kill(os.getpid(), signal.SIGTERM)


class TimedNotifier(RecordingNotifier):
    """Records when each READY/RELOADING was sent, in trio time."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[float, str]] = []

    def notify(self, fields: Mapping[str, str | int]) -> bool:
        self.times.extend((trio.current_time(), k) for k in fields if k in ("READY", "RELOADING"))
        return super().notify(fields)


@asynccontextmanager
async def daemon_with(
    rig: Rig, loader: Loader, notifier: Notifier, metrics: Metrics, timeout: float = 30.0
) -> AsyncIterator[trio.Nursery]:
    @asynccontextmanager
    async def fake_ports(config: Config) -> AsyncIterator[VrrpPorts]:
        yield rig.ports

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_daemon(
                owner(), DaemonOptions(reload_timeout=timeout), ports=fake_ports,
                counters=rig.counters, notifier=notifier, metrics=metrics, loader=loader,
                task_status=task_status,
            )
        )
        yield nursery


async def test_a_hung_read_is_refused_after_its_timeout_and_blocks_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The config lives on a mount that stopped answering: the read never returns.

    The reload is refused at the timeout, the running instance is untouched, a
    second SIGHUP while the read still hangs is refused at once, and once the
    mount answers again the next SIGHUP applies the new config.
    """
    rig = Rig()
    notifier = TimedNotifier()
    metrics = Metrics(rig.counters)
    mount_back = threading.Event()
    read_started = threading.Event()
    good = LoadResult(owner(virtual_ipaddress=(VIP, VIP2)), (), 0)

    def read() -> LoadResult:
        read_started.set()
        mount_back.wait()
        return good

    loader = ThreadLoader(read, "keepalived.conf")
    async with daemon_with(rig, loader, notifier, metrics):
        (inst,) = metrics.instances
        start = trio.current_time()
        await trio.sleep(2.5)
        os.kill(os.getpid(), signal.SIGHUP)
        # Virtual time stands still until the read has really begun in its thread.
        autojump_clock.autojump_threshold = math.inf
        while not read_started.is_set():
            await trio.to_thread.run_sync(time.sleep, 0.01)
        autojump_clock.autojump_threshold = 0
        await trio.sleep(40)
        assert [(round(t - start, 3), k) for t, k in notifier.times[-2:]] == [
            (2.5, "RELOADING"), (32.5, "READY")]
        assert not metrics.reload_success
        assert inst.state is State.MASTER and metrics.instances == (inst,)
        assert advert_times(rig, start) == list(range(43))  # not one advert late or missing
        os.kill(os.getpid(), signal.SIGHUP)  # the mount still hangs: refused at once
        await trio.sleep(1)
        assert [round(t - start, 3) for t, _k in notifier.times[-2:]] == [42.5, 42.5]
        assert not metrics.reload_success
        await trio.to_thread.run_sync(mount_back.set)
        while loader.busy:  # the abandoned read returns in its own (real) time
            await trio.to_thread.run_sync(time.sleep, 0.01)
        # From here the read takes real time, which the clock must not jump over.
        autojump_clock.autojump_threshold = 0.5
        os.kill(os.getpid(), signal.SIGHUP)
        await trio.sleep(1)
        assert metrics.reload_success
        assert rig.addresses.present == {
            ("eth0", "198.18.0.100/24"), ("eth0", "198.18.0.101/24")}
        os.kill(os.getpid(), signal.SIGTERM)


async def test_sigterm_during_a_hung_reload_stops_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    never = threading.Event()
    metrics = Metrics(rig.counters)
    try:
        async with daemon_with(rig, ThreadLoader(never.wait, "k.conf"), Notifier(None),
                               metrics, timeout=1000):
            await trio.sleep(1.5)
            os.kill(os.getpid(), signal.SIGHUP)
            await trio.sleep(3)
            stop_at = trio.current_time()
            os.kill(os.getpid(), signal.SIGTERM)
        assert trio.current_time() - stop_at < 0.1
        assert rig.priorities()[-1] == 0  # the graceful stop advert (RFC 3768 §6.4.3)
        assert rig.addresses.present == set()
    finally:
        never.set()


async def test_a_reader_that_raises_refuses_the_reload_and_the_daemon_runs_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    metrics = Metrics(rig.counters)
    raised: list[type[BaseException]] = [RecursionError, MemoryError, UnicodeError]

    async def loader() -> LoadResult:
        raise raised.pop(0)("from the reader")

    async with daemon_with(rig, loader, Notifier(None), metrics):
        (inst,) = metrics.instances
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGHUP)
            await trio.sleep(1)
            assert not metrics.reload_success
        assert not raised
        assert inst.state is State.MASTER and rig.addresses.present
        os.kill(os.getpid(), signal.SIGTERM)


async def test_sighups_during_a_reload_make_exactly_one_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    metrics = Metrics(rig.counters)
    reads: list[float] = []

    async def slow_loader() -> LoadResult:
        reads.append(trio.current_time())
        await trio.sleep(5)
        return LoadResult(owner(), (), 0)

    async with daemon_with(rig, slow_loader, Notifier(None), metrics):
        start = trio.current_time()
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(4):
            await trio.sleep(1)
            os.kill(os.getpid(), signal.SIGHUP)
        await trio.sleep(20)
        assert [round(t - start, 3) for t in reads] == [0, 5]
        os.kill(os.getpid(), signal.SIGTERM)
