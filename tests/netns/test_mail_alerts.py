"""Mail alerts and notify FIFOs of the real daemon, with a real SMTP server on the LAN.

Two routers (r1 priority 100, r2 priority 90) and a mail server (c1, an
aiosmtpd server in its own namespace, 198.18.0.201 port 2525) share the lab
LAN.  The server writes each message it accepts, with its envelope and the
time it accepted it, to a file.  The tests judge from what the server got,
from the notify FIFO lines the routers wrote, and from the VRRP packets on
the bridge.
"""

from __future__ import annotations

import email
import email.utils
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyalived.lab import VIP, Lab, Node, Proc, VrrpSpec, adverts, wait_for

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0
SMTP_PORT = 2525

# The mail server: aiosmtpd (asyncio, in its own process), one JSON file per message.
SMTP_SERVER = r"""
import json, os, signal, sys, threading, time
from aiosmtpd.controller import Controller

host, port, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class Sink:
    async def handle_DATA(self, server, session, envelope):
        record = {"time": time.time(), "helo": session.host_name, "peer": session.peer[0],
                  "mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                  "data": envelope.original_content.decode()}
        name = os.path.join(outdir, f"{time.time_ns()}.json")
        with open(name + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(name + ".tmp", name)
        return "250 2.0.0 Ok: queued"

controller = Controller(Sink(), hostname=host, port=port)
controller.start()
print("listening", flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
stop.wait()
controller.stop()
"""

# A notify FIFO script: appends each line it reads, stamped with the time it read it.
FIFO_READER = """#!/bin/sh
while IFS= read -r line; do
    echo "$(date +%s.%N) $line" >> "$OUT"
done < "$1"
"""


def start_smtp(lab: Lab, node: Node, outdir: Path) -> Proc:
    outdir.mkdir(exist_ok=True)
    script = lab.workdir / "smtp_server.py"
    script.write_text(SMTP_SERVER)
    proc = lab.spawn(node, [sys.executable, str(script), node.ip, str(SMTP_PORT), str(outdir)],
                     f"smtp-{len(lab.procs)}")
    wait_for(lambda: "listening" in proc.log_text() or not proc.running(), 30,
             what="the SMTP server")
    assert proc.running(), proc.log_text()
    return proc


def mails(outdir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(outdir.glob("*.json"))]


def mail_with(outdir: Path, subject: str, timeout: float = SETTLE) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for m in mails(outdir):
            if email.message_from_string(m["data"])["Subject"] == subject:
                return m
        return None

    return wait_for(find, timeout, what=f"a mail '{subject}'", interval=0.05)


def config(node: Node, lab: Lab, server: str, *, priority: int, fifo_script: bool,
           fifo: str | None = None, instance_mail: bool = True) -> str:
    fifo_path = lab.workdir / (fifo or f"{node.name}.fifo")
    lines = [
        f"router_id lab_{node.name}",
        "notification_email {", "    ops@example.org", "    noc@example.org", "}",
        f"notification_email_from pyalived@{node.name}.example.org",
        f"smtp_server {server} {SMTP_PORT}",
        f"smtp_helo_name {node.name}.example.org",
        "smtp_connect_timeout 5",
        "smtp_alert",
        f"vrrp_notify_fifo {fifo_path}",
    ]
    if fifo_script:
        reader = lab.workdir / "fifo_reader.sh"
        reader.write_text(FIFO_READER)
        reader.chmod(0o755)
        lines.append(f"vrrp_notify_fifo_script {reader}")
    head = "global_defs {\n" + "".join(f"    {ln}\n" for ln in lines) + "}\n"
    extra = () if instance_mail else ("smtp_alert off",)
    return head + VrrpSpec(priority=priority, extra=extra).render()


def start_router(lab: Lab, node: Node, text: str) -> None:
    os.environ["OUT"] = str(lab.workdir / f"{node.name}.fifo.out")  # for the FIFO script
    try:
        lab.start_daemon(node, text)
    finally:
        del os.environ["OUT"]


def read_fifo(path: Path) -> list[str]:
    """What a FIFO holds now, read without blocking through a second read end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        data = b""
        try:
            while chunk := os.read(fd, 65536):
                data += chunk
        except BlockingIOError:
            pass
    finally:
        os.close(fd)
    return data.decode().splitlines()


def test_failover_mail_reaches_the_server_with_keepalived_s_message(
    make_lab: MakeLab,
) -> None:
    """r1 is cut off the LAN; r2 takes over and the mail server gets r2's MASTER alert."""
    lab = make_lab(routers=2, clients=1)
    r1, r2 = lab.routers
    server = lab.clients[0]
    outdir = lab.workdir / "mail"
    start_smtp(lab, server, outdir)
    cap = lab.capture()
    start_router(lab, r1, config(r1, lab, server.ip, priority=100, fifo_script=False))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    start_router(lab, r2, config(r2, lab, server.ip, priority=90, fifo_script=True))
    mail_with(outdir, "[lab_r1] VRRP Instance VI_1 - Entering MASTER state")
    mail_with(outdir, "[lab_r2] VRRP Instance VI_1 - Entering BACKUP state")

    lab.cut(r1)
    cut_at = time.time()
    wait_for(lambda: VIP in lab.addresses(r2), SETTLE, what="the VIP on r2")
    took_over = cap.wait_for(
        lambda ev: [e.time for e in adverts(ev, src=r2.ip, after=cut_at) if e.priority],
        SETTLE, what="r2's first advert as MASTER")[0]
    got = mail_with(outdir, "[lab_r2] VRRP Instance VI_1 - Entering MASTER state")
    assert got["time"] > cut_at

    # The envelope and the message, as keepalived 2.2.7 sends them.
    assert got["helo"] == "r2.example.org"
    assert got["peer"] == r2.ip
    assert got["mail_from"] == "pyalived@r2.example.org"
    assert got["rcpt_tos"] == ["ops@example.org", "noc@example.org"]
    msg = email.message_from_string(got["data"])
    assert msg["From"] == "pyalived@r2.example.org"
    assert msg["To"] == "ops@example.org, noc@example.org"
    assert msg["X-Mailer"] == "Keepalived"
    assert msg.get_payload().strip() == "=> VRRP Instance is now owning VRRP VIPs <="
    # Date: the moment of the transition (to the second, as the header has it).
    sent = email.utils.parsedate_to_datetime(msg["Date"]).timestamp()
    assert int(took_over) - 1 <= sent <= took_over + 1
    print(f"state change (first advert as MASTER on the wire) to mail accepted by the "
          f"server: {got['time'] - took_over:.3f} s")

    # r2's FIFO script read each of r2's transitions, in order.
    out = lab.workdir / "r2.fifo.out"
    lines = wait_for(lambda: [ln.split(" ", 1)[1] for ln in out.read_text().splitlines()]
                     if out.exists() and "MASTER" in out.read_text() else None,
                     SETTLE, what="r2's FIFO lines")
    assert lines == ['INSTANCE "VI_1" BACKUP 90', 'INSTANCE "VI_1" MASTER 90']
    # r1's FIFO has no reader at all: its lines wait in the pipe, nothing blocked.  Cut
    # off, its interface lost its carrier: FAULT.
    assert read_fifo(lab.workdir / "r1.fifo") == [
        'INSTANCE "VI_1" BACKUP 100', 'INSTANCE "VI_1" MASTER 100', 'INSTANCE "VI_1" FAULT 100']


BLACKHOLE = """table inet mailtest {
    chain input {
        type filter hook input priority 0; policy accept;
        tcp dport 2525 drop
    }
}
"""


@pytest.mark.parametrize("down", ["refusing", "blackholed"])
def test_mail_server_down_at_first_gets_the_alert_once_it_is_up(
    make_lab: MakeLab, down: str
) -> None:
    """The mail server is down when r1 becomes MASTER and comes up 10 s later: the alert
    arrives by a retry, stamped with the time of the transition, and VRRP never noticed.

    Down is either a host that refuses the connection, or one whose packets are dropped
    (each attempt then waits smtp_connect_timeout, 5 s here)."""
    lab = make_lab(routers=2, clients=1)
    r1, r2 = lab.routers
    server = lab.clients[0]
    outdir = lab.workdir / "mail"
    if down == "blackholed":  # in the server's namespace, gone with it
        subprocess.run(["ip", "netns", "exec", server.ns, "nft", "-f", "-"], input=BLACKHOLE,
                       text=True, check=True, capture_output=True)
    cap = lab.capture()
    start_router(lab, r1, config(r1, lab, server.ip, priority=100, fifo_script=False))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    start_router(lab, r2, config(r2, lab, server.ip, priority=90, fifo_script=False))
    master_at = cap.wait_for(
        lambda ev: [e.time for e in adverts(ev, src=r1.ip) if e.priority],
        SETTLE, what="r1's first advert")[0]
    wait_for(lambda: "retrying in" in r1.daemon.log_text() if r1.daemon else False, SETTLE,
             what="r1 to fail and plan a retry")
    time.sleep(10)
    up_at = time.time()
    if down == "blackholed":
        lab.run(server, "nft", "delete", "table", "inet", "mailtest")
    start_smtp(lab, server, outdir)
    got = mail_with(outdir, "[lab_r1] VRRP Instance VI_1 - Entering MASTER state", timeout=90)
    mail_with(outdir, "[lab_r2] VRRP Instance VI_1 - Entering BACKUP state", timeout=90)
    assert got["time"] >= up_at
    sent = email.utils.parsedate_to_datetime(
        email.message_from_string(got["data"])["Date"]).timestamp()
    assert sent < up_at - 5  # the time of the transition, not of the delivery
    # VRRP went on undisturbed: r1 advertised all along, r2 never did.
    events = cap.events()
    assert [e for e in adverts(events, src=r2.ip) if e.priority] == []
    times = [e.time for e in adverts(events, src=r1.ip, after=master_at) if e.priority]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and max(gaps) < 3 + (256 - 90) / 256  # never long enough for r2 to take over
    if down == "blackholed":
        assert "timed out" in (r1.daemon.log_text() if r1.daemon else "")
    print(f"({down}) mail server up {up_at - master_at:.1f} s after the transition; alert "
          "accepted "
          f"{got['time'] - up_at:.3f} s after it came up; largest advert gap meanwhile "
          f"{max(gaps):.3f} s over {len(gaps)} adverts")


def test_lvs_fifo_lines_when_a_web_server_crashes_and_comes_back(make_lab: MakeLab) -> None:
    """The checker child writes RS and VS lines to lvs_notify_fifo, read by its script, and
    mails the real server's alerts (on by default, as keepalived) to the mail server.

    (This host's kernel has no IPVS: the checkers and their notifications run anyway.)
    """
    lab = make_lab(routers=1, clients=1)
    (r1,), web = lab.routers, lab.clients[0]
    serve = [sys.executable, "-m", "http.server", "-b", web.ip, "8080"]
    server = lab.spawn(web, serve, "web-1")
    outdir = lab.workdir / "mail"
    start_smtp(lab, web, outdir)
    reader = lab.workdir / "fifo_reader.sh"
    reader.write_text(FIFO_READER)
    reader.chmod(0o755)
    text = f"""global_defs {{
    router_id lab_r1
    lvs_notify_fifo {lab.workdir}/lvs.fifo
    lvs_notify_fifo_script {reader}
    notification_email {{
        ops@example.org
    }}
    smtp_server {web.ip} {SMTP_PORT}
}}
virtual_server 198.18.0.100 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server {web.ip} 8080 {{
        TCP_CHECK {{
            connect_timeout 1
            retry 0
        }}
    }}
}}
"""
    start_router(lab, r1, text)
    out = lab.workdir / "r1.fifo.out"

    def lines() -> list[str]:
        return [ln.split(" ", 1)[1] for ln in out.read_text().splitlines()] \
            if out.exists() else []

    wait_for(lambda: "LVS started" in (r1.daemon.log_text() if r1.daemon else ""), SETTLE,
             what="the checkers")
    time.sleep(3)
    start = ["VS [198.18.0.100]:tcp:80 UP"]  # the quorum at start, as keepalived writes it
    assert lines() == start
    server.stop()
    rs = f"RS [{web.ip}]:tcp:8080 [198.18.0.100]:tcp:80"
    wait_for(lambda: len(lines()) >= 3, SETTLE, what="the DOWN lines")
    assert lines() == [*start, f"{rs} DOWN", "VS [198.18.0.100]:tcp:80 DOWN"]
    lab.spawn(web, serve, "web-2")
    wait_for(lambda: len(lines()) >= 5, SETTLE, what="the UP lines")
    assert lines() == [*start, f"{rs} DOWN", "VS [198.18.0.100]:tcp:80 DOWN",
                       f"{rs} UP", "VS [198.18.0.100]:tcp:80 UP"]
    down = mail_with(outdir, f"[lab_r1] Realserver [{web.ip}]:tcp:8080 of virtual server "
                     "[198.18.0.100]:tcp:80 - DOWN")
    up = mail_with(outdir, f"[lab_r1] Realserver [{web.ip}]:tcp:8080 of virtual server "
                   "[198.18.0.100]:tcp:80 - UP")
    assert email.message_from_string(down["data"]).get_payload().strip() == (
        "=> TCP CHECK failed on service <=")
    assert email.message_from_string(up["data"]).get_payload().strip() == (
        "=> TCP CHECK succeed on service <=")
    # No smtp_alert on the virtual server: its quorum changes are not mailed.
    assert len(mails(outdir)) == 2


def test_reload_moves_the_fifo_and_turns_mail_off_without_disturbing_vrrp(
    make_lab: MakeLab,
) -> None:
    """An operator points r2 (BACKUP) at a new FIFO, read by a script, and turns its
    instance's mail off, then reloads.  r2 stays BACKUP, untouched; when it later takes
    over, the new FIFO gets the line, the old one nothing more, and no mail is sent."""
    lab = make_lab(routers=2, clients=1)
    r1, r2 = lab.routers
    server = lab.clients[0]
    outdir = lab.workdir / "mail"
    start_smtp(lab, server, outdir)
    cap = lab.capture()
    start_router(lab, r1, config(r1, lab, server.ip, priority=100, fifo_script=False))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    start_router(lab, r2, config(r2, lab, server.ip, priority=90, fifo_script=False))
    mail_with(outdir, "[lab_r2] VRRP Instance VI_1 - Entering BACKUP state")
    old_fifo = os.open(lab.workdir / "r2.fifo", os.O_RDONLY | os.O_NONBLOCK)  # a late reader
    try:
        lab.write_config(r2, config(r2, lab, server.ip, priority=90, fifo_script=True,
                                    fifo="r2-new.fifo", instance_mail=False))
        since = time.time()
        assert r2.daemon is not None
        r2.daemon.signal(signal.SIGHUP)
        daemon = r2.daemon
        wait_for(lambda: "reload: applied by every child" in daemon.log_text(), SETTLE,
                 what="the reload")
        assert "VI_1 updated (smtp_alert)" in daemon.log_text()  # in place, not restarted
        out = lab.workdir / "r2.fifo.out"
        time.sleep(1.5)
        assert not out.exists() or out.read_text() == ""  # r2 sent nothing, changed nothing
        assert [e for e in adverts(cap.events(), src=r2.ip, after=since) if e.priority] == []
        lab.cut(r1)
        wait_for(lambda: out.exists() and "MASTER" in out.read_text(), SETTLE,
                 what="the MASTER line in the new FIFO")
        assert [ln.split(" ", 1)[1] for ln in out.read_text().splitlines()] == [
            'INSTANCE "VI_1" MASTER 90']
        # The old FIFO, closed at the reload, got only what came before it.
        data = b""
        try:
            while chunk := os.read(old_fifo, 65536):
                data += chunk
        except BlockingIOError:
            pass
        assert data.decode().splitlines() == ['INSTANCE "VI_1" BACKUP 90']
        time.sleep(2)  # a mail would have arrived within milliseconds
        subjects = [email.message_from_string(m["data"])["Subject"] for m in mails(outdir)]
        assert "[lab_r2] VRRP Instance VI_1 - Entering MASTER state" not in subjects
    finally:
        os.close(old_fifo)
