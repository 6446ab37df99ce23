"""HTTP_GET ``fast_recovery``: the URLs of a pass are checked back to back (exact times)."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import trio
import trio.testing

from pyalived.checkers.policy import CheckerPolicy, CheckerTransition, ProbeResult, Verdict
from pyalived.checkers.scheduler import CallbackSink, CheckerScheduler, RealServerEvent
from pyalived.checkers.spec import (
    CheckerSpec,
    HttpGet,
    RealServerSpec,
    Timing,
    UrlSpec,
    VirtualServerSpec,
)

OK = ProbeResult(True, "HTTP status 200")
FAIL = ProbeResult(False, "HTTP status 503")


def policy(fast: bool, alpha: bool = False) -> CheckerPolicy:
    return CheckerPolicy(delay_loop=6.0, retry=1, delay_before_retry=3.0, alpha=alpha,
                         now=100.0, urls=3, fast_recovery=fast)


def drive(p: CheckerPolicy, results: list[ProbeResult]) -> list[tuple[float, int, str]]:
    """Run each result as a 0.5 s probe at its due time: (start, URL, transition)."""
    out = []
    for result in results:
        t = p.get_timer()
        assert t is not None
        step = p.step
        p.probe_started(t)
        moves: list[CheckerTransition] = p.probe_finished(result, t + 0.5)
        out.append((t, step, ",".join(m.verdict.value for m in moves)))
    return out


def test_the_first_pass_and_a_recovery_pass_run_back_to_back() -> None:
    p = policy(fast=True)
    assert drive(p, [OK, OK, OK, FAIL, FAIL, OK, OK, OK, OK, OK]) == [
        (100.0, 0, ""), (100.5, 1, ""), (101.0, 2, ""),  # first pass: no delay_loop
        (107.5, 0, ""),  # then delay_loop; URL 0 fails,
        (111.0, 0, "DOWN"),  # its retry delay_before_retry later fails too: DOWN
        (117.5, 0, ""),  # delay_loop later the failed URL passes: the pass starts,
        (118.0, 0, ""), (118.5, 1, ""), (119.0, 2, "UP"),  # back to back, UP at its end
        (125.5, 0, ""),  # and then delay_loop again
    ]
    assert p.get_timer() == 132.0


def test_without_fast_recovery_each_url_waits_delay_loop() -> None:
    p = policy(fast=False)
    assert drive(p, [OK, OK, OK, FAIL, FAIL, OK, OK, OK, OK]) == [
        (100.0, 0, ""), (106.5, 1, ""), (113.0, 2, ""),
        (119.5, 0, ""), (123.0, 0, "DOWN"),
        (129.5, 0, ""), (136.0, 0, ""), (142.5, 1, ""), (149.0, 2, "UP"),
    ]


def test_alpha_comes_up_after_one_quick_pass() -> None:
    p = policy(fast=True, alpha=True)
    assert drive(p, [OK, OK, OK, OK]) == [
        (100.0, 0, ""), (100.5, 1, ""), (101.0, 2, "UP"), (107.5, 0, ""),
    ]


def test_a_failure_is_never_retried_at_once() -> None:
    p = policy(fast=True, alpha=True)
    # DOWN, URL 0 passes, URL 1 fails: the pass is over, delay_loop until the next try
    assert drive(p, [OK, FAIL, OK, OK, OK, OK]) == [
        (100.0, 0, ""), (100.5, 1, ""),
        (107.0, 1, ""),  # the failed URL again; it passes: a new pass from URL 0, at once
        (107.5, 0, ""), (108.0, 1, ""), (108.5, 2, "UP"),
    ]
    assert p.verdict is Verdict.UP


def test_a_reload_switches_it_on() -> None:
    p = policy(fast=False, alpha=True)
    spec = HttpGet(urls=(UrlSpec("/a"), UrlSpec("/b"), UrlSpec("/c")),
                   timing=Timing(delay_loop=6.0, retry=1, delay_before_retry=3.0),
                   fast_recovery=True)
    p.reconfigure(spec, 100.0)
    assert drive(p, [OK, OK, OK]) == [(100.0, 0, ""), (100.5, 1, ""), (101.0, 2, "UP")]


class StepProber:
    """Records (start, URL) of each probe; URL 1 fails while ``down`` says so."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []
        self.down_until = 0.0

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        now = trio.current_time()
        await trio.sleep(0.25)
        self.calls.append((now, step))
        return FAIL if step == 1 and now < self.down_until else OK


async def test_scheduler_runs_the_pass_back_to_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spec = HttpGet(
        urls=(UrlSpec("/"), UrlSpec("/health"), UrlSpec("/db")),
        timing=Timing(delay_loop=10.0, warmup=0.0, retry=0, alpha=True),
        fast_recovery=True,
    )
    rs = RealServerSpec(IPv4Address("198.18.0.2"), 80, 1, (spec,))
    vs = VirtualServerSpec("198.18.0.1:80", (rs,))
    prober = StepProber()
    prober.down_until = 25.0  # /health answers 503 for the first 25 s
    events: list[tuple[float, bool]] = []

    def sink(e: RealServerEvent) -> None:
        if e.checker is not None:
            events.append((trio.current_time() - t0, e.alive))

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            CheckerScheduler([vs], CallbackSink(sink), prober, random.Random(1)).run)
        await trio.sleep(40.0)
        nursery.cancel_scope.cancel()
    assert [(t - t0, step) for t, step in prober.calls] == [
        (0.0, 0), (0.25, 1),  # /health fails: delay_loop
        (10.5, 1), (20.75, 1),  # still failing
        (31.0, 1),  # passes at last: the pass starts at once from /
        (31.25, 0), (31.5, 1), (31.75, 2),  # UP at 32.0
    ]
    assert events == [(32.0, True)]
