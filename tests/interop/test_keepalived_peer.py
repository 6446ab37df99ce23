"""pyalived and keepalived 2.2.7 as peers in one VRRP group.

Two routers on a namespace bridge share VRID 51 with PASS authentication;
one runs the Debian keepalived binary, the other pyalived, in both role
assignments.  Each must accept the other's adverts: the election comes out
by priority, neither log has a line about a bad or invalid packet, the backup
takes over when the master is cut off the LAN (it heard the master until
then), and the master preempts back when it returns (it hears the backup's
lower-priority adverts and answers them).  With PYALIVED_TEST_IMPL=keepalived
both sides run keepalived, which validates the test itself.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from pyalived.lab import (
    KEEPALIVED,
    AdvertKind,
    Impl,
    Lab,
    Node,
    VrrpSpec,
    adverts,
    render_config,
)

pytestmark = [pytest.mark.interop, pytest.mark.netns]

SETTLE = 30.0
PASSWORD = "interop1"
BAD_LINE = re.compile(r"\b(bad|invalid)\b", re.IGNORECASE)
OURS = cast(Impl, os.environ.get("PYALIVED_TEST_IMPL", "pyalived"))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("namespace tests need root")
    for tool in ("ip", "tcpdump", KEEPALIVED):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    with Lab(2, workdir=tmp_path / "lab") as built:
        try:
            yield built
        finally:
            for proc in built.procs:
                print(f"----- {proc.name}")
                print("\n".join(proc.log_text().splitlines()[-40:]))


def bad_lines(node: Node) -> list[str]:
    assert node.daemon is not None
    return [line for line in node.daemon.log_text().splitlines() if BAD_LINE.search(line)]


@pytest.mark.parametrize("master_impl", ["keepalived", "pyalived"])
def test_mixed_group_elects_fails_over_and_preempts_back(lab: Lab, master_impl: str) -> None:
    impls: tuple[Impl, Impl] = (
        ("keepalived", OURS) if master_impl == "keepalived" else (OURS, "keepalived"))
    r1, r2 = lab.routers
    cap = lab.capture()
    for node, prio, impl in ((r1, 100, impls[0]), (r2, 90, impls[1])):
        spec = VrrpSpec(priority=prio, auth_type="PASS", auth_pass=PASSWORD)
        lab.start_daemon(node, render_config(node.name, [spec]), impl)

    lab.wait_sole_holder(r1, timeout=SETTLE)
    started = time.time()
    time.sleep(4.0)  # more than a Master_Down_Interval: the backup really hears the master
    assert lab.holders() == [r1]
    assert {e.src for e in adverts(cap.events(), after=started)} == {r1.ip}
    assert all(isinstance(e.kind, AdvertKind) and e.kind.auth_type == 1
               for e in adverts(cap.events()))

    lab.cut(r1)
    cut_at = time.time()
    lab.wait_sole_holder(r2, timeout=SETTLE)
    cap.wait_for(lambda ev: adverts(ev, src=r2.ip, after=cut_at), SETTLE, what="r2 adverts")

    lab.reconnect(r1)
    lab.wait_sole_holder(r1, timeout=SETTLE)
    back = time.time()
    time.sleep(2.5)
    assert {e.src for e in adverts(cap.events(), after=back) if e.priority} == {r1.ip}
    assert lab.holders() == [r1]

    assert bad_lines(r1) == []
    assert bad_lines(r2) == []
