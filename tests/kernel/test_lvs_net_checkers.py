"""DNS_CHECK, UDP_CHECK, SMTP_CHECK and PING_CHECK on the real IPVS kernel.

Theory of operation: the routed topology of ``test_lvs_e2e`` (a director
between a client LAN and a server LAN) with four virtual services on the
VIP, each with both real servers and one checker type: DNS on UDP 53, an
echo service on UDP 7 (UDP_CHECK with ``require_reply``), SMTP on TCP 25
and PING_CHECK on TCP 80.  The real servers' DNS, echo and SMTP servers are
threads of the test process whose sockets were opened inside the real
server namespaces.  Stopping rs2's servers must take rs2 out of the first
three services in ``ipvsadm -Ln`` and leave it in the pinged one; cutting
rs2 off the LAN takes it out of that one too; bringing everything back
restores every table.  ``PYALIVED_E2E_IMPL=keepalived`` runs the same test
against keepalived 2.2.7, which validates it.  Every namespace made is
removed, pass or fail.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import dns.message
import dns.rrset
import pytest

from tests.kernel.netns import in_netns
from tests.kernel.test_lvs_e2e import (
    IMPL,
    RS1,
    RS2,
    STARTUP_TIMEOUT,
    VIP,
    Topology,
    _run,
    built,
    destinations,
    settle,
)

pytestmark = pytest.mark.kernel

GENERIC = """
            connect_timeout 2
            retry 1
            delay_before_retry 1
            delay_loop 1
            warmup 0"""


def _config() -> str:
    def service(proto: str, port: int, checker: str) -> str:
        servers = "".join(f"""
    real_server {ip} {port} {{
        weight 1
        {checker}
    }}""" for ip in (RS1, RS2))
        return f"""
virtual_server {VIP} {port} {{
    lb_algo rr
    lb_kind NAT
    protocol {proto}{servers}
}}
"""

    def block(kind: str, *lines: str) -> str:
        body = "".join(f"\n            {line}" for line in lines)
        return f"{kind} {{{body}{GENERIC}\n        }}"

    return "global_defs {\n    router_id d1\n}\n" + "".join((
        service("UDP", 53, block("DNS_CHECK", "type A", "name ns.test")),
        service("UDP", 7, block("UDP_CHECK", "payload 01 02 03", "require_reply 010203")),
        service("TCP", 25, block("SMTP_CHECK", "helo_name director.test")),
        service("TCP", 80, block("PING_CHECK")),
    ))


class _Loop:
    """One server socket served by a thread until ``stop``."""

    def __init__(self, ns: str, make: Callable[[], socket.socket],
                 serve: Callable[[socket.socket], None]) -> None:
        self.sock = in_netns(ns, make)
        self.sock.settimeout(0.1)
        self.stopping = threading.Event()
        self.serve = serve
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.serve(self.sock)
            except (TimeoutError, OSError):
                continue

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.sock.close()


def _udp(ip: str, port: int) -> Callable[[], socket.socket]:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, port))
        return s
    return make


def _tcp(ip: str, port: int) -> Callable[[], socket.socket]:
    def make() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        s.listen()
        return s
    return make


def _dns(sock: socket.socket) -> None:
    data, peer = sock.recvfrom(4096)
    query = dns.message.from_wire(data)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("ns.test.", 60, "IN", "A", "198.19.0.53"))
    sock.sendto(reply.to_wire(), peer)


def _echo(sock: socket.socket) -> None:
    data, peer = sock.recvfrom(4096)
    sock.sendto(data, peer)


def _smtp(sock: socket.socket) -> None:
    conn, _ = sock.accept()
    with conn:
        conn.settimeout(5)
        conn.sendall(b"220 mx.test ESMTP\r\n")
        if conn.recv(1024).upper().startswith(b"HELO"):
            conn.sendall(b"250 mx.test\r\n")
            conn.recv(1024)  # QUIT
            conn.sendall(b"221 bye\r\n")


class RealServers:
    """The DNS, echo and SMTP servers of one real server; restartable."""

    def __init__(self, ns: str, ip: str) -> None:
        self.ns, self.ip = ns, ip
        self.loops: list[_Loop] = []

    def start(self) -> RealServers:
        self.loops = [
            _Loop(self.ns, _udp(self.ip, 53), _dns),
            _Loop(self.ns, _udp(self.ip, 7), _echo),
            _Loop(self.ns, _tcp(self.ip, 25), _smtp),
        ]
        return self

    def stop(self) -> None:
        for loop in self.loops:
            loop.stop()
        self.loops = []


SERVICES = (f"UDP {VIP}:53", f"UDP {VIP}:7", f"TCP {VIP}:25", f"TCP {VIP}:80")


def _table(topo: Topology) -> dict[str, set[str]]:
    d1 = topo.ns("d1")
    return {svc: set(destinations(d1, svc)) for svc in SERVICES}


@pytest.fixture
def topo() -> Iterator[Topology]:
    with built("pyalived-netchk-", directors=1) as t:
        yield t


def test_new_checkers_remove_and_restore_real_servers(topo: Topology) -> None:
    servers = [RealServers(topo.ns("rs1"), RS1).start(), RealServers(topo.ns("rs2"), RS2).start()]
    try:
        _run("ip", "-n", topo.ns("d1"), "addr", "add", f"{VIP}/32", "dev", "eth0")
        topo.start_daemon("d1", _config())
        both = {svc: {RS1, RS2} for svc in SERVICES}
        settle(topo, "both real servers in every service", lambda: _table(topo) == both,
               timeout=STARTUP_TIMEOUT)

        servers[1].stop()  # rs2's DNS, echo and SMTP daemons die; the host still pings
        stopped = time.monotonic()
        without = {svc: {RS1} for svc in SERVICES[:3]} | {SERVICES[3]: {RS1, RS2}}
        settle(topo, "rs2 out of DNS, UDP and SMTP, still pinged", lambda: _table(topo) == without)
        print(f"rs2 out of DNS, UDP and SMTP {time.monotonic() - stopped:.2f} s after its"
              " servers stopped")
        if IMPL == "pyalived":
            log = topo.logs()
            assert "DNS_CHECK#0 DOWN" in log and "UDP_CHECK#0 DOWN" in log, log
            assert "SMTP_CHECK#0 DOWN" in log, log

        topo.set_leg(topo.ns("sbr"), "rs2", "eth0", up=False)  # rs2 is off the LAN
        cut = time.monotonic()
        settle(topo, "rs2 out of the pinged service",
               lambda: _table(topo) == {svc: {RS1} for svc in SERVICES})
        print(f"rs2 out of the pinged service {time.monotonic() - cut:.2f} s after the cut")

        topo.set_leg(topo.ns("sbr"), "rs2", "eth0", up=True)
        servers[1].start()
        back = time.monotonic()
        settle(topo, "rs2 back in every service", lambda: _table(topo) == both)
        print(f"rs2 back in every service {time.monotonic() - back:.2f} s after its return")
    finally:
        for s in servers:
            s.stop()
