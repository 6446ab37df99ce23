"""Failover benchmark: VRRP timings measured on the wire, plus memory and start-up.

Theory of operation: everything is timed from the kernel timestamps of a
capture on the lab bridge (``pyalived.lab``), never from the benchmark's own
clock, so the numbers are what a host on the LAN would see.

* Cut-off failover (``--rounds`` rounds): routers at priority 100 and 90,
  advert_int 1; the master is cut off the LAN.  Measured: the backup's first
  advert minus the master's last one, divided by the RFC 3768 §6.1
  Master_Down_Interval 3 * 1 + (256 - 90) / 256 = 3.6484375 s (target
  <= 1.001), and the delay from that first advert to the first gratuitous
  ARP (§6.4.1, target <= 1 ms).  The master is then reconnected and preempts.
* Graceful stop (``--graceful`` rounds): the master gets SIGTERM, sends a
  priority-0 advert (§6.4.3 Shutdown) and the backup becomes master after
  Skew_Time = (256 - 90) / 256 s (§6.4.2).  Measured: priority-0 advert to
  the backup's first advert, relative to Skew_Time (target <= 1.001).
* Idle footprint: a lone daemon configured ``state MASTER`` with one
  instance; the time from process start to its first advert and, after it
  has settled, the resident memory (RSS) of every process in its namespace.

Targets are judged on the median of the rounds, the maximum is printed too.
``--impl keepalived`` runs the same with keepalived 2.2.7 for comparison.
Needs root, iproute2 and tcpdump.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyalived.lab import (
    VIP,
    Event,
    Impl,
    Lab,
    VrrpSpec,
    adverts,
    garps,
    render_config,
)

BACKUP_PRIORITY = 90
SKEW = (256 - BACKUP_PRIORITY) / 256
MASTER_DOWN = 3 * 1.0 + SKEW  # 3.6484375
TIMEOUT = 30.0


Predicate = Callable[[list[Event]], list[Event]]


def adverts_from(src: str, after: float, zero: bool | None = None) -> Predicate:
    """Capture predicate: adverts from ``src`` later than ``after``; ``zero`` filters on
    priority 0 (True), non-zero (False) or neither (None)."""
    def pick(events: list[Event]) -> list[Event]:
        return [e for e in adverts(events, src=src, after=after)
                if zero is None or (e.priority == 0) == zero]
    return pick


def garps_after(after: float) -> Predicate:
    def pick(events: list[Event]) -> list[Event]:
        return garps(events, ip=VIP, after=after)
    return pick


def summary(values: list[float]) -> str:
    if not values:
        return "no data"
    return (f"min {min(values):.4f}  median {statistics.median(values):.4f}  "
            f"max {max(values):.4f}  (n={len(values)})")


def verdict(values: list[float], target: float) -> str:
    """Judged on the median: single rounds are at the mercy of the machine's load."""
    if not values:
        return "no data"
    return "median meets it" if statistics.median(values) <= target else "median MISSES it"


def config(name: str, priority: int, state: str = "BACKUP") -> str:
    return render_config(name, [VrrpSpec(priority=priority, state=state, advert_int=1)])


def bench_idle(impl: Impl, starts: int) -> dict[str, float]:
    """Start-up to first advert (median of ``starts``) and idle RSS of a lone master."""
    delays = []
    rss = 0
    with Lab(1) as lab:
        (node,) = lab.routers
        cap = lab.capture("idle")
        for attempt in range(starts):
            proc = lab.start_daemon(node, config("solo", 100, state="MASTER"), impl)
            first = cap.wait_for(
                adverts_from(node.ip, proc.started_at),
                TIMEOUT, what="a first advert")[0]
            delays.append(first.time - proc.started_at)
            if attempt == starts - 1:
                time.sleep(3.0)  # settled: a few adverts sent, GARP burst over
                rss = lab.rss_kib(node)
            lab.stop_daemon(node)
    return {"startup_s": statistics.median(delays), "rss_kib": rss}


def bench_failover(impl: Impl, rounds: int, graceful: int) -> dict[str, list[float]]:
    ratios: list[float] = []
    garp_ms: list[float] = []
    skew_ratios: list[float] = []
    with Lab(2) as lab:
        r1, r2 = lab.routers
        cap = lab.capture("failover")
        lab.start_daemon(r1, config("r1", 100), impl)
        lab.start_daemon(r2, config("r2", BACKUP_PRIORITY), impl)
        lab.wait_sole_holder(r1, VIP, TIMEOUT)
        for n in range(1, rounds + 1):
            # Let r1 advertise a little so its "last advert" is a steady-state one.
            settle = time.time()
            cap.wait_for(adverts_from(r1.ip, settle), TIMEOUT)
            lab.cut(r1)
            cut_at = time.time()
            first = cap.wait_for(
                adverts_from(r2.ip, cut_at, zero=False),
                TIMEOUT, what="the backup's first advert")[0]
            gratuitous = cap.wait_for(
                garps_after(first.time - 0.001), TIMEOUT,
                what="a gratuitous ARP")[0]
            last = adverts(cap.events(), src=r1.ip)[-1]
            ratio = (first.time - last.time) / MASTER_DOWN
            ratios.append(ratio)
            garp_ms.append((gratuitous.time - first.time) * 1000)
            print(f"  cut-off round {n:2d}: {first.time - last.time:.4f} s = {ratio:.5f} x "
                  f"Master_Down_Interval, GARP +{garp_ms[-1]:.3f} ms", flush=True)
            lab.reconnect(r1)
            lab.wait_sole_holder(r1, VIP, TIMEOUT)
        for n in range(1, graceful + 1):
            settle = time.time()
            cap.wait_for(adverts_from(r1.ip, settle), TIMEOUT)
            lab.stop_daemon(r1)
            zero = cap.wait_for(
                adverts_from(r1.ip, settle, zero=True),
                TIMEOUT, what="a priority-0 advert")[0]
            first = cap.wait_for(
                adverts_from(r2.ip, zero.time, zero=False),
                TIMEOUT, what="the backup's first advert")[0]
            skew_ratios.append((first.time - zero.time) / SKEW)
            print(f"  graceful round {n}: {first.time - zero.time:.4f} s = "
                  f"{skew_ratios[-1]:.5f} x Skew_Time", flush=True)
            lab.start_daemon(r1, config("r1", 100), impl)
            lab.wait_sole_holder(r1, VIP, TIMEOUT)
    return {"master_down_ratio": ratios, "garp_delay_ms": garp_ms, "skew_ratio": skew_ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="VRRP failover benchmark on a namespace lab")
    parser.add_argument("--impl", choices=["pyalived", "keepalived"], default="pyalived")
    parser.add_argument("--rounds", type=int, default=10, help="cut-off rounds (default 10)")
    parser.add_argument("--graceful", type=int, default=3, help="SIGTERM rounds (default 3)")
    parser.add_argument("--starts", type=int, default=3, help="start-up samples (default 3)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces)", file=sys.stderr)
        return 2
    impl: Impl = args.impl
    began = time.monotonic()
    print(f"Failover benchmark, {impl}: priorities 100/90, advert_int 1, "
          f"Master_Down_Interval {MASTER_DOWN} s, Skew_Time {SKEW} s")
    try:
        idle = bench_idle(impl, args.starts)
        print(f"  start-up to first advert (state MASTER, median of {args.starts}): "
              f"{idle['startup_s']:.4f} s; idle RSS {idle['rss_kib'] / 1024:.1f} MiB", flush=True)
        runs = bench_failover(impl, args.rounds, args.graceful)
    except Exception as exc:  # report and fail instead of a traceback
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    ratios, garp, skew = runs["master_down_ratio"], runs["garp_delay_ms"], runs["skew_ratio"]
    print(f"\nResults ({impl}, {time.monotonic() - began:.0f} s):")
    print(f"  cut-off failover / Master_Down_Interval: {summary(ratios)}  "
          f"target <= 1.001: {verdict(ratios, 1.001)}")
    print(f"  first advert -> first GARP (ms):         {summary(garp)}  "
          f"target <= 1 ms: {verdict(garp, 1.0)}")
    print(f"  graceful takeover / Skew_Time:           {summary(skew)}  "
          f"target <= 1.001: {verdict(skew, 1.001)}")
    print(f"  start-up to first advert:                {idle['startup_s']:.4f} s")
    print(f"  idle resident memory:                    {idle['rss_kib'] / 1024:.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"impl": impl, **idle, **runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
