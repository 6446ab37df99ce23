"""Scheduling and memory settings of a child process, as keepalived's global_defs set them.

Theory of operation: keepalived lets an operator favour its VRRP child (or
its checker child) over the rest of the host: ``vrrp_priority`` /
``checker_priority`` (a nice value, -20..19), ``vrrp_rt_priority`` /
``checker_rt_priority`` (real-time round-robin scheduling at 1..99),
``vrrp_rlimit_rttime`` / ``checker_rlimit_rttime`` (the CPU time, in
microseconds, a real-time process may use without blocking before the kernel
kills it, RLIMIT_RTTIME), ``vrrp_no_swap`` / ``checker_no_swap`` (all pages
locked in memory) and ``vrrp_cpu_affinity`` / ``checker_cpu_affinity`` (the
CPUs it may run on).  ``Tuning.of`` picks one half's settings from
``GlobalDefs`` (pure); ``apply_tuning`` carries them out for every thread of
the calling process -- on Linux the nice value, the policy and the affinity
belong to each thread, so each one listed in ``/proc/self/task`` is set,
and threads started later inherit them from the thread that starts them.
It runs when the child starts and again after each reload, which makes a
changed setting take effect without a restart (a setting removed goes back
to the default: nice 0, SCHED_OTHER, every CPU, pages unlocked, no limit).

The scripts a child starts run at normal priority, as keepalived's do (it
asks for SCHED_RESET_ON_FORK): ``spawn_options`` gives the process-spawning
calls (``pyalived.scripts``, MISC_CHECK) a ``preexec_fn`` that puts the new
process back on SCHED_OTHER and a negative nice value back to 0 before it
executes the script.  The flag itself is not used: it would also reset every
thread the child starts later (the netlink thread, trio's worker threads),
which must share the child's priority, since they carry its work.  Unlike
keepalived, which defaults RLIMIT_RTTIME to 10 ms once real-time scheduling
is on, pyalived sets the limit only when it is given: a Python child may
legitimately compute for longer than that without blocking (a reload that
reconfigures thousands of addresses), and the kernel's answer to the limit is
SIGKILL.  A setting the kernel refuses (no CAP_SYS_NICE, a CPU that does not
exist) is logged at error level and the others still apply; the daemon
carries on with the defaults.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyalived.config.model import GlobalDefs

log = logging.getLogger("pyalived.tuning")

MCL_CURRENT, MCL_FUTURE = 1, 2  # sys/mman.h

_in_effect: Tuning | None = None  # what this process runs with (``apply_tuning``)


@dataclass(frozen=True)
class Tuning:
    nice: int = 0
    rt_priority: int | None = None
    rlimit_rttime: int | None = None  # microseconds
    no_swap: bool = False
    cpu_affinity: tuple[int, ...] = ()  # (): every CPU

    @classmethod
    def of(cls, gd: GlobalDefs, half: str) -> Tuning:
        """The settings of ``half`` ("vrrp" or "checker") in ``gd``."""
        if half == "vrrp":
            return cls(gd.vrrp_priority or 0, gd.vrrp_rt_priority, gd.vrrp_rlimit_rttime,
                       gd.vrrp_no_swap, gd.vrrp_cpu_affinity)
        return cls(gd.checker_priority or 0, gd.checker_rt_priority, gd.checker_rlimit_rttime,
                   gd.checker_no_swap, gd.checker_cpu_affinity)


def _threads() -> Iterator[int]:
    try:
        names = os.listdir("/proc/self/task")
    except OSError:
        names = [str(os.getpid())]
    for name in names:
        yield int(name)


def _try(what: str, fn: object, *args: object) -> bool:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        log.error("cannot set %s: %s", what, exc.strerror or exc)
        return False
    return True


def apply_tuning(tuning: Tuning, previous: Tuning | None = None) -> None:
    """Set ``tuning`` for every thread of this process (see the module docstring);
    ``previous`` (what was applied before) saves the calls that would change nothing."""
    global _in_effect
    _in_effect = tuning
    before = previous or Tuning()
    if previous is not None and tuning == previous:
        return
    for tid in _threads():
        if tuning.rt_priority is not None:
            _try(f"real-time priority {tuning.rt_priority}", os.sched_setscheduler, tid,
                 os.SCHED_RR, os.sched_param(tuning.rt_priority))
        elif before.rt_priority is not None:
            _try("normal scheduling", os.sched_setscheduler, tid, os.SCHED_OTHER,
                 os.sched_param(0))
        if tuning.nice != before.nice:
            _try(f"priority {tuning.nice}", os.setpriority, os.PRIO_PROCESS, tid, tuning.nice)
        if tuning.cpu_affinity != before.cpu_affinity:
            cpus = set(tuning.cpu_affinity) or set(range(os.cpu_count() or 1))
            _try(f"CPU affinity {sorted(cpus)}", os.sched_setaffinity, tid, cpus)
    if tuning.rlimit_rttime != before.rlimit_rttime:
        limit = resource.RLIM_INFINITY if tuning.rlimit_rttime is None else tuning.rlimit_rttime
        _try(f"RLIMIT_RTTIME {limit}", resource.setrlimit, resource.RLIMIT_RTTIME,
             (limit, limit))
    if tuning.no_swap != before.no_swap:
        libc = ctypes.CDLL(None, use_errno=True)
        if tuning.no_swap:
            failed = libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0
        else:
            failed = libc.munlockall() != 0
        if failed:
            err = ctypes.get_errno()
            log.error("cannot %s memory: %s", "lock" if tuning.no_swap else "unlock",
                      os.strerror(err))


def _normal_priority() -> None:
    """In a new process, before it executes its program: normal scheduling."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    if os.getpriority(os.PRIO_PROCESS, 0) < 0:
        os.setpriority(os.PRIO_PROCESS, 0, 0)


def spawn_options() -> dict[str, Any]:
    """Extra ``subprocess`` arguments for a script started by this process: a reset
    to normal priority when this process runs at a raised one, else nothing."""
    tuned = _in_effect
    if tuned is not None and (tuned.rt_priority is not None or tuned.nice < 0):
        return {"preexec_fn": _normal_priority}
    return {}


class Tuner:
    """One child's settings over its life: applied at start and after each reload."""

    def __init__(self, half: str) -> None:
        self.half = half
        self.applied: Tuning | None = None

    def apply(self, gd: GlobalDefs) -> None:
        tuning = Tuning.of(gd, self.half)
        if self.applied is not None and tuning == self.applied:
            return
        apply_tuning(tuning, self.applied)
        if tuning != Tuning() or self.applied is not None:
            log.info("%s process: %s", self.half, describe(tuning))
        self.applied = tuning


def describe(tuning: Tuning) -> str:
    """``nice -5, real-time priority 50, ...`` for the log."""
    parts = [f"nice {tuning.nice}"]
    if tuning.rt_priority is not None:
        parts.append(f"real-time priority {tuning.rt_priority}")
    if tuning.rlimit_rttime is not None:
        parts.append(f"RLIMIT_RTTIME {tuning.rlimit_rttime} us")
    if tuning.no_swap:
        parts.append("memory locked")
    if tuning.cpu_affinity:
        parts.append("CPUs " + ",".join(str(c) for c in tuning.cpu_affinity))
    return ", ".join(parts)
