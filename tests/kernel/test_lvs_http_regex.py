"""HTTP_GET regex and SSL_GET's client certificate on the real IPVS kernel.

Theory of operation: the routed topology of ``test_lvs_e2e`` (a director
between a client LAN and a server LAN), and on each real server a small web
server in its namespace whose page the test switches.  Every response
carries the header ``X-Note: maintenance window at 6``, so only a search of
the body (keepalived's) tells a maintenance page from the welcome page.
Services on the VIP, each with both real servers:

* 80: ``regex Welcome`` -- in while the welcome page is served;
* 81: ``regex maintenance`` with ``regex_no_match`` -- out while the
  maintenance page is served (the header alone must not take it out);
* 82 and 83: ``regex Welcome`` with ``regex_max_offset`` 3 and 4: the page
  starts ``<h1>Welcome``, whose match starts at body offset 4, so only 83
  has the real servers (the window's last offset is inclusive);
* 443: SSL_GET to a TLS server that requires a client certificate of the
  test's own CA; the SSL block presents it (its key is encrypted).

rs2's page switches to the maintenance page, then back; ``ipvsadm -Ln``
must follow.  ``PYALIVED_E2E_IMPL=keepalived`` runs the same test against
keepalived 2.2.7, which validates it.  Every namespace made is removed,
pass or fail.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kernel.test_lvs_e2e import (
    RS1,
    RS2,
    STARTUP_TIMEOUT,
    VIP,
    Topology,
    _build,
    _run,
    destinations,
    settle,
)
from tests.kernel.test_lvs_net_checkers import _Loop, _tcp
from tests.tlsfiles import TlsFiles, make_tls_files

pytestmark = pytest.mark.kernel

WELCOME = b"<h1>Welcome</h1><p>all good</p>"
MAINTENANCE = b"<h1>Down for maintenance</h1><p>back at 6</p>"
PASSWORD = "director-secret"
PORTS = (80, 81, 82, 83, 443)
SERVICES = tuple(f"TCP {VIP}:{port}" for port in PORTS)
GENERIC = """
            connect_timeout 2
            retry 0
            delay_loop 1
            warmup 0"""


def _config(tls: TlsFiles) -> str:
    def service(port: int, checker: str) -> str:
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

    def http(kind: str, *url: str) -> str:
        lines = "".join(f"\n                {line}" for line in ("path /", *url))
        return f"{kind} {{\n            url {{{lines}\n            }}{GENERIC}\n        }}"

    ssl_block = f"""
SSL {{
    password "{PASSWORD}"
    certificate {tls.client_cert}
    key {tls.client_key}
    ca {tls.ca}
}}
"""
    return "global_defs {\n    router_id d1\n}\n" + ssl_block + "".join((
        service(80, http("HTTP_GET", "regex Welcome")),
        service(81, http("HTTP_GET", "regex maintenance", "regex_no_match")),
        service(82, http("HTTP_GET", "regex Welcome", "regex_max_offset 3")),
        service(83, http("HTTP_GET", "regex Welcome", "regex_max_offset 4")),
        service(443, http("SSL_GET")),
    ))


class WebServer:
    """The real server's sites: ports 80-83 over HTTP, 443 over TLS with a client cert."""

    def __init__(self, ns: str, ip: str, tls: TlsFiles) -> None:
        self.page = WELCOME
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls.server_cert, tls.server_key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(tls.ca)
        self.tls_ctx = ctx
        self.client_names: list[str] = []
        self.loops = [_Loop(ns, _tcp(ip, port), self._serve) for port in PORTS[:-1]]
        self.loops.append(_Loop(ns, _tcp(ip, 443), self._serve_tls))

    def _answer(self, conn: socket.socket | ssl.SSLSocket) -> None:
        conn.recv(4096)
        page = self.page
        conn.sendall(b"HTTP/1.0 200 OK\r\nX-Note: maintenance window at 6\r\n"
                     + f"Content-Length: {len(page)}\r\n\r\n".encode() + page)

    def _serve(self, sock: socket.socket) -> None:
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(5)
            self._answer(conn)

    def _serve_tls(self, sock: socket.socket) -> None:
        conn, _ = sock.accept()
        conn.settimeout(5)
        try:
            with self.tls_ctx.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert() or {}
                subject = dict(x[0] for x in peer.get("subject", ()))
                self.client_names.append(str(subject.get("commonName", "-")))
                self._answer(tls)
        except (OSError, ssl.SSLError):
            conn.close()

    def stop(self) -> None:
        for loop in self.loops:
            loop.stop()


def _table(topo: Topology) -> dict[str, set[str]]:
    d1 = topo.ns("d1")
    return {svc: set(destinations(d1, svc)) for svc in SERVICES}


def _expect(rs2_page: bytes) -> Callable[[dict[str, set[str]]], bool]:
    rs2_in = rs2_page == WELCOME

    def check(table: dict[str, set[str]]) -> bool:
        want = {
            SERVICES[0]: {RS1, RS2} if rs2_in else {RS1},
            SERVICES[1]: {RS1, RS2} if rs2_in else {RS1},
            SERVICES[2]: set(),
            SERVICES[3]: {RS1, RS2} if rs2_in else {RS1},
            SERVICES[4]: {RS1, RS2},
        }
        return table == want

    return check


@pytest.fixture
def topo() -> Iterator[Topology]:
    with tempfile.TemporaryDirectory(prefix="pyalived-regex-") as d:
        t = _build(Path(d), directors=1)
        try:
            yield t
        finally:
            t.close()


def test_regex_and_client_certificate_on_ipvs(topo: Topology) -> None:
    tls = make_tls_files(topo.workdir / "tls", PASSWORD)
    servers = [WebServer(topo.ns("rs1"), RS1, tls), WebServer(topo.ns("rs2"), RS2, tls)]
    try:
        _run("ip", "-n", topo.ns("d1"), "addr", "add", f"{VIP}/32", "dev", "eth0")
        topo.start_daemon("d1", _config(tls))
        welcome = _expect(WELCOME)
        settle(topo, "the welcome tables", lambda: welcome(_table(topo)),
               timeout=STARTUP_TIMEOUT)
        assert "director.test" in servers[1].client_names

        servers[1].page = MAINTENANCE  # the operator switches rs2 to its maintenance page
        switched = time.monotonic()
        maintenance = _expect(MAINTENANCE)
        settle(topo, "rs2 out of 80, 81 and 83", lambda: maintenance(_table(topo)))
        print(f"rs2 out {time.monotonic() - switched:.2f} s after its maintenance page")

        servers[1].page = WELCOME
        back = time.monotonic()
        settle(topo, "rs2 back", lambda: welcome(_table(topo)))
        print(f"rs2 back {time.monotonic() - back:.2f} s after its welcome page")
    finally:
        for s in servers:
            s.stop()
