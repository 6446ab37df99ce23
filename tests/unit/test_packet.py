"""VRRPv2 codec: byte fixtures both ways, every drop reason, AH, and fuzzing."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyalived.config.model import AuthType
from pyalived.vrrp.packet import (
    DROP_REASONS,
    VRRP_MCAST_GROUP,
    Advert,
    Expectation,
    PacketError,
    Received,
    build_datagram,
    check_ah_sequence,
    internet_checksum,
    parse_datagram,
    verify,
)

SRC = IPv4Address("198.18.0.11")
VIP1 = IPv4Address("198.18.0.100")
VIP2 = IPv4Address("198.18.0.101")
ADVERT = Advert(vrid=51, priority=150, advert_int=1, addresses=(VIP1, VIP2))

# The three fixtures below are also byte-identical to what keepalived 2.2.7 sends for
# the same instance (tests/netns/test_wire_compat.py checks that on live captures).
# fmt: off
# No authentication, IP id 1.  Hand-assembled from RFC 791 / RFC 3768 §5.1.
PLAIN = bytes.fromhex(
    "45"        # version 4, IHL 5 (20 bytes)
    "c0"        # TOS: precedence 6, internetwork control
    "002c"      # total length 44 = 20 + 24
    "0001"      # identification
    "0000"      # flags/fragment offset: no DF
    "ff"        # TTL 255
    "70"        # protocol 112 = VRRP
    "1471"      # header checksum
    "c612000b"  # source 198.18.0.11
    "e0000012"  # destination 224.0.0.18
    "21"        # VRRP version 2, type 1 (advertisement)
    "33"        # VRID 51
    "96"        # priority 150
    "02"        # count IP addrs
    "00"        # auth type 0
    "01"        # advert interval 1 s
    "bbda"      # VRRP checksum
    "c6120064"  # 198.18.0.100
    "c6120065"  # 198.18.0.101
    "0000000000000000"  # authentication data
)

# PASS with auth_pass "secret12xyz": only 8 bytes go on the wire.
PASS = bytes.fromhex(
    "45c0002c" "00010000" "ff701471" "c612000b" "e0000012"  # IPv4 as above
    "21339602"
    "01"        # auth type 1, simple text password
    "01"
    "4d5c"      # VRRP checksum
    "c6120064" "c6120065"
    "7365637265743132"  # "secret12"
)

# AH with auth_pass "secret12", sequence 1.
AH = bytes.fromhex(
    "45c0"
    "0044"      # total length 68 = 20 + 24 (AH) + 24 (VRRP)
    "0001" "0000" "ff"
    "33"        # protocol 51 = AH
    "1496"      # header checksum
    "c612000b" "e0000012"
    "70"        # AH next header 112
    "04"        # AH payload length: 24 bytes / 4 - 2
    "0000"      # reserved
    "c612000b"  # SPI = the source address, as keepalived
    "00000001"  # sequence number
    "842a4c57319aad2e6caba81c"  # ICV: HMAC-MD5-96, TOS/flags/checksum zeroed
    "21339602"
    "02"        # auth type 2, IP authentication header
    "01"
    "b9da"      # VRRP checksum
    "c6120064" "c6120065"
    "0000000000000000"  # auth data: zero with AH
)
# fmt: on

EXPECT_NONE = Expectation(vrid=51, advert_int=1, addresses=frozenset({VIP1, VIP2}), auth_type=None)
EXPECT_PASS = Expectation(51, 1, frozenset({VIP1, VIP2}), AuthType.PASS, b"secret12xyz")
EXPECT_AH = Expectation(51, 1, frozenset({VIP1, VIP2}), AuthType.AH, b"secret12")

SEEN_REASONS: set[str] = set()


def reason_of(datagram: bytes, expect: Expectation | None = None) -> str:
    with pytest.raises(PacketError) as info:
        received = parse_datagram(datagram)
        if expect is not None:
            verify(received, expect, datagram)
    SEEN_REASONS.add(info.value.reason)
    return info.value.reason


def fix_checksums(datagram: bytes | bytearray, vrrp_at: int = 20) -> bytes:
    """Recompute the IPv4 and VRRP checksums after a test mutated a field."""
    d = bytearray(datagram)
    ihl = (d[0] & 0x0F) * 4
    d[10:12] = b"\0\0"
    d[10:12] = struct.pack("!H", internet_checksum(bytes(d[:ihl])))
    d[vrrp_at + 6 : vrrp_at + 8] = b"\0\0"
    d[vrrp_at + 6 : vrrp_at + 8] = struct.pack("!H", internet_checksum(bytes(d[vrrp_at:])))
    return bytes(d)


def patched(datagram: bytes, offset: int, value: bytes, vrrp_at: int = 20) -> bytes:
    d = bytearray(datagram)
    d[offset : offset + len(value)] = value
    return fix_checksums(d, vrrp_at)


# --------------------------------------------------------------------------- checksum


def test_internet_checksum_rfc1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (with end-around carry).
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_internet_checksum_odd_length_pads_with_zero() -> None:
    assert internet_checksum(b"\x12\x34\x56") == internet_checksum(b"\x12\x34\x56\x00")


def test_checksum_of_a_valid_message_verifies_to_zero() -> None:
    assert internet_checksum(PLAIN[:20]) == 0
    assert internet_checksum(PLAIN[20:]) == 0


# --------------------------------------------------------------------------- build


def test_build_no_auth() -> None:
    assert build_datagram(SRC, VRRP_MCAST_GROUP, ADVERT, ip_id=1) == PLAIN


def test_build_pass_truncates_and_pads_password() -> None:
    got = build_datagram(
        SRC, VRRP_MCAST_GROUP, ADVERT, ip_id=1, auth=AuthType.PASS, auth_key=b"secret12xyz"
    )
    assert got == PASS
    short = build_datagram(SRC, VRRP_MCAST_GROUP, ADVERT, auth=AuthType.PASS, auth_key=b"abc")
    assert short[-8:] == b"abc\0\0\0\0\0"


def test_build_ah() -> None:
    got = build_datagram(
        SRC, VRRP_MCAST_GROUP, ADVERT, ip_id=1, auth=AuthType.AH, auth_key=b"secret12", ah_seq=1
    )
    assert got == AH


def test_build_unicast_destination_and_ip_id() -> None:
    peer = IPv4Address("198.18.0.12")
    got = build_datagram(SRC, peer, ADVERT, ip_id=0x1234)
    assert got[16:20] == peer.packed
    assert got[4:6] == b"\x12\x34"
    assert internet_checksum(got[:20]) == 0
    assert got[20:] == PLAIN[20:]


def test_build_raw_auth_fields_when_auth_is_none() -> None:
    odd = Advert(51, 150, 1, (VIP1, VIP2), auth_type=1, auth_data=b"secret12")
    assert build_datagram(SRC, VRRP_MCAST_GROUP, odd, ip_id=1) == PASS


@pytest.mark.parametrize(
    "advert",
    [
        Advert(256, 100, 1, ()),
        Advert(1, 256, 1, ()),
        Advert(1, 100, 256, ()),
        Advert(1, 100, 1, (VIP1,) * 256),
        Advert(1, 100, 1, (), auth_data=b"short"),
        Advert(1, 100, 1, (), version=16),
    ],
)
def test_build_rejects_values_that_do_not_fit(advert: Advert) -> None:
    with pytest.raises(ValueError):
        build_datagram(SRC, VRRP_MCAST_GROUP, advert)


def test_build_rejects_ip_id_and_ah_seq_out_of_range() -> None:
    with pytest.raises(ValueError):
        build_datagram(SRC, VRRP_MCAST_GROUP, ADVERT, ip_id=0x10000)
    with pytest.raises(ValueError):
        build_datagram(SRC, VRRP_MCAST_GROUP, ADVERT, auth=AuthType.AH, ah_seq=1 << 32)


# --------------------------------------------------------------------------- parse


def test_parse_no_auth() -> None:
    assert parse_datagram(PLAIN) == Received(
        src=SRC, dst=VRRP_MCAST_GROUP, ttl=255, advert=ADVERT, ah_spi=None, ah_seq=None
    )


def test_parse_pass() -> None:
    received = parse_datagram(PASS)
    assert received.advert.auth_type == 1
    assert received.advert.auth_data == b"secret12"
    assert received.ah_spi is None


def test_parse_ah() -> None:
    received = parse_datagram(AH)
    assert received.advert == Advert(51, 150, 1, (VIP1, VIP2), auth_type=2)
    assert received.ah_spi == int(SRC)
    assert received.ah_seq == 1


def with_trailer(datagram: bytes, trailer: bytes, vrrp_at: int = 20) -> bytes:
    """``datagram`` with ``trailer`` appended inside its IPv4 total length, every
    checksum recomputed (the VRRP one over the whole payload): an advert that is
    well formed except for its length, as an attacker would send it."""
    d = bytearray(datagram + trailer)
    d[2:4] = struct.pack("!H", len(d))
    return fix_checksums(d, vrrp_at)


def test_trailing_bytes_inside_total_length_are_bad_length() -> None:
    # keepalived 2.2.7 logs "vrrp packet too long, length 1040 and expect 40" and drops it.
    attack = with_trailer(PLAIN, b"\xa5" * 1000)
    assert len(attack) == 1044
    assert internet_checksum(attack[20:]) == 0  # checksum right, length wrong
    assert reason_of(attack) == "bad_length"
    assert reason_of(with_trailer(PASS, bytes(1))) == "bad_length"
    assert reason_of(with_trailer(AH, bytes(4), vrrp_at=44), EXPECT_AH) == "bad_length"


def test_bytes_past_total_length_are_bad_length() -> None:
    # keepalived 2.2.7: "ip_tot_len mismatch against received length".  (The kernel
    # trims a datagram to its total length before a raw socket sees it.)
    assert reason_of(PLAIN + b"\0" * 6) == "bad_length"
    assert reason_of(AH + b"\0") == "bad_length"


def test_parse_accepts_ip_options() -> None:
    # IHL 6 with one NOP-padded option word; total length grows by 4.
    d = bytearray(PLAIN[:20] + b"\x01\x01\x01\x00" + PLAIN[20:])
    d[0] = 0x46
    d[2:4] = struct.pack("!H", len(d))
    d = bytearray(fix_checksums(d, vrrp_at=24))
    assert parse_datagram(bytes(d)).advert == ADVERT


def test_parse_zero_addresses() -> None:
    d = build_datagram(SRC, VRRP_MCAST_GROUP, Advert(7, 100, 3, ()))
    assert parse_datagram(d).advert == Advert(7, 100, 3, ())


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "truncated"),
        (PLAIN[:19], "truncated"),
        (PLAIN[:-1], "truncated"),  # shorter than the IPv4 total length
        (patched(PLAIN, 2, b"\x00\x1b")[:27], "truncated"),  # VRRP part of 7 bytes
        (patched(AH, 2, b"\x00\x2b")[:43], "truncated"),  # AH header cut short
        (patched(PLAIN, 0, b"\x65"), "bad_ip_header"),  # IPv6 version nibble
        (patched(PLAIN, 0, b"\x44"), "bad_ip_header"),  # IHL 16 bytes
        (patched(PLAIN, 2, b"\x00\x10"), "bad_ip_header"),  # total length < IHL
        (patched(PLAIN, 6, b"\x20\x00"), "bad_ip_header"),  # MF: a fragment
        (patched(PLAIN, 6, b"\x00\x01"), "bad_ip_header"),  # fragment offset
        (PLAIN[:10] + b"\x14\x72" + PLAIN[12:], "bad_ip_checksum"),
        (patched(PLAIN, 9, b"\x11"), "bad_protocol"),  # UDP
        (patched(PLAIN, 8, b"\xfe"), "bad_ttl"),  # §7.1: TTL must be 255
        (patched(PLAIN, 8, b"\x01"), "bad_ttl"),
        (patched(AH, 20, b"\x11", vrrp_at=44), "bad_ah_header"),  # next header not VRRP
        (patched(AH, 21, b"\x05", vrrp_at=44), "bad_ah_header"),  # ICV not 96 bits
        (patched(PLAIN, 20, b"\x31"), "bad_version"),  # VRRPv3
        (patched(PLAIN, 20, b"\x11"), "bad_version"),
        (patched(PLAIN, 20, b"\x22"), "bad_type"),
        (patched(PLAIN, 23, b"\x03"), "bad_length"),  # 3 addresses announced, 2 sent
        (patched(PLAIN, 23, b"\x01"), "bad_length"),  # 1 address announced, 2 sent
        (PLAIN + b"\0", "bad_length"),  # a byte past the IPv4 total length
        (PLAIN[:26] + b"\xbb\xdb" + PLAIN[28:], "bad_checksum"),
        (PLAIN[:-1] + b"\x01", "bad_checksum"),  # payload corrupted
    ],
)
def test_parse_drop_reasons(datagram: bytes, reason: str) -> None:
    assert reason_of(datagram) == reason


def test_parse_accepts_ah_datagram_with_mutable_fields_changed() -> None:
    # TOS and the IPv4 checksum are outside the ICV: rewriting TOS keeps verify happy.
    d = patched(AH, 1, b"\x00", vrrp_at=44)
    verify(parse_datagram(d), EXPECT_AH, d)


# --------------------------------------------------------------------------- verify


def test_verify_accepts_matching_adverts() -> None:
    verify(parse_datagram(PLAIN), EXPECT_NONE, PLAIN)
    verify(parse_datagram(PASS), EXPECT_PASS, PASS)
    verify(parse_datagram(AH), EXPECT_AH, AH)


def test_verify_pass_key_compares_on_first_eight_bytes() -> None:
    other_tail = Expectation(51, 1, frozenset({VIP1, VIP2}), AuthType.PASS, b"secret12abc")
    verify(parse_datagram(PASS), other_tail, PASS)


@pytest.mark.parametrize(
    ("datagram", "expect"),
    [
        (PLAIN, EXPECT_PASS),
        (PLAIN, EXPECT_AH),
        (PASS, EXPECT_NONE),
        (PASS, EXPECT_AH),
        (AH, EXPECT_NONE),
        (AH, EXPECT_PASS),
        (patched(PLAIN, 24, b"\x02"), EXPECT_AH),  # says AH but has no AH header
        (patched(AH, 48, b"\x00", vrrp_at=44), EXPECT_AH),  # AH header, auth type 0
    ],
)
def test_verify_auth_type_mismatch(datagram: bytes, expect: Expectation) -> None:
    assert reason_of(datagram, expect) == "auth_type_mismatch"


def test_verify_wrong_password() -> None:
    wrong = Expectation(51, 1, frozenset({VIP1, VIP2}), AuthType.PASS, b"secret13")
    assert reason_of(PASS, wrong) == "auth_failure"


def test_verify_ah_wrong_key() -> None:
    wrong = Expectation(51, 1, frozenset({VIP1, VIP2}), AuthType.AH, b"secret13")
    assert reason_of(AH, wrong) == "auth_failure"


@pytest.mark.parametrize(
    ("offset", "value"),
    [
        (46, b"\xff"),  # priority raised by an attacker (VRRP checksum recomputed)
        (52, b"\x01"),  # an announced address
        (4, b"\x00\x02"),  # IP identification is covered by the ICV
        (16, bytes([198, 18, 0, 99])),  # destination address
        (28, b"\x00\x00\x00\x02"),  # AH sequence number
        (24, b"\x00\x00\x00\x01"),  # SPI
        (32, b"\x00"),  # ICV itself
    ],
)
def test_verify_ah_tamper_detected(offset: int, value: bytes) -> None:
    assert reason_of(patched(AH, offset, value, vrrp_at=44), EXPECT_AH) == "auth_failure"


def test_ah_round_trip_with_other_fields() -> None:
    advert = Advert(vrid=7, priority=0, advert_int=3, addresses=(VIP2,))
    peer = IPv4Address("198.18.1.2")
    d = build_datagram(
        SRC, peer, advert, ip_id=999, auth=AuthType.AH, auth_key=b"k", ah_seq=0xFFFFFFFF
    )
    received = parse_datagram(d)
    assert received.advert == Advert(7, 0, 3, (VIP2,), auth_type=2)
    assert (received.dst, received.ah_spi, received.ah_seq) == (peer, int(SRC), 0xFFFFFFFF)
    verify(received, Expectation(7, 3, frozenset({VIP2}), AuthType.AH, b"k\0"), d)
    assert reason_of(d, Expectation(7, 3, frozenset({VIP2}), AuthType.AH, b"K")) == "auth_failure"


def test_verify_address_count_mismatch() -> None:
    expect = Expectation(51, 1, frozenset({VIP1}), None)
    assert reason_of(PLAIN, expect) == "addr_count_mismatch"


def test_verify_address_list_mismatch() -> None:
    expect = Expectation(51, 1, frozenset({VIP1, IPv4Address("198.18.0.102")}), None)
    assert reason_of(PLAIN, expect) == "addr_list_mismatch"


def test_verify_address_order_does_not_matter() -> None:
    d = build_datagram(SRC, VRRP_MCAST_GROUP, Advert(51, 150, 1, (VIP2, VIP1)))
    verify(parse_datagram(d), EXPECT_NONE, d)


def test_verify_address_owner_is_not_exempt_from_address_checks() -> None:
    # §7.1 would process an owner's (priority 255) advert despite a mismatch;
    # keepalived 2.2.7 drops it, and so do we.
    d = build_datagram(SRC, VRRP_MCAST_GROUP, Advert(51, 255, 1, (VIP1,)))
    assert reason_of(d, EXPECT_NONE) == "addr_count_mismatch"
    d = build_datagram(SRC, VRRP_MCAST_GROUP, Advert(51, 255, 1, (VIP1, VIP1)))
    assert reason_of(d, EXPECT_NONE) == "addr_list_mismatch"


def test_verify_advert_interval_mismatch() -> None:
    expect = Expectation(51, 2, frozenset({VIP1, VIP2}), None)
    assert reason_of(PLAIN, expect) == "advert_int_mismatch"


def test_verify_auth_checked_before_addresses() -> None:
    expect = Expectation(51, 2, frozenset(), AuthType.PASS, b"nope")
    assert reason_of(PLAIN, expect) == "auth_type_mismatch"


# --------------------------------------------------------------------------- AH sequence


def test_ah_sequence_must_increase() -> None:
    r1, r2 = (
        parse_datagram(AH),
        parse_datagram(build_datagram(SRC, VRRP_MCAST_GROUP, ADVERT, auth=AuthType.AH, ah_seq=2)),
    )
    assert check_ah_sequence(None, r1) == 1
    assert check_ah_sequence(1, r2) == 2
    with pytest.raises(PacketError) as info:
        check_ah_sequence(2, r2)
    SEEN_REASONS.add(info.value.reason)
    assert info.value.reason == "ah_replay"
    with pytest.raises(PacketError):
        check_ah_sequence(2, r1)
    assert check_ah_sequence(None, r1) == 1  # the caller forgot: a restarted peer is heard


def test_ah_sequence_ignores_datagrams_without_ah() -> None:
    assert check_ah_sequence(5, parse_datagram(PLAIN)) == 5
    assert check_ah_sequence(None, parse_datagram(PLAIN)) is None


# --------------------------------------------------------------------------- reasons


def test_drop_reasons_are_unique_snake_case() -> None:
    assert len(set(DROP_REASONS)) == len(DROP_REASONS)
    for reason in DROP_REASONS:
        assert reason.replace("_", "").isalpha() and reason.islower()


def test_zz_every_drop_reason_was_exercised() -> None:
    # Runs after the tests above in file order; skips when run alone.
    if not SEEN_REASONS:
        pytest.skip("run with the whole module")
    assert set(DROP_REASONS) == SEEN_REASONS


# --------------------------------------------------------------------------- properties

addresses = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
adverts = st.builds(
    Advert,
    vrid=st.integers(0, 255),
    priority=st.integers(0, 255),
    advert_int=st.integers(0, 255),
    addresses=st.lists(addresses, max_size=20).map(tuple),
    auth_type=st.integers(0, 255),
    auth_data=st.binary(min_size=8, max_size=8),
)
valid = st.sampled_from([PLAIN, PASS, AH])
expectations = st.sampled_from([EXPECT_NONE, EXPECT_PASS, EXPECT_AH])


def parse_and_verify_only_raise_packet_error(datagram: bytes, expect: Expectation) -> None:
    try:
        received = parse_datagram(datagram)
    except PacketError as e:
        assert e.reason in DROP_REASONS
        return
    try:
        verify(received, expect, datagram)
        check_ah_sequence(1, received)
    except PacketError as e:
        assert e.reason in DROP_REASONS


@settings(max_examples=500)
@given(st.binary(max_size=120), expectations)
def test_arbitrary_bytes_only_raise_packet_error(data: bytes, expect: Expectation) -> None:
    parse_and_verify_only_raise_packet_error(data, expect)


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    d = bytearray(draw(valid))
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
            d[at:at] = draw(st.binary(min_size=1, max_size=8))
    if draw(st.booleans()) and len(d) >= 20:
        # Often repair the checksums so the mutation reaches the deeper checks.
        d[2:4] = struct.pack("!H", len(d))
        vrrp_at = (d[0] & 0x0F) * 4 + (24 if d[9] == 51 else 0)
        if 20 <= vrrp_at <= len(d) - 8:
            d = bytearray(fix_checksums(d, vrrp_at))
    return bytes(d)


@settings(max_examples=1000)
@given(mutations(), expectations)
def test_mutated_datagrams_only_raise_packet_error(data: bytes, expect: Expectation) -> None:
    parse_and_verify_only_raise_packet_error(data, expect)


@given(
    st.sampled_from([(PLAIN, 20), (PASS, 20), (AH, 44)]),
    st.binary(min_size=1, max_size=1500),
    st.booleans(),
    expectations,
)
def test_any_extra_bytes_are_bad_length(
    base: tuple[bytes, int], extra: bytes, inside: bool, expect: Expectation
) -> None:
    datagram, vrrp_at = base
    d = with_trailer(datagram, extra, vrrp_at) if inside else datagram + extra
    assert reason_of(d, expect) == "bad_length"


@given(adverts, addresses, addresses, st.integers(0, 0xFFFF))
def test_build_parse_round_trip(
    advert: Advert, src: IPv4Address, dst: IPv4Address, ip_id: int
) -> None:
    datagram = build_datagram(src, dst, advert, ip_id=ip_id)
    if advert.version != 2 or advert.type != 1:
        return
    received = parse_datagram(datagram)
    assert received == Received(src=src, dst=dst, ttl=255, advert=advert)


@given(adverts, st.binary(max_size=12), st.integers(0, 2**32 - 1))
def test_ah_round_trip_property(advert: Advert, key: bytes, seq: int) -> None:
    datagram = build_datagram(
        SRC, VRRP_MCAST_GROUP, advert, auth=AuthType.AH, auth_key=key, ah_seq=seq
    )
    received = parse_datagram(datagram)
    assert received.ah_seq == seq
    expect = Expectation(
        advert.vrid, advert.advert_int, frozenset(advert.addresses), AuthType.AH, key
    )
    if len(set(advert.addresses)) == len(advert.addresses):
        verify(received, expect, datagram)
