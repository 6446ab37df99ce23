"""An attack on the metrics port leaves health checks, failover and scrapes working.

The operator's scenario: a director runs the real pyalived binary with the
metrics port open on its LAN address, a TCP_CHECK on one real server and a
VRRP peer (another pyalived, the current master).  An attacker on the LAN
opens 200 "slowloris" connections (a request head that never ends, one byte
a second) and 2,000 idle ones, and holds them all.  While it does:

* the real server stays UP: no DOWN in the log, ``pyalived_real_server_up``
  is 1 and TCP_CHECK probes keep running (their count in
  ``pyalived_checker_probe_seconds`` goes on growing).  This kernel has no
  IPVS, so the checkers' view is read from the metrics and the log, as in
  the other namespace tests;
* a scrape retried once the request-head deadline has passed succeeds;
* the master is stopped and the director takes over: the VIP is configured
  and both gratuitous ARP bursts (at the takeover and ``garp_master_delay``
  later) are seen on the bridge, from the director's MAC;
* the log holds no traceback and no storm of EMFILE lines.

``test_flood_within_a_hard_limit_of_1024`` runs the daemon under ``prlimit
--nofile=1024:1024``: raising the soft limit cannot help, so the bound on
metrics connections is what is tested.  ``test_flood_under_service_manager_limits``
gives it what a service manager gives by default, a soft limit of 1024
under a higher hard one, plus 1,500 TCP_CHECKs of a black-holed real server
(their connects hang until ``connect_timeout``), so that the checkers alone
need more than 1,024 descriptors at once: the daemon must have raised its
soft limit (``/proc/PID/limits``), hold more than 1,024 descriptors, and
never fail a probe for want of one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyalived.lab import (
    REPO_ROOT,
    VIP,
    Event,
    Lab,
    Node,
    VrrpSpec,
    garps,
    render_config,
    wait_for,
)
from pyalived.metrics import CONNECTION_TIMEOUT, REQUEST_HEAD_TIMEOUT

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
PORT = 9165
RS_PORT = 8080
GARP_DELAY = 2.0  # garp_master_delay of the director
SETTLE = 30.0
IDLE, SLOW = 2000, 200
BLACKHOLE = "198.18.0.250"  # no host has it: the director's SYNs to it go nowhere
BLACKHOLE_PORTS = 1500

REAL_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1024)
while True:
    c, _ = s.accept()
    c.close()
"""

ATTACKER = """
import resource, select, socket, sys, time
host, port, n_idle, n_slow, status = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
need = n_idle + n_slow + 100
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, soft), max(need, hard)))

def open_many(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, port))
        socks.append(s)
    poller = select.poll()
    pending = {s.fileno(): s for s in socks}
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    established = 0
    deadline = time.monotonic() + 20
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            s = pending.pop(fd)
            poller.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                established += 1
    return socks, established

slow, slow_ok = open_many(n_slow)
for s in slow:
    try:
        s.send(b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nX-Slow: ")
    except OSError:
        pass
idle, idle_ok = open_many(n_idle)
with open(status, "w") as f:
    f.write(f"{slow_ok} {idle_ok}\\n")
while True:  # hold everything; the slow ones send a byte a second
    time.sleep(1)
    for s in slow:
        try:
            s.send(b"a")
        except OSError:
            pass
"""

SCRAPE = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as reply:
        sys.stdout.write(reply.read().decode())
except Exception as exc:
    sys.stderr.write(repr(exc))
    sys.exit(1)
"""


def director_config(real_server: str, *, blackholed: int = 0) -> str:
    vrrp = render_config("r2", [VrrpSpec(priority=90, garp_master_delay=GARP_DELAY)])
    servers = [f"""
    real_server {real_server} {RS_PORT} {{
        weight 1
        TCP_CHECK {{
            connect_timeout 2
            retry 1
            delay_before_retry 1
        }}
    }}"""]
    servers += [f"""
    real_server {BLACKHOLE} {20000 + i} {{
        TCP_CHECK {{
            connect_timeout 5
        }}
    }}""" for i in range(blackholed)]
    return vrrp + f"""
virtual_server {VIP} 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
{"".join(servers)}
}}
"""


def start_director(lab: Lab, node: Node, config: str, nofile: str) -> None:
    """The real daemon under ``prlimit --nofile=SOFT:HARD``, metrics on its LAN address."""
    conf = lab.write_config(node, config)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT),
                                                      os.environ.get("PYTHONPATH", "")) if p))
    argv = ["prlimit", f"--nofile={nofile}", "--", sys.executable, "-m", "pyalived",
            "-n", "-l", "-D", "-f", str(conf), "-p", str(lab.workdir / "r2-director.pid"),
            "-c", str(checker_pid_file(lab)), "--metrics-listen", f"{node.ip}:{PORT}"]
    node.daemon = lab.spawn(node, argv, "r2-director", env=env)


def checker_pid_file(lab: Lab) -> Path:
    return lab.workdir / "r2-director-checkers.pid"


def checker_pid(lab: Lab) -> int:
    """The checker child's pid: it holds the checkers' descriptors."""
    return int(wait_for(lambda: checker_pid_file(lab).exists() and
                        checker_pid_file(lab).read_text().strip(), SETTLE,
                        what="the checker child's pid file"))


def scrape(lab: Lab, monitor: Node, target: Node, timeout: float = 5.0) -> str | None:
    proc = lab.run(monitor, sys.executable, "-c", SCRAPE, f"http://{target.ip}:{PORT}/metrics",
                   f"{timeout:g}", check=False)
    return proc.stdout if proc.returncode == 0 else None


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def probes(text: str) -> float:
    return sample(text, "pyalived_checker_probe_seconds_count", checker="TCP_CHECK") or 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no Max open files line")


def start_attack(lab: Lab, attacker: Node, target: Node) -> Path:
    status = lab.workdir / "attack.status"
    lab.spawn(attacker, [sys.executable, "-c", ATTACKER, target.ip, str(PORT), str(IDLE),
                         str(SLOW), str(status)], "attacker")
    wait_for(lambda: status.exists() and status.read_text().endswith("\n"), 60.0,
             interval=0.2, what="the attacker's connections")
    slow_ok, idle_ok = map(int, status.read_text().split())
    # The connections really reached the director (refused ones are established first).
    assert slow_ok >= 0.9 * SLOW and idle_ok >= 0.9 * IDLE, (slow_ok, idle_ok)
    return status


def scrape_after_deadline(lab: Lab, monitor: Node, target: Node, attacked_at: float) -> str:
    """A scrape retried until it succeeds, which must be soon after the head deadline."""
    wait = attacked_at + REQUEST_HEAD_TIMEOUT + 0.5 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    text = wait_for(lambda: scrape(lab, monitor, target), CONNECTION_TIMEOUT + 10.0,
                    interval=0.5, what="a successful scrape during the attack")
    return text


def bursts(events: list[Event], node: Node, after: float) -> list[list[Event]]:
    """The gratuitous ARPs for the VIP from ``node``'s MAC, in bursts (gaps over 0.5 s)."""
    out: list[list[Event]] = []
    for e in garps(events, ip=VIP, after=after):
        if e.src_mac != node.mac:
            continue
        if out and e.time - out[-1][-1].time < 0.5:
            out[-1].append(e)
        else:
            out.append([e])
    return out


def assert_log_is_quiet(log: str) -> None:
    assert "Traceback" not in log
    emfile = [line for line in log.splitlines()
              if "emfile" in line.lower() or "too many open files" in line.lower()]
    assert len(emfile) <= 3, emfile[:10]


def build(make_lab: MakeLab) -> tuple[Lab, Node, Node, Node, Node, Node]:
    lab = make_lab(routers=2, clients=3)
    master, director = lab.routers
    real_server, attacker, monitor = lab.clients
    lab.spawn(real_server, [sys.executable, "-c", REAL_SERVER, real_server.ip, str(RS_PORT)],
              "real-server")
    return lab, master, director, real_server, attacker, monitor


def test_flood_within_a_hard_limit_of_1024(make_lab: MakeLab) -> None:
    lab, master, director, real_server, attacker, monitor = build(make_lab)
    lab.start_daemon(master, render_config("r1", [VrrpSpec(priority=100)]))
    lab.wait_sole_holder(master, timeout=SETTLE)
    start_director(lab, director, director_config(real_server.ip), "1024:1024")
    daemon = director.daemon
    assert daemon is not None
    before = wait_for(lambda: scrape(lab, monitor, director), SETTLE, interval=0.5,
                      what="the director's metrics")
    rs = f"{real_server.ip}:{RS_PORT}"
    wait_for(lambda: probes(scrape(lab, monitor, director) or "") >= 3, SETTLE, interval=0.5,
             what="TCP_CHECK probes")
    before = scrape(lab, monitor, director) or before
    assert sample(before, "pyalived_real_server_up", real_server=rs) == 1
    assert nofile_limits(daemon.pid) == (1024, 1024)
    cap = lab.capture()

    attacked_at = time.monotonic()
    start_attack(lab, attacker, director)
    during = scrape_after_deadline(lab, monitor, director, attacked_at)
    assert time.monotonic() - attacked_at < 30.0  # the attack took seconds, not minutes
    assert sample(during, "pyalived_real_server_up", real_server=rs) == 1
    assert (sample(during, "pyalived_metrics_http_refused_total") or 0) > 0.5 * (IDLE + SLOW)

    # Failover while the flood is held.
    stopped = time.time()
    lab.stop_daemon(master)
    lab.wait_sole_holder(director, timeout=SETTLE)

    def both_bursts(events: list[Event]) -> list[list[Event]] | None:
        found = bursts(events, director, stopped)
        return found if len(found) >= 2 else None

    two = cap.wait_for(both_bursts, SETTLE, what="both gratuitous ARP bursts from the director")
    first, second = two[:2]
    assert len(first) >= 5 and len(second) >= 5, two  # garp_master_repeat each
    assert first[0].time - stopped < 5.0  # at the takeover
    assert second[0].time - first[0].time == pytest.approx(GARP_DELAY, abs=0.5)

    after = wait_for(lambda: scrape(lab, monitor, director), SETTLE, interval=0.5,
                     what="a scrape after the failover")
    assert sample(after, "pyalived_real_server_up", real_server=rs) == 1
    assert sample(after, "keepalived_vrrp_state", iname="VI_1") == 2
    # probes kept running through the attack: about one a second
    assert probes(after) - probes(before) >= 0.5 * (time.monotonic() - attacked_at)
    assert daemon.running()
    log = daemon.log_text()
    assert "DOWN" not in log, log[-3000:]
    assert "could not run" not in log  # no probe even lacked a descriptor
    assert_log_is_quiet(log)


def test_flood_under_service_manager_limits(make_lab: MakeLab) -> None:
    lab, _master, director, real_server, attacker, monitor = build(make_lab)
    # The black-holed real servers: a neighbour entry for an address nobody has.
    lab.ip(director, "neigh", "replace", BLACKHOLE, "lladdr", "02:00:00:00:00:fe",
           "nud", "permanent", "dev", "eth0")
    start_director(lab, director, director_config(real_server.ip, blackholed=BLACKHOLE_PORTS),
                   "1024:8192")
    daemon = director.daemon
    assert daemon is not None
    rs = f"{real_server.ip}:{RS_PORT}"
    before = wait_for(lambda: scrape(lab, monitor, director), SETTLE, interval=0.5,
                      what="the director's metrics")

    checkers = checker_pid(lab)
    attacked_at = time.monotonic()
    start_attack(lab, attacker, director)
    peak = 0
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline:
        peak = max(peak, open_fds(checkers))
        time.sleep(0.2)
    during = scrape_after_deadline(lab, monitor, director, attacked_at)
    assert sample(during, "pyalived_real_server_up", real_server=rs) == 1
    assert probes(during) > probes(before)
    assert daemon.running()
    log = daemon.log_text()
    assert "TCP_CHECK#0 DOWN" not in "\n".join(
        line for line in log.splitlines() if rs in line), log[-3000:]
    assert "could not run" not in log  # no probe lacked a descriptor
    assert_log_is_quiet(log)
    assert peak > 1024  # the soft limit it started with would not have done
    assert nofile_limits(daemon.pid) == (8192, 8192)  # raised at start...
    assert nofile_limits(checkers) == (8192, 8192)  # ...before the children were forked
