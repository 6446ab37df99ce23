"""Checker policy: exact virtual times of probes and verdicts."""

from __future__ import annotations

import random

import pytest
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
from pyalived.checkers.spec import CheckerSpec, HttpGet, MiscCheck, TcpCheck, Timing

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
