"""Track files (``track_file``): a number in a file moves the priority of VRRP instances.

Theory of operation: the pure part is ``parse_value``, keepalived 2.2.7's
reading of a track file: the first 127 bytes as C's ``strtol(text, NULL, 0)``
(leading blanks, a sign, ``0x`` hexadecimal, ``0`` octal, decimal digits up to
the first other character).  A missing, unreadable or empty file and text
that does not start with a number all read as 0; a number outside the C
``int`` range is logged and ignored (the previous value stays).  What a value
does to an instance (value * weight, weight 0, ``reverse``, FAULT at -254)
is ``pyalived.vrrp.tracking.file_effect``.

The I/O part is ``FileTracker``, one trio task per ``track_file``: it writes
``init_file``'s value if asked (once, when the tracker starts: at start-up
and when a reload adds or changes the track_file), starts watching the file
(``pyalived.vrrp.inotify.FileWatch``: the directory, for that name) before it
reads it, reports the value to its subscribers, then reads the file again on
each change the watch reports and reports the value when it changed.  If
inotify fails (no instance or watch left: ``fs.inotify.max_user_instances``,
``max_user_watches``), the tracker says so in the log and reads the file
every ``POLL_INTERVAL`` seconds instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from pyalived.config.model import TrackFile
from pyalived.vrrp.inotify import WRITE_SETTLE, Change, FileWatch

log = logging.getLogger("pyalived.vrrp.track_file")

POLL_INTERVAL = 1.0  # seconds between reads when inotify is not available
READ_SIZE = 127  # keepalived reads at most this many bytes
INT_MIN, INT_MAX = -(2**31), 2**31 - 1

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def strtol(text: str) -> int:
    """C's ``strtol(text, NULL, 0)``, without its overflow clamping."""
    i, n = 0, len(text)
    while i < n and text[i] in " \t\n\v\f\r":
        i += 1
    sign = 1
    if i < n and text[i] in "+-":
        sign = -1 if text[i] == "-" else 1
        i += 1
    base = 10
    if text.startswith(("0x", "0X"), i) and i + 2 < n and text[i + 2].lower() in _DIGITS[:16]:
        base, i = 16, i + 2
    elif text.startswith("0", i):
        base = 8
    value = 0
    while i < n:
        digit = _DIGITS.find(text[i].lower())
        if digit < 0 or digit >= base:
            break
        value = value * base + digit
        i += 1
    return sign * value


def parse_value(data: bytes | None) -> int | None:
    """The value of a track file's contents (None: the file could not be read, or was
    empty: 0 too).  None is returned only for a number outside the C int range."""
    if not data:
        return 0
    value = strtol(data[:READ_SIZE].decode("latin-1"))
    if not INT_MIN <= value <= INT_MAX:
        return None
    return value


def read_file(path: str) -> bytes | None:
    """The first bytes of ``path`` (never blocking on a FIFO); None if unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, READ_SIZE)
    except OSError:
        return None
    finally:
        os.close(fd)


def init_file(spec: TrackFile) -> None:
    """``init_file [VALUE] [overwrite]``: write VALUE if the file is missing (or always)."""
    if spec.init_value is None:
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    flags |= os.O_TRUNC if spec.init_overwrite else os.O_EXCL
    try:
        fd = os.open(spec.file, flags, 0o644)
    except FileExistsError:
        return
    except OSError as exc:
        log.warning("track_file %s: cannot initialise %s: %s", spec.name, spec.file,
                    exc.strerror)
        return
    try:
        os.write(fd, f"{spec.init_value}\n".encode())
    except OSError as exc:
        log.warning("track_file %s: cannot write %s: %s", spec.name, spec.file, exc.strerror)
    finally:
        os.close(fd)


class Watch(Protocol):
    """What ``FileTracker`` needs of a ``FileWatch`` (tests give fakes)."""

    async def wait(self) -> Change: ...

    def close(self) -> None: ...


class PollWatch:
    """A ``Watch`` without inotify: "read now" every ``POLL_INTERVAL`` seconds."""

    async def wait(self) -> Change:
        await trio.sleep(POLL_INTERVAL)
        return Change.NOW

    def close(self) -> None:
        pass


FileSubscriber = Callable[[str, int], None]


class FileTracker:
    """Watches one track file and reports its value (see the module docstring)."""

    def __init__(
        self,
        spec: TrackFile,
        subscribers: Sequence[FileSubscriber],
        *,
        watch: Callable[[str], Watch] | None = None,  # None: FileWatch (inotify)
        read: Callable[[str], bytes | None] | None = None,  # None: read_file
    ) -> None:
        self.spec = spec
        self.subscribers = subscribers
        self._watch: Callable[[str], Watch] = watch or FileWatch
        self._read = read or read_file
        self.value: int | None = None  # None until read

    def _update(self) -> None:
        data = self._read(self.spec.file)
        value = parse_value(data)
        if value is None:
            log.warning("track_file %s: invalid number in %s; ignored", self.spec.name,
                        self.spec.file)
            return
        if value == self.value:
            return
        log.info("track_file %s: %s now reads %d%s", self.spec.name, self.spec.file, value,
                 "" if data is not None else " (missing or unreadable)")
        self.value = value
        for subscriber in self.subscribers:
            subscriber(self.spec.name, value)

    def _poll_instead(self, exc: OSError) -> Watch:
        log.warning("track_file %s: cannot watch %s (%s); reading it every %gs instead",
                    self.spec.name, self.spec.file, exc.strerror or exc, POLL_INTERVAL)
        return PollWatch()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        init_file(self.spec)
        try:
            watch = self._watch(self.spec.file)
        except OSError as exc:
            watch = self._poll_instead(exc)
        try:
            self._update()
            if self.value is None:  # an invalid number at start: keepalived's 0
                self.value = 0
                for subscriber in self.subscribers:
                    subscriber(self.spec.name, 0)
            task_status.started()
            while True:
                try:
                    change = await watch.wait()
                    if change is Change.SOON:
                        with trio.move_on_after(WRITE_SETTLE):
                            while await watch.wait() is not Change.NOW:
                                pass
                except OSError as exc:
                    watch.close()
                    watch = self._poll_instead(exc)
                self._update()
        finally:
            watch.close()
