"""sd_notify protocol: message format, environment, sender, watchdog task, real daemon."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from pyalived.sdnotify import (
    Notifier,
    format_message,
    notify_address,
    run_watchdog,
    watchdog_interval,
)

REPO = Path(__file__).resolve().parents[2]


def test_format_message() -> None:
    assert format_message({"READY": 1, "STATUS": "2 instances"}) == b"READY=1\nSTATUS=2 instances\n"
    for bad in ({}, {"ready": 1}, {"STATUS": "two\nlines"}, {"": 1}):
        with pytest.raises(ValueError):
            format_message(bad)


def test_notify_address() -> None:
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@sd/notify"}) == b"\0sd/notify"
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    assert notify_address({"NOTIFY_SOCKET": "@"}) is None
    assert notify_address({}) is None


def test_watchdog_interval() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "42"}, pid=42) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "43"}, pid=42) is None
    for env in ({}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "x"},
                {"WATCHDOG_USEC": "1", "WATCHDOG_PID": "x"}):
        assert watchdog_interval(env, pid=42) is None


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(30)
    try:
        yield sock, path
    finally:
        sock.close()


def test_notifier_sends_to_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier(path)
    try:
        assert notifier.ready(status="up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up\n"
        assert notifier.reloading(monotonic_usec=1234)
        assert sock.recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=1234\n"
        assert notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1\n"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1\n"
    finally:
        notifier.close()


def test_reloading_defaults_to_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier(path)
    try:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().split())
        assert fields["RELOADING"] == "1"
        assert before <= int(fields["MONOTONIC_USEC"]) <= after
    finally:
        notifier.close()


def test_notifier_sends_to_an_abstract_socket() -> None:
    name = f"pyalived-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(30)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
    try:
        assert notifier.enabled
        assert notifier.stopping(status="bye")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye\n"
    finally:
        notifier.close()
        sock.close()


def test_unreachable_manager_is_not_an_error(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody"))
    try:
        assert notifier.enabled
        assert not notifier.ready()
    finally:
        notifier.close()


def test_without_manager_everything_is_a_no_op() -> None:
    env: dict[str, str] = {}
    notifier = Notifier.from_environment(env)
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    notifier.close()


def test_from_environment_takes_the_variables_away(listener: tuple[socket.socket, str]) -> None:
    _, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid()),
           "PATH": "/bin"}
    notifier = Notifier.from_environment(env)
    try:
        assert notifier.watchdog_interval == 4.0
        assert env == {"PATH": "/bin"}
    finally:
        notifier.close()


class RecordingNotifier(Notifier):
    """A notifier that records (trio time, fields) instead of sending."""

    def __init__(self, watchdog: float | None) -> None:
        super().__init__(None, watchdog)
        self.watchdog_interval = watchdog
        self.sent: list[tuple[float, dict[str, str | int]]] = []

    @property
    def enabled(self) -> bool:
        return True

    def notify(self, fields: Mapping[str, str | int]) -> bool:
        self.sent.append((trio.current_time(), dict(fields)))
        return True


async def test_watchdog_pings_at_half_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    notifier = RecordingNotifier(watchdog=3.0)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog, notifier)
        await trio.sleep(5.9)
        nursery.cancel_scope.cancel()
    times = [t - start for t, fields in notifier.sent if fields == {"WATCHDOG": 1}]
    assert times == [0.0, 1.5, 3.0, 4.5]


async def test_watchdog_stops_when_the_loop_stalls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The pings come from the event loop: blocking it delays the next ping."""
    notifier = RecordingNotifier(watchdog=2.0)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog, notifier)
        await trio.sleep(0.5)
        autojump_clock.jump(10)  # the loop is stuck for 10 s: nothing runs
        await trio.sleep(0.1)  # the loop runs again: the overdue ping goes out at once
        nursery.cancel_scope.cancel()
    times = [t - start for t, _ in notifier.sent]
    assert times == [0.0, 10.5]


async def test_no_watchdog_configured_returns_at_once() -> None:
    notifier = RecordingNotifier(watchdog=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog, notifier)
    assert notifier.sent == []


# ---- the real daemon ---------------------------------------------------------


def _messages(sock: socket.socket, until: bytes) -> list[bytes]:
    seen = []
    while True:
        msg = sock.recv(4096)
        seen.append(msg)
        if until in msg:
            return seen


def test_daemon_reports_ready_watchdog_and_stopping(
    listener: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = listener
    conf = tmp_path / "pyalived.conf"
    conf.write_text("global_defs {\n    router_id notify-test\n}\n")
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000",
               PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyalived", "-n", "-l", "-G", "-C", "-f", str(conf),
         "-p", str(tmp_path / "pyalived.pid"), "--metrics-listen", "none"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        before_ready = _messages(sock, b"READY=1")
        assert all(m == b"WATCHDOG=1\n" for m in before_ready[:-1])
        assert before_ready[-1].startswith(b"READY=1\n")
        # The watchdog keeps being fed (0.1 s period) while the daemon runs.
        assert [sock.recv(4096) for _ in range(3)] == [b"WATCHDOG=1\n"] * 3
        proc.send_signal(signal.SIGTERM)
        after = _messages(sock, b"STOPPING=1")
        assert after[-1].startswith(b"STOPPING=1\n")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        print(proc.stdout.read().decode(errors="replace"))
        proc.stdout.close()
