"""lvs_sync_daemon: the genl codec, the parser, the pure plan and the driver (fake kernel)."""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from pyalived.config import LoadResult
from pyalived.config.model import NOWHERE, Config, LvsSyncDaemon
from pyalived.config.parser import load
from pyalived.ipvs import genl
from pyalived.ipvs.genl import DAEMON_BACKUP, DAEMON_MASTER, SyncDaemon
from pyalived.ipvs.netlink import IpvsUnavailable
from pyalived.reload import ReloadPlan, plan_reload
from pyalived.vrrp.fsm import State, StateChanged
from pyalived.vrrp.lvs_sync import Start, Stop, SyncDaemonDriver, plan, wanted
from pyalived.vrrp.runtime import VrrpRuntime
from tests.unit.test_instance import Rig, instance_conf

T = TypeVar("T")

# ---- the generic-netlink codec --------------------------------------------------------

daemons = st.builds(
    SyncDaemon,
    state=st.sampled_from([DAEMON_MASTER, DAEMON_BACKUP]),
    interface=st.text("abcdefghij0123456789.-", min_size=1, max_size=15),
    sync_id=st.integers(0, 255),
    maxlen=st.integers(1, 65507),
    port=st.integers(1, 65535),
    ttl=st.integers(1, 255),
    group=st.one_of(
        st.integers(0xE0000000, 0xEFFFFFFF).map(IPv4Address),
        st.integers(0xFF << 120, 2**128 - 1).map(IPv6Address),
    ),
)


def reply_of(request: bytes) -> genl.Reply:
    """A request's bytes read back as a reply (the kernel's dump uses the same layout)."""
    return next(genl.split(request))


@given(daemons)
def test_a_new_daemon_request_decodes_to_the_same_daemon(d: SyncDaemon) -> None:
    assert genl.decode_daemon(reply_of(genl.new_daemon_request(30, d, 7))) == d


def test_the_new_daemon_request_is_laid_out_as_ip_vs_h_says() -> None:
    d = SyncDaemon(DAEMON_BACKUP, "eth1", 51, maxlen=1400, port=8849, ttl=2,
                   group=IPv4Address("239.18.0.81"))
    msg = genl.new_daemon_request(0x1E, d, 9)
    length, family, flags, seq, _pid = struct.unpack_from("=IHHII", msg)
    assert (length, family, seq) == (len(msg), 0x1E, 9)
    assert flags == genl.NLM_F_REQUEST | genl.NLM_F_ACK
    assert msg[16:20] == bytes([genl.CMD_NEW_DAEMON, 1, 0, 0])
    nest_len, nest_type = struct.unpack_from("=HH", msg, 20)
    assert nest_type == genl.ATTR_DAEMON and nest_len == len(msg) - 20
    expected = (
        struct.pack("=HHI", 8, 1, DAEMON_BACKUP)       # IPVS_DAEMON_ATTR_STATE
        + struct.pack("=HH", 9, 2) + b"eth1\0" + b"\0" * 3  # MCAST_IFN, NUL-ended
        + struct.pack("=HHI", 8, 3, 51)                # SYNC_ID
        + struct.pack("=HHH", 6, 4, 1400) + b"\0\0"    # SYNC_MAXLEN, u16 host order
        + struct.pack("=HH", 8, 5) + bytes([239, 18, 0, 81])  # MCAST_GROUP, network order
        + struct.pack("=HHH", 6, 7, 8849) + b"\0\0"    # MCAST_PORT, u16 host order
        + struct.pack("=HHB", 5, 8, 2) + b"\0" * 3     # MCAST_TTL, u8
    )
    assert msg[24:] == expected


def test_defaults_are_left_out_and_a_stop_carries_only_the_state() -> None:
    bare = genl.encode_daemon(SyncDaemon(DAEMON_MASTER, "eth0", 0))
    assert len(bare) == 8 + 12 + 8  # state, "eth0\0" padded, sync id
    stop = genl.del_daemon_request(0x1E, DAEMON_MASTER, 3)
    assert stop[16] == genl.CMD_DEL_DAEMON
    assert stop[20:] == struct.pack("=HH", 12, genl.ATTR_DAEMON) + struct.pack(
        "=HHI", 8, 1, DAEMON_MASTER)
    dump = genl.dump_daemons_request(0x1E, 4)
    assert dump[16] == genl.CMD_GET_DAEMON and len(dump) == 20


# ---- the parser -------------------------------------------------------------------------

INSTANCES = """
vrrp_instance VI_1 {
  interface eth0
  virtual_router_id 51
  priority 100
  virtual_ipaddress { 198.18.0.100/24 }
}
"""


def parse(tmp_path: Path, global_defs: str, instances: str = INSTANCES) -> LoadResult:
    path = tmp_path / "keepalived.conf"
    path.write_text(f"global_defs {{\n  {global_defs}\n}}\n{instances}")
    return load(str(path), interface_exists=lambda name: name in ("eth0", "eth1"))


def messages(result: LoadResult) -> list[str]:
    return [f"{d.location.line}: {d.severity.value}: {d.message}" for d in result.diagnostics]


def test_the_full_syntax(tmp_path: Path) -> None:
    r = parse(tmp_path, "lvs_sync_daemon eth1 inst VI_1 id 7 maxlen 1400 port 8849 ttl 2 "
                        "group 239.18.0.81")
    assert messages(r) == []
    syncd = r.config.global_defs.lvs_sync_daemon
    assert replace(syncd, location=NOWHERE) == LvsSyncDaemon(
        "eth1", "VI_1", 7, 1400, 8849, 2, IPv4Address("239.18.0.81"))
    assert syncd.location.line == 2


def test_the_old_positional_form_and_an_ipv6_group(tmp_path: Path) -> None:
    r = parse(tmp_path, "lvs_sync_daemon eth1 VI_1 group ff02::81")
    assert messages(r) == []
    syncd = r.config.global_defs.lvs_sync_daemon
    assert (syncd.instance, syncd.sync_id, syncd.group) == ("VI_1", None, IPv6Address("ff02::81"))
    r = parse(tmp_path, "lvs_sync_daemon eth1 VI_1 5")
    assert messages(r) == ['2: warning: lvs_sync_daemon: write "id" before the sync id']
    assert r.config.global_defs.lvs_sync_daemon.sync_id == 5


@pytest.mark.parametrize(("words", "message"), [
    ("", "lvs_sync_daemon needs an interface"),
    ("eth1 VI_1 id 256", "lvs_sync_daemon id 256 is outside [0, 255]"),
    ("eth1 VI_1 maxlen 0", "lvs_sync_daemon maxlen 0 is outside [1, 65507]"),
    ("eth1 VI_1 port 65536", "lvs_sync_daemon port 65536 is outside [1, 65535]"),
    ("eth1 VI_1 ttl 0", "lvs_sync_daemon ttl 0 is outside [1, 255]"),
    ("eth1 VI_1 ttl x", "lvs_sync_daemon ttl: 'x' is not a whole number"),
    ("eth1 VI_1 group 198.18.0.5", "lvs_sync_daemon group 198.18.0.5 is not multicast"),
    ("eth1 VI_1 group", "lvs_sync_daemon group needs a value"),
    ("eth1 VI_1 id 3 bogus 1", "lvs_sync_daemon: unknown option 'bogus'"),
    ("eth1 VI_1 bogus", "lvs_sync_daemon id: 'bogus' is not a whole number"),
    ("a_very_long_ifname0 VI_1", "lvs_sync_daemon interface name 'a_very_long_ifname0' is "
                                 "longer than 15 characters"),
    ("eth1 VI_9", "lvs_sync_daemon: no vrrp_instance VI_9"),
])
def test_bad_values_refuse_the_configuration(tmp_path: Path, words: str, message: str) -> None:
    r = parse(tmp_path, f"lvs_sync_daemon {words}")
    assert r.config is None
    assert f"2: error: {message}" in messages(r)


def test_without_an_instance_no_daemon_is_started(tmp_path: Path) -> None:
    r = parse(tmp_path, "lvs_sync_daemon eth1")
    assert messages(r) == ["2: warning: lvs_sync_daemon names no vrrp_instance: no sync daemon "
                           "is started (as keepalived 2.2.7)"]
    assert wanted(r.config.global_defs.lvs_sync_daemon, 51, State.MASTER) == {}


def test_a_missing_interface_is_a_warning(tmp_path: Path) -> None:
    r = parse(tmp_path, "lvs_sync_daemon eth9 VI_1")
    assert r.config is not None
    assert messages(r) == ["2: warning: lvs_sync_daemon: interface eth9 does not exist (yet); "
                           "the sync daemon is started once it does"]


def test_the_deprecated_instance_keyword(tmp_path: Path) -> None:
    inst = INSTANCES.replace("priority 100", "priority 100\n  lvs_sync_daemon_interface eth1")
    r = parse(tmp_path, "", inst)
    assert messages(r) == ["9: warning: (VI_1) lvs_sync_daemon_interface is deprecated; use "
                           "lvs_sync_daemon in global_defs"]
    syncd = r.config.global_defs.lvs_sync_daemon
    # keepalived 2.2.7 starts it with sync id 0 (measured), not the VRID
    assert (syncd.interface, syncd.instance, syncd.sync_id) == ("eth1", "VI_1", 0)
    r = parse(tmp_path, "lvs_sync_daemon eth0 VI_1", inst)
    assert r.config.global_defs.lvs_sync_daemon.interface == "eth0"
    assert "9: warning: (VI_1) lvs_sync_daemon is already given (interface eth0); ignored" in (
        messages(r))


# ---- the pure plan -------------------------------------------------------------------------

CONF = LvsSyncDaemon("eth1", "VI_1", maxlen=1400)
KERNEL_DEFAULTS = {"maxlen": 1472, "port": 8848, "ttl": 1, "group": IPv4Address("224.0.0.81")}


def running(state: int, **changes: object) -> SyncDaemon:
    """A daemon as the kernel reports it: every setting filled in."""
    fields: dict[str, object] = {**KERNEL_DEFAULTS, "maxlen": 1400, **changes}
    return SyncDaemon(state, str(fields.pop("interface", "eth1")),
                      int(fields.pop("sync_id", 51)), **fields)  # type: ignore[arg-type]


def test_the_daemon_follows_the_state_as_keepalived_does() -> None:
    backup = SyncDaemon(DAEMON_BACKUP, "eth1", 51, maxlen=1400)
    assert wanted(CONF, 51, State.INIT) == {DAEMON_BACKUP: backup}  # starting
    assert wanted(CONF, 51, State.BACKUP) == {DAEMON_BACKUP: backup}
    assert wanted(CONF, 51, State.FAULT) == {DAEMON_BACKUP: backup}
    assert wanted(CONF, 51, State.MASTER) == {DAEMON_MASTER: replace(backup, state=DAEMON_MASTER)}
    assert wanted(CONF, 51, None) == {}  # stopped
    assert wanted(replace(CONF, sync_id=0), 51, State.BACKUP)[DAEMON_BACKUP].sync_id == 0


def test_becoming_master_stops_the_backup_daemon_then_starts_the_master_one() -> None:
    master = wanted(CONF, 51, State.MASTER)
    steps = plan({DAEMON_BACKUP: running(DAEMON_BACKUP)}, master, {})
    assert steps == [Stop(DAEMON_BACKUP), Start(master[DAEMON_MASTER])]


def test_a_matching_daemon_left_by_a_killed_daemon_is_adopted() -> None:
    desired = wanted(CONF, 51, State.BACKUP)
    assert plan({DAEMON_BACKUP: running(DAEMON_BACKUP)}, desired, {}) == []


def test_a_leftover_that_does_not_match_is_replaced() -> None:
    desired = wanted(CONF, 51, State.BACKUP)
    current = {DAEMON_MASTER: running(DAEMON_MASTER),
               DAEMON_BACKUP: running(DAEMON_BACKUP, sync_id=9)}
    assert plan(current, desired, {}) == [
        Stop(DAEMON_MASTER), Stop(DAEMON_BACKUP), Start(desired[DAEMON_BACKUP])]


def test_a_reload_restarts_the_daemon_only_when_its_settings_changed() -> None:
    before = wanted(CONF, 51, State.MASTER)
    current = {DAEMON_MASTER: running(DAEMON_MASTER)}
    assert plan(current, before, before) == []
    # back to the kernel's default length: the report cannot tell, what was applied can
    after = wanted(replace(CONF, maxlen=None), 51, State.MASTER)
    assert plan(current, after, before) == [Stop(DAEMON_MASTER), Start(after[DAEMON_MASTER])]
    ttl = wanted(replace(CONF, ttl=3), 51, State.MASTER)
    assert plan(current, ttl, before) == [Stop(DAEMON_MASTER), Start(ttl[DAEMON_MASTER])]


# ---- the driver, on a fake kernel ------------------------------------------------------------


class FakeKernel:
    """The kernel's two daemon slots, with EEXIST / ESRCH as the kernel answers."""

    def __init__(self, failures: int = 0) -> None:
        self.running: dict[int, SyncDaemon] = {}
        self.calls: list[tuple[float, str]] = []
        self.failures = failures  # the next calls that fail with ENODEV
        self.closed = False

    def _note(self, what: str) -> None:
        self.calls.append((trio.current_time(), what))
        if self.failures:
            self.failures -= 1
            raise OSError(errno.ENODEV, "No such device")

    def daemons(self) -> list[SyncDaemon]:
        self._note("dump")
        return [replace(d, **{k: v for k, v in KERNEL_DEFAULTS.items()
                              if getattr(d, k) is None}) for d in self.running.values()]

    def start_daemon(self, daemon: SyncDaemon) -> None:
        self._note(f"start {daemon.state}")
        if daemon.state in self.running:
            raise OSError(errno.EEXIST, "File exists")
        self.running[daemon.state] = daemon

    def stop_daemon(self, state: int) -> None:
        self._note(f"stop {state}")
        if self.running.pop(state, None) is None:
            raise OSError(errno.ESRCH, "No such process")

    def close(self) -> None:
        self.closed = True


async def inline(fn: Callable[[], T]) -> T:
    """The fake kernel runs on the trio thread (a worker thread would race the mock clock)."""
    await trio.lowlevel.checkpoint()
    return fn()


class FakeInstance:
    name = "VI_1"


def change(old: State, new: State) -> StateChanged:
    return StateChanged(old, new, "test")


def states(kernel: FakeKernel) -> list[int]:
    return sorted(kernel.running)


async def test_the_driver_follows_the_instance_and_stops_at_the_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kernel = FakeKernel()
    driver = SyncDaemonDriver(lambda: kernel, inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        driver.configure(CONF, 51, State.INIT)
        await trio.sleep(1)
        assert states(kernel) == [DAEMON_BACKUP]
        driver.listener(FakeInstance(), change(State.BACKUP, State.MASTER))
        await trio.sleep(1)
        assert states(kernel) == [DAEMON_MASTER]
        assert kernel.running[DAEMON_MASTER].sync_id == 51  # the VRID by default
        driver.listener(FakeInstance(), change(State.MASTER, State.FAULT))
        await trio.sleep(1)
        assert states(kernel) == [DAEMON_BACKUP]
        other = FakeInstance()
        other.name = "VI_2"
        driver.listener(other, change(State.BACKUP, State.MASTER))  # not the followed one
        await trio.sleep(1)
        assert states(kernel) == [DAEMON_BACKUP]
        driver.listener(FakeInstance(), change(State.FAULT, State.MASTER))
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert kernel.running == {} and kernel.closed


async def test_nothing_configured_opens_nothing(autojump_clock: trio.testing.MockClock) -> None:
    opened: list[int] = []

    def open_kernel() -> FakeKernel:
        opened.append(1)
        return FakeKernel()

    driver = SyncDaemonDriver(open_kernel, inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        driver.configure(None, None, None)
        driver.configure(replace(CONF, instance=None), 51, State.MASTER)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert opened == []


async def test_a_failing_kernel_call_is_retried_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kernel = FakeKernel(failures=3)
    driver = SyncDaemonDriver(lambda: kernel, inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        start = trio.current_time()
        driver.configure(CONF, 51, State.BACKUP)
        await trio.sleep(20)
        assert [(t - start, what) for t, what in kernel.calls] == [
            (0, "dump"), (1, "dump"), (3, "dump"),  # failed: retried 1 s, then 2 s later
            (7, "dump"), (7, "start 2"),            # 4 s later it works
        ]
        assert states(kernel) == [DAEMON_BACKUP]
        nursery.cancel_scope.cancel()


async def test_a_state_change_during_the_backoff_is_tried_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kernel = FakeKernel(failures=1)
    driver = SyncDaemonDriver(lambda: kernel, inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        start = trio.current_time()
        driver.configure(CONF, 51, State.BACKUP)
        await trio.sleep(0.5)
        driver.listener(FakeInstance(), change(State.BACKUP, State.MASTER))
        await trio.sleep(5)
        assert [(t - start, what) for t, what in kernel.calls] == [
            (0, "dump"), (0.5, "dump"), (0.5, "start 1")]
        nursery.cancel_scope.cancel()


async def test_no_ipvs_yet_is_retried_too(autojump_clock: trio.testing.MockClock) -> None:
    kernel = FakeKernel()
    attempts: list[float] = []

    def open_kernel() -> FakeKernel:
        attempts.append(trio.current_time())
        if len(attempts) < 3:
            raise IpvsUnavailable("no IPVS")
        return kernel

    driver = SyncDaemonDriver(open_kernel, inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        start = trio.current_time()
        driver.configure(CONF, 51, State.BACKUP)
        await trio.sleep(10)
        assert [t - start for t in attempts] == [0, 1, 3]
        assert states(kernel) == [DAEMON_BACKUP]
        nursery.cancel_scope.cancel()


# ---- in the VRRP runtime ------------------------------------------------------------------


async def test_the_runtime_drives_the_daemon_from_the_instance_state_and_reloads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    kernel = FakeKernel()
    rig.ports.sync_daemons = lambda: kernel
    rig.ports.sync_blocking = inline
    inst_conf = instance_conf(priority=100)  # BACKUP, master after Master_Down_Interval
    config = Config(vrrp_instances=(inst_conf,))
    config = replace(config, global_defs=replace(config.global_defs, lvs_sync_daemon=CONF))
    async with trio.open_nursery() as nursery:
        rt = VrrpRuntime(config, rig.ports, rig.counters)
        await nursery.start(rt.run)
        await trio.sleep(1)
        assert states(kernel) == [DAEMON_BACKUP]
        await trio.sleep(3)  # 3 * 1 + (256 - 100) / 256 s: MASTER
        assert rt.instances[0].state is State.MASTER
        assert states(kernel) == [DAEMON_MASTER]
        calls = len(kernel.calls)
        # an unrelated change: the daemon is left alone
        await rt.apply(replace(config, vrrp_instances=(replace(inst_conf, priority=101),)),
                       _plan(rt, replace(config, vrrp_instances=(
                           replace(inst_conf, priority=101),))))
        await trio.sleep(1)
        assert kernel.calls[calls:] == []
        # a changed setting: restarted with it, still as master
        new = replace(CONF, ttl=4)
        reloaded = replace(config, vrrp_instances=(replace(inst_conf, priority=101),),
                           global_defs=replace(config.global_defs, lvs_sync_daemon=new))
        await rt.apply(reloaded, _plan(rt, reloaded))
        await trio.sleep(1)
        assert kernel.running[DAEMON_MASTER].ttl == 4
        assert [what for _t, what in kernel.calls[calls:]] == ["dump", "stop 1", "start 1"]
        # lvs_sync_daemon removed: stopped
        gone = replace(reloaded, global_defs=replace(reloaded.global_defs, lvs_sync_daemon=None))
        await rt.apply(gone, _plan(rt, gone))
        await trio.sleep(1)
        assert kernel.running == {}
        nursery.cancel_scope.cancel()
    assert rig.priorities()[-1] == 0  # the instance still stopped as usual


def _plan(rt: VrrpRuntime, new: Config) -> ReloadPlan:
    return plan_reload(rt.config, new)
