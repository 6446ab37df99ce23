"""One process per half: the real daemon's children die, hang and come back.

The operator's scenario: a director pair, r1 (pyalived, priority 100, a
virtual server with a TCP_CHECK) master and r2 backing it up.  Processes on
r1 fail the ways processes do -- the checker child is SIGKILLed (the OOM
killer's choice: it is the big one), the VRRP child is SIGKILLed, a child
hangs -- and the pair must behave as if nothing, or as little as possible,
happened: no election because of a checker, never the VIP on both routers,
children back within seconds, pid files naming the right processes, one
metrics endpoint with each series once, and a watchdog that notices a hung
child.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyalived.lab import (
    VIP,
    Lab,
    Node,
    VrrpSpec,
    adverts,
    daemon_argv,
    render_config,
    wait_for,
)
from pyalived.pidfile import read_pid
from pyalived.supervisor import STOP_TIMEOUT

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0
PORT = 9165
RS_PORT = 8080
R1 = VrrpSpec(priority=100, garp_master_delay=0)
R2 = VrrpSpec(priority=90, garp_master_delay=0)
LISTENER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(128)
while True:
    c, _ = s.accept(); c.close()
"""
SCRAPE = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
"""


def director_config(real_server: str) -> str:
    return render_config("r1", [R1]) + f"""
virtual_server 198.18.0.200 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server {real_server} {RS_PORT} {{
        TCP_CHECK {{
            connect_timeout 1
        }}
    }}
}}
"""


class Director:
    """r1's pyalived with all three pid files."""

    def __init__(self, lab: Lab, node: Node, text: str, env: dict[str, str] | None = None,
                 extra: tuple[str, ...] = ()):
        self.lab, self.node = lab, node
        self.conf = lab.write_config(node, text)
        base = lab.workdir / "r1"
        self.pid, self.vrrp_pid, self.checker_pid = (
            Path(f"{base}.pid"), Path(f"{base}.vrrp.pid"), Path(f"{base}.checkers.pid"))
        argv = [*daemon_argv("pyalived", self.conf, base), "--metrics-listen",
                f"{node.ip}:{PORT}", "-r", str(self.vrrp_pid), "-c", str(self.checker_pid),
                *extra]
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        node.daemon = lab.spawn(node, argv, "r1-pyalived", env=full_env)
        self.proc = node.daemon

    def child(self, which: Path) -> int:
        return wait_for(lambda: read_pid(which), SETTLE, what=f"a pid in {which.name}")

    def log(self) -> str:
        return self.proc.log_text()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def scrape(lab: Lab, node: Node) -> str:
    return lab.run(node, sys.executable, "-c", SCRAPE,
                   f"http://{node.ip}:{PORT}/metrics").stdout


def start_pair(make_lab: MakeLab, peer: str = "pyalived", env: dict[str, str] | None = None,
               extra: tuple[str, ...] = ()) -> tuple[Lab, Node, Node, Director]:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    lab.spawn(r2, [sys.executable, "-c", LISTENER, str(RS_PORT)], "real-server")
    director = Director(lab, r1, director_config(r2.ip), env, extra)
    lab.start_daemon(r2, render_config("r2", [R2]), impl=peer)  # type: ignore[arg-type]
    lab.wait_sole_holder(r1, timeout=SETTLE)
    return lab, r1, r2, director


def test_pid_files_name_the_parent_and_each_child(make_lab: MakeLab) -> None:
    lab, r1, _r2, d = start_pair(make_lab)
    parent, vrrp, checkers = read_pid(d.pid), d.child(d.vrrp_pid), d.child(d.checker_pid)
    assert parent == d.proc.pid
    assert len({parent, vrrp, checkers}) == 3
    for pid in (vrrp, checkers):
        assert Path(f"/proc/{pid}/status").read_text().count(f"PPid:\t{parent}\n") == 1
    d.proc.terminate()
    assert d.proc.wait(15) == 0
    assert not d.pid.exists() and not d.vrrp_pid.exists() and not d.checker_pid.exists()
    assert not alive(vrrp) and not alive(checkers)
    assert VIP not in lab.addresses(r1)


def test_a_killed_checker_child_makes_no_election_and_comes_back(make_lab: MakeLab) -> None:
    lab, r1, r2, d = start_pair(make_lab)
    cap = lab.capture()
    wait_for(lambda: "TCP_CHECK" in scrape(lab, r1) and "pyalived_real_server_up{" in
             scrape(lab, r1), SETTLE, what="the checker's series")
    old = d.child(d.checker_pid)
    vrrp = d.child(d.vrrp_pid)
    killed = time.time()
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (p := read_pid(d.checker_pid)) and p != old and alive(p) and p,
                   SETTLE, what="a new checker child")
    assert alive(vrrp) and read_pid(d.vrrp_pid) == vrrp  # the VRRP half never noticed
    time.sleep(4)  # longer than Master_Down_Interval
    events = cap.events()
    ours = adverts(events, src=r1.ip, after=killed)
    assert adverts(events, src=r2.ip, after=killed) == []
    assert {e.priority for e in ours} == {100}
    gaps = [b.time - a.time for a, b in itertools.pairwise(ours)]
    assert gaps and max(gaps) < 1.1, gaps
    assert lab.holders() == [r1]
    assert "MASTER -> " not in d.log()
    assert f"checker child (pid {old}) died (killed by SIGKILL)" in d.log()
    # The new child checks again, and the one endpoint still serves both halves.
    wait_for(lambda: 'pyalived_real_server_up{' in scrape(lab, r1), SETTLE,
             what="the new checker child's series")
    text = scrape(lab, r1)
    assert "keepalived_vrrp_state{" in text
    assert new != old


def test_a_killed_vrrp_child_never_leaves_the_vip_on_two_routers(make_lab: MakeLab) -> None:
    """keepalived backs r1 up: its election must agree with the restarted child's."""
    lab, r1, r2, d = start_pair(make_lab, peer="keepalived")
    old = d.child(d.vrrp_pid)
    os.kill(old, signal.SIGKILL)
    both_in_a_row = 0
    seen_r2 = False
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        holders = lab.holders()
        seen_r2 = seen_r2 or holders == [r2]
        both_in_a_row = both_in_a_row + 1 if len(holders) > 1 else 0
        # A preemption hands over within milliseconds; a dead child's VIP would stay.
        assert both_in_a_row < 2, "the VIP stayed on both routers"
        time.sleep(0.05)
    new = read_pid(d.vrrp_pid)
    assert new is not None and new != old and alive(new)
    lab.wait_sole_holder(r1, timeout=SETTLE)  # priority 100 takes it back
    assert f"VRRP child (pid {old}) died (killed by SIGKILL)" in d.log()
    assert seen_r2 or lab.holders() == [r1]


def test_one_endpoint_serves_each_family_once(make_lab: MakeLab) -> None:
    lab, r1, _r2, _d = start_pair(make_lab)
    wait_for(lambda: "pyalived_real_server_up{" in scrape(lab, r1), SETTLE,
             what="the checker's series")
    text = scrape(lab, r1)
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)
    for family in ("keepalived_up", "pyalived_reload_success", "keepalived_vrrp_state",
                   "pyalived_failover_duration_seconds", "pyalived_real_server_up",
                   "pyalived_checker_probe_seconds", "pyalived_metrics_http_connections"):
        assert family in types, family


def test_the_watchdog_notices_a_hung_child(make_lab: MakeLab, tmp_path: Path) -> None:
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    manager.bind(str(path))
    manager.settimeout(0.2)
    try:
        _lab, _r1, _r2, d = start_pair(
            make_lab, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})

        def messages(seconds: float) -> list[str]:
            out: list[str] = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    out.append(manager.recv(4096).decode())
                except TimeoutError:
                    pass
            return out

        first = messages(3)
        assert any("READY=1" in m for m in first)
        assert sum("WATCHDOG=1" in m for m in messages(2)) >= 2
        vrrp = d.child(d.vrrp_pid)
        os.kill(vrrp, signal.SIGSTOP)
        try:
            messages(2.5)  # the last pings from before the hang
            hung = messages(3)
            assert not any("WATCHDOG=1" in m for m in hung), hung
            assert "watchdog: VRRP child" in d.log()
        finally:
            os.kill(vrrp, signal.SIGCONT)
        assert sum("WATCHDOG=1" in m for m in messages(3)) >= 2
    finally:
        manager.close()


def test_a_hung_vrrp_child_cannot_keep_the_daemon_up_nor_its_vip(make_lab: MakeLab) -> None:
    lab, r1, r2, d = start_pair(make_lab)
    vrrp, checkers = d.child(d.vrrp_pid), d.child(d.checker_pid)
    os.kill(vrrp, signal.SIGSTOP)  # hung: it will never answer SIGTERM
    d.proc.terminate()
    assert d.proc.wait(STOP_TIMEOUT + 10) == 0
    assert not alive(vrrp) and not alive(checkers)
    assert VIP not in lab.addresses(r1)  # the parent removed what the child could not
    assert f"VRRP child (pid {vrrp}) did not stop within" in d.log()
    lab.wait_sole_holder(r2, timeout=SETTLE)


def test_without_respawn_a_dead_vrrp_child_stops_the_daemon_and_its_vip(
    make_lab: MakeLab,
) -> None:
    lab, r1, r2, d = start_pair(make_lab, extra=("-R",))
    vrrp, checkers = d.child(d.vrrp_pid), d.child(d.checker_pid)
    os.kill(vrrp, signal.SIGKILL)
    assert d.proc.wait(SETTLE) == 1
    assert not alive(checkers)
    assert VIP not in lab.addresses(r1)
    assert "not respawning it (-R)" in d.log()
    lab.wait_sole_holder(r2, timeout=SETTLE)


def big_director_config(real_server: str, count: int, delay_loop: int = 10) -> str:
    """r1's config plus ``count`` real servers that cannot be reached (checked DOWN at once)."""
    servers = "".join(
        f"    real_server 198.19.{n // 250}.{n % 250 + 1} 8080 {{\n"
        "        TCP_CHECK {\n            connect_timeout 1\n        }\n    }\n"
        for n in range(count))
    return director_config(real_server) + (
        f"virtual_server 198.18.0.201 80 {{\n    delay_loop {delay_loop}\n    lb_algo rr\n"
        "    lb_kind NAT\n    protocol TCP\n" + servers + "}\n")


def test_a_reload_is_reported_applied_only_once_both_children_applied_it(
    make_lab: MakeLab,
) -> None:
    """The checker child takes seconds over a big config; the report must wait for it."""
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    lab.spawn(r2, [sys.executable, "-c", LISTENER, str(RS_PORT)], "real-server")
    d = Director(lab, r1, big_director_config(r2.ip, 12_000))
    lab.start_daemon(r2, render_config("r2", [R2]))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    wait_for(lambda: "all children ready" in d.log(), SETTLE, what="both children ready")
    for delay_loop in (11, 12, 13):  # three edits, one after the other, as an operator might
        d.lab.write_config(r1, big_director_config(r2.ip, 12_000, delay_loop))
        start = len(d.log())
        d.proc.signal(signal.SIGHUP)
        wait_for(lambda start=start: "reload: applied by every child" in d.log()[start:], 120,
                 what="the reload's report")
        lines = d.log()[start:].splitlines()
        applied = next(i for i, line in enumerate(lines) if "applied by every child" in line)
        done = [line for line in lines[:applied] if "reload: " in line]
        assert any("reload: VRRP instances" in line for line in done), lines[:applied]
        assert any("reload: real server" in line for line in done), lines[:applied]
    assert lab.holders() == [r1]


def test_an_unchanged_reload_applies_nothing_and_an_edited_include_is_applied(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    lab.spawn(r2, [sys.executable, "-c", LISTENER, str(RS_PORT)], "real-server")
    extra = lab.workdir / "extra.conf"
    extra.write_text("# the second address comes later\n")
    text = director_config(r2.ip).replace(
        "virtual_ipaddress {\n", "virtual_ipaddress {\n        include extra.conf\n", 1)
    d = Director(lab, r1, text)
    lab.start_daemon(r2, render_config("r2", [R2]))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    wait_for(lambda: "all children ready" in d.log(), SETTLE, what="both children ready")

    def sighup() -> str:
        start = len(d.log())
        d.proc.signal(signal.SIGHUP)
        done = ("nothing to apply", "applied by every child", "reload refused")
        wait_for(lambda: any(n in d.log()[start:] for n in done), SETTLE, what="a verdict")
        return d.log()[start:]

    extra.write_text(extra.read_text())  # rewritten by a tool, same text
    assert "unchanged: nothing to apply" in sighup()
    extra.write_text("198.18.0.101/24\n")
    log = sighup()
    assert "applied by every child" in log
    wait_for(lambda: "198.18.0.101" in lab.addresses(r1), SETTLE, what="the included VIP")


UNREACHABLE = "198.18.0.250"  # the real server of director_config: nobody answers there
SECOND_VIP = "198.18.0.101"


def with_second_vip(text: str) -> str:
    return text.replace("virtual_ipaddress {\n", f"virtual_ipaddress {{\n        {SECOND_VIP}/24\n",
                        1)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def readers(parent: int) -> list[int]:
    """The configuration reader processes ``parent`` is running."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"pyalived.config.reader" in argv:
                found.append(int(pid))
    return found


def sighup_until(d: Director, *needles: str) -> str:
    start = len(d.log())
    d.proc.signal(signal.SIGHUP)
    wait_for(lambda: any(n in d.log()[start:] for n in needles), 120, what=f"one of {needles}")
    return d.log()[start:]


def test_edits_of_a_big_file_reach_both_children_and_leave_the_parent_as_small(
    make_lab: MakeLab,
) -> None:
    """The parent never parses: three applied edits of 5,000 real servers cost it nothing."""
    lab = make_lab(routers=1)
    (r1,) = lab.routers
    d = Director(lab, r1, big_director_config(UNREACHABLE, 5_000))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    wait_for(lambda: "all children ready" in d.log(), SETTLE, what="both children ready")
    vrrp, checkers = d.child(d.vrrp_pid), d.child(d.checker_pid)
    assert not readers(d.proc.pid)  # start-up's reader is gone
    before = rss_kib(d.proc.pid)
    for delay_loop in (11, 12, 13):
        text = big_director_config(UNREACHABLE, 5_000, delay_loop)
        lab.write_config(r1, with_second_vip(text) if delay_loop == 13 else text)
        log = sighup_until(d, "reload: applied by every child", "reload refused")
        assert "reload: applied by every child" in log, log
        assert "reload: VRRP instances" in log and "reload: real server" in log, log
    wait_for(lambda: SECOND_VIP in lab.addresses(r1), SETTLE, what="the added VIP")
    grown = rss_kib(d.proc.pid) - before
    assert grown < 4096, f"the parent grew by {grown} KiB over three reloads"
    assert (read_pid(d.vrrp_pid), read_pid(d.checker_pid)) == (vrrp, checkers)
    assert alive(vrrp) and alive(checkers)
    assert not readers(d.proc.pid)
    assert "Traceback" not in d.log()


def test_a_reader_killed_mid_read_keeps_the_running_configuration(make_lab: MakeLab) -> None:
    """The OOM killer picks the reader of an edit: nothing changes, the next SIGHUP applies."""
    lab = make_lab(routers=1)
    (r1,) = lab.routers
    d = Director(lab, r1, big_director_config(UNREACHABLE, 12_000))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    wait_for(lambda: "all children ready" in d.log(), SETTLE, what="both children ready")
    vrrp, checkers = d.child(d.vrrp_pid), d.child(d.checker_pid)
    lab.write_config(r1, with_second_vip(big_director_config(UNREACHABLE, 12_000, 11)))
    start = len(d.log())
    d.proc.signal(signal.SIGHUP)
    reader = wait_for(lambda: readers(d.proc.pid), 10, interval=0.001, what="the reader")[0]
    os.kill(reader, signal.SIGKILL)
    wait_for(lambda: "reload refused: keeping" in d.log()[start:], SETTLE, what="the refusal")
    log = d.log()[start:]
    assert "reload refused: the configuration reader failed (killed by SIGKILL)" in log, log
    assert "Traceback" not in log and "applied by every child" not in log
    time.sleep(2)  # a child that got the edit would have added the VIP by now
    assert SECOND_VIP not in lab.addresses(r1)
    assert (read_pid(d.vrrp_pid), read_pid(d.checker_pid)) == (vrrp, checkers)
    assert alive(vrrp) and alive(checkers) and not alive(reader)
    assert lab.holders() == [r1]
    # The same edit, read again without interference, is applied by both children.
    log = sighup_until(d, "reload: applied by every child", "reload refused")
    assert "reload: applied by every child" in log, log
    assert "reload: real server" in log, log
    wait_for(lambda: SECOND_VIP in lab.addresses(r1), SETTLE, what="the added VIP")
