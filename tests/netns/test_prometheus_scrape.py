"""A real Prometheus server scrapes pyalived through a failover.

Two routers on a namespace LAN: keepalived 2.2.7 as the master (priority
100) and pyalived as the backup (priority 90), serving its metrics on the
loopback of its own namespace.  Prometheus (the Debian package) runs in the
same namespace with a 1 s scrape interval, its data in the test's directory.
The test stops the master with SIGTERM and then asks Prometheus, through its
HTTP API, what it saw: ``keepalived_vrrp_state`` of the backup went from 1
(BACKUP) to 2 (MASTER), and one failover was recorded.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import pytest

from pyalived.lab import REPO_ROOT, VIP, Lab, Node, VrrpSpec, render_config, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.interop]

MakeLab = Callable[..., Lab]
METRICS = "127.0.0.1:9165"
PROMETHEUS = "127.0.0.1:9090"
SETTLE = 60.0
STATE = 'keepalived_vrrp_state{iname="VI_1",ip_address="198.18.0.100/24"}'


def _prometheus_config(target: str) -> str:
    return (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: pyalived\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )


def query(lab: Lab, node: Node, promql: str) -> list[dict[str, Any]]:
    proc = lab.run(node, "curl", "-s", "-m", "10", "-G", "--data-urlencode", f"query={promql}",
                   f"http://{PROMETHEUS}/api/v1/query", check=False)
    if proc.returncode != 0 or not proc.stdout:
        return []
    reply = json.loads(proc.stdout)
    if reply.get("status") != "success":
        return []
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


def scalar(lab: Lab, node: Node, promql: str) -> float | None:
    result = query(lab, node, promql)
    return float(result[0]["value"][1]) if result else None


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus (apt) missing")
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
def test_prometheus_sees_the_backup_take_over(make_lab: MakeLab) -> None:
    lab = make_lab(routers=2)
    master, backup = lab.routers
    lab.start_daemon(master, render_config("r1", [VrrpSpec(priority=100)]), "keepalived")
    lab.wait_sole_holder(master, timeout=SETTLE)

    conf = lab.write_config(backup, render_config("r2", [VrrpSpec(priority=90)]))
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT),
                                                      os.environ.get("PYTHONPATH", "")) if p))
    lab.spawn(backup, [sys.executable, "-m", "pyalived", "-n", "-l", "-D", "-f", str(conf),
                       "-p", str(lab.workdir / "r2-pyalived.pid"),
                       "--metrics-listen", METRICS], "r2-pyalived", env=env)

    prom_dir = lab.workdir / "prometheus"
    prom_dir.mkdir()
    (prom_dir / "prometheus.yml").write_text(_prometheus_config(METRICS))
    lab.spawn(backup, ["prometheus", f"--config.file={prom_dir / 'prometheus.yml'}",
                       f"--storage.tsdb.path={prom_dir / 'data'}",
                       f"--web.listen-address={PROMETHEUS}"], "prometheus")

    # Scraped, and BACKUP while the master runs.
    wait_for(lambda: scalar(lab, backup, 'up{job="pyalived"}') == 1, SETTLE,
             interval=0.5, what="Prometheus scraping pyalived")
    wait_for(lambda: scalar(lab, backup, STATE) == 1, SETTLE, interval=0.5,
             what="state 1 (BACKUP) scraped")
    assert lab.holders() == [master]

    lab.stop_daemon(master)
    lab.wait_sole_holder(backup, timeout=SETTLE)
    wait_for(lambda: scalar(lab, backup, STATE) == 2, SETTLE, interval=0.5,
             what="state 2 (MASTER) scraped")

    # The stored series went 1 -> 2 and never anywhere else.
    series = query(lab, backup, f"{STATE}[5m]")
    values = [float(v) for _, v in series[0]["values"]]
    assert values[0] == 1 and values[-1] == 2
    changes = [b for a, b in itertools.pairwise(values) if a != b]
    assert changes == [2]
    assert scalar(lab, backup, 'keepalived_become_master_total{iname="VI_1"}') == 1
    assert scalar(lab, backup, 'keepalived_priority_zero_received_total{iname="VI_1"}') == 1
    wait_for(lambda: scalar(
        lab, backup, 'pyalived_failover_duration_seconds_count{iname="VI_1"}') == 1,
        SETTLE, interval=0.5, what="one failover recorded")
    assert VIP in lab.addresses(backup)
