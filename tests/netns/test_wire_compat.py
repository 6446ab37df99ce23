"""Wire compatibility with keepalived 2.2.7: its adverts and GARPs against our codec.

A bridge namespace joins a namespace running the real keepalived as MASTER
(198.18.0.11) and a peer namespace (198.18.0.12, the unicast target).  tcpdump
on the bridge records everything; after keepalived has advertised, announced
its addresses and been stopped (which sends a priority-0 advert), the capture
is checked: parse_datagram + verify accept every advert, build_datagram
rebuilds each one byte for byte from the configured fields (taking only the IP
id and the AH sequence number from the capture), and each gratuitous ARP equals
build_garp_frame.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from pyalived.config.model import AuthType
from pyalived.vrrp.garp import build_garp_frame
from pyalived.vrrp.packet import (
    VRRP_MCAST_GROUP,
    Advert,
    Expectation,
    PacketError,
    build_datagram,
    check_ah_sequence,
    parse_datagram,
    verify,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        shutil.which("keepalived") is None or shutil.which("tcpdump") is None,
        reason="needs keepalived and tcpdump",
    ),
]

MASTER = IPv4Address("198.18.0.11")
PEER = IPv4Address("198.18.0.12")
VIPS = (IPv4Address("198.18.0.100"), IPv4Address("198.18.0.101"))
VRID = 51
PRIORITY = 150
TIMEOUT = 30.0
_counter = itertools.count()


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@dataclass
class Lan:
    bridge_ns: str
    master_ns: str
    peer_ns: str
    master_mac: bytes


@pytest.fixture
def lan() -> Iterator[Lan]:
    prefix = f"wc{os.getpid() % 100000}x{next(_counter)}"
    made: list[str] = []
    try:
        bridge = f"{prefix}b"
        sh("ip", "netns", "add", bridge)
        made.append(bridge)
        sh("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", bridge, "link", "set", "br0", "up")
        for suffix, addr in (("m", MASTER), ("p", PEER)):
            ns, leg = f"{prefix}{suffix}", f"{prefix}{suffix}"
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "link", "add", leg, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", leg, "netns", bridge)
            sh("ip", "-n", bridge, "link", "set", leg, "master", "br0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        link = json.loads(sh("ip", "-n", f"{prefix}m", "-j", "link", "show", "eth0"))
        mac = bytes.fromhex(link[0]["address"].replace(":", ""))
        yield Lan(bridge, f"{prefix}m", f"{prefix}p", mac)
    finally:
        for ns in reversed(made):
            # Anything still running inside is ours (started by this test): end it by pid.
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# --------------------------------------------------------------------------- capture


def read_pcap(path: Path) -> list[bytes]:
    """Frames of a classic pcap file; an incomplete trailing record is ignored."""
    data = path.read_bytes() if path.exists() else b""
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise AssertionError(f"not a pcap file: {magic.hex()}")
    frames, at = [], 24
    while at + 16 <= len(data):
        _sec, _frac, incl, _orig = struct.unpack_from(order + "IIII", data, at)
        if at + 16 + incl > len(data):
            break
        frames.append(data[at + 16 : at + 16 + incl])
        at += 16 + incl
    return frames


def ip_datagrams(frames: list[bytes]) -> list[bytes]:
    """The IPv4 datagrams of VRRP/AH frames, each cut at its total length (as the kernel
    does before a raw socket sees it: a frame may be padded past the datagram)."""
    return [
        f[14 : 14 + struct.unpack_from("!H", f, 16)[0]]
        for f in frames
        if f[12:14] == b"\x08\x00" and f[23] in (51, 112)
    ]


def garps(frames: list[bytes]) -> list[bytes]:
    # ARP with sender protocol address == target protocol address.
    return [f for f in frames if f[12:14] == b"\x08\x06" and f[28:32] == f[38:42]]


def wait_for(predicate: object, what: str, timeout: float = TIMEOUT) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def keepalived_conf(auth: AuthType | None, password: str, unicast: bool) -> str:
    auth_block = ""
    if auth is not None:
        auth_block = (
            f"authentication {{\n    auth_type {auth.value}\n    auth_pass {password}\n  }}"
        )
    uni = f"unicast_peer {{\n    {PEER}\n  }}" if unicast else ""
    return f"""global_defs {{
  router_id wirecompat
}}
vrrp_instance VI_1 {{
  state MASTER
  interface eth0
  virtual_router_id {VRID}
  priority {PRIORITY}
  advert_int 1
  {auth_block}
  {uni}
  virtual_ipaddress {{
    {VIPS[0]}/24
    {VIPS[1]}
  }}
}}
"""


def capture_keepalived(lan: Lan, tmp: Path, conf: str) -> list[bytes]:
    """Run keepalived as MASTER until it has advertised and announced, stop it, return frames."""
    pcap = tmp / "lan.pcap"
    (tmp / "keepalived.conf").write_text(conf)
    log = (tmp / "keepalived.log").open("wb")
    # -U: write each packet at once, so the file can be polled; -Z root: keep
    # the right to write into the test's private directory.
    tcpdump_argv = ["tcpdump", "-i", "br0", "-U", "-Z", "root", "-w", str(pcap)]
    tcpdump = subprocess.Popen(
        ["ip", "netns", "exec", lan.bridge_ns, *tcpdump_argv, "ip proto 112 or ip proto 51 or arp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    keepalived: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: pcap.exists() and pcap.stat().st_size >= 24, "tcpdump to start")
        files = ["-f", str(tmp / "keepalived.conf"), "-p", str(tmp / "k.pid")]
        files += ["-r", str(tmp / "k.vpid"), "-c", str(tmp / "k.cpid")]
        keepalived = subprocess.Popen(
            ["ip", "netns", "exec", lan.master_ns, "keepalived", "-n", "-l", "-D", *files],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def announced() -> bool:
            frames = read_pcap(pcap)
            seen = {IPv4Address(f[28:32]) for f in garps(frames)}
            return len(ip_datagrams(frames)) >= 3 and seen >= set(VIPS)

        wait_for(announced, "adverts and gratuitous ARPs from keepalived")
        stop(keepalived, signal.SIGTERM)

        def said_goodbye() -> bool:
            return any(
                parse_datagram(d).advert.priority == 0 for d in ip_datagrams(read_pcap(pcap))
            )

        wait_for(said_goodbye, "the priority-0 advert", timeout=10)
    finally:
        if keepalived is not None:
            stop(keepalived, signal.SIGKILL)
        stop(tcpdump, signal.SIGINT)
        log.close()
    return read_pcap(pcap)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("auth", "password", "unicast"),
    [
        (None, "", False),
        (AuthType.PASS, "secret12xyz", False),  # keepalived keeps "secret12"
        (AuthType.AH, "ahkey", False),
        (None, "", True),
    ],
    ids=["none", "pass", "ah", "unicast"],
)
def test_keepalived_adverts_and_garps_match_codec(
    lan: Lan, tmp_path: Path, auth: AuthType | None, password: str, unicast: bool
) -> None:
    frames = capture_keepalived(lan, tmp_path, keepalived_conf(auth, password, unicast))
    key = password.encode()
    expect = Expectation(VRID, 1, frozenset(VIPS), auth, key)
    dst = PEER if unicast else VRRP_MCAST_GROUP

    datagrams = ip_datagrams(frames)
    assert len(datagrams) >= 3
    priorities = []
    last_seq: int | None = None
    for datagram in datagrams:
        received = parse_datagram(datagram)
        verify(received, expect, datagram)
        last_seq = check_ah_sequence(last_seq, received)
        assert (received.src, received.dst) == (MASTER, dst)
        priorities.append(received.advert.priority)
        advert = Advert(VRID, received.advert.priority, 1, VIPS)
        (ip_id,) = struct.unpack_from("!H", datagram, 4)
        rebuilt = build_datagram(
            MASTER,
            dst,
            advert,
            ip_id=ip_id,
            auth=auth,
            auth_key=key,
            ah_seq=received.ah_seq or 0,
        )
        assert rebuilt.hex() == datagram.hex()
    assert priorities[0] == PRIORITY and priorities[-1] == 0
    if auth is AuthType.AH:
        assert last_seq is not None and last_seq == len(datagrams)

    announcements = garps(frames)
    assert {IPv4Address(f[28:32]) for f in announcements} == set(VIPS)
    for frame in announcements:
        want = build_garp_frame(lan.master_mac, IPv4Address(frame[28:32]))
        assert frame[:42].hex() == want.hex()
        assert frame[42:] == bytes(len(frame) - 42)  # at most zero padding


def test_wrong_password_rejected_for_keepalived_adverts(lan: Lan, tmp_path: Path) -> None:
    frames = capture_keepalived(lan, tmp_path, keepalived_conf(AuthType.PASS, "rightpwd", False))
    datagrams = ip_datagrams(frames)
    assert datagrams
    for password, reason in ((b"wrongpwd", "auth_failure"), (b"", "auth_failure")):
        wrong = Expectation(VRID, 1, frozenset(VIPS), AuthType.PASS, password)
        for datagram in datagrams:
            with pytest.raises(PacketError) as info:
                verify(parse_datagram(datagram), wrong, datagram)
            assert info.value.reason == reason
    for other, reason in ((None, "auth_type_mismatch"), (AuthType.AH, "auth_type_mismatch")):
        expect = Expectation(VRID, 1, frozenset(VIPS), other, b"rightpwd")
        with pytest.raises(PacketError) as info:
            verify(parse_datagram(datagrams[0]), expect, datagrams[0])
        assert info.value.reason == reason


# --------------------------------------------------------------------------- reverse direction

SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
for datagram in sys.argv[2:]:
    s.sendto(bytes.fromhex(datagram), ("224.0.0.18", 0))
    time.sleep(1.0)
"""


@pytest.mark.parametrize(
    ("auth", "their_key", "our_key", "advert", "accepted"),
    [
        (None, "", b"", Advert(VRID, 200, 1, VIPS), True),
        (AuthType.PASS, "secret12", b"secret12", Advert(VRID, 200, 1, VIPS), True),
        (AuthType.AH, "ahkey", b"ahkey", Advert(VRID, 200, 1, VIPS), True),
        (AuthType.AH, "ahkey", b"ahkez", Advert(VRID, 200, 1, VIPS), False),
        # keepalived, like verify, drops an address mismatch even from the owner.
        (None, "", b"", Advert(VRID, 255, 1, VIPS[:1]), False),
    ],
    ids=["none", "pass", "ah", "ah-wrong-key", "owner-addr-count"],
)
def test_keepalived_backup_judges_our_adverts_like_verify(
    lan: Lan,
    tmp_path: Path,
    auth: AuthType | None,
    their_key: str,
    our_key: bytes,
    advert: Advert,
    accepted: bool,
) -> None:
    """keepalived as BACKUP (priority 100) hears our priority-200+ adverts: it stays
    BACKUP exactly when our own verify accepts them, else it takes over."""
    conf = keepalived_conf(auth, their_key, False)
    conf = conf.replace("state MASTER", "state BACKUP").replace(
        f"priority {PRIORITY}", "priority 100"
    )
    (tmp_path / "keepalived.conf").write_text(conf)
    datagrams = [
        build_datagram(
            PEER, VRRP_MCAST_GROUP, advert, ip_id=n, auth=auth, auth_key=our_key, ah_seq=n
        )
        for n in range(1, 8)
    ]
    own_view = Expectation(VRID, 1, frozenset(VIPS), auth, their_key.encode())
    try:
        verify(parse_datagram(datagrams[0]), own_view, datagrams[0])
        we_accept = True
    except PacketError:
        we_accept = False
    assert we_accept == accepted

    log_path = tmp_path / "keepalived.log"
    log = log_path.open("wb")
    files = ["-f", str(tmp_path / "keepalived.conf"), "-p", str(tmp_path / "k.pid")]
    files += ["-r", str(tmp_path / "k.vpid"), "-c", str(tmp_path / "k.cpid")]
    keepalived = subprocess.Popen(
        ["ip", "netns", "exec", lan.master_ns, "keepalived", "-n", "-l", "-D", *files],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: b"Entering BACKUP STATE" in log_path.read_bytes(), "keepalived BACKUP")
        subprocess.run(
            ["ip", "netns", "exec", lan.peer_ns, sys.executable, "-c", SENDER, str(PEER)]
            + [d.hex() for d in datagrams],
            check=True,
            timeout=TIMEOUT,
        )
        # Seven adverts a second apart outlast Master_Down_Interval (3 + 156/256 s).
        became_master = b"Entering MASTER STATE" in log_path.read_bytes()
        assert became_master == (not accepted), log_path.read_text()
    finally:
        stop(keepalived, signal.SIGTERM)
        stop(keepalived, signal.SIGKILL)
        log.close()
