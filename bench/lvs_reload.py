"""Reload benchmark of the LVS half: the largest reported configuration, reloaded.

Theory of operation: ``generate`` writes keepalived.conf text shaped like the
largest deployment reported to keepalived: 2,277 ``virtual_server`` blocks
holding 37,205 ``real_server`` blocks between them (spread as evenly as the
division allows), every real server with a ``TCP_CHECK``, every virtual
server with ``delay_loop 10`` (the default ``warmup`` spreading the first
checks over one ``delay_loop``).  Addresses are in 198.18.0.0/15 and are
never contacted: the checks go to a fake prober that answers at once through
the scheduler's fast path, as a loopback connect does, and that refuses every
``--dead-every``-th real server, so that some real servers are DOWN when the
configuration is reloaded.  The IPVS table is a fake kernel (a dict with the
kernel's semantics, ``pyalived.ipvs.model.apply_ops``) behind the real
``IpvsTableManager`` and its worker thread; ``--no-ipvs`` runs without one,
as on a kernel without IPVS.

The text is written to one file and loaded with ``pyalived.config.load``
three times, as a reload re-reads the same file: the running configuration,
an identical copy (equal, but made of new objects, as after a SIGHUP that
changed nothing) and one whose every ``delay_loop`` is ``--new-delay-loop``.
Loading is timed apart and is not part of any reload figure.  The service
then starts, runs ``--settle`` seconds of trio's real clock so that every
checker has probed and the dead real servers are DOWN, and is measured:

* (a) ``LvsService.apply`` of the identical configuration, and the whole
  reload path minus parsing (the daemon's SIGHUP handler, ``_reload``, with
  a loader that returns the already loaded copy), ``--repeat`` times each;
* (b) ``LvsService.apply`` of the configuration with every ``delay_loop``
  changed, then of the original again, ``--repeat`` times.

With ``--gc-freeze`` the objects alive once the service has started, and after
each reload, are frozen (``gc.freeze``), as a daemon may do so that no full
collection of the garbage collector scans a configuration this large.

Reported: the median and minimum wall time of each, the longest time the
event loop went without a turn during them (a heartbeat task asks for one
every millisecond: checkers, and VRRP when both halves share the process,
wait that long), the reload's log line (kept / started / stopped), whether
every real server kept its state (the number of live real servers before
and after, and whether the fake table ever gained a dead real server again),
and how the checkers' next probes are spread right before and right after
the first (b) reload (``LvsService.next_checks``): the most of them due in
one 10 ms step of the checkers' timer grid within the next ``delay_loop``.
A reload that made every checker probe at once would show there.  The
script prints numbers; it asserts nothing.

    .venv/bin/python bench/lvs_reload.py --repeat 5
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from config_scale import virtual_servers_text  # noqa: E402

from pyalived.checkers.policy import ProbeResult  # noqa: E402
from pyalived.checkers.service import LvsService  # noqa: E402
from pyalived.checkers.spec import CheckerSpec, RealServerSpec  # noqa: E402
from pyalived.config import load  # noqa: E402
from pyalived.config.model import Config  # noqa: E402
from pyalived.ipvs.model import (  # noqa: E402
    AddDest,
    EditDest,
    Op,
    ServiceEntry,
    ServiceKey,
    apply_ops,
)
from pyalived.ipvs.netlink import (  # noqa: E402
    IpvsTableManager,
    IpvsUnavailable,
    OpFailure,
)

VIRTUAL_SERVERS = 2277
REAL_SERVERS = 37205
SLOT = 0.01  # the checkers' timer grid (``pyalived.checkers.service.CHECK_TIMER_GRANULARITY``)

def generate(
    delay_loop: float = 10,
    virtual_servers: int = VIRTUAL_SERVERS,
    real_servers: int = REAL_SERVERS,
) -> str:
    """keepalived.conf text of the benchmark's shape: ``bench/config_scale.py``'s blocks."""
    head = "global_defs {\n    router_id LVS_RELOAD\n}\n"
    return head + virtual_servers_text(virtual_servers, real_servers, delay_loop)


def _index(ip: IPv4Address | IPv6Address) -> int:
    """The ``n`` of ``_address('198.19', n)``."""
    b = ip.packed
    return b[2] * 254 + b[3] - 1


class FakeProber:
    """Answers at once (fast path); every ``dead_every``-th real server refuses."""

    def __init__(self, dead_every: int) -> None:
        self.dead_every = dead_every
        self._ok = ProbeResult(True, "connected")
        self._refused = ProbeResult(False, "connection refused")

    def dead(self, ip: IPv4Address | IPv6Address) -> bool:
        return self.dead_every > 0 and _index(ip) % self.dead_every == 0

    def result(self, rs: RealServerSpec) -> ProbeResult:
        return self._refused if self.dead(rs.ip) else self._ok

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        return self.result(rs)

    def starter(self, spec: CheckerSpec, rs: RealServerSpec) -> Callable[[], ProbeResult]:
        result = self.result(rs)
        return lambda: result


class FakeKernel:
    """An IPVS table with the kernel's semantics; records dests added or edited."""

    def __init__(self, prober: FakeProber) -> None:
        self.table: dict[ServiceKey, ServiceEntry] = {}
        self.prober = prober
        self.revived = 0  # a dead real server added or edited with a weight > 0

    def dump(self) -> dict[ServiceKey, ServiceEntry]:
        return dict(self.table)

    def execute(self, ops: Sequence[Op]) -> list[OpFailure]:
        for op in ops:
            if isinstance(op, AddDest | EditDest) and op.dest.weight > 0:
                if self.prober.dead(op.dest.key.address):
                    self.revived += 1
        self.table = apply_ops(self.table, ops)  # the manager is its only writer
        return []

    def close(self) -> None:
        pass


class LastLine(logging.Handler):
    """Keeps the last message of a logger (the reload's summary line)."""

    def __init__(self) -> None:
        super().__init__()
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("reload: real server"):
            self.message = record.getMessage()


def busiest_slot(due: Sequence[float], t0: float, t1: float) -> int:
    """The most of ``due`` in one step of the timer grid within [t0, t1)."""
    slots = Counter(math.ceil(t / SLOT) for t in due if t0 <= t < t1)
    return max(slots.values(), default=0)


class Heartbeat:
    """Asks for a turn of the event loop every millisecond; records the longest wait."""

    def __init__(self) -> None:
        self.longest = 0.0

    async def run(self) -> None:
        while True:
            t = time.perf_counter()
            await trio.sleep(0.001)
            self.longest = max(self.longest, time.perf_counter() - t - 0.001)


def summary(times: Sequence[float]) -> str:
    return f"median {statistics.median(times):.3f} s, min {min(times):.3f} s (n={len(times)})"


def load_config(path: Path, text: str) -> tuple[Config, Any, float]:
    path.write_text(text)
    t = time.perf_counter()
    result = load(str(path), interface_exists=lambda name: True)
    took = time.perf_counter() - t
    if result.config is None:
        raise SystemExit("\n".join(str(d) for d in result.diagnostics))
    return result.config, result, took


async def run(args: argparse.Namespace) -> None:
    from pyalived.daemon import _reload
    from pyalived.metrics import Metrics
    from pyalived.sdnotify import Notifier
    from pyalived.vrrp.counters import VrrpCounters

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keepalived.conf"
        base, _, t_load = load_config(
            path, generate(args.delay_loop, args.virtual_servers, args.real_servers)
        )
        same, same_result, _ = load_config(
            path, generate(args.delay_loop, args.virtual_servers, args.real_servers)
        )
        changed, _, _ = load_config(
            path, generate(args.new_delay_loop, args.virtual_servers, args.real_servers)
        )
    print(f"configuration: {len(base.virtual_servers)} virtual servers, "
          f"{sum(len(v.real_servers) for v in base.virtual_servers)} real servers; "
          f"one load takes {t_load:.2f} s (not counted below)")

    prober = FakeProber(args.dead_every)
    kernel = FakeKernel(prober)

    def no_ipvs() -> FakeKernel:
        raise IpvsUnavailable("no IPVS (benchmark)")

    manager = IpvsTableManager(no_ipvs if args.no_ipvs else (lambda: kernel))
    svc = LvsService(base, prober=prober, manager=manager, rng=random.Random(1))
    summary_line = LastLine()
    logging.getLogger("pyalived.lvs").addHandler(summary_line)

    def alive() -> int:
        return sum(1 for st in svc.real_servers() if st.alive)

    heartbeat = Heartbeat()
    stalls: list[float] = []

    async def timed(step: Callable[[], Awaitable[object]]) -> float:
        heartbeat.longest = 0.0
        t = time.perf_counter()
        await step()
        took = time.perf_counter() - t
        stalls.append(heartbeat.longest)
        if args.gc_freeze:
            gc.freeze()
        return took

    def stalled() -> str:
        longest = max(stalls)
        stalls.clear()
        return f"longest event-loop stall {1000 * longest:.0f} ms"

    async with trio.open_nursery() as nursery:
        t_start = await timed(lambda: nursery.start(svc.run))
        print(f"start: {t_start:.2f} s"
              + (" (without IPVS)" if svc.ipvs_unavailable else " (fake IPVS table)"))
        nursery.start_soon(heartbeat.run)
        if args.gc_freeze:
            gc.freeze()
        await trio.sleep(args.settle)
        heartbeat.longest = 0.0
        await trio.sleep(args.delay_loop)
        print(f"no reload ({args.delay_loop:g} s): longest event-loop stall "
              f"{1000 * heartbeat.longest:.0f} ms")
        live = alive()
        dead = sum(1 for st in svc.real_servers() if prober.dead(st.real_server.ip))
        print(f"after {args.settle + args.delay_loop:g} s: {live} real servers alive, "
              f"{dead} dead ones DOWN: "
              f"{len(svc.real_servers()) - live == dead}")
        revived_before = kernel.revived

        # The service keeps the blocks it has when they compare equal, so each
        # apply of ``same`` compares new objects with the running ones.
        apply_times = []
        for _ in range(args.repeat):
            apply_times.append(await timed(lambda: svc.apply(same)))
        print(f"(a) apply, identical configuration: {summary(apply_times)}; {stalled()}")
        print(f"    {summary_line.message}")

        notifier, metrics = Notifier(None), Metrics(VrrpCounters())

        async def loader() -> Any:
            return same_result

        path_times = []
        for _ in range(args.repeat):
            path_times.append(await timed(
                lambda: _reload(None, svc, loader, notifier, metrics, 30.0)
            ))
        print(f"(a) whole reload path minus parsing, identical configuration: "
              f"{summary(path_times)}; {stalled()}")

        # (b) every delay_loop changed, then back, --repeat times.  (Versions
        # without ``next_checks`` show no spread.)
        next_checks: Callable[[], list[float]] = getattr(svc, "next_checks", list)
        now = trio.current_time()
        before = busiest_slot(next_checks(), now, now + args.delay_loop)
        change_times = [await timed(lambda: svc.apply(changed))]
        message = summary_line.message
        now = trio.current_time()
        after = busiest_slot(next_checks(), now, now + args.new_delay_loop)
        for i in range(1, args.repeat):
            target = base if i % 2 else changed
            change_times.append(await timed(lambda target=target: svc.apply(target)))
        print(f"(b) apply, every delay_loop {args.delay_loop:g} -> {args.new_delay_loop:g} "
              f"and back: {summary(change_times)}; {stalled()}")
        print(f"    first one: {message}")
        print(f"    real servers alive: {live} before, {alive()} after; "
              f"dead ones added back to the IPVS table: {kernel.revived - revived_before}")
        print(f"    next probes due in one 10 ms step, at most: {before} before the reload "
              f"(next {args.delay_loop:g} s), {after} after it (next {args.new_delay_loop:g} s)")
        nursery.cancel_scope.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--virtual-servers", type=int, default=VIRTUAL_SERVERS)
    ap.add_argument("--real-servers", type=int, default=REAL_SERVERS)
    ap.add_argument("--delay-loop", type=float, default=10.0)
    ap.add_argument("--new-delay-loop", type=float, default=20.0)
    ap.add_argument("--dead-every", type=int, default=50,
                    help="every N-th real server refuses its checks (0: none)")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds between start and the first reload "
                         "(default: enough for every check and retry: 2 x delay_loop + 2)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-ipvs", action="store_true", help="run without an IPVS table")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() once the service has started, and after each reload "
                         "(no full collection then scans the configuration)")
    args = ap.parse_args()
    if args.settle is None:
        args.settle = 2 * args.delay_loop + 2
    logging.basicConfig(level=logging.ERROR)
    lvs_log = logging.getLogger("pyalived.lvs")
    lvs_log.setLevel(logging.INFO)
    lvs_log.propagate = False  # only the reload summary is kept (``LastLine``)
    trio.run(run, args)


if __name__ == "__main__":
    main()
