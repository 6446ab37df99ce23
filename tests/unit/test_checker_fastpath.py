"""The scheduler's fast path (``begin``) behaves exactly like the task path.

A scripted prober answers either synchronously (``begin`` returns the
result) or after a delay (``begin`` returns an awaitable); the same script
run through a prober without ``begin`` must give the same probe times and the
same reported events, to the exact (autojump) time.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable
from ipaddress import IPv4Address

import trio
import trio.testing

from pyalived.checkers.policy import ProbeResult
from pyalived.checkers.probes import tcp_probe, tcp_probe_begin
from pyalived.checkers.scheduler import CallbackSink, CheckerScheduler, RealServerEvent
from pyalived.checkers.spec import (
    CheckerSpec,
    RealServerSpec,
    TcpCheck,
    Timing,
    VirtualServerSpec,
)
from pyalived.lvs import TimedProber

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

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec) -> ProbeResult:
        result = self._next(rs)
        await trio.sleep(self.delays.get(rs.port or 0, 0.0))
        return result


class ScriptedBegin(Scripted):
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
        assert ("vs", server(1)) not in sched
        await trio.sleep(5.0)
        sched.add(vs, server(1))
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    calls = sorted((p, round(t - t0, 9)) for p, t in prober.calls)
    assert calls == [(1, 0.0), (1, 1.0), (1, 2.0), (1, 7.1), (2, 0.0), (2, 1.75)]
    assert [(e.real_server.port, e.reason) for e in events] == [
        (1, "initial state"), (2, "initial state"), (1, "initial state")
    ]


async def test_timed_prober_observes_both_paths(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[float, bool]] = []
    inner = ScriptedBegin({1: [FAIL]}, {2: 0.25})
    timed = TimedProber(inner, lambda s, d, ok: seen.append((d, ok)))
    spec = TcpCheck(timing=TIMING)
    assert timed.begin(spec, server(1)) == FAIL
    pending = timed.begin(spec, server(2))
    assert not isinstance(pending, ProbeResult)
    assert await pending == OK
    assert seen == [(0.0, False), (0.25, True)]


async def test_tcp_probe_begin_agrees_with_tcp_probe() -> None:
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(8)
        port = lst.getsockname()[1]
        spec = TcpCheck(timing=TIMING)
        rs = RealServerSpec(IPv4Address("127.0.0.1"), port, 1, (spec,))
        outcome = tcp_probe_begin(spec, rs)
        result = outcome if isinstance(outcome, ProbeResult) else await outcome
        assert result == await tcp_probe(spec, rs)
        assert result == ProbeResult(True, f"connected to 127.0.0.1:{port}")
    outcome = tcp_probe_begin(spec, rs)  # the port is closed now
    result = outcome if isinstance(outcome, ProbeResult) else await outcome
    assert not result.ok
    assert result == await tcp_probe(spec, rs)
    assert result.reason == f"connect to 127.0.0.1:{port}: connection refused"
