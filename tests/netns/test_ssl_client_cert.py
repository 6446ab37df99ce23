"""SSL_GET presents the SSL block's client certificate to a server that requires one.

Two TLS web servers run in a client namespace with a throwaway CA made in the
test's directory: one asks nothing of the client, the other requires a client
certificate signed by that CA and logs the common name it was shown.  The
director's key is encrypted; the SSL block gives its password.  Then the
operator reloads a configuration without the SSL block: the server that
requires a certificate refuses the checks and its real server goes down,
the other stays up; with the block back, it comes back.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pyalived.lab import Lab, wait_for
from tests.tlsfiles import make_tls_files

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0

# argv: LOG ADDRESS PORT CERT KEY CA REQUIRE(0|1); LOG gets one line per handshake
SERVER = r"""
import socket, ssl, sys, threading
log, addr, port, cert, key, ca, require = sys.argv[1:8]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if require == "1":
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca)
def note(text):
    with open(log, "a") as f:
        f.write(text + "\n")
def serve(conn):
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            peer = tls.getpeercert()
            cn = dict(x[0] for x in peer["subject"])["commonName"] if peer else "-"
            tls.recv(4096)
            tls.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            note(f"ok {cn}")
    except (OSError, ssl.SSLError) as exc:
        note(f"refused {type(exc).__name__}")
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, int(port)))
s.listen(16)
while True:
    conn, _ = s.accept()
    conn.settimeout(5)
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def config(server_ip: str, ssl_block: str) -> str:
    real_servers = "".join(
        f"""
    real_server {server_ip} {port} {{
        SSL_GET {{
            url {{
                path /
            }}
            connect_timeout 2
            retry 0
            alpha
        }}
    }}"""
        for port in (8443, 8444)
    )
    return f"""
global_defs {{
    router_id r1
}}
{ssl_block}
virtual_server 198.18.0.100 443 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP{real_servers}
}}
"""


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_the_client_certificate_is_presented_and_a_reload_takes_it_away(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    tls = make_tls_files(lab.workdir / "tls", password="director secret")
    logs = {port: lab.workdir / f"tls-{port}.log" for port in (8443, 8444)}
    for port, require in ((8443, "0"), (8444, "1")):
        lab.spawn(client, [sys.executable, "-c", SERVER, str(logs[port]), client.ip, str(port),
                           str(tls.server_cert), str(tls.server_key), str(tls.ca), require],
                  f"tls{port}")
    ssl_block = f"""
SSL {{
    password "director secret"
    certificate {tls.client_cert}
    key {tls.client_key}
    ca {tls.ca}
}}
"""
    daemon = lab.start_daemon(router, config(client.ip, ssl_block), "pyalived")

    def count(port: int, what: str) -> int:
        return daemon.log_text().count(f"real server {client.ip}:{port}: SSL_GET#0 {what}")

    for port in (8443, 8444):
        wait_for(lambda port=port: count(port, "UP") == 1, SETTLE,  # type: ignore[misc]
                 what=f"{port} up")
    assert "ok director.test" in lines(logs[8444])  # the certificate was shown and accepted

    # The operator drops the SSL block: no certificate, the strict server refuses.
    lab.write_config(router, config(client.ip, ""))
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: count(8444, "DOWN") == 1, SETTLE, what="8444 down without a certificate")
    assert any(line.startswith("refused") for line in lines(logs[8444]))
    seen = len(lines(logs[8443]))
    wait_for(lambda: len(lines(logs[8443])) >= seen + 3, SETTLE, what="three more checks of 8443")
    assert count(8443, "DOWN") == 0  # the server that asks for nothing never noticed

    # And back: the certificate is presented again.
    lab.write_config(router, config(client.ip, ssl_block))
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: count(8444, "UP") == 2, SETTLE, what="8444 back with the certificate")
    assert lines(logs[8444])[-1] == "ok director.test"
