"""Runs every checker of every real server and reports health changes.

Theory of operation: ``CheckerScheduler.run`` checks every configured real
server, and ``add``/``remove``/``update`` start, stop and reconfigure the
checkers of single real servers while it runs (see "Reload" below).  An idle
checker is no task: it is one entry in a ``TimerQueue`` (a heap served by one
clock task), so tens of thousands of checkers cost one trio deadline and a
few hundred bytes each.  When a checker's ``CheckerPolicy`` timer comes, the
queue's task starts its probe.  With a prober that has ``starter``
(``StartingProber``) a single-step checker's probe is started synchronously
and, when it needed no waiting (a loopback connect, a refusal), finished on
the spot; a probe that must wait, and every probe of other checkers, runs in
a task of the scheduler's nursery that lives as long as the probe.  A probe
already due when its checker starts (``warmup 0``) runs in such a task too.
A ``timer_granularity`` (the daemon uses 10 ms) lets the queue wake only on
that grid, so checks due close together share one wake-up of the process.
Each result goes to the policy, the transitions to the real server's
``RealServerHealth`` (and its duration to ``on_probe_done``, the metrics'
hook), and the checker's next timer entry is queued.  Probes never wait for
each other, so a slow or hostile real server only delays its own checker
(every probe is bounded in time by the probes themselves).  Whenever a real
server's alive flag or effective weight changes, one ``RealServerEvent``
goes to the ``HealthSink`` (a plain synchronous callback; ``ChannelSink``
forwards to a trio memory channel for a subscriber that wants to await
events).  The initial state of every real server (alive unless one of its
checkers is in ``alpha`` mode) is reported before ``task_status.started()``,
and ``wait_running`` returns once every probe due at a checker's start has
started; when the scheduler is cancelled, real servers of virtual servers
with ``omega`` are reported down (a removed real server reports nothing
more).  Every checker transition is logged once, naming the virtual server,
real server, checker and reason.

Reload: a real server is known by a key, by default its virtual server's
name, address and port (``server_key``); the caller may give its own, which
events carry back.  ``update`` hands a running real server its new
specification (weight, checkers and their settings) without losing its
state: each checker's policy is reconfigured in place
(``CheckerPolicy.reconfigure``: verdict, retries and URL kept, the wait in
progress moved only if its interval changed) and the real server's health
keeps its alive flag (``RealServerHealth.reconfigure``: a dead real server
stays dead until a probe succeeds).  A probe in progress goes on through an
update; only a checker that moves between the two paths (one URL or
several) is replaced, its probe in progress, if any, abandoned and started
again at once.  A checker whose next probe moved is given a new timer entry;
the old entry, when it comes, finds the probe not due and does nothing.

Suspension (``suspend``, the virtual servers' ``ha_suspend``): a suspended
real server's checkers keep their state and timers, but a probe that comes
due is not run: it is put off by the checker's ``delay_loop``, again and
again, until the real server is resumed, as keepalived re-arms a disabled
checker without checking.

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
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import trio

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


@dataclass(eq=False, slots=True)
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

    owner: CheckerScheduler
    server: _Server
    index: int  # among the real server's checkers
    spec: CheckerSpec
    policy: CheckerPolicy  # reconfigured in place by a reload: never replaced
    start: Starter | None = None  # the fast path's probe starter (None: probes run in a task)
    started: float = 0.0  # when the probe in progress started
    active: bool = True  # False once retired: it reports nothing more
    began: bool = True  # False while a probe due at its start waits (``wait_running``)
    scope: trio.CancelScope | None = None  # of the task running its probe, if any

    @property
    def label(self) -> str:
        return checker_label(self.spec, self.index)

    def __call__(self) -> None:
        """Its timer-queue entry has come (see ``CheckerScheduler._dispatch``)."""
        self.owner._dispatch(self)


ProbeStartObserver = Callable[[float, float], None]  # (scheduled, actual) times
ProbeDoneObserver = Callable[[CheckerSpec, float, bool], None]  # (spec, seconds taken, ok)


class TimerQueue:
    """Calls callbacks at their deadlines from one clock task, in deadline order.

    Cheaper than a task per timer for thousands of periodic checkers: an
    entry costs a heap entry, and one trio deadline serves them all.

    With a ``granularity`` g > 0 the queue's own task wakes only at multiples
    of g (of trio's clock) and then runs everything due: an entry runs at its
    deadline rounded up to the grid, never before it and less than g after.
    Each wake-up of the process costs far more than the work of one check, so
    thousands of checks a second sharing a few wake-ups cost much less CPU.
    """

    def __init__(self, granularity: float = 0.0) -> None:
        if not granularity >= 0.0:
            raise ValueError("granularity must not be negative")
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
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

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        """Call ``callback()`` from the queue's own task once ``deadline`` has come."""
        scope = self._scope
        if scope is None:
            raise RuntimeError("TimerQueue.run is not running")
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, callback))
        if deadline < scope.deadline:
            wake = self.wake_time(deadline)
            if wake < scope.deadline:
                scope.deadline = wake

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        heap = self._heap
        self._scope = trio.CancelScope()
        task_status.started()
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2]()
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
        self._suspended: set[ServerKey] = set()  # real servers whose probes are put off
        self._all_running = trio.Event()
        self.internal_errors = 0  # probes that could not run (see the module docstring)
        self._internal_log = LogThrottle(log, INTERNAL_ERROR_LOG_INTERVAL, lambda: self._now())
        # global_defs checker_log_all_failures (set by the LVS service, on reload too)
        self.log_all_failures = False

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
        c = _Checker(self, s, index, spec, policy)
        if self._starter is not None and policy.steps == 1:
            # (A checker of several steps always probes in a task: each probe names its step.)
            c.start = self._make_start(spec, s.rs)
        if index < len(s.checkers):
            s.checkers[index] = c
        else:
            s.checkers.append(c)
        due = self._next_due(policy)
        if due <= self._now():
            c.began = False
            self._unstarted += 1
        self._timers.call_at(due, c)
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

    def _retire(self, c: _Checker) -> None:
        c.active = False
        if c.scope is not None:
            c.scope.cancel()
        self._began(c)

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
                if policy.up and not s.health.checker_up(index):
                    policy.force_down()
                fast = self._starter is not None and policy.steps == 1
                if fast != (c.start is not None):  # the other path: same policy, anew
                    self._retire(c)
                    if policy.probing:
                        policy.probe_abandoned(now)
                    self._start_checker(s, index, spec, policy)
                    continue
                if fast and replace(spec, timing=c.spec.timing) != c.spec:
                    c.start = self._make_start(spec, s.rs)  # (its timing is never the starter's)
                c.spec = spec
                if policy.get_timer() != due:
                    self._retime(c)
            elif policy.up and not s.health.checker_up(index):
                policy.force_down()

    def _retime(self, c: _Checker) -> None:
        """The policy's next probe moved: give the checker a timer entry at the new time.

        The old entry, when it comes, finds the probe not due and does nothing.
        """
        due = c.policy.get_timer()
        if due is not None:  # else a probe in progress: its end reads the timer
            self._timers.call_at(due, c)

    def _began(self, c: _Checker) -> None:
        if c.began:
            return
        c.began = True
        self._unstarted -= 1
        if not self._unstarted:
            self._all_running.set()

    async def wait_running(self) -> None:
        """Return once every checker started so far waits for its next probe.

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
        self._suspended.discard(key)
        if s is not None:
            s.active = False
            for c in s.checkers:
                self._retire(c)

    def suspend(self, key: ServerKey, suspended: bool) -> None:
        """Put off (or resume) the probes of the real server known by ``key``."""
        if suspended:
            self._suspended.add(key)
        else:
            self._suspended.discard(key)

    def suspended(self, key: ServerKey) -> bool:
        return key in self._suspended

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

    def _dispatch(self, c: _Checker) -> None:
        """A timer entry of ``c`` has come: start its probe if it is due."""
        if not c.active:
            return
        policy = c.policy
        due = policy.get_timer()
        now = self._now()
        if due is None or due > now:
            return  # an entry a reload left behind, or one whose probe is running
        nursery = self._nursery
        if nursery is None:
            return  # stopping
        if self._suspended and c.server.key in self._suspended:
            self._began(c)
            self._timers.call_at(now + c.spec.timing.delay_loop, c)
            return
        started = c.started = now
        if self._on_probe_start is not None:
            self._on_probe_start(due, started)
        policy.probe_started(started)
        start = c.start
        if start is None or not c.began:  # (a probe due as its checker starts: in a task too)
            nursery.start_soon(self._probe_task, c, None)
            return
        try:
            outcome = start()
        except Exception as exc:  # a probe bug must not take the other checkers down
            outcome = self._probe_error(c.spec, c.server.rs, exc)
        if isinstance(outcome, ProbeResult):
            self._probe_done(c, outcome)
            self._schedule(c)
        else:
            nursery.start_soon(self._probe_task, c, outcome)

    async def _probe_task(self, c: _Checker, pending: Awaitable[ProbeResult] | None) -> None:
        """One probe that must wait: the rest of a started one, or a whole one."""
        with trio.CancelScope() as scope:
            c.scope = scope
            self._began(c)
            if pending is None:
                pending = self._prober.probe(c.spec, c.server.rs, c.policy.step)
            if not c.active:  # retired before this task ran
                if isinstance(pending, Coroutine):
                    pending.close()
                return
            try:
                result = await pending
            except Exception as exc:  # a probe bug must not take the other checkers down
                result = self._probe_error(c.spec, c.server.rs, exc)
        if c.scope is scope:
            c.scope = None
        if scope.cancelled_caught or not c.active:
            return  # retired while it ran
        self._probe_done(c, result)
        self._schedule(c)

    def _schedule(self, c: _Checker) -> None:
        """Give ``c`` its timer entry for its next probe."""
        if c.active and self._nursery is not None:
            self._timers.call_at(self._next_due(c.policy), c)

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
        was_up = c.policy.up
        transitions = c.policy.probe_finished(result, now)
        s, label = c.server, c.label
        if not result.ok and was_up and (self.log_all_failures
                                         or c.spec.timing.log_all_failures):
            log.info("%s: real server %s: %s failed: %s", s.vs, s.rs, label, result.reason)
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
