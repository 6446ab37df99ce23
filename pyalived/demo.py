"""``python -m pyalived.demo``: watch a VRRP failover happen, in throwaway namespaces.

Theory of operation: the demo builds a ``pyalived.lab.Lab`` with two router
namespaces on one bridge, starts one daemon per router from the configs in
etc/demo/ (priorities 100 and 90, VIP 198.18.0.100) and captures the LAN on
the bridge.  Once a master holds the VIP it cuts that router off the LAN and
prints, from the capture's kernel timestamps, the old master's last advert,
the new master's first advert (RFC 3768 §6.4.2: one Master_Down_Interval,
3 * Advertisement_Interval + Skew_Time, later) and its gratuitous ARPs
(§6.4.1), then reconnects the router and shows it preempting back.  Leaving
the lab removes every namespace and process, also on Ctrl-C or an error.
Needs root, iproute2 and tcpdump.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from pyalived.lab import (
    REPO_ROOT,
    VIP,
    AdvertKind,
    Capture,
    Event,
    GarpKind,
    Impl,
    Lab,
    LabError,
    Node,
    adverts,
    garps,
    wait_for,
)

DEMO_DIR = REPO_ROOT / "etc" / "demo"
PRIORITIES = {"r1": 100, "r2": 90}
ADVERT_INT = 1.0


def master_down_interval(priority: int) -> float:
    """RFC 3768 §6.1: 3 * Advertisement_Interval + (256 - Priority) / 256."""
    return 3 * ADVERT_INT + (256 - priority) / 256


class Narrator:
    """Prints capture events as they arrive, relative to a reference time."""

    def __init__(self, lab: Lab, cap: Capture, t0: float) -> None:
        self.lab, self.cap, self.t0 = lab, cap, t0
        self.seen = 0

    def describe(self, event: Event) -> str:
        node = self.lab.router_by_ip(event.src)
        who = f"{node.name} ({event.src})" if node else event.src
        if isinstance(event.kind, AdvertKind):
            return f"{who} advert, VRID {event.kind.vrid}, priority {event.kind.priority}"
        if isinstance(event.kind, GarpKind):
            return f"gratuitous ARP: {event.kind.ip} is at {event.src_mac}"
        return f"ARP {event.src} -> {event.dst}"

    def flush(self) -> None:
        events = [e for e in self.cap.events() if e.is_advert or e.is_garp]
        for event in events[self.seen:]:
            if event.time >= self.t0 - 1.5:
                print(f"  {event.time - self.t0:+8.4f} s  {self.describe(event)}")
        self.seen = len(events)

    def follow(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.flush()
            time.sleep(0.1)
        self.flush()


def master_of(lab: Lab) -> Node | None:
    holders = lab.holders(VIP)
    return holders[0] if len(holders) == 1 else None


def settled_master(lab: Lab, hold: float = 3.0, timeout: float = 40.0) -> Node:
    """The router that has held the VIP alone for ``hold`` seconds.

    A router whose daemon happened to start first may become master briefly
    before the higher priority one preempts it; the demo waits that out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        candidate = wait_for(lambda: master_of(lab), timeout, what="a master")
        stable_until = time.monotonic() + hold
        while time.monotonic() < stable_until and master_of(lab) is candidate:
            time.sleep(0.1)
        if master_of(lab) is candidate:
            return candidate
    raise LabError(f"no stable master within {timeout} s")


def run(impl: Impl) -> int:
    print(f"Building a lab: one bridge, two routers running {impl} (configs in {DEMO_DIR})")
    with Lab(2) as lab:
        for node in lab.routers:
            print(f"  {node.name}: namespace {node.ns}, eth0 {node.ip}, "
                  f"priority {PRIORITIES[node.name]}")
        cap = lab.capture()
        for node in lab.routers:
            lab.start_daemon(node, DEMO_DIR / f"{node.name}.conf", impl)
        print(f"\nWaiting for the election (a backup waits {master_down_interval(100):.3f} s "
              "before declaring itself master)...")
        master = settled_master(lab)
        backup = next(n for n in lab.routers if n is not master)
        print(f"MASTER: {master.name} holds {VIP}; BACKUP: {backup.name}")

        print(f"\nCutting {master.name} off the LAN (its bridge port goes down). On the wire:")
        cut_at = time.time()
        narrator = Narrator(lab, cap, cut_at)
        narrator.seen = len([e for e in cap.events() if e.is_advert or e.is_garp])
        narrator.flush()
        lab.cut(master)
        wait_for(lambda: master_of(lab) is backup, 30.0, what=f"{backup.name} to take over")
        narrator.follow(1.0)

        events = cap.events()
        last_old = adverts(events, src=master.ip)[-1]
        first_new = adverts(events, src=backup.ip, after=cut_at)[0]
        announced = garps(events, ip=VIP, after=first_new.time - 0.001)
        expected = master_down_interval(PRIORITIES[backup.name])
        print(f"\nFailover: {backup.name} is MASTER.")
        print(f"  last advert from {master.name}:      t = {last_old.time - cut_at:+.4f} s")
        print(f"  first advert from {backup.name}:     t = {first_new.time - cut_at:+.4f} s"
              f"  ({first_new.time - last_old.time:.4f} s later;"
              f" Master_Down_Interval = {expected:.4f} s)")
        if announced:
            print(f"  first gratuitous ARP:         "
                  f"{(announced[0].time - first_new.time) * 1000:.2f} ms after that advert"
                  f" ({len(announced)} so far)")

        print(f"\nReconnecting {master.name}: with the higher priority it preempts.")
        back_at = time.time()
        narrator.t0 = back_at
        lab.reconnect(master)
        wait_for(lambda: master_of(lab) is master, 30.0, what=f"{master.name} to return")
        narrator.follow(1.0)
        print(f"MASTER again: {master.name} holds {VIP}.")
        print("\nCleaning up: stopping daemons, deleting namespaces.")
    print("Done.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyalived.demo", description=__doc__.split(
        "\n\n")[0] if __doc__ else None)
    parser.add_argument("--impl", choices=["pyalived", "keepalived"], default="pyalived",
                        help="daemon to run on the routers (default: pyalived)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        return run(args.impl)
    except LabError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
