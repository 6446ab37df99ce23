"""Reloads through the reader process: the parent never parses, the children unpickle.

The operator's scenario: a director runs both halves under the supervisor and
its configuration is edited.  A reload whose files changed must reach each
child as its own half, and one whose read fails -- the reader hangs past the
reload timeout, crashes, is killed, writes nonsense -- must keep the running
configuration, with a clear line in the log and no traceback; the next good
edit still applies.  The supervisor runs here without forking: each "child"
is the real child-side code (``ChildControl``, ``LinkNotifier``) on the far end
of a socket pair, and the reader is the real ``python -m
pyalived.config.reader`` unless a test replaces its command.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from pyalived.checkers.compile import PackedLvs
from pyalived.config import load
from pyalived.config.model import Config
from pyalived.config.reader import ReaderError, ReadResult, decode, run_reader
from pyalived.daemon import DaemonOptions
from pyalived.ipc import Link
from pyalived.metrics import Metrics
from pyalived.sdnotify import READY, Notifier
from pyalived.supervisor import (
    CHECKERS,
    VRRP,
    Child,
    ChildControl,
    LinkNotifier,
    Supervisor,
)
from pyalived.vrrp.counters import VrrpCounters

REPO = Path(__file__).resolve().parents[2]


def config_text(delay_loop: int = 10, vips: tuple[str, ...] = ("198.18.0.100/24",),
                extra: str = "") -> str:
    addresses = "".join(f"        {v}\n" for v in vips)
    return textwrap.dedent("""\
        vrrp_instance VI_1 {
            state BACKUP
            interface lo
            virtual_router_id 51
            priority 100
            virtual_ipaddress {
        %s    }
        }
        virtual_server 198.18.0.200 80 {
            delay_loop %d
            lb_algo rr
            lb_kind NAT
            protocol TCP
            real_server 198.19.0.1 80 {
                TCP_CHECK {
                    connect_timeout 1
                }
            }
        }
        """) % (addresses, delay_loop) + extra


class Director:
    """A supervisor whose children are the child-side code on socket pairs."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        started = run_reader(str(path), None, [VRRP, CHECKERS])
        assert started.halves is not None
        self.supervisor = Supervisor(
            started.halves, DaemonOptions(config_path=str(path), reload_timeout=timeout),
            Notifier(None), pid_files={}, sources=started.sources)
        self.received: dict[str, list[Config]] = {VRRP: [], CHECKERS: []}
        self._ends: dict[str, socket.socket] = {}
        for half in (VRRP, CHECKERS):
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.supervisor.children[half] = Child(half, 0, -1, parent_end, time.monotonic())
            self._ends[half] = child_end

    async def _child(self, half: str, *, task_status: trio.TaskStatus[None]) -> None:
        notifier = LinkNotifier(None)
        control = ChildControl(self._ends[half], notifier)
        send, receive = trio.open_memory_channel[None](1)
        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve, send, Metrics(VrrpCounters()),
                                nursery.cancel_scope.cancel)
            task_status.started()
            async for _ in receive:  # as run_daemon's reloader does
                applied = await control.loader()
                self.received[half].append(applied.config)
                notifier.notify({READY: 1})  # the reload is over

    async def reload(self) -> None:
        """One SIGHUP's reload, with both children listening."""
        async with trio.open_nursery() as nursery:
            for half, child in self.supervisor.children.items():
                child.link = Link(child.sock, child.buffered)
                nursery.start_soon(self.supervisor._listen, child)
                await nursery.start(self._child, half)
            await self.supervisor._reload()
            for child in self.supervisor.children.values():
                assert child.link is not None
                child.buffered = child.link.detach()
            nursery.cancel_scope.cancel()

    def close(self) -> None:
        for child in self.supervisor.children.values():
            child.sock.close()
        for end in self._ends.values():
            end.close()


@pytest.fixture
def director(tmp_path: Path) -> Iterator[Director]:
    path = tmp_path / "keepalived.conf"
    path.write_text(config_text())
    d = Director(path)
    yield d
    d.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="pyalived")
    return caplog


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("pyalived")]


def assert_refused_cleanly(caplog: pytest.LogCaptureFixture, director: Director,
                           before: dict[str, bytes]) -> None:
    lines = messages(caplog)
    assert "reload refused: keeping the running configuration" in lines, lines
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    assert "Traceback" not in caplog.text
    assert director.received == {VRRP: [], CHECKERS: []}
    assert director.supervisor.pickled == before
    assert director.supervisor.metrics.reload_success is False


async def test_a_changed_file_reaches_each_child_as_its_half(
    director: Director, logs: pytest.LogCaptureFixture
) -> None:
    director.path.write_text(config_text(delay_loop=20, vips=("198.18.0.100/24",
                                                              "198.18.0.101/24")))
    await director.reload()
    assert "reload: applied by every child" in messages(logs)
    (vrrp,), (checkers,) = director.received[VRRP], director.received[CHECKERS]
    assert [str(v.ip) for v in vrrp.vrrp_instances[0].virtual_ipaddress] == [
        "198.18.0.100", "198.18.0.101"]
    assert vrrp.virtual_servers == ()
    # the checker half: its blocks serialized apart, unpickled one at a time by the child
    assert isinstance(checkers, PackedLvs)
    assert checkers.config.vrrp_instances == () and checkers.config.virtual_servers == ()
    blocks = [pickle.loads(data) for _key, data in checkers.blocks]
    assert [vs.options.delay_loop for vs in blocks] == [20]
    # What a restarted child would get is the new configuration, still pickled.
    assert all(isinstance(b, bytes) for b in director.supervisor.pickled.values())
    assert pickle.loads(director.supervisor.pickled[CHECKERS]) == checkers
    # The sources are the new file's: the same text again is "unchanged".
    logs.clear()
    await director.reload()
    assert any("are unchanged: nothing to apply" in m for m in messages(logs))
    assert len(director.received[VRRP]) == 1


async def test_an_unchanged_file_starts_no_reader(
    director: Director, logs: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    marker = tmp_path / "reader-ran"
    director.supervisor.reader_command = [
        sys.executable, "-c", "import sys; open(sys.argv[1], 'w')", str(marker)]
    director.path.write_text(director.path.read_text())  # rewritten, same text
    await director.reload()
    assert "reload: the 1 configuration file(s) are unchanged: nothing to apply" in \
        messages(logs)
    assert not marker.exists()


async def test_errors_are_logged_as_the_loader_words_them_and_refuse_the_reload(
    director: Director, logs: pytest.LogCaptureFixture
) -> None:
    before = dict(director.supervisor.pickled)
    director.path.write_text(config_text(extra="vrrp_instance VI_2 {\n    priority 300\n}\n"))
    expected = [f"reload: {d}" for d in load(str(director.path)).diagnostics]
    assert expected
    await director.reload()
    lines = messages(logs)
    assert [m for m in lines if m.startswith("reload: /")] == expected
    assert "reload refused: the new configuration has errors" in lines
    assert_refused_cleanly(logs, director, before)


SLOW_READER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); " \
    "time.sleep(60)"


async def test_a_reader_past_the_timeout_is_killed_and_the_running_config_kept(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keepalived.conf"
    path.write_text(config_text())
    director = Director(path, timeout=1.0)
    try:
        before = dict(director.supervisor.pickled)
        pid_file = tmp_path / "reader.pid"
        director.supervisor.reader_command = [sys.executable, "-c", SLOW_READER, str(pid_file)]
        path.write_text(config_text(delay_loop=20))
        started = time.monotonic()
        await director.reload()
        assert time.monotonic() - started < 10
        assert "reload refused: reading the configuration took more than 1 s" in messages(logs)
        assert_refused_cleanly(logs, director, before)
        pid = int(pid_file.read_text())
        with pytest.raises(ProcessLookupError):  # killed, and reaped
            os.kill(pid, 0)
        # The next reload, with a reader that works, applies the edit.  The
        # real reader gets a timeout that a loaded machine cannot reach.
        director.supervisor.reader_command = [sys.executable, "-m", "pyalived.config.reader"]
        director.supervisor.options = dataclasses.replace(
            director.supervisor.options, reload_timeout=30.0
        )
        logs.clear()
        await director.reload()
        assert "reload: applied by every child" in messages(logs)
        packed = director.received[CHECKERS][0]
        assert isinstance(packed, PackedLvs)
        assert [pickle.loads(data).options.delay_loop for _key, data in packed.blocks] == [20]
    finally:
        director.close()


FOREIGN = pickle.dumps({"halves": None})
NO_HALF = pickle.dumps(ReadResult((), 0, (), {VRRP: b""}))


@pytest.mark.parametrize(("code", "needle"), [
    ("import sys; sys.exit('reader: out of luck')",
     "the configuration reader failed (exit status 1): reader: out of luck"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
     "the configuration reader failed (killed by SIGKILL): no message"),
    ("raise MemoryError",
     "the configuration reader failed (exit status 1): MemoryError"),
    ("import sys; sys.stdout.write('garbage')",
     "the configuration reader's output (7 bytes) is not a result"),
    (f"import sys; sys.stdout.buffer.write({FOREIGN!r})",
     "the configuration reader's output is a dict, not a result"),
    (f"import sys; sys.stdout.buffer.write({NO_HALF!r})",
     "the configuration reader's output lacks a half of the configuration"),
], ids=["exit-1", "sigkill", "traceback", "garbage", "foreign-pickle", "missing-half"])
async def test_a_failing_reader_refuses_the_reload_in_one_clear_line(
    director: Director, logs: pytest.LogCaptureFixture, code: str, needle: str
) -> None:
    before = dict(director.supervisor.pickled)
    director.supervisor.reader_command = [sys.executable, "-c", code]
    director.path.write_text(config_text(delay_loop=20))
    await director.reload()
    refusals = [m for m in messages(logs) if m.startswith("reload refused: the configuration")]
    assert len(refusals) == 1 and refusals[0].startswith(f"reload refused: {needle}"), refusals
    assert_refused_cleanly(logs, director, before)


def test_decode_refuses_truncated_output() -> None:
    whole = pickle.dumps(ReadResult(("a",), 0, (), None))
    assert decode(whole, [VRRP]).diagnostics == ("a",)
    with pytest.raises(ReaderError):
        decode(whole[:-3], [VRRP])


PROBE = """
import gc, sys
from pyalived import supervisor
from pyalived.config.model import Config, RealServer

def run(self):
    gc.collect()
    counts = [sum(isinstance(o, t) for o in gc.get_objects()) for t in (Config, RealServer)]
    print("held", *counts, sorted((h, type(b).__name__) for h, b in self.pickled.items()))
    return 0

supervisor.Supervisor.run = run
from pyalived.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_parent_holds_no_parsed_configuration_when_it_starts_the_children(
    tmp_path: Path,
) -> None:
    """At the point where the children are forked, only pickled bytes are left."""
    path = tmp_path / "keepalived.conf"
    path.write_text(config_text())
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "-n", "-l", "-f", str(path), "-p", str(tmp_path / "p"),
         "--metrics-listen", "none"],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "held 0 0 [('checkers', 'bytes'), ('vrrp', 'bytes')]" in done.stdout, done.stdout


async def test_a_child_gets_its_half_on_reload_and_unpickles_it_itself() -> None:
    config = Config()
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    notifier = LinkNotifier(None)
    control = ChildControl(child_end, notifier)
    send, receive = trio.open_memory_channel[None](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve, send, Metrics(VrrpCounters()),
                            nursery.cancel_scope.cancel)
        parent = Link(parent_end)
        await parent.send(("reload", 7, pickle.dumps(config)))
        await receive.receive()
        applied = await control.loader()
        assert applied.config == config and notifier.applying == 7
        notifier.notify({READY: 1})
        assert await parent.receive() == ("notify", {READY: 1})
        assert await parent.receive() == ("applied", 7)
        nursery.cancel_scope.cancel()
    parent_end.close()
    child_end.close()


async def test_while_a_killed_reader_has_not_exited_reloads_are_refused(
    director: Director, logs: pytest.LogCaptureFixture
) -> None:
    """A reader in an uninterruptible read (a hung mount) outlives SIGKILL."""
    before = dict(director.supervisor.pickled)
    stuck = await trio.lowlevel.open_process([sys.executable, "-c", "import time; time.sleep(60)"])
    director.supervisor._reader_stuck = stuck
    director.path.write_text(config_text(delay_loop=20))
    try:
        await director.reload()
        assert f"reload refused: the previous read of {director.path} has not returned yet" in \
            messages(logs)
        assert_refused_cleanly(logs, director, before)
    finally:
        stuck.kill()
        await stuck.wait()
    logs.clear()
    await director.reload()  # it has gone: reading works again
    assert "reload: applied by every child" in messages(logs)
