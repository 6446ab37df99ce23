"""Start-up and interfaces on the real binary: scripts, namespaces, late interfaces, GARPs.

Each test runs ``python -m pyalived`` in a throwaway lab and judges it from
what an operator would see: files the startup and shutdown scripts write,
the addresses of the namespaces, the pid files, the daemon's log and a
capture of the LAN (tcpdump timestamps, the same clock as the scripts'
``date``).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyalived.lab import (
    REPO_ROOT,
    VIP,
    Lab,
    VrrpSpec,
    adverts,
    garps,
    render_config,
    wait_for,
)
from pyalived.pidfile import read_pid

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0  # generous bound for start-up plus Master_Down_Interval
VIP2 = "198.18.0.101"


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def _global(lab: Lab, lines: str) -> str:
    # Under enable_script_security keepalived never runs scripts as root by default.
    return (f"global_defs {{\n    router_id {lab.prefix}\n    enable_script_security\n"
            f"    script_user root\n{lines}}}\n")


def test_startup_and_shutdown_scripts_frame_the_daemon(make_lab: MakeLab) -> None:
    """An operator's scripts set the host up before VRRP starts and tidy it after."""
    lab = make_lab(routers=1)
    (node,) = lab.routers
    log = lab.workdir / "events"
    up = _script(lab.workdir / "up.sh",
                 f'echo "up-begin $(date +%s.%N)" >> {log}\nsleep 1\n'
                 f'echo "up-end $(date +%s.%N)" >> {log}\n')
    down = _script(lab.workdir / "down.sh",
                   f'echo "down $(date +%s.%N) vip=$(ip -o -4 addr show | grep -c {VIP}/)"'
                   f' >> {log}\n')
    conf = _global(lab, f"    startup_script {up}\n    shutdown_script {down}\n"
                   "    shutdown_script_timeout 5\n")
    conf += VrrpSpec(priority=255, state="MASTER").render()
    cap = lab.capture()
    proc = lab.start_daemon(node, conf, "pyalived")
    wait_for(lambda: VIP in lab.addresses(node), SETTLE, what="the VIP")
    first = cap.wait_for(lambda ev: adverts(ev, src=node.ip)[:1], SETTLE)[0]
    assert proc.stop(timeout=SETTLE) == 0
    stop_advert = cap.wait_for(
        lambda ev: [a for a in adverts(ev, src=node.ip) if a.priority == 0], SETTLE,
        what="the priority-0 advert")
    lines = dict(line.split(" ", 1) for line in log.read_text().splitlines())
    up_end = float(lines["up-end"])
    assert float(lines["up-begin"]) <= up_end < first.time  # VRRP waited for the script
    down_time, vip_count = lines["down"].split()
    assert stop_advert and stop_advert[0].time < float(down_time)  # after the children
    assert vip_count == "vip=0"  # the VIP was already released
    text = proc.log_text()
    assert "startup script" in text and "succeeded" in text


def test_a_startup_script_that_hangs_is_killed_at_its_timeout(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1)
    (node,) = lab.routers
    log = lab.workdir / "events"
    hang = _script(lab.workdir / "hang.sh",
                   f'trap \'echo "term $(date +%s.%N)" >> {log}; exit 3\' TERM\n'
                   f'echo "begin $(date +%s.%N)" >> {log}\nsleep 600 &\nwait\n')
    conf = _global(lab, f"    startup_script {hang}\n    startup_script_timeout 2\n")
    conf += VrrpSpec(priority=255, state="MASTER").render()
    cap = lab.capture()
    proc = lab.start_daemon(node, conf, "pyalived")
    wait_for(lambda: VIP in lab.addresses(node), SETTLE, what="the VIP")
    first = cap.wait_for(lambda ev: adverts(ev, src=node.ip)[:1], SETTLE)[0]
    lines = dict(line.split(" ", 1) for line in log.read_text().splitlines())
    begin, term = float(lines["begin"]), float(lines["term"])
    assert term - begin >= 2.0 - 0.05  # killed at the timeout, not before
    assert term <= first.time  # and the daemon went on once it was
    assert "timed out" in proc.log_text()
    assert proc.stop(timeout=SETTLE) == 0


def test_net_namespace_runs_the_daemon_in_the_named_namespace(make_lab: MakeLab) -> None:
    """Started from another namespace, the daemon moves into its own and holds the VIP
    there; its pid files go to /run/pyalived/NAME/, removed when it stops."""
    lab = make_lab(routers=1)
    (node,) = lab.routers
    conf = f"net_namespace {node.ns}\n" + render_config(node.name, [VrrpSpec(priority=90)])
    path = lab.write_config(node, conf)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", ""))
                                        if p)
    # From the bridge's namespace, which has no eth0: the interface check is made in NAME.
    proc = lab.spawn(lab.bridge_ns, [sys.executable, "-m", "pyalived", "-n", "-l", "-D",
                                     "-f", str(path)], "netns-daemon", env=env)
    pid_dir = Path("/run/pyalived") / node.ns
    try:
        wait_for(lambda: VIP in lab.addresses(node), SETTLE, what="the VIP in the namespace")
        pid = read_pid(pid_dir / "pyalived.pid")
        assert pid == proc.pid
        wanted = os.stat(f"/run/netns/{node.ns}").st_ino
        for name in ("pyalived.pid", "vrrp.pid"):
            child = read_pid(pid_dir / name)
            assert child is not None
            assert os.stat(f"/proc/{child}/ns/net").st_ino == wanted
        assert VIP not in lab.ip(lab.bridge_ns, "-o", "-4", "addr", "show")
        assert proc.stop(timeout=SETTLE) == 0
        assert VIP not in lab.addresses(node)
        assert not pid_dir.exists()
    finally:
        proc.stop(timeout=10)


def test_config_test_looks_for_interfaces_in_the_net_namespace(make_lab: MakeLab) -> None:
    """``pyalived -t`` run outside the namespace: eth0 is the namespace's, not ours."""
    lab = make_lab(routers=1)
    (node,) = lab.routers
    # (no track_interface eth0: tracking the instance's own interface is warned, as by
    # keepalived; the instance's interface is looked up in the namespace all the same)
    spec = [VrrpSpec(priority=90)]
    path = lab.write_config(node, f"net_namespace {node.ns}\n" + render_config(node.name, spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", ""))
                                        if p)
    argv = ["ip", "netns", "exec", lab.bridge_ns, sys.executable, "-m", "pyalived", "-t",
            "-f", str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert (done.returncode, done.stderr) == (0, "configuration OK\n")
    # The same file without net_namespace: no eth0 in the bridge's namespace.
    path.write_text(render_config(node.name, spec))
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 5 and "interface eth0 of vrrp_instance VI_1 does not exist" \
        in done.stderr


def test_a_missing_net_namespace_refuses_to_start(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1)
    (node,) = lab.routers
    missing = f"{lab.prefix}none"
    conf = f"net_namespace {missing}\n" + render_config(node.name, [VrrpSpec(priority=90)])
    proc = lab.start_daemon(node, conf, "pyalived")
    assert proc.wait(SETTLE) != 0
    assert f"network namespace {missing} does not exist" in proc.log_text()
    assert not (Path("/run/pyalived") / missing).exists()


def test_a_late_interface_brings_the_instance_up_from_fault(make_lab: MakeLab) -> None:
    """dynamic_interfaces: the daemon starts although late0 does not exist yet; when an
    operator creates it minutes (here: seconds) later the instance leaves FAULT, and
    deleting it puts the instance back in FAULT."""
    lab = make_lab(routers=1)
    (node,) = lab.routers
    late_vip = "198.18.5.100"
    conf = _global(lab, "    dynamic_interfaces\n")
    conf += VrrpSpec(priority=90, interface="late0", vips=(f"{late_vip}/24",)).render()
    conf += VrrpSpec(priority=90, vrid=52, name="VI_2").render()
    proc = lab.start_daemon(node, conf, "pyalived")
    wait_for(lambda: VIP in lab.addresses(node), SETTLE, what="the VIP on eth0")
    assert "(VI_1) interface late0 does not exist" in proc.log_text()
    assert "INIT -> FAULT" in proc.log_text()
    time.sleep(4)  # longer than Master_Down_Interval: still FAULT, not MASTER
    assert late_vip not in lab.addresses(node)
    lab.add_dummy(node, "late0")
    lab.ip(node, "addr", "add", "198.18.5.11/24", "dev", "late0")
    created = time.monotonic()
    wait_for(lambda: late_vip in lab.addresses(node), SETTLE, what="the VIP on late0")
    print(f"late0 created: VIP on it {time.monotonic() - created:.2f} s later")
    text = proc.log_text()
    assert "interface late0 exists now" in text and "FAULT -> BACKUP" in text
    lab.ip(node, "link", "del", "late0")
    wait_for(lambda: "(VI_1) MASTER -> FAULT" in proc.log_text(), SETTLE,
             what="FAULT once late0 is deleted")
    assert VIP in lab.addresses(node)  # the other instance never noticed
    assert proc.stop(timeout=SETTLE) == 0


def test_vrrp_garp_interval_spaces_the_garps_of_all_instances_on_the_wire(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(routers=1)
    (node,) = lab.routers
    conf = _global(lab, "    vrrp_garp_interval 0.2\n    vrrp_garp_master_repeat 3\n"
                   "    vrrp_garp_master_delay 0\n")
    conf += VrrpSpec(priority=90).render()
    conf += VrrpSpec(priority=90, vrid=52, name="VI_2", vips=(f"{VIP2}/24",)).render()
    cap = lab.capture()
    lab.start_daemon(node, conf, "pyalived")
    frames = cap.wait_for(lambda ev: g if len(g := garps(ev)) >= 6 else None, SETTLE,
                          what="six gratuitous ARPs")
    time.sleep(1.0)  # nothing more comes: no second burst
    frames = garps(cap.stop())
    assert len(frames) == 6
    assert sorted(f.kind.ip for f in frames) == [VIP] * 3 + [VIP2] * 3
    gaps = [b.time - a.time for a, b in itertools.pairwise(frames)]
    # Sent no earlier than due; the capture stamps add a millisecond or two of jitter.
    assert min(gaps) >= 0.2 - 0.005, gaps  # both instances share eth0's pace
    print(f"GARP gaps on the wire: {[round(g, 4) for g in gaps]}")


def test_vrrp_startup_delay_keeps_the_owner_silent_until_it_ends(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1)
    (node,) = lab.routers
    conf = _global(lab, "    vrrp_startup_delay 3\n")
    conf += VrrpSpec(priority=255, state="MASTER").render()
    cap = lab.capture()
    proc = lab.start_daemon(node, conf, "pyalived")
    first = cap.wait_for(lambda ev: adverts(ev, src=node.ip)[:1], SETTLE)[0]
    assert first.time - proc.started_at >= 3.0
    print(f"first advert {first.time - proc.started_at:.3f} s after the daemon was started")
    assert proc.stop(timeout=SETTLE) == 0


def test_a_late_interface_joins_a_keepalived_master_as_backup(make_lab: MakeLab) -> None:
    """The late interface is r1's only link to the LAN, where keepalived 2.2.7 is MASTER:
    once it exists r1 hears the master and stays BACKUP (the VIP stays on r2).  Unplugged
    (the link deleted) r1 goes to FAULT; plugged in again (a new link, a new index) it
    hears the master again on new sockets; and it takes over when keepalived stops."""
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    lab.ip(r1, "link", "set", "eth0", "down")  # r1 reaches the LAN only through lan1
    conf = _global(lab, "    dynamic_interfaces\n")
    conf += VrrpSpec(priority=100, interface="lan1").render()
    lab.start_daemon(r2, render_config(r2.name, [VrrpSpec(priority=200)]), "keepalived")
    lab.wait_sole_holder(r2, timeout=SETTLE)
    proc = lab.start_daemon(r1, conf, "pyalived")
    wait_for(lambda: "INIT -> FAULT" in proc.log_text(), SETTLE, what="r1 in FAULT")

    def plug() -> None:  # a new veth leg on the bridge, lan1 inside r1
        lab.ip(lab.bridge_ns, "link", "add", "leg-lan1", "type", "veth", "peer", "name",
               "lan1", "netns", r1.ns)
        lab.ip(lab.bridge_ns, "link", "set", "leg-lan1", "master", "br0", "up")
        lab.ip(r1, "link", "set", "lan1", "up")
        time.sleep(0.5)  # the address comes a little after the link, as with ifup
        lab.ip(r1, "addr", "add", "198.18.0.21/24", "dev", "lan1")

    plug()
    wait_for(lambda: "FAULT -> BACKUP" in proc.log_text(), SETTLE, what="r1 BACKUP")
    time.sleep(5)  # more than Master_Down_Interval: r1 hears keepalived's adverts
    assert "-> MASTER" not in proc.log_text()
    assert lab.holders() == [r2]
    lab.ip(lab.bridge_ns, "link", "del", "leg-lan1")  # unplugged: lan1 goes with it
    wait_for(lambda: "(VI_1) BACKUP -> FAULT" in proc.log_text(), SETTLE, what="FAULT")
    plug()
    wait_for(lambda: proc.log_text().count("FAULT -> BACKUP") == 2, SETTLE,
             what="r1 BACKUP again")
    assert "interface lan1 was created again" in proc.log_text()
    time.sleep(5)
    assert "-> MASTER" not in proc.log_text()  # it hears keepalived on the new link
    assert lab.holders() == [r2]
    lab.stop_daemon(r2)  # keepalived's priority-0 advert hands over at once
    lab.wait_sole_holder(r1, timeout=SETTLE)
    assert "(VI_1) BACKUP -> MASTER" in proc.log_text()
    assert proc.stop(timeout=SETTLE) == 0
