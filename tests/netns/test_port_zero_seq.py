"""A real server written with port 0, in a configuration built with ~SEQ and variables.

One director (r1) and one web server (c1, ``python -m http.server`` on port
8080).  The configuration writes the real server as ``real_server ${WEB} 0``,
the usual way for fwmark services, inside an ``IP PORT`` service made by a
``~SEQ`` line: as in keepalived, such a real server takes the service's port,
and its TCP_CHECK without ``connect_port`` probes that port.  The checker
child reports each verdict on ``lvs_notify_fifo``, read by a script.  (This
host's kernel has no IPVS: the checkers and their notifications run anyway.)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import pytest

from pyalived.lab import Lab, wait_for

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0

FIFO_READER = """#!/bin/sh
while IFS= read -r line; do
    echo "$line" >> "$OUT"
done < "$1"
"""


def test_port_zero_real_server_is_checked_on_the_service_port(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1, clients=1)
    (r1,), web = lab.routers, lab.clients[0]
    serve = [sys.executable, "-m", "http.server", "-b", web.ip, "8080"]
    server = lab.spawn(web, serve, "web-1")
    reader = lab.workdir / "fifo_reader.sh"
    reader.write_text(FIFO_READER)
    reader.chmod(0o755)
    text = f"""$WEB={web.ip}
$VS=198.18.0.100
global_defs {{
    router_id lab_r1
    lvs_notify_fifo {lab.workdir}/lvs.fifo
    lvs_notify_fifo_script {reader}
}}
~SEQ(PORT, 8080, 8080) virtual_server $VS $PORT {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server ${{WEB}} 0 {{
        TCP_CHECK {{
            connect_timeout 1
            retry 0
        }}
    }}
}}
"""
    out = lab.workdir / "r1.fifo.out"
    os.environ["OUT"] = str(out)
    try:
        lab.start_daemon(r1, text)
    finally:
        del os.environ["OUT"]
    assert r1.daemon is not None
    daemon = r1.daemon

    def lines() -> list[str]:
        return out.read_text().splitlines() if out.exists() else []

    wait_for(lambda: "LVS started" in daemon.log_text(), SETTLE, what="the checkers")
    time.sleep(3)  # a few probes of a healthy server: no DOWN line
    vs = "VS [198.18.0.100]:tcp:8080"
    rs = f"RS [{web.ip}]:tcp:8080 [198.18.0.100]:tcp:8080"
    assert lines() == [f"{vs} UP"]
    server.stop()  # the web server crashes: the probe of port 8080 fails
    wait_for(lambda: len(lines()) >= 3, SETTLE, what="the DOWN lines")
    assert lines() == [f"{vs} UP", f"{rs} DOWN", f"{vs} DOWN"]
    lab.spawn(web, serve, "web-2")
    wait_for(lambda: len(lines()) >= 5, SETTLE, what="the UP lines")
    assert lines() == [f"{vs} UP", f"{rs} DOWN", f"{vs} DOWN", f"{rs} UP", f"{vs} UP"]
    assert "Traceback" not in daemon.log_text()
