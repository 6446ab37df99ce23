"""Track files: keepalived's reading of a value, its effect, the tracker and real inotify."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from pyalived.config.model import TrackFile
from pyalived.vrrp.inotify import WRITE_SETTLE, Change, FileWatch
from pyalived.vrrp.track_file import FileTracker, init_file, parse_value, strtol
from pyalived.vrrp.tracking import InstanceTracking, Tracked, file_effect


@pytest.mark.parametrize(
    ("text", "value"),
    [("5", 5), ("  -12\n", -12), ("+7", 7), ("0x1f", 31), ("0X10", 16), ("010", 8),
     ("08", 0), ("12abc", 12), ("abc", 0), ("", 0), ("0x", 0), ("-0x10", -16), ("3.9", 3),
     ("\t\n 42 junk", 42)],
)
def test_strtol_base_zero(text: str, value: int) -> None:
    assert strtol(text) == value


def test_parse_value_as_keepalived_reads_a_file() -> None:
    assert parse_value(None) == 0  # missing or unreadable
    assert parse_value(b"") == 0  # empty
    assert parse_value(b"drain\n") == 0  # not a number
    assert parse_value(b"2147483647") == 2**31 - 1
    assert parse_value(b"2147483648") is None  # outside int: ignored
    assert parse_value(b"-2147483649") is None
    assert parse_value(b" " * 127 + b"5") == 0  # only the first 127 bytes are read


@pytest.mark.parametrize(
    ("value", "weight", "reverse", "effect"),
    [
        (0, 0, False, (False, 0)), (3, 0, False, (True, 0)), (-1, 0, False, (True, 0)),
        (0, 0, True, (True, 0)), (3, 0, True, (False, 0)),
        (2, 10, False, (False, 20)), (2, 10, True, (False, -20)), (-3, 10, False, (False, -30)),
        (100, 10, False, (False, 253)),  # clamped
        (-25, 10, False, (False, -250)),  # -250 is still a change ...
        (-26, 10, False, (True, 0)),  # ... below -253 is FAULT
        (253, -1, False, (False, -253)), (254, -1, False, (True, 0)),
    ],
)
def test_file_effect(value: int, weight: int, reverse: bool, effect: tuple[bool, int]) -> None:
    assert file_effect(value, weight, reverse) == effect


def test_files_in_the_verdict_with_clamping_and_owner() -> None:
    t = InstanceTracking(100, files=[Tracked("a", -10), Tracked("b", 0, True)])
    assert t.verdict().priority == 100 and not t.verdict().faulty  # not read yet
    t.update_file("a", 3)
    assert t.verdict().priority == 70
    t.update_file("b", 0)
    v = t.verdict()
    assert v.faulty and "track file b holds 0" in v.reason
    t.update_file("b", 1)
    t.update_file("a", 20)  # -200: priority clamps at 1
    assert t.verdict().priority == 1
    owner = InstanceTracking(255, files=[Tracked("a", 0)])
    owner.update_file("a", 1)
    assert owner.verdict().faulty and owner.verdict().priority == 255


class FakeWatch:
    def __init__(self) -> None:
        self.tx, self.rx = trio.open_memory_channel[Change](10)
        self.closed = False

    async def wait(self) -> Change:
        return await self.rx.receive()

    def close(self) -> None:
        self.closed = True


async def test_tracker_reports_changes_and_waits_for_a_write_to_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    contents: dict[str, bytes | None] = {"/f": b"1\n"}
    watch = FakeWatch()
    seen: list[tuple[float, str, int]] = []
    tracker = FileTracker(
        TrackFile("t", "/f"), [lambda n, v: seen.append((trio.current_time(), n, v))],
        watch=lambda path: watch, read=lambda path: contents[path],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(tracker.run)
        assert seen == [(0.0, "t", 1)]
        # A shell write: truncation (MODIFY: the file is empty for a moment) ...
        contents["/f"] = b""
        watch.tx.send_nowait(Change.SOON)
        await trio.sleep(0.01)
        contents["/f"] = b"5\n"
        watch.tx.send_nowait(Change.SOON)
        await trio.sleep(0.01)
        watch.tx.send_nowait(Change.NOW)  # ... then the close: read at once
        await trio.sleep(1)
        assert seen == [(0.0, "t", 1), (0.02, "t", 5)]  # never the empty file's 0
        # A write that is never closed is read WRITE_SETTLE after it began.
        contents["/f"] = b"7"
        t0 = trio.current_time()
        watch.tx.send_nowait(Change.SOON)
        await trio.sleep(1)
        assert seen[-1] == (pytest.approx(t0 + WRITE_SETTLE), "t", 7)
        # Deleted: reads as 0.  The same value again reports nothing.
        contents["/f"] = None
        watch.tx.send_nowait(Change.NOW)
        watch.tx.send_nowait(Change.NOW)
        await trio.sleep(1)
        assert [v for _, _, v in seen] == [1, 5, 7, 0]
        # An out-of-range number keeps the value.
        contents["/f"] = b"99999999999"
        watch.tx.send_nowait(Change.NOW)
        await trio.sleep(1)
        assert [v for _, _, v in seen] == [1, 5, 7, 0]
        nursery.cancel_scope.cancel()
    assert watch.closed


async def test_tracker_reads_every_second_without_inotify(
    autojump_clock: trio.testing.MockClock,
) -> None:
    contents = {"/f": b"1"}
    seen: list[tuple[float, int]] = []

    def no_inotify(path: str) -> FakeWatch:
        raise OSError(24, "Too many open files")

    tracker = FileTracker(TrackFile("t", "/f"), [lambda n, v: seen.append((trio.current_time(),
                                                                            v))],
                          watch=no_inotify, read=lambda path: contents[path])
    async with trio.open_nursery() as nursery:
        await nursery.start(tracker.run)
        await trio.sleep(2.5)
        contents["/f"] = b"4"
        await trio.sleep(1)
        assert seen == [(0.0, 1), (3.0, 4)]
        nursery.cancel_scope.cancel()


def test_init_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    init_file(TrackFile("t", str(path), init_value=3))
    assert path.read_text() == "3\n"
    path.write_text("9\n")
    init_file(TrackFile("t", str(path), init_value=3))
    assert path.read_text() == "9\n"  # exists: kept
    init_file(TrackFile("t", str(path), init_value=-4, init_overwrite=True))
    assert path.read_text() == "-4\n"
    init_file(TrackFile("t", str(tmp_path / "no" / "dir"), init_value=1))  # logged only


async def _next(watch: FileWatch) -> Change:
    with trio.fail_after(5):
        return await watch.wait()


async def _drain(watch: FileWatch) -> list[Change]:
    """Every change reported until the watch has been quiet for a moment."""
    out: list[Change] = []
    while True:
        with trio.move_on_after(0.2):
            out.append(await watch.wait())
            continue
        return out


async def test_real_inotify_sees_every_way_a_file_changes(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    path = d / "state"
    watch = FileWatch(str(path))
    try:
        (d / "other").write_text("x")  # another name in the directory: nothing
        assert await _drain(watch) == []
        path.write_text("1")  # created, written, closed
        assert (await _drain(watch))[-1] is Change.NOW
        with open(path, "a") as f:  # written, still open
            f.write("2")
            f.flush()
            assert await _next(watch) is Change.SOON
        assert await _next(watch) is Change.NOW  # closed
        tmp = d / "state.tmp"
        tmp.write_text("3")
        await _drain(watch)
        os.rename(tmp, path)  # replaced by a rename
        assert await _drain(watch) == [Change.NOW]
        path.unlink()
        assert await _drain(watch) == [Change.NOW]
        # The directory itself goes away and comes back.
        (d / "other").unlink()
        await _drain(watch)
        d.rmdir()
        assert Change.NOW in await _drain(watch)
        assert not watch.watching
        d.mkdir()
        assert await _next(watch) is Change.NOW  # watched again (within REWATCH_INTERVAL)
        path.write_text("4")
        assert (await _drain(watch))[-1] is Change.NOW
    finally:
        watch.close()
