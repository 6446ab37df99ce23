"""HTTP_GET ``regex`` against real web servers in a namespace.

The daemon runs in a router namespace (this kernel has no IPVS: it logs that
once and keeps checking); the web servers run in a client namespace, each
logging every request and how many body bytes it managed to send before the
checker closed the connection.

* An operator turns on the maintenance page by writing a file, well after the
  checks settled; the page still answers 200, and only the ``regex_no_match``
  on its text takes the real server out; removing the file brings it back.
* A 64 MiB body whose verdict is known in its first kilobyte: the checker
  closes the connection there (a checker reading on would hit its 8 MiB body
  cap and fail), and the servers' counts show it never took much.
* A server that hangs in the middle of its body: when the pattern came
  before the hang the check passes at once; when it did not, the check times
  out and the real server never comes up.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pyalived.checkers.http import MAX_BODY_BYTES
from pyalived.lab import Lab, wait_for

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0

# argv: LOG ADDRESS PORT MODE [FILE]; LOG gets "SECONDS_HELD BODY_BYTES_SENT" per request.
# MODE: page (the body is FILE's text if it exists),
# huge (64 MiB: "ready" then dots), hang-after (sends "ready" then hangs),
# hang-before (sends dots then hangs, "ready" would have come later)
SERVER = r"""
import os, socket, sys, threading, time
log, addr, port, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
page = sys.argv[5] if len(sys.argv) > 5 else ""
HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n"
def serve(conn):
    sent, t0 = 0, time.monotonic()
    with open(log + ".start", "a") as f:
        f.write(f"{t0:.3f}\n")
    try:
        conn.recv(4096)
        conn.sendall(HEAD)
        if mode == "page":
            text = open(page, "rb").read() if os.path.exists(page) else b"<h1>Welcome</h1>"
            conn.sendall(text)
            sent = len(text)
        elif mode == "huge":
            chunk = b"." * 65536
            conn.sendall(b"<p>ready</p>" + chunk[12:])
            sent = 65536
            while sent < 64 * 1024 * 1024:
                conn.sendall(chunk)
                sent += len(chunk)
        else:
            first = b"<p>ready</p>" if mode == "hang-after" else b"<p>wait</p>"
            conn.sendall(first + b"." * 400)
            sent = len(first) + 400
            conn.settimeout(30)
            conn.recv(1)  # hangs: only the checker closing the connection ends this
    except OSError:
        pass
    finally:
        with open(log, "a") as f:
            f.write(f"{time.monotonic() - t0:.3f} {sent}\n")
        conn.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
s.bind((addr, port))
s.listen(16)
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def config(server_ip: str, servers: list[tuple[int, str]], alpha: bool) -> str:
    blocks = "".join(
        f"""
    real_server {server_ip} {port} {{
        HTTP_GET {{
            url {{
                path /
{url}
            }}
            connect_timeout 2
            retry 0
            {"alpha" if alpha else ""}
        }}
    }}"""
        for port, url in servers
    )
    return f"""
global_defs {{
    router_id r1
}}

virtual_server 198.18.0.100 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP{blocks}
}}
"""


def sent(log: Path) -> list[int]:
    """Body bytes sent, one per request that has ended."""
    if not log.exists():
        return []
    return [int(line.split()[1]) for line in log.read_text().splitlines()]


def start_server(lab: Lab, ip: str, port: int, mode: str, page: Path | None = None) -> Path:
    log = lab.workdir / f"server-{port}.log"
    argv = [sys.executable, "-c", SERVER, str(log), ip, str(port), mode]
    if page is not None:
        argv.append(str(page))
    lab.spawn(lab.clients[0], argv, f"web{port}")
    return log


def test_the_maintenance_page_takes_the_server_out_and_back(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    page = lab.workdir / "maintenance.html"
    log = start_server(lab, client.ip, 8080, "page", page)
    url = '                regex "(?i)down for maintenance"\n                regex_no_match'
    daemon = lab.start_daemon(router, config(client.ip, [(8080, url)], alpha=True), "pyalived")
    rs = f"real server {client.ip}:8080: HTTP_GET#0"

    wait_for(lambda: f"{rs} UP" in daemon.log_text(), SETTLE, what="the server up")
    wait_for(lambda: len(sent(log)) >= 5, SETTLE, what="five more checks")
    assert f"{rs} DOWN" not in daemon.log_text()

    page.write_text("<html><h1>Down for Maintenance</h1><p>back at 6</p></html>")
    wait_for(lambda: f"{rs} DOWN" in daemon.log_text(), SETTLE, what="the server down")
    assert "Regex match failed (pattern found)" in daemon.log_text()
    checks = len(sent(log))
    wait_for(lambda: len(sent(log)) >= checks + 3, SETTLE, what="three checks while down")
    assert daemon.log_text().count(f"{rs} UP") == 1  # still down: the page is still there

    page.unlink()
    wait_for(lambda: daemon.log_text().count(f"{rs} UP") == 2, SETTLE, what="the server back")


def test_reading_stops_once_the_verdict_is_known(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    logs = {
        8081: start_server(lab, client.ip, 8081, "huge"),
        8082: start_server(lab, client.ip, 8082, "huge"),
        8083: start_server(lab, client.ip, 8083, "hang-after"),
        8084: start_server(lab, client.ip, 8084, "hang-before"),
    }
    servers = [
        (8081, '                regex "<p>ready</p>"'),  # found in the first kilobyte
        # nothing like "error" in the first kilobyte: with regex_no_match, a pass
        (8082, "                regex error\n                regex_no_match\n"
               "                regex_max_offset 1023"),
        (8083, "                regex ready"),  # comes before the hang
        (8084, "                regex ready"),  # would come after it
    ]
    daemon = lab.start_daemon(router, config(client.ip, servers, alpha=True), "pyalived")

    def up(port: int) -> bool:
        return f"real server {client.ip}:{port}: HTTP_GET#0 UP" in daemon.log_text()

    for port in (8081, 8082, 8083):
        wait_for(lambda port=port: up(port), SETTLE, what=f"{port} up")  # type: ignore[misc]
    for port in (8081, 8082):
        wait_for(lambda port=port: len(sent(logs[port])) >= 3, SETTLE,  # type: ignore[misc]
                 what=f"three checks of {port}")
        counts = sent(logs[port])
        print(f"port {port}: body bytes sent per check: {counts}")
        # 64 MiB offered; a reader going on to its 8 MiB cap would have taken far more
        assert max(counts) < MAX_BODY_BYTES // 4, counts
    # The hanging servers: 8083 sent "ready" and hangs; the check passed (alpha: it
    # started down), so it did not wait for the rest of the body.  8084 hangs before
    # "ready": each check gives up after connect_timeout and it never comes up.
    wait_for(lambda: len(sent(logs[8084])) >= 3, SETTLE, what="three checks of 8084")
    wait_for(lambda: len(sent(logs[8083])) >= 2, SETTLE, what="two checks of 8083")
    assert not up(8084), daemon.log_text()
    print("seconds each hanging connection was held:",
          {port: held(logs[port]) for port in (8083, 8084)})


def held(log: Path) -> list[float]:
    return [float(line.split()[0]) for line in log.read_text().splitlines()]
