"""Scale benchmark of the health checkers: thousands of TCP_CHECKs on loopback.

Theory of operation: separate listener processes (this script with
``--listener``, up to 10,000 sockets each) open N listening sockets on
127.0.0.1 and accept and close every connection with an epoll loop, so that
only the checking side is measured here.  The checking process runs ``CheckerScheduler`` with one
TCP_CHECK per real server (``delay_loop`` 1 s by default, keepalived's default
warmup spreading the first checks over one ``delay_loop``), lets it settle,
then measures for ``--duration`` seconds: its own CPU time as a percentage of
one core, how late each probe started against its schedule (p50/p99/max),
resident memory, the number of checks done and the number of real servers
reported down (expected 0).

    .venv/bin/python bench/checkers_scale.py --servers 5000 --duration 30
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address

import trio

from pyalived.checkers.scheduler import CallbackSink, CheckerScheduler, RealServerEvent
from pyalived.checkers.spec import RealServerSpec, TcpCheck, Timing, VirtualServerSpec

LISTENERS_PER_PROCESS = 10000


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else max(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def listener_main(count: int) -> None:
    raise_nofile(count + 4096)
    sel = selectors.EpollSelector()
    ports = []
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        ports.append(s.getsockname()[1])
    sys.stdout.write(json.dumps(ports) + "\n")
    sys.stdout.flush()
    while True:
        for key, _ in sel.select():
            lst = key.fileobj
            assert isinstance(lst, socket.socket)
            while True:
                try:
                    conn, _addr = lst.accept()
                except BlockingIOError:
                    break
                conn.close()


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[i]


async def measure(ports: list[int], delay_loop: float, settle: float, duration: float) -> None:
    timing = Timing(delay_loop=delay_loop)
    servers = tuple(
        RealServerSpec(IPv4Address("127.0.0.1"), p, 1, (TcpCheck(timing=timing),)) for p in ports
    )
    vs = VirtualServerSpec("bench", servers)
    lateness: list[float] = []
    recording = False
    down: set[int] = set()

    def on_start(scheduled: float, actual: float) -> None:
        if recording:
            lateness.append(actual - scheduled)

    def on_event(e: RealServerEvent) -> None:
        if e.real_server.port is not None:
            if e.alive:
                down.discard(e.real_server.port)
            else:
                down.add(e.real_server.port)

    sched = CheckerScheduler([vs], CallbackSink(on_event), on_probe_start=on_start)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        rss_start = rss_mib()
        await trio.sleep(settle)
        recording = True
        cpu0, wall0 = time.process_time(), time.monotonic()
        await trio.sleep(duration)
        cpu1, wall1 = time.process_time(), time.monotonic()
        recording = False
        nursery.cancel_scope.cancel()
    lat = sorted(lateness)
    report = {
        "servers": len(ports),
        "delay_loop_s": delay_loop,
        "measured_s": round(wall1 - wall0, 2),
        "checks": len(lat),
        "checks_per_s": round(len(lat) / (wall1 - wall0), 1),
        "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1),
        "lateness_p50_ms": round(1000 * percentile(lat, 0.50), 2),
        "lateness_p99_ms": round(1000 * percentile(lat, 0.99), 2),
        "lateness_max_ms": round(1000 * (lat[-1] if lat else float("nan")), 2),
        "rss_mib_after_start": round(rss_start, 1),
        "rss_mib_end": round(rss_mib(), 1),
        "servers_down_at_end": len(down),
    }
    print(json.dumps(report, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=5000)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds before measuring")
    ap.add_argument("--delay-loop", type=float, default=1.0)
    ap.add_argument("--listener", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.listener:
        listener_main(args.servers)
        return
    raise_nofile(args.servers + 4096)
    # Listeners are spread over several processes: a hard RLIMIT_NOFILE
    # (20000 on the test machines) may be too small for one to hold them all.
    shares = [LISTENERS_PER_PROCESS] * (args.servers // LISTENERS_PER_PROCESS)
    if args.servers % LISTENERS_PER_PROCESS:
        shares.append(args.servers % LISTENERS_PER_PROCESS)
    procs = []
    try:
        for share in shares:
            argv = [
                sys.executable,
                os.path.abspath(__file__),
                "--listener",
                "--servers",
                str(share),
            ]
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
        ports: list[int] = []
        for proc in procs:
            assert proc.stdout is not None
            ports += json.loads(proc.stdout.readline())
        trio.run(measure, ports, args.delay_loop, args.settle, args.duration)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
