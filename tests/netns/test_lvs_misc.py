"""FILE_CHECK and ha_suspend with the real daemon, in namespaces.

The daemon runs in a router namespace (this kernel has no IPVS, so it logs
that once and keeps checking); the real server is a TCP listener in a
client namespace that notes every connection it accepts.  FILE_CHECK: an
operator drains the real server by writing to a track file well after the
checkers settled, and lets it back by writing 0, removing the file or
moving a new one in.  ha_suspend: the director does not hold the virtual
address, so its checkers must not connect at all; the address arriving
(as when a VRRP instance becomes MASTER) starts them, and its leaving
stops them again.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyalived.lab import Lab, Proc, wait_for

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0
VIP = "198.18.0.100"

LISTENER = """
import socket, sys
ip, log = sys.argv[1], sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, 80))
s.listen(16)
while True:
    conn, peer = s.accept()
    with open(log, "a") as f:
        f.write(f"{peer[0]}\\n")
    conn.close()
"""

TCP_CHECK = """
        TCP_CHECK {
            connect_timeout 1
            retry 0
            delay_before_retry 1
            delay_loop 1
            warmup 0
        }"""


def config(rs_ip: str, *, drain: Path | None = None, ha_suspend: bool = False) -> str:
    track = ""
    file_check = ""
    if drain is not None:
        track = f"""
track_file drain {{
    file {drain}
    weight 0
}}
"""
        file_check = """
        FILE_CHECK {
            track_file drain
        }"""
    return f"""
global_defs {{
    router_id d1
}}
{track}
virtual_server {VIP} 80 {{
    lb_algo rr
    lb_kind NAT
    protocol TCP{chr(10) + "    ha_suspend" if ha_suspend else ""}
    real_server {rs_ip} 80 {{{file_check}{TCP_CHECK}
    }}
}}
"""


def count(daemon: Proc, text: str) -> int:
    return daemon.log_text().count(text)


def logged(daemon: Proc, text: str, times: int = 1) -> None:
    wait_for(lambda: count(daemon, text) >= times or None, SETTLE,
             what=f"{text!r} x{times} in the log")


def accepted(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_an_operator_drains_a_real_server_by_writing_a_file(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    conns = lab.workdir / "accepted.log"
    lab.spawn(client, [sys.executable, "-c", LISTENER, client.ip, str(conns)], "listener")
    drain = lab.workdir / "drain"
    daemon = lab.start_daemon(router, config(client.ip, drain=drain), "pyalived")
    wait_for(lambda: accepted(conns) >= 3 or None, SETTLE, what="three TCP checks")
    assert "FILE_CHECK" not in daemon.log_text()  # no file reads 0: up

    # Later, the operator takes the server out of the pool, the usual way.
    time.sleep(2)
    drain.write_text("1\n")
    logged(daemon, "FILE_CHECK DOWN: track_file drain reads 1")
    down_at = time.monotonic()
    drain.write_text("0\n")
    logged(daemon, "FILE_CHECK UP")
    print(f"FILE_CHECK: down and back up within {time.monotonic() - down_at:.3f} s of writes")

    # An editor's way: a new file moved over the old one; then the file removed.
    tmp = lab.workdir / "drain.new"
    tmp.write_text("2\n")
    os.rename(tmp, drain)
    logged(daemon, "FILE_CHECK DOWN: track_file drain reads 2")
    drain.unlink()
    logged(daemon, "FILE_CHECK UP", times=2)
    # the TCP check went on throughout, and never failed
    assert not re.search(r"TCP_CHECK#0 DOWN", daemon.log_text())


def test_ha_suspend_checks_only_while_the_director_holds_the_address(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    conns = lab.workdir / "accepted.log"
    lab.spawn(client, [sys.executable, "-c", LISTENER, client.ip, str(conns)], "listener")
    daemon = lab.start_daemon(router, config(client.ip, ha_suspend=True), "pyalived")
    logged(daemon, f"address {VIP} absent: checkers suspended")
    logged(daemon, "LVS started")
    time.sleep(4)  # four delay_loops: a running checker would have connected four times
    assert accepted(conns) == 0

    lab.ip(router, "addr", "add", f"{VIP}/32", "dev", "eth0")  # it became MASTER
    logged(daemon, f"address {VIP} present: checkers active")
    wait_for(lambda: accepted(conns) >= 3 or None, SETTLE, what="three TCP checks")

    lab.ip(router, "addr", "del", f"{VIP}/32", "dev", "eth0")  # and BACKUP again
    logged(daemon, f"address {VIP} absent: checkers suspended", times=2)
    time.sleep(1.5)  # a probe already under way finishes
    before = accepted(conns)
    time.sleep(4)
    assert accepted(conns) == before
