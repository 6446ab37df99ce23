"""End to end LVS-NAT over IPv6 on the real IPVS kernel: a client, a director, real servers.

Theory of operation: the same routed network as ``test_lvs_e2e``, in IPv6:
two bridges make a client-side LAN (fd00:198:18::/64) and a server-side LAN
(fd00:198:19::/64), the director has a leg on each and forwards between
them, and the real servers' default route points back at the director (as
LVS-NAT requires).  Every address is added with ``nodad``, so that it is
usable at once.  The real servers are the e2e's HTTP servers answering
their name, listening on an IPv6 socket inside their namespace; the client
fetches through the VIP and sees which real server IPVS picked.  The
director runs the daemon under test (pyalived, or keepalived 2.2.7 with
``PYALIVED_E2E_IMPL=keepalived``) with TCP_CHECK and HTTP_GET checkers on
IPv6 real servers, an IPv6 fwmark service (``ip_family inet6``) and a
group with an IPv6 range, and ``ipvsadm -Ln`` shows the AF_INET6 services
and destinations it programmed.  Everything the test creates is removed
when it ends, passed or failed.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.netns import in_netns, ipvsadm_table, sh
from tests.kernel.test_lvs_e2e import (
    CHECKER_BOUND,
    CONNECT_TIMEOUT,
    DELAY_BEFORE_RETRY,
    DELAY_LOOP,
    POLL_MARGIN,
    RETRY,
    STARTUP_TIMEOUT,
    NamedServer,
    Topology,
    _Handler,
    _run,
    _Server,
    settle,
)

pytestmark = pytest.mark.kernel

VIP = "fd00:198:18::100"
CLIENT = "fd00:198:18::200"
DIRECTOR_OUT, DIRECTOR_IN = "fd00:198:18::11", "fd00:198:19::11"
RS1, RS2 = "fd00:198:19::21", "fd00:198:19::22"
GROUP_RANGE = "fd00:198:18::110-111"  # two services, by keepalived's IPv6 range syntax
FWMARK = 7


class _Server6(_Server):
    address_family = socket.AF_INET6


class NamedServer6(NamedServer):
    """``NamedServer`` on an IPv6 socket."""

    def start(self) -> NamedServer6:
        assert self._server is None
        server = in_netns(self.ns, lambda: _Server6((self.ip, self.port), _Handler))
        server.name = self.name
        server.requests = self.requests
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)  # fmt: skip
        thread.start()
        self._server, self._thread = server, thread
        return self


def attach6(topo: Topology, role: str, ifname: str, bridge: str, address: str) -> None:
    """Give namespace ``role`` an interface ``ifname`` on ``bridge`` with ``address``/64."""
    node, leg = topo.ns(role), topo.leg(role, ifname)
    _run("ip", "-n", bridge, "link", "add", leg, "type", "veth",
         "peer", "name", ifname, "netns", node)  # fmt: skip
    _run("ip", "-n", bridge, "link", "set", leg, "master", "br0", "up")
    _run("ip", "-n", node, "link", "set", ifname, "up")
    _run("ip", "-n", node, "addr", "add", f"{address}/64", "dev", ifname, "nodad")


def _build6(workdir: Path) -> Topology:
    topo = Topology(workdir)
    try:
        cbr, sbr = topo.bridge("cbr"), topo.bridge("sbr")
        topo.add("client")
        attach6(topo, "client", "eth0", cbr, CLIENT)
        d = topo.add("d1")
        attach6(topo, "d1", "eth0", cbr, DIRECTOR_OUT)
        attach6(topo, "d1", "eth1", sbr, DIRECTOR_IN)
        sh(d, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for role, ip in (("rs1", RS1), ("rs2", RS2)):
            topo.add(role)
            attach6(topo, role, "eth0", sbr, ip)
            _run("ip", "-n", topo.ns(role), "-6", "route", "add", "default", "via", DIRECTOR_IN,
                 "dev", "eth0")  # fmt: skip
        _run("ip", "-n", d, "addr", "add", f"{VIP}/128", "dev", "eth0", "nodad")
    except BaseException:
        topo.close()
        raise
    return topo


def _timing(indent: str) -> str:
    lines = (
        f"connect_timeout {CONNECT_TIMEOUT}",
        f"retry {RETRY}",
        f"delay_before_retry {DELAY_BEFORE_RETRY}",
    )
    return "".join(f"\n{indent}{line}" for line in lines)


def _tcp_check() -> str:
    return f"TCP_CHECK {{{_timing(' ' * 12)}\n        }}"


def _http_check() -> str:
    url = "url {\n                path /\n                status_code 200\n            }"
    return f"HTTP_GET {{\n            {url}{_timing(' ' * 12)}\n        }}"


def ipv6_config() -> str:
    """rr on [VIP]:80 (TCP_CHECK), wrr 3:1 on [VIP]:8080 (HTTP_GET), an IPv6 fwmark
    service and a group with an IPv6 range."""
    return f"""
global_defs {{
    router_id d1
}}

virtual_server_group V6RANGE {{
    {GROUP_RANGE} 80
}}

virtual_server {VIP} 80 {{
    delay_loop {DELAY_LOOP}
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server {RS1} 80 {{
        weight 1
        {_tcp_check()}
    }}
    real_server {RS2} 80 {{
        weight 1
        {_tcp_check()}
    }}
}}

virtual_server {VIP} 8080 {{
    delay_loop {DELAY_LOOP}
    lb_algo wrr
    lb_kind NAT
    protocol TCP
    real_server {RS1} 80 {{
        weight 3
        {_http_check()}
    }}
    real_server {RS2} 80 {{
        weight 1
        {_http_check()}
    }}
}}

virtual_server fwmark {FWMARK} {{
    delay_loop {DELAY_LOOP}
    lb_algo rr
    lb_kind NAT
    ip_family inet6
    real_server {RS1} 80 {{
        weight 1
    }}
}}

virtual_server group V6RANGE {{
    delay_loop {DELAY_LOOP}
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server {RS2} 80 {{
        weight 2
    }}
}}
"""


def fetch6(ns: str, port: int = 80, timeout: float = 5.0) -> str | None:
    """One GET over a fresh IPv6 connection from namespace ``ns`` to the VIP: who answered."""

    def get() -> bytes:
        with socket.create_connection((VIP, port), timeout=timeout) as s:
            assert s.family == socket.AF_INET6
            s.sendall(b"GET / HTTP/1.0\r\nHost: lvs6\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data

    try:
        data = in_netns(ns, get)
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        return None
    return body.decode().strip()


def dest_rows(ns: str, service: str) -> set[tuple[str, str, int]]:
    """(address:port, forwarding, weight) of each destination of ``service``, as
    ``ipvsadm -Ln`` prints it ("TCP [VIP]:80 rr")."""
    return {
        (d.split()[1], d.split()[2], int(d.split()[3]))
        for d in ipvsadm_table(ns).get(service, frozenset())
    }


def destinations(ns: str, service: str) -> set[str]:
    return {row[0] for row in dest_rows(ns, service)}


SVC80 = f"TCP [{VIP}]:80 rr"
SVC8080 = f"TCP [{VIP}]:8080 wrr"
BOTH80 = {(f"[{RS1}]:80", "Masq", 1), (f"[{RS2}]:80", "Masq", 1)}


@pytest.fixture(scope="module")
def director6() -> Iterator[Topology]:
    with tempfile.TemporaryDirectory(prefix="pyalived-e2e6-") as d:
        topo = _build6(Path(d))
        try:
            for role, ip in (("rs1", RS1), ("rs2", RS2)):
                server = NamedServer6(topo.ns(role), ip, 80, role)
                topo.servers.append(server)
                server.start()
            topo.start_daemon("d1", ipv6_config())
            settle(topo, "both IPv6 real servers in [VIP]:80 and [VIP]:8080",
                   lambda: dest_rows(topo.ns("d1"), SVC80) == BOTH80
                   and len(dest_rows(topo.ns("d1"), SVC8080)) == 2,
                   timeout=STARTUP_TIMEOUT)  # fmt: skip
            yield topo
        finally:
            topo.close()


def test_ipv6_ipvsadm_shows_af_inet6_services_and_dests(director6: Topology) -> None:
    d1 = director6.ns("d1")
    table = ipvsadm_table(d1)
    assert dest_rows(d1, SVC80) == BOTH80, table
    assert dest_rows(d1, SVC8080) == {
        (f"[{RS1}]:80", "Masq", 3),
        (f"[{RS2}]:80", "Masq", 1),
    }, table
    # ip_family inet6: an AF_INET6 fwmark service, its destination without a port
    assert dest_rows(d1, f"FWM {FWMARK} IPv6 rr") == {(f"[{RS1}]:0", "Masq", 1)}, table
    # the group's IPv6 range: one service per address, each with the block's real server
    for vip in ("fd00:198:18::110", "fd00:198:18::111"):
        assert dest_rows(d1, f"TCP [{vip}]:80 rr") == {(f"[{RS2}]:80", "Masq", 2)}, table
    # nothing else: exactly the configured services
    assert len(table) == 5, table


def test_ipv6_traffic_through_the_vip(director6: Topology) -> None:
    client = director6.ns("client")
    got = [fetch6(client) for _ in range(10)]
    assert None not in got, (got, director6.logs())
    assert Counter(got) == {"rs1": 5, "rs2": 5}, got
    got = [fetch6(client, port=8080) for _ in range(8)]
    assert Counter(got) == {"rs1": 6, "rs2": 2}, got
    # the real servers answered the client's requests (not only the checkers')
    rs1 = next(s for s in director6.servers if s.name == "rs1")
    assert sum(path == "/" for _, path, _ in rs1.requests) >= 5 + 6


def test_ipv6_dead_real_server_removed_and_restored(director6: Topology) -> None:
    d1, client = director6.ns("d1"), director6.ns("client")
    rs2 = next(s for s in director6.servers if s.name == "rs2")
    rs2.stop()
    stopped = time.monotonic()
    try:
        settle(director6, "rs2 out of [VIP]:80 (TCP_CHECK)",
               lambda: destinations(d1, SVC80) == {f"[{RS1}]:80"},
               timeout=CHECKER_BOUND * 4)  # fmt: skip
        elapsed = time.monotonic() - stopped
        print(f"rs2 removed {elapsed:.2f} s after it stopped (bound {CHECKER_BOUND} s)")
        assert elapsed <= CHECKER_BOUND + POLL_MARGIN, elapsed
        settle(director6, "rs2 out of [VIP]:8080 (HTTP_GET)",
               lambda: destinations(d1, SVC8080) == {f"[{RS1}]:80"},
               timeout=CHECKER_BOUND * 4)  # fmt: skip
        assert dest_rows(d1, SVC80) == {(f"[{RS1}]:80", "Masq", 1)}
        got = [fetch6(client) for _ in range(6)]
        assert got == ["rs1"] * 6, got
    finally:
        rs2.start()
    settle(director6, "rs2 back in [VIP]:80 and [VIP]:8080",
           lambda: dest_rows(d1, SVC80) == BOTH80 and len(dest_rows(d1, SVC8080)) == 2)  # fmt: skip
    got = [fetch6(client) for _ in range(10)]
    assert Counter(got) == {"rs1": 5, "rs2": 5}, got
