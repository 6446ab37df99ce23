"""The lab's capture parser and config renderer, on hand-made bytes (no namespaces)."""

from __future__ import annotations

import struct

from pyalived.lab import (
    AdvertKind,
    ArpKind,
    GarpKind,
    VrrpSpec,
    adverts,
    arp_replies,
    garps,
    parse_pcap,
    render_config,
)

SRC_MAC = bytes.fromhex("00005e000133")
ETH_IP = bytes.fromhex("01005e000012") + SRC_MAC + b"\x08\x00"


def ip_header(proto: int, payload_len: int) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + payload_len, 1, 0, 255, proto, 0,
                       bytes([198, 18, 0, 11]), bytes([224, 0, 0, 18]))


def vrrp(prio: int, auth_type: int = 0, auth: bytes = b"\0" * 8) -> bytes:
    return struct.pack("!BBBBBBH", 0x21, 51, prio, 1, auth_type, 1, 0) + \
        bytes([198, 18, 0, 100]) + auth


def arp(op: int, sender_ip: bytes, target_ip: bytes) -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + SRC_MAC + sender_ip + b"\xff" * 6 + \
        target_ip
    return b"\xff" * 6 + SRC_MAC + b"\x08\x06" + body


def pcap(frames: list[tuple[float, bytes]], torn: bool = False) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    for ts, frame in frames:
        sec = int(ts)
        out += struct.pack("<IIII", sec, round((ts - sec) * 1e6), len(frame), len(frame)) + frame
    return out[:-3] if torn else out


def test_parses_plain_ah_adverts_garps_and_arp_replies() -> None:
    plain = vrrp(100, 1, b"s3cret\0\0")
    ah = bytes([112, 4, 0, 0]) + b"\0" * 20 + vrrp(90, 2)
    vip = bytes([198, 18, 0, 100])
    frames = [
        (10.5, ETH_IP + ip_header(112, len(plain)) + plain),
        (11.25, ETH_IP + ip_header(51, len(ah)) + ah),
        (11.5, arp(1, vip, vip)),
        (11.75, arp(2, vip, bytes([198, 18, 0, 201]))),
        (12.0, ETH_IP + ip_header(112, len(plain)) + plain),
    ]
    events = parse_pcap(pcap(frames, torn=True))  # the last record is cut short
    assert len(events) == 4
    first, second, garp, reply = events
    assert first.time == 10.5 and first.src == "198.18.0.11" and first.dst == "224.0.0.18"
    assert first.src_mac == "00:00:5e:00:01:33"
    assert first.kind == AdvertKind(51, 100, 1, 1, ("198.18.0.100",), b"s3cret\0\0", False)
    assert isinstance(second.kind, AdvertKind) and second.kind.ah and second.priority == 90
    assert garp.kind == GarpKind("198.18.0.100", 1)
    assert reply.kind == ArpKind(2, "00:00:5e:00:01:33", "198.18.0.100", "198.18.0.201")
    assert adverts(events, after=11.0) == [second]
    assert garps(events, ip="198.18.0.100") == [garp]
    assert arp_replies(events, ip="198.18.0.100") == [reply]


def test_render_config() -> None:
    text = render_config("r1", [VrrpSpec(priority=100, auth_type="AH", auth_pass="pw",
                                         unicast_src_ip="198.18.0.11",
                                         unicast_peers=("198.18.0.12",), use_vmac=True)])
    assert "router_id r1" in text
    for line in ("priority 100", "auth_type AH", "auth_pass pw", "use_vmac",
                 "unicast_src_ip 198.18.0.11", "198.18.0.12", "198.18.0.100/24"):
        assert line in text
    assert text.count("{") == text.count("}")
