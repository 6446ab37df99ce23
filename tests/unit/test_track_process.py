"""Tracked processes: matching, quorum and delays, the connector codec, the watcher."""

from __future__ import annotations

import os
import secrets
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from pyalived.config.model import ParamMatch, TrackProcess
from pyalived.vrrp import proc_events
from pyalived.vrrp.proc_events import (
    PROC_EVENT_COMM,
    PROC_EVENT_EXEC,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    PROC_EVENT_NONE,
    Overflow,
    ProcessWatcher,
    ProcEvent,
    decode_events,
    encode_listen,
    read_proc,
    scan_proc,
)
from pyalived.vrrp.track_process import ProcessTable, ProcInfo, matches
from pyalived.vrrp.tracking import InstanceTracking, Tracked, process_effect


def spec(**kw: object) -> TrackProcess:
    base: dict[str, object] = {"name": "p", "process": "nginx"}
    base.update(kw)
    return TrackProcess(**base)  # type: ignore[arg-type]


# ---- matching ------------------------------------------------------------------


def test_match_by_name_is_exact_and_uses_comm() -> None:
    assert matches(spec(), ProcInfo("nginx"))
    assert not matches(spec(), ProcInfo("nginx-debug"))
    assert not matches(spec(process="ngin"), ProcInfo("nginx"))  # not pgrep's regex
    # comm holds 15 characters: a longer name is compared by its first 15.
    assert matches(spec(process="a-very-long-daemon-name"), ProcInfo("a-very-long-dae"))


def test_full_command_matches_argv0() -> None:
    s = spec(process="/usr/sbin/nginx", full_command=True)
    assert matches(s, ProcInfo("nginx", ("/usr/sbin/nginx", "-g", "daemon off;")))
    assert not matches(s, ProcInfo("nginx", ("nginx",)))
    assert not matches(s, ProcInfo("nginx"))  # no command line (kernel thread)


@pytest.mark.parametrize(
    ("match", "params", "argv", "result"),
    [
        (ParamMatch.EXACT, ("a", "b"), ("x", "a", "b"), True),
        (ParamMatch.EXACT, ("a", "b"), ("x", "a", "b", "c"), False),
        (ParamMatch.EXACT, (), ("x",), True),  # param_match alone: no parameters
        (ParamMatch.EXACT, (), ("x", "a"), False),
        (ParamMatch.PARTIAL, ("a",), ("x", "a", "b"), True),
        (ParamMatch.PARTIAL, ("a", "b"), ("x", "a"), False),
        (ParamMatch.PARTIAL, ("a",), ("x", "ab"), False),
        (ParamMatch.INITIAL, ("a", "b"), ("x", "a", "bcd", "e"), True),
        (ParamMatch.INITIAL, ("a", "b"), ("x", "ab", "b"), False),
        (ParamMatch.NONE, (), ("x", "anything"), True),
    ],
)
def test_parameters(match: ParamMatch, params: tuple[str, ...], argv: tuple[str, ...],
                    result: bool) -> None:
    s = spec(process="x", params=params, param_match=match)
    assert matches(s, ProcInfo("x", argv)) is result


@pytest.mark.parametrize(
    ("up", "weight", "reverse", "effect"),
    [
        (True, 0, False, (False, 0)), (False, 0, False, (True, 0)),
        (True, 0, True, (True, 0)), (False, 0, True, (False, 0)),
        (True, 10, False, (False, 10)), (False, 10, False, (False, 0)),
        (True, 10, True, (False, -10)),
        (False, -10, False, (False, -10)), (True, -10, False, (False, 0)),
        (False, -10, True, (False, 10)),
    ],
)
def test_process_effect(up: bool, weight: int, reverse: bool, effect: tuple[bool, int]) -> None:
    assert process_effect(up, weight, reverse) == effect


def test_processes_in_the_verdict() -> None:
    t = InstanceTracking(90, processes=[Tracked("web", 20), Tracked("db", 0)])
    assert t.verdict().priority == 90
    t.update_process("web", True)
    t.update_process("db", True)
    assert t.verdict().priority == 110 and not t.verdict().faulty
    t.update_process("db", False)
    assert t.verdict().faulty and "process db not running" in t.verdict().reason


# ---- the table -----------------------------------------------------------------


def test_quorum_and_quorum_max() -> None:
    table = ProcessTable([spec(quorum=2, quorum_max=3)])
    assert table.rescan(0.0, {1: ProcInfo("nginx"), 2: ProcInfo("bash")}) == [("p", False)]
    assert table.exec(1.0, 3, ProcInfo("nginx")) == [("p", True)]
    assert table.exec(2.0, 4, ProcInfo("nginx")) == []
    assert table.exec(3.0, 5, ProcInfo("nginx")) == [("p", False)]  # 4 > quorum_max
    assert table.exit(4.0, 5) == [("p", True)]
    assert table.exit(5.0, 99) == []  # a process never seen
    assert table.exec(6.0, 4, ProcInfo("vi")) == []  # exec'd into something else: 2 left
    assert table.exec(7.0, 3, None) == [("p", False)]  # gone before we could look: 1 left
    assert table.count("p") == 1


def test_terminate_delay_absorbs_a_restart_and_counts_from_the_exit() -> None:
    table = ProcessTable([spec(terminate_delay=2.0)])
    table.rescan(0.0, {10: ProcInfo("nginx")})
    assert table.exit(5.0, 10) == []
    assert table.get_timer() == 7.0
    assert table.exec(6.5, 11, ProcInfo("nginx")) == []  # back in time: nothing happened
    assert table.get_timer() is None
    assert table.status("p") is True
    assert table.exit(8.0, 11) == []
    assert table.timer_expired(9.9) == []
    assert table.timer_expired(10.0) == [("p", False)]
    assert table.exec(11.0, 12, ProcInfo("nginx")) == [("p", True)]  # exec: at once


def test_fork_delay_for_quorum_gained_by_fork() -> None:
    table = ProcessTable([spec(quorum=2, fork_delay=0.5)])
    table.rescan(0.0, {10: ProcInfo("nginx")})
    assert table.fork(1.0, 11, ProcInfo("nginx")) == []
    assert table.get_timer() == 1.5
    assert table.exec(1.2, 11, ProcInfo("sh")) == []  # fork + exec: no bounce
    assert table.get_timer() is None
    assert table.fork(2.0, 12, ProcInfo("nginx")) == []
    assert table.timer_expired(2.5) == [("p", True)]


# ---- the connector codec -----------------------------------------------------------


def _message(what: int, data: bytes) -> bytes:
    event = struct.pack("=IIQ", what, 1, 123456789) + data
    cn = struct.pack("=IIIIHH", 1, 1, 7, 0, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn


def test_decode_events() -> None:
    data = (
        _message(PROC_EVENT_FORK, struct.pack("=IIII", 100, 100, 200, 200))
        + _message(PROC_EVENT_FORK, struct.pack("=IIII", 100, 100, 201, 200))  # a thread
        + _message(PROC_EVENT_EXEC, struct.pack("=II", 200, 200))
        + _message(PROC_EVENT_COMM, struct.pack("=II", 200, 200) + b"worker".ljust(16, b"\0"))
        + _message(PROC_EVENT_EXIT, struct.pack("=IIII", 201, 200, 0, 17))
        + _message(PROC_EVENT_NONE, struct.pack("=I", 1))
        + _message(0x40, struct.pack("=II", 1, 1))  # ptrace: not ours
    )
    assert decode_events(data) == [
        ProcEvent(PROC_EVENT_FORK, 200, parent=100),
        ProcEvent(PROC_EVENT_FORK, 200, thread=True, parent=100),
        ProcEvent(PROC_EVENT_EXEC, 200), ProcEvent(PROC_EVENT_COMM, 200),
        ProcEvent(PROC_EVENT_EXIT, 200, thread=True), ProcEvent(PROC_EVENT_NONE, 0, err=1),
    ]
    assert decode_events(data[:30]) == []  # truncated


def test_encode_listen() -> None:
    msg = encode_listen()
    assert struct.unpack_from("=IHHII", msg)[:2] == (len(msg), 3)
    assert struct.unpack_from("=IIIIHHI", msg, 16) == (1, 1, 0, 0, 4, 0, 1)


def test_read_proc_and_scan_see_a_real_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "marker"])
    try:
        deadline = time.monotonic() + 10
        while (info := read_proc(child.pid, True)) is None or info.argv[-1] != "marker":
            assert time.monotonic() < deadline, info  # until it has exec'd
            time.sleep(0.01)
        assert info.comm == os.path.basename(sys.executable)[:15]
        assert scan_proc(True)[child.pid] == info
        assert read_proc(os.getpid(), False) == ProcInfo(info.comm)  # comm only
        assert read_proc(2, False) is None  # kthreadd: a kernel thread never counts
    finally:
        child.kill()
        child.wait()
    assert read_proc(child.pid, False) is None


# ---- the watcher -----------------------------------------------------------------


class FakeSource:
    def __init__(self) -> None:
        self.tx, self.rx = trio.open_memory_channel[list[ProcEvent] | Exception](10)
        self.closed = False

    async def receive(self) -> list[ProcEvent]:
        item = await self.rx.receive()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


async def test_watcher_follows_events_and_rescans_after_overflow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    procs = {1: ProcInfo("init"), 10: ProcInfo("nginx")}
    source = FakeSource()
    seen: list[tuple[float, str, bool]] = []
    watcher = ProcessWatcher(
        [spec(terminate_delay=1.0)], {"p": [lambda n, up: seen.append((trio.current_time(), n,
                                                                       up))]},
        source=lambda: source, scan=lambda cmdline: dict(procs),
        read=lambda pid, cmdline: procs.get(pid), scan_in_thread=False, pidfds=False,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        assert seen == [(0.0, "p", True)]
        await trio.sleep(5)
        del procs[10]
        source.tx.send_nowait([ProcEvent(PROC_EVENT_EXIT, 10)])
        await trio.sleep(5)
        assert seen[-1] == (6.0, "p", False)  # exit at 5 + terminate_delay
        procs[11] = ProcInfo("nginx")
        source.tx.send_nowait([ProcEvent(PROC_EVENT_FORK, 12, thread=True),
                               ProcEvent(PROC_EVENT_EXEC, 11)])
        await trio.sleep(1)
        assert seen[-1] == (10.0, "p", True)
        # Events lost: the watcher scans /proc and finds the process gone.
        del procs[11]
        source.tx.send_nowait(Overflow())
        await trio.sleep(5)
        assert seen[-1] == (12.0, "p", False)
        nursery.cancel_scope.cancel()
    assert source.closed


async def test_watcher_polls_proc_without_the_connector(
    autojump_clock: trio.testing.MockClock,
) -> None:
    procs: dict[int, ProcInfo] = {}
    seen: list[tuple[float, bool]] = []
    watcher = ProcessWatcher(
        [spec()], {"p": [lambda n, up: seen.append((trio.current_time(), up))]},
        source=lambda: None, scan=lambda cmdline: dict(procs),
        read=lambda pid, cmdline: procs.get(pid), scan_in_thread=False, pidfds=False,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        await trio.sleep(1.2)
        procs[5] = ProcInfo("nginx")
        await trio.sleep(1)
        assert seen == [(0.0, False), (1.5, True)]  # the next scan, every 0.5 s
        # A reload with other definitions: scanned at once, told when the status differs.
        watcher.update([spec(quorum=2)])
        assert seen[-1] == (2.2, False)
        nursery.cancel_scope.cancel()


async def test_watcher_falls_back_when_the_subscription_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    procs = {5: ProcInfo("nginx")}
    source = FakeSource()
    seen: list[bool] = []
    watcher = ProcessWatcher(
        [spec()], {"p": [lambda n, up: seen.append(up)]},
        source=lambda: source, scan=lambda cmdline: dict(procs), read=lambda p, c: None,
        scan_in_thread=False, pidfds=False,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        source.tx.send_nowait([ProcEvent(PROC_EVENT_NONE, 0, err=1)])  # EPERM
        await trio.sleep(0.1)
        assert source.closed
        del procs[5]
        await trio.sleep(1)
        assert seen == [True, False]
        nursery.cancel_scope.cancel()


async def test_watcher_reads_only_the_children_of_tracked_processes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    procs = {10: ProcInfo("nginx"), 20: ProcInfo("bash")}
    reads: list[int] = []
    source = FakeSource()
    seen: list[tuple[float, bool]] = []

    def read(pid: int, cmdline: bool) -> ProcInfo | None:
        reads.append(pid)
        return procs.get(pid)

    watcher = ProcessWatcher(
        [spec(quorum=2, fork_delay=0.5)],
        {"p": [lambda n, up: seen.append((trio.current_time(), up))]},
        source=lambda: source, scan=lambda cmdline: dict(procs), read=read,
        scan_in_thread=False, pidfds=False,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        procs[21] = ProcInfo("bash")
        source.tx.send_nowait([ProcEvent(PROC_EVENT_FORK, 21, parent=20)])
        await trio.sleep(1)
        assert reads == []  # bash's child: never looked at
        procs[11] = ProcInfo("nginx")
        source.tx.send_nowait([ProcEvent(PROC_EVENT_FORK, 11, parent=10)])
        await trio.sleep(1)
        assert reads == [11]
        assert seen == [(0.0, False), (1.5, True)]  # the fork counted after fork_delay
        # The connector breaks: /proc is scanned instead.
        source.tx.send_nowait(OSError(5, "Input/output error"))
        await trio.sleep(0.1)
        assert source.closed
        del procs[11]
        await trio.sleep(1)
        assert seen[-1] == (2.5, False)  # the first scan after 2.1, every 0.5 s
        nursery.cancel_scope.cancel()


async def test_without_the_connector_an_exit_is_seen_through_its_pidfd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real processes: with /proc scanned only hourly, a tracked process's exit is
    still reported, because its pidfd becomes readable."""
    monkeypatch.setattr(proc_events, "POLL_INTERVAL", 3600.0)
    name = f"pyatrk{secrets.token_hex(4)}"
    binary = tmp_path / name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
    child = subprocess.Popen([str(binary), "3600"])
    seen: list[bool] = []
    changed = trio.Event()

    def subscriber(n: str, up: bool) -> None:
        seen.append(up)
        changed.set()

    try:
        while (info := read_proc(child.pid, False)) is None or info.comm != name:
            await trio.sleep(0.01)  # until it has exec'd
        watcher = ProcessWatcher([spec(process=name)], {"p": [subscriber]},
                                 source=lambda: None, scan_in_thread=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            assert seen == [True]
            changed = trio.Event()
            await trio.sleep(0.1)  # the watcher waits on the pidfd now
            child.kill()
            with trio.fail_after(60):  # a hang guard: the next scan is an hour away
                await changed.wait()
            assert seen == [True, False]
            nursery.cancel_scope.cancel()
    finally:
        child.kill()
        child.wait()
