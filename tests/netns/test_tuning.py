"""keepalived's process settings on the real daemon: the VRRP child favoured, then not.

An operator who wants a busy checker child never to delay an advert gives the
VRRP child real-time priority (``vrrp_rt_priority``), locks it in memory
(``vrrp_no_swap``) and pins it to a CPU (``vrrp_cpu_affinity``), and lowers
the checker child (``checker_priority``).  Judged from /proc, thread by
thread: every thread of the VRRP child (the event loop's and the netlink
thread) runs SCHED_RR at that priority on that CPU with its pages locked,
every thread of the checker child at nice 10, while the notify script the
VRRP child starts on becoming MASTER runs at normal priority (keepalived's
SCHED_RESET_ON_FORK).  A reload that drops the settings puts both children
back to normal without restarting them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from pyalived.lab import Lab, Node, VrrpSpec, daemon_argv, render_config, wait_for

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0
SCHED_RESET_ON_FORK = 0x40000000
TUNED = """    vrrp_rt_priority 30
    vrrp_no_swap
    vrrp_cpu_affinity 0
    checker_priority 10
"""


def config(node: Node, tuned: str, script: Path) -> str:
    spec = VrrpSpec(priority=100, state="MASTER", extra=(f"notify_master {script}",))
    text = render_config(node.name, [spec])
    return text.replace("global_defs {\n", "global_defs {\n" + tuned, 1)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def policy(tid: int) -> tuple[int, int]:
    return os.sched_getscheduler(tid) & ~SCHED_RESET_ON_FORK, os.sched_getparam(tid).sched_priority


def locked_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    return 0


def test_vrrp_child_real_time_then_normal_after_a_reload(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1)
    (r1,) = lab.routers
    out = lab.workdir / "notify.out"
    script = lab.workdir / "notify.sh"
    script.write_text(f"#!/bin/sh\nchrt -p $$ > {out}\nps -o ni= -p $$ >> {out}\n")
    script.chmod(0o755)
    conf = lab.write_config(r1, config(r1, TUNED, script))
    base = lab.workdir / "r1"
    vrrp_pid, checker_pid = Path(f"{base}.vrrp.pid"), Path(f"{base}.checkers.pid")
    argv = [*daemon_argv("pyalived", conf, base), "-r", str(vrrp_pid), "-c", str(checker_pid)]
    r1.daemon = lab.spawn(r1, argv, "r1-pyalived")
    vrrp = wait_for(lambda: read_pid(vrrp_pid), SETTLE, what="the VRRP child")
    checker = wait_for(lambda: read_pid(checker_pid), SETTLE, what="the checker child")
    wait_for(lambda: out.exists() and "priority" in out.read_text(), SETTLE,
             what="the notify_master script")
    cpus = set(range(os.cpu_count() or 1))

    vrrp_threads = threads(vrrp)
    assert len(vrrp_threads) > 1  # the event loop and the netlink thread at least
    for tid in vrrp_threads:
        assert policy(tid) == (os.SCHED_RR, 30), tid
        assert os.sched_getaffinity(tid) == {0}, tid
    assert locked_kib(vrrp) > 0
    for tid in threads(checker):
        assert os.getpriority(os.PRIO_PROCESS, tid) == 10, tid
        assert policy(tid) == (os.SCHED_OTHER, 0)
        assert os.sched_getaffinity(tid) == cpus
    assert locked_kib(checker) == 0
    # the notify script: normal scheduling, nice 0
    written = out.read_text()
    assert "SCHED_OTHER" in written and written.split()[-1] == "0", written

    lab.write_config(r1, config(r1, "", script))
    r1.daemon.signal(signal.SIGHUP)
    wait_for(lambda: all(policy(t) == (os.SCHED_OTHER, 0) for t in threads(vrrp)), SETTLE,
             what="the VRRP child back to normal scheduling")
    for tid in threads(vrrp):
        assert os.sched_getaffinity(tid) == cpus
    assert locked_kib(vrrp) == 0
    wait_for(lambda: all(os.getpriority(os.PRIO_PROCESS, t) == 0 for t in threads(checker)),
             SETTLE, what="the checker child back to nice 0")
    assert (read_pid(vrrp_pid), read_pid(checker_pid)) == (vrrp, checker)  # not restarted
    assert r1.daemon.stop(timeout=SETTLE) == 0
    log = r1.daemon.log_text()
    assert "vrrp process: nice 0, real-time priority 30, memory locked, CPUs 0" in log
    assert "checker process: nice 10" in log
    assert "Traceback" not in log and "cannot set" not in log, log
