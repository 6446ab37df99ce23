"""The big director: the largest reported configuration run as a VRRP master, measured.

Theory of operation: issue 9's targets for a director that carries keepalived's
largest reported configuration (``bench/config_scale.py``'s ``generate``:
2,277 virtual servers, 37,205 real servers, a TCP_CHECK with ``delay_loop 10``
on every one, one ``vrrp_instance`` with ``advert_int 1``) are measured on a
namespace lab (``pyalived.lab.Lab``): a bridge LAN 198.18.0.0/24 with

* ``r1``, the director: the big configuration as ``state MASTER``, priority
  100, VRID 51, VIP 198.18.0.100/24 on ``eth0``;
* ``r2``, a backup peer: a small configuration with the same VRID, VIP and
  authentication at priority 90.  As long as ``r1`` advertises at least every
  Master_Down_Interval (3.65 s), ``r2`` never sends an advert; any advert from
  it is counted;
* ``c1``, standing for every real server.  The real servers' addresses
  (198.19.0.0/16) are made local to ``c1`` by one route (``local
  198.19.0.0/16 dev lo``), and ``r1`` routes 198.19.0.0/16 through ``c1``'s
  LAN address, so every check's connection stays on the lab's bridge.  With
  ``--servers up`` (the default) a listener process in ``c1`` (this script
  with ``--serve-ports``, at nice 10: it stands for remote hosts) accepts and
  closes every connection on the configuration's five ports, so every real
  server is healthy as in a production steady state; with ``--servers
  refused`` nothing listens and ``c1``'s kernel answers each SYN with a RST,
  so every real server fails fast and goes DOWN.

A capture on the bridge (``lab.Capture``) records the adverts; their kernel
timestamps give the gaps between consecutive adverts of ``r1``.  Each gap is
counted in the window its later advert falls in:

* start-up: the first advert of ``r1`` to 30 s later (``--startup``);
* steady state: the next 30 s (``--steady``), or from the moment every child
  says it is ready, if that is later;
* reloads: ``--reloads`` SIGHUPs of the unchanged file, ``--reload-interval``
  (10 s) apart, each window from its SIGHUP to the next;
* ``--changed-reloads`` (5) SIGHUPs after the file was rewritten with every
  ``delay_loop`` changed, from 10 to ``--new-delay-loop`` and back in turn,
  each window from its SIGHUP to ``--change-window`` (30 s) later (or 10 s
  after the reload finished, if later).

The target is a longest gap of at most advert_int + 20 ms (1,020 ms).

Memory: for each process named by the pid files (``-p``, ``-r``, ``-c``),
VmRSS from /proc/PID/status and Pss from /proc/PID/smaps_rollup, and the PSS
summed over them (the target: at most 200 MiB, steady across reloads), at the
end of the start-up window, at the end of the steady window and just before
each following SIGHUP (so about ``--reload-interval`` after each reload).
Each process's CPU time (utime + stime from /proc/PID/stat) between two of
these moments is printed too, as a percentage of one core.

Reload wall time: from the SIGHUP sent to the parent to the moment the
daemon's log (standard error, which the lab writes to a file) shows the
reload's end -- pyalived's supervisor line ``reload: applied by every child``
(or ``... unchanged: nothing to apply`` when the files are the same),
keepalived's ``Reload complete`` -- seen by polling the file every 10 ms (the
lines' own timestamps have one-second resolution).  Every line about the
reload logged up to the end of its window is printed verbatim, prefixed with
when it was seen: pyalived's VRRP child's summary and its checker child's
``reload: real servers: ... kept ... started ...``; when the checker child's
summary was seen is printed next to the wall time, since it is the moment the
checker half had applied the reload.

keepalived 2.2.7 cannot run its checker child here: this machine's kernel has
no IPVS, and keepalived's checker child then exits with a fatal error, which
stops the whole daemon.  ``--impl keepalived`` therefore runs keepalived with
``-P`` (VRRP child only; the parent and the VRRP child still read the whole big
file at start-up and on every reload), for the advert gaps, memory and
reload time of that part, next to pyalived's full daemon.  pyalived, on the
other hand, runs both halves; its checker child logs once that IPVS is
unavailable and keeps checking.  For both, ``-t`` (configuration check) is
timed once with ``config_scale.run_once`` inside ``r1``; its peak RSS is read
from GNU time (``/usr/bin/time -f %M``, which wraps the program), because
``run_once``'s ``ru_maxrss`` also counts this script's own resident pages
(``posix_spawn`` runs the child in the caller's memory until the exec, and
the kernel carries that high-water mark over the exec).

After the last window the capture is read (before anything is stopped, so
``r1``'s priority-0 advert on shutdown does not count) and, for pyalived, the
metrics endpoint (127.0.0.1:9165 inside ``r1``) is read once for the number of
real servers up and down.  The daemons log with ``-l -D``; warnings and errors
found in the logs are counted and the first distinct ones printed.  A digest
of the package's sources is printed first, since the tree measured may hold
uncommitted changes.  The script prints numbers; it asserts nothing.  Needs
root, iproute2 and tcpdump (GNU time optional); at full size a run takes
about three minutes per implementation.

    .venv/bin/python bench/big_director.py --impl both
    .venv/bin/python bench/big_director.py --virtual-servers 200 --real-servers 3000
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import math
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from config_scale import (  # noqa: E402
    REAL_SERVERS,
    SERVICE_SHAPES,
    VIRTUAL_SERVERS,
    generate,
    run_once,
)

from pyalived.lab import (  # noqa: E402
    KEEPALIVED,
    Event,
    Lab,
    Node,
    Proc,
    VrrpSpec,
    adverts,
    namespace_pids,
    render_config,
)

VIP = "198.18.0.100"
VRID = 51
ADVERT_INT = 1.0
GAP_TARGET_MS = ADVERT_INT * 1000 + 20
PSS_TARGET_MIB = 200
RELOAD_TARGET_S = 1.0
REAL_SERVER_NET = "198.19.0.0/16"
PORTS = sorted({shape[2] for shape in SERVICE_SHAPES})
# The supervisor's last line of a reload: applied, or nothing to apply (same files).
PYALIVED_RELOAD_DONE = ("reload: applied by every child", "unchanged: nothing to apply")
KEEPALIVED_RELOAD_DONE = "Reload complete"
LVS_RELOAD_LINE = "reload: real servers:"  # pyalived's checker child, once it applied a reload
METRICS_URL = "http://127.0.0.1:9165/metrics"
CLK_TCK = os.sysconf("SC_CLK_TCK")
IP = shutil.which("ip") or "/usr/sbin/ip"  # posix_spawn wants a path
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None  # GNU time


# ---- the stand-in real servers ------------------------------------------------------


def serve_ports(ports: Sequence[int]) -> None:
    """Accept and close every connection on ``ports`` (any local address), forever."""
    os.nice(10)
    listeners: dict[int, socket.socket] = {}
    poller = select.epoll()
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(4096)
        sock.setblocking(False)
        listeners[sock.fileno()] = sock
        poller.register(sock.fileno(), select.EPOLLIN)
    print(f"listening on ports {','.join(map(str, ports))}", flush=True)
    while True:
        for fd, _ in poller.poll():
            sock = listeners[fd]
            while True:
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. out of descriptors: try again on the next event
                    break
                conn.close()


# ---- observation helpers --------------------------------------------------------------


class LogFollower:
    """A growing log file, read incrementally; each line stamped when first seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.lines: list[tuple[float, str]] = []  # (time.time() when seen, line)

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if not data:
            return
        self.offset += len(data)
        now = time.time()
        chunks = (self.partial + data).split(b"\n")
        self.partial = chunks.pop()
        self.lines += [(now, c.decode(errors="replace")) for c in chunks]

    def find(self, needle: str, start: int = 0) -> int | None:
        for i in range(start, len(self.lines)):
            if needle in self.lines[i][1]:
                return i
        return None


@dataclass
class ProcMem:
    role: str
    pid: int | None
    rss_kib: int | None = None
    pss_kib: int | None = None
    cpu_ticks: int | None = None


@dataclass
class Snapshot:
    label: str
    at: float
    procs: list[ProcMem]

    @property
    def pss_total_kib(self) -> int:
        return sum(p.pss_kib or 0 for p in self.procs)


def _status_field(pid: int, name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _pss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _cpu_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
    except OSError:
        return "?"


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def snapshot(label: str, pidfiles: dict[str, Path]) -> Snapshot:
    procs = []
    for role, path in pidfiles.items():
        pid = read_pid(path)
        mem = ProcMem(role, pid)
        if pid is not None:
            mem.rss_kib = _status_field(pid, "VmRSS")
            mem.pss_kib = _pss(pid)
            mem.cpu_ticks = _cpu_ticks(pid)
        procs.append(mem)
    return Snapshot(label, time.time(), procs)


def gaps_ms(times: Sequence[float], start: float, end: float) -> list[float]:
    """Gaps (ms) between consecutive ``times`` whose later advert is in (start, end]."""
    return [(b - a) * 1000 for a, b in itertools.pairwise(times) if start < b <= end]


def p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def source_fingerprint() -> str:
    """A digest of the package's sources as they are now (the tree may be uncommitted)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "pyalived").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    return f"HEAD {head or '?'}, pyalived/*.py sha256 {digest.hexdigest()[:12]}"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---- one implementation ---------------------------------------------------------------


@dataclass
class Window:
    name: str
    start: float
    end: float
    gaps: list[float] = field(default_factory=list)
    worst_end: float = 0.0  # when the longest gap ended, seconds after ``start``


@dataclass
class Reload:
    name: str
    sent: float  # time.time()
    seconds: float | None  # SIGHUP to the end-of-reload line; None: not seen
    start_index: int  # first log line after the SIGHUP
    lines: list[str] = field(default_factory=list)  # "+seen s  line", up to the window's end
    checker_seconds: float | None = None  # SIGHUP to the checker child's summary line (seen)


@dataclass
class Result:
    impl: str
    mode: str
    check_wall: float = 0.0
    check_rss_kib: int = 0
    check_status: int = 0
    check_last_line: str = ""
    check_rss_note: str = ""
    first_advert_s: float | None = None
    milestones: dict[str, float] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)
    r2_adverts: list[float] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    reloads: list[Reload] = field(default_factory=list)
    steady_cpu: dict[str, float] = field(default_factory=dict)  # % of one core
    restarts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    state_lines: list[str] = field(default_factory=list)
    lvs_lines: list[str] = field(default_factory=list)
    metrics_summary: str = ""
    loads: list[str] = field(default_factory=list)
    runtime: float = 0.0
    note: str = ""
    other_procs: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    r2_problems: list[str] = field(default_factory=list)


class Runner:
    def __init__(self, impl: str, args: argparse.Namespace) -> None:
        self.impl = impl
        self.args = args
        self.result = Result(impl, args.servers)
        self.log: LogFollower | None = None
        self.r2proc: Proc | None = None

    # -- pieces ----------------------------------------------------------------------

    def daemon_argv(self, conf: Path, base: Path) -> list[str]:
        pids = ["-p", f"{base}.pid", "-r", f"{base}.vrrp.pid", "-c", f"{base}.check.pid"]
        if self.impl == "keepalived":
            return [KEEPALIVED, "-P", "-n", "-l", "-D", "-f", str(conf), *pids]
        return [sys.executable, "-m", "pyalived", "-n", "-l", "-D", "-f", str(conf), *pids]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def pidfiles(self, base: Path) -> dict[str, Path]:
        files = {"parent": Path(f"{base}.pid"), "VRRP child": Path(f"{base}.vrrp.pid")}
        if self.impl == "pyalived":
            files["checker child"] = Path(f"{base}.check.pid")
        return files

    def pause_until(self, when: float, interval: float = 0.05) -> None:
        while (left := when - time.time()) > 0:
            if self.log is not None:
                self.log.poll()
            time.sleep(min(interval, left))
        if self.log is not None:
            self.log.poll()

    def wait_line(self, needle: str | tuple[str, ...], start: int, timeout: float,
                  interval: float = 0.01) -> int | None:
        assert self.log is not None
        needles = (needle,) if isinstance(needle, str) else needle
        deadline = time.time() + timeout
        while True:
            self.log.poll()
            for one in needles:
                found = self.log.find(one, start)
                if found is not None:
                    return found
            if time.time() >= deadline:
                return None
            time.sleep(interval)

    def wait_advert(self, cap_events: Callable[[], list[Event]], src: str, after: float,
                    timeout: float, proc: Proc) -> Event | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.log is not None:
                self.log.poll()
            found = [e for e in adverts(cap_events(), src=src, vrid=VRID, after=after)
                     if e.priority]
            if found:
                return found[0]
            if not proc.running():
                return None
            time.sleep(0.05)
        return None

    def reload(self, name: str, parent: int) -> Reload:
        assert self.log is not None
        self.log.poll()
        start_index = len(self.log.lines)
        done_marker = PYALIVED_RELOAD_DONE if self.impl == "pyalived" else KEEPALIVED_RELOAD_DONE
        sent_wall = time.time()
        sent = time.monotonic()
        os.kill(parent, signal.SIGHUP)
        found = self.wait_line(done_marker, start_index, self.args.reload_timeout)
        seconds = time.monotonic() - sent if found is not None else None
        rel = Reload(name, sent_wall, seconds, start_index)
        self.result.reloads.append(rel)
        shown = "not seen" if seconds is None else f"{seconds:.3f} s"
        print(f"  {name}: {shown}", flush=True)
        return rel

    def collect(self, rel: Reload) -> None:
        """The reload's log lines up to now (the end of its window), with when each was seen."""
        assert self.log is not None
        self.log.poll()
        rel.lines = [f"+{seen - rel.sent:6.2f} s  {line}"
                     for seen, line in self.log.lines[rel.start_index:]
                     if "reload" in line.lower() or "died" in line or "Traceback" in line]
        rel.checker_seconds = next((seen - rel.sent for seen, line
                                    in self.log.lines[rel.start_index:]
                                    if LVS_RELOAD_LINE in line), None)

    # -- the run -----------------------------------------------------------------------

    def run(self) -> Result:
        args, res = self.args, self.result
        began = time.monotonic()
        res.loads.append(f"start {loadavg()}")
        with Lab(routers=2, clients=1, keep_workdir=args.keep_workdir) as lab:
            r1, r2 = lab.routers
            (servers,) = lab.clients
            if args.keep_workdir:
                print(f"  lab work directory: {lab.workdir}")
            self.prepare_servers(lab, r1, servers)
            conf = lab.workdir / "r1.conf"
            generate(conf, args.virtual_servers, args.real_servers, "eth0",
                     priority=100, vip=f"{VIP}/24")
            self.config_check(lab, r1, conf)
            r2_conf = lab.write_config(r2, render_config("r2", [VrrpSpec(
                priority=90, vrid=VRID, state="BACKUP", advert_int=ADVERT_INT,
                vips=(f"{VIP}/24",), auth_type="PASS", auth_pass="s3cret")]))
            cap = lab.capture("big")
            base = lab.workdir / f"r1-{self.impl}"
            proc = lab.spawn(r1, self.daemon_argv(conf, base), f"r1-{self.impl}", env=self.env())
            self.log = LogFollower(proc.log_path)
            print(f"  {self.impl} started on r1 (pid {proc.pid})", flush=True)
            first = self.wait_advert(cap.events, r1.ip, proc.started_at - 1, args.start_timeout,
                                     proc)
            if first is None:
                res.note = ("no advert from r1" if proc.running()
                            else f"r1's daemon exited ({proc.popen.returncode})")
                self.finish(lab, cap.events(), r1, r2, 0.0, began)
                return res
            t0 = first.time
            res.first_advert_s = t0 - proc.started_at
            print(f"  first advert {res.first_advert_s:.3f} s after the start", flush=True)
            self.r2proc = lab.spawn(r2, self.daemon_argv(r2_conf, lab.workdir / f"r2-{self.impl}"),
                                    f"r2-{self.impl}", env=self.env())
            pidfiles = self.pidfiles(base)
            # start-up window
            self.pause_until(t0 + args.startup)
            res.windows.append(Window(f"start-up (first advert +{args.startup:g} s)", t0,
                                      t0 + args.startup))
            res.snapshots.append(snapshot("end of start-up", pidfiles))
            named = {read_pid(path) for path in pidfiles.values()}
            res.other_procs = [f"{pid} {_comm(pid)}" for pid in namespace_pids(r1.ns)
                               if pid not in named]
            res.loads.append(f"after start-up {loadavg()}")
            ready = self.ready_time(proc)
            steady_start = max(t0 + args.startup, ready if ready is not None else 0.0)
            if ready is None:
                print("  the daemon has not said it is ready: steady window starts anyway",
                      flush=True)
            self.pause_until(steady_start)
            before = snapshot("steady start", pidfiles)
            self.pause_until(steady_start + args.steady)
            after = snapshot("end of steady state", pidfiles)
            res.windows.append(Window(f"steady state ({args.steady:g} s)", steady_start,
                                      steady_start + args.steady))
            res.snapshots.append(after)
            res.steady_cpu = self.cpu_percent(before, after)
            res.loads.append(f"after steady {loadavg()}")
            parent = read_pid(pidfiles["parent"]) or proc.pid
            print(f"  {args.reloads} unchanged reloads, {args.reload_interval:g} s apart:",
                  flush=True)
            first_sent = None
            for n in range(1, args.reloads + 1):
                rel = self.reload(f"unchanged reload {n}", parent)
                first_sent = first_sent if first_sent is not None else rel.sent
                end = max(rel.sent + args.reload_interval, time.time())
                self.pause_until(end)
                self.collect(rel)
                res.windows.append(Window(f"  reload {n} (SIGHUP to next)", rel.sent, end))
                res.snapshots.append(snapshot(f"after unchanged reload {n}", pidfiles))
            if first_sent is not None:
                res.windows.insert(len(res.windows) - args.reloads, Window(
                    f"{args.reloads} unchanged reloads", first_sent, time.time()))
            res.loads.append(f"after the reloads {loadavg()}")
            was = 10.0
            for n in range(1, args.changed_reloads + 1):
                new = args.new_delay_loop if n % 2 else 10.0
                generate(conf, args.virtual_servers, args.real_servers, "eth0",
                         priority=100, vip=f"{VIP}/24", delay_loop=new)
                name = f"delay_loop {was:g} -> {new:g} (changed reload {n})"
                rel = self.reload(name, parent)
                done = rel.sent + (rel.seconds or 0.0)
                end = max(rel.sent + args.change_window, done + 10.0, time.time())
                self.pause_until(end)
                self.collect(rel)
                res.windows.append(Window(f"{name} reload", rel.sent, end))
                res.snapshots.append(snapshot(f"after changed reload {n}", pidfiles))
                was = new
            res.loads.append(f"end {loadavg()}")
            # the gap in progress at the last window's end belongs to it
            self.pause_until(time.time() + 1.5)
            res.windows[-1].end = time.time()
            self.finish(lab, cap.events(), r1, r2, t0, began)
        res.runtime = time.monotonic() - began
        return res

    def prepare_servers(self, lab: Lab, r1: Node, servers: Node) -> None:
        lab.ip(servers, "route", "add", "local", REAL_SERVER_NET, "dev", "lo")
        lab.ip(r1, "route", "add", REAL_SERVER_NET, "via", servers.ip)
        if self.args.servers == "up":
            listener = lab.spawn(servers, [sys.executable, str(Path(__file__).resolve()),
                                           "--serve-ports", ",".join(map(str, PORTS))],
                                 "servers")
            deadline = time.time() + 15
            while "listening" not in listener.log_text() and time.time() < deadline:
                time.sleep(0.05)
        probe = lab.run(r1, sys.executable, "-c", (
            "import socket,sys\n"
            "try:\n socket.create_connection(('198.19.0.1', 80), 2).close(); print('accepted')\n"
            "except OSError as e: print(type(e).__name__, e)\n"), check=False)
        print(f"  a connection from r1 to 198.19.0.1:80: {probe.stdout.strip()}", flush=True)

    def config_check(self, lab: Lab, r1: Node, conf: Path) -> None:
        res = self.result
        prog = KEEPALIVED if self.impl == "keepalived" else str(ROOT / ".venv" / "bin" / "pyalived")
        argv = [prog, "-t", "-f", str(conf)]
        rss_file = lab.workdir / f"check-{self.impl}.maxrss"
        if TIME is not None:
            argv = [TIME, "-o", str(rss_file), "-f", "%M", *argv]
        run = run_once([IP, "netns", "exec", r1.ns, *argv], lab.workdir / f"check-{self.impl}.out")
        res.check_wall, res.check_rss_kib = run.wall, run.rss_kib
        res.check_status, res.check_last_line = run.status, run.last_line
        if TIME is not None:
            last = (rss_file.read_text().strip().splitlines() or ["0"])[-1]
            res.check_rss_kib = int(last) if last.isdigit() else 0
        else:
            res.check_rss_note = " (ru_maxrss: includes this script's own pages)"
        print(f"  {self.impl} -t: {run.wall:.3f} s, peak RSS {res.check_rss_kib / 1024:.1f} MiB"
              f"{res.check_rss_note}, exit {run.status}", flush=True)

    def ready_time(self, proc: Proc) -> float | None:
        """When the daemon was ready: pyalived's "all children ready" line (seen time)."""
        assert self.log is not None
        if self.impl != "pyalived":
            return time.time()
        self.log.poll()
        for needle, key in (("LVS started", "checker child's \"LVS started\" line"),
                            ("all children ready", "supervisor's \"all children ready\" line")):
            i = self.log.find(needle)
            if i is not None:
                self.result.milestones[key] = self.log.lines[i][0] - proc.started_at
        i = self.log.find("all children ready")
        return self.log.lines[i][0] if i is not None else None

    @staticmethod
    def cpu_percent(before: Snapshot, after: Snapshot) -> dict[str, float]:
        span = after.at - before.at
        out = {}
        for b, a in zip(before.procs, after.procs, strict=True):
            if b.cpu_ticks is not None and a.cpu_ticks is not None and b.pid == a.pid and span:
                out[a.role] = (a.cpu_ticks - b.cpu_ticks) / CLK_TCK / span * 100
        return out

    def finish(self, lab: Lab, events: list[Event], r1: Node, r2: Node, t0: float,
               began: float) -> None:
        res = self.result
        times = [e.time for e in adverts(events, src=r1.ip, vrid=VRID) if e.priority]
        for w in res.windows:
            w.gaps = gaps_ms(times, w.start, w.end)
            ends = [b for _, b in itertools.pairwise(times) if w.start < b <= w.end]
            if w.gaps:
                w.worst_end = ends[w.gaps.index(max(w.gaps))] - w.start
        res.r2_adverts = [e.time - t0 for e in adverts(events, src=r2.ip)]
        if self.impl == "pyalived" and res.first_advert_s is not None:
            res.metrics_summary = self.scrape(lab, r1)
        assert self.log is not None
        # the daemon's own account of itself, before it is stopped
        self.log.poll()
        text = [line for _, line in self.log.lines]
        if self.impl == "pyalived":
            bad = [line for line in text if re.search(r"\[(WARNING|ERROR|CRITICAL) ", line)
                   or line.startswith("Traceback")]
            res.restarts = [line for line in text if " died " in line or "keeps dying" in line]
            res.state_lines = [line for line in text if "VI_1" in line][:8]
            res.lvs_lines = [line for line in text
                             if "LVS started" in line or "IPVS" in line][:5]
        else:
            bad = [line for line in text
                   if re.search(r"error|fail|warn|exited", line, re.IGNORECASE)]
            res.state_lines = [line for line in text if "VI_1" in line][:8]
        res.problem_count = len(bad)
        if res.note:
            res.log_tail = text[-15:]
        if self.r2proc is not None:
            res.r2_problems = [line for line in self.r2proc.log_text().splitlines()
                               if re.search(r"\[(WARNING|ERROR|CRITICAL) |error|fail", line,
                                            re.IGNORECASE)][:5]
        seen: set[str] = set()
        for line in bad:
            key = re.sub(r"^\w{3} \w{3} +\d+ [\d:]+ \d{4}: ", "", line)
            key = re.sub(r"\d+(\.\d+)?", "N", key)
            if key not in seen:
                seen.add(key)
                res.problems.append(line)
            if len(res.problems) >= 12:
                break
        res.runtime = time.monotonic() - began

    def scrape(self, lab: Lab, r1: Node) -> str:
        script = (
            "import urllib.request, re, time\n"
            f"t = time.monotonic(); body = urllib.request.urlopen('{METRICS_URL}', timeout=60)"
            ".read().decode()\n"
            "took = time.monotonic() - t\n"
            "up = len(re.findall(r'^pyalived_real_server_up\\{.*\\} 1(\\.0)?$', body, re.M))\n"
            "down = len(re.findall(r'^pyalived_real_server_up\\{.*\\} 0(\\.0)?$', body, re.M))\n"
            "probes = sum(float(m) for m in re.findall("
            "r'^pyalived_checker_probe_seconds_count(?:\\{.*\\})? (\\S+)$', body, re.M))\n"
            "print(f'{up} real servers up, {down} down, {probes:.0f} probes so far;"
            " scrape of {len(body) / 1e6:.1f} MB took {took:.2f} s')\n"
        )
        out = lab.run(r1, sys.executable, "-c", script, check=False)
        if out.stdout.strip():
            return out.stdout.strip()
        errors = out.stderr.strip().splitlines()
        return f"metrics unavailable: {errors[-1] if errors else 'no answer'}"


# ---- report ---------------------------------------------------------------------------


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def print_result(res: Result, args: argparse.Namespace) -> None:
    print(f"\n=== {res.impl}{' (-P: VRRP child only)' if res.impl == 'keepalived' else ''}:"
          f" {args.virtual_servers} virtual servers, {args.real_servers} real servers"
          f" (TCP_CHECK, delay_loop 10), real servers {res.mode} ===")
    print(f"config check (-t, one run): {res.check_wall:.3f} s, peak RSS"
          f" {res.check_rss_kib / 1024:.1f} MiB{res.check_rss_note}, exit {res.check_status};"
          f" last line: {res.check_last_line or '(no output)'}")
    if res.note:
        print(f"run aborted: {res.note}; the end of r1's log:")
        for line in res.log_tail:
            print(f"  {line}")
    if res.first_advert_s is not None:
        print(f"start-up: first advert {res.first_advert_s:.3f} s after the process started")
    for key, value in res.milestones.items():
        print(f"          {key} {value:.2f} s after the process started (polled)")
    print(f"\nadvert gaps of r1 on the bridge (ms; target max <= {GAP_TARGET_MS:g}):")
    print(f"  {'window':<34} {'n':>4} {'max':>9} {'p99':>9} {'median':>9} {'min':>9}"
          f"  {'max ends at':>11}")
    for w in res.windows:
        if w.gaps:
            verdict = "meets" if max(w.gaps) <= GAP_TARGET_MS else "MISSES"
            print(f"  {w.name:<34} {len(w.gaps):>4} {max(w.gaps):9.1f} {p99(w.gaps):9.1f}"
                  f" {statistics.median(w.gaps):9.1f} {min(w.gaps):9.1f}"
                  f"  {f'+{w.worst_end:.2f} s':>11}  {verdict}")
        else:
            print(f"  {w.name:<34}    0  (no adverts)")
    if res.r2_adverts:
        print(f"r2 (backup) sent {len(res.r2_adverts)} adverts (target 0), the first"
              f" {res.r2_adverts[0]:+.3f} s after r1's first advert")
    else:
        print("r2 (backup) sent no advert (target 0)")
    print(f"\nmemory (MiB; PSS target: total <= {PSS_TARGET_MIB}, steady across reloads):")
    roles = [p.role for p in res.snapshots[0].procs] if res.snapshots else []
    head = "".join(f" {role + ' RSS/PSS':>24}" for role in roles)
    print(f"  {'when':<30} {'PSS total':>9}{head}  CPU % of a core since the previous row")
    pids: dict[str, set[int | None]] = {}
    prev: Snapshot | None = None
    for snap in res.snapshots:
        cols = "".join(f" {mib(p.rss_kib) + ' / ' + mib(p.pss_kib):>24}" for p in snap.procs)
        cpu = "-"
        if prev is not None:
            pct = Runner.cpu_percent(prev, snap)
            cpu = "/".join(f"{pct[p.role]:.0f}" if p.role in pct else "?" for p in snap.procs)
        print(f"  {snap.label:<30} {snap.pss_total_kib / 1024:9.1f}{cols}  {cpu}")
        prev = snap
        for p in snap.procs:
            pids.setdefault(p.role, set()).add(p.pid)
    changed = [f"{role} {sorted(p for p in s if p)}" for role, s in pids.items() if len(s) > 1]
    if changed:
        print(f"  pid changed during the run (restart): {'; '.join(changed)}")
    if res.other_procs:
        print(f"  other processes in r1's namespace (not counted): {'; '.join(res.other_procs)}")
    if res.steady_cpu:
        print("CPU over the steady window (% of one core): " + ", ".join(
            f"{role} {pct:.1f}" for role, pct in res.steady_cpu.items()))
    done = (" or ".join(repr(m) for m in PYALIVED_RELOAD_DONE) if res.impl == "pyalived"
            else repr(KEEPALIVED_RELOAD_DONE))
    print(f"\nreload wall time (SIGHUP to {done},"
          f" polled every 10 ms; target unchanged <= {RELOAD_TARGET_S:g} s):")
    for rel in res.reloads:
        extra = ""
        if res.impl == "pyalived":
            extra = ("   checker child's summary line: "
                     + ("not seen in the window" if rel.checker_seconds is None
                        else f"+{rel.checker_seconds:.2f} s"))
        print(f"  {rel.name:<30} {'not seen' if rel.seconds is None else f'{rel.seconds:.3f} s'}"
              f"{extra}")
    unchanged = [r.seconds for r in res.reloads if r.name.startswith("unchanged")
                 and r.seconds is not None]
    if unchanged:
        print(f"  unchanged: median {statistics.median(unchanged):.3f} s,"
              f" max {max(unchanged):.3f} s")
    print("\nreload lines logged, up to the end of each reload's window:")
    for rel in res.reloads:
        print(f"  [{rel.name}] (seen after the SIGHUP)")
        for line in rel.lines:
            print(f"    {line}")
    if res.lvs_lines:
        print("\nchecker child at start-up:")
        for line in res.lvs_lines:
            print(f"  {line}")
    if res.metrics_summary:
        print(f"metrics at the end: {res.metrics_summary}")
    if res.state_lines:
        print("\nVRRP state lines of r1:")
        for line in res.state_lines:
            print(f"  {line}")
    print(f"\nwarnings/errors in r1's log: {res.problem_count}"
          + (" (keepalived: lines matching error|fail|warn|exited)" if res.impl == "keepalived"
             else ""))
    for line in res.problems:
        print(f"  {line}")
    if res.r2_problems:
        print("r2's log:")
        for line in res.r2_problems:
            print(f"  {line}")
    if res.restarts:
        print("child restarts:")
        for line in res.restarts:
            print(f"  {line}")
    print(f"load average: {'; '.join(res.loads)}")
    print(f"run time: {res.runtime:.0f} s")


def print_side_by_side(results: list[Result]) -> None:
    def gap(res: Result, prefix: str) -> str:
        w = next((w for w in res.windows if w.name.startswith(prefix)), None)
        if w is None or not w.gaps:
            return "-"
        return f"{max(w.gaps):.1f} / {p99(w.gaps):.1f}"

    def snap(res: Result, label: str) -> str:
        s = next((s for s in res.snapshots if s.label == label), None)
        return "-" if s is None else f"{s.pss_total_kib / 1024:.1f}"

    def last_pss(res: Result) -> str:
        return "-" if not res.snapshots else f"{res.snapshots[-1].pss_total_kib / 1024:.1f}"

    def unchanged(res: Result) -> str:
        rels = [r for r in res.reloads if r.name.startswith("unchanged")]
        vals = [r.seconds for r in rels if r.seconds is not None]
        if not rels:
            return "-"
        if len(vals) < len(rels):
            return "not seen"
        return f"{statistics.median(vals):.3f} / {max(vals):.3f}"

    def changed(res: Result) -> str:
        rels = [r for r in res.reloads if r.name.startswith("delay_loop")]
        vals = [r.seconds for r in rels if r.seconds is not None]
        if not rels:
            return "-"
        if len(vals) < len(rels):
            return "not seen"
        return f"{statistics.median(vals):.3f} / {max(vals):.3f}"

    def changed_gaps(res: Result) -> str:
        gaps = [g for w in res.windows if w.name.startswith("delay_loop") for g in w.gaps]
        return "-" if not gaps else f"{max(gaps):.1f} / {p99(gaps):.1f}"

    rows: list[tuple[str, Callable[[Result], str]]] = [
        ("-t wall s / peak RSS MiB",
         lambda r: f"{r.check_wall:.3f} / {r.check_rss_kib / 1024:.1f}"),
        ("first advert after start, s",
         lambda r: "-" if r.first_advert_s is None else f"{r.first_advert_s:.3f}"),
        ("gap max/p99 ms: start-up", lambda r: gap(r, "start-up")),
        ("gap max/p99 ms: steady", lambda r: gap(r, "steady")),
        ("gap max/p99 ms: unchanged reloads", lambda r: gap(r, next(
            (w.name for w in r.windows if w.name.endswith("unchanged reloads")), "?"))),
        ("gap max/p99 ms: changed reloads", changed_gaps),
        ("r2 adverts", lambda r: str(len(r.r2_adverts))),
        ("PSS total MiB: steady", lambda r: snap(r, "end of steady state")),
        ("PSS total MiB: last", last_pss),
        ("unchanged reload s median/max", unchanged),
        ("changed reload s median/max", changed),
    ]
    print("\n=== side by side (keepalived: -P, VRRP child only) ===")
    print(f"  {'':<36}" + "".join(f" {r.impl:>22}" for r in results))
    for name, fn in rows:
        print(f"  {name:<36}" + "".join(f" {fn(r):>22}" for r in results))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--virtual-servers", type=int, default=VIRTUAL_SERVERS)
    ap.add_argument("--real-servers", type=int, default=REAL_SERVERS)
    ap.add_argument("--reloads", type=int, default=5, help="unchanged reloads (default 5)")
    ap.add_argument("--impl", choices=["pyalived", "keepalived", "both"], default="both")
    ap.add_argument("--servers", choices=["up", "refused"], default="up",
                    help="real servers accept connections (default) or refuse them (RST)")
    ap.add_argument("--startup", type=float, default=30.0, help="start-up window, s")
    ap.add_argument("--steady", type=float, default=30.0, help="steady-state window, s")
    ap.add_argument("--reload-interval", type=float, default=10.0,
                    help="seconds between the unchanged reloads")
    ap.add_argument("--changed-reloads", type=int, default=5,
                    help="reloads that change every delay_loop (default 5)")
    ap.add_argument("--new-delay-loop", type=float, default=7.0,
                    help="every delay_loop of the odd changed reloads (default 7; even: 10)")
    ap.add_argument("--change-window", type=float, default=30.0,
                    help="seconds watched after each changed reload")
    ap.add_argument("--start-timeout", type=float, default=900.0,
                    help="seconds to wait for r1's first advert")
    ap.add_argument("--reload-timeout", type=float, default=600.0,
                    help="seconds to wait for a reload's end line")
    ap.add_argument("--keep-workdir", action="store_true",
                    help="keep the lab's directory (configs, logs, capture)")
    ap.add_argument("--serve-ports", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_ports:
        serve_ports([int(p) for p in args.serve_ports.split(",")])
        return 0
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces)", file=sys.stderr)
        return 2
    impls = ["pyalived", "keepalived"] if args.impl == "both" else [args.impl]
    print(f"big director: {args.virtual_servers} virtual servers, {args.real_servers} real"
          f" servers, {args.reloads} unchanged reloads, real servers {args.servers};"
          f" load average {loadavg()}", flush=True)
    print(f"source: {source_fingerprint()}", flush=True)
    results = []
    for impl in impls:
        print(f"\n--- {impl} ---", flush=True)
        results.append(Runner(impl, args).run())
    for res in results:
        print_result(res, args)
    if len(results) > 1:
        print_side_by_side(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
