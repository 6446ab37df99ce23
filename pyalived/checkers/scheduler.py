"""Runs every checker of every real server and reports health changes.

Theory of operation: ``CheckerScheduler.run`` starts one trio task per
checker under its own nursery, and ``add``/``remove``/``update`` start, stop
and reconfigure the checkers of single real servers while it runs (see
"Reload" below).  All checkers of all real servers sleep on one
``TimerQueue``, so thousands of them cost one trio deadline, not one each.
With a prober that has ``starter`` (``StartingProber``), the queue's own
task starts each due probe and, when it needed no waiting (a loopback
connect, a refusal), finishes it on the spot: the checker's task stays parked
and a check costs no task switch; a probe that must wait is handed to that
task.
A ``timer_granularity`` (the daemon uses 10 ms) lets the queue wake only on
that grid, so checks due close together share one wake-up of the process.
Each task loops: sleep until its ``CheckerPolicy`` timer, run one probe
through the ``Prober`` interface, feed the result to the policy and the
transitions to the real server's ``RealServerHealth`` (and its duration to
``on_probe_done``, the metrics' hook).  Tasks never wait for
each other, so a slow or hostile real server only delays its own checker
(every probe is bounded in time by the probes themselves).  Whenever a real
server's alive flag or effective weight changes, one ``RealServerEvent``
goes to the ``HealthSink`` (a plain synchronous callback; ``ChannelSink``
forwards to a trio memory channel for a subscriber that wants to await
events).  The initial state of every real server (alive unless one of its
checkers is in ``alpha`` mode) is reported before ``task_status.started()``,
and ``wait_running`` returns once every checker task runs (a probe due at
once has then started); when the scheduler is cancelled, real servers of
virtual servers with ``omega`` are reported down (a removed real server
reports nothing more).  Every checker transition is logged once, naming the
virtual server, real server, checker and reason.

Reload: a real server is known by a key, by default its virtual server's
name, address and port (``server_key``); the caller may give its own, which
events carry back.  ``update`` hands a running real server its new
specification (weight, checkers and their settings) without losing its
state: each checker's policy is reconfigured in place
(``CheckerPolicy.reconfigure``: verdict, retries and URL kept, the wait in
progress moved only if its interval changed) and the real server's health
keeps its alive flag (``RealServerHealth.reconfigure``: a dead real server
stays dead until a probe succeeds).  A checker's task goes on through an
update, a probe in progress included; only a checker that moves between the
two loops (one URL or several) is given a new task, its probe in progress,
if any, abandoned and started again at once.  A checker whose next probe
moved is woken (a sleeping task goes back to sleep until the new time) or
given a new timer entry (the fast path); the old entry, when it comes,
finds the probe not due and does nothing.

A probe that could not run for lack of this process's resources (a result
marked ``internal``, or an ``OSError`` such as EMFILE escaping the prober:
``pyalived.limits.is_resource_exhaustion``) is an internal error, not a
check: the policy retries it soon without touching the verdict, it is not
fed to ``on_probe_done``, and it is counted in ``internal_errors`` and
logged without a traceback through a ``LogThrottle`` shared by every checker
(one line per ``INTERNAL_ERROR_LOG_INTERVAL``, however many checkers hit it).
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio
from outcome import Value

from pyalived.checkers.policy import (
    INTERNAL_RETRY_DELAY,
    CheckerPolicy,
    ProbeResult,
    RealServerHealth,
    Verdict,
)
from pyalived.checkers.probes import Prober, RealProber, Starter
from pyalived.checkers.spec import (
    CheckerSpec,
    RealServerSpec,
    VirtualServerSpec,
    checker_label,
)
from pyalived.limits import LogThrottle, is_resource_exhaustion

log = logging.getLogger("pyalived.checkers")

#: Seconds between two log lines about probes that could not run (internal errors).
INTERNAL_ERROR_LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class RealServerEvent:
    virtual_server: str  # VirtualServerSpec.name
    real_server: RealServerSpec
    alive: bool
    weight: int  # effective weight (configured, or as set by misc_dynamic)
    checker: str | None  # label of the checker that caused it; None for initial/omega/reload
    reason: str
    key: Hashable = None  # the real server's key in the scheduler


class HealthSink(Protocol):
    """Receives real server health changes; must not block."""

    def real_server_changed(self, event: RealServerEvent) -> None: ...


class CallbackSink:
    def __init__(self, callback: Callable[[RealServerEvent], None]) -> None:
        self._callback = callback

    def real_server_changed(self, event: RealServerEvent) -> None:
        self._callback(event)


class ChannelSink:
    """Forwards events to a memory channel; create it with an infinite buffer.

    ``trio.open_memory_channel[RealServerEvent](math.inf)``: events are never
    dropped and the checkers never block on a slow subscriber.
    """

    def __init__(self, channel: trio.MemorySendChannel[RealServerEvent]) -> None:
        self._channel = channel

    def real_server_changed(self, event: RealServerEvent) -> None:
        try:
            self._channel.send_nowait(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def open_event_channel() -> tuple[ChannelSink, trio.MemoryReceiveChannel[RealServerEvent]]:
    send, receive = trio.open_memory_channel[RealServerEvent](math.inf)
    return ChannelSink(send), receive


ServerKey = Hashable  # how the scheduler knows a real server (``server_key`` by default)


def server_key(virtual_server: str, rs: RealServerSpec) -> ServerKey:
    """The default key of a real server: its virtual server's name, its address and port."""
    return (virtual_server, rs.ip, rs.port)


@dataclass(eq=False)
class _Server:
    key: ServerKey
    vs: VirtualServerSpec
    rs: RealServerSpec
    health: RealServerHealth
    checkers: list[_Checker]
    active: bool = True  # False once removed: it reports nothing more


@dataclass(eq=False, slots=True)
class _Checker:
    """One checker of one real server, as its task runs it."""

    server: _Server
    index: int  # among the real server's checkers
    spec: CheckerSpec
    policy: CheckerPolicy  # reconfigured in place by a reload: never replaced
    label: str
    fast: bool  # the timer queue's task starts its probes (see ``_checker_loop``)
    scope: trio.CancelScope
    start: Starter | None = None  # the fast path's probe starter
    started: float = 0.0  # when the probe in progress started
    active: bool = True  # False once retired: it reports nothing more
    began: bool = False  # its task has been counted as running (``wait_running``)
    fire: Callable[[], None] | None = None  # the fast path's timer callback, once set up
    slot: list[trio.lowlevel.Task | None] | None = None  # its task's timer-queue slot, asleep


ProbeStartObserver = Callable[[float, float], None]  # (scheduled, actual) times
ProbeDoneObserver = Callable[[CheckerSpec, float, bool], None]  # (spec, seconds taken, ok)


class TimerQueue:
    """Parks tasks until a deadline; one clock task wakes them, in deadline order.

    Cheaper than ``trio.sleep_until`` for thousands of periodic tasks: a
    parked task costs a heap entry, and waking it is a plain reschedule
    instead of a cancel scope delivering a ``Cancelled`` exception.

    With a ``granularity`` g > 0 the queue's own task wakes only at multiples
    of g (of trio's clock) and then runs everything due: an entry runs at its
    deadline rounded up to the grid, never before it and less than g after.
    Each wake-up of the process costs far more than the work of one check, so
    thousands of checks a second sharing a few wake-ups cost much less CPU.
    """

    def __init__(self, granularity: float = 0.0) -> None:
        if not granularity >= 0.0:
            raise ValueError("granularity must not be negative")
        self._heap: list[tuple[float, int, list[trio.lowlevel.Task | None] | Callable[[], None]]]
        self._heap = []
        self._seq = 0
        self._scope: trio.CancelScope | None = None
        self.granularity = granularity

    def wake_time(self, deadline: float) -> float:
        """When the queue's task wakes for an entry due at ``deadline``."""
        g = self.granularity
        if not g or math.isinf(deadline):
            return deadline
        wake = math.ceil(deadline / g) * g
        return wake if wake >= deadline else wake + g  # float rounding: never early

    def _wake_by(self, deadline: float) -> None:
        scope = self._scope
        assert scope is not None
        if deadline < scope.deadline:
            wake = self.wake_time(deadline)
            if wake < scope.deadline:
                scope.deadline = wake

    async def sleep_until(
        self, deadline: float, slot: list[trio.lowlevel.Task | None] | None = None
    ) -> None:
        """Sleep until ``deadline``, or until ``wake(slot)`` (``slot``: a one-item list,
        filled here with the sleeping task)."""
        if self._scope is None:
            raise RuntimeError("TimerQueue.run is not running")
        if slot is None:
            slot = [None]
        slot[0] = trio.lowlevel.current_task()
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, slot))
        self._wake_by(deadline)

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            slot[0] = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    @staticmethod
    def wake(slot: list[trio.lowlevel.Task | None]) -> None:
        """Wake the task sleeping on ``slot`` now (its queue entry is then skipped)."""
        task, slot[0] = slot[0], None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        """Call ``callback()`` from the queue's own task once ``deadline`` has come."""
        if self._scope is None:
            raise RuntimeError("TimerQueue.run is not running")
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, callback))
        self._wake_by(deadline)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        heap = self._heap
        self._scope = trio.CancelScope()
        task_status.started()
        reschedule = trio.lowlevel.reschedule
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                item = heapq.heappop(heap)[2]
                if isinstance(item, list):
                    task, item[0] = item[0], None  # a later ``wake`` finds it empty
                    if task is not None:
                        reschedule(task)
                else:
                    item()
            wake = self.wake_time(heap[0][0]) if heap else math.inf
            with trio.CancelScope(deadline=wake) as scope:
                self._scope = scope
                await trio.sleep_forever()


class CheckerScheduler:
    def __init__(
        self,
        virtual_servers: Sequence[VirtualServerSpec],
        sink: HealthSink,
        prober: Prober | None = None,
        rng: random.Random | None = None,
        on_probe_start: ProbeStartObserver | None = None,
        timer_granularity: float = 0.0,
        on_probe_done: ProbeDoneObserver | None = None,
    ) -> None:
        self._sink = sink
        self._prober: Prober = prober if prober is not None else RealProber()
        self._starter: Callable[[CheckerSpec, RealServerSpec], Starter] | None = getattr(
            self._prober, "starter", None
        )
        self._rng = rng if rng is not None else random.Random()
        self._on_probe_start = on_probe_start
        self._on_probe_done = on_probe_done
        self._now: Callable[[], float] = trio.current_time  # trio's clock, once ``run`` runs
        self._servers: dict[ServerKey, _Server] = {}
        for vs in virtual_servers:
            for rs in vs.real_servers:
                key = server_key(vs.name, rs)
                if key not in self._servers:
                    self._servers[key] = self._new_server(key, vs, rs)
        self._nursery: trio.Nursery | None = None
        self._timers = TimerQueue(timer_granularity)
        self._unstarted = 0  # checker tasks started but not yet running
        self._all_running = trio.Event()
        self.internal_errors = 0  # probes that could not run (see the module docstring)
        self._internal_log = LogThrottle(log, INTERNAL_ERROR_LOG_INTERVAL, lambda: self._now())

    @staticmethod
    def _new_server(key: ServerKey, vs: VirtualServerSpec, rs: RealServerSpec) -> _Server:
        return _Server(key, vs, rs, RealServerHealth.for_checkers(rs.weight, rs.checkers), [])

    def _event(self, s: _Server, checker: str | None, reason: str,
               alive: bool | None = None) -> RealServerEvent:
        alive = s.health.alive if alive is None else alive
        return RealServerEvent(s.vs.name, s.rs, alive, s.health.weight, checker, reason, s.key)

    def snapshot(self) -> list[RealServerEvent]:
        """The current state of every real server."""
        return [self._event(s, None, "current state") for s in self._servers.values()]

    def due_times(self) -> list[float]:
        """When each checker's next probe is due (those probing now left out)."""
        return [
            due
            for s in self._servers.values()
            for c in s.checkers
            if (due := c.policy.get_timer()) is not None
        ]

    def __contains__(self, key: object) -> bool:
        return key in self._servers

    def __len__(self) -> int:
        return len(self._servers)

    def _report_initial(self, s: _Server) -> None:
        reason = "initial state" if s.health.alive else "initial state (alpha)"
        self._emit(self._event(s, None, reason))

    def _start(self, s: _Server, now: float) -> None:
        for index, spec in enumerate(s.rs.checkers):
            self._start_checker(s, index, spec, CheckerPolicy.for_spec(spec, now, self._rng))

    def _start_checker(
        self, s: _Server, index: int, spec: CheckerSpec, policy: CheckerPolicy
    ) -> _Checker:
        assert self._nursery is not None
        fast = self._starter is not None and policy.steps == 1
        # (A checker of several steps always probes in its task: each probe names its step.)
        c = _Checker(s, index, spec, policy, checker_label(spec, index), fast, trio.CancelScope())
        if fast:
            c.start = self._make_start(spec, s.rs)
        if index < len(s.checkers):
            s.checkers[index] = c
        else:
            s.checkers.append(c)
        self._unstarted += 1
        self._nursery.start_soon(self._checker_task, c)
        return c

    def _make_start(self, spec: CheckerSpec, rs: RealServerSpec) -> Starter:
        assert self._starter is not None
        try:
            return self._starter(spec, rs)
        except Exception as exc:  # a prober bug must not take the other checkers down
            error = exc

            def start() -> ProbeResult:
                raise error

            return start

    @staticmethod
    def _retire(c: _Checker) -> None:
        c.active = False
        c.scope.cancel()

    def add(self, vs: VirtualServerSpec, rs: RealServerSpec, key: ServerKey = None) -> None:
        """Check ``rs`` of ``vs`` under ``key`` (default: ``server_key``).

        While ``run`` runs, its initial state is reported now and its checkers
        start; before, it simply joins the real servers ``run`` starts.  A key
        already known is left alone.
        """
        if key is None:
            key = server_key(vs.name, rs)
        if key in self._servers:
            return
        s = self._servers[key] = self._new_server(key, vs, rs)
        if self._nursery is not None:
            self._report_initial(s)
            self._start(s, self._now())

    def update(self, vs: VirtualServerSpec, rs: RealServerSpec, key: ServerKey = None) -> None:
        """Give the real server known by ``key`` its new specification, keeping its state.

        See the module docstring.  A change of its weight (the only visible
        change a reload can make) is reported with the reason "reload".  An
        unknown key is added.
        """
        if key is None:
            key = server_key(vs.name, rs)
        s = self._servers.get(key)
        if s is None:
            self.add(vs, rs, key)
            return
        s.vs = vs  # its name for the logs, omega
        if rs == s.rs:
            return
        s.rs = rs
        if self._nursery is None:  # nothing has run yet: nothing to keep
            s.health = RealServerHealth.for_checkers(rs.weight, rs.checkers)
            return
        change = s.health.reconfigure(rs.weight, rs.checkers)
        self._reconfigure_checkers(s, self._now())
        if change is not None:
            log.info("%s: real server %s: weight %d (reload)", vs, rs, change.weight)
            self._emit(self._event(s, None, change.reason))

    def _reconfigure_checkers(self, s: _Server, now: float) -> None:
        specs = s.rs.checkers
        for c in s.checkers[len(specs):]:
            self._retire(c)
        del s.checkers[len(specs):]
        for index, spec in enumerate(specs):
            if index >= len(s.checkers):  # an added checker: in the real server's state
                up = s.health.checker_up(index)
                policy = CheckerPolicy.for_spec(spec, now, self._rng, alpha=not up)
                self._start_checker(s, index, spec, policy)
                continue
            c = s.checkers[index]
            policy = c.policy
            if spec != c.spec:
                due = policy.get_timer()
                policy.reconfigure(spec, now)
                c.spec, c.label = spec, checker_label(spec, index)
                if policy.up and not s.health.checker_up(index):
                    policy.force_down()
                fast = self._starter is not None and policy.steps == 1
                if fast != c.fast:  # the other loop: a new task, same policy
                    self._retire(c)
                    if policy.probing:
                        policy.probe_abandoned(now)
                    self._start_checker(s, index, spec, policy)
                    continue
                if fast:
                    c.start = self._make_start(spec, s.rs)
                if policy.get_timer() != due:
                    self._retime(c)
            elif policy.up and not s.health.checker_up(index):
                policy.force_down()

    def _retime(self, c: _Checker) -> None:
        """The policy's next probe moved: let the checker's loop see it."""
        due = c.policy.get_timer()
        if due is None:
            return  # a probe in progress: the loop reads the timer after it
        if c.fire is not None:
            self._timers.call_at(due, c.fire)  # the old entry, when it comes, is ignored
        elif c.slot is not None:
            self._timers.wake(c.slot)  # the task goes back to sleep until the new time

    def _began(self, c: _Checker) -> None:
        if c.began:
            return
        c.began = True
        self._unstarted -= 1
        if not self._unstarted:
            self._all_running.set()

    async def wait_running(self) -> None:
        """Return once every checker task started so far runs.

        A probe that was already due when its checker started (no warmup) has
        started by then.
        """
        if self._unstarted:
            if self._all_running.is_set():
                self._all_running = trio.Event()
            await self._all_running.wait()

    def remove_key(self, key: ServerKey) -> None:
        """Stop checking the real server known by ``key``.

        Its checkers are cancelled and it reports nothing more (not even omega).
        """
        s = self._servers.pop(key, None)
        if s is not None:
            s.active = False
            for c in s.checkers:
                self._retire(c)

    def remove(self, virtual_server: str, rs: RealServerSpec) -> None:
        """``remove_key`` of ``rs`` of the virtual server named ``virtual_server``."""
        self.remove_key(server_key(virtual_server, rs))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._now = trio.lowlevel.current_clock().current_time  # skips trio.current_time's lookup
        now = self._now()
        for s in self._servers.values():
            self._report_initial(s)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._timers.run)
                self._nursery = nursery
                for s in self._servers.values():
                    self._start(s, now)
                task_status.started()
        finally:
            self._nursery = None
            for s in self._servers.values():
                if s.vs.omega and s.health.alive:
                    log.info("%s: real server %s down on shutdown (omega)", s.vs, s.rs)
                    self._emit(self._event(s, None, "shutdown", alive=False))

    def _emit(self, event: RealServerEvent) -> None:
        self._sink.real_server_changed(event)

    async def _probe(self, c: _Checker) -> ProbeResult:
        try:
            return await self._prober.probe(c.spec, c.server.rs, c.policy.step)
        except Exception as exc:  # a probe bug must not take the other checkers down
            return self._probe_error(c.spec, c.server.rs, exc)

    async def _checker_task(self, c: _Checker) -> None:
        try:
            with c.scope:
                if c.active:
                    await self._checker_loop(c)
        finally:
            self._began(c)

    async def _checker_loop(self, c: _Checker) -> None:
        # A probe already due when the task begins (warmup 0) starts one
        # checkpoint later, before ``wait_running`` returns; later ones wait in
        # the queue.
        # A retired checker stops at its next checkpoint; one that was already
        # rescheduled when it was retired may run on up to its next wait, so it
        # looks at ``c.active`` after each one and never touches its policy
        # again (a new task may be running that policy).
        policy = c.policy
        due = self._next_due(policy)
        if due > trio.current_time():
            self._began(c)
        else:
            await trio.lowlevel.checkpoint()
            self._began(c)
            if not c.active:
                return
            await self._probe_in_task(c, due)
        task = trio.lowlevel.current_task()
        now = self._now
        if not c.fast:
            sleep_until = self._timers.sleep_until
            while c.active:
                due = self._next_due(policy)
                slot: list[trio.lowlevel.Task | None] = [task]
                c.slot = slot
                await sleep_until(due, slot)
                c.slot = None
                if not c.active:
                    return
                due = self._next_due(policy)
                if due <= now():  # else woken early: a reload moved the probe later
                    await self._probe_in_task(c, due)
            return
        # Fast path: the timer queue's task starts each probe (``fire``) and
        # finishes it on the spot when it needs no waiting; only a probe that
        # must wait is handed to this task, which otherwise stays parked.
        parked = [True]
        call_at = self._timers.call_at
        on_start = self._on_probe_start

        def fire() -> None:
            if not parked[0] or not c.active:
                return
            due = policy.get_timer()
            if due is None or due > now():
                return  # an entry a reload left behind: the probe moved
            started = c.started = now()
            if on_start is not None:
                on_start(due, started)
            policy.probe_started(started)
            start = c.start
            assert start is not None
            try:
                outcome = start()
            except Exception as exc:  # a probe bug must not take the other checkers down
                outcome = self._probe_error(c.spec, c.server.rs, exc)
            if isinstance(outcome, ProbeResult):
                self._probe_done(c, outcome)
                call_at(self._next_due(policy), fire)
            else:
                parked[0] = False
                trio.lowlevel.reschedule(task, Value(outcome))

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            parked[0] = False
            return trio.lowlevel.Abort.SUCCEEDED

        c.fire = fire
        while c.active:
            parked[0] = True
            call_at(self._next_due(policy), fire)
            pending = await trio.lowlevel.wait_task_rescheduled(abort)
            try:
                result = await pending
            except Exception as exc:
                result = self._probe_error(c.spec, c.server.rs, exc)
            self._probe_done(c, result)

    @staticmethod
    def _next_due(policy: CheckerPolicy) -> float:
        due = policy.get_timer()
        assert due is not None
        return due

    @staticmethod
    def _probe_error(spec: CheckerSpec, rs: RealServerSpec, exc: Exception) -> ProbeResult:
        if is_resource_exhaustion(exc):
            assert isinstance(exc, OSError)
            return ProbeResult(False, str(exc.strerror or exc).lower(), internal=True)
        log.error("%s on %s: probe error", spec.kind, rs, exc_info=exc)
        return ProbeResult(False, f"internal probe error: {exc!r}")

    async def _probe_in_task(self, c: _Checker, due: float) -> None:
        started = c.started = self._now()
        if self._on_probe_start is not None:
            self._on_probe_start(due, started)
        c.policy.probe_started(started)
        result = await self._probe(c)
        self._probe_done(c, result)

    def _probe_done(self, c: _Checker, result: ProbeResult) -> None:
        if not c.active:
            return  # retired by a reload or a removal while its probe ran
        now = self._now()
        if result.internal:
            self.internal_errors += 1
            c.policy.probe_finished(result, now)  # no transition: only the next probe's time
            self._internal_log.log(
                logging.ERROR,
                "%s: real server %s: %s could not run: %s (internal error, not counted "
                "against the real server; retrying in %g s)",
                c.server.vs, c.server.rs, c.label, result.reason,
                min(c.policy.delay_loop, INTERNAL_RETRY_DELAY),
            )
            return
        if self._on_probe_done is not None:
            self._on_probe_done(c.spec, now - c.started, result.ok)
        transitions = c.policy.probe_finished(result, now)
        s, label = c.server, c.label
        verdict: Verdict | None = None
        reason = result.reason
        for tr in transitions:
            verdict, reason = tr.verdict, tr.reason
            log.info("%s: real server %s: %s %s: %s", s.vs, s.rs, label, tr.verdict.value, reason)
        weight = result.weight if result.ok else None
        if verdict is None and weight is None:
            return  # the common case: nothing changed
        change = s.health.update(c.index, verdict, weight, reason)
        if change is None or not s.active:
            return
        if verdict is None:
            log.info(
                "%s: real server %s: %s sets weight %d: %s",
                s.vs, s.rs, label, change.weight, reason,
            )
        self._emit(
            RealServerEvent(
                s.vs.name, s.rs, change.alive, change.weight, label, change.reason, s.key
            )
        )
