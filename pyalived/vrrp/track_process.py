"""Tracked processes (``vrrp_track_process``): which processes run, as a pure state machine.

Theory of operation: ``ProcessTable`` is told what happens to processes --
a full scan (``rescan``, a pid -> ``ProcInfo`` mapping read from /proc), or
one event of the kernel's process-events connector (``exec``/``comm``: the
process may now match or no longer; ``fork``: a new process like its parent;
``exit``) with the ``ProcInfo`` the I/O layer read for it -- plus ``now``.
It keeps, per ``vrrp_track_process``, the set of matching pids, and decides
whether the process is "up": ``quorum`` <= count <= ``quorum_max``.  It
returns the status changes, ``(name, up)``; the effect of a status on an
instance is ``pyalived.vrrp.tracking.process_effect``.

As keepalived 2.2.7 does:

* a process matches on its name (``/proc/PID/comm``, at most 15 characters,
  so ``process`` is compared by its first 15), or with ``full_command`` on
  its command (``argv[0]`` of ``/proc/PID/cmdline``).  Configured
  parameters are compared with the rest of the command line:
  ``param_match exact`` (the default when parameters are given) wants the
  same parameters, ``partial`` the configured ones first, ``initial`` the
  same but the last configured one may be a prefix of the process's.
  ``param_match`` without parameters means "no parameters".  Zombies and
  threads never count;
* a change of status caused by a fork waits ``fork_delay``; a loss of quorum
  for any other reason waits ``terminate_delay``; a gain by exec (or a
  rename) takes effect at once.  A pending change that the count undoes
  before it is due is cancelled, so a daemon restarted within the delay
  changes nothing.  ``get_timer`` is the earliest pending change.

The first scan decides every status at once, without delay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyalived.config.model import ParamMatch, TrackProcess

COMM_LEN = 15  # TASK_COMM_LEN - 1: the kernel keeps this much of a process name


@dataclass(frozen=True)
class ProcInfo:
    comm: str
    argv: tuple[str, ...] = ()  # empty when not read (no full_command/parameters) or none


def needs_cmdline(spec: TrackProcess) -> bool:
    """Whether matching ``spec`` reads the command line."""
    return spec.full_command or bool(spec.params) or spec.param_match is not ParamMatch.NONE


def matches(spec: TrackProcess, info: ProcInfo) -> bool:
    """Whether a process described by ``info`` counts for ``spec``."""
    if spec.full_command:
        if not info.argv or info.argv[0] != spec.process:
            return False
    elif info.comm != spec.process[:COMM_LEN]:
        return False
    if spec.param_match is ParamMatch.NONE:
        return True
    args, want = info.argv[1:], spec.params
    if not info.argv:
        return False
    if spec.param_match is ParamMatch.EXACT:
        return args == want
    if len(args) < len(want):
        return False
    if spec.param_match is ParamMatch.PARTIAL or not want:
        return args[: len(want)] == want
    return args[: len(want) - 1] == want[:-1] and args[len(want) - 1].startswith(want[-1])


class _Tracked:
    __slots__ = ("pending", "pids", "spec", "up")

    def __init__(self, spec: TrackProcess) -> None:
        self.spec = spec
        self.pids: set[int] = set()
        self.up: bool | None = None
        self.pending: tuple[float, bool] | None = None  # (due, status)

    def quorum(self) -> bool:
        n = len(self.pids)
        top = self.spec.quorum_max
        return self.spec.quorum <= n and (top is None or n <= top)


Change = tuple[str, bool]  # (vrrp_track_process name, up)


class ProcessTable:
    """See the module docstring."""

    def __init__(self, specs: Sequence[TrackProcess]) -> None:
        self.specs = tuple(specs)
        self._tracked = [_Tracked(s) for s in specs]
        self.needs_cmdline = any(needs_cmdline(s) for s in specs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.spec.name for t in self._tracked)

    def status(self, name: str) -> bool | None:
        for t in self._tracked:
            if t.spec.name == name:
                return t.up
        return None

    def count(self, name: str) -> int:
        for t in self._tracked:
            if t.spec.name == name:
                return len(t.pids)
        return 0

    def pids(self) -> set[int]:
        """Every pid that counts for some tracked process."""
        return set().union(*(t.pids for t in self._tracked))

    def tracks(self, pid: int) -> bool:
        """Whether ``pid`` counts for any tracked process."""
        return any(pid in t.pids for t in self._tracked)

    def get_timer(self) -> float | None:
        due = min((t.pending[0] for t in self._tracked if t.pending is not None),
                  default=math.inf)
        return None if due == math.inf else due

    # -- inputs --

    def rescan(self, now: float, processes: Mapping[int, ProcInfo]) -> list[Change]:
        changes: list[Change] = []
        for t in self._tracked:
            t.pids = {pid for pid, info in processes.items() if matches(t.spec, info)}
            self._settle(t, now, fork=False, out=changes)
        return changes

    def exec(self, now: float, pid: int, info: ProcInfo | None) -> list[Change]:
        """An exec or a rename (``info`` None: the process is already gone)."""
        return self._seen(now, pid, info, fork=False)

    def fork(self, now: float, pid: int, info: ProcInfo | None) -> list[Change]:
        return self._seen(now, pid, info, fork=True)

    def exit(self, now: float, pid: int) -> list[Change]:
        return self._seen(now, pid, None, fork=False)

    def timer_expired(self, now: float) -> list[Change]:
        changes: list[Change] = []
        for t in self._tracked:
            if t.pending is not None and t.pending[0] <= now:
                t.up = t.pending[1]
                t.pending = None
                changes.append((t.spec.name, t.up))
        return changes

    # -- internals --

    def _seen(self, now: float, pid: int, info: ProcInfo | None, *, fork: bool) -> list[Change]:
        changes: list[Change] = []
        for t in self._tracked:
            match = info is not None and matches(t.spec, info)
            if match == (pid in t.pids):
                continue
            if match:
                t.pids.add(pid)
            else:
                t.pids.discard(pid)
            self._settle(t, now, fork=fork, out=changes)
        return changes

    def _settle(self, t: _Tracked, now: float, *, fork: bool, out: list[Change]) -> None:
        ok = t.quorum()
        if t.up is None or (ok == t.up and t.pending is None):
            if t.up is None:
                t.up = ok
                out.append((t.spec.name, ok))
            return
        if ok == t.up:
            t.pending = None  # undone before it was due
            return
        if t.pending is not None:
            return  # already on its way there
        delay = t.spec.fork_delay if fork else (t.spec.terminate_delay if not ok else 0.0)
        if delay > 0:
            t.pending = (now + delay, ok)
            return
        t.up = ok
        out.append((t.spec.name, ok))
