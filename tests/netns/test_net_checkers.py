"""DNS_CHECK, UDP_CHECK, PING_CHECK and SMTP_CHECK against real servers, on the wire.

The real daemon runs in a router namespace (this kernel has no IPVS, so it
logs that once and keeps checking); the real servers run in a client
namespace: a DNS server written with dnspython, UDP echo and discard
servers, the namespace's own ICMP stack, and an aiosmtpd SMTP server.  Each
test starts the checkers with ``alpha`` (down until a check passes), so the
first UP proves a real check passed; then the server dies or misbehaves the
way a real one does (SERVFAIL, a killed process, a host gone from the LAN, a
mail server that is down) and must be seen DOWN, and come back UP once it
is restored.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable

import pytest

from pyalived.lab import Lab, Node, Proc, wait_for

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0
VIP = "198.18.0.100"

GENERIC = """
            connect_timeout 1
            retry 1
            delay_before_retry 1
            delay_loop 1
            warmup 0
            alpha"""


def config(port: int, real_servers: str, protocol: str = "UDP") -> str:
    return f"""
global_defs {{
    router_id r1
}}

virtual_server {VIP} {port} {{
    lb_algo rr
    lb_kind NAT
    protocol {protocol}
{real_servers}
}}
"""


def transitions(daemon: Proc, label: str) -> list[str]:
    """The UP/DOWN words logged for checker ``label`` (``DNS_CHECK#0``), in order."""
    return re.findall(rf"{re.escape(label)} (UP|DOWN)", daemon.log_text())


def wait_transitions(daemon: Proc, label: str, expected: list[str]) -> None:
    wait_for(lambda: transitions(daemon, label) == expected or None, SETTLE,
             what=f"{label}: {expected}, got {transitions(daemon, label)}")


def logged(daemon: Proc, text: str, times: int = 1) -> None:
    """Wait until ``text`` is in the daemon's log ``times`` times."""
    wait_for(lambda: daemon.log_text().count(text) >= times or None, SETTLE,
             what=f"{text!r} x{times}")


# ---- DNS_CHECK ------------------------------------------------------------------------

DNS_SERVER = """
import os, socket, sys
import dns.message, dns.rcode, dns.rrset
ip, flag = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((ip, 53))
while True:
    data, peer = sock.recvfrom(4096)
    query = dns.message.from_wire(data)
    reply = dns.message.make_response(query)
    if os.path.exists(flag):
        reply.set_rcode(dns.rcode.SERVFAIL)  # its zone failed to load
    else:
        reply.answer.append(dns.rrset.from_text(
            ".", 60, "IN", "SOA", "ns. host. 1 2 3 4 5"))
    sock.sendto(reply.to_wire(), peer)
"""


def test_dns_check_servfail_and_a_dead_server(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    flag = lab.workdir / "servfail"

    def start_server() -> Proc:
        return lab.spawn(client, [sys.executable, "-c", DNS_SERVER, client.ip, str(flag)],
                         "dns")

    server = start_server()
    rs = f"""    real_server {client.ip} 53 {{
        DNS_CHECK {{
            type SOA
            name .{GENERIC}
        }}
    }}"""
    daemon = lab.start_daemon(router, config(53, rs), "pyalived")
    wait_transitions(daemon, "DNS_CHECK#0", ["UP"])

    flag.touch()  # the server still answers, with SERVFAIL
    wait_transitions(daemon, "DNS_CHECK#0", ["UP", "DOWN"])
    assert "RCODE SERVFAIL" in daemon.log_text()
    flag.unlink()
    wait_transitions(daemon, "DNS_CHECK#0", ["UP", "DOWN", "UP"])

    server.kill()  # the process dies: its port answers with ICMP port unreachable
    server.wait()
    wait_transitions(daemon, "DNS_CHECK#0", ["UP", "DOWN", "UP", "DOWN"])
    assert "port unreachable" in daemon.log_text().split("RCODE SERVFAIL")[-1]
    start_server()
    wait_transitions(daemon, "DNS_CHECK#0", ["UP", "DOWN", "UP", "DOWN", "UP"])


DNS_LOGGING_SERVER = """
import socket, sys
import dns.message, dns.rcode
ip, log = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((ip, 53))
while True:
    data, peer = sock.recvfrom(4096)
    query = dns.message.from_wire(data)
    q = query.question[0]
    with open(log, "a") as f:
        f.write(f"{q.name} {dns.rdatatype.to_text(q.rdtype)}\\n")
    sock.sendto(dns.message.make_response(query).to_wire(), peer)
"""


def test_dns_check_reload_asks_the_new_question_without_a_flap(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    log = lab.workdir / "questions.log"
    lab.spawn(client, [sys.executable, "-c", DNS_LOGGING_SERVER, client.ip, str(log)], "dns")

    def rs(kind: str, name: str) -> str:
        return f"""    real_server {client.ip} 53 {{
        DNS_CHECK {{
            type {kind}
            name {name}{GENERIC}
        }}
    }}"""

    conf = lab.write_config(router, config(53, rs("A", "www.example.test")))
    daemon = lab.start_daemon(router, conf, "pyalived")
    wait_transitions(daemon, "DNS_CHECK#0", ["UP"])
    assert "www.example.test. A" in log.read_text()

    conf.write_text(config(53, rs("MX", "example.test")))
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "example.test. MX" in log.read_text() or None, SETTLE,
             what="the new question")
    assert transitions(daemon, "DNS_CHECK#0") == ["UP"]  # kept its state, no flap


# ---- UDP_CHECK ------------------------------------------------------------------------

UDP_SERVERS = """
import os, socket, sys, threading
ip, flag = sys.argv[1], sys.argv[2]
def echo():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 7))
    while True:
        data, peer = s.recvfrom(4096)
        s.sendto(b"garbage" if os.path.exists(flag) else data, peer)
def discard():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 9))
    while True:
        s.recvfrom(4096)
threading.Thread(target=discard, daemon=True).start()
echo()
"""


def test_udp_check_reply_silence_and_port_unreachable(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    flag = lab.workdir / "garbage"

    def start_servers() -> Proc:
        return lab.spawn(client, [sys.executable, "-c", UDP_SERVERS, client.ip, str(flag)],
                         "udp")

    servers = start_servers()
    rs = f"""    real_server {client.ip} 7 {{
        UDP_CHECK {{
            payload 70 79 61 6c 69 76 65 64
            require_reply 7079 XX 6c{GENERIC}
        }}
    }}
    real_server {client.ip} 9 {{
        UDP_CHECK {{{GENERIC}
        }}
    }}"""
    daemon = lab.start_daemon(router, config(7, rs), "pyalived")
    # port 9 never answers: silence without require_reply passes
    logged(daemon, f"real server {client.ip}:9: UDP_CHECK#0 UP")
    logged(daemon, f"real server {client.ip}:7: UDP_CHECK#0 UP")

    flag.touch()  # the echo server answers, but not what is required
    logged(daemon, f"real server {client.ip}:7: UDP_CHECK#0 DOWN")
    assert "does not match require_reply" in daemon.log_text()
    flag.unlink()
    logged(daemon, f"real server {client.ip}:7: UDP_CHECK#0 UP", 2)

    servers.kill()  # both ports now answer with ICMP port unreachable
    servers.wait()
    for port in (7, 9):
        logged(daemon, f"{client.ip}:{port}: UDP_CHECK#0 DOWN")
    assert daemon.log_text().count("port unreachable") >= 2
    start_servers()
    logged(daemon, f"real server {client.ip}:9: UDP_CHECK#0 UP", 2)
    logged(daemon, f"real server {client.ip}:7: UDP_CHECK#0 UP", 3)


# ---- PING_CHECK -----------------------------------------------------------------------

V6_ROUTER, V6_CLIENT = "fd00:198:18::11", "fd00:198:18::201"


def set_ping_sockets(lab: Lab, node: Node, allowed: bool) -> None:
    value = "0 2147483647" if allowed else "1 0"
    lab.run(node, "sysctl", "-q", "-w", f"net.ipv4.ping_group_range={value}")


@pytest.mark.parametrize("ping_sockets", [True, False], ids=["ping-socket", "raw-socket"])
def test_ping_check_ipv4_and_ipv6_host_gone_and_back(make_lab: MakeLab,
                                                     ping_sockets: bool) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    set_ping_sockets(lab, router, ping_sockets)  # per namespace
    lab.add_ipv6(router, f"{V6_ROUTER}/64")
    lab.add_ipv6(client, f"{V6_CLIENT}/64")
    rs = f"""    real_server {client.ip} 80 {{
        PING_CHECK {{{GENERIC}
        }}
        PING_CHECK {{
            connect_ip {V6_CLIENT}{GENERIC}
        }}
    }}"""
    daemon = lab.start_daemon(router, config(80, rs, "TCP"), "pyalived")
    wait_transitions(daemon, "PING_CHECK#0", ["UP"])
    wait_transitions(daemon, "PING_CHECK#1", ["UP"])
    raw_note = "using raw ICMP sockets" in daemon.log_text()
    assert raw_note is not ping_sockets

    lab.cut(client)  # the host is gone from the LAN (its switch port is down)
    wait_transitions(daemon, "PING_CHECK#0", ["UP", "DOWN"])
    wait_transitions(daemon, "PING_CHECK#1", ["UP", "DOWN"])
    lab.reconnect(client)
    # the kernel may have dropped the IPv6 address with the carrier: as a host would
    # on booting, it configures it again
    lab.ip(client, "-6", "addr", "replace", f"{V6_CLIENT}/64", "dev", "eth0", "nodad")
    wait_transitions(daemon, "PING_CHECK#0", ["UP", "DOWN", "UP"])
    wait_transitions(daemon, "PING_CHECK#1", ["UP", "DOWN", "UP"])


def test_ping_check_address_with_nothing_behind_it(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    nobody = "198.18.0.250"  # on the LAN, held by no namespace
    rs = f"""    real_server {client.ip} 80 {{
        PING_CHECK {{{GENERIC}
        }}
    }}
    real_server {nobody} 80 {{
        PING_CHECK {{
            connect_timeout 1
            retry 0
            delay_loop 1
            warmup 0
        }}
    }}"""
    daemon = lab.start_daemon(router, config(80, rs, "TCP"), "pyalived")
    wait_for(lambda: f"real server {client.ip}:80: PING_CHECK#0 UP" in daemon.log_text()
             or None, SETTLE, what="the live host up")
    wait_for(lambda: f"real server {nobody}:80: PING_CHECK#0 DOWN" in daemon.log_text()
             or None, SETTLE, what="the empty address down")
    assert f"real server {nobody}:80: PING_CHECK#0 UP" not in daemon.log_text()


# ---- SMTP_CHECK -----------------------------------------------------------------------

SMTP_SERVER = """
import asyncio, sys
from aiosmtpd.smtp import SMTP
ip, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class Handler:
    async def handle_HELO(self, server, session, envelope, hostname):
        with open(log, "a") as f:
            f.write(hostname + "\\n")
        session.host_name = hostname
        return "250 " + server.hostname
async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: SMTP(Handler(), hostname="mx.test"), ip, port)
    await srv.serve_forever()
asyncio.run(main())
"""


def test_smtp_check_hosts_a_mail_server_down_and_back(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    helos = lab.workdir / "helo.log"

    def start_server(port: int) -> Proc:
        return lab.spawn(client, [sys.executable, "-c", SMTP_SERVER, client.ip, str(port),
                                  str(helos)], f"smtp{port}")

    main, backup = start_server(25), start_server(2525)
    rs = f"""    real_server {client.ip} 25 {{
        SMTP_CHECK {{
            helo_name director.test{GENERIC}
            host {{
                connect_ip {client.ip}
                connect_port 25
            }}
            host {{
                connect_ip {client.ip}
                connect_port 2525
            }}
        }}
    }}"""
    daemon = lab.start_daemon(router, config(25, rs, "TCP"), "pyalived")
    wait_transitions(daemon, "SMTP_CHECK#0", ["UP"])
    wait_transitions(daemon, "SMTP_CHECK#1", ["UP"])
    assert set(helos.read_text().split()) == {"director.test"}

    backup.kill()  # the second mail server is down: its host checker fails
    backup.wait()
    wait_transitions(daemon, "SMTP_CHECK#1", ["UP", "DOWN"])
    assert transitions(daemon, "SMTP_CHECK#0") == ["UP"]
    assert f"SMTP {client.ip}:2525: connection refused" in daemon.log_text()
    backup = start_server(2525)
    wait_transitions(daemon, "SMTP_CHECK#1", ["UP", "DOWN", "UP"])

    main.kill()
    main.wait()
    wait_transitions(daemon, "SMTP_CHECK#0", ["UP", "DOWN"])
    start_server(25)
    wait_transitions(daemon, "SMTP_CHECK#0", ["UP", "DOWN", "UP"])


def test_smtp_check_greeting_refused(make_lab: MakeLab) -> None:
    """A server that greets with 554 (no service) is not counted as up."""
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    script = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 25)); s.listen()
while True:
    c, _ = s.accept(); c.sendall(b"554 no SMTP service here\\r\\n"); c.close()
"""
    lab.spawn(client, [sys.executable, "-c", script, client.ip], "smtp554")
    no_alpha = GENERIC.replace("alpha", "")  # counted up until checked
    rs = f"""    real_server {client.ip} 25 {{
        SMTP_CHECK {{{no_alpha}
        }}
    }}"""
    daemon = lab.start_daemon(router, config(25, rs, "TCP"), "pyalived")
    wait_transitions(daemon, "SMTP_CHECK#0", ["DOWN"])
    assert f"SMTP {client.ip}:25: greeting 554 no SMTP service here" in daemon.log_text()


# ---- a checker pyalived cannot run ----------------------------------------------------


def test_real_server_whose_only_checker_is_unsupported_stays_out(make_lab: MakeLab) -> None:
    """The issue's case: the server must not be counted as up for want of a checker."""
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    rs = f"""    real_server {client.ip} 80 {{
        BFD_CHECK {{
            name maintenance
        }}
    }}
    real_server {client.ip} 81 {{
        PING_CHECK {{{GENERIC}
        }}
    }}"""
    daemon = lab.start_daemon(router, config(80, rs, "TCP"), "pyalived")
    conf = lab.workdir / f"{router.name}.conf"
    up = f"real server {client.ip}:81: PING_CHECK#0 UP"
    logged(daemon, up)
    logged(daemon, "quorum gained (live weight 1)")
    text = daemon.log_text()
    # no live weight before the pinged server came up: the other one never counts
    assert text.index("quorum lost (live weight 0)") < text.index(up) < text.index(
        "quorum gained (live weight 1)")
    line = next(i for i, t in enumerate(conf.read_text().splitlines(), 1) if "BFD_CHECK" in t)
    assert f"{conf}:{line}" in text and "checker BFD_CHECK is not supported yet" in text
    assert "live weight 2" not in text
