"""Benchmark: from a real server's death to its removal from IPVS, pyalived vs keepalived.

Theory of operation: run on the host, it boots the IPVS test VM once
(``tests/kernel/run_vm.py``) and re-runs itself inside with ``--in-vm``.
Inside, one server LAN (a bridge namespace) holds three real servers and two
directors: ``d1`` runs pyalived, ``d2`` keepalived 2.2.7, each with its own
IPVS table (tables are per namespace) and the same configuration: one
virtual service per checker kind -- DNS_CHECK (UDP 53), UDP_CHECK with
``require_reply`` (UDP 7), SMTP_CHECK (TCP 25), TCP_CHECK (TCP 80) over rs1
and rs2, PING_CHECK (TCP 8080) over rs1 and rs3 -- all with the same
``delay_loop``, ``retry``, ``delay_before_retry`` and ``connect_timeout``.
rs1 and rs2 serve DNS, echo, SMTP and TCP from threads of this process whose
sockets were opened inside their namespaces (the servers of
``tests/kernel/test_lvs_net_checkers.py``).

Each round kills at one instant rs2's four services (their sockets close:
connections are refused, datagrams draw port unreachable) and rs3 as a host
(its leg on the bridge goes down: pings go unanswered).  One thread per
director reads its table back to back over generic netlink (what ``ipvsadm
-Ln`` reads, without starting a process per read); a removal is timed at the
midpoint between the start of the last read that still showed the real server
and the end of the first read that did not (the printed resolution is the
median width of that window).  Then everything comes back,
both tables are whole again, and the next round starts a fraction of a
``delay_loop`` later than the one before, so that the deaths fall at spread
phases of the checkers' cycles.  Both daemons see the same deaths at the
same moments, on the same emulated CPUs.  Every namespace is removed at the
end, also on failure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DELAY_LOOP = 2
RETRY = 1
DELAY_BEFORE_RETRY = 1
CONNECT_TIMEOUT = 2

RS1, RS2, RS3 = "198.19.0.21", "198.19.0.22", "198.19.0.23"
VIP = "198.18.0.100"
# (label, ipvsadm service, checker block lines, real servers, the one that dies)
KINDS = (
    ("DNS_CHECK", f"UDP {VIP}:53", ("type A", "name ns.test"), (RS1, RS2), RS2),
    ("UDP_CHECK", f"UDP {VIP}:7", ("payload 01 02 03", "require_reply 010203"), (RS1, RS2), RS2),
    ("SMTP_CHECK", f"TCP {VIP}:25", ("helo_name director.test",), (RS1, RS2), RS2),
    ("TCP_CHECK", f"TCP {VIP}:80", (), (RS1, RS2), RS2),
    ("PING_CHECK", f"TCP {VIP}:8080", (), (RS1, RS3), RS3),
)
PORTS = {"DNS_CHECK": 53, "UDP_CHECK": 7, "SMTP_CHECK": 25, "TCP_CHECK": 80, "PING_CHECK": 80}
PROTOCOLS = {"DNS_CHECK": "UDP", "UDP_CHECK": "UDP"}


def config(router_id: str) -> str:
    """The configuration both directors run (only ``router_id`` differs)."""
    timing = (f"connect_timeout {CONNECT_TIMEOUT}", f"retry {RETRY}",
              f"delay_before_retry {DELAY_BEFORE_RETRY}", f"delay_loop {DELAY_LOOP}", "warmup 0")
    out = [f"global_defs {{\n    router_id {router_id}\n}}\n"]
    for kind, service, lines, servers, _ in KINDS:
        body = "".join(f"\n            {line}" for line in (*lines, *timing))
        reals = "".join(f"""
    real_server {ip} {PORTS[kind]} {{
        weight 1
        {kind} {{{body}
        }}
    }}""" for ip in servers)
        port = service.rsplit(":", 1)[1]
        out.append(f"""
virtual_server {VIP} {port} {{
    lb_algo rr
    lb_kind NAT
    protocol {PROTOCOLS.get(kind, "TCP")}{reals}
}}
""")
    return "".join(out)


def summary(samples: list[float]) -> tuple[float, float]:
    """(median, maximum) of the samples."""
    return statistics.median(samples), max(samples)


class Watcher:
    """Reads one director's table back to back and times each dead server's removal."""

    def __init__(self, ns: str) -> None:
        from pyalived.ipvs.netlink import NetlinkIpvs
        from tests.kernel.netns import in_netns

        # A generic netlink socket opened in the director's namespace reads its
        # table in a fraction of the time an ipvsadm process takes to start.
        self.ipvs = in_netns(ns, lambda: NetlinkIpvs(load_module=False))
        self.widths: list[float] = []

    def table(self) -> dict[str, set[str]]:
        """{"UDP VIP:53": {destination addresses}} as ``ipvsadm -Ln`` would show it."""
        out: dict[str, set[str]] = {}
        for key, entry in self.ipvs.dump().items():
            proto = {6: "TCP", 17: "UDP"}.get(key.protocol, str(key.protocol))
            out[f"{proto} {key.address}:{key.port}"] = {str(d.address) for d in entry.dests}
        return out

    def removals(self, killed: float, timeout: float) -> dict[str, float]:
        """Seconds from ``killed`` to each dead real server's removal, by checker kind."""
        last_present = {kind: killed for kind, *_ in KINDS}
        found: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(KINDS) and time.monotonic() < deadline:
            start = time.monotonic()
            table = self.table()
            end = time.monotonic()
            for kind, service, _, _, dead in KINDS:
                if kind in found:
                    continue
                if dead in table.get(service, set()):
                    last_present[kind] = start
                else:
                    found[kind] = (last_present[kind] + end) / 2 - killed
                    self.widths.append(end - last_present[kind])
        return found

    def whole(self) -> bool:
        table = self.table()
        return all(set(servers) <= table.get(service, set())
                   for _, service, _, servers, _ in KINDS)


def in_vm(rounds: int) -> int:
    from tests.kernel.test_lvs_e2e import NamedServer, Topology, settle
    from tests.kernel.test_lvs_net_checkers import RealServers

    impls = {"d1": "pyalived", "d2": "keepalived"}
    results: dict[str, dict[str, list[float]]] = {
        impl: {kind: [] for kind, *_ in KINDS} for impl in impls.values()}
    with tempfile.TemporaryDirectory(prefix="pyalived-rmbench-") as d:
        topo = Topology(Path(d))
        servers: list[RealServers] = []
        tcp: NamedServer | None = None
        watchers: dict[str, Watcher] = {}
        try:
            sbr = topo.bridge("sbr")
            for i, role in enumerate(impls, start=1):
                topo.add(role)
                topo.attach(role, "eth1", sbr, f"198.19.0.{10 + i}")
            for role, ip in (("rs1", RS1), ("rs2", RS2), ("rs3", RS3)):
                topo.add(role)
                topo.attach(role, "eth0", sbr, ip)
            servers = [RealServers(topo.ns("rs1"), RS1).start(),
                       RealServers(topo.ns("rs2"), RS2).start()]
            topo.serve("rs1", RS1, 80, "rs1").start()
            tcp = topo.serve("rs2", RS2, 80, "rs2").start()
            for role, impl in impls.items():
                topo.start_daemon(role, config(role), impl=impl)
            watchers.update({impl: Watcher(topo.ns(role)) for role, impl in impls.items()})
            settle(topo, "both tables whole", lambda: all(w.whole() for w in watchers.values()),
                   timeout=180)
            print(f"delay_loop {DELAY_LOOP}, retry {RETRY}, delay_before_retry "
                  f"{DELAY_BEFORE_RETRY}, connect_timeout {CONNECT_TIMEOUT}; {rounds} rounds",
                  flush=True)
            bound = DELAY_LOOP + (RETRY + 1) * (CONNECT_TIMEOUT + DELAY_BEFORE_RETRY) + 10
            for n in range(rounds):
                time.sleep(DELAY_LOOP * n / rounds)
                killed = time.monotonic()
                servers[1].stop()
                tcp.stop()
                topo.set_leg(sbr, "rs3", "eth0", up=False)
                got: dict[str, dict[str, float]] = {}

                def watch(impl: str, w: Watcher, at: float = killed,
                          got: dict[str, dict[str, float]] = got) -> None:
                    got[impl] = w.removals(at, bound)

                threads = [threading.Thread(target=watch, args=item) for item in watchers.items()]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                line = []
                for impl in impls.values():
                    for kind, *_ in KINDS:
                        if kind not in got[impl]:
                            raise RuntimeError(f"{impl}: {kind} did not remove its dead real "
                                               f"server within {bound} s\n{topo.logs()}")
                        results[impl][kind].append(got[impl][kind])
                    line.append(impl + " " + " ".join(
                        f"{kind.split('_')[0]} {got[impl][kind]:.2f}" for kind, *_ in KINDS))
                print(f"round {n + 1}: " + "; ".join(line), flush=True)
                servers[1].start()
                tcp.start()
                topo.set_leg(sbr, "rs3", "eth0", up=True)
                settle(topo, "both tables whole again",
                       lambda: all(w.whole() for w in watchers.values()))
            widths = [x for w in watchers.values() for x in w.widths]
            print(f"\ntable read resolution: median {statistics.median(widths) * 1000:.0f} ms")
            print("\nseconds from death to removal, median / max")
            print(f"{'checker':<12}{'pyalived':>16}{'keepalived 2.2.7':>20}")
            for kind, *_ in KINDS:
                cells = [summary(results[impl][kind]) for impl in impls.values()]
                text = [f"{med:.2f} / {top:.2f}" for med, top in cells]
                print(f"{kind:<12}{text[0]:>16}{text[1]:>20}")
        finally:
            for s in servers:
                s.stop()
            for w in watchers.values():
                w.ipvs.close()
            topo.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--in-vm", action="store_true", help="run the measurement here")
    ap.add_argument("--rounds", type=int, default=7)
    ns = ap.parse_args()
    if ns.in_vm:
        return in_vm(ns.rounds)
    from tests.kernel import run_vm

    return run_vm.run(f"python bench/checker_removal.py --in-vm --rounds {ns.rounds}",
                      timeout=1500)


if __name__ == "__main__":
    sys.exit(main())
