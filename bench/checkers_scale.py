"""Scale benchmark of the health checkers: the real daemon, thousands of TCP_CHECKs.

Theory of operation: the benchmark makes a network namespace of its own
(when run as root; otherwise it stays in the current one) and, inside it,
starts listener processes (this script with ``--listener``, up to 10,000
sockets each) that open N listening sockets on 127.0.0.1 and accept and
close every connection with an epoll loop.  Each connection is stamped, per
port, with the CLOCK_MONOTONIC time its handshake completed in the kernel:
the accept time minus TCP_INFO's ``tcpi_last_ack_recv`` (kept in jiffies,
so a few milliseconds of resolution), which does not depend on how soon the
listener got to run.  The listeners run at nice 10, since they stand for
remote real servers that would not share the daemon's CPU.  It then writes
a keepalived.conf with one ``virtual_server`` and one ``real_server`` per
listening port, each with a TCP_CHECK (``delay_loop`` 1 s by default, ``connect_timeout`` 1 s, the
default warmup spreading the first checks over one ``delay_loop``), and runs
the real daemon on it: ``python -m pyalived -n -l -C -f CONF -p PID -c PID
--metrics-listen none``.  The kernel of the test machines has no IPVS, so
the daemon logs one error and keeps checking; where IPVS exists, the table
lands in the benchmark's own namespace and disappears with it.

After ``--settle`` seconds the measuring window of ``--duration`` seconds
starts.  Reported, for the daemon process only:

* CPU: utime + stime from /proc/PID/stat across the window, as a percentage
  of one core (process CPU time, so largely independent of machine load).
* RSS: VmRSS from /proc/PID/status at the end of the window.
* Lateness: for every port, the intervals between consecutive handshakes
  completed inside the window, minus ``delay_loop``.  keepalived (and
  pyalived) count ``delay_loop`` from the end of one check to the start of the
  next, so an interval is ``delay_loop`` + one check's duration (tens of
  microseconds on loopback) + how late the daemon started the check (the
  daemon starts checks on a 10 ms grid, so typically 5 to 10 ms), to the
  kernel's jiffy resolution.  Mean, p50, p90, p99 and max are reported
  (``--dump-lateness FILE`` writes them all).

``--inprocess`` keeps the former mode: ``CheckerScheduler`` in this process,
measuring its own CPU time and the lateness it observes through
``on_probe_start`` (scheduled versus actual start).

    .venv/bin/python bench/checkers_scale.py --servers 5000 --duration 30
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path

LISTENERS_PER_PROCESS = 10000
ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
TCP_INFO_LEN = 104
TCPI_LAST_ACK_RECV = 56  # offset of tcpi_last_ack_recv in struct tcp_info (linux/tcp.h)


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else max(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---- listener process ---------------------------------------------------------------


def listener_main(count: int) -> None:
    """Listen on ``count`` ports; on a line on stdin, print the accept times and exit.

    The line is ``START END`` (CLOCK_MONOTONIC seconds): only accepts inside
    that window are reported, as ``{port: [times...]}``.
    """
    raise_nofile(count + 4096)
    # The listeners stand for remote real servers: they yield the CPU to the daemon.
    os.nice(10)
    sel = selectors.EpollSelector()
    ports: list[int] = []
    stamps: dict[int, list[float]] = {}
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        s.setblocking(False)
        port = s.getsockname()[1]
        sel.register(s, selectors.EVENT_READ, port)
        ports.append(port)
        stamps[port] = []
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    sys.stdout.write(json.dumps(ports) + "\n")
    sys.stdout.flush()
    monotonic = time.monotonic
    while True:
        for key, _ in sel.select():
            if key.data is None:
                line = sys.stdin.readline().split()
                start, end = (float(x) for x in line) if line else (0.0, float("inf"))
                out = {p: [t for t in ts if start <= t <= end] for p, ts in stamps.items()}
                sys.stdout.write(json.dumps(out) + "\n")
                sys.stdout.flush()
                return
            lst = key.fileobj
            assert isinstance(lst, socket.socket)
            while True:
                try:
                    conn, _addr = lst.accept()
                except BlockingIOError:
                    break
                info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
                # tcpi_last_ack_recv: ms since the handshake's last ACK arrived.
                ago = struct.unpack_from("I", info, TCPI_LAST_ACK_RECV)[0] / 1000
                stamps[key.data].append(monotonic() - ago)
                conn.close()


# ---- helpers -------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[i]


def proc_cpu_seconds(pid: int) -> tuple[float, float, float]:
    """(user, system, waiting for a CPU) seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/schedstat") as f:
        run_delay_ns = int(f.read().split()[1])
    # fields[0] is the state (field 3): utime and stime are fields 14 and 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, run_delay_ns / 1e9


def proc_rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_config(path: Path, ports: Sequence[int], delay_loop: float, timeout: float) -> None:
    lines = [
        "global_defs {",
        "  router_id pyalived_bench",
        "}",
        "virtual_server 198.18.0.1 80 {",
        "  lb_algo rr",
        "  lb_kind NAT",
        "  protocol TCP",
        f"  delay_loop {delay_loop:g}",
    ]
    for port in ports:
        lines += [
            f"  real_server 127.0.0.1 {port} {{",
            "    weight 1",
            "    TCP_CHECK {",
            f"      connect_timeout {timeout:g}",
            "    }",
            "  }",
        ]
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")


def start_listeners(
    servers: int, prefix: list[str]
) -> tuple[list[subprocess.Popen[str]], list[int]]:
    # Listeners are spread over several processes: a hard RLIMIT_NOFILE
    # (20000 on the test machines) may be too small for one to hold them all.
    shares = [LISTENERS_PER_PROCESS] * (servers // LISTENERS_PER_PROCESS)
    if servers % LISTENERS_PER_PROCESS:
        shares.append(servers % LISTENERS_PER_PROCESS)
    procs: list[subprocess.Popen[str]] = []
    for share in shares:
        argv = [*prefix, sys.executable, os.path.abspath(__file__), "--listener",
                "--servers", str(share)]
        procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True))
    ports: list[int] = []
    for proc in procs:
        assert proc.stdout is not None
        ports += json.loads(proc.stdout.readline())
    return procs, ports


def collect_stamps(procs: Sequence[subprocess.Popen[str]], start: float,
                   end: float) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for proc in procs:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{start!r} {end!r}\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.stdout is not None
        out.update({int(p): ts for p, ts in json.loads(proc.stdout.readline()).items()})
    return out


def lateness_report(stamps: dict[int, list[float]], delay_loop: float,
                    window: float, dump: str | None = None) -> dict[str, float]:
    late: list[float] = []
    checks = 0
    for ts in stamps.values():
        checks += len(ts)
        late += [b - a - delay_loop for a, b in itertools.pairwise(ts)]
    late.sort()
    if dump:
        Path(dump).write_text(json.dumps(late))
    silent = sum(1 for ts in stamps.values() if not ts)
    return {
        "checks": checks,
        "checks_per_s": round(checks / window, 1),
        "intervals": len(late),
        "lateness_mean_ms": round(1000 * sum(late) / len(late), 2) if late else float("nan"),
        "lateness_p50_ms": round(1000 * percentile(late, 0.50), 2),
        "lateness_p90_ms": round(1000 * percentile(late, 0.90), 2),
        "lateness_p99_ms": round(1000 * percentile(late, 0.99), 2),
        "lateness_max_ms": round(1000 * (late[-1] if late else float("nan")), 2),
        "ports_never_checked": silent,
    }


# ---- the real daemon -------------------------------------------------------------------


def run_daemon_bench(args: argparse.Namespace) -> dict[str, object]:
    netns = None
    prefix: list[str] = []
    if os.geteuid() == 0 and not args.no_netns:
        netns = f"pyab{os.getpid()}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        prefix = ["ip", "netns", "exec", netns]
    tmp = Path(tempfile.mkdtemp(prefix="pyalived-bench-"))
    procs: list[subprocess.Popen[str]] = []
    daemon: subprocess.Popen[bytes] | None = None
    try:
        if netns is not None:
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        procs, ports = start_listeners(args.servers, prefix)
        conf = tmp / "keepalived.conf"
        write_config(conf, ports, args.delay_loop, args.connect_timeout)
        log = open(tmp / "daemon.log", "wb")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        daemon = subprocess.Popen(
            [*prefix, sys.executable, "-m", "pyalived", "-n", "-l", "-C", "-f", str(conf),
             "-p", str(tmp / "pyalived.pid"), "-c", str(tmp / "checkers.pid"),
             "--metrics-listen", "none"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp,
        )
        pid = daemon.pid  # ip netns exec execs the daemon: same pid
        deadline = time.monotonic() + 120
        while not (tmp / "checkers.pid").exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon did not start:\n{(tmp / 'daemon.log').read_text()}")
            time.sleep(0.1)
        time.sleep(args.settle)
        spy = None
        if args.py_spy:
            spy = subprocess.Popen([args.py_spy, "record", "--nonblocking", "-p", str(pid),
                                    "-d", str(int(args.duration)), "-f", "raw",
                                    "-o", args.py_spy_out], stdout=subprocess.DEVNULL)
        cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
        time.sleep(args.duration)
        if spy is not None:
            spy.wait()
        cpu1, t1 = proc_cpu_seconds(pid), time.monotonic()
        rss = proc_rss_mib(pid)
        stamps = collect_stamps(procs, t0, t1)
        window = t1 - t0
        user, system, waited = (b - a for a, b in zip(cpu0, cpu1, strict=True))
        report: dict[str, object] = {
            "mode": "daemon",
            "servers": len(ports),
            "delay_loop_s": args.delay_loop,
            "measured_s": round(window, 2),
            "cpu_percent_of_one_core": round(100 * (user + system) / window, 1),
            "cpu_user_percent": round(100 * user / window, 1),
            "cpu_system_percent": round(100 * system / window, 1),
            # Time the daemon was runnable but had no CPU: the machine's load.
            "waiting_for_cpu_percent": round(100 * waited / window, 1),
            "rss_mib": round(rss, 1),
        }
        checks = lateness_report(stamps, args.delay_loop, window, args.dump_lateness)
        report.update(checks)
        report["cpu_us_per_check"] = round(1e6 * (user + system) / max(1, checks["checks"]), 1)
        report["load_average"] = Path("/proc/loadavg").read_text().split()[:3]
        daemon_log = (tmp / "daemon.log").read_text(errors="replace").splitlines()
        report["daemon_log_lines"] = len(daemon_log)
        return report
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        if netns is not None:
            subprocess.run(["ip", "netns", "delete", netns], check=False)


# ---- the former in-process mode --------------------------------------------------------


def run_inprocess_bench(args: argparse.Namespace) -> dict[str, object]:
    import trio

    from pyalived.checkers.scheduler import CallbackSink, CheckerScheduler, RealServerEvent
    from pyalived.checkers.spec import RealServerSpec, TcpCheck, Timing, VirtualServerSpec

    procs, ports = start_listeners(args.servers, [])
    report: dict[str, object] = {"mode": "inprocess", "servers": len(ports)}

    async def measure() -> None:
        timing = Timing(delay_loop=args.delay_loop)
        servers = tuple(
            RealServerSpec(IPv4Address("127.0.0.1"), p, 1,
                           (TcpCheck(timing=timing, connect_timeout=args.connect_timeout),))
            for p in ports
        )
        lateness: list[float] = []
        recording = False
        down: set[int] = set()

        def on_start(scheduled: float, actual: float) -> None:
            if recording:
                lateness.append(actual - scheduled)

        def on_event(e: RealServerEvent) -> None:
            if e.real_server.port is not None:
                (down.discard if e.alive else down.add)(e.real_server.port)

        sched = CheckerScheduler([VirtualServerSpec("bench", servers)], CallbackSink(on_event),
                                 on_probe_start=on_start)
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.run)
            await trio.sleep(args.settle)
            recording = True
            cpu0, wall0 = time.process_time(), time.monotonic()
            await trio.sleep(args.duration)
            cpu1, wall1 = time.process_time(), time.monotonic()
            recording = False
            nursery.cancel_scope.cancel()
        lat = sorted(lateness)
        report.update({
            "measured_s": round(wall1 - wall0, 2),
            "checks": len(lat),
            "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1),
            "cpu_us_per_check": round(1e6 * (cpu1 - cpu0) / max(1, len(lat)), 1),
            "lateness_p50_ms": round(1000 * percentile(lat, 0.50), 2),
            "lateness_p99_ms": round(1000 * percentile(lat, 0.99), 2),
            "lateness_max_ms": round(1000 * (lat[-1] if lat else float("nan")), 2),
            "rss_mib": round(proc_rss_mib(), 1),
            "servers_down_at_end": len(down),
        })

    try:
        trio.run(measure)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    report["load_average"] = Path("/proc/loadavg").read_text().split()[:3]
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--servers", type=int, default=5000)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    ap.add_argument("--delay-loop", type=float, default=1.0)
    ap.add_argument("--connect-timeout", type=float, default=1.0)
    ap.add_argument("--inprocess", action="store_true",
                    help="run CheckerScheduler in this process instead of the daemon")
    ap.add_argument("--no-netns", action="store_true",
                    help="run in the current network namespace even as root")
    ap.add_argument("--dump-lateness", metavar="FILE",
                    help="write every interval's lateness (seconds, sorted) as JSON")
    ap.add_argument("--py-spy", metavar="EXE", help="sample the daemon with this py-spy")
    ap.add_argument("--py-spy-out", metavar="FILE", default="checkers_scale.folded")
    ap.add_argument("--listener", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.listener:
        listener_main(args.servers)
        return
    raise_nofile(args.servers + 4096)
    report = run_inprocess_bench(args) if args.inprocess else run_daemon_bench(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
