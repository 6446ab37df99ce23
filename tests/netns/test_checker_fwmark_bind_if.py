"""Checker options fwmark and bind_if on a real director namespace.

The director's firewall (nftables, in its own namespace) rejects every
connection to the web port that does not carry mark 42, as a site does that
lets only marked health checks through: the checks with ``fwmark 42`` (a
TCP_CHECK and an HTTP_GET) pass, the one without it is refused.  A second
port is checked once with ``bind_if eth0`` (the LAN), which passes, and once
bound to an interface that leads nowhere (a veth pair inside the director),
which fails: the checks really leave by the interface they are bound to.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from pyalived.lab import Lab, wait_for

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0

SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""

FIREWALL = """
table inet healthcheck {
    chain out {
        type filter hook output priority 0; policy accept;
        tcp dport 8080 meta mark != 42 reject with tcp reset
    }
}
"""


def config(ip: str) -> str:
    def vs(n: int, port: int, checker: str, options: str, alpha: bool) -> str:
        url = "url {\n                path /\n            }" if checker == "HTTP_GET" else ""
        return f"""
virtual_server 198.18.0.{100 + n} 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server {ip} {port} {{
        {checker} {{
            {options}
            {url}
            connect_timeout 1
            retry 0
            {"alpha" if alpha else ""}
        }}
    }}
}}"""

    return "global_defs {\n    router_id r1\n}\n" + "".join([
        vs(0, 8080, "TCP_CHECK", "fwmark 42", alpha=True),
        vs(1, 8080, "HTTP_GET", "fwmark 42", alpha=True),
        vs(2, 8080, "TCP_CHECK", "", alpha=False),
        vs(3, 8081, "TCP_CHECK", "bind_if eth0", alpha=True),
        vs(4, 8081, "TCP_CHECK", "bind_if nowhere0", alpha=False),
    ])


def test_marked_checks_pass_the_firewall_and_bound_checks_leave_by_their_interface(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    for port in (8080, 8081):
        lab.spawn(client, [sys.executable, "-c", SERVER, client.ip, str(port)], f"web{port}")
    fw = lab.workdir / "firewall.nft"
    fw.write_text(FIREWALL)
    lab.run(router, "nft", "-f", str(fw))
    lab.ip(router, "link", "add", "nowhere0", "type", "veth", "peer", "name", "nowhere1")
    lab.ip(router, "link", "set", "nowhere0", "up")
    lab.ip(router, "link", "set", "nowhere1", "up")
    daemon = lab.start_daemon(router, config(client.ip), "pyalived")

    def line(n: int, port: int, checker: str, verdict: str) -> str:
        return f"198.18.0.{100 + n}:80: real server {client.ip}:{port}: {checker}#0 {verdict}"

    for n, port, checker in ((0, 8080, "TCP_CHECK"), (1, 8080, "HTTP_GET"),
                             (3, 8081, "TCP_CHECK")):
        wait_for(lambda n=n, port=port, checker=checker:  # type: ignore[misc]
                 line(n, port, checker, "UP") in daemon.log_text(), SETTLE,
                 what=f"virtual server {n} up")
    wait_for(lambda: line(2, 8080, "TCP_CHECK", "DOWN") in daemon.log_text(), SETTLE,
             what="the unmarked check refused")
    wait_for(lambda: line(4, 8081, "TCP_CHECK", "DOWN") in daemon.log_text(), SETTLE,
             what="the check bound to the dead-end interface down")
    text = daemon.log_text()
    assert f"{line(2, 8080, 'TCP_CHECK', 'DOWN')}: connect to {client.ip}:8080: connection " \
           "refused" in text, text
    for n, port, checker in ((0, 8080, "TCP_CHECK"), (1, 8080, "HTTP_GET"),
                             (3, 8081, "TCP_CHECK")):
        assert line(n, port, checker, "DOWN") not in text, text
    # its SYN went out of nowhere0 (and nobody answered there), not out of eth0
    assert f"{line(4, 8081, 'TCP_CHECK', 'DOWN')}: timeout connecting" in text, text
