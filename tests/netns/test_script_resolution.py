"""Scripts that cannot run at load are left out of the running daemon, until a reload.

The operator's scenarios, each run on the real daemon in a namespace (and, with
PYALIVED_TEST_IMPL=keepalived, on keepalived 2.2.7, which behaves the same):

* a track script named in the configuration is not installed yet: the
  instance ignores it and takes the VIP; installing the script later changes
  nothing until the operator reloads, and then the script decides (it says
  "drained": the instance goes to FAULT; it says "fine" again: the VIP
  returns, with no reload);
* under ``enable_script_security`` a deploy left the track script writable by
  everyone: it is never run (a marker it would write never appears, and its
  failure does not take the VIP away); once the operator fixes the mode and
  reloads, it runs.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyalived.lab import VIP, Impl, Lab, VrrpSpec, wait_for

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0  # generous bound for start-up plus Master_Down_Interval
TRACKED = VrrpSpec(priority=100, garp_master_delay=0,
                   extra=("track_script {", "    chk", "}"))


def _config(lab: Lab, script: Path, global_lines: str = "") -> str:
    return (f"global_defs {{\n    router_id {lab.prefix}\n{global_lines}}}\n"
            f"vrrp_script chk {{\n    script \"{script} --drain-check\"\n"
            "    interval 1\n    fall 1\n    rise 1\n}\n" + TRACKED.render())


def _install(path: Path, body: str, mode: int = 0o755) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)


def test_a_track_script_installed_later_counts_from_the_next_reload(
    make_lab: MakeLab, impl: Impl
) -> None:
    lab = make_lab(routers=1)
    (node,) = lab.routers
    check = lab.workdir / "drain-check.sh"
    proc = lab.start_daemon(node, _config(lab, check), impl)
    wait_for(lambda: VIP in lab.addresses(node), SETTLE, what="the VIP despite no script")
    if impl == "pyalived":
        assert "vrrp_script chk" in proc.log_text() and "disabled" in proc.log_text()
    # Minutes later in real life: the script arrives, and says the node is drained.
    _install(check, "exit 1\n")
    time.sleep(3.5)  # three intervals: a tracked script would have failed by now
    assert VIP in lab.addresses(node)
    proc.signal(signal.SIGHUP)
    wait_for(lambda: VIP not in lab.addresses(node), SETTLE, what="FAULT after the reload")
    _install(check, "exit 0\n")  # undrained: no reload needed any more
    wait_for(lambda: VIP in lab.addresses(node), SETTLE, what="the VIP back")
    assert proc.stop(timeout=SETTLE) == 0


def test_a_script_others_can_write_never_runs_under_script_security(
    make_lab: MakeLab, impl: Impl
) -> None:
    lab = make_lab(routers=1)
    (node,) = lab.routers
    lab.workdir.chmod(0o755)
    marker = lab.workdir / "ran"
    check = lab.workdir / "drain-check.sh"
    _install(check, f"touch {marker}\nexit 1\n", 0o757)
    secure = "    enable_script_security\n    script_user root\n"
    proc = lab.start_daemon(node, _config(lab, check, secure), impl)
    wait_for(lambda: VIP in lab.addresses(node), SETTLE, what="the VIP")
    time.sleep(3.5)  # three intervals
    assert not marker.exists()  # never run, not even once
    assert VIP in lab.addresses(node)
    if impl == "pyalived":
        assert "writable by others" in proc.log_text()
    check.chmod(0o755)
    proc.signal(signal.SIGHUP)
    wait_for(lambda: VIP not in lab.addresses(node), SETTLE, what="FAULT after the reload")
    assert marker.exists()
    assert proc.stop(timeout=SETTLE) == 0
