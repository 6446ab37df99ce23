"""Runs every checker of every real server and reports health changes.

Theory of operation: ``CheckerScheduler.run`` starts one trio task per
checker under its own nursery.  Each task loops: sleep until its
``CheckerPolicy`` timer, run one probe through the ``Prober`` interface, feed
the result to the policy and the transitions to the real server's
``RealServerHealth``.  Tasks never wait for each other, so a slow or hostile
real server only delays its own checker (every probe is bounded in time by
the probes themselves).  Whenever a real server's alive flag or effective
weight changes, one ``RealServerEvent`` goes to the ``HealthSink`` (a plain
synchronous callback; ``ChannelSink`` forwards to a trio memory channel for a
subscriber that wants to await events).  The initial state of every real
server (alive unless one of its checkers is in ``alpha`` mode) is reported
before ``task_status.started()``; when the scheduler is cancelled, real
servers of virtual servers with ``omega`` are reported down.  Every checker
transition is logged once, naming the virtual server, real server, checker
and reason.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from pyalived.checkers.policy import (
    CheckerPolicy,
    ProbeResult,
    RealServerHealth,
    Verdict,
)
from pyalived.checkers.probes import Prober, RealProber
from pyalived.checkers.spec import (
    CheckerSpec,
    RealServerSpec,
    VirtualServerSpec,
    checker_label,
)

log = logging.getLogger("pyalived.checkers")


@dataclass(frozen=True)
class RealServerEvent:
    virtual_server: str  # VirtualServerSpec.name
    real_server: RealServerSpec
    alive: bool
    weight: int  # effective weight (configured, or as set by misc_dynamic)
    checker: str | None  # label of the checker that caused it; None for initial/omega
    reason: str


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


@dataclass
class _Server:
    vs: VirtualServerSpec
    rs: RealServerSpec
    health: RealServerHealth


ProbeStartObserver = Callable[[float, float], None]  # (scheduled, actual) times


class TimerQueue:
    """Parks tasks until a deadline; one clock task wakes them, in deadline order.

    Cheaper than ``trio.sleep_until`` for thousands of periodic tasks: a
    parked task costs a heap entry, and waking it is a plain reschedule
    instead of a cancel scope delivering a ``Cancelled`` exception.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, list[trio.lowlevel.Task | None]]] = []
        self._seq = 0
        self._scope: trio.CancelScope | None = None

    async def sleep_until(self, deadline: float) -> None:
        if self._scope is None:
            raise RuntimeError("TimerQueue.run is not running")
        slot: list[trio.lowlevel.Task | None] = [trio.lowlevel.current_task()]
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, slot))
        if deadline < self._scope.deadline:
            self._scope.deadline = deadline

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            slot[0] = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        heap = self._heap
        self._scope = trio.CancelScope()
        task_status.started()
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                task = heapq.heappop(heap)[2][0]
                if task is not None:
                    trio.lowlevel.reschedule(task)
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
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
    ) -> None:
        self._sink = sink
        self._prober: Prober = prober if prober is not None else RealProber()
        self._rng = rng if rng is not None else random.Random()
        self._on_probe_start = on_probe_start
        self._servers = [
            _Server(vs, rs, RealServerHealth.for_checkers(rs.weight, rs.checkers))
            for vs in virtual_servers
            for rs in vs.real_servers
        ]

    def snapshot(self) -> list[RealServerEvent]:
        """The current state of every real server."""
        return [
            RealServerEvent(s.vs.name, s.rs, s.health.alive, s.health.weight, None, "current state")
            for s in self._servers
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        now = trio.current_time()
        for s in self._servers:
            reason = "initial state" if s.health.alive else "initial state (alpha)"
            self._emit(
                RealServerEvent(s.vs.name, s.rs, s.health.alive, s.health.weight, None, reason)
            )
        try:
            async with trio.open_nursery() as nursery:
                timers = TimerQueue()
                await nursery.start(timers.run)
                for s in self._servers:
                    for index, spec in enumerate(s.rs.checkers):
                        policy = CheckerPolicy.for_spec(spec, now, self._rng)
                        nursery.start_soon(self._checker_loop, timers, s, index, spec, policy)
                task_status.started()
        finally:
            for s in self._servers:
                if s.vs.omega and s.health.alive:
                    log.info("%s: real server %s down on shutdown (omega)", s.vs, s.rs)
                    self._emit(
                        RealServerEvent(s.vs.name, s.rs, False, s.health.weight, None, "shutdown")
                    )

    def _emit(self, event: RealServerEvent) -> None:
        self._sink.real_server_changed(event)

    async def _probe(self, spec: CheckerSpec, rs: RealServerSpec) -> ProbeResult:
        try:
            return await self._prober.probe(spec, rs)
        except Exception as exc:  # a probe bug must not take the other checkers down
            log.exception("%s on %s: probe error", spec.kind, rs)
            return ProbeResult(False, f"internal probe error: {exc!r}")

    async def _checker_loop(
        self, timers: TimerQueue, s: _Server, index: int, spec: CheckerSpec, policy: CheckerPolicy
    ) -> None:
        label = checker_label(spec, index)
        while True:
            due = policy.get_timer()
            assert due is not None
            await timers.sleep_until(due)
            started = trio.current_time()
            if self._on_probe_start is not None:
                self._on_probe_start(due, started)
            policy.probe_started(started)
            result = await self._probe(spec, s.rs)
            transitions = policy.probe_finished(result, trio.current_time())
            verdict: Verdict | None = None
            reason = result.reason
            for tr in transitions:
                verdict, reason = tr.verdict, tr.reason
                log.info(
                    "%s: real server %s: %s %s: %s", s.vs, s.rs, label, tr.verdict.value, reason
                )
            weight = result.weight if result.ok else None
            if verdict is None and weight is None:
                continue  # the common case: nothing changed
            change = s.health.update(index, verdict, weight, reason)
            if change is None:
                continue
            if verdict is None:
                log.info(
                    "%s: real server %s: %s sets weight %d: %s",
                    s.vs,
                    s.rs,
                    label,
                    change.weight,
                    reason,
                )
            self._emit(
                RealServerEvent(s.vs.name, s.rs, change.alive, change.weight, label, change.reason)
            )
