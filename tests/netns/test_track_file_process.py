"""track_file and vrrp_track_process on the real daemon, next to a keepalived peer.

r1 runs pyalived, r2 keepalived 2.2.7 (priority 90).  With
PYALIVED_TEST_IMPL=keepalived the track_file test runs keepalived as r1 too,
which checks that it expects what keepalived does.  The process tests always
run pyalived as r1: keepalived 2.2.7 started inside a network namespace
cannot subscribe to the kernel's process events ("Failed to set/clear process
event listen - errno 111") and then never counts a process.  The tests act as an
operator or a crashing service would, well after the election has settled:

* an operator drains r1 by writing a number into its track file with the
  shell; keepalived takes over, and the operator restores r1 by replacing
  the file with a rename, then drains it again by deleting a file that a
  weight-0 track_file watches in reverse (a missing file reads as 0);
* the service r1 tracks (a process with a name unique to the test run)
  crashes (SIGKILL); keepalived takes over; the service is started again and
  r1 takes the VIP back.

Everything is judged from the bridge capture (the priority r1 advertises,
who advertises) and from which namespace holds the VIP.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyalived.lab import (
    KEEPALIVED,
    Capture,
    Impl,
    Lab,
    Node,
    VrrpSpec,
    adverts,
    daemon_argv,
    render_config,
    wait_for,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which(KEEPALIVED) is None, reason="keepalived is not installed"),
]

MakeLab = Callable[..., Lab]
SETTLE = 30.0


def advert_with_priority(cap: Capture, node: Node, priority: int, after: float) -> float:
    """When ``node`` first advertised ``priority`` after ``after`` (capture time)."""
    return cap.wait_for(
        lambda ev: [e.time for e in adverts(ev, src=node.ip, after=after)
                    if e.priority == priority],
        SETTLE, what=f"an advert from {node} with priority {priority}")[0]


def start_pair(lab: Lab, impl: Impl, r1_extra: tuple[str, ...], head: str,
               priority: int = 100) -> tuple[Node, Node]:
    r1, r2 = lab.routers
    lab.start_daemon(r2, render_config("r2", [VrrpSpec(priority=90)]), "keepalived")
    config = head + render_config("r1", [VrrpSpec(priority=priority, extra=r1_extra)])
    lab.start_daemon(r1, config, impl)
    return r1, r2


def test_track_file_drains_and_restores_master(make_lab: MakeLab, impl: Impl,
                                               tmp_path: Path) -> None:
    lab = make_lab(routers=2)
    cap = lab.capture()
    drain = tmp_path / "state" / "drain"
    maint = tmp_path / "state" / "maintenance-off"
    drain.parent.mkdir()
    maint.write_text("1\n")  # present: r1 is in service
    head = (
        f'track_file drain {{\n    file "{drain}"\n    weight -15\n    init_file 0\n}}\n'
        f'track_file maint {{\n    file "{maint}"\n    weight 0 reverse\n}}\n'
    )
    r1, r2 = start_pair(lab, impl, ("track_file {", "    drain", "    maint", "}"), head)
    lab.wait_sole_holder(r1, timeout=SETTLE)
    assert drain.read_text().strip() == "0"  # init_file created it
    time.sleep(3)  # the operator comes later

    # Drain: 100 + 2 * -15 = 70 < 90.  The shell truncates, then writes.
    written = time.time()
    subprocess.run(["sh", "-c", f"echo 2 > '{drain}'"], check=True)
    seen = advert_with_priority(cap, r1, 70, written)
    lab.wait_sole_holder(r2, timeout=SETTLE)
    # r1 never advertised 0 or 100 between the write and its drained advert: no
    # transient read of the truncated (empty) file counted as a value.
    between = [e.priority for e in adverts(cap.events(), src=r1.ip, after=written)
               if e.time <= seen]
    assert set(between) == {70}, between

    # Restore by replacing the file (write a temporary file, rename it over).
    time.sleep(2)
    tmp = drain.with_name("drain.tmp")
    tmp.write_text("0\n")
    restored = time.time()
    os.rename(tmp, drain)
    advert_with_priority(cap, r1, 100, restored)
    lab.wait_sole_holder(r1, timeout=SETTLE)

    # Maintenance: deleting the file a weight-0 reverse track_file watches means a
    # zero value: FAULT, so r1 steps down with a priority-0 advert.
    time.sleep(2)
    removed = time.time()
    maint.unlink()
    advert_with_priority(cap, r1, 0, removed)
    lab.wait_sole_holder(r2, timeout=SETTLE)
    time.sleep(3)
    assert not adverts(cap.events(), src=r1.ip, after=time.time() - 2.5)  # FAULT: silent
    maint.write_text("1\n")
    back = time.time()
    lab.wait_sole_holder(r1, timeout=SETTLE)
    advert_with_priority(cap, r1, 100, back)
    assert r1.daemon is not None and r1.daemon.running()


def _service(tmp_path: Path) -> tuple[Path, str]:
    """A copy of sleep under a name unique to this run (processes are host-wide)."""
    name = f"pyatrk{secrets.token_hex(4)}"  # 14 characters: within comm's 15
    path = tmp_path / name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", path)
    return path, name


def test_track_process_crash_and_restart(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab(routers=2)
    cap = lab.capture()
    binary, name = _service(tmp_path)
    service = subprocess.Popen([str(binary), "3600"])
    try:
        head = (f"vrrp_track_process svc {{\n    process {name}\n    weight 20\n}}\n")
        r1, r2 = start_pair(lab, "pyalived", ("track_process {", "    svc", "}"), head,
                            priority=80)
        lab.wait_sole_holder(r1, timeout=SETTLE)  # 80 + 20 = 100 > 90
        since = time.time()
        advert_with_priority(cap, r1, 100, since)
        time.sleep(3)

        # The service crashes.
        killed = time.time()
        service.send_signal(signal.SIGKILL)
        service.wait()
        advert_with_priority(cap, r1, 80, killed)
        lab.wait_sole_holder(r2, timeout=SETTLE)

        # It is started again (in r1's namespace, as a supervisor there would).
        time.sleep(3)
        restarted = time.time()
        service = subprocess.Popen(["ip", "netns", "exec", r1.ns, str(binary), "3600"])
        advert_with_priority(cap, r1, 100, restarted)
        lab.wait_sole_holder(r1, timeout=SETTLE)
        assert r1.daemon is not None and r1.daemon.running()
    finally:
        service.kill()
        service.wait()


def test_track_process_quorum_with_parameters(make_lab: MakeLab, tmp_path: Path) -> None:
    """Two workers needed (quorum 2), matched on their parameters; one dying is a FAULT."""
    lab = make_lab(routers=2)
    cap = lab.capture()
    binary, _name = _service(tmp_path)
    # sleep adds its arguments up: "7 3600" sleeps 3607 s.
    workers = [subprocess.Popen([str(binary), "7", f"{3600 + i}"]) for i in range(2)]
    decoy = subprocess.Popen([str(binary), "8", "3600"])  # other parameters
    try:
        head = (f"vrrp_track_process workers {{\n    process {binary} 7 36\n"
                "    param_match initial\n    full_command\n    quorum 2\n    weight 0\n}\n")
        r1, r2 = start_pair(lab, "pyalived", ("track_process {", "    workers", "}"), head)
        lab.wait_sole_holder(r1, timeout=SETTLE)
        time.sleep(3)
        killed = time.time()
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        advert_with_priority(cap, r1, 0, killed)  # FAULT: it steps down
        lab.wait_sole_holder(r2, timeout=SETTLE)
        workers[0] = subprocess.Popen([str(binary), "7", "36000"])
        back = time.time()
        lab.wait_sole_holder(r1, timeout=SETTLE)
        advert_with_priority(cap, r1, 100, back)
    finally:
        for p in [*workers, decoy]:
            p.kill()
            p.wait()


def test_reload_adds_and_removes_tracking_without_disturbing_the_master(
        make_lab: MakeLab, tmp_path: Path) -> None:
    """SIGHUP adds a track_file and a track_process to a running master: nothing moves
    (no priority-0 advert, no GARP, the backup stays silent); the file then drains it;
    a second reload drops the file and r1 takes the VIP back."""
    lab = make_lab(routers=2)
    cap = lab.capture()
    binary, name = _service(tmp_path)
    service = subprocess.Popen([str(binary), "3600"])
    try:
        r1, r2 = start_pair(lab, "pyalived", (), "")
        lab.wait_sole_holder(r1, timeout=SETTLE)
        time.sleep(6)  # past both start-up GARP bursts
        drain = tmp_path / "drain"
        drain.write_text("0\n")
        defs = (f'track_file drain {{\n    file "{drain}"\n    weight -15\n}}\n'
                f"vrrp_track_process svc {{\n    process {name}\n    weight 0\n}}\n")
        tracked = ("track_file {", "    drain", "}", "track_process {", "    svc", "}")
        assert r1.daemon is not None
        lab.write_config(r1, defs + render_config("r1", [VrrpSpec(priority=100,
                                                                   extra=tracked)]))
        since = time.time()
        r1.daemon.signal(signal.SIGHUP)
        wait_log_line(r1, "reload: VRRP instances: 0 kept, 1 updated")
        time.sleep(3)
        events = cap.events()
        assert {e.priority for e in adverts(events, src=r1.ip, after=since)} == {100}
        assert not adverts(events, src=r2.ip, after=since)
        assert not [e for e in events if e.time > since and e.is_garp]
        assert lab.holders() == [r1]

        written = time.time()
        drain.write_text("1\n")  # 100 - 15 = 85 < 90
        advert_with_priority(cap, r1, 85, written)
        lab.wait_sole_holder(r2, timeout=SETTLE)

        # The second reload drops the file; the process stays tracked and running.
        lab.write_config(r1, defs + render_config("r1", [VrrpSpec(
            priority=100, extra=("track_process {", "    svc", "}"))]))
        again = time.time()
        r1.daemon.signal(signal.SIGHUP)
        advert_with_priority(cap, r1, 100, again)
        lab.wait_sole_holder(r1, timeout=SETTLE)
        # The process, weight 0, still counts after the reload: it exits, r1 FAULTs.
        time.sleep(2)
        killed = time.time()
        service.kill()
        service.wait()
        advert_with_priority(cap, r1, 0, killed)
        lab.wait_sole_holder(r2, timeout=SETTLE)
    finally:
        service.kill()
        service.wait()


def wait_log_line(node: Node, needle: str) -> None:
    daemon = node.daemon
    assert daemon is not None
    wait_for(lambda: needle in daemon.log_text(), SETTLE, what=f"{needle!r} in the log")


def test_track_process_without_the_connector_scans_proc(make_lab: MakeLab,
                                                        tmp_path: Path) -> None:
    """pyalived without CAP_SYS_ADMIN, in a network namespace, cannot reach the
    process-events connector: it says so and scans /proc instead, and a crashed
    service still fails the master over."""
    lab = make_lab(routers=2)
    cap = lab.capture()
    binary, name = _service(tmp_path)
    service = subprocess.Popen([str(binary), "3600"])
    try:
        r1, r2 = lab.routers
        lab.start_daemon(r2, render_config("r2", [VrrpSpec(priority=90)]), "keepalived")
        head = f"vrrp_track_process svc {{\n    process {name}\n    weight 20\n}}\n"
        conf = lab.write_config(r1, head + render_config(
            "r1", [VrrpSpec(priority=80, extra=("track_process {", "    svc", "}"))]))
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]),
                   PYTHONUNBUFFERED="1")
        argv = ["capsh", "--drop=cap_sys_admin", "--", "-c", 'exec "$0" "$@"',
                *daemon_argv("pyalived", conf, lab.workdir / "r1-nocap")]
        r1.daemon = lab.spawn(r1, argv, "r1-nocap", env=env)
        lab.wait_sole_holder(r1, timeout=SETTLE)
        wait_log_line(r1, "scanning /proc every 0.5s")
        time.sleep(2)
        killed = time.time()
        service.kill()
        service.wait()
        advert_with_priority(cap, r1, 80, killed)
        lab.wait_sole_holder(r2, timeout=SETTLE)
        restarted = time.time()
        service = subprocess.Popen([str(binary), "3600"])
        advert_with_priority(cap, r1, 100, restarted)
        lab.wait_sole_holder(r1, timeout=SETTLE)
    finally:
        service.kill()
        service.wait()
