"""A probe that cannot run for lack of resources never marks a real server DOWN.

The policy and the scheduler are driven with scripted fake probers under
trio's autojump clock (both the task path and the ``starter`` fast path);
the real probes are run in a child process whose file descriptors are really
exhausted (``RLIMIT_NOFILE`` lowered there only), against a listener on the
loopback, so the EMFILE comes from the kernel.
"""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Awaitable
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import trio
import trio.testing

from pyalived.checkers.policy import INTERNAL_RETRY_DELAY, CheckerPolicy, ProbeResult
from pyalived.checkers.probes import Starter
from pyalived.checkers.scheduler import (
    INTERNAL_ERROR_LOG_INTERVAL,
    CallbackSink,
    CheckerScheduler,
    RealServerEvent,
)
from pyalived.checkers.spec import (
    CheckerSpec,
    RealServerSpec,
    TcpCheck,
    Timing,
    VirtualServerSpec,
)

REPO = Path(__file__).resolve().parents[2]

OK = ProbeResult(True, "connected")
FAIL = ProbeResult(False, "connection refused")
NOFDS = ProbeResult(False, "socket: too many open files", internal=True)
EMFILE = OSError(errno.EMFILE, "Too many open files")
TIMING = Timing(delay_loop=3.0, warmup=0.0, retry=1, delay_before_retry=1.0)


# ---- the policy -----------------------------------------------------------------


def finish(p: CheckerPolicy, result: ProbeResult) -> tuple[float, list[object]]:
    t = p.get_timer()
    assert t is not None
    p.probe_started(t)
    return t, list(p.probe_finished(result, t))


def test_internal_result_changes_nothing_but_the_next_probe_time() -> None:
    p = CheckerPolicy(delay_loop=3.0, retry=1, delay_before_retry=1.0, alpha=False, now=0.0)
    assert finish(p, FAIL) == (0.0, [])  # the first failure: a retry is due
    assert p.retries_done == 1
    for k in range(50):  # any number of internal errors: no retry used up, no DOWN
        t, transitions = finish(p, NOFDS)
        assert transitions == []
        assert t == 1.0 + k * INTERNAL_RETRY_DELAY
        assert p.up and p.retries_done == 1 and p.last_reason == "connection refused"
    t, transitions = finish(p, FAIL)  # the retry, once a probe really ran
    assert len(transitions) == 1 and not p.up


def test_internal_retry_is_never_later_than_delay_loop() -> None:
    p = CheckerPolicy(delay_loop=0.2, retry=0, delay_before_retry=0.0, alpha=True, now=0.0)
    finish(p, NOFDS)
    assert p.get_timer() == pytest.approx(0.2)
    assert not p.up  # alpha: still DOWN, not brought UP either


# ---- the scheduler ---------------------------------------------------------------


class Scripted:
    """Probe n of a port answers script[port][n] (then OK); an exception is raised."""

    def __init__(self, script: dict[int, list[ProbeResult | Exception]]) -> None:
        self.script = {p: list(rs) for p, rs in script.items()}
        self.calls: list[tuple[int, float]] = []

    def _pop(self, rs: RealServerSpec) -> ProbeResult | Exception:
        assert rs.port is not None
        self.calls.append((rs.port, trio.current_time()))
        todo = self.script.get(rs.port, [])
        return todo.pop(0) if todo else OK

    def _next(self, rs: RealServerSpec) -> ProbeResult:
        result = self._pop(rs)
        if isinstance(result, Exception):
            raise result
        return result

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        result = self._pop(rs)
        await trio.sleep(0.25)  # a probe in a task takes a while
        if isinstance(result, Exception):
            raise result
        return result


class ScriptedStarter(Scripted):
    """The same answers through the scheduler's fast path, synchronously."""

    def starter(self, spec: CheckerSpec, rs: RealServerSpec) -> Starter:
        def start() -> ProbeResult | Awaitable[ProbeResult]:
            return self._next(rs)

        return start


def server(port: int) -> RealServerSpec:
    return RealServerSpec(IPv4Address("198.18.0.2"), port, 1, (TcpCheck(timing=TIMING),))


@pytest.mark.parametrize("prober_type", [Scripted, ScriptedStarter])
async def test_exhaustion_is_retried_soon_never_counted_and_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
    prober_type: type[Scripted],
) -> None:
    # Port 1: thirty internal errors in a row (results and raised EMFILE), then fine.
    # Port 2: a real failure, internal errors during its retry, then the real retry fails.
    storm: list[ProbeResult | Exception] = [NOFDS, EMFILE] * 15
    prober = prober_type({1: [OK, *storm, OK], 2: [OK, FAIL, NOFDS, NOFDS, FAIL]})
    vs = VirtualServerSpec("vs", (server(1), server(2)))
    events: list[tuple[float, RealServerEvent]] = []
    durations: list[bool] = []
    caplog.set_level(logging.INFO, logger="pyalived.checkers")
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        sched = CheckerScheduler(
            [vs], CallbackSink(lambda e: events.append((trio.current_time(), e))), prober,
            on_probe_done=lambda spec, seconds, ok: durations.append(ok))
        await nursery.start(sched.run)
        await trio.sleep(60.0)
        nursery.cancel_scope.cancel()
    port1 = [round(t - t0, 6) for p, t in prober.calls if p == 1]
    # delay_loop after the first probe (in a task: it takes 0.25 s), then the
    # probes that could not run, INTERNAL_RETRY_DELAY apart
    retry = INTERNAL_RETRY_DELAY
    if prober_type is Scripted:
        assert port1[:4] == [0.0, 3.25, 3.5 + retry, 3.75 + 2 * retry]
    else:  # the fast path: synchronous answers
        assert port1[:4] == [0.0, 3.25, 3.25 + retry, 3.25 + 2 * retry]
    assert len(port1) > 31
    changes = [(e.real_server.port, e.alive) for _, e in events if e.checker is not None]
    # port 2: its real failure and retry, then back; port 1 never went DOWN
    assert changes == [(2, False), (2, True)]
    assert sched.internal_errors == 32
    assert len(durations) == len(prober.calls) - 32  # internal errors are no probe durations
    internal = [r for r in caplog.records if "internal error" in r.getMessage()]
    # one line per INTERNAL_ERROR_LOG_INTERVAL for all checkers together, no traceback
    assert 1 <= len(internal) <= 60.0 / INTERNAL_ERROR_LOG_INTERVAL + 1
    assert all(r.exc_info is None for r in internal)
    assert "not counted against the real server" in internal[0].getMessage()
    assert "suppressed" in internal[-1].getMessage()
    assert not any("Traceback" in r.getMessage() or r.exc_info for r in caplog.records)


# ---- the real probes, with the kernel refusing file descriptors ------------------

_CHILD = textwrap.dedent("""
    import json, os, resource, socket, sys
    import trio
    from ipaddress import IPv4Address
    from pyalived.checkers.probes import RealProber
    from pyalived.checkers.spec import (
        HttpGet, MiscCheck, RealServerSpec, TcpCheck, Timing, UrlSpec)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    rs = RealServerSpec(IPv4Address("127.0.0.1"), port, 1, ())
    timing = Timing(delay_loop=1.0, warmup=0.0)
    checks = {
        "tcp": TcpCheck(timing=timing),
        "http": HttpGet(urls=(UrlSpec("/"),), timing=timing),
        "misc": MiscCheck("/bin/true", timing=timing),
    }
    prober = RealProber()

    async def main():
        out = {}
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        filler = []
        try:
            while True:
                filler.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        for name, spec in checks.items():
            out[name] = None
            with trio.move_on_after(5):
                r = await prober.probe(spec, rs)
                out[name] = [r.ok, r.internal, r.reason]
        fast = prober.starter(checks["tcp"], rs)()
        out["tcp-fast"] = [fast.ok, fast.internal, fast.reason]
        for fd in filler:
            os.close(fd)
        r = await prober.probe(checks["tcp"], rs)
        out["tcp-after"] = [r.ok, r.internal, r.reason]
        print(json.dumps(out))

    trio.run(main)
""")


def test_real_probes_out_of_descriptors_are_internal_errors() -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for name in ("tcp", "tcp-fast", "http", "misc"):
        ok, internal, reason = out[name]
        assert (ok, internal) == (False, True), (name, reason)
        assert "too many open files" in reason, (name, reason)
    assert out["tcp-after"][:2] == [True, False]  # descriptors back: a real check again
