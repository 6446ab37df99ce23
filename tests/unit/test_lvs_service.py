"""LVS service tests: checkers driving a fake IPVS kernel, under trio's autojump clock.

Every checker here probes with no warmup, ``delay_loop 10``, ``retry 2`` and
``delay_before_retry 1``, so a real server that starts failing between two
regular probes at t=10k and t=10(k+1) is declared down at 10(k+1)+2 (one
probe and two retries) and back up at the first successful probe 10 s
later.  The fake prober answers instantly from a table the test edits.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from ipaddress import ip_address
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from pyalived.checkers.compile import PackedLvs
from pyalived.checkers.policy import ProbeResult
from pyalived.checkers.service import LvsService
from pyalived.checkers.spec import CheckerSpec, RealServerSpec
from pyalived.config import load
from pyalived.config.model import Config
from pyalived.ipvs.model import (
    AddDest,
    DeleteDest,
    Destination,
    DestKey,
    Forwarding,
    Op,
    OpError,
    Plan,
    Service,
    ServiceEntry,
    ServiceKey,
    apply_ops,
    make_table,
)
from pyalived.ipvs.netlink import IpvsTableManager, IpvsUnavailable, NetlinkIpvs, OpFailure
from pyalived.metrics import Metrics
from pyalived.vrrp.counters import VrrpCounters

from .fakes import EveryScriptRuns, FakeScriptRunner

VIP = ServiceKey.inet("198.18.0.1", 80)
A = DestKey(ip_address("198.18.0.2"), 80)
B = DestKey(ip_address("198.18.0.3"), 80)
C = DestKey(ip_address("198.18.0.4"), 80)
SORRY = DestKey(ip_address("198.18.0.9"), 80)
T = TypeVar("T")

CHECK = """  TCP_CHECK {
   connect_timeout 1
   delay_loop 10
   retry 2
   delay_before_retry 1
   warmup 0
  }"""


def rs_block(dest: DestKey, extra: str = "", check: str = CHECK) -> str:
    name = str(dest.address)[len("198.18.0."):]
    return (
        f" real_server {dest.address} {dest.port} {{\n"
        f"  notify_up \"/bin/echo up {name}\"\n  notify_down \"/bin/echo down {name}\"\n"
        f"{extra}\n{check}\n }}\n"
    )


def vs_text(*servers: str, vs: str = "") -> str:
    return (
        "global_defs {\n enable_script_security\n script_user root\n}\n"
        "virtual_server 198.18.0.1 80 {\n lb_algo rr\n lb_kind NAT\n protocol TCP\n"
        f"{vs}\n{''.join(servers)}}}\n"
    )


def config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "keepalived.conf"
    path.write_text(text)
    result = load(str(path), interface_exists=lambda name: True, scripts=EveryScriptRuns())
    assert result.config is not None, [str(d) for d in result.diagnostics]
    return result.config


class FakeKernel:
    """An IPVS table with the kernel's semantics (``apply_ops``)."""

    def __init__(self, table: dict[ServiceKey, ServiceEntry] | None = None) -> None:
        self.table = dict(table or {})
        self.executed: list[Op] = []
        self.opened = 0
        self.closed = False

    def open(self) -> FakeKernel:
        self.opened += 1
        return self

    def dump(self) -> dict[ServiceKey, ServiceEntry]:
        return dict(self.table)

    def execute(self, ops: Sequence[Op]) -> list[OpFailure]:
        failures = []
        for op in ops:
            self.executed.append(op)
            try:
                self.table = apply_ops(self.table, [op])
            except OpError:
                failures.append(OpFailure(op, errno.EEXIST))
        return failures

    def close(self) -> None:
        self.closed = True

    def weights(self, key: ServiceKey = VIP) -> dict[DestKey, int]:
        return {k: d.weight for k, d in self.table[key].dests.items()}


class FakeProber:
    """Answers from ``results`` (default: success); logs (time, real server) per probe."""

    def __init__(self) -> None:
        self.results: dict[DestKey, ProbeResult] = {}
        self.calls: list[tuple[float, DestKey]] = []

    def set(self, dest: DestKey, ok: bool, weight: int | None = None) -> None:
        self.results[dest] = ProbeResult(ok, "fine" if ok else "refused", weight)

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        key = DestKey(rs.ip, rs.port or 0)
        self.calls.append((trio.current_time(), key))
        return self.results.get(key, ProbeResult(True, "fine"))

    def times(self, dest: DestKey) -> list[float]:
        return [t for t, k in self.calls if k == dest]


class InlineManager(IpvsTableManager):
    """The real manager, calling the fake kernel inline instead of in a worker thread
    (a thread lets the autojump clock run ahead while it works)."""

    async def _call(self, fn: Callable[[], T]) -> T:
        return fn()


class Rig:
    def __init__(self, kernel: FakeKernel | None = None) -> None:
        self.kernel = kernel if kernel is not None else FakeKernel()
        self.prober = FakeProber()
        self.scripts = FakeScriptRunner()
        self.plans: list[tuple[float, Plan]] = []  # (time, plan) of every re-plan

    def observe_plan(self, time: float, plan: Plan) -> None:
        self.plans.append((time, plan))

    def service(self, conf: Config | PackedLvs, **kwargs: object) -> LvsService:
        return LvsService(
            conf, manager=InlineManager(self.kernel.open), prober=self.prober,
            scripts=self.scripts, plan_observer=self.observe_plan,
            **kwargs,  # type: ignore[arg-type]
        )

    def notified(self) -> list[tuple[float, str]]:
        return [(c.time, " ".join(c.argv[1:])) for c in self.scripts.notified]


@asynccontextmanager
async def running(svc: LvsService) -> AsyncIterator[LvsService]:
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        yield svc
        nursery.cancel_scope.cancel()


async def at(t: float, svc: LvsService) -> None:
    """Sleep until time ``t`` (start is 0), then until the table reflects every change."""
    await trio.sleep_until(t)
    await svc.wait_applied()


def plan_times(rig: Rig) -> list[float]:
    return [t for t, _ in rig.plans]


async def test_failed_server_removed_after_retries_and_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig()
    svc = rig.service(config(tmp_path, vs_text(rs_block(A), rs_block(B))))
    async with running(svc):
        assert rig.kernel.weights() == {A: 1, B: 1}
        assert rig.kernel.table[VIP].service == Service(VIP, "rr", 0, 0, 32)
        await trio.sleep_until(15)
        rig.prober.set(A, False)
        await at(21.5, svc)
        assert A in rig.kernel.table[VIP].dests  # two retries still pending
        await at(22.5, svc)
        assert rig.prober.times(A)[:5] == [0, 10, 20, 21, 22]
        assert rig.kernel.weights() == {B: 1}
        assert rig.kernel.executed[-1] == DeleteDest(VIP, A)
        assert rig.notified() == [(22, "down 2")]
        rig.prober.set(A, True)
        await at(32.5, svc)
        assert rig.kernel.weights() == {A: 1, B: 1}
        last: Op = rig.kernel.executed[-1]
        assert last == AddDest(VIP, Destination(A, 1, Forwarding.NAT))
        assert rig.notified() == [(22, "down 2"), (32, "up 2")]
        assert plan_times(rig) == [0, 22, 32]
    # stop releases the configured service, as keepalived does
    assert rig.kernel.table == {} and rig.kernel.closed


async def test_quorum_loss_brings_the_sorry_server(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    vs = (' quorum 2\n sorry_server 198.18.0.9 80\n'
          ' quorum_up "/bin/echo quorum up"\n quorum_down "/bin/echo quorum down"')
    rig = Rig()
    svc = rig.service(config(tmp_path, vs_text(rs_block(A), rs_block(B), vs=vs)))
    async with running(svc):
        assert rig.kernel.weights() == {A: 1, B: 1}
        await trio.sleep_until(15)
        rig.prober.set(B, False)
        await at(22.5, svc)
        assert rig.kernel.weights() == {SORRY: 1}
        assert svc.quorum == {VIP: False}
        assert rig.notified() == [(22, "down 3"), (22, "quorum down")]
        rig.prober.set(B, True)
        await at(32.5, svc)
        assert rig.kernel.weights() == {A: 1, B: 1}
        assert rig.notified()[2:] == [(32, "up 3"), (32, "quorum up")]


async def test_inhibit_on_failure_keeps_the_server_at_weight_0(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig()
    conf = config(tmp_path, vs_text(rs_block(A, "  weight 3"), rs_block(B),
                                    vs=" inhibit_on_failure"))
    svc = rig.service(conf)
    async with running(svc):
        assert rig.kernel.weights() == {A: 3, B: 1}
        await trio.sleep_until(5)
        rig.prober.set(A, False)
        await at(12.5, svc)
        assert rig.kernel.weights() == {A: 0, B: 1}
        rig.prober.set(A, True)
        await at(22.5, svc)
        assert rig.kernel.weights() == {A: 3, B: 1}
        assert plan_times(rig) == [0, 12, 22]


async def test_misc_dynamic_weight_reaches_ipvs(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    misc = ("  MISC_CHECK {\n   misc_path \"/bin/true\"\n   misc_dynamic\n"
            "   delay_loop 10\n   warmup 0\n  }")
    rig = Rig()
    svc = rig.service(config(tmp_path, vs_text(rs_block(A, "  weight 4", check=misc),
                                                rs_block(B), vs=" quorum 5")))
    async with running(svc):
        assert rig.kernel.weights() == {A: 4, B: 1}
        rig.prober.set(A, True, weight=9)
        await at(10.5, svc)
        assert rig.kernel.weights() == {A: 9, B: 1}
        rig.prober.set(A, True, weight=0)
        await at(20.5, svc)
        # weight 0 + 1 < quorum 5: quorum lost, but the server stays (no sorry server)
        assert rig.kernel.weights() == {A: 0, B: 1}
        assert svc.quorum == {VIP: False}
        assert plan_times(rig) == [0, 10, 20]


async def test_reload_changes_only_the_difference(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig()
    svc = rig.service(config(tmp_path, vs_text(rs_block(A), rs_block(B))))
    async with running(svc):
        await trio.sleep_until(5)
        rig.prober.set(A, False)
        await at(12.5, svc)
        assert rig.kernel.weights() == {B: 1}
        done = len(rig.kernel.executed)
        await trio.sleep_until(15)
        await svc.apply(config(tmp_path, vs_text(rs_block(A), rs_block(C))))
        # A keeps its checker (still down, no fresh probe), B stops, C starts probing now
        assert rig.kernel.executed[done:] == [
            DeleteDest(VIP, B), AddDest(VIP, Destination(C, 1, Forwarding.NAT))
        ]
        assert rig.kernel.weights() == {C: 1}
        await at(40.5, svc)
        assert rig.prober.times(A) == [0, 10, 11, 12, 22, 32]
        assert rig.prober.times(B) == [0, 10]
        assert rig.prober.times(C) == [15, 25, 35]
        rig.prober.set(A, True)
        await at(42.5, svc)
        assert rig.kernel.weights() == {A: 1, C: 1}
        assert rig.notified() == [(12, "down 2"), (42, "up 2")]
        assert rig.kernel.opened == 1


async def test_adopts_configured_entries_and_leaves_others_alone(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    other = ServiceKey.inet("198.18.0.100", 443)
    kernel = FakeKernel(make_table([
        (Service(other, "wlc"), [Destination(DestKey(ip_address("198.18.0.101"), 443))]),
        (Service(VIP, "wlc"), [Destination(A, 7, Forwarding.DR)]),
    ]))
    rig = Rig(kernel)
    svc = rig.service(config(tmp_path, vs_text(rs_block(A), rs_block(B))))
    async with running(svc):
        assert kernel.table[VIP].service.scheduler == "rr"
        assert kernel.weights() == {A: 1, B: 1}
        assert kernel.table[VIP].dests[A].forwarding is Forwarding.NAT
        assert other in kernel.table
    assert list(kernel.table) == [other]


async def test_without_ipvs_the_checkers_keep_running(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def no_ipvs() -> FakeKernel:
        raise IpvsUnavailable("the kernel has no IPVS support (test)")

    rig = Rig()
    svc = LvsService(config(tmp_path, vs_text(rs_block(A), rs_block(B))),
                     manager=InlineManager(no_ipvs), prober=rig.prober, scripts=rig.scripts,
                     plan_observer=rig.observe_plan)
    with caplog.at_level(logging.INFO):
        async with running(svc):
            assert svc.ipvs_unavailable == "the kernel has no IPVS support (test)"
            await trio.sleep_until(5)
            rig.prober.set(A, False)
            await at(32.5, svc)
            assert [s.alive for s in svc.real_servers()] == [False, True]
            assert rig.notified() == [(12, "down 2")]
            assert svc.desired[VIP].dests.keys() == {B}
            assert plan_times(rig) == [0, 12]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "IPVS disabled: the kernel has no IPVS support (test)"
    ]


async def test_no_virtual_server_never_opens_ipvs(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig()
    conf = config(tmp_path, "vrrp_instance V {\n interface eth0\n virtual_router_id 1\n"
                            " virtual_ipaddress {\n  198.18.0.1\n }\n}\n")
    async with running(rig.service(conf)):
        await trio.sleep(100)
    assert rig.kernel.opened == 0


async def test_omega_reports_down_on_shutdown(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig()
    svc = rig.service(config(tmp_path, vs_text(rs_block(A), vs=' omega\n'
                                               ' quorum_down "/bin/echo quorum down"')))
    async with running(svc):
        await trio.sleep(5)
    assert rig.notified() == [(5, "down 2"), (5, "quorum down")]
    assert rig.kernel.table == {}


async def test_metrics_read_the_service(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = Metrics(VrrpCounters(), wall_clock=lambda: 1_700_000_000.0)
    rig = Rig()
    svc = LvsService(config(tmp_path, vs_text(rs_block(A), rs_block(B))),
                     manager=InlineManager(rig.kernel.open), prober=rig.prober,
                     scripts=rig.scripts, probe_observer=metrics.observe_probe)
    metrics.lvs = svc
    async with running(svc):
        await trio.sleep_until(5)
        rig.prober.set(A, False)
        await at(12.5, svc)

        def value(name: str, **labels: str) -> float | None:
            return metrics.registry.get_sample_value(name, labels)

        rs_a = {"virtual_server": "198.18.0.1:80", "real_server": "198.18.0.2:80"}
        rs_b = {"virtual_server": "198.18.0.1:80", "real_server": "198.18.0.3:80"}
        assert value("pyalived_real_server_up", **rs_a) == 0
        assert value("pyalived_real_server_up", **rs_b) == 1
        assert value("pyalived_real_server_weight", **rs_b) == 1
        assert value("pyalived_lvs_quorum_up", virtual_server="198.18.0.1:80") == 1
        assert value("pyalived_ipvs_dest_weight", service="TCP 198.18.0.1:80",
                     dest="198.18.0.3:80") == 1
        assert value("pyalived_ipvs_dest_weight", service="TCP 198.18.0.1:80",
                     dest="198.18.0.2:80") is None
        assert value("pyalived_ipvs_available") == 1
        # probes at 0 and 10 for both, retries at 11 and 12 for A
        assert value("pyalived_checker_probe_seconds_count", checker="TCP_CHECK") == 6
        body, _ = metrics.render()
        if shutil.which("promtool") is not None:
            proc = subprocess.run(["promtool", "check", "metrics"], input=body,
                                  capture_output=True, timeout=60)
            assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
            assert proc.stdout.strip() == b"" and proc.stderr.strip() == b"", proc.stderr


# ---- the real daemon on a host without IPVS ---------------------------------------------


def _host_has_ipvs() -> bool:
    try:
        NetlinkIpvs(load_module=False).close()
    except IpvsUnavailable:
        return False
    except OSError:
        return True  # cannot tell: do not risk touching a real table
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


DAEMON_CONF = """\
virtual_server 198.18.0.1 80 {{
 lb_algo rr
 lb_kind NAT
 protocol TCP
 real_server 127.0.0.1 {up} {{
  TCP_CHECK {{
   connect_timeout 1
   delay_loop 1
   warmup 0
  }}
 }}
{extra}}}
"""

DEAD_RS = """\
 real_server 127.0.0.1 {down} {{
  TCP_CHECK {{
   connect_timeout 1
   delay_loop 1
   warmup 0
   retry 0
  }}
 }}
"""


@pytest.mark.skipif(_host_has_ipvs(), reason="the host kernel has IPVS: would program it")
def test_daemon_without_ipvs_keeps_checking_and_reloads(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    up = listener.getsockname()[1]
    down = _free_port()  # nothing listens there
    metrics_port = _free_port()
    conf = tmp_path / "keepalived.conf"
    conf.write_text(DAEMON_CONF.format(up=up, extra=DEAD_RS.format(down=down)))
    pid, cpid, log_path = tmp_path / "p.pid", tmp_path / "c.pid", tmp_path / "daemon.log"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyalived", "-n", "-l", "-f", str(conf), "-p", str(pid),
             "-c", str(cpid), "--metrics-listen", f"127.0.0.1:{metrics_port}"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{metrics_port}/metrics"

    def scrape() -> str:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text: str = response.read().decode()
                return text
        except OSError:
            return ""

    def wait_for(predicate: Callable[[str], bool]) -> str:
        for _ in range(300):
            assert proc.poll() is None, log_path.read_text()
            text = scrape()
            if predicate(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out; last scrape:\n{text}\nlog:\n{log_path.read_text()}")

    def series(name: str, port: int) -> str:
        return (f'{name}{{real_server="127.0.0.1:{port}",'
                f'virtual_server="198.18.0.1:80"}}')

    try:
        text = wait_for(lambda t: series("pyalived_real_server_up", down) + " 0.0" in t)
        assert series("pyalived_real_server_up", up) + " 1.0" in text
        assert "pyalived_ipvs_available 0.0" in text
        assert "keepalived_up 1.0" in text
        checker = int(cpid.read_text())  # -c names the checker child, as in keepalived
        assert checker != proc.pid
        assert f"PPid:\t{proc.pid}\n" in Path(f"/proc/{checker}/status").read_text()
        # reload without the dead real server: its series goes, the live one stays
        conf.write_text(DAEMON_CONF.format(up=up, extra=""))
        proc.send_signal(signal.SIGHUP)
        text = wait_for(lambda t: "pyalived_real_server_up" in t
                        and series("pyalived_real_server_up", down) not in t)
        assert series("pyalived_real_server_up", up) + " 1.0" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
    log_text = log_path.read_text()
    assert log_text.count("IPVS disabled: the kernel has no IPVS support") == 1, log_text
    assert f"real server 127.0.0.1:{down}: TCP_CHECK#0 DOWN" in log_text
    assert "Traceback" not in log_text, log_text
    assert not pid.exists() and not cpid.exists()


async def test_a_health_change_replans_only_its_virtual_server(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    other = ServiceKey.inet("198.18.0.10", 80)
    second = ("virtual_server 198.18.0.10 80 {\n lb_algo rr\n lb_kind NAT\n"
              f" protocol TCP\n{rs_block(C)}}}\n")
    rig = Rig()
    svc = rig.service(config(tmp_path, vs_text(rs_block(A), rs_block(B)) + second))
    async with running(svc):
        await trio.sleep_until(5)
        rig.prober.set(A, False)
        await at(12.5, svc)
        assert rig.kernel.weights() == {B: 1}
        assert rig.kernel.weights(other) == {C: 1}
    assert [(t, list(p.table)) for t, p in rig.plans] == [(0, [VIP, other]), (12, [VIP])]


async def test_notify_and_quorum_lines_run_as_their_user_else_script_user(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``notify_down SCRIPT USER GROUP`` runs as that user; a line without one runs as
    global_defs' script_user (here ``nobody``), never as root by default."""
    servers = (
        rs_block(A).replace('notify_down "/bin/echo down 2"',
                            'notify_down "/bin/echo down 2" daemon adm'),
        rs_block(B),
    )
    vs = ' quorum 2\n quorum_down "/bin/echo quorum down" operator\n'
    text = vs_text(*servers, vs=vs).replace("script_user root", "script_user nobody")
    rig = Rig()
    svc = rig.service(config(tmp_path, text))
    async with running(svc):
        await trio.sleep_until(15)
        rig.prober.set(A, False)
        rig.prober.set(B, False)
        await at(22.5, svc)
        assert sorted((" ".join(c.argv[1:]), c.user, c.group)
                      for c in rig.scripts.notified) == [
            ("down 2", "daemon", "adm"), ("down 3", "nobody", None),
            ("quorum down", "operator", None)]
