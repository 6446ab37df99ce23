"""log_all_failures / checker_log_all_failures: every failed check of an up checker is logged."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import trio
import trio.testing

from pyalived.checkers.compile import checker_specs
from pyalived.checkers.policy import ProbeResult
from pyalived.checkers.scheduler import CallbackSink, CheckerScheduler
from pyalived.checkers.spec import CheckerSpec, RealServerSpec, TcpCheck, Timing, VirtualServerSpec
from pyalived.config import load, render

FAIL = ProbeResult(False, "connection refused")


class Failing:
    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        return FAIL


def failed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if " failed: " in r.getMessage()]


@pytest.mark.parametrize(("own", "global_", "logged"),
                         [(False, False, 0), (True, False, 3), (False, True, 3)])
async def test_each_failure_while_up_is_logged_with_the_option(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
    own: bool, global_: bool, logged: int,
) -> None:
    spec = TcpCheck(timing=Timing(delay_loop=10.0, warmup=0.0, retry=2, delay_before_retry=1.0,
                                  log_all_failures=own))
    vs = VirtualServerSpec("198.18.0.1:80", (RealServerSpec(IPv4Address("198.18.0.2"), 80, 1,
                                                            (spec,)),))
    caplog.set_level(logging.INFO, logger="pyalived.checkers")
    sched = CheckerScheduler([vs], CallbackSink(lambda e: None), Failing())
    sched.log_all_failures = global_
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(35.0)  # fails at 0, retries at 1 and 2 (DOWN), then 12, 22, 32
        nursery.cancel_scope.cancel()
    lines = failed_lines(caplog)
    assert len(lines) == logged  # only while up: the first failure and its two retries
    if logged:
        assert lines[0] == ("198.18.0.1:80: real server 198.18.0.2:80: TCP_CHECK#0 failed: "
                            "connection refused")
    downs = [r.getMessage() for r in caplog.records if "TCP_CHECK#0 DOWN" in r.getMessage()]
    assert len(downs) == 1


def test_the_keywords_parse(tmp_path: Path) -> None:
    p = tmp_path / "keepalived.conf"
    p.write_text("""
global_defs {
  checker_log_all_failures
}
virtual_server 198.18.0.1 80 {
  lvs_sched rr
  lvs_method NAT
  protocol TCP
  real_server 198.18.0.2 80 {
    TCP_CHECK {
      log_all_failures
    }
    MISC_CHECK {
      misc_path /bin/true
      log_all_failures false
    }
  }
}
""")
    res = load(str(p))
    assert res.config is not None, render(res.diagnostics)
    assert res.config.global_defs.checker_log_all_failures
    tcp, misc = checker_specs(res.config)[0].real_servers[0].checkers
    assert tcp.timing.log_all_failures and not misc.timing.log_all_failures
