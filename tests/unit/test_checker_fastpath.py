"""The scheduler's fast path (``starter``) behaves exactly like the task path.

A scripted prober answers either synchronously (its ``Starter`` returns the
result) or after a delay (the ``Starter`` returns an awaitable); the same
script run through a prober without ``starter`` must give the same probe
times and the same reported events, to the exact (autojump) time.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable
from ipaddress import IPv4Address

import trio
import trio.testing

from pyalived.checkers.policy import ProbeResult
from pyalived.checkers.probes import Starter, tcp_probe, tcp_starter
from pyalived.checkers.scheduler import (
    CallbackSink,
    CheckerScheduler,
    RealServerEvent,
    TimerQueue,
    server_key,
)
from pyalived.checkers.spec import (
    CheckerSpec,
    RealServerSpec,
    TcpCheck,
    Timing,
    VirtualServerSpec,
)

OK = ProbeResult(True, "fine")
FAIL = ProbeResult(False, "refused")
TIMING = Timing(delay_loop=1.0, warmup=0.0, retry=1, delay_before_retry=0.5)


def server(port: int) -> RealServerSpec:
    return RealServerSpec(IPv4Address("198.18.0.2"), port, 1, (TcpCheck(timing=TIMING),))


class Scripted:
    """Answers probe n of a port with script[port][n] (then OK); delays[port] > 0 waits."""

    def __init__(self, script: dict[int, list[ProbeResult]], delays: dict[int, float]) -> None:
        self.script = {p: list(rs) for p, rs in script.items()}
        self.delays = delays
        self.calls: list[tuple[int, float]] = []

    def _next(self, rs: RealServerSpec) -> ProbeResult:
        assert rs.port is not None
        self.calls.append((rs.port, trio.current_time()))
        todo = self.script.get(rs.port, [])
        return todo.pop(0) if todo else OK

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        result = self._next(rs)
        await trio.sleep(self.delays.get(rs.port or 0, 0.0))
        return result


class ScriptedBegin(Scripted):
    def starter(self, spec: CheckerSpec, rs: RealServerSpec) -> Starter:
        return lambda: self.begin(spec, rs)

    def begin(self, spec: CheckerSpec, rs: RealServerSpec) -> ProbeResult | Awaitable[ProbeResult]:
        delay = self.delays.get(rs.port or 0, 0.0)
        result = self._next(rs)
        if not delay:
            return result

        async def rest() -> ProbeResult:
            await trio.sleep(delay)
            return result

        return rest()


SCRIPT = {1: [OK, FAIL, FAIL, OK, FAIL, OK], 2: [FAIL, FAIL, FAIL, OK], 3: [OK, FAIL, OK]}
DELAYS = {2: 0.25, 3: 0.1}


async def run_scenario(prober: Scripted, until: float) -> list[tuple[float, int, bool, str]]:
    vs = VirtualServerSpec("vs", tuple(server(p) for p in (1, 2, 3)))
    events: list[tuple[float, RealServerEvent]] = []
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        sink = CallbackSink(lambda e: events.append((trio.current_time(), e)))
        await nursery.start(CheckerScheduler([vs], sink, prober).run)
        await trio.sleep(until)
        nursery.cancel_scope.cancel()
    prober.calls = sorted((p, round(t - t0, 9)) for p, t in prober.calls)
    return [(round(t - t0, 9), e.real_server.port or 0, e.alive, e.reason) for t, e in events]


async def test_fast_path_gives_the_same_times_and_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow, fast = Scripted(SCRIPT, DELAYS), ScriptedBegin(SCRIPT, DELAYS)
    slow_events = await run_scenario(slow, 7.9)
    fast_events = await run_scenario(fast, 7.9)
    assert fast_events == slow_events
    assert fast.calls == slow.calls
    # port 1 answers at once: OK@0, FAIL@1, retry FAIL@1.5 -> DOWN, OK@2.5 -> UP, ...
    assert [t for p, t in fast.calls if p == 1][:5] == [0.0, 1.0, 1.5, 2.5, 3.5]
    assert (1.5, 1, False, "refused (after 1 retries)") in fast_events
    assert (2.5, 1, True, "fine") in fast_events
    # port 2 takes 0.25 s per probe: FAIL@0, retry @0.75, DOWN at 1.0, next @2.0
    assert [t for p, t in fast.calls if p == 2][:4] == [0.0, 0.75, 2.0, 3.25]


async def test_exception_in_begin_is_a_failed_probe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Broken(ScriptedBegin):
        def begin(
            self, spec: CheckerSpec, rs: RealServerSpec
        ) -> ProbeResult | Awaitable[ProbeResult]:
            if trio.current_time() > 0.5:
                raise RuntimeError("bug")
            return super().begin(spec, rs)

    events: list[RealServerEvent] = []
    vs = VirtualServerSpec("vs", (server(1),))
    async with trio.open_nursery() as nursery:
        prober = Broken({}, {})
        await nursery.start(CheckerScheduler([vs], CallbackSink(events.append), prober).run)
        await trio.sleep(2.0)
        nursery.cancel_scope.cancel()
    assert [e.alive for e in events] == [True, False]
    assert "internal probe error" in events[1].reason


async def test_remove_stops_parked_and_pending_checkers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    prober = ScriptedBegin({}, {2: 0.75})
    events: list[RealServerEvent] = []
    vs = VirtualServerSpec("vs", (server(1), server(2)))
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        sched = CheckerScheduler([vs], CallbackSink(events.append), prober)
        await nursery.start(sched.run)
        await trio.sleep(2.1)  # port 1 parked; port 2 in its probe started at 1.75
        sched.remove("vs", server(1))
        sched.remove("vs", server(2))
        assert server_key("vs", server(1)) not in sched
        await trio.sleep(5.0)
        sched.add(vs, server(1))
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    calls = sorted((p, round(t - t0, 9)) for p, t in prober.calls)
    assert calls == [(1, 0.0), (1, 1.0), (1, 2.0), (1, 7.1), (2, 0.0), (2, 1.75)]
    assert [(e.real_server.port, e.reason) for e in events] == [
        (1, "initial state"), (2, "initial state"), (1, "initial state")
    ]


async def test_probe_durations_are_observed_on_both_paths(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[float, float, bool]] = []
    prober = ScriptedBegin({1: [FAIL]}, {2: 0.25})
    vs = VirtualServerSpec("vs", (server(1), server(2)))

    def observe(spec: CheckerSpec, seconds: float, ok: bool) -> None:
        seen.append((trio.current_time() - t0, seconds, ok))

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        sched = CheckerScheduler(
            [vs], CallbackSink(lambda e: None), prober, on_probe_done=observe
        )
        await nursery.start(sched.run)
        await trio.sleep(0.9)
        nursery.cancel_scope.cancel()
    # port 1 fails at once at 0 and its retry at 0.5 passes; port 2 takes 0.25 s
    assert sorted(seen) == [(0.0, 0.0, False), (0.25, 0.25, True), (0.5, 0.0, True)]


async def test_tcp_starter_agrees_with_tcp_probe() -> None:
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(8)
        port = lst.getsockname()[1]
        spec = TcpCheck(timing=TIMING)
        rs = RealServerSpec(IPv4Address("127.0.0.1"), port, 1, (spec,))
        start = tcp_starter(spec, rs)
        outcome = start()
        assert isinstance(outcome, ProbeResult)  # loopback: established within connect()
        assert outcome == await tcp_probe(spec, rs)
        assert outcome == ProbeResult(True, f"connected to 127.0.0.1:{port}")
    outcome = start()  # the same starter again: the port is closed now
    assert isinstance(outcome, ProbeResult)
    assert outcome == await tcp_probe(spec, rs)
    assert outcome.reason == f"connect to 127.0.0.1:{port}: connection refused"


async def test_timer_queue_granularity_wakes_on_its_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[tuple[str, float]] = []
    queue = TimerQueue(granularity=0.25)
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        t0 = trio.current_time()
        assert t0 == 0.0  # the grid is one of trio's clock

        def at(name: str, deadline: float) -> None:
            queue.call_at(deadline, lambda: fired.append((name, trio.current_time())))

        at("c", 0.6)
        at("a", 0.1)
        at("b", 0.25)  # on the grid: exactly then, not a step later
        at("d", 0.51)
        at("e", 0.3)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    # in deadline order, each at its deadline rounded up to a multiple of 0.25
    assert fired == [("a", 0.25), ("b", 0.25), ("e", 0.5), ("d", 0.75), ("c", 0.75)]
    assert queue.wake_time(0.1 + 0.2) >= 0.1 + 0.2  # float rounding never wakes it early
    assert TimerQueue().wake_time(0.3) == 0.3  # no granularity: exact deadlines


async def test_checks_start_on_the_timer_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    prober = ScriptedBegin({}, {1: 0.0042})  # each probe takes 4.2 ms
    vs = VirtualServerSpec("vs", (server(1),))
    async with trio.open_nursery() as nursery:
        sched = CheckerScheduler(
            [vs], CallbackSink(lambda e: None), prober, timer_granularity=0.01
        )
        await nursery.start(sched.run)
        await trio.sleep(3.5)
        nursery.cancel_scope.cancel()
    # due delay_loop after the last one ended (1.0042, 2.0142, ...), started on
    # the next 10 ms mark
    assert [round(t, 9) for _, t in prober.calls] == [0.0, 1.01, 2.02, 3.03]
