"""The pieces of ``make demo-lvs`` (bench/demo_lvs.py) and bench/checker_removal.py that run
on the host: their keepalived.conf files (accepted by pyalived's parser and by keepalived
2.2.7's ``-t``), and the helpers that read logs, ipvsadm output and request counts.

Both scripts run for real only inside the IPVS VM; this checks what they stand on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyalived.checkers.compile import checker_specs
from pyalived.config import Severity, load, render

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import checker_removal  # noqa: E402
import demo_lvs  # noqa: E402

KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"


def keepalived_accepts(path: Path) -> None:
    """``keepalived -t`` finds nothing wrong but, maybe, interfaces this host lacks
    (the directors' eth0 and eth1 exist only in the VM's namespaces)."""
    done = subprocess.run([KEEPALIVED, "-t", "-f", str(path)], capture_output=True, text=True)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()
                  and "doesn't exist" not in line and "Non-existent interface" not in line]
    assert not complaints and done.returncode in (0, 5), done.stdout + done.stderr


@pytest.mark.parametrize(("router_id", "priority"), demo_lvs.DIRECTORS)
def test_demo_director_configs_load_in_both_daemons(tmp_path: Path, router_id: str,
                                                    priority: int) -> None:
    path = tmp_path / f"{router_id}.conf"
    path.write_text(demo_lvs.director_config(router_id, priority))
    res = load(str(path), interface_exists={"eth0", "eth1"}.__contains__)
    assert res.config is not None and not res.diagnostics, render(res.diagnostics)
    (instance,) = res.config.vrrp_instances
    assert instance.priority == priority
    sync = res.config.global_defs.lvs_sync_daemon
    assert sync is not None and (sync.interface, sync.instance) == ("eth0", instance.name)
    web, echo = checker_specs(res.config)
    assert [rs.weight for rs in web.real_servers] == [3, 2, 1]
    assert [rs.weight for rs in echo.real_servers] == [1, 1, 1]
    assert all(len(rs.checkers) == 1 for vs in (web, echo) for rs in vs.real_servers)
    keepalived_accepts(path)


def test_removal_bench_config_is_the_same_timing_for_every_checker(tmp_path: Path) -> None:
    path = tmp_path / "d1.conf"
    path.write_text(checker_removal.config("d1"))
    res = load(str(path))
    assert res.config is not None and not res.diagnostics, render(res.diagnostics)
    kinds = set()
    for vs in checker_specs(res.config):
        for rs in vs.real_servers:
            (check,) = rs.checkers
            kinds.add(check.kind)
            assert (check.timing.delay_loop, check.effective_retry,
                    check.effective_delay_before_retry, check.connect_timeout) == (
                checker_removal.DELAY_LOOP, checker_removal.RETRY,
                checker_removal.DELAY_BEFORE_RETRY, checker_removal.CONNECT_TIMEOUT)
    assert kinds == {kind for kind, *_ in checker_removal.KINDS}
    assert not [d for d in res.diagnostics if d.severity is Severity.WARNING]
    keepalived_accepts(path)


def test_wrr_split() -> None:
    assert demo_lvs.expected_split({"rs1": 3, "rs2": 2, "rs3": 1}, 60) == {
        "rs1": 30, "rs2": 20, "rs3": 10}
    assert demo_lvs.expected_split({"rs1": 3, "rs2": 0, "rs3": 1}, 12) == {"rs1": 9, "rs3": 3}


def test_log_lines_name_the_address_not_a_longer_one() -> None:
    log = "\n".join([
        "VS 198.18.0.100:80: real server 198.19.0.22:80: TCP_CHECK#0 DOWN: refused",
        "VS 198.18.0.100:80: real server 198.19.0.221:80: TCP_CHECK#0 DOWN: refused",
        "Removing service [198.19.0.22]:tcp:80 to VS [198.18.0.100]:tcp:80",
        "VS 198.18.0.100:80: real server 198.19.0.2:80: TCP_CHECK#0 UP",
    ])
    assert demo_lvs.lines_about(log, "198.19.0.22") == [
        "VS 198.18.0.100:80: real server 198.19.0.22:80: TCP_CHECK#0 DOWN: refused",
        "Removing service [198.19.0.22]:tcp:80 to VS [198.18.0.100]:tcp:80",
    ]


IPVSADM = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  198.18.0.100:80 wrr
  -> 198.19.0.21:80               Masq    3      0          30
  -> 198.19.0.23:80               Masq    1      0          10
TCP  198.18.0.100:7000 rr
  -> 198.19.0.21:7000             Masq    1      1          0
"""


def test_ipvsadm_excerpt_is_one_service() -> None:
    assert demo_lvs.excerpt(IPVSADM, 80).splitlines() == [
        "    TCP  198.18.0.100:80 wrr",
        "      -> 198.19.0.21:80               Masq    3      0          30",
        "      -> 198.19.0.23:80               Masq    1      0          10",
    ]
    assert len(demo_lvs.excerpt(IPVSADM, 7000).splitlines()) == 2


def test_removal_summary() -> None:
    assert checker_removal.summary([3.0, 1.0, 2.0, 9.0]) == (2.5, 9.0)
