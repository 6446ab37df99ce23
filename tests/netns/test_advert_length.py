"""An advert padded with trailing bytes must not win an election.

A router runs the daemon under test as MASTER (priority 100).  An attacker
namespace on the same bridge sends, through a raw socket, adverts for the same
VRID and virtual IP at priority 200 that are well formed in every respect but
one: 1,000 extra bytes follow the authentication data, counted in the IPv4
total length and covered by a correct VRRP checksum.  RFC 3768 §7.1 makes the
receiver verify that it got "the complete VRRP packet"; keepalived 2.2.7 also
refuses a longer one ("vrrp packet too long"), and so must pyalived: the
router stays MASTER (keeps the VIP, never enters BACKUP) and counts the drop
(``bad_length`` in pyalived's metrics, "too long" in keepalived's log).
pyalived also keeps advertising at priority 100 on its schedule; keepalived
2.2.7 does not, because it restarts its advert timer on every datagram it
reads for the VRID, valid or not (so its adverts pause while the attacker
sends one a second).

Two controls follow in the same lab.  The same advert without the trailing
bytes makes the router yield, which proves the attacker's adverts are
otherwise valid.  And the same advert inside an Ethernet frame that carries
1,000 bytes *after* the datagram (outside its total length) also makes it
yield: the kernel trims a datagram to its total length before a raw socket
sees it, so neither daemon can tell such a frame from a clean one.

The attacker's adverts are assembled by hand here (RFC 791, RFC 3768 §5.1),
not with pyalived's codec, and everything is judged from the namespaces'
addresses, the bridge capture and the daemon's own reports.  The test runs
against pyalived and against keepalived 2.2.7, so both are seen to agree.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Callable

import pytest

from pyalived.lab import (
    KEEPALIVED,
    VIP,
    Capture,
    Impl,
    Lab,
    Node,
    VrrpSpec,
    adverts,
    render_config,
    wait_for,
)

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0
VRID = 51
TRAILER = 1000
ATTACK_ADVERTS = 3
# 20 (IPv4) + 8 (VRRP header) + 4 (one address) + 8 (authentication data) = 40
KEEPALIVED_TOO_LONG = f"(VI_1) vrrp packet too long, length {40 + TRAILER} and expect 40"

# Sends COUNT VRRPv2 adverts, one a second, from SRC to 224.0.0.18 on eth0.
# MODE "ip": TRAILER bytes inside the datagram (IPv4 total length and VRRP
# checksum include them), sent on a raw IP socket.  MODE "frame": a clean
# datagram in an Ethernet frame followed by TRAILER bytes, sent on AF_PACKET.
_ATTACKER = r"""
import socket, struct, sys, time
src, vrid, prio, vip, trailer, mode, count = sys.argv[1:8]
vrid, prio, trailer, count = int(vrid), int(prio), int(trailer), int(count)
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
def datagram(ident, extra):
    # version 2, type 1; count 1; auth type 0; advert interval 1 s; checksum later
    vrrp = struct.pack("!BBBBBBH", 0x21, vrid, prio, 1, 0, 1, 0)
    vrrp += socket.inet_aton(vip) + bytes(8) + b"\xa5" * extra
    vrrp = vrrp[:6] + struct.pack("!H", csum(vrrp)) + vrrp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(vrrp), ident, 0, 255, 112, 0,
                     socket.inet_aton(src), socket.inet_aton("224.0.0.18"))
    return ip[:10] + struct.pack("!H", csum(ip)) + ip[12:] + vrrp
if mode == "frame":
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    head = b"\x01\x00\x5e\x00\x00\x12" + s.getsockname()[4] + b"\x08\x00"
    send = lambda i: s.send(head + datagram(i, 0) + b"\x5a" * trailer)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    mreqn = struct.pack("4s4si", bytes(4), bytes(4), socket.if_nametoindex("eth0"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
    send = lambda i: s.sendto(datagram(i, trailer), ("224.0.0.18", 0))
for i in range(1, count + 1):
    if i > 1:
        time.sleep(1.0)
    send(i)
"""

_METRICS = (
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:9165/metrics', timeout=5).read().decode())"
)


def attack(lab: Lab, attacker: Node, *, trailer: int, mode: str, count: int) -> None:
    """Send ``count`` priority-200 adverts from ``attacker``; returns after the last one."""
    lab.run(attacker, sys.executable, "-c", _ATTACKER, attacker.ip, str(VRID), "200", VIP,
            str(trailer), mode, str(count))


def backup_entries(impl: Impl, log: str) -> int:
    """How often the daemon went from MASTER to BACKUP, by its own log."""
    if impl == "keepalived":
        return len(re.findall(r"\(VI_1\) Entering BACKUP STATE$", log, re.MULTILINE))
    return len(re.findall(r"\(VI_1\) MASTER -> BACKUP", log))


def length_drops(lab: Lab, impl: Impl, node: Node) -> int:
    """Adverts the daemon reports it dropped for their length."""
    assert node.daemon is not None
    if impl == "keepalived":
        return node.daemon.log_text().count(KEEPALIVED_TOO_LONG)
    text = lab.run(node, sys.executable, "-c", _METRICS).stdout
    found = re.search(r'^pyalived_vrrp_packets_dropped_total\{reason="bad_length"\} (\S+)$',
                      text, re.MULTILINE)
    assert found, "no bad_length series in the metrics"
    return int(float(found.group(1)))


def yields_to(lab: Lab, cap: Capture, router: Node, attacker: Node, *, trailer: int,
              mode: str) -> None:
    """The router, MASTER now, gives the VIP up to the attacker's adverts."""
    lab.wait_sole_holder(router, timeout=SETTLE)
    before = time.time()
    attack(lab, attacker, trailer=trailer, mode=mode, count=2)
    wait_for(lambda: lab.holders() == [], 5.0,
             what=f"{router} to give the VIP up to {mode} adverts of priority 200")
    assert adverts(cap.events(), src=attacker.ip, after=before), "the attacker's adverts"


@pytest.mark.parametrize("impl", ["pyalived", "keepalived"])
def test_trailing_bytes_do_not_win_an_election(make_lab: MakeLab, impl: Impl) -> None:
    if impl == "keepalived" and shutil.which(KEEPALIVED) is None:
        pytest.skip("keepalived is not installed")
    lab = make_lab(routers=2)
    router, attacker = lab.routers
    lab.start_daemon(router, render_config("r1", [VrrpSpec(priority=100, state="MASTER")]),
                     impl)
    lab.wait_sole_holder(router, timeout=SETTLE)
    cap = lab.capture()
    assert router.daemon is not None
    dropped_before = length_drops(lab, impl, router)

    # The attack: 1,000 trailing bytes inside the datagram.  Nothing changes.
    start = time.time()
    attack(lab, attacker, trailer=TRAILER, mode="ip", count=ATTACK_ADVERTS)
    time.sleep(1.5)  # an advert of the router after the last attacking one
    end = time.time()
    assert lab.holders() == [router]
    events = cap.events()
    sent = adverts(events, src=attacker.ip, after=start)
    assert [e.priority for e in sent] == [200] * ATTACK_ADVERTS, "the attack was on the wire"
    own = [e for e in adverts(events, src=router.ip, after=start) if e.time < end]
    assert {e.priority for e in own} <= {100}
    if impl == "pyalived":
        # keepalived 2.2.7 restarts its advert timer on every datagram it reads,
        # valid or not, so these adverts (one a second) hold its own back.
        assert len(own) >= ATTACK_ADVERTS and own[-1].time > sent[-1].time
    assert backup_entries(impl, router.daemon.log_text()) == 0
    assert length_drops(lab, impl, router) - dropped_before == ATTACK_ADVERTS

    # Control: the same adverts without the trailing bytes win.
    yields_to(lab, cap, router, attacker, trailer=0, mode="ip")
    assert backup_entries(impl, router.daemon.log_text()) == 1

    # Bytes after the datagram, outside its total length: the kernel trims them.
    yields_to(lab, cap, router, attacker, trailer=TRAILER, mode="frame")
    assert backup_entries(impl, router.daemon.log_text()) == 2
    assert length_drops(lab, impl, router) - dropped_before == ATTACK_ADVERTS
