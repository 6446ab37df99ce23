"""Exact wake-ups for trio deadlines: a timerfd that fires when a timer is due.

Theory of operation: trio sleeps in ``epoll_wait`` with a timeout rounded up
to whole milliseconds, and Linux lets such a sleep overrun by 0.1 % of its
length (the "slack" it grants to poll and epoll timeouts, up to 100 ms).  A
backup's Master_Down timer of 3.65 s therefore fired about 4.5 ms late, and
RFC 3768 §6.4.2's takeover came late by as much.  A timerfd armed with an
absolute CLOCK_MONOTONIC time has only the thread's timer slack (50 us by
default), and its readability wakes trio's epoll at that moment; trio then
finds the deadline passed and runs the task whose timer it was.  An owner
that is callable is also called when its deadline comes (the VRRP instance
posts itself a tick): a task woken through its inbox resumes sooner than one
woken by the cancellation of its trio deadline, so the instance waits on its
own deadline plus ``FALLBACK`` and normally leaves that wait by the tick.

``DeadlineBook`` is the pure part: every owner (a VRRP instance) posts the
time it next needs to run, and the book says which moment the timerfd must be
armed for (the earliest deadline still pending), with stale entries dropped
lazily.  ``TimerfdWakeup`` is the thin I/O part: it converts trio's clock to
CLOCK_MONOTONIC (trio's ``SystemClock`` is ``time.perf_counter()`` plus an
offset, and ``perf_counter`` is CLOCK_MONOTONIC on Linux), arms the timerfd
``SPIN_AHEAD`` before the deadline and spins the rest (an idle virtual CPU
wakes from a timer hundreds of microseconds late; a busy one does not), until
a few microseconds after the deadline so that trio sees it expired, and runs
one task that reads the expirations and re-arms.  The wake-up only shortens
the sleep: each task still waits on its own trio deadline, so a missing or
failed timerfd (not Linux, no libc symbol) costs precision, never a timer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import heapq
import logging
import math
import os
import time
from collections.abc import Callable, Hashable

import trio

log = logging.getLogger("pyalived.vrrp")

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1
# Armed this long after the deadline, so that trio's clock has passed it on waking.
ARM_LATE = 20e-6
# How long after its deadline a task waiting for the tick gives up on it.
FALLBACK = 0.002
# The timerfd fires this long before the deadline and the rest is spun away: an
# idle CPU (a virtual one above all) takes hundreds of microseconds to wake from
# a timer, a spinning one none.  Costs at most this much CPU per wake-up.
SPIN_AHEAD = 0.0005


class DeadlineBook:
    """The pending deadline of each owner; ``next()`` is the earliest of them."""

    def __init__(self) -> None:
        self._due: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = 0  # tie-breaker: owners need not be comparable

    def set(self, owner: Hashable, deadline: float | None) -> None:
        """``owner`` next needs to run at ``deadline`` (None: it has no timer)."""
        if deadline is None or math.isinf(deadline):
            self._due.pop(owner, None)
            return
        if self._due.get(owner) == deadline:
            return
        self._due[owner] = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, owner))

    def next(self, now: float) -> float | None:
        """The earliest deadline later than ``now``; those at or before ``now`` are done."""
        self.pop_due(now)
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Hashable]:
        """The owners whose deadline is at or before ``now``, forgotten from here on."""
        heap = self._heap
        due: list[Hashable] = []
        while heap:
            deadline, _, owner = heap[0]
            if self._due.get(owner) != deadline:
                heapq.heappop(heap)  # superseded or withdrawn
            elif deadline <= now:
                heapq.heappop(heap)
                del self._due[owner]
                due.append(owner)
            else:
                break
        return due

    def __len__(self) -> int:
        return len(self._due)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class TimerfdWakeup:
    """Wakes trio's loop at the deadlines posted with ``wake_at`` (see the module docstring).

    ``wake_at`` may be called before ``run`` has started (the deadline is kept
    and armed once it runs) and after it ended (ignored).
    """

    def __init__(self) -> None:
        self._book = DeadlineBook()
        self._armed: float | None = None  # trio time the timerfd is armed for
        self.expirations = 0  # times the timerfd fired (statistics, tests)
        # How long a task waits past its deadline for the call: only while a timerfd runs.
        self.fallback = 0.0
        self._fd: int | None = None
        self._settime: Callable[..., int] | None = None

    @property
    def armed_for(self) -> float | None:
        """The deadline (trio time) the timerfd is armed for; None: disarmed."""
        return self._armed

    def wake_at(self, owner: Hashable, deadline: float | None) -> None:
        """``owner``'s task waits until ``deadline`` (trio time); None withdraws it.

        A callable ``owner`` is called (from this object's task) once the deadline
        has come, unless superseded or withdrawn first.
        """
        self._book.set(owner, deadline)
        if self._fd is None:
            return
        if deadline is not None and (self._armed is None or deadline < self._armed):
            self._arm(deadline)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the timerfd until cancelled; without one, do nothing (trio's own timeouts rule)."""
        try:
            libc = _libc()
            create, settime = libc.timerfd_create, libc.timerfd_settime
        except (OSError, AttributeError) as exc:
            log.debug("no timerfd (%s): timers wake with the event loop's precision", exc)
            task_status.started()
            await trio.sleep_forever()
            return
        create.argtypes = [ctypes.c_int, ctypes.c_int]
        settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        fd = create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            log.debug("timerfd_create: %s: timers wake with the event loop's precision",
                      os.strerror(err))
            task_status.started()
            await trio.sleep_forever()
            return
        self._fd, self._settime = fd, settime
        self.fallback = FALLBACK
        try:
            self._rearm()
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(fd)
                try:
                    os.read(fd, 8)
                except BlockingIOError:
                    pass
                else:
                    self.expirations += 1
                if self._armed is not None:
                    self._spin_until(self._armed + ARM_LATE)
                self._armed = None
                for owner in self._book.pop_due(trio.current_time()):
                    if callable(owner):
                        try:
                            owner()
                        except (trio.BrokenResourceError, trio.ClosedResourceError,
                                trio.WouldBlock) as exc:  # its task has gone: nothing to wake
                            log.debug("wake-up not delivered: %r", exc)
                self._rearm()
        finally:
            self._fd = self._settime = None
            self._armed = None
            self.fallback = 0.0
            os.close(fd)

    @staticmethod
    def _spin_until(deadline: float) -> None:
        # Bounded: the timerfd fired at most SPIN_AHEAD before ``deadline``.
        limit = time.perf_counter() + SPIN_AHEAD
        while trio.current_time() < deadline and time.perf_counter() < limit:
            pass

    def _rearm(self) -> None:
        deadline = self._book.next(trio.current_time())
        if deadline is None:
            self._disarm()
        elif deadline != self._armed:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        offset = trio.current_time() - time.perf_counter()
        mono = max(deadline - offset - SPIN_AHEAD, 1e-9)
        sec = math.floor(mono)
        self._set(sec, round((mono - sec) * 1e9))
        self._armed = deadline

    def _disarm(self) -> None:
        self._set(0, 0)
        self._armed = None

    def _set(self, sec: int, nsec: int) -> None:
        if nsec >= 1_000_000_000:
            sec, nsec = sec + 1, nsec - 1_000_000_000
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(sec, nsec))
        assert self._fd is not None and self._settime is not None
        flags = TFD_TIMER_ABSTIME if (sec or nsec) else 0
        if self._settime(self._fd, flags, ctypes.byref(spec), None) != 0:
            log.debug("timerfd_settime: %s", os.strerror(ctypes.get_errno()))
