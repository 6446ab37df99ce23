"""VRRPv3 codec (RFC 5798/9568): IPv4 and IPv6 byte fixtures both ways, checksum
known answers and keepalived's checksum modes, every drop reason, and fuzzing."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyalived.vrrp.packet import (
    DROP_REASONS,
    VRRP_MCAST_GROUP,
    VRRP_MCAST_GROUP6,
    AdvertV3,
    ExpectationV3,
    IPAddress,
    PacketError,
    ReceivedV3,
    V3Checksum,
    build_datagram,
    build_datagram_v3,
    checksum_v3,
    decode_v3,
    encode_v3,
    internet_checksum,
    parse_datagram,
    parse_datagram_v3,
    pseudo_header,
    verify_v3,
)

SRC = IPv4Address("198.18.0.11")
PEER = IPv4Address("198.18.0.12")
VIP1 = IPv4Address("198.18.0.100")
VIP2 = IPv4Address("198.18.0.101")
LL = IPv6Address("fe80::7859:6fff:fe33:4ce8")
VIP6_1 = IPv6Address("fd00:198:18::100")
VIP6_2 = IPv6Address("fd00:198:18::101")

RFC, OLD, RFC_OR_OLD = V3Checksum.RFC, V3Checksum.OLD, V3Checksum.RFC_OR_OLD

# All four fixtures are adverts captured from keepalived 2.2.7 (vrrp_version 3) in a
# namespace lab; tests/netns/test_v3_wire.py checks the same against live captures.
# fmt: off
# Multicast, VRID 51, priority 150, advert_int 1 (100 cs), two addresses, IP id 1.
MCAST4 = bytes.fromhex(
    "45c0"      # IPv4, IHL 5, TOS 0xc0
    "0024"      # total length 36 = 20 + 16
    "0001" "0000"  # identification 1, no DF
    "ff" "70"   # TTL 255, protocol 112
    "1479"      # header checksum
    "c612000b"  # source 198.18.0.11
    "e0000012"  # destination 224.0.0.18
    "31"        # VRRP version 3, type 1 (advertisement)
    "33"        # VRID 51
    "96"        # priority 150
    "02"        # count IPvX addr
    "0064"      # 4 reserved bits 0, Max Adver Int 100 centiseconds
    "04c7"      # checksum over the IPv4 pseudo-header and the message
    "c6120064"  # 198.18.0.100
    "c6120065"  # 198.18.0.101
)

# Unicast to 198.18.0.12, VRID 53, priority 130, one address; RFC 5798 checksum.
UNICAST4 = bytes.fromhex(
    "45c0002000010000ff702e71" "c612000b" "c612000c"
    "31358201" "0064"
    "f92b"      # pseudo-header destination 198.18.0.12
    "c612006e"  # 198.18.0.110
)

# The same kind of advert from an instance with old_unicast_checksum: VRID 54,
# priority 140, 198.18.0.120.
UNICAST4_OLD = bytes.fromhex(
    "45c0002000010000ff702e71" "c612000b" "c612000c"
    "31368c01" "0064"
    "d52c"      # pseudo-header destination 224.0.0.18, not 198.18.0.12
    "c6120078"  # 198.18.0.120
)

# IPv6, link-local source to ff02::12, VRID 52, priority 120, advert_int 0.5 s: the
# VRRP message as a raw IPv6 socket delivers it (hop limit 255 beside it).
MCAST6 = bytes.fromhex(
    "31" "34" "78" "02"
    "0032"      # Max Adver Int 50 centiseconds
    "2591"      # checksum over the RFC 8200 §8.1 pseudo-header and the message
    "fd000198001800000000000000000100"  # fd00:198:18::100
    "fd000198001800000000000000000101"  # fd00:198:18::101
)
# fmt: on

ADVERT4 = AdvertV3(vrid=51, priority=150, max_advert_int=100, addresses=(VIP1, VIP2))
ADVERT_UNI = AdvertV3(53, 130, 100, (IPv4Address("198.18.0.110"),))
ADVERT_OLD = AdvertV3(54, 140, 100, (IPv4Address("198.18.0.120"),))
ADVERT6 = AdvertV3(52, 120, 50, (VIP6_1, VIP6_2))

SEEN_REASONS: set[str] = set()


def reason(call: object, *args: object, **kwargs: object) -> str:
    assert callable(call)
    with pytest.raises(PacketError) as info:
        call(*args, **kwargs)
    assert info.value.reason in DROP_REASONS
    SEEN_REASONS.add(info.value.reason)
    return info.value.reason


def decode6(message: bytes, hop_limit: int = 255, checksum: V3Checksum = RFC) -> ReceivedV3:
    return decode_v3(message, src=LL, dst=VRRP_MCAST_GROUP6, ttl=hop_limit, checksum=checksum)


def refix(message: bytes | bytearray, src: IPAddress, dst: IPAddress) -> bytes:
    """``message`` with its VRRPv3 checksum recomputed after a test changed a field."""
    m = bytearray(message)
    m[6:8] = struct.pack("!H", checksum_v3(src, dst, bytes(m)))
    return bytes(m)


def refix4(datagram: bytes | bytearray) -> bytes:
    """An IPv4 datagram with its total length, header and VRRP checksums recomputed."""
    d = bytearray(datagram)
    d[2:4] = struct.pack("!H", len(d))
    d[10:12] = b"\0\0"
    d[10:12] = struct.pack("!H", internet_checksum(bytes(d[:20])))
    src, dst = IPv4Address(bytes(d[12:16])), IPv4Address(bytes(d[16:20]))
    return bytes(d[:20]) + refix(d[20:], src, dst)


def patched4(datagram: bytes, offset: int, value: bytes) -> bytes:
    d = bytearray(datagram)
    d[offset : offset + len(value)] = value
    return refix4(d)


# --------------------------------------------------------------------------- checksum


def test_ipv4_pseudo_header_layout() -> None:
    # RFC 5798 §5.2.8: source, destination, zero, protocol 112, VRRP length.
    assert pseudo_header(SRC, VRRP_MCAST_GROUP, 16) == bytes.fromhex("c612000be000001200700010")


def test_ipv6_pseudo_header_layout() -> None:
    # RFC 8200 §8.1: source, destination, 32-bit length, three zero bytes, next header.
    want = LL.packed + VRRP_MCAST_GROUP6.packed + bytes.fromhex("0000002800000070")
    assert pseudo_header(LL, VRRP_MCAST_GROUP6, 40) == want


def test_pseudo_header_refuses_mixed_families() -> None:
    with pytest.raises(ValueError):
        pseudo_header(SRC, VRRP_MCAST_GROUP6, 8)
    with pytest.raises(ValueError):
        pseudo_header(LL, VRRP_MCAST_GROUP, 8)


@pytest.mark.parametrize(
    ("src", "dst", "message", "want"),
    [
        (SRC, VRRP_MCAST_GROUP, MCAST4[20:], 0x04C7),
        (SRC, PEER, UNICAST4[20:], 0xF92B),
        (SRC, VRRP_MCAST_GROUP, UNICAST4[20:], 0xDF37),  # the old form of the same advert
        (SRC, VRRP_MCAST_GROUP, UNICAST4_OLD[20:], 0xD52C),
        (SRC, PEER, UNICAST4_OLD[20:], 0xEF20),  # the RFC form keepalived would send
        (LL, VRRP_MCAST_GROUP6, MCAST6, 0x2591),
    ],
    ids=["mcast4", "unicast4", "unicast4-as-old", "old4", "old4-as-rfc", "mcast6"],
)
def test_checksum_known_answers(src: IPAddress, dst: IPAddress, message: bytes, want: int) -> None:
    assert checksum_v3(src, dst, message) == want
    # The field itself is ignored: any value in it gives the same answer.
    assert checksum_v3(src, dst, message[:6] + b"\xff\xff" + message[8:]) == want


def test_checksum_differs_from_v2_rule() -> None:
    # VRRPv2 (RFC 3768 §5.3.8) sums the message alone; v3 must include the pseudo-header.
    assert internet_checksum(MCAST4[20:]) != 0
    assert internet_checksum(pseudo_header(SRC, VRRP_MCAST_GROUP, 16) + MCAST4[20:]) == 0


# --------------------------------------------------------------------------- encode


def test_build_ipv4_multicast() -> None:
    assert build_datagram_v3(SRC, VRRP_MCAST_GROUP, ADVERT4, ip_id=1) == MCAST4


def test_build_ipv4_unicast_rfc() -> None:
    assert build_datagram_v3(SRC, PEER, ADVERT_UNI, ip_id=1) == UNICAST4
    assert build_datagram_v3(SRC, PEER, ADVERT_UNI, ip_id=1, checksum=RFC_OR_OLD) == UNICAST4


def test_build_ipv4_unicast_old_checksum() -> None:
    assert build_datagram_v3(SRC, PEER, ADVERT_OLD, ip_id=1, checksum=OLD) == UNICAST4_OLD
    rfc = build_datagram_v3(SRC, PEER, ADVERT_OLD, ip_id=1)
    assert rfc[:26] == UNICAST4_OLD[:26] and rfc[26:28] == b"\xef\x20"


def test_old_checksum_makes_no_difference_to_multicast() -> None:
    assert build_datagram_v3(SRC, VRRP_MCAST_GROUP, ADVERT4, ip_id=1, checksum=OLD) == MCAST4


def test_old_checksum_uses_the_configured_group() -> None:
    # keepalived takes vrrp_mcast_group4 for the old pseudo-header destination.
    group = IPv4Address("224.0.0.19")
    got = encode_v3(ADVERT_OLD, SRC, PEER, checksum=OLD, mcast_group=group)
    assert got[6:8] == struct.pack("!H", checksum_v3(SRC, group, got))
    assert got != UNICAST4_OLD[20:]
    assert decode_v3(got, src=SRC, dst=PEER, ttl=255, checksum=OLD, mcast_group=group).old_checksum
    assert reason(decode_v3, got, src=SRC, dst=PEER, ttl=255, checksum=OLD) == "bad_checksum"


def test_encode_ipv6() -> None:
    assert encode_v3(ADVERT6, LL, VRRP_MCAST_GROUP6) == MCAST6
    # The kernel computes IPv6 checksums: old_unicast_checksum cannot change them.
    assert encode_v3(ADVERT6, LL, VRRP_MCAST_GROUP6, checksum=OLD) == MCAST6


def test_encode_ipv6_unicast_checksum_covers_destination() -> None:
    peer6 = IPv6Address("fd00:198:18::12")
    got = encode_v3(ADVERT6, LL, peer6, checksum=OLD)
    assert got[:6] == MCAST6[:6] and got[8:] == MCAST6[8:]
    assert internet_checksum(pseudo_header(LL, peer6, len(got)) + got) == 0


def test_encode_writes_reserved_bits_zero() -> None:
    got = encode_v3(AdvertV3(1, 100, 0xFFF, ()), SRC, VRRP_MCAST_GROUP)
    assert got[4:6] == b"\x0f\xff"


@pytest.mark.parametrize(
    ("advert", "src", "dst"),
    [
        (AdvertV3(256, 100, 100, ()), SRC, VRRP_MCAST_GROUP),
        (AdvertV3(1, 256, 100, ()), SRC, VRRP_MCAST_GROUP),
        (AdvertV3(1, 100, 4096, ()), SRC, VRRP_MCAST_GROUP),  # 12 bits (§5.2.7)
        (AdvertV3(1, 100, -1, ()), SRC, VRRP_MCAST_GROUP),
        (AdvertV3(1, 100, 100, (VIP1,) * 256), SRC, VRRP_MCAST_GROUP),
        (AdvertV3(1, 100, 100, (VIP6_1,)), SRC, VRRP_MCAST_GROUP),  # IPv6 in an IPv4 advert
        (AdvertV3(1, 100, 100, (VIP1,)), LL, VRRP_MCAST_GROUP6),  # IPv4 in an IPv6 advert
        (AdvertV3(1, 100, 100, ()), SRC, VRRP_MCAST_GROUP6),  # mixed families
    ],
)
def test_encode_rejects_values_that_do_not_fit(
    advert: AdvertV3, src: IPAddress, dst: IPAddress
) -> None:
    with pytest.raises(ValueError):
        encode_v3(advert, src, dst)


def test_build_rejects_ip_id_out_of_range() -> None:
    with pytest.raises(ValueError):
        build_datagram_v3(SRC, VRRP_MCAST_GROUP, ADVERT4, ip_id=0x10000)


# --------------------------------------------------------------------------- decode


def test_parse_ipv4_multicast() -> None:
    assert parse_datagram_v3(MCAST4) == ReceivedV3(
        src=SRC, dst=VRRP_MCAST_GROUP, ttl=255, advert=ADVERT4, old_checksum=False
    )


def test_decode_ipv6() -> None:
    assert decode6(MCAST6) == ReceivedV3(
        src=LL, dst=VRRP_MCAST_GROUP6, ttl=255, advert=ADVERT6, old_checksum=False
    )


def test_decode_accepts_bytearray_and_memoryview() -> None:
    assert decode6(bytes(bytearray(MCAST6))).advert == ADVERT6
    assert decode_v3(memoryview(MCAST6), src=LL, dst=VRRP_MCAST_GROUP6, ttl=255).advert == ADVERT6
    assert parse_datagram_v3(bytearray(MCAST4)).advert == ADVERT4


def test_decode_ignores_reserved_bits() -> None:
    # §5.2.7: "MUST be set to zero on transmission and ignored on reception".
    d = patched4(MCAST4, 24, b"\xf0\x64")
    assert parse_datagram_v3(d).advert == ADVERT4


def test_decode_zero_addresses_and_large_interval() -> None:
    advert = AdvertV3(7, 0, 4095, ())
    assert parse_datagram_v3(build_datagram_v3(SRC, PEER, advert)).advert == advert
    assert decode6(encode_v3(advert, LL, VRRP_MCAST_GROUP6)).advert == advert


# --------------------------------------------------------------------------- checksum modes


@pytest.mark.parametrize(
    ("datagram", "mode", "outcome"),
    [
        # keepalived's default (RFC_OR_OLD): RFC accepted, old accepted and reported.
        (UNICAST4, RFC_OR_OLD, False),
        (UNICAST4_OLD, RFC_OR_OLD, True),
        # old_unicast_checksum never (RFC): only the RFC form.
        (UNICAST4, RFC, False),
        (UNICAST4_OLD, RFC, "bad_checksum"),
        # old_unicast_checksum, or after the switch (OLD): only the old form.
        (UNICAST4, OLD, "bad_checksum"),
        (UNICAST4_OLD, OLD, True),
        # Multicast: both forms are the same checksum.
        (MCAST4, RFC, False),
        (MCAST4, OLD, False),
        (MCAST4, RFC_OR_OLD, False),
    ],
)
def test_checksum_modes(datagram: bytes, mode: V3Checksum, outcome: bool | str) -> None:
    if isinstance(outcome, str):
        assert reason(parse_datagram_v3, datagram, checksum=mode) == outcome
    else:
        assert parse_datagram_v3(datagram, checksum=mode).old_checksum is outcome


def test_fallback_needs_a_correct_old_checksum() -> None:
    broken = UNICAST4_OLD[:26] + b"\xd5\x2d" + UNICAST4_OLD[28:]
    assert reason(parse_datagram_v3, broken, checksum=RFC_OR_OLD) == "bad_checksum"


def test_ipv6_ignores_old_mode() -> None:
    for mode in V3Checksum:
        assert decode6(MCAST6, checksum=mode) == decode6(MCAST6)
    peer6 = IPv6Address("fd00:198:18::12")
    unicast6 = encode_v3(ADVERT6, LL, peer6)
    received = decode_v3(unicast6, src=LL, dst=peer6, ttl=255, checksum=OLD)
    assert not received.old_checksum
    # An "old" IPv6 checksum (group in the pseudo-header) does not exist: dropped.
    wrong = refix(unicast6, LL, VRRP_MCAST_GROUP6)
    for mode in V3Checksum:
        assert reason(decode_v3, wrong, src=LL, dst=peer6, ttl=255, checksum=mode) == (
            "bad_checksum"
        )


# --------------------------------------------------------------------------- drops


@pytest.mark.parametrize(
    ("datagram", "want"),
    [
        (MCAST4[:26] + b"\x04\xc8" + MCAST4[28:], "bad_checksum"),
        (MCAST4[:-1] + b"\x66", "bad_checksum"),  # an address corrupted
        (MCAST4[:21] + b"\x34" + MCAST4[22:], "bad_checksum"),  # the VRID corrupted
        # Source rewritten (IPv4 header checksum fixed): the pseudo-header covers it.
        (patched4(MCAST4, 12, PEER.packed)[:26] + MCAST4[26:28] + MCAST4[28:], "bad_checksum"),
        (patched4(MCAST4, 8, b"\xfe"), "bad_ttl"),  # §7.1
        (patched4(MCAST4, 8, b"\x01"), "bad_ttl"),
        (patched4(MCAST4, 20, b"\x21"), "bad_version"),  # a VRRPv2 header
        (patched4(MCAST4, 20, b"\x41"), "bad_version"),
        (patched4(MCAST4, 20, b"\x32"), "bad_type"),  # §5.2.2
        (patched4(MCAST4, 20, b"\x30"), "bad_type"),
        (patched4(MCAST4, 23, b"\x03"), "bad_length"),  # 3 addresses announced, 2 sent
        (patched4(MCAST4, 23, b"\x01"), "bad_length"),  # 1 announced, 2 sent
        (refix4(MCAST4 + bytes(4)), "bad_length"),  # trailing bytes in the total length
        (refix4(MCAST4 + b"\xa5" * 1000), "bad_length"),
        (MCAST4 + b"\0", "bad_length"),  # past the IPv4 total length
        (MCAST4[:-1], "truncated"),  # shorter than the total length
        (MCAST4[:19], "truncated"),
        (b"", "truncated"),
        (patched4(MCAST4, 9, b"\x11"), "bad_protocol"),
        (patched4(MCAST4, 6, b"\x20\x00"), "bad_ip_header"),  # a fragment
        (MCAST4[:10] + b"\x14\x7a" + MCAST4[12:], "bad_ip_checksum"),
    ],
)
def test_parse_drop_reasons(datagram: bytes, want: str) -> None:
    assert reason(parse_datagram_v3, datagram) == want


def test_vrrp_message_shorter_than_its_header_is_truncated() -> None:
    d = bytearray(MCAST4[:27])  # a 7-byte VRRP message, the total length saying so
    d[2:4] = struct.pack("!H", 27)
    d[10:12] = b"\0\0"
    d[10:12] = struct.pack("!H", internet_checksum(bytes(d[:20])))
    assert reason(parse_datagram_v3, bytes(d)) == "truncated"


def test_ah_is_not_vrrpv3() -> None:
    from pyalived.config.model import AuthType
    from pyalived.vrrp.packet import Advert

    v2_ah = build_datagram(SRC, VRRP_MCAST_GROUP, Advert(51, 150, 1, (VIP1,)), auth=AuthType.AH)
    assert reason(parse_datagram_v3, v2_ah) == "bad_protocol"


def test_version_mismatch_both_ways() -> None:
    # A v3 instance drops v2 adverts and a v2 instance v3 ones (RFC 5798 §7.1).
    from pyalived.vrrp.packet import Advert

    v2 = build_datagram(SRC, VRRP_MCAST_GROUP, Advert(51, 150, 1, (VIP1, VIP2)), ip_id=1)
    assert reason(parse_datagram_v3, v2) == "bad_version"
    assert reason(parse_datagram, MCAST4) == "bad_version"
    assert reason(decode_v3, v2[20:], src=SRC, dst=VRRP_MCAST_GROUP, ttl=255) == "bad_version"


@pytest.mark.parametrize(
    ("message", "hop_limit", "want"),
    [
        (MCAST6, 254, "bad_ttl"),
        (MCAST6, 64, "bad_ttl"),  # the default unicast hop limit
        (MCAST6, 1, "bad_ttl"),
        (MCAST6[:7], 255, "truncated"),
        (b"", 255, "truncated"),
        (MCAST6[:6] + b"\x25\x92" + MCAST6[8:], 255, "bad_checksum"),
        (MCAST6[:-1] + b"\x00", 255, "bad_checksum"),
        (refix(b"\x21" + MCAST6[1:], LL, VRRP_MCAST_GROUP6), 255, "bad_version"),
        (refix(b"\x33" + MCAST6[1:], LL, VRRP_MCAST_GROUP6), 255, "bad_type"),
        (MCAST6 + bytes(16), 255, "bad_length"),  # one more address than counted
        (refix(MCAST6 + bytes(2), LL, VRRP_MCAST_GROUP6), 255, "bad_length"),
        (MCAST6[:-16], 255, "bad_length"),  # one fewer
        # Two IPv4-sized addresses counted as 8: a v4 layout sent over IPv6.
        (refix(MCAST6[:3] + b"\x08" + MCAST6[4:], LL, VRRP_MCAST_GROUP6), 255, "bad_length"),
    ],
)
def test_decode_ipv6_drop_reasons(message: bytes, hop_limit: int, want: str) -> None:
    assert reason(decode6, message, hop_limit) == want


def test_decode_ipv6_checksum_covers_both_addresses() -> None:
    other = IPv6Address("fe80::1")
    assert reason(decode_v3, MCAST6, src=other, dst=VRRP_MCAST_GROUP6, ttl=255) == "bad_checksum"
    assert reason(decode_v3, MCAST6, src=LL, dst=IPv6Address("ff02::1"), ttl=255) == (
        "bad_checksum"
    )


def test_decode_refuses_mixed_families() -> None:
    with pytest.raises(ValueError):
        decode_v3(MCAST6, src=LL, dst=VRRP_MCAST_GROUP, ttl=255)


def test_ttl_checked_first() -> None:
    # A bad hop limit wins over anything else wrong: TTL is what proves the link (§7.1).
    assert reason(decode6, b"", 64) == "bad_ttl"


# --------------------------------------------------------------------------- verify


EXPECT4 = ExpectationV3(vrid=51, addresses=frozenset({VIP1, VIP2}))
EXPECT6 = ExpectationV3(vrid=52, addresses=frozenset({VIP6_1, VIP6_2}))


def test_verify_accepts_matching_adverts_whatever_the_interval() -> None:
    verify_v3(parse_datagram_v3(MCAST4), EXPECT4)
    verify_v3(decode6(MCAST6), EXPECT6)
    # §6.4.2: a Backup adopts the Master's interval; a different one is no drop.
    slow = build_datagram_v3(SRC, VRRP_MCAST_GROUP, AdvertV3(51, 150, 4095, (VIP2, VIP1)))
    verify_v3(parse_datagram_v3(slow), EXPECT4)


@pytest.mark.parametrize(
    ("received", "expect", "want"),
    [
        (parse_datagram_v3(MCAST4), ExpectationV3(51, frozenset({VIP1})), "addr_count_mismatch"),
        (
            parse_datagram_v3(MCAST4),
            ExpectationV3(51, frozenset({VIP1, IPv4Address("198.18.0.102")})),
            "addr_list_mismatch",
        ),
        (decode6(MCAST6), ExpectationV3(52, frozenset()), "addr_count_mismatch"),
        (
            decode6(MCAST6),
            ExpectationV3(52, frozenset({VIP6_1, IPv6Address("fd00:198:18::102")})),
            "addr_list_mismatch",
        ),
        # An owner (priority 255) is not exempt, as in keepalived 2.2.7.
        (
            parse_datagram_v3(build_datagram_v3(SRC, PEER, AdvertV3(51, 255, 100, (VIP1, VIP1)))),
            EXPECT4,
            "addr_list_mismatch",
        ),
    ],
)
def test_verify_drops(received: ReceivedV3, expect: ExpectationV3, want: str) -> None:
    assert reason(verify_v3, received, expect) == want


# --------------------------------------------------------------------------- reasons

V3_REASONS = {
    "truncated",
    "bad_ip_header",
    "bad_ip_checksum",
    "bad_protocol",
    "bad_ttl",
    "bad_version",
    "bad_type",
    "bad_length",
    "bad_checksum",
    "addr_count_mismatch",
    "addr_list_mismatch",
}


def test_zz_every_v3_drop_reason_was_exercised() -> None:
    # Runs after the tests above in file order; skips when run alone.
    if not SEEN_REASONS:
        pytest.skip("run with the whole module")
    assert V3_REASONS <= set(DROP_REASONS)
    assert SEEN_REASONS == V3_REASONS


# --------------------------------------------------------------------------- properties

addresses4 = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
addresses6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
modes = st.sampled_from(list(V3Checksum))


def adverts(addresses: st.SearchStrategy[IPAddress]) -> st.SearchStrategy[AdvertV3]:
    return st.builds(
        AdvertV3,
        vrid=st.integers(0, 255),
        priority=st.integers(0, 255),
        max_advert_int=st.integers(0, 4095),
        addresses=st.lists(addresses, max_size=12).map(tuple),
    )


@given(adverts(addresses4), addresses4, addresses4, st.integers(0, 0xFFFF), modes)
def test_ipv4_round_trip(
    advert: AdvertV3, src: IPv4Address, dst: IPv4Address, ip_id: int, mode: V3Checksum
) -> None:
    datagram = build_datagram_v3(src, dst, advert, ip_id=ip_id, checksum=mode)
    assert len(datagram) == 20 + 8 + 4 * len(advert.addresses)
    received = parse_datagram_v3(datagram, checksum=mode)
    old = mode is OLD and dst != VRRP_MCAST_GROUP
    assert received == ReceivedV3(src=src, dst=dst, ttl=255, advert=advert, old_checksum=old)
    # keepalived's default accepts what either kind of peer sends.
    assert parse_datagram_v3(datagram, checksum=RFC_OR_OLD).advert == advert
    assert build_datagram_v3(src, dst, received.advert, ip_id=ip_id, checksum=mode) == datagram


@given(adverts(addresses6), addresses6, addresses6, modes)
def test_ipv6_round_trip(
    advert: AdvertV3, src: IPv6Address, dst: IPv6Address, mode: V3Checksum
) -> None:
    message = encode_v3(advert, src, dst, checksum=mode)
    assert len(message) == 8 + 16 * len(advert.addresses)
    assert internet_checksum(pseudo_header(src, dst, len(message)) + message) == 0
    received = decode_v3(message, src=src, dst=dst, ttl=255, checksum=mode)
    assert received == ReceivedV3(src=src, dst=dst, ttl=255, advert=advert)
    assert encode_v3(received.advert, src, dst) == message


@given(
    st.sampled_from([(MCAST6, LL, VRRP_MCAST_GROUP6), (UNICAST4[20:], SRC, PEER)]),
    st.data(),
    modes,
)
def test_any_single_bit_flip_is_dropped(
    fixture: tuple[bytes, IPAddress, IPAddress], data: st.DataObject, mode: V3Checksum
) -> None:
    message, src, dst = fixture
    bit = data.draw(st.integers(0, 8 * len(message) - 1))
    m = bytearray(message)
    m[bit // 8] ^= 1 << (bit % 8)  # a reserved bit too: ignored, but checksummed
    with pytest.raises(PacketError):
        decode_v3(bytes(m), src=src, dst=dst, ttl=255, checksum=mode)


def test_a_flipped_reserved_bit_still_fails_the_checksum() -> None:
    m = bytearray(MCAST6)
    m[4] |= 0x80
    assert reason(decode6, bytes(m)) == "bad_checksum"


@settings(max_examples=500)
@given(st.binary(max_size=120), modes, st.sampled_from([4, 6]))
def test_arbitrary_bytes_only_raise_packet_error(
    data: bytes, mode: V3Checksum, family: int
) -> None:
    try:
        if family == 4:
            parse_datagram_v3(data, checksum=mode)
        else:
            decode6(data, checksum=mode)
    except PacketError as e:
        assert e.reason in DROP_REASONS


@st.composite
def mutations(draw: st.DrawFn) -> tuple[bytes, int]:
    family = draw(st.sampled_from([4, 6]))
    fixtures = [MCAST4, UNICAST4, UNICAST4_OLD] if family == 4 else [MCAST6]
    d = bytearray(draw(st.sampled_from(fixtures)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        at = draw(st.integers(0, max(len(d) - 1, 0)))
        if kind == "flip" and d:
            d[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and d:
            d[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del d[at : at + draw(st.integers(1, 8))]
        else:
            d[at:at] = draw(st.binary(min_size=1, max_size=16))
    if draw(st.booleans()):
        # Often repair the checksums so the mutation reaches the deeper checks.
        if family == 6 and len(d) >= 8:
            d = bytearray(refix(d, LL, VRRP_MCAST_GROUP6))
        elif family == 4 and len(d) >= 28 and d[0] == 0x45:
            d = bytearray(refix4(d))
    return bytes(d), family


@settings(max_examples=1000)
@given(mutations(), modes)
def test_mutated_adverts_only_raise_packet_error(
    mutated: tuple[bytes, int], mode: V3Checksum
) -> None:
    data, family = mutated
    try:
        received = parse_datagram_v3(data, checksum=mode) if family == 4 else decode6(data)
        verify_v3(received, EXPECT4 if family == 4 else EXPECT6)
    except PacketError as e:
        assert e.reason in DROP_REASONS
