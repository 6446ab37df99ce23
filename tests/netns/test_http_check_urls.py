"""HTTP_GET with several URLs on the wire: one URL per check, in turn, as keepalived.

The real daemon runs in a router namespace (this kernel has no IPVS, so it
logs that once and keeps checking); its real server is a small HTTP server in
a client namespace that logs every request and answers 404 for ``/b`` while a
flag file exists.  keepalived 2.2.7 checks one URL every ``delay_loop`` and
moves on to the next when it passes; a failing URL is retried and checked
again until it passes, and then a pass over every URL from the first brings
the real server back.  The request log must show the same.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyalived.lab import Lab, wait_for

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0

SERVER = """
import http.server, os, sys, time
log, flag = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        code = 404 if self.path == "/b" and os.path.exists(flag) else 200
        with open(log, "a") as f:
            f.write(f"{time.monotonic():.3f} {self.path} {code}\\n")
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[3], 8080), H).serve_forever()
"""


def config(server_ip: str) -> str:
    urls = "".join(
        f"""
            url {{
                path /{name}
                status_code 200
            }}"""
        for name in "abc"
    )
    return f"""
global_defs {{
    router_id r1
}}

virtual_server 198.18.0.100 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server {server_ip} 8080 {{
        weight 1
        HTTP_GET {{{urls}
            connect_timeout 2
            retry 1
            delay_before_retry 1
        }}
    }}
}}
"""


def requests(log: Path) -> list[tuple[float, str, int]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        t, path, code = line.split()
        out.append((float(t), path, int(code)))
    return out


def test_one_url_per_check_and_a_full_pass_to_come_back(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    log, flag = lab.workdir / "requests.log", lab.workdir / "fail-b"
    lab.spawn(client, [sys.executable, "-c", SERVER, str(log), str(flag), client.ip], "http")
    daemon = lab.start_daemon(router, config(client.ip), "pyalived")

    wait_for(lambda: len(requests(log)) >= 5, SETTLE, what="five checks")
    first = requests(log)
    paths = "".join(p[1] for _, p, _ in first)
    assert paths in ("abcab", "bcabc", "cabca"), first  # one URL per check, in turn
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(first)]
    assert min(gaps) > 0.9, gaps  # delay_loop apart, not all URLs at once

    flag.touch()
    wait_for(lambda: "HTTP_GET#0 DOWN" in daemon.log_text(), SETTLE, what="the checker down")
    time.sleep(2.5)  # while down the failing URL is checked again, delay_loop apart
    flag.unlink()
    wait_for(lambda: "HTTP_GET#0 UP" in daemon.log_text(), SETTLE, what="the checker up")

    def since_last_404() -> int:
        codes = [code for _, _, code in requests(log)]
        return len(codes) - 1 - max(i for i, code in enumerate(codes) if code == 404)

    wait_for(lambda: since_last_404() >= 6, SETTLE, what="six checks after the last 404")

    after = requests(log)
    failing = [i for i, (_, path, code) in enumerate(after) if code == 404]
    assert failing and {after[i][1] for i in failing} == {"/b"}, after
    # Once the 404s began, only /b was checked (its retry, then while down)...
    start = failing[0]
    assert all(path == "/b" for _, path, _ in after[start:failing[-1] + 1]), after
    # ...until it passed; then /a, /b, /c in turn brought it back, and the
    # rotation went on from /a.
    recovery = [path for _, path, _ in after[failing[-1] + 1:failing[-1] + 7]]
    assert recovery == ["/b", "/a", "/b", "/c", "/a", "/b"], after
    assert daemon.log_text().count("HTTP_GET#0 UP") == 1
