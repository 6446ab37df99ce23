"""The lab's capture parser on VRRPv3 (IPv4 and IPv6) and neighbour advertisements.

The frames are built by the daemon's own codecs (``packet.build_datagram_v3``,
``packet.encode_v3``, ``ndisc.build_na_frame``); the parser in
``pyalived.lab`` is written independently, so each checks the other.  No
namespaces: pcap bytes are made in memory.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from pyalived.lab import (
    CAPTURE_FILTER,
    AdvertKind,
    NaKind,
    PcapFollower,
    VrrpSpec,
    adverts,
    garps,
    nas,
    parse_pcap,
    render_config,
)
from pyalived.vrrp.ndisc import build_na_frame
from pyalived.vrrp.packet import (
    VRRP_MCAST_GROUP,
    VRRP_MCAST_GROUP6,
    AdvertV3,
    build_datagram_v3,
    encode_v3,
)

MAC = bytes.fromhex("020000000011")
V4_MCAST_MAC = bytes.fromhex("01005e000012")
V6_MCAST_MAC = bytes.fromhex("333300000012")
SRC4 = IPv4Address("198.18.0.11")
LL6 = IPv6Address("fe80::11")
VIP6 = IPv6Address("fd00:198:18::100")


def pcap(frames: list[tuple[float, bytes]], nanos: bool = False) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, 1)
    for ts, frame in frames:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nanos else 1e6))
        out += struct.pack("<IIII", sec, frac, len(frame), len(frame)) + frame
    return out


def v4_frame(advert: AdvertV3, padding: bytes = b"") -> bytes:
    datagram = build_datagram_v3(SRC4, VRRP_MCAST_GROUP, advert, ip_id=7)
    return V4_MCAST_MAC + MAC + b"\x08\x00" + datagram + padding


def v6_frame(advert: AdvertV3, hop_limit: int = 255, corrupt: bool = False) -> bytes:
    message = bytearray(encode_v3(advert, LL6, VRRP_MCAST_GROUP6))
    if corrupt:
        message[-1] ^= 0x01
    ipv6 = struct.pack("!IHBB", (6 << 28) | (0xC0 << 20), len(message), 112, hop_limit)
    return (V6_MCAST_MAC + MAC + b"\x86\xdd" + ipv6 + LL6.packed + VRRP_MCAST_GROUP6.packed
            + bytes(message))


def test_vrrpv3_over_ipv4() -> None:
    advert = AdvertV3(51, 100, 5, (IPv4Address("198.18.0.100"), IPv4Address("198.18.0.101")))
    # Ethernet pads short frames: the parser must cut at the IPv4 total length.
    events = parse_pcap(pcap([(1.25, v4_frame(advert, padding=b"\0" * 6))]))
    (event,) = events
    assert (event.src, event.dst, event.src_mac) == ("198.18.0.11", "224.0.0.18",
                                                     "02:00:00:00:00:11")
    kind = event.kind
    assert isinstance(kind, AdvertKind)
    assert (kind.version, kind.vrid, kind.priority, kind.max_advert_int) == (3, 51, 100, 5)
    assert kind.addresses == ("198.18.0.100", "198.18.0.101")
    assert kind.checksum_ok and kind.interval == 0.05
    assert (kind.auth_type, kind.advert_int, kind.ah) == (0, 0, False)
    assert event.priority == 100 and event.is_advert


def test_vrrpv3_over_ipv6_with_pseudo_header_checksum() -> None:
    advert = AdvertV3(52, 90, 1, (VIP6,))
    frames = [(2.0, v6_frame(advert)), (2.5, v6_frame(advert, corrupt=True))]
    good, bad = parse_pcap(pcap(frames, nanos=True))
    assert good.time == 2.0 and bad.time == 2.5
    assert (good.src, good.dst) == ("fe80::11", "ff02::12")
    assert good.kind == AdvertKind(52, 90, 0, 0, ("fd00:198:18::100",), version=3,
                                   max_advert_int=1)
    assert isinstance(good.kind, AdvertKind) and good.kind.checksum_ok
    # the IPv6 header carries no checksum: only the pseudo-header one catches this
    assert isinstance(bad.kind, AdvertKind) and not bad.kind.checksum_ok


def test_vrrpv3_checksum_depends_on_the_addresses() -> None:
    """An IPv4 v3 checksum made for another destination does not verify here."""
    advert = AdvertV3(51, 100, 100, (IPv4Address("198.18.0.100"),))
    message = encode_v3(advert, SRC4, IPv4Address("198.18.0.12"))  # unicast checksum
    datagram = bytearray(build_datagram_v3(SRC4, VRRP_MCAST_GROUP, advert))
    datagram[20:] = message
    (event,) = parse_pcap(pcap([(3.0, V4_MCAST_MAC + MAC + b"\x08\x00" + bytes(datagram))]))
    assert isinstance(event.kind, AdvertKind) and not event.kind.checksum_ok


def test_adverts_filters_by_version_and_source() -> None:
    v3_4 = v4_frame(AdvertV3(51, 100, 5, (IPv4Address("198.18.0.100"),)))
    v3_6 = v6_frame(AdvertV3(52, 100, 5, (VIP6,)))
    events = parse_pcap(pcap([(1.0, v3_4), (2.0, v3_6), (3.0, v3_4)]))
    assert [e.time for e in adverts(events, version=3)] == [1.0, 2.0, 3.0]
    assert adverts(events, version=2) == []
    assert [e.time for e in adverts(events, src="fe80::11")] == [2.0]
    assert [e.time for e in adverts(events, vrid=51, after=1.5)] == [3.0]


def test_unsolicited_neighbour_advertisements() -> None:
    na = build_na_frame(MAC, VIP6, router=False)
    na_router = build_na_frame(MAC, IPv6Address("fd00:198:18::101"), router=True)
    events = parse_pcap(pcap([(4.0, na), (4.5, na_router)]))
    first, second = events
    assert first.is_na and not first.is_garp and not first.is_advert
    assert (first.src, first.dst, first.dst_mac) == ("fd00:198:18::100", "ff02::1",
                                                     "33:33:00:00:00:01")
    assert first.kind == NaKind("fd00:198:18::100", router=False, solicited=False,
                                override=True, lladdr="02:00:00:00:00:11", hop_limit=255)
    assert isinstance(second.kind, NaKind) and second.kind.router
    assert nas(events, target="fd00:198:18:0::100") == [first]  # any spelling
    assert nas(events, after=4.2) == [second]
    assert garps(events) == []


def test_solicited_na_is_not_unsolicited() -> None:
    frame = bytearray(build_na_frame(MAC, VIP6, router=False))
    frame[14 + 40 + 4] |= 0x40  # S flag (the checksum is not the parser's business here)
    (event,) = parse_pcap(pcap([(5.0, bytes(frame))]))
    assert isinstance(event.kind, NaKind) and event.kind.solicited
    assert nas([event]) == [] and nas([event], unsolicited=False) == [event]


def test_other_ipv6_traffic_is_ignored() -> None:
    ipv6 = struct.pack("!IHBB", 6 << 28, 8, 17, 64) + LL6.packed + VRRP_MCAST_GROUP6.packed
    udp = V6_MCAST_MAC + MAC + b"\x86\xdd" + ipv6 + b"\0" * 8
    rs = bytearray(build_na_frame(MAC, VIP6, router=False))
    rs[54] = 133  # a router solicitation
    assert parse_pcap(pcap([(1.0, udp), (2.0, bytes(rs))])) == []


def test_capture_filter_covers_ipv6() -> None:
    for clause in ("ip proto 112", "ip proto 51", "arp", "ip6 proto 112", "ip6[40] == 136"):
        assert clause in CAPTURE_FILTER


def test_render_version_line_only_when_asked() -> None:
    default = render_config("r1", [VrrpSpec(priority=100)])
    assert "version" not in default
    v3 = render_config("r1", [VrrpSpec(priority=100, version=3, advert_int=0.05,
                                       vips=(f"{VIP6}/64",))])
    assert "    version 3\n" in v3 and "advert_int 0.05" in v3
    assert "fd00:198:18::100/64" in v3


def test_follower_reads_a_growing_file_incrementally(tmp_path: Path) -> None:
    frames = [(float(i), v4_frame(AdvertV3(51, 100 + i, 5, (IPv4Address("198.18.0.100"),))))
              for i in range(3)]
    whole = pcap(frames)
    path = tmp_path / "lan.pcap"
    follower = PcapFollower(path)
    assert follower.events() == []  # not created yet
    path.write_bytes(whole[:10])
    assert follower.events() == []  # not even the file header
    cut = len(whole) - 5  # the last record torn
    path.write_bytes(whole[:cut])
    assert [e.priority for e in follower.events()] == [100, 101]
    with open(path, "ab") as f:
        f.write(whole[cut:])
    assert [e.priority for e in follower.events()] == [100, 101, 102]
    assert follower.events() == parse_pcap(whole)
