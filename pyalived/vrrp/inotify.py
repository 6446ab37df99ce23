"""inotify(7) for trio, through ctypes: the watch of one file by its directory.

Theory of operation: neither trio nor pyroute2 offers inotify, and the few
lines of ctypes below are all it takes.  ``Inotify`` owns one non-blocking
inotify descriptor; ``read`` waits with ``trio.lowlevel.wait_readable`` and
decodes the ``struct inotify_event`` records (``decode_events``, pure).

``FileWatch`` watches the *directory* of a path for that one name, so it sees
the file created, written and closed, replaced by a rename, or deleted,
whatever happened to the file before (a watch on the file itself would be
lost on the first rename).  Its ``wait`` says how soon to read the file:

* ``NOW``: the change is complete (``IN_CLOSE_WRITE``, ``IN_MOVED_TO``,
  ``IN_MOVED_FROM``, ``IN_DELETE``), or events were lost (``IN_Q_OVERFLOW``)
  or the directory went away;
* ``SOON``: the file is being written (``IN_MODIFY``, ``IN_CREATE``): a
  shell's ``echo 5 > FILE`` truncates it before it writes, so the reader
  waits for the close, at most ``WRITE_SETTLE`` seconds, before it reads.

If the directory does not exist, or is deleted or moved away, the watch is
added again every ``REWATCH_INTERVAL`` seconds, and ``NOW`` is reported when
it is back.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import trio

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

DIR_MASK = (IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
            | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_NOW = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE
_SOON = IN_MODIFY | IN_CREATE
_LOST = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED

WRITE_SETTLE = 0.1  # seconds to wait for the close of a file being written
REWATCH_INTERVAL = 1.0  # seconds between attempts to watch a missing directory

_HEADER = struct.Struct("=iIII")  # wd, mask, cookie, len


@dataclass(frozen=True)
class Event:
    wd: int
    mask: int
    name: str


def decode_events(data: bytes) -> list[Event]:
    """The ``struct inotify_event`` records of one read."""
    out: list[Event] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
        raw = data[offset + _HEADER.size: offset + _HEADER.size + length]
        out.append(Event(wd, mask, raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")))
        offset += _HEADER.size + length
    return out


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_init1.restype = ctypes.c_int
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_add_watch.restype = ctypes.c_int
        _libc = lib
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


class Inotify:
    """One inotify descriptor."""

    def __init__(self) -> None:
        self.fd = _check(_lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")

    def add_watch(self, path: str, mask: int) -> int:
        return _check(_lib().inotify_add_watch(self.fd, os.fsencode(path), mask),
                      f"inotify_add_watch {path}")

    async def read(self) -> list[Event]:
        while True:
            try:
                return decode_events(os.read(self.fd, 65536))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            trio.lowlevel.notify_closing(fd)
            os.close(fd)


class Change(enum.Enum):
    NOW = "now"  # read the file now
    SOON = "soon"  # the file is being written: read it once closed (or a little later)


class FileWatch:
    """Changes of the file at ``path``, seen through its directory (see module doc)."""

    def __init__(self, path: str) -> None:
        self.directory, self.name = os.path.split(os.path.abspath(path))
        self._inotify = Inotify()
        self._wd: int | None = None
        self._pending: list[Change] = []
        self._watch()

    def _watch(self) -> bool:
        try:
            self._wd = self._inotify.add_watch(self.directory, DIR_MASK)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                raise
            self._wd = None
            return False
        return True

    @property
    def watching(self) -> bool:
        return self._wd is not None

    async def wait(self) -> Change:
        while not self._pending:
            if self._wd is None:
                await trio.sleep(REWATCH_INTERVAL)
                if self._watch():
                    return Change.NOW
                continue
            self._pending.extend(self._changes(await self._inotify.read()))
        return self._pending.pop(0)

    def _changes(self, events: list[Event]) -> Iterator[Change]:
        for ev in events:
            if ev.mask & IN_Q_OVERFLOW:
                yield Change.NOW
            elif ev.wd == self._wd and not ev.name and ev.mask & _LOST:
                # The directory was deleted or moved away: watch the path afresh (a
                # new descriptor, so nothing of the old watch can arrive any more).
                self._inotify.close()
                self._inotify = Inotify()
                self._watch()
                yield Change.NOW
                return  # the rest of the batch is the old descriptor's
            elif ev.wd == self._wd and ev.name == self.name:
                if ev.mask & _NOW:
                    yield Change.NOW
                elif ev.mask & _SOON:
                    yield Change.SOON

    def close(self) -> None:
        self._inotify.close()
