"""VRRPv3 over IPv4 (RFC 5798): pyalived and keepalived 2.2.7 in one group.

Two routers on a namespace bridge (``pyalived.lab.Lab``) run VRID 51 with
``version 3``, one pyalived and one keepalived, in both role assignments,
multicast (224.0.0.18) and unicast (``unicast_src_ip`` / ``unicast_peer``,
keepalived's default checksum mode).  Each case checks:

* the election: the higher priority holds the VIP, and still does after
  more than a Master_Down_Interval (the backup hears the master's v3
  adverts and accepts them);
* failover: the master is killed (SIGKILL, so no priority-0 advert); the
  backup takes the VIP within its Master_Down_Interval (RFC 5798 §6.1:
  3 * Master_Adver_Interval + Skew_Time, measured from the master's last
  advert, so at most that long after the kill) plus polling slack, and not
  before 3 intervals minus one have passed;
* neither log reports a refused advert (keepalived: "bad", "invalid";
  pyalived: "dropped").

The sub-second case runs advert_int 0.1 (Master_Down_Interval 0.3609 s for
priority 100).  The learned-interval case has a keepalived master at 0.5 s
and a pyalived backup configured with 1 s: the backup adopts 0.5 s (§6.4.2),
so it takes over within 1.80 s of the kill, sooner than the 2.61 s its own
interval would allow at the earliest.  With PYALIVED_TEST_IMPL=keepalived
both sides run keepalived, which validates the test itself.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from pyalived.lab import KEEPALIVED, VIP, Impl, Lab, Node, VrrpSpec, render_config, wait_for
from pyalived.vrrp.fsm import master_down_interval_v3

pytestmark = [pytest.mark.interop, pytest.mark.netns]

SETTLE = 30.0
SLACK = 0.6  # seconds: polling the VIP with `ip addr` and process scheduling
REFUSED = re.compile(r"\b(bad|invalid|dropped)\b", re.IGNORECASE)
OURS = cast(Impl, os.environ.get("PYALIVED_TEST_IMPL", "pyalived"))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("namespace tests need root")
    for tool in ("ip", KEEPALIVED):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    with Lab(2, workdir=tmp_path / "lab") as built:
        try:
            yield built
        finally:
            for proc in built.procs:
                print(f"----- {proc.name}")
                print("\n".join(proc.log_text().splitlines()[-40:]))


def refused_lines(node: Node) -> list[str]:
    assert node.daemon is not None
    return [line for line in node.daemon.log_text().splitlines() if REFUSED.search(line)]


@dataclass(frozen=True)
class Case:
    master_impl: Impl
    master_int: float = 1.0
    backup_int: float = 1.0
    unicast: bool = False

    @property
    def id(self) -> str:
        mode = "unicast" if self.unicast else "multicast"
        return f"{self.master_impl}-master-{mode}-{self.master_int:g}s-{self.backup_int:g}s"


CASES = [
    Case("pyalived"),
    Case("keepalived"),
    Case("pyalived", unicast=True),
    Case("keepalived", unicast=True),
    Case("pyalived", 0.1, 0.1),
    Case("keepalived", 0.1, 0.1),
    Case("keepalived", 0.5, 1.0),  # the pyalived backup learns 0.5 s
]


def spec(lab: Lab, node: Node, priority: int, advert_int: float, unicast: bool) -> VrrpSpec:
    other = next(r for r in lab.routers if r is not node)
    return VrrpSpec(
        priority=priority,
        advert_int=advert_int,
        unicast_src_ip=node.ip if unicast else None,
        unicast_peers=(other.ip,) if unicast else (),
        extra=("version 3",),
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_v3_group_elects_and_fails_over(lab: Lab, case: Case) -> None:
    backup_impl: Impl = OURS if case.master_impl == "keepalived" else "keepalived"
    master_impl: Impl = OURS if case.master_impl == "pyalived" else "keepalived"
    r1, r2 = lab.routers
    lab.start_daemon(r1, render_config(r1.name, [
        spec(lab, r1, 150, case.master_int, case.unicast)]), master_impl)
    lab.start_daemon(r2, render_config(r2.name, [
        spec(lab, r2, 100, case.backup_int, case.unicast)]), backup_impl)

    lab.wait_sole_holder(r1, timeout=SETTLE)
    # Longer than the backup's Master_Down_Interval: it really accepts the master.
    time.sleep(master_down_interval_v3(round(case.backup_int * 100), 100) + 1.0)
    assert lab.holders() == [r1]

    # The backup's Master_Down_Interval, with the master's interval (§6.4.2).
    learned = round(case.master_int * 100)
    down = master_down_interval_v3(learned, 100)
    killed = lab.crash(r1)
    wait_for(lambda: VIP in lab.addresses(r2), SETTLE, interval=0.005, what="VIP on r2")
    took = time.monotonic() - killed
    assert down - case.master_int - SLACK < took < down + SLACK, (took, down)

    assert refused_lines(r2) == []
    assert refused_lines(r1) == []
