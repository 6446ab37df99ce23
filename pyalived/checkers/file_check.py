"""FILE_CHECK: a number in a track file takes a real server down or moves its weight.

Theory of operation: the pure part follows keepalived 2.2.7's checker track
files.  Each ``FILE_CHECK`` of a real server names a top-level
``track_file``; its weight and ``reverse`` are the FILE_CHECK's own, or,
when it gives none (or 0), the track_file's.  ``file_status`` turns the
file's value into the check's status: with weight 0 any non-zero value is a
fault (with ``reverse``, 0 is); otherwise the status is value * weight
(negated by ``reverse``), a fault only at or below the C ``int`` minimum.
``file_effect`` combines a real server's FILE_CHECKs: down if any is at
fault, else the sum of their statuses, added to the real server's weight
(as the probes and ``misc_dynamic`` left it) and kept within IPVS's
[0, 2**31 - 1].  A real server with FILE_CHECKs counts as checked, so
``alpha`` and the quorum treat it as keepalived does; its value is known
at once (a missing file reads 0), there is no probe to wait for.

The I/O part is ``FileCheckWatcher``: the checker half's own
``pyalived.vrrp.track_file.FileTracker`` per track_file that some FILE_CHECK
names (inotify on the file's directory, polling if inotify is not
available), each run in a cancel scope of the LVS service's nursery, so a
reload starts the new ones, stops the ones no longer named and restarts one
whose file or ``init_file`` changed.  Values go to one callback,
``(track_file name, value)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import trio

from pyalived.config.model import FileCheck, TrackFile
from pyalived.vrrp.track_file import FileTracker

log = logging.getLogger("pyalived.lvs.file_check")

INT_MIN, INT_MAX = -(2**31), 2**31 - 1
WEIGHT_MAX = 2**31 - 1  # IPVS destination weights are non-negative C ints


def file_status(value: int, weight: int, reverse: bool) -> int | None:
    """One FILE_CHECK's weight change for ``value``; None: the check is at fault."""
    if weight == 0:
        return None if (value != 0) != reverse else 0
    status = value * weight * (-1 if reverse else 1)
    if status <= INT_MIN:
        return None
    return min(status, INT_MAX)


def resolve(check: FileCheck, files: Mapping[str, TrackFile]) -> tuple[int, bool]:
    """The weight and ``reverse`` a FILE_CHECK uses (its own, else its track_file's)."""
    if check.weight:
        return check.weight, check.reverse
    spec = files.get(check.track_file)
    return (spec.weight, spec.reverse) if spec is not None else (0, False)


def file_effect(
    checks: Iterable[FileCheck], files: Mapping[str, TrackFile], values: Mapping[str, int]
) -> tuple[str | None, int]:
    """(why the real server is down, or None; the weight its FILE_CHECKs add)."""
    delta = 0
    for check in checks:
        weight, reverse = resolve(check, files)
        value = values.get(check.track_file, 0)
        status = file_status(value, weight, reverse)
        if status is None:
            return f"track_file {check.track_file} reads {value}", 0
        delta += status
    return None, delta


def clamp_weight(weight: int) -> int:
    return max(0, min(WEIGHT_MAX, weight))


class FileCheckWatcher:
    """One ``FileTracker`` per track_file the FILE_CHECKs name (see the module docstring)."""

    def __init__(self, on_value: Callable[[str, int], None]) -> None:
        self._on_value = on_value
        self._running: dict[str, tuple[TrackFile, trio.CancelScope]] = {}
        self.values: dict[str, int] = {}

    async def configure(self, nursery: trio.Nursery, wanted: Iterable[TrackFile]) -> None:
        """Watch exactly ``wanted``; each new tracker has read its file on return."""
        want = {t.name: t for t in wanted}
        for name, (spec, scope) in list(self._running.items()):
            if want.get(name) != spec:
                scope.cancel()
                del self._running[name]
                if name not in want:
                    self.values.pop(name, None)
        for name, spec in want.items():
            if name not in self._running:
                scope = await nursery.start(self._track, spec)
                self._running[name] = (spec, scope)

    async def _track(
        self, spec: TrackFile, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        with trio.CancelScope() as scope:
            tracker = FileTracker(spec, [self._value])

            async def started(*, task_status: trio.TaskStatus[None]) -> None:
                await tracker.run(task_status=task_status)

            async with trio.open_nursery() as inner:
                await inner.start(started)
                task_status.started(scope)

    def _value(self, name: str, value: int) -> None:
        if self.values.get(name) == value:
            return
        self.values[name] = value
        self._on_value(name, value)

    def stop(self) -> None:
        for _spec, scope in self._running.values():
            scope.cancel()
        self._running.clear()
