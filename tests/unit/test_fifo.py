"""Notify FIFOs: keepalived's lines, a FIFO that never blocks, and the FIFO scripts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import trio
import trio.testing

from pyalived.config.model import NotifyFifo
from pyalived.fifo import FifoWriter, NotifyFifos, group_line, instance_line, rs_line, vs_line
from tests.unit.fakes import FakeScriptRunner


def read_all(path: Path) -> str:
    """What is buffered in the FIFO now (a second read end, non-blocking)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def test_lines_are_keepalived_s() -> None:
    assert instance_line("VI_1", "MASTER", 100) == 'INSTANCE "VI_1" MASTER 100\n'
    assert group_line("G1", "BACKUP") == 'GROUP "G1" BACKUP 0\n'
    assert vs_line("[198.18.0.1]:tcp:80", True) == "VS [198.18.0.1]:tcp:80 UP\n"
    assert rs_line("[198.18.0.11]:tcp:8080", "[198.18.0.1]:tcp:80", False) == (
        "RS [198.18.0.11]:tcp:8080 [198.18.0.1]:tcp:80 DOWN\n")


def test_a_missing_fifo_is_created_0600_and_written_with_no_reader(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    w = FifoWriter(NotifyFifo(str(path)))
    assert w.open()
    st = os.stat(path)
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    # Nobody reads: the write neither blocks nor fails; the line waits for a reader.
    assert w.write(instance_line("VI_1", "MASTER", 100))
    assert read_all(path) == 'INSTANCE "VI_1" MASTER 100\n'
    w.close()


def test_a_full_pipe_drops_whole_lines_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    w = FifoWriter(NotifyFifo(str(path)))
    assert w.open()
    line = instance_line("VI_" + "x" * 90, "BACKUP", 100)
    results = [w.write(line) for _ in range(2000)]  # ~200 kB into a 64 kB pipe
    assert w.dropped == results.count(False) > 0
    text = read_all(path)
    assert text == line * w.written  # no line was cut
    assert w.write(line)  # room again once read
    w.close()


def test_a_path_that_is_not_a_fifo_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    path.write_text("keep me")
    w = FifoWriter(NotifyFifo(str(path)))
    assert not w.open()
    assert not w.write("x\n")
    assert path.read_text() == "keep me"
    link = tmp_path / "link"
    os.mkfifo(tmp_path / "real")
    link.symlink_to(tmp_path / "real")
    assert not FifoWriter(NotifyFifo(str(link))).open()  # O_NOFOLLOW, as keepalived


def test_an_unwritable_directory_is_logged_not_raised(tmp_path: Path) -> None:
    w = FifoWriter(NotifyFifo(str(tmp_path / "no" / "such" / "dir" / "fifo")))
    assert not w.open()


async def test_scripts_get_the_fifo_path_and_reloads_reopen_only_on_change(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    runner = FakeScriptRunner(durations={"/bin/reader": 1e9})
    a = NotifyFifo(str(tmp_path / "a"), script="/bin/reader 'x y'", script_user="nobody")
    b = NotifyFifo(str(tmp_path / "b"), script="/bin/reader")
    fifos = NotifyFifos(runner, (a, b), script_user="ops", scripts=(True, False))
    async with trio.open_nursery() as nursery:
        await nursery.start(fifos.run)
        await trio.testing.wait_all_tasks_blocked()
        assert [(r.argv, r.user) for r in runner.runs] == [
            (("/bin/reader", "x y", str(tmp_path / "a")), "nobody")]
        fifos.write(group_line("G1", "MASTER"))
        assert read_all(tmp_path / "a") == read_all(tmp_path / "b") == 'GROUP "G1" MASTER 0\n'
        first = list(fifos.writers)
        fifos.configure((a, b), script_user="ops", scripts=(True, False))  # same: kept
        await trio.testing.wait_all_tasks_blocked()
        assert fifos.writers == first and len(runner.runs) == 1
        fifos.configure((b,), script_user="ops")  # a gone, b's script now ours
        await trio.sleep(2)
        assert [w.path for w in fifos.writers] == [str(tmp_path / "b")]
        assert all(w.fd is None for w in first)
        assert [r.argv[-1] for r in runner.runs] == [str(tmp_path / "a"), str(tmp_path / "b")]
        nursery.cancel_scope.cancel()
    assert fifos.writers == []


async def test_stop_closes_the_fifo_and_waits_a_moment_for_the_script(tmp_path: Path) -> None:
    # A real script that reads the FIFO until end of input, then writes what it got.
    out = tmp_path / "got"
    script = tmp_path / "reader.sh"
    script.write_text(f'#!/bin/sh\ncat "$1" > {out}\n')
    script.chmod(0o755)
    from pyalived.scripts import TrioScriptRunner

    fifos = NotifyFifos(TrioScriptRunner(), (NotifyFifo(str(tmp_path / "f"), script=str(script)),))
    async with trio.open_nursery() as nursery:
        await nursery.start(fifos.run)
        fifos.write(instance_line("VI_1", "BACKUP", 100))
        fifos.write(instance_line("VI_1", "STOP", 100))
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    # The script read both lines and ended on its own when the FIFO was closed.
    assert out.read_text() == 'INSTANCE "VI_1" BACKUP 100\nINSTANCE "VI_1" STOP 100\n'
