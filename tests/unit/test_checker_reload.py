"""A reload hands running checkers new settings: state kept, exact probe times.

The pure side (``CheckerPolicy.reconfigure``, ``RealServerHealth.reconfigure``)
with plain numbers, then ``CheckerScheduler.update`` under trio's autojump
clock, on both of its loops (a prober with and without ``starter``).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing

from pyalived.checkers.policy import (
    CheckerPolicy,
    HealthChange,
    ProbeResult,
    RealServerHealth,
    Verdict,
)
from pyalived.checkers.probes import Starter
from pyalived.checkers.scheduler import CallbackSink, CheckerScheduler, RealServerEvent
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


def tcp(delay_loop: float = 10.0, retry: int = 2, delay_before_retry: float = 1.0,
        **timing: object) -> TcpCheck:
    return TcpCheck(timing=Timing(delay_loop=delay_loop, retry=retry,
                                  delay_before_retry=delay_before_retry, warmup=0.0,
                                  **timing))  # type: ignore[arg-type]


def finish(p: CheckerPolicy, result: ProbeResult, at: float | None = None) -> None:
    t = p.get_timer() if at is None else at
    assert t is not None
    p.probe_started(t)
    p.probe_finished(result, t)


# ---- the policy ---------------------------------------------------------------------


def test_a_shorter_delay_loop_skips_the_turns_already_missed() -> None:
    p = CheckerPolicy.for_spec(tcp(60.0), 0.0, random.Random(1))
    finish(p, OK, at=100.0)
    assert p.get_timer() == 160.0
    p.reconfigure(tcp(10.0), 125.0)  # 100 + 10 and + 20 have passed: the next turn is 130
    assert p.get_timer() == 130.0
    p.reconfigure(tcp(10.0), 126.0)  # nothing changed: nothing moves
    assert p.get_timer() == 130.0
    p.reconfigure(tcp(10.0, retry=1), 130.0)  # the same interval: left alone
    assert p.get_timer() == 130.0
    q = CheckerPolicy.for_spec(tcp(60.0), 0.0, random.Random(1))
    finish(q, OK, at=100.0)
    q.reconfigure(tcp(10.0), 130.0)
    assert q.get_timer() == 140.0  # a turn that comes with the reload is skipped too
    assert (q.delay_loop, q.up) == (10.0, True)


def test_a_longer_delay_loop_counts_from_the_end_of_the_last_check() -> None:
    p = CheckerPolicy.for_spec(tcp(10.0), 0.0, random.Random(1))
    finish(p, OK, at=100.0)
    p.reconfigure(tcp(30.0), 105.0)
    assert p.get_timer() == 130.0
    finish(p, OK)
    assert p.get_timer() == 160.0


def test_a_retry_in_progress_keeps_its_count_and_takes_the_new_delay() -> None:
    p = CheckerPolicy.for_spec(tcp(10.0, retry=2, delay_before_retry=1.0), 0.0,
                               random.Random(1))
    finish(p, FAIL, at=10.0)
    assert (p.get_timer(), p.retries_done, p.up) == (11.0, 1, True)
    p.reconfigure(tcp(10.0, retry=2, delay_before_retry=3.0), 10.5)
    assert (p.get_timer(), p.retries_done, p.up) == (13.0, 1, True)
    p.reconfigure(tcp(10.0, retry=1, delay_before_retry=3.0), 10.6)  # no retry left now
    finish(p, FAIL)
    assert (p.up, p.get_timer()) == (False, 23.0)


def test_a_probe_in_progress_or_the_first_probe_keeps_its_time() -> None:
    p = CheckerPolicy.for_spec(tcp(10.0), 0.0, random.Random(1))
    p.probe_started(0.0)
    p.reconfigure(tcp(4.0, retry=0), 0.5)
    assert p.probing
    assert p.probe_finished(FAIL, 1.0)[0].verdict is Verdict.DOWN  # retry 0 now
    assert p.get_timer() == 5.0
    warm = TcpCheck(timing=Timing(delay_loop=10.0))  # first probe within a warmup of 10 s
    q = CheckerPolicy.for_spec(warm, 0.0, random.Random(5))
    first = q.get_timer()
    q.reconfigure(TcpCheck(timing=Timing(delay_loop=3.0)), 1.0)
    assert q.get_timer() == first


def test_down_stays_down_and_urls_are_clamped() -> None:
    p = CheckerPolicy.for_spec(tcp(10.0, retry=0), 0.0, random.Random(1))
    finish(p, FAIL, at=0.0)
    assert not p.up
    three = HttpGet(urls=(UrlSpec("/a"), UrlSpec("/b"), UrlSpec("/c")),
                    timing=Timing(delay_loop=10.0, warmup=0.0))
    p.reconfigure(three, 5.0)  # a new checker type: still DOWN
    assert (p.up, p.steps, p.get_timer()) == (False, 3, 10.0)
    finish(p, OK)  # DOWN by failing: the first success only starts the pass
    finish(p, OK)
    finish(p, OK)
    assert (p.step, p.up) == (2, False)
    p.reconfigure(HttpGet(urls=(UrlSpec("/a"),), timing=Timing(delay_loop=10.0)), 45.0)
    assert (p.step, p.up) == (0, False)
    finish(p, OK)  # the pass goes on over the one URL left
    assert p.up


def test_force_down_needs_one_success_like_alpha() -> None:
    p = CheckerPolicy.for_spec(tcp(10.0), 0.0, random.Random(1))
    finish(p, OK, at=0.0)
    p.force_down()
    assert not p.up
    t = p.get_timer()
    assert t is not None
    p.probe_started(t)
    assert [x.verdict for x in p.probe_finished(OK, t)] == [Verdict.UP]


def test_abandoned_probe_is_due_at_once() -> None:
    p = CheckerPolicy.for_spec(tcp(10.0), 0.0, random.Random(1))
    p.probe_started(0.0)
    p.probe_abandoned(3.0)
    assert p.get_timer() == 3.0
    with pytest.raises(RuntimeError):
        p.probe_abandoned(4.0)


# ---- the real server ----------------------------------------------------------------


def test_health_keeps_verdicts_by_position_and_dead_stays_dead() -> None:
    h = RealServerHealth.for_checkers(3, [tcp(), tcp()])
    assert h.update(1, Verdict.DOWN, None, "refused") == HealthChange(False, 3, "refused")
    # the failed checker's settings change: still DOWN
    assert h.reconfigure(3, [tcp(), tcp(4.0)]) is None
    assert not h.alive and not h.checker_up(1)
    # a checker added to a dead real server starts DOWN
    assert h.reconfigure(3, [tcp(), tcp(4.0), tcp(5.0)]) is None
    assert [h.checker_up(i) for i in range(3)] == [True, False, False]
    # the failed checkers removed: the one left is set DOWN, the server stays dead
    assert h.reconfigure(4, [tcp()]) == HealthChange(False, 4, "reload")
    assert not h.alive and not h.checker_up(0)
    assert h.update(0, Verdict.UP, None, "ok") == HealthChange(True, 4, "ok")
    # a checker added to a live real server starts UP
    assert h.reconfigure(4, [tcp(), tcp()]) is None
    assert h.alive
    # no checker left: nothing to check, alive by definition
    dead = RealServerHealth.for_checkers(1, [tcp()])
    dead.update(0, Verdict.DOWN, None, "refused")
    assert dead.reconfigure(1, []) == HealthChange(True, 1, "reload")


def test_health_keeps_the_weight_a_dynamic_checker_asked_for() -> None:
    misc = MiscCheck("/bin/check", misc_dynamic=True)
    h = RealServerHealth.for_checkers(4, [misc])
    assert h.update(0, None, 9, "exit 11") == HealthChange(True, 9, "exit 11")
    assert h.reconfigure(5, [misc]) is None  # still 9, as asked
    assert h.weight == 9
    assert h.reconfigure(6, [MiscCheck("/bin/check")]) == HealthChange(True, 6, "reload")


# ---- the scheduler ------------------------------------------------------------------


class Prober:
    """Results per port (default OK), each probe taking ``durations[port]``."""

    def __init__(self) -> None:
        self.results: dict[int, ProbeResult] = {}
        self.durations: dict[int, float] = {}
        self.calls: list[tuple[int, float]] = []

    def _begin(self, rs: RealServerSpec) -> tuple[ProbeResult, float]:
        assert rs.port is not None
        self.calls.append((rs.port, trio.current_time()))
        return self.results.get(rs.port, OK), self.durations.get(rs.port, 0.0)

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        result, duration = self._begin(rs)
        await trio.sleep(duration)
        return result

    def times(self, port: int) -> list[float]:
        return [t for p, t in self.calls if p == port]


class StartingProber(Prober):
    """The same answers through the scheduler's fast path."""

    def starter(self, spec: CheckerSpec, rs: RealServerSpec) -> Starter:
        def start() -> ProbeResult | Awaitable[ProbeResult]:
            result, duration = self._begin(rs)
            if not duration:
                return result

            async def rest() -> ProbeResult:
                await trio.sleep(duration)
                return result

            return rest()

        return start


def rs(port: int, *checkers: CheckerSpec, weight: int = 1) -> RealServerSpec:
    return RealServerSpec(IPv4Address("198.18.0.2"), port, weight, checkers)


@pytest.mark.parametrize("fast", [False, True], ids=["task", "fast"])
async def test_update_moves_the_next_probe_and_keeps_the_verdict(
    autojump_clock: trio.testing.MockClock, fast: bool
) -> None:
    prober = StartingProber() if fast else Prober()
    events: list[tuple[float, int | None, bool, str]] = []

    def record(e: RealServerEvent) -> None:
        events.append((trio.current_time(), e.real_server.port, e.alive, e.reason))

    vs = VirtualServerSpec("vs", (rs(1, tcp()), rs(2, tcp()), rs(3, tcp())))
    sched = CheckerScheduler([vs], CallbackSink(record), prober)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep_until(95.0)
        prober.results[1] = FAIL  # 100 fails, retries at 101 and 102: DOWN at 102
        await trio.sleep_until(125.0)
        sched.update(vs, rs(1, tcp(4.0)))  # last check 122: next at 126
        sched.update(vs, rs(2, tcp(30.0)))  # last check 120: next at 150
        sched.update(vs, rs(3, tcp()))  # unchanged: still 130
        await trio.sleep_until(133.0)
        prober.results[1] = OK
        await trio.sleep_until(159.0)
        nursery.cancel_scope.cancel()
    assert prober.times(1)[:10] == [10.0 * k for k in range(10)]
    assert prober.times(1)[10:] == [100.0, 101.0, 102.0, 112.0, 122.0, 126.0, 130.0, 134.0,
                                    138.0, 142.0, 146.0, 150.0, 154.0, 158.0]
    assert prober.times(2)[-3:] == [110.0, 120.0, 150.0]
    assert prober.times(3)[-3:] == [130.0, 140.0, 150.0]
    assert [e for e in events if e[0] > 0] == [
        (102.0, 1, False, "connection refused (after 2 retries)"),
        (134.0, 1, True, "connected"),
    ]


@pytest.mark.parametrize("fast", [False, True], ids=["task", "fast"])
async def test_a_probe_in_progress_counts_under_the_new_settings(
    autojump_clock: trio.testing.MockClock, fast: bool
) -> None:
    prober = StartingProber() if fast else Prober()
    events: list[tuple[float, bool]] = []
    vs = VirtualServerSpec("vs", (rs(1, tcp()),))
    sched = CheckerScheduler([vs], CallbackSink(lambda e: events.append(
        (trio.current_time(), e.alive))), prober)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep_until(9.0)
        prober.results[1], prober.durations[1] = FAIL, 3.0
        await trio.sleep_until(11.0)  # the probe started at 10 ends at 13
        sched.update(vs, rs(1, tcp(retry=0)))
        await trio.sleep_until(20.0)
        nursery.cancel_scope.cancel()
    assert prober.times(1) == [0.0, 10.0]  # the next one is due at 23
    assert events == [(0.0, True), (13.0, False)]


async def test_a_change_of_loop_restarts_the_checker_task_keeping_its_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    prober = StartingProber()
    prober.results[1] = FAIL
    events: list[tuple[float, bool]] = []
    vs = VirtualServerSpec("vs", (rs(1, tcp(retry=0)),))
    sched = CheckerScheduler([vs], CallbackSink(lambda e: events.append(
        (trio.current_time(), e.alive))), prober)
    two = HttpGet(urls=(UrlSpec("/a"), UrlSpec("/b")),
                  timing=Timing(delay_loop=10.0, warmup=0.0, retry=0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep_until(5.0)
        sched.update(vs, rs(1, two))  # two URLs: each probe runs in the task
        await trio.sleep_until(15.0)
        prober.results[1] = OK
        await trio.sleep_until(45.0)
        nursery.cancel_scope.cancel()
    # DOWN at 0; the new task keeps the time (10); DOWN by failing, so the
    # success at 20 only starts the pass over /a (30) and /b (40)
    assert prober.times(1) == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert events == [(0.0, True), (0.0, False), (40.0, True)]


@pytest.mark.parametrize("fast", [False, True], ids=["task", "fast"])
async def test_update_at_the_instant_probes_are_due(
    autojump_clock: trio.testing.MockClock, fast: bool
) -> None:
    # The reload and the timer queue wake at the same instant, in either order:
    # each checker either probes at 10 (then every 4 s from its end) or finds
    # 10 already taken by the reload and goes to the next turn of 4 s, 12.
    prober = StartingProber() if fast else Prober()
    ports = range(1, 21)
    vs = VirtualServerSpec("vs", tuple(rs(p, tcp()) for p in ports))
    sched = CheckerScheduler([vs], CallbackSink(lambda e: None), prober)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep_until(10.0)
        for p in ports:
            sched.update(vs, rs(p, tcp(4.0)))
        await trio.sleep_until(19.0)
        nursery.cancel_scope.cancel()
    for p in ports:
        assert prober.times(p) in ([0.0, 10.0, 14.0, 18.0], [0.0, 12.0, 16.0])


class TargetProber(Prober):
    """A fast-path prober that, like the real TCP one, fixes its target when the
    starter is made: each probe records the port it really checked."""

    def __init__(self) -> None:
        super().__init__()
        self.checked: list[tuple[float, int]] = []

    def starter(self, spec: CheckerSpec, rs: RealServerSpec) -> Starter:
        assert isinstance(spec, TcpCheck) and rs.port is not None
        port = spec.connect_port if spec.connect_port is not None else rs.port

        def start() -> ProbeResult:
            self.checked.append((trio.current_time(), port))
            return OK

        return start


async def test_a_reload_checks_the_new_connect_port_and_keeps_the_old_one_otherwise(
    autojump_clock: trio.testing.MockClock,
) -> None:
    prober = TargetProber()
    vs = VirtualServerSpec("vs", (rs(80, tcp()),))
    sched = CheckerScheduler([vs], CallbackSink(lambda e: None), prober)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep_until(15.0)
        sched.update(vs, rs(80, tcp(delay_loop=4.0)))  # only its timing: the same port
        await trio.sleep_until(25.0)
        sched.update(vs, rs(80, TcpCheck(connect_port=8080, timing=tcp(4.0).timing)))
        await trio.sleep_until(31.0)
        nursery.cancel_scope.cancel()
    # (the probe at 0, due as the checker starts, runs in a task: not through the starter)
    assert prober.checked == [(10.0, 80), (18.0, 80), (22.0, 80), (26.0, 8080), (30.0, 8080)]
