"""One real pyalived daemon in a namespace: start, take the VIP, stop cleanly.

Runs ``python -m pyalived -n -l -D -f CONF -p PID`` (through the lab's
``start_daemon``) in a router namespace of a throwaway lab and judges it from
the namespace's addresses, its pid file and its exit status.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pyalived.lab import VIP, Lab, VrrpSpec, render_config, wait_for
from pyalived.pidfile import read_pid

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0  # generous bound for start-up plus Master_Down_Interval


def test_lone_daemon_becomes_master_and_releases_vip_on_sigterm(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1)
    (node,) = lab.routers
    proc = lab.start_daemon(node, render_config(node.name, [VrrpSpec(priority=90)]), "pyalived")
    pid_path = next(a for a in proc.argv if a.endswith(".pid"))

    wait_for(lambda: VIP in lab.addresses(node), SETTLE, what="the VIP on the lone router")
    assert proc.running()
    assert read_pid(pid_path) == proc.pid
    assert "MASTER" in proc.log_text()

    assert proc.stop(timeout=SETTLE) == 0
    assert VIP not in lab.addresses(node)
    assert read_pid(pid_path) is None
