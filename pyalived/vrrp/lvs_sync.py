"""The kernel's IPVS connection-sync daemon, following one VRRP instance.

Theory of operation: ``lvs_sync_daemon IF INSTANCE ...`` asks for the
kernel's IPVS sync daemon (``ip_vs_sync``): a *master* daemon multicasts the
director's connection entries on IF, a *backup* daemon receives them into
its own table, so that a backup director that takes over already knows the
connections in flight and forwards them to the same real servers.  As in
keepalived 2.2.7 (measured in the test VM with ``ipvsadm -L --daemon``), the
daemon follows the named instance: a backup daemon from the start, a master
daemon (and no backup one) while the instance is MASTER, a backup daemon
again in BACKUP or FAULT, nothing once the VRRP half stops.  The VRRP child
drives it, as keepalived's VRRP process does: the instance's transitions are
known there first, and a takeover should start sending connection updates
as soon as it becomes MASTER.

``wanted`` (pure) says which daemons should run for a state; ``plan``
(pure) turns what the kernel reports, what is wanted and what was last
applied into ``Stop`` / ``Start`` steps: a running daemon that is not wanted,
or whose settings differ (the settings the configuration leaves to the
kernel's defaults are not compared), is stopped, then what is missing is
started.  So a daemon left by a killed pyalived (or started by hand) is
adopted when it matches and replaced when it does not, and a reload restarts
the daemon only when its settings changed.

``SyncDaemonDriver`` is the trio side: one service task under the VRRP
runtime's nursery.  An instance's state listener only records the new state
and wakes the task (it never blocks, so adverts are never delayed); the task
reads the kernel's daemons and applies the steps on a worker thread
(``SyncDaemonKernel``, the blocking ``pyalived.ipvs.netlink.NetlinkIpvs``
in the daemon, a fake in the tests).  A failing call (no IPVS yet, the
interface missing...) is logged and the whole reconciliation retried, 1 s,
2 s, 4 s... up to 30 s apart, until it succeeds or the state changes again.
When the task is cancelled (the VRRP half stops) it stops the daemons it
runs, within ``STOP_TIMEOUT``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import trio

from pyalived.config.model import NOWHERE, LvsSyncDaemon
from pyalived.ipvs.genl import DAEMON_BACKUP, DAEMON_MASTER, SyncDaemon
from pyalived.ipvs.netlink import IpvsUnavailable
from pyalived.vrrp.fsm import State, StateChanged

log = logging.getLogger(__name__)

RETRY_FIRST = 1.0  # seconds before the first retry of a failed reconciliation
RETRY_MAX = 30.0
STOP_TIMEOUT = 5.0  # seconds allowed to stop the daemons when the VRRP half stops
STATE_NAMES = {DAEMON_MASTER: "master", DAEMON_BACKUP: "backup"}


class SyncDaemonKernel(Protocol):
    """Blocking access to the kernel's sync daemons (``NetlinkIpvs``, or a fake)."""

    def daemons(self) -> list[SyncDaemon]: ...

    def start_daemon(self, daemon: SyncDaemon) -> None: ...

    def stop_daemon(self, state: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Stop:
    state: int

    def __str__(self) -> str:
        return f"stop the {STATE_NAMES[self.state]} sync daemon"


@dataclass(frozen=True)
class Start:
    daemon: SyncDaemon

    def __str__(self) -> str:
        d = self.daemon
        return (f"start the {STATE_NAMES[d.state]} sync daemon on {d.interface} "
                f"(sync id {d.sync_id})")


Step = Stop | Start
T = TypeVar("T")


class Blocking(Protocol):
    """Runs one blocking call and returns its result."""

    async def __call__(self, fn: Callable[[], T], /) -> T: ...


def wanted(conf: LvsSyncDaemon | None, vrid: int | None, state: State | None
           ) -> dict[int, SyncDaemon]:
    """The daemons that should run: ``state`` is the instance's, None once stopped."""
    if conf is None or conf.instance is None or vrid is None or state is None:
        return {}
    kind = DAEMON_MASTER if state is State.MASTER else DAEMON_BACKUP
    sync_id = conf.sync_id if conf.sync_id is not None else vrid
    daemon = SyncDaemon(kind, conf.interface, sync_id, conf.maxlen, conf.port, conf.ttl,
                        conf.group)
    return {kind: daemon}


def matches(running: SyncDaemon, want: SyncDaemon) -> bool:
    """``running`` (as the kernel reports it) has every setting ``want`` asks for."""
    for f in dataclasses.fields(SyncDaemon):
        asked = getattr(want, f.name)
        if asked is not None and getattr(running, f.name) != asked:
            return False
    return True


def plan(current: Mapping[int, SyncDaemon], desired: Mapping[int, SyncDaemon],
         applied: Mapping[int, SyncDaemon]) -> list[Step]:
    """The steps from the kernel's ``current`` daemons to the ``desired`` ones.

    ``applied`` holds what this process last started; a daemon started with other
    settings than the desired ones is restarted even where the kernel's report
    cannot tell (a setting dropped from the configuration, back to the default).
    """
    steps: list[Step] = []
    for state in (DAEMON_MASTER, DAEMON_BACKUP):
        running, want = current.get(state), desired.get(state)
        if running is None:
            continue
        before = applied.get(state)
        if want is None or not matches(running, want) or before not in (None, want):
            steps.append(Stop(state))
    stopped = {s.state for s in steps if isinstance(s, Stop)}
    for state in (DAEMON_MASTER, DAEMON_BACKUP):
        want = desired.get(state)
        if want is not None and (state not in current or state in stopped):
            steps.append(Start(want))
    return steps


class SyncDaemonDriver:
    """Keeps the kernel's sync daemons as the configuration and the instance's state say.

    ``open_kernel`` is called (on the worker thread) when a daemon is first needed.
    ``blocking`` runs one blocking kernel call (default: on a worker thread, one at a
    time; the unit tests run their fake kernel inline, under trio's mock clock).
    """

    def __init__(self, open_kernel: Callable[[], SyncDaemonKernel],
                 blocking: Blocking | None = None) -> None:
        self._open = open_kernel
        self._kernel: SyncDaemonKernel | None = None
        limiter = trio.CapacityLimiter(1)

        async def in_thread(fn: Callable[[], T]) -> T:
            return await trio.to_thread.run_sync(fn, limiter=limiter)

        self._blocking: Blocking = blocking or in_thread
        self._conf: LvsSyncDaemon | None = None
        self._vrid: int | None = None
        self._state: State | None = None
        self._applied: dict[int, SyncDaemon] = {}
        self._wake = trio.Event()
        self.reconciled = 0  # successful reconciliations (for the tests and the log)

    @property
    def desired(self) -> dict[int, SyncDaemon]:
        return wanted(self._conf, self._vrid, self._state)

    def configure(self, conf: LvsSyncDaemon | None, vrid: int | None,
                  state: State | None) -> None:
        """The settings (at start and after each reload) and the instance's current state
        (INIT there is a starting instance: a backup daemon)."""
        if conf is not None:
            conf = dataclasses.replace(conf, location=NOWHERE)
        changed = (conf, vrid, state) != (self._conf, self._vrid, self._state)
        self._conf, self._vrid, self._state = conf, vrid, state
        if changed:
            self._wake.set()

    def listener(self, inst: object, change: StateChanged) -> None:
        """An instance's state listener: follow the configured instance's state (INIT,
        entered when the instance stops, means no daemon)."""
        conf = self._conf
        if conf is None or getattr(inst, "name", None) != conf.instance:
            return
        state = None if change.new is State.INIT else change.new
        if state is not self._state:
            self._state = state
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Service task: reconcile on every change, retry failures; stop the daemons at the end."""
        task_status.started()
        try:
            delay = RETRY_FIRST
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                desired = self.desired
                try:
                    await self._reconcile(desired)
                except (OSError, IpvsUnavailable) as exc:
                    log.error("IPVS sync daemon: %s; retrying in %g s", exc, delay)
                    with trio.move_on_after(delay):
                        await self._wake.wait()  # a new state or setting: try that at once
                    self._wake.set()
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                delay = RETRY_FIRST
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + STOP_TIMEOUT
                await self._shutdown()

    async def _kernel_or_open(self) -> SyncDaemonKernel:
        if self._kernel is None:
            self._kernel = await self._blocking(self._open)
        return self._kernel

    async def _reconcile(self, desired: dict[int, SyncDaemon]) -> None:
        if not desired and self._kernel is None and not self._applied:
            return  # nothing configured, nothing started: the kernel is not even opened
        kernel = await self._kernel_or_open()
        running = await self._blocking(kernel.daemons)
        current = {d.state: d for d in running}
        for step in plan(current, desired, self._applied):
            log.info("IPVS: %s", step)
            if isinstance(step, Stop):
                await self._blocking(functools.partial(kernel.stop_daemon, step.state))
                self._applied.pop(step.state, None)
            else:
                await self._blocking(functools.partial(kernel.start_daemon, step.daemon))
                self._applied[step.daemon.state] = step.daemon
        self._applied = dict(desired)  # started or adopted: ours to stop at the end
        self.reconciled += 1

    async def _shutdown(self) -> None:
        kernel, self._kernel = self._kernel, None
        if kernel is None:
            return
        try:
            for state in list(self._applied):
                log.info("IPVS: %s", Stop(state))
                try:
                    await self._blocking(functools.partial(kernel.stop_daemon, state))
                except OSError as exc:
                    log.error("IPVS sync daemon: %s", exc)
            self._applied.clear()
        finally:
            await self._blocking(kernel.close)
