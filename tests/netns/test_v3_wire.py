"""VRRPv3 wire compatibility with keepalived 2.2.7, IPv4 and IPv6, both checksum forms.

One lab (``pyalived.lab.Lab``): keepalived runs as MASTER in r1 (198.18.0.11,
fd00:198:18::11 and its link-local address) with ``vrrp_version 3`` and five
instances: IPv4 multicast, IPv6 multicast (ff02::12), and three IPv4 unicast
ones towards r2 (198.18.0.12): the default checksum, ``old_unicast_checksum``
and ``old_unicast_checksum never``.  tcpdump on the bridge records every VRRP
datagram until keepalived has advertised and, stopped, sent its priority-0
adverts.  Each captured advert must pass ``decode_v3`` (given what a receiving
socket knows: addresses and TTL/hop limit) with the fields configured, and our
encoder must rebuild it byte for byte from those fields (the IPv4
identification taken from the capture).

The reverse direction: keepalived as a unicast BACKUP hears priority-200
adverts that we encode with either checksum form, and must treat them as
``decode_v3`` does in the matching mode: accept the RFC form, accept the old
form in its default mode (switching to it, "Setting unicast VRRPv3 checksum to
old version"), refuse the old form with ``old_unicast_checksum never`` and the
RFC form with ``old_unicast_checksum`` ("Invalid VRRPv3 checksum", after which
it takes over as MASTER).
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_interface
from pathlib import Path

import pytest

from pyalived.lab import Lab, Node, Proc, wait_for
from pyalived.vrrp.packet import (
    VRRP_MCAST_GROUP,
    VRRP_MCAST_GROUP6,
    AdvertV3,
    ExpectationV3,
    IPAddress,
    PacketError,
    ReceivedV3,
    V3Checksum,
    build_datagram_v3,
    decode_v3,
    encode_v3,
    parse_datagram_v3,
    verify_v3,
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

TIMEOUT = 30.0
MASTER = IPv4Address("198.18.0.11")
PEER = IPv4Address("198.18.0.12")
ULA = {"r1": "fd00:198:18::11/64", "r2": "fd00:198:18::12/64"}


@dataclass(frozen=True)
class Instance:
    name: str
    vrid: int
    priority: int
    advert_int: str  # as configured
    centiseconds: int
    vips: tuple[IPAddress, ...]
    unicast: bool = False
    extra: str = ""  # e.g. old_unicast_checksum
    checksum: V3Checksum = V3Checksum.RFC  # the mode decode_v3 is given, like the config


INSTANCES = (
    Instance(
        "V4", 51, 150, "1", 100, (IPv4Address("198.18.0.100"), IPv4Address("198.18.0.101"))
    ),
    Instance(
        "V6",
        52,
        120,
        "0.5",
        50,
        (IPv6Address("fd00:198:18::100"), IPv6Address("fd00:198:18::101")),
    ),
    Instance(
        "U4", 53, 130, "1", 100, (IPv4Address("198.18.0.110"),), True, "",
        V3Checksum.RFC_OR_OLD,
    ),
    Instance(
        "U4old", 54, 140, "1.5", 150, (IPv4Address("198.18.0.120"),), True,
        "old_unicast_checksum", V3Checksum.OLD,
    ),
    Instance(
        "U4never", 55, 110, "1", 100, (IPv4Address("198.18.0.130"),), True,
        "old_unicast_checksum never", V3Checksum.RFC,
    ),
)  # fmt: skip


def render(inst: Instance, state: str = "MASTER") -> str:
    lines = [
        f"vrrp_instance {inst.name} {{",
        f"    state {state}",
        "    interface eth0",
        f"    virtual_router_id {inst.vrid}",
        f"    priority {inst.priority}",
        f"    advert_int {inst.advert_int}",
    ]
    if inst.unicast:
        lines += ["    unicast_peer {", f"        {PEER}", "    }"]
    if inst.extra:
        lines.append(f"    {inst.extra}")
    first, *rest = inst.vips
    plen = 24 if first.version == 4 else 64
    lines += ["    virtual_ipaddress {", f"        {first}/{plen}"]
    lines += [f"        {vip}" for vip in rest] + ["    }", "}"]
    return "\n".join(lines) + "\n"


def config(instances: tuple[Instance, ...], state: str = "MASTER") -> str:
    head = "global_defs {\n    router_id v3wire\n    vrrp_version 3\n}\n\n"
    return head + "\n".join(render(inst, state) for inst in instances)


# --------------------------------------------------------------------------- lab


def add_ipv6(lab: Lab, node: Node) -> IPv6Address:
    """Give ``node`` its ULA address; return its link-local one once DAD is over."""
    lab.ip(node, "-6", "addr", "add", ULA[node.name], "dev", "eth0", "nodad")

    def link_local() -> IPv6Address | None:
        out = lab.ip(node, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link")
        if not out.strip() or "tentative" in out:
            return None
        return IPv6Address(ip_interface(out.split()[3]).ip)

    return wait_for(link_local, TIMEOUT, what=f"a link-local address on {node}")


def start_capture(lab: Lab) -> tuple[Proc, Path]:
    """tcpdump on the bridge for VRRP over IPv4 and IPv6 (``Lab.capture`` is IPv4-only)."""
    pcap = lab.workdir / "v3.pcap"
    proc = lab.spawn(
        lab.bridge_ns,
        ["tcpdump", "-i", "br0", "-nn", "-U", "-Z", "root", "-s", "2048", "-w", str(pcap),
         "ip proto 112 or ip6 proto 112"],
        "tcpdump",
    )  # fmt: skip
    wait_for(lambda: "listening on" in proc.log_text(), 15.0, what="tcpdump to start")
    return proc, pcap


def read_frames(pcap: Path) -> list[bytes]:
    """The frames of a classic little-endian pcap file; a torn last record is ignored."""
    data = pcap.read_bytes() if pcap.exists() else b""
    frames, at = [], 24
    while at + 16 <= len(data):
        incl = struct.unpack_from("<I", data, at + 8)[0]
        if at + 16 + incl > len(data):
            break
        frames.append(data[at + 16 : at + 16 + incl])
        at += 16 + incl
    return frames


@dataclass(frozen=True)
class Captured:
    """One VRRP datagram off the wire, split as a receiving socket would see it."""

    src: IPAddress
    dst: IPAddress
    ttl: int  # TTL or hop limit
    message: bytes  # the VRRP message
    datagram: bytes  # the whole IPv4 datagram; empty for IPv6
    traffic_class: int = 0

    @property
    def vrid(self) -> int:
        return self.message[1]

    @property
    def priority(self) -> int:
        return self.message[2]


def split(frame: bytes) -> Captured | None:
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00" and frame[23] == 112:
        total = struct.unpack_from("!H", frame, 16)[0]
        datagram = frame[14 : 14 + total]  # the kernel trims Ethernet padding likewise
        ihl = (datagram[0] & 0x0F) * 4
        return Captured(
            IPv4Address(datagram[12:16]),
            IPv4Address(datagram[16:20]),
            datagram[8],
            datagram[ihl:],
            datagram,
        )
    if ethertype == b"\x86\xdd" and frame[20] == 112:  # no extension headers
        ip6 = frame[14:54]
        (plen,) = struct.unpack_from("!H", ip6, 4)
        return Captured(
            IPv6Address(ip6[8:24]),
            IPv6Address(ip6[24:40]),
            ip6[7],
            frame[54 : 54 + plen],
            b"",
            (struct.unpack_from("!I", ip6, 0)[0] >> 20) & 0xFF,
        )
    return None


def captured(pcap: Path) -> list[Captured]:
    return [c for c in map(split, read_frames(pcap)) if c is not None]


@dataclass
class Run:
    adverts: list[Captured]
    link_local: IPv6Address
    log: str


@pytest.fixture(scope="module")
def keepalived_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    with Lab(2, workdir=tmp_path_factory.mktemp("v3wire")) as lab:
        r1, r2 = lab.routers
        link_local = add_ipv6(lab, r1)
        add_ipv6(lab, r2)
        tcpdump, pcap = start_capture(lab)
        daemon = lab.start_daemon(r1, config(INSTANCES), impl="keepalived")

        def enough(least: int, priority: int | None = None) -> bool:
            seen = captured(pcap)
            return all(
                len([c for c in seen if c.vrid == inst.vrid and priority in (None, c.priority)])
                >= least
                for inst in INSTANCES
            )

        wait_for(lambda: enough(3), TIMEOUT, what="three adverts of every instance")
        lab.stop_daemon(r1)
        wait_for(lambda: enough(1, 0), 10.0, what="the priority-0 adverts")
        tcpdump.stop()
        yield Run(captured(pcap), link_local, daemon.log_text())


# --------------------------------------------------------------------------- keepalived -> us


def expected_dst(inst: Instance) -> IPAddress:
    if inst.vips[0].version == 6:
        return VRRP_MCAST_GROUP6
    return PEER if inst.unicast else VRRP_MCAST_GROUP


@pytest.mark.parametrize("inst", INSTANCES, ids=[i.name for i in INSTANCES])
def test_keepalived_v3_adverts_decode_and_rebuild(keepalived_master: Run, inst: Instance) -> None:
    adverts = [c for c in keepalived_master.adverts if c.vrid == inst.vrid]
    assert len(adverts) >= 4, keepalived_master.log
    ipv6 = inst.vips[0].version == 6
    src: IPAddress = keepalived_master.link_local if ipv6 else MASTER
    dst = expected_dst(inst)
    old = inst.checksum is V3Checksum.OLD
    priorities = []
    for c in adverts:
        assert (c.src, c.dst, c.ttl) == (src, dst, 255)
        received = decode_v3(c.message, src=c.src, dst=c.dst, ttl=c.ttl, checksum=inst.checksum)
        want = AdvertV3(inst.vrid, c.priority, inst.centiseconds, inst.vips)
        assert received == ReceivedV3(src, dst, 255, want, old_checksum=old)
        verify_v3(received, ExpectationV3(inst.vrid, frozenset(inst.vips)))
        priorities.append(c.priority)
        if ipv6:
            assert c.traffic_class == 0xC0
            assert encode_v3(want, src, dst, checksum=inst.checksum).hex() == c.message.hex()
        else:
            assert isinstance(dst, IPv4Address)
            assert parse_datagram_v3(c.datagram, checksum=inst.checksum) == received
            (ip_id,) = struct.unpack_from("!H", c.datagram, 4)
            rebuilt = build_datagram_v3(MASTER, dst, want, ip_id=ip_id, checksum=inst.checksum)
            assert rebuilt.hex() == c.datagram.hex()
    assert priorities[0] == inst.priority and priorities[-1] == 0


def test_old_unicast_checksum_is_the_multicast_group_in_the_pseudo_header(
    keepalived_master: Run,
) -> None:
    """What keepalived's switch changes, and what each decode mode makes of it."""
    by_name = {inst.name: inst for inst in INSTANCES}
    for name, old in (("U4", False), ("U4never", False), ("U4old", True)):
        inst = by_name[name]
        c = next(c for c in keepalived_master.adverts if c.vrid == inst.vrid)
        want = AdvertV3(inst.vrid, c.priority, inst.centiseconds, inst.vips)
        mode = V3Checksum.OLD if old else V3Checksum.RFC
        other = V3Checksum.RFC if old else V3Checksum.OLD
        # Only the checksum differs between the two forms.
        assert encode_v3(want, MASTER, PEER, checksum=mode) == c.message
        assert encode_v3(want, MASTER, PEER, checksum=other)[6:8] != c.message[6:8]
        with pytest.raises(PacketError) as info:
            decode_v3(c.message, src=MASTER, dst=PEER, ttl=255, checksum=other)
        assert info.value.reason == "bad_checksum"
        received = decode_v3(
            c.message, src=MASTER, dst=PEER, ttl=255, checksum=V3Checksum.RFC_OR_OLD
        )
        assert received.old_checksum is old


# --------------------------------------------------------------------------- us -> keepalived

SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for datagram in sys.argv[2:]:
    s.sendto(bytes.fromhex(datagram), (sys.argv[1], 0))
    time.sleep(1.0)
"""

BACKUP = Instance("B4", 60, 100, "1", 100, (IPv4Address("198.18.0.140"),), True)


@pytest.mark.parametrize(
    ("keyword", "ours", "accepted", "switch"),
    [
        ("", V3Checksum.RFC, True, False),
        ("", V3Checksum.OLD, True, True),  # keepalived's automatic fallback
        ("old_unicast_checksum never", V3Checksum.OLD, False, False),
        ("old_unicast_checksum never", V3Checksum.RFC, True, False),
        ("old_unicast_checksum", V3Checksum.RFC, False, False),
        ("old_unicast_checksum", V3Checksum.OLD, True, False),
    ],
    ids=["default-rfc", "default-old", "never-old", "never-rfc", "old-rfc", "old-old"],
)
def test_keepalived_backup_judges_our_unicast_checksums_like_decode(
    tmp_path: Path, keyword: str, ours: V3Checksum, accepted: bool, switch: bool
) -> None:
    mode = {
        "": V3Checksum.RFC_OR_OLD,
        "old_unicast_checksum": V3Checksum.OLD,
        "old_unicast_checksum never": V3Checksum.RFC,
    }[keyword]
    advert = AdvertV3(BACKUP.vrid, 200, 100, BACKUP.vips)
    datagrams = [
        build_datagram_v3(PEER, MASTER, advert, ip_id=n, checksum=ours) for n in range(1, 7)
    ]
    try:
        received = parse_datagram_v3(datagrams[0], checksum=mode)
        assert received.old_checksum is (ours is V3Checksum.OLD)
        we_accept = True
    except PacketError as exc:
        assert exc.reason == "bad_checksum"
        we_accept = False
    assert we_accept == accepted

    inst = Instance(BACKUP.name, BACKUP.vrid, 100, "1", 100, BACKUP.vips, True, keyword)
    # keepalived's unicast_peer is the sender, r2.
    with Lab(2, workdir=tmp_path / "lab") as lab:
        r1, r2 = lab.routers
        daemon = lab.start_daemon(r1, config((inst,), state="BACKUP"), impl="keepalived")
        wait_for(
            lambda: "Entering BACKUP STATE" in daemon.log_text(), TIMEOUT, what="keepalived BACKUP"
        )
        lab.run(r2, sys.executable, "-c", SENDER, str(MASTER), *(d.hex() for d in datagrams))
        log = daemon.log_text()
        # Six adverts a second apart outlast Master_Down_Interval (3 + 156/256 s).
        assert ("Entering MASTER STATE" in log) == (not accepted), log
        assert ("Invalid VRRPv3 checksum" in log) == (not accepted), log
        assert ("Setting unicast VRRPv3 checksum to old version" in log) == switch, log
