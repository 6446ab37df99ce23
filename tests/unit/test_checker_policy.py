"""Checker policy: exact virtual times of probes and verdicts."""

from __future__ import annotations

import logging
import math
import random
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from pyalived.checkers.policy import (
    CheckerPolicy,
    CheckerTransition,
    HealthChange,
    ProbeResult,
    RealServerHealth,
    Verdict,
)
from pyalived.checkers.scheduler import (
    CallbackSink,
    ChannelSink,
    CheckerScheduler,
    RealServerEvent,
)
from pyalived.checkers.spec import (
    CheckerSpec,
    HttpGet,
    MiscCheck,
    RealServerSpec,
    TcpCheck,
    Timing,
    UrlSpec,
    VirtualServerSpec,
)

OK = ProbeResult(True, "connected")
FAIL = ProbeResult(False, "connection refused")


def run(p: CheckerPolicy, result: ProbeResult, duration: float = 0.0) -> list[CheckerTransition]:
    """Start the due probe at its timer and finish it ``duration`` later."""
    t = p.get_timer()
    assert t is not None
    p.probe_started(t)
    assert p.get_timer() is None
    return p.probe_finished(result, t + duration)


def make(**kw: object) -> CheckerPolicy:
    args: dict[str, object] = dict(
        delay_loop=6.0, retry=2, delay_before_retry=1.0, alpha=False, now=100.0
    )
    args.update(kw)
    return CheckerPolicy(**args)  # type: ignore[arg-type]


def test_starts_up_and_probes_every_delay_loop_after_completion() -> None:
    p = make(first_delay=2.5)
    assert p.verdict is Verdict.UP
    assert p.get_timer() == 102.5
    assert run(p, OK, duration=0.25) == []
    assert p.get_timer() == 108.75  # 102.75 + delay_loop
    assert run(p, OK) == []
    assert p.get_timer() == 114.75


def test_retries_before_down_then_delay_loop() -> None:
    p = make()
    assert p.get_timer() == 100.0
    assert run(p, FAIL) == []  # first failure: retry 1 of 2
    assert p.get_timer() == 101.0
    assert run(p, FAIL, duration=0.5) == []  # retry 2 of 2
    assert p.get_timer() == 102.5
    out = run(p, FAIL)
    assert out == [CheckerTransition(Verdict.DOWN, "connection refused (after 2 retries)")]
    assert p.verdict is Verdict.DOWN
    assert p.get_timer() == 108.5  # back to delay_loop, no retries while down
    assert run(p, FAIL) == []
    assert p.get_timer() == 114.5
    assert run(p, OK) == [CheckerTransition(Verdict.UP, "connected")]
    assert p.get_timer() == 120.5


def test_success_during_retries_resets_the_count() -> None:
    p = make()
    run(p, FAIL)
    run(p, FAIL)
    assert run(p, OK) == []
    assert p.get_timer() == 108.0
    assert run(p, FAIL) == []  # a fresh set of 2 retries
    assert run(p, FAIL) == []
    assert p.verdict is Verdict.UP
    assert run(p, FAIL)[0].verdict is Verdict.DOWN


def test_retry_zero_goes_down_on_first_failure() -> None:
    p = make(retry=0)
    assert run(p, FAIL) == [CheckerTransition(Verdict.DOWN, "connection refused")]
    assert p.get_timer() == 106.0


def test_alpha_starts_down_and_needs_one_success() -> None:
    p = make(alpha=True)
    assert p.verdict is Verdict.DOWN
    assert run(p, FAIL) == []  # already down: nothing to report, no retries
    assert p.get_timer() == 106.0
    assert run(p, OK) == [CheckerTransition(Verdict.UP, "connected")]


def test_several_urls_one_per_check_like_keepalived() -> None:
    """keepalived 2.2.7's HTTP_GET with urls /a /b /c, delay_loop 2, retry 1,
    delay_before_retry 1, /b failing for a while: the sequence of (time, URL,
    verdict) read off its requests, with instant probes and t=0 at a check of /a."""
    p = make(delay_loop=2.0, retry=1, delay_before_retry=1.0, now=0.0, urls=3)
    seen: list[tuple[float, str, str]] = []
    while (t := p.get_timer()) is not None and t <= 25.0:
        url = "abc"[p.step]
        ok = not (url == "b" and 2.0 <= t < 12.0)
        changes = run(p, OK if ok else FAIL)
        verdict = changes[-1].verdict.value if changes else ""
        seen.append((t, url, "ok" if ok else "fail") + ((verdict,) if verdict else ()))
    assert seen == [
        (0.0, "a", "ok"), (2.0, "b", "fail"), (3.0, "b", "fail", "DOWN"),  # one retry
        (5.0, "b", "fail"), (7.0, "b", "fail"), (9.0, "b", "fail"), (11.0, "b", "fail"),
        (13.0, "b", "ok"),  # the failing URL passes: a pass over every URL starts
        (15.0, "a", "ok"), (17.0, "b", "ok"), (19.0, "c", "ok", "UP"),
        (21.0, "a", "ok"), (23.0, "b", "ok"), (25.0, "c", "ok"),
    ]  # fmt: skip


def test_urls_come_back_after_a_full_pass_like_keepalived() -> None:
    """Also read off keepalived 2.2.7 (delay_loop 2, retry 1): with alpha the
    pass starts at once; after a failure a single URL needs two successes; a
    retry that passes while UP just moves on to the next URL."""
    p = make(alpha=True, now=0.0, urls=3)
    assert [run(p, OK), run(p, OK)] == [[], []]
    assert run(p, OK) == [CheckerTransition(Verdict.UP, "connected")]  # /a /b /c
    assert p.step == 0

    one = make(retry=0, now=0.0, urls=1)
    assert run(one, FAIL)[0].verdict is Verdict.DOWN
    assert run(one, OK) == []  # starts the pass
    assert run(one, OK) == [CheckerTransition(Verdict.UP, "connected")]
    tcp = make(retry=0, now=0.0)  # not a URL checker: one success is enough
    assert run(tcp, FAIL)[0].verdict is Verdict.DOWN
    assert run(tcp, OK) == [CheckerTransition(Verdict.UP, "connected")]

    up = make(retry=1, now=0.0, urls=3)
    run(up, OK)  # /a
    assert (up.step, run(up, FAIL), up.step) == (1, [], 1)  # /b fails, retried
    assert (run(up, OK), up.step) == ([], 2)  # the retry of /b passes: /c is next

    assert CheckerPolicy.for_spec(
        HttpGet(urls=(UrlSpec("/a"), UrlSpec("/b"))), 0.0, random.Random(1)
    ).steps == 2
    with pytest.raises(ValueError):
        make(urls=-1)


def test_probe_protocol_misuse_is_rejected() -> None:
    p = make()
    with pytest.raises(RuntimeError):
        p.probe_finished(OK, 100.0)
    p.probe_started(100.0)
    with pytest.raises(RuntimeError):
        p.probe_started(100.0)
    with pytest.raises(ValueError):
        make(delay_loop=0.0)


def test_for_spec_uses_keepalived_defaults_and_seeded_warmup() -> None:
    tcp = TcpCheck(timing=Timing(delay_loop=10.0))
    p = CheckerPolicy.for_spec(tcp, 50.0, random.Random(7))
    expected = 50.0 + random.Random(7).uniform(0.0, 10.0)
    assert p.get_timer() == expected
    assert (p.retry, p.delay_before_retry) == (1, 1.0)
    http = HttpGet(timing=Timing(delay_loop=10.0, warmup=0.0))
    p = CheckerPolicy.for_spec(http, 50.0, random.Random(7))
    assert p.get_timer() == 50.0
    assert (p.retry, p.delay_before_retry) == (1, 3.0)
    misc = MiscCheck("/bin/true", timing=Timing(alpha=True, retry=4, delay_before_retry=2.0))
    p = CheckerPolicy.for_spec(misc, 0.0, random.Random(1))
    assert (p.retry, p.delay_before_retry, p.verdict) == (4, 2.0, Verdict.DOWN)
    assert MiscCheck("/bin/true").effective_retry == 0
    assert MiscCheck("/bin/true", timing=Timing(delay_loop=9.0)).effective_timeout == 9.0


@given(st.integers(0, 5), st.lists(st.booleans(), max_size=40))
def test_down_only_after_retry_plus_one_consecutive_failures(
    retry: int, outcomes: list[bool]
) -> None:
    p = make(retry=retry)
    up, streak = True, 0
    for ok in outcomes:
        out = run(p, OK if ok else FAIL)
        if ok:
            streak = 0
            assert out == ([CheckerTransition(Verdict.UP, "connected")] if not up else [])
            up = True
        else:
            streak += 1
            if up and streak == retry + 1:
                assert [t.verdict for t in out] == [Verdict.DOWN]
                up = False
            else:
                assert out == []
        assert p.verdict is (Verdict.UP if up else Verdict.DOWN)


def test_real_server_alive_only_when_all_checkers_up() -> None:
    checkers: list[CheckerSpec] = [TcpCheck(), HttpGet(timing=Timing(alpha=True))]
    h = RealServerHealth.for_checkers(3, checkers)
    assert not h.alive and h.failed_checkers == 1
    assert h.update(1, Verdict.UP, None, "ok") == HealthChange(True, 3, "ok")
    assert h.update(1, Verdict.UP, None, "ok") is None
    assert h.update(0, Verdict.DOWN, None, "refused") == HealthChange(False, 3, "refused")
    assert h.update(1, Verdict.DOWN, None, "timeout") is None  # still dead
    assert h.update(0, Verdict.UP, None, "ok") is None
    assert h.update(1, Verdict.UP, None, "ok") == HealthChange(True, 3, "ok")
    assert RealServerHealth.for_checkers(1, []).alive


def test_misc_dynamic_weight() -> None:
    checkers: list[CheckerSpec] = [MiscCheck("a", misc_dynamic=True), MiscCheck("b"), TcpCheck()]
    h = RealServerHealth.for_checkers(5, checkers)
    assert h.update(0, None, 10, "exit 12") == HealthChange(True, 10, "exit 12")
    assert h.update(1, None, 50, "exit 0") is None  # not dynamic: ignored
    assert h.update(2, None, 50, "x") is None
    assert h.weight == 10
    two = RealServerHealth.for_checkers(5, [checkers[0], checkers[0]])
    two.update(0, None, 10, "")
    two.update(1, None, 1, "")
    assert two.weight == 6  # 5 + (10 - 5) + (1 - 5)
    two.update(1, None, 0, "")
    two.update(0, None, 0, "")
    assert two.weight == 0  # clamped at zero


# ---- scheduler: virtual time with trio's autojump clock --------------------


class FakeProber:
    """Scripted results per real server port; records (port, start, end) times."""

    def __init__(self, script: dict[int, list[ProbeResult]], durations: dict[int, float]):
        self.script = script
        self.durations = durations
        self.calls: list[tuple[int, float, float]] = []

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        assert rs.port is not None
        start = trio.current_time()
        await trio.sleep(self.durations.get(rs.port, 0.0))
        queue = self.script.get(rs.port, [])
        result = queue.pop(0) if len(queue) > 1 else (queue[0] if queue else OK)
        self.calls.append((rs.port, start, trio.current_time()))
        return result


def server(port: int, *checkers: CheckerSpec, weight: int = 1) -> RealServerSpec:
    return RealServerSpec(IPv4Address("198.18.0.2"), port, weight, checkers)


NOWARM = Timing(delay_loop=1.0, warmup=0.0)


async def test_scheduler_reports_initial_state_and_transitions(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    tcp = TcpCheck(timing=Timing(delay_loop=1.0, warmup=0.0, retry=1, delay_before_retry=0.5))
    alpha = TcpCheck(timing=Timing(delay_loop=1.0, warmup=0.0, alpha=True))
    vs = VirtualServerSpec("198.18.0.1:80", (server(1, tcp), server(2, alpha)))
    prober = FakeProber({1: [OK, FAIL, FAIL, OK]}, {1: 0.25})
    events: list[tuple[float, RealServerEvent]] = []
    sink = CallbackSink(lambda e: events.append((trio.current_time(), e)))
    t0 = trio.current_time()
    caplog.set_level(logging.INFO, logger="pyalived.checkers")
    async with trio.open_nursery() as nursery:
        await nursery.start(CheckerScheduler([vs], sink, prober).run)
        assert [(e.real_server.port, e.alive, e.checker) for _, e in events] == [
            (1, True, None),
            (2, False, None),
        ]
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    # port 2 (alpha) comes up on its first probe, at t0
    # port 1: OK @0-.25, FAIL @1.25-1.5, retry FAIL @2.0-2.25 -> DOWN, OK @3.25-3.5 -> UP
    got = [(t - t0, e.real_server.port, e.alive, e.checker) for t, e in events[2:]]
    assert got == [
        (0.0, 2, True, "TCP_CHECK#0"),
        (2.25, 1, False, "TCP_CHECK#0"),
        (3.5, 1, True, "TCP_CHECK#0"),
    ]
    assert [s - t0 for p, s, _ in prober.calls if p == 1] == [0.0, 1.25, 2.0, 3.25, 4.5]
    downs = [r.getMessage() for r in caplog.records if " DOWN" in r.getMessage()]
    assert downs == [
        "198.18.0.1:80: real server 198.18.0.2:1: TCP_CHECK#0 DOWN: "
        "connection refused (after 1 retries)"
    ]


async def test_slow_server_does_not_delay_others(autojump_clock: trio.testing.MockClock) -> None:
    vs = VirtualServerSpec("vs", tuple(server(p, TcpCheck(timing=NOWARM)) for p in (1, 2, 3)))
    prober = FakeProber({1: [FAIL]}, {1: 100.0})  # port 1 hangs until its timeout
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(CheckerScheduler([vs], CallbackSink(lambda e: None), prober).run)
        await trio.sleep(10.5)
        nursery.cancel_scope.cancel()
    for port in (2, 3):
        assert [s - t0 for p, s, _ in prober.calls if p == port] == [float(i) for i in range(11)]
    assert [p for p, _, _ in prober.calls].count(1) == 0  # still in its first probe


async def test_warmup_is_seeded_and_combined_checkers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    warm = Timing(delay_loop=10.0, warmup=4.0)
    vs = VirtualServerSpec("vs", (server(1, TcpCheck(timing=warm), TcpCheck(timing=warm)),))
    prober = FakeProber({1: [OK]}, {})
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        sched = CheckerScheduler([vs], CallbackSink(lambda e: None), prober, random.Random(3))
        await nursery.start(sched.run)
        await trio.sleep(9.0)
        nursery.cancel_scope.cancel()
    r = random.Random(3)
    expected = sorted([r.uniform(0, 4.0), r.uniform(0, 4.0)])
    assert [s - t0 for _, s, _ in prober.calls] == pytest.approx(expected, abs=1e-9)


async def test_dynamic_weight_and_omega(autojump_clock: trio.testing.MockClock) -> None:
    misc = MiscCheck("x", misc_dynamic=True, timing=NOWARM)
    vs = VirtualServerSpec("vs", (server(1, misc, weight=7),), omega=True)
    weighted = ProbeResult(True, "exit status 12", weight=10)
    prober = FakeProber({1: [OK, weighted]}, {})
    send, receive = trio.open_memory_channel[RealServerEvent](math.inf)
    async with trio.open_nursery() as nursery:
        await nursery.start(CheckerScheduler([vs], ChannelSink(send), prober).run)
        await trio.sleep(3.5)
        nursery.cancel_scope.cancel()
    got = [(e.alive, e.weight, e.reason) for e in receive_all(receive)]
    assert got == [
        (True, 7, "initial state"),
        (True, 10, "exit status 12"),
        (False, 10, "shutdown"),
    ]


def receive_all(ch: trio.MemoryReceiveChannel[RealServerEvent]) -> list[RealServerEvent]:
    out = []
    while True:
        try:
            out.append(ch.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_probe_exception_counts_as_failure(autojump_clock: trio.testing.MockClock) -> None:
    class Broken:
        async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
            raise RuntimeError("bug")

    vs = VirtualServerSpec("vs", (server(1, MiscCheck("x", timing=NOWARM)),))
    events: list[RealServerEvent] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(CheckerScheduler([vs], CallbackSink(events.append), Broken()).run)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert [e.alive for e in events] == [True, False]
    assert "internal probe error" in events[1].reason
