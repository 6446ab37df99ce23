"""IPVS statistics against the real kernel: decoded counters equal ipvsadm's, metrics show them.

Topology (three namespaces, veth pairs, addresses from 198.18.0.0/15)::

    client 198.18.4.2 --- 198.18.4.1 director 198.18.3.1 --- 198.18.3.2 real server
                          (VIP 198.18.1.1 on lo, IPVS NAT)

The director's IPVS table is programmed by ``LvsService`` (the daemon's
applier); the client opens TCP connections to the VIP, the real server
answers, and the counters read back by ``NetlinkIpvs.dump_detailed`` must
equal ``ipvsadm -Ln --stats --exact`` and ``ipvsadm -Ln`` (connection counts)
and appear in the metrics exposition.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from pyalived.checkers.service import LvsService
from pyalived.config import load
from pyalived.ipvs.model import ServiceKey
from pyalived.ipvs.netlink import NetlinkIpvs, ServiceDump
from pyalived.metrics import Metrics
from pyalived.vrrp.counters import VrrpCounters
from tests.kernel.netns import in_netns, netns, sh

pytestmark = pytest.mark.kernel

VIP = "198.18.1.1"
RS = "198.18.3.2"
CLIENT = "198.18.4.2"
PORT = 80
REQUEST = b"x" * 3000  # more than one segment on the veth (MTU 1500)
ANSWER = b"y" * 5000
CONNECTIONS = 4
STEADY = 3.0  # seconds without counter changes: more than one estimator tick (2 s)


@dataclass
class Lab:
    client: str
    director: str
    server: str


def _link(a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
    subprocess.run(["ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if,
                    "netns", b], check=True)
    for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
        sh(ns, "ip", "addr", "add", f"{addr}/24", "dev", ifname)
        sh(ns, "ip", "link", "set", ifname, "up")


@contextmanager
def lab() -> Iterator[Lab]:
    with netns("c") as c, netns("d") as d, netns("r") as r:
        for ns in (c, d, r):
            sh(ns, "ip", "route", "del", "198.18.0.0/15", "dev", "lo")
        _link(c, "eth0", CLIENT, d, "eth0", "198.18.4.1")
        _link(d, "eth1", "198.18.3.1", r, "eth0", RS)
        sh(d, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
        sh(d, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh(c, "ip", "route", "add", f"{VIP}/32", "via", "198.18.4.1")
        sh(r, "ip", "route", "add", "198.18.4.0/24", "via", "198.18.3.1")
        yield Lab(c, d, r)


class Server:
    """A TCP server in a namespace: reads one request, answers ``ANSWER``, closes."""

    def __init__(self, ns: str) -> None:
        def listen() -> socket.socket:
            s = socket.create_server((RS, PORT))
            s.settimeout(0.2)
            return s

        self.sock = in_netns(ns, listen)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(120)
                    got = b""
                    while len(got) < len(REQUEST):
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        got += chunk
                    conn.sendall(ANSWER)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.sock.close()


def request(ns: str) -> bytes:
    conn = in_netns(ns, lambda: socket.create_connection((VIP, PORT), timeout=10))
    with conn:
        conn.sendall(REQUEST)
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
    return got


def ipvsadm_rows(ns: str, *flags: str) -> dict[str, list[int]]:
    """``ipvsadm -Ln FLAGS`` as {"SVC" or "SVC -> DEST": numbers}."""
    rows: dict[str, list[int]] = {}
    service = ""
    for line in sh(ns, "ipvsadm", "-Ln", *flags).splitlines()[3:]:
        words = line.split()
        if words[0] == "->":
            rows[f"{service} -> {words[1]}"] = [int(w) for w in words[2:] if w.isdigit()]
        else:
            service = f"{words[0]} {words[1]}"
            rows[service] = [int(w) for w in words[2:] if w.isdigit()]
    return rows


def ours(dump: dict[ServiceKey, ServiceDump]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Our dump as ipvsadm's --stats rows and its plain rows' connection columns."""
    stats: dict[str, list[int]] = {}
    conns: dict[str, list[int]] = {}
    for key, entry in dump.items():
        name = f"TCP {key.address}:{key.port}"
        s = entry.stats
        stats[name] = [s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes]
        for dkey, d in entry.dests.items():
            s = d.stats
            stats[f"{name} -> {dkey}"] = [s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes]
            conns[f"{name} -> {dkey}"] = [d.dest.weight, d.active_conns, d.inactive_conns]
    return stats, conns


CONF = f"""
virtual_server {VIP} {PORT} {{
  lb_algo rr
  lb_kind NAT
  protocol TCP
  real_server {RS} {PORT} {{
    weight 3
  }}
}}
"""


async def test_counters_match_ipvsadm_and_reach_the_metrics(tmp_path: Path) -> None:
    path = tmp_path / "keepalived.conf"
    path.write_text(CONF)
    loaded = load(str(path), interface_exists=lambda name: True)
    assert loaded.config is not None, [str(d) for d in loaded.diagnostics]
    with lab() as net, ExitStack() as stack:
        server = Server(net.server)
        stack.callback(server.close)
        svc = LvsService(loaded.config, open_kernel=lambda: in_netns(net.director, NetlinkIpvs))
        metrics = Metrics(VrrpCounters())
        metrics.lvs = svc
        kernel = in_netns(net.director, NetlinkIpvs)
        stack.callback(kernel.close)
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await nursery.start(svc.run)
                await svc.wait_applied()
                assert ipvsadm_rows(net.director) == {
                    f"TCP {VIP}:{PORT}": [], f"TCP {VIP}:{PORT} -> {RS}:{PORT}": [3, 0, 0],
                }
                for _ in range(CONNECTIONS):
                    assert await trio.to_thread.run_sync(request, net.client) == ANSWER
                # One more connection stays open (established, quiet): an active one.
                held = in_netns(net.client, lambda: socket.create_connection((VIP, PORT), 10))
                stack.callback(held.close)
                # Recent kernels publish the counters from the 2-second estimator
                # tick: wait until every connection is counted and the counters have
                # stood still for longer than a tick (rates keep decaying: not compared).
                key = ServiceKey.inet(VIP, PORT)
                before = ours(kernel.dump_detailed())
                steady = 0.0
                deadline = time.monotonic() + 60
                while steady < STEADY and time.monotonic() < deadline:
                    await trio.sleep(0.5)
                    now = kernel.dump_detailed()
                    counted = now[key].stats.conns == CONNECTIONS + 1
                    steady = steady + 0.5 if counted and ours(now) == before else 0.0
                    before = ours(now)
                stats, conns = ours(now)
                assert stats == ipvsadm_rows(net.director, "--stats", "--exact")
                assert conns == {k: v for k, v in ipvsadm_rows(net.director).items() if "->" in k}
                dest = now[key].dests
                (info,) = dest.values()
                assert info.stats.conns == CONNECTIONS + 1
                assert (info.active_conns, info.inactive_conns) == (1, CONNECTIONS)
                assert info.stats.inbytes > CONNECTIONS * len(REQUEST)
                assert info.stats.outbytes > CONNECTIONS * len(ANSWER)

                # The metrics read the same counters (through the service's worker).
                await metrics.refresh()
                vip = {"service": f"TCP {VIP}:{PORT}", "addr": f"{VIP}:{PORT}", "proto": "TCP"}
                rs = {**vip, "addr": f"{RS}:{PORT}"}
                value = metrics.registry.get_sample_value
                s = now[key].stats
                assert value("keepalived_lvs_vip_conn_total", vip) == s.conns
                assert value("keepalived_lvs_vip_in_packets_total", vip) == s.inpkts
                assert value("keepalived_lvs_vip_out_packets_total", vip) == s.outpkts
                assert value("keepalived_lvs_vip_in_bytes_total", vip) == s.inbytes
                assert value("keepalived_lvs_vip_out_bytes_total", vip) == s.outbytes
                assert value("keepalived_lvs_rs_conn_total", rs) == info.stats.conns
                assert value("keepalived_lvs_rs_in_bytes_total", rs) == info.stats.inbytes
                assert value("keepalived_lvs_rs_out_bytes_total", rs) == info.stats.outbytes
                assert value("pyalived_ipvs_rs_active_connections", rs) == 1
                assert value("pyalived_ipvs_rs_inactive_connections", rs) == CONNECTIONS
                body, _ = metrics.render()
                line = (f'keepalived_lvs_rs_out_bytes_total{{addr="{RS}:{PORT}",proto="TCP",'
                        f'service="TCP {VIP}:{PORT}"}} {float(info.stats.outbytes)}')
                assert line.encode() in body
                nursery.cancel_scope.cancel()
        # Released on stop, as keepalived does.
        assert ipvsadm_rows(net.director) == {}
