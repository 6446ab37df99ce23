"""lvs_sync_daemon on a kernel without IPVS: logged and retried, VRRP untouched.

The host kernel here has no IPVS (the sync daemon itself is tested in the IPVS
VM, ``tests/kernel/test_lvs_sync.py``).  That is a real situation too: a
director whose ``ip_vs`` module is missing or blacklisted.  Two pyalived
routers configured with ``lvs_sync_daemon`` must still elect, fail over and
stop as usual, each logging the failing netlink call and retrying it with a
growing delay, never giving up and never exiting.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from pyalived.lab import VIP, Lab, VrrpSpec, wait_for

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 60.0  # start-up plus Master_Down_Interval, generous (a hang guard)


def config(router_id: str) -> str:
    return (f"global_defs {{\n    router_id {router_id}\n"
            "    lvs_sync_daemon eth0 VI_1 id 7\n}\n\n"
            + VrrpSpec(priority=150 if router_id == "r1" else 100).render())


def retries(text: str) -> list[str]:
    return re.findall(r"IPVS sync daemon: .*; retrying in (\S+) s", text)


def test_no_ipvs_is_retried_while_vrrp_fails_over(make_lab: MakeLab) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    p1 = lab.start_daemon(r1, config("r1"))
    p2 = lab.start_daemon(r2, config("r2"))
    wait_for(lambda: VIP in lab.addresses(r1) and VIP not in lab.addresses(r2), SETTLE,
             what="r1 master")
    # The backup, which wants a backup daemon since its start, has retried by now.
    wait_for(lambda: retries(p2.log_text())[:2] == ["1", "2"], SETTLE,
             what="r2 retrying the sync daemon 1 s, then 2 s later")
    assert "no IPVS support" in p2.log_text()

    lab.cut(r1)  # the master fails: the backup takes over as usual
    wait_for(lambda: VIP in lab.addresses(r2), SETTLE, what="r2 taking the VIP")
    assert "MASTER" in p2.log_text()
    assert p1.running() and p2.running()

    assert p2.stop(timeout=SETTLE) == 0
    assert p1.stop(timeout=SETTLE) == 0
    assert retries(p1.log_text())  # r1 retried as well, as master
