"""HTTP_GET regex on the real IPVS kernel, side by side with keepalived 2.2.7.

Theory of operation: the routed topology of ``test_lvs_e2e`` (a director
between a client LAN and a server LAN), and on each real server a small web
server in its namespace whose page the test switches.  Every response
carries the header ``X-Note: window at 6``.  Services on the VIP, each with
both real servers and one HTTP_GET:

* 81: ``regex maintenance`` with ``regex_no_match``: out while the
  maintenance page is served;
* 82: ``regex "X-Note: window"``: keepalived searches the header too, so
  both stay in;
* 83 and 84: ``regex Welcome`` with ``regex_max_offset`` one below and at
  the offset of "Welcome" counted from the status line: 83 never has the
  real servers, 84 has them while the welcome page is served (offsets
  count from the response's first byte; the window's end is inclusive).

rs2 then switches to its maintenance page and must leave 81 and 84.
``PYALIVED_E2E_IMPL=keepalived`` runs the same test against keepalived
2.2.7, which validates it (it is how the header and offset rules were
settled).  Every namespace made is removed, pass or fail.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.kernel.test_lvs_e2e import (
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
from tests.kernel.test_lvs_net_checkers import _Loop, _tcp

pytestmark = pytest.mark.kernel

WELCOME = b"<h1>Welcome</h1><p>all good</p>"
MAINTENANCE = b"<h1>Down for maintenance</h1><p>back at 6</p>"
PORTS = (81, 82, 83, 84)
SERVICES = tuple(f"TCP {VIP}:{port}" for port in PORTS)
GENERIC = """
            connect_timeout 2
            retry 0
            delay_loop 1
            warmup 0"""


def response(page: bytes) -> bytes:
    return (b"HTTP/1.0 200 OK\r\nX-Note: window at 6\r\n"
            + f"Content-Length: {len(page)}\r\n\r\n".encode() + page)


WELCOME_AT = response(WELCOME).index(b"Welcome")  # from the status line's first byte


def _config() -> str:
    def service(port: int, *url: str) -> str:
        lines = "".join(f"\n                {line}" for line in ("path /", *url))
        checker = f"HTTP_GET {{\n            url {{{lines}\n            }}{GENERIC}\n        }}"
        servers = "".join(f"""
    real_server {ip} {port} {{
        weight 1
        {checker}
    }}""" for ip in (RS1, RS2))
        return f"""
virtual_server {VIP} {port} {{
    lb_algo rr
    lb_kind NAT
    protocol TCP{servers}
}}
"""

    return "global_defs {\n    router_id d1\n}\n" + "".join((
        service(81, "regex maintenance", "regex_no_match"),
        service(82, 'regex "X-Note: window"'),
        service(83, "regex Welcome", f"regex_max_offset {WELCOME_AT - 1}"),
        service(84, "regex Welcome", f"regex_max_offset {WELCOME_AT}"),
    ))


class WebServer:
    """One real server's site on every port of ``PORTS``; ``page`` is what it serves."""

    def __init__(self, ns: str, ip: str) -> None:
        self.page = WELCOME
        self.loops = [_Loop(ns, _tcp(ip, port), self._serve) for port in PORTS]

    def _serve(self, sock: socket.socket) -> None:
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(5)
            conn.recv(4096)
            conn.sendall(response(self.page))

    def stop(self) -> None:
        for loop in self.loops:
            loop.stop()


def _table(topo: Topology) -> dict[str, set[str]]:
    d1 = topo.ns("d1")
    return {svc: set(destinations(d1, svc)) for svc in SERVICES}


@pytest.fixture
def topo() -> Iterator[Topology]:
    with built("pyalived-regex-", directors=1) as t:
        yield t


def test_regex_searches_the_response_as_keepalived_does(topo: Topology) -> None:
    servers = [WebServer(topo.ns("rs1"), RS1), WebServer(topo.ns("rs2"), RS2)]
    both = {RS1, RS2}
    try:
        _run("ip", "-n", topo.ns("d1"), "addr", "add", f"{VIP}/32", "dev", "eth0")
        topo.start_daemon("d1", _config())
        welcome = dict(zip(SERVICES, (both, both, set(), both), strict=True))
        settle(topo, "the tables of the welcome page", lambda: _table(topo) == welcome,
               timeout=STARTUP_TIMEOUT)

        servers[1].page = MAINTENANCE  # the operator switches rs2 to its maintenance page
        switched = time.monotonic()
        maintenance = dict(zip(SERVICES, ({RS1}, both, set(), {RS1}), strict=True))
        settle(topo, "rs2 out of 81 and 84", lambda: _table(topo) == maintenance)
        print(f"rs2 out {time.monotonic() - switched:.2f} s after its maintenance page")
    finally:
        for s in servers:
            s.stop()
