"""VRRP packet codec: VRRPv2 (RFC 3768 §5) with the IPv4 header and IPsec AH, and
VRRPv3 (RFC 5798 as updated by RFC 9568) for IPv4 and IPv6.

Theory of operation: pure functions between bytes and frozen dataclasses.
Every failure raises ``PacketError`` whose ``reason`` is a short stable
identifier used as a metric label; the complete set of reasons is
``DROP_REASONS``, shared by both versions (a check that exists in both uses
the same name in both).  Nothing here keeps state: the AH replay check needs
the last accepted sequence number, so it is the separate helper
``check_ah_sequence`` whose result an ``AhReplayGuard``
(``pyalived.vrrp.ah_replay``) stores; likewise keepalived's switch to the old
VRRPv3 unicast checksum (below) is reported by the decoder
(``ReceivedV3.old_checksum``) and remembered by the caller.

The version is the instance's configuration (``vrrp_version``/``version``,
IPv6 instances always 3): each decoder accepts its own version only, and an
advert of the other version is dropped as ``bad_version`` (RFC 3768 §7.1,
RFC 5798 §7.1), as keepalived does.

VRRPv2 (``build_datagram``, ``parse_datagram``, ``verify``)
-----------------------------------------------------------

``build_datagram`` produces a whole IPv4 datagram (sent with IP_HDRINCL, as
keepalived does), ``parse_datagram`` takes a whole received IPv4 datagram
(as a raw socket returns it) and ``verify`` applies the per-instance
reception checks of RFC 3768 §7.1.

Wire format, matching keepalived 2.2.7 byte for byte (checked against
captures of its adverts):

* IPv4 header of 20 bytes: TOS 0xc0 (precedence "internetwork control"),
  no DF flag, identification chosen by the caller (keepalived counts up from
  1 per instance), TTL 255 (§5.2.3), protocol 112, or 51 when AH is used.
* AH (RFC 2402, as keepalived builds it): next header 112, payload length 4
  (a 24-byte header), reserved 0, SPI equal to the source address, sequence
  number from the caller, and a 12-byte ICV = HMAC-MD5-96 keyed with the
  8-byte auth_pass, computed over the whole datagram with the ICV, the TOS,
  the flags/fragment offset and the header checksum set to zero.  Unlike
  RFC 2402 §3.3.3.1.1.1, keepalived leaves the TTL in the ICV input, and so
  do we; it is always 255 anyway.  The VRRP header then carries auth type 2
  and eight zero bytes of authentication data.
* VRRP header (§5.1): version 2, type 1, VRID, priority, count, auth type,
  advert interval in seconds, checksum (§5.3.8: one's complement sum over the
  VRRP message alone, no pseudo-header), the addresses and 8 bytes of
  authentication data (the zero-padded password for PASS, §5.3.10).

Lengths are exact, as in keepalived 2.2.7.  The VRRP message must be exactly
8 + 4 * count + 8 bytes (§5.1 with the count of §5.3.5), and the datagram
exactly as long as its IPv4 total length.  §7.1 only requires "the complete
VRRP packet"; keepalived refuses a longer one as well, and so do we: anything
else is ``bad_length`` (keepalived's ``packet_len_err``), too short and too
long alike:

* Trailing bytes *inside* the IPv4 total length (an advert padded to 1,040
  bytes with a checksum over the whole payload) are dropped; keepalived logs
  "vrrp packet too long, length 1040 and expect 40" and keeps its state.
* A buffer *longer* than its IPv4 total length is dropped too (keepalived:
  "ip_tot_len mismatch against received length").  On a real link such
  bytes never reach either daemon: the kernel trims a received datagram to
  its total length before a raw socket sees it, so an Ethernet frame with
  bytes after a well-formed datagram (padding, or junk) is accepted by both
  keepalived and pyalived.  ``parse_datagram`` takes what a raw IPv4 socket
  returns; whoever reads frames (a pcap) must cut them at the total length.
* A buffer *shorter* than its total length is ``truncated`` (the kernel drops
  such datagrams before delivery).

Observed on keepalived 2.2.7 in a namespace lab, against a MASTER of
priority 100 (tests/netns/test_advert_length.py runs the same against both
daemons): a priority-200 advert with 1,000 bytes inside its total length is
ignored; the same advert with 1,000 bytes after it in the Ethernet frame,
outside its total length, wins the election.

VRRPv3 (``build_datagram_v3``, ``parse_datagram_v3``, ``encode_v3``, ``decode_v3``)
-----------------------------------------------------------------------------------

The VRRP message (RFC 5798 §5.1, §5.2): version 3, type 1, VRID, priority,
count, then 4 reserved bits (zero on transmission, ignored on reception,
§5.2.7) and the 12-bit Max Adver Int in centiseconds, the checksum, and the
IPvX addresses: 4 bytes each in an IPv4 advert, 16 in an IPv6 one (§5.2.9).
There is no authentication (RFC 5798 removed it; keepalived sends no AH or
password with version 3, so an AH-wrapped VRRPv3 datagram is
``bad_protocol``).  The message must be exactly 8 + 4 * count (IPv4) or
8 + 16 * count (IPv6) bytes; trailing bytes are ``bad_length``, as in v2.

The checksum (§5.2.8) is the Internet checksum over a pseudo-header followed
by the VRRP message: for IPv4 the source, the destination, a zero byte,
protocol 112 and the 16-bit VRRP length; for IPv6 the RFC 8200 §8.1 one
(source, destination, 32-bit upper-layer length, three zero bytes, next
header 112).  keepalived 2.2.7 computes exactly this for IPv4 itself; for
IPv6 it leaves the field to the kernel (IPV6_CHECKSUM), which computes the
same value and verifies received ones.

keepalived's one checksum compatibility switch, the per-instance
``old_unicast_checksum [never]`` (no global form; built in when ``keepalived
-v`` lists OLD_CHKSUM_COMPAT, as Debian's 2.2.7 does), concerns unicast
VRRPv3 over IPv4 only: keepalived up to 1.3.5 put the multicast group
(``vrrp_mcast_group4``, 224.0.0.18 by default) in the pseudo-header instead
of the unicast destination.  Captured from 2.2.7, 198.18.0.11 to 198.18.0.12:
the same advert carries 0xf92b normally and 0xdf37 with the group, which is
what ``old_unicast_checksum`` sends.  ``V3Checksum`` names the three
behaviours:

* ``RFC``: the real destination, sending and receiving (keepalived with
  ``old_unicast_checksum never``, and any multicast instance, for which the
  two forms coincide).
* ``OLD``: the group in place of the destination, sending and receiving
  (``old_unicast_checksum``, or after an automatic switch).
* ``RFC_OR_OLD``: keepalived's default for a unicast instance: send the RFC
  form, and accept a received advert that fails the RFC checksum if it
  verifies the old way.  keepalived then logs "Setting unicast VRRPv3
  checksum to old version" and uses ``OLD`` from then on, both ways; the
  decoder reports such an advert with ``ReceivedV3.old_checksum`` set so that
  the caller can switch likewise.

The IPv4 TTL or IPv6 hop limit must be 255 (RFC 5798 §7.1), else
``bad_ttl``.  A VRRPv3 IPv4 datagram is otherwise built like a v2 one (TOS
0xc0, no DF, TTL 255, the caller's identification).  An IPv6 advert goes out
through a raw IPv6 socket, so ``encode_v3`` returns the VRRP message alone
and ``decode_v3`` takes the message with what the receiving socket reports:
source, destination (IPV6_PKTINFO) and hop limit (IPV6_HOPLIMIT).  keepalived
2.2.7 sends it from the link-local address of the interface to ff02::12 with
hop limit 255, traffic class 0xc0 and the configured addresses only (no
link-local address is added to the list).

``verify_v3`` applies the per-instance checks of §7.1: the address count and
list, dropped on a mismatch whatever the priority, as keepalived does (like
``verify``).  Unlike VRRPv2 the advertisement interval is not compared: a
Backup adopts the Master's (§6.4.2, Master_Adver_Interval).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from pyalived.config.model import AuthType

VRRP_PROTO = 112
AH_PROTO = 51
VRRP_MCAST_GROUP = IPv4Address("224.0.0.18")
VRRP_MCAST_GROUP6 = IPv6Address("ff02::12")  # RFC 5798 §5.1.2.2

VRRP_VERSION = 2
VRRP_VERSION_3 = 3
MAX_ADVERT_INT_MAX = 0x0FFF  # 12 bits of centiseconds, RFC 5798 §5.2.7
VRRP_TYPE_ADVERT = 1
AUTH_NONE = 0
AUTH_PASS = 1  # "Simple Text Password", RFC 3768 §5.3.6
AUTH_AH = 2  # "IP Authentication Header", RFC 2338 §5.3.6.3 (kept by keepalived)

IP_TOS = 0xC0
IP_TTL = 255
IP_HEADER_LEN = 20
VRRP_HEADER_LEN = 8
AUTH_DATA_LEN = 8
AH_LEN = 24  # next header, length, reserved, SPI, sequence, 12-byte ICV
AH_ICV_LEN = 12
AH_ICV_OFFSET = 12  # inside the AH header

#: Every ``PacketError.reason`` this module raises, for metric label sets.
DROP_REASONS: tuple[str, ...] = (
    "truncated",  # shorter than a header or than its IPv4 total length says
    "bad_ip_header",  # not IPv4, bad IHL/total length, or a fragment
    "bad_ip_checksum",  # IPv4 header checksum does not verify
    "bad_protocol",  # neither VRRP (112) nor AH (51); AH with VRRPv3
    "bad_ttl",  # TTL or IPv6 hop limit is not 255 (§7.1)
    "bad_ah_header",  # AH not carrying VRRP, or an ICV size other than 96 bits
    "bad_version",  # VRRP version is not the instance's: 2 or 3 (§7.1)
    "bad_type",  # VRRP type is not 1 = ADVERTISEMENT (§5.3.2)
    "bad_length",  # not 8 + 4 * count + 8 (v2), 8 + 4|16 * count (v3), or past the total length
    "bad_checksum",  # VRRP checksum does not verify (v2 §5.3.8, v3 §5.2.8, §7.1)
    "auth_type_mismatch",  # auth type differs from the local one (§7.1)
    "auth_failure",  # PASS password or AH ICV does not match (§7.1)
    "ah_replay",  # AH sequence number not above the last accepted one
    "addr_count_mismatch",  # count differs from the local VIP count (§7.1)
    "addr_list_mismatch",  # addresses differ from the local VIPs (§7.1)
    "advert_int_mismatch",  # advert interval differs from the local one (§7.1)
)


class PacketError(Exception):
    """A received datagram failed a check; ``reason`` is e.g. "bad_ttl"."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Advert:
    """The VRRP part of an advertisement (RFC 3768 §5.1)."""

    vrid: int
    priority: int
    advert_int: int  # seconds (VRRPv2)
    addresses: tuple[IPv4Address, ...]
    auth_type: int = 0  # 0 none, 1 simple text (PASS), 2 AH
    auth_data: bytes = b"\0" * 8
    version: int = 2
    type: int = 1


@dataclass(frozen=True)
class Received:
    src: IPv4Address
    dst: IPv4Address
    ttl: int
    advert: Advert
    ah_spi: int | None = None  # set when the datagram carried an AH header
    ah_seq: int | None = None


@dataclass(frozen=True)
class Expectation:
    """What one local instance requires of an advert for its VRID."""

    vrid: int
    advert_int: int
    addresses: frozenset[IPv4Address]
    auth_type: AuthType | None
    auth_key: bytes = b""


# --------------------------------------------------------------------------- helpers


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum: one's complement of the one's complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def auth_key_bytes(key: bytes) -> bytes:
    """The 8-byte authentication data keepalived derives from auth_pass (§5.3.10)."""
    return key[:AUTH_DATA_LEN].ljust(AUTH_DATA_LEN, b"\0")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is outside {low}..{high}")


def _encode_vrrp(advert: Advert, auth_type: int, auth_data: bytes) -> bytes:
    _check_range("version", advert.version, 0, 15)
    _check_range("type", advert.type, 0, 15)
    _check_range("vrid", advert.vrid, 0, 255)
    _check_range("priority", advert.priority, 0, 255)
    _check_range("address count", len(advert.addresses), 0, 255)
    _check_range("auth type", auth_type, 0, 255)
    _check_range("advert_int", advert.advert_int, 0, 255)
    if len(auth_data) != AUTH_DATA_LEN:
        raise ValueError(f"auth data must be {AUTH_DATA_LEN} bytes, not {len(auth_data)}")
    body = (
        struct.pack(
            "!BBBBBBH",
            (advert.version << 4) | advert.type,
            advert.vrid,
            advert.priority,
            len(advert.addresses),
            auth_type,
            advert.advert_int,
            0,
        )
        + b"".join(a.packed for a in advert.addresses)
        + auth_data
    )
    csum = internet_checksum(body)
    return body[:6] + struct.pack("!H", csum) + body[8:]


def _ip_header(
    src: IPv4Address, dst: IPv4Address, proto: int, payload_len: int, ip_id: int
) -> bytearray:
    _check_range("ip_id", ip_id, 0, 0xFFFF)
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            IP_TOS,
            IP_HEADER_LEN + payload_len,
            ip_id,
            0,  # no DF, as keepalived
            IP_TTL,
            proto,
            0,
            src.packed,
            dst.packed,
        )
    )
    return header


def _ah_icv(datagram: bytes, ihl: int, key: bytes) -> bytes:
    """HMAC-MD5-96 over ``datagram`` with the mutable fields and the ICV zeroed."""
    data = bytearray(datagram)
    data[1] = 0  # TOS
    data[6:8] = b"\0\0"  # flags, fragment offset
    data[10:12] = b"\0\0"  # header checksum
    icv_at = ihl + AH_ICV_OFFSET
    data[icv_at : icv_at + AH_ICV_LEN] = bytes(AH_ICV_LEN)
    mac = hmac.HMAC(auth_key_bytes(key), hashes.MD5())
    mac.update(bytes(data))
    return mac.finalize()[:AH_ICV_LEN]


# --------------------------------------------------------------------------- build


def build_datagram(
    src: IPv4Address,
    dst: IPv4Address,
    advert: Advert,
    *,
    ip_id: int = 0,
    auth: AuthType | None = None,
    auth_key: bytes = b"",
    ah_seq: int = 0,
) -> bytes:
    """Encode a whole IPv4 datagram carrying ``advert`` to ``dst``.

    ``auth`` selects the authentication: ``PASS`` writes auth type 1 and the
    zero-padded first 8 bytes of ``auth_key``; ``AH`` wraps the VRRP message
    in an AH header (SPI = ``src``, sequence ``ah_seq``) keyed with
    ``auth_key``.  With ``auth=None`` the advert's own ``auth_type`` and
    ``auth_data`` are written unchanged and no AH header is added.  Values out
    of range for their wire fields raise ``ValueError``.
    """
    if auth is AuthType.PASS:
        vrrp = _encode_vrrp(advert, AUTH_PASS, auth_key_bytes(auth_key))
    elif auth is AuthType.AH:
        vrrp = _encode_vrrp(advert, AUTH_AH, bytes(AUTH_DATA_LEN))
    else:
        vrrp = _encode_vrrp(advert, advert.auth_type, advert.auth_data)

    if auth is not AuthType.AH:
        header = _ip_header(src, dst, VRRP_PROTO, len(vrrp), ip_id)
        header[10:12] = struct.pack("!H", internet_checksum(bytes(header)))
        return bytes(header) + vrrp

    _check_range("ah_seq", ah_seq, 0, 0xFFFFFFFF)
    spi = int(src)
    ah = struct.pack("!BBHII", VRRP_PROTO, AH_LEN // 4 - 2, 0, spi, ah_seq) + bytes(AH_ICV_LEN)
    header = _ip_header(src, dst, AH_PROTO, AH_LEN + len(vrrp), ip_id)
    datagram = bytearray(bytes(header) + ah + vrrp)
    icv = _ah_icv(bytes(datagram), IP_HEADER_LEN, auth_key)
    icv_at = IP_HEADER_LEN + AH_ICV_OFFSET
    datagram[icv_at : icv_at + AH_ICV_LEN] = icv
    datagram[10:12] = struct.pack("!H", internet_checksum(bytes(datagram[:IP_HEADER_LEN])))
    return bytes(datagram)


# --------------------------------------------------------------------------- parse


@dataclass(frozen=True)
class _Layout:
    ihl: int  # IPv4 header length in bytes
    total: int  # IPv4 total length
    vrrp_at: int  # offset of the VRRP message


def _layout(datagram: bytes) -> _Layout:
    """Locate the headers; raises PacketError on any structural problem."""
    if len(datagram) < IP_HEADER_LEN:
        raise PacketError("truncated", f"{len(datagram)} bytes, no IPv4 header")
    if datagram[0] >> 4 != 4:
        raise PacketError("bad_ip_header", f"IP version {datagram[0] >> 4}")
    ihl = (datagram[0] & 0x0F) * 4
    if ihl < IP_HEADER_LEN:
        raise PacketError("bad_ip_header", f"IHL {ihl} bytes")
    (total,) = struct.unpack_from("!H", datagram, 2)
    if total < ihl:
        raise PacketError("bad_ip_header", f"total length {total} < header length {ihl}")
    if len(datagram) < total:
        raise PacketError("truncated", f"{len(datagram)} bytes, IPv4 total length {total}")
    if len(datagram) > total:
        raise PacketError("bad_length", f"{len(datagram)} bytes, IPv4 total length {total}")
    (frag,) = struct.unpack_from("!H", datagram, 6)
    if frag & 0x3FFF:  # MF flag or a fragment offset
        raise PacketError("bad_ip_header", "fragment")
    if internet_checksum(datagram[:ihl]) != 0:
        raise PacketError("bad_ip_checksum")
    ttl = datagram[8]
    if ttl != IP_TTL:
        raise PacketError("bad_ttl", f"TTL {ttl}")  # RFC 3768 §7.1
    proto = datagram[9]
    if proto == VRRP_PROTO:
        return _Layout(ihl, total, ihl)
    if proto != AH_PROTO:
        raise PacketError("bad_protocol", f"IP protocol {proto}")
    if total < ihl + AH_LEN:
        raise PacketError("truncated", "AH header")
    next_header, ah_words = datagram[ihl], datagram[ihl + 1]
    if next_header != VRRP_PROTO:
        raise PacketError("bad_ah_header", f"next header {next_header}")
    if (ah_words + 2) * 4 != AH_LEN:
        raise PacketError("bad_ah_header", f"AH length {(ah_words + 2) * 4}, want {AH_LEN}")
    return _Layout(ihl, total, ihl + AH_LEN)


def parse_datagram(datagram: bytes) -> Received:
    """Structural checks: IPv4 header, TTL 255, optional AH, version 2, type 1,
    exact length, checksum.

    ``datagram`` is one whole IPv4 datagram as a raw socket returns it: its
    length must equal the IPv4 total length, and the VRRP message must be
    exactly as long as its address count says (see the module docstring).
    The IPv4 header checksum is verified too (the kernel has normally done so
    already).
    """
    datagram = bytes(datagram)  # also accept a bytearray or memoryview
    lay = _layout(datagram)
    vrrp = datagram[lay.vrrp_at : lay.total]
    if len(vrrp) < VRRP_HEADER_LEN:
        raise PacketError("truncated", f"VRRP message of {len(vrrp)} bytes")
    version, vtype = vrrp[0] >> 4, vrrp[0] & 0x0F
    if version != VRRP_VERSION:
        raise PacketError("bad_version", f"version {version}")  # §7.1
    if vtype != VRRP_TYPE_ADVERT:
        raise PacketError("bad_type", f"type {vtype}")  # §5.3.2
    vrid, priority, count, auth_type, advert_int = struct.unpack_from("!BBBBB", vrrp, 1)
    want = VRRP_HEADER_LEN + 4 * count + AUTH_DATA_LEN
    if len(vrrp) != want:  # §7.1; too long as well, as keepalived 2.2.7
        too = "long" if len(vrrp) > want else "short"
        raise PacketError(
            "bad_length", f"too {too}: {len(vrrp)} bytes for {count} addresses, want {want}"
        )
    if internet_checksum(vrrp) != 0:
        raise PacketError("bad_checksum")  # §5.3.8, §7.1
    addrs_end = VRRP_HEADER_LEN + 4 * count
    addresses = tuple(IPv4Address(vrrp[i : i + 4]) for i in range(VRRP_HEADER_LEN, addrs_end, 4))
    advert = Advert(
        vrid=vrid,
        priority=priority,
        advert_int=advert_int,
        addresses=addresses,
        auth_type=auth_type,
        auth_data=bytes(vrrp[addrs_end : addrs_end + AUTH_DATA_LEN]),
        version=version,
        type=vtype,
    )
    ah_spi: int | None = None
    ah_seq: int | None = None
    if lay.vrrp_at != lay.ihl:
        ah_spi, ah_seq = struct.unpack_from("!II", datagram, lay.ihl + 4)
    return Received(
        src=IPv4Address(datagram[12:16]),
        dst=IPv4Address(datagram[16:20]),
        ttl=datagram[8],
        advert=advert,
        ah_spi=ah_spi,
        ah_seq=ah_seq,
    )


# --------------------------------------------------------------------------- verify


def verify(received: Received, expect: Expectation, datagram: bytes) -> None:
    """Per-instance checks of §7.1: auth (incl. the AH ICV over ``datagram``), address
    count and list, advert interval.  The caller has already matched the VRID.

    A differing address count or list drops the advert whatever its priority:
    keepalived 2.2.7 does so, although §7.1 would let an advert from the
    address owner (priority 255) through.  The AH sequence number is not
    checked here; see ``check_ah_sequence``.  An instance that lets a
    differing address list through checks the same three apart:
    ``verify_auth``, ``address_mismatch``, ``verify_interval``.
    """
    verify_auth(received, expect, datagram)
    mismatch = address_mismatch(received.advert.addresses, expect.addresses)
    if mismatch is not None:
        raise mismatch
    verify_interval(received, expect)


def verify_auth(received: Received, expect: Expectation, datagram: bytes) -> None:
    """§7.1's authentication checks (incl. the AH ICV over ``datagram``)."""
    _verify_auth(received, expect, bytes(datagram))


def address_mismatch(
    announced: Sequence[IPAddress], ours: frozenset[IPAddress] | frozenset[IPv4Address]
) -> PacketError | None:
    """How the addresses an advert announces differ from ours (§7.1: count, then list),
    or None if they do not."""
    if len(announced) != len(ours):
        return PacketError(
            "addr_count_mismatch", f"{len(announced)} addresses, expected {len(ours)}"
        )
    if frozenset(announced) != ours:
        missing = sorted(map(str, ours - frozenset(announced)))
        return PacketError("addr_list_mismatch", f"missing {', '.join(missing)}")
    return None


def verify_interval(received: Received, expect: Expectation) -> None:
    """§7.1: the advert interval must be ours (VRRPv2)."""
    advert = received.advert
    if advert.advert_int != expect.advert_int:
        raise PacketError(
            "advert_int_mismatch", f"{advert.advert_int} s, expected {expect.advert_int} s"
        )


def _verify_auth(received: Received, expect: Expectation, datagram: bytes) -> None:
    advert = received.advert
    want_type = {None: AUTH_NONE, AuthType.PASS: AUTH_PASS, AuthType.AH: AUTH_AH}[expect.auth_type]
    has_ah = received.ah_spi is not None
    if advert.auth_type != want_type or has_ah != (expect.auth_type is AuthType.AH):
        raise PacketError(
            "auth_type_mismatch",
            f"auth type {advert.auth_type}{' in AH' if has_ah else ''}, expected {want_type}",
        )
    if expect.auth_type is AuthType.PASS:
        if not constant_time.bytes_eq(advert.auth_data, auth_key_bytes(expect.auth_key)):
            raise PacketError("auth_failure", "password")
    elif expect.auth_type is AuthType.AH:
        lay = _layout(datagram)
        icv_at = lay.ihl + AH_ICV_OFFSET
        got = bytes(datagram[icv_at : icv_at + AH_ICV_LEN])
        want = _ah_icv(bytes(datagram[: lay.total]), lay.ihl, expect.auth_key)
        if not constant_time.bytes_eq(got, want):
            raise PacketError("auth_failure", "AH ICV")


def check_ah_sequence(last_seq: int | None, received: Received) -> int | None:
    """Anti-replay for AH: accept only a sequence number above ``last_seq``.

    Returns the sequence number to remember.  ``last_seq=None`` accepts any
    number; when to forget the last number (so that a master that restarted
    its count from 1 is accepted again) is ``pyalived.vrrp.ah_replay``'s
    rule.  A datagram without AH passes and leaves ``last_seq`` unchanged.
    """
    seq = received.ah_seq
    if seq is None:
        return last_seq
    if last_seq is not None and seq <= last_seq:
        raise PacketError("ah_replay", f"sequence {seq}, last accepted {last_seq}")
    return seq


# --------------------------------------------------------------------------- VRRPv3

IPAddress = IPv4Address | IPv6Address


class V3Checksum(enum.Enum):
    """Which VRRPv3 checksum an instance sends and accepts (see the module docstring)."""

    RFC = "rfc"  # pseudo-header with the real destination (RFC 5798 §5.2.8)
    OLD = "old"  # IPv4 unicast: the multicast group instead (keepalived <= 1.3.5)
    RFC_OR_OLD = "rfc_or_old"  # send RFC; accept RFC, else OLD (keepalived's default)


@dataclass(frozen=True)
class AdvertV3:
    """The VRRP part of a VRRPv3 advertisement (RFC 5798 §5.1, §5.2)."""

    vrid: int
    priority: int
    max_advert_int: int  # centiseconds, 12 bits (§5.2.7)
    addresses: tuple[IPAddress, ...]  # all of the family of the datagram


@dataclass(frozen=True)
class ReceivedV3:
    src: IPAddress
    dst: IPAddress
    ttl: int  # IPv4 TTL or IPv6 hop limit
    advert: AdvertV3
    #: The checksum verified only with the multicast group in the pseudo-header
    #: (an IPv4 unicast advert from a keepalived in old checksum mode).
    old_checksum: bool = False


@dataclass(frozen=True)
class ExpectationV3:
    """What one local VRRPv3 instance requires of an advert for its VRID."""

    vrid: int
    addresses: frozenset[IPAddress]


def pseudo_header(src: IPAddress, dst: IPAddress, length: int) -> bytes:
    """The checksum pseudo-header of RFC 5798 §5.2.8: IPv4 (src, dst, zero, protocol
    112, 16-bit length) or IPv6 (RFC 8200 §8.1: src, dst, 32-bit length, three zero
    bytes, next header 112)."""
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        return src.packed + dst.packed + struct.pack("!BBH", 0, VRRP_PROTO, length)
    if isinstance(src, IPv6Address) and isinstance(dst, IPv6Address):
        return src.packed + dst.packed + struct.pack("!I3xB", length, VRRP_PROTO)
    raise ValueError(f"source {src} and destination {dst} are of different families")


def checksum_v3(src: IPAddress, dst: IPAddress, message: bytes) -> int:
    """The VRRPv3 checksum of ``message`` (its own checksum field taken as zero)."""
    body = bytes(message[:6]) + b"\0\0" + bytes(message[8:])
    return internet_checksum(pseudo_header(src, dst, len(body)) + body)


def _checksum_dst(
    src: IPAddress, dst: IPAddress, mode: V3Checksum, mcast_group: IPv4Address
) -> IPAddress:
    """The pseudo-header destination ``mode`` sends with: the group for OLD over IPv4."""
    if mode is V3Checksum.OLD and isinstance(src, IPv4Address):
        return mcast_group
    return dst


def encode_v3(
    advert: AdvertV3,
    src: IPAddress,
    dst: IPAddress,
    *,
    checksum: V3Checksum = V3Checksum.RFC,
    mcast_group: IPv4Address = VRRP_MCAST_GROUP,
) -> bytes:
    """The VRRPv3 message for ``advert`` from ``src`` to ``dst`` (both IPv4 or both IPv6).

    ``checksum=OLD`` puts ``mcast_group`` (keepalived's ``vrrp_mcast_group4``)
    in the pseudo-header instead of ``dst``, as ``old_unicast_checksum`` does
    (IPv4 only: with IPv6 the kernel computes the checksum, so OLD makes no
    difference); ``RFC`` and ``RFC_OR_OLD`` send the RFC 5798 §5.2.8 checksum.
    Values out of range, or addresses of the other family, raise ``ValueError``.
    """
    pseudo_header(src, dst, 0)  # same family, else ValueError
    _check_range("vrid", advert.vrid, 0, 255)
    _check_range("priority", advert.priority, 0, 255)
    _check_range("address count", len(advert.addresses), 0, 255)
    _check_range("max_advert_int", advert.max_advert_int, 0, MAX_ADVERT_INT_MAX)
    for address in advert.addresses:
        if address.version != src.version:
            raise ValueError(f"address {address} in an IPv{src.version} advert")
    body = struct.pack(
        "!BBBBHH",
        (VRRP_VERSION_3 << 4) | VRRP_TYPE_ADVERT,
        advert.vrid,
        advert.priority,
        len(advert.addresses),
        advert.max_advert_int,  # the 4 reserved bits zero (§5.2.7)
        0,
    ) + b"".join(a.packed for a in advert.addresses)
    csum = checksum_v3(src, _checksum_dst(src, dst, checksum, mcast_group), body)
    return body[:6] + struct.pack("!H", csum) + body[8:]


def build_datagram_v3(
    src: IPv4Address,
    dst: IPv4Address,
    advert: AdvertV3,
    *,
    ip_id: int = 0,
    checksum: V3Checksum = V3Checksum.RFC,
    mcast_group: IPv4Address = VRRP_MCAST_GROUP,
) -> bytes:
    """A whole IPv4 datagram carrying the VRRPv3 ``advert`` (IPv4 header as for v2)."""
    vrrp = encode_v3(advert, src, dst, checksum=checksum, mcast_group=mcast_group)
    header = _ip_header(src, dst, VRRP_PROTO, len(vrrp), ip_id)
    header[10:12] = struct.pack("!H", internet_checksum(bytes(header)))
    return bytes(header) + vrrp


def decode_v3(
    message: bytes | bytearray | memoryview,
    *,
    src: IPAddress,
    dst: IPAddress,
    ttl: int,
    checksum: V3Checksum = V3Checksum.RFC,
    mcast_group: IPv4Address = VRRP_MCAST_GROUP,
) -> ReceivedV3:
    """Structural checks of a VRRPv3 message as a socket delivers it.

    ``message`` is the VRRP part alone (what a raw IPv6 socket returns);
    ``src`` and ``dst`` are the datagram's addresses, both IPv4 or both IPv6
    (the checksum covers them), and ``ttl`` its TTL or hop limit.  Checks, in
    order: TTL/hop limit 255, version 3, type 1, exact length, checksum as
    ``checksum`` says (see ``V3Checksum``).  Raises ``PacketError``, or
    ``ValueError`` if ``src`` and ``dst`` differ in family.
    """
    message = bytes(message)  # also a bytearray or memoryview
    pseudo_header(src, dst, 0)  # same family, else ValueError
    if ttl != IP_TTL:
        raise PacketError("bad_ttl", f"{'TTL' if src.version == 4 else 'hop limit'} {ttl}")
    if len(message) < VRRP_HEADER_LEN:
        raise PacketError("truncated", f"VRRP message of {len(message)} bytes")
    version, vtype = message[0] >> 4, message[0] & 0x0F
    if version != VRRP_VERSION_3:
        raise PacketError("bad_version", f"version {version}, expected 3")  # §7.1
    if vtype != VRRP_TYPE_ADVERT:
        raise PacketError("bad_type", f"type {vtype}")  # §5.2.2
    vrid, priority, count, rsvd_int = struct.unpack_from("!BBBH", message, 1)
    size = 4 if src.version == 4 else 16
    want = VRRP_HEADER_LEN + size * count  # §5.2.5, §5.2.9
    if len(message) != want:
        too = "long" if len(message) > want else "short"
        raise PacketError(
            "bad_length",
            f"too {too}: {len(message)} bytes for {count} IPv{src.version} addresses, want {want}",
        )

    def verifies(pseudo_dst: IPAddress) -> bool:
        return internet_checksum(pseudo_header(src, pseudo_dst, want) + message) == 0

    pseudo_dst = _checksum_dst(src, dst, checksum, mcast_group)
    if not verifies(pseudo_dst):
        # keepalived's automatic fallback: only for unicast, only to the old form.
        fallback = checksum is V3Checksum.RFC_OR_OLD and src.version == 4 and dst != mcast_group
        if not (fallback and verifies(mcast_group)):
            raise PacketError("bad_checksum")  # §5.2.8, §7.1
        pseudo_dst = mcast_group
    old = pseudo_dst != dst
    addresses: tuple[IPAddress, ...]
    if size == 4:
        addresses = tuple(IPv4Address(message[i : i + 4]) for i in range(8, want, 4))
    else:
        addresses = tuple(IPv6Address(message[i : i + 16]) for i in range(8, want, 16))
    advert = AdvertV3(
        vrid=vrid,
        priority=priority,
        max_advert_int=rsvd_int & MAX_ADVERT_INT_MAX,  # reserved bits ignored (§5.2.7)
        addresses=addresses,
    )
    return ReceivedV3(src=src, dst=dst, ttl=ttl, advert=advert, old_checksum=old)


def parse_datagram_v3(
    datagram: bytes | bytearray | memoryview,
    *,
    checksum: V3Checksum = V3Checksum.RFC,
    mcast_group: IPv4Address = VRRP_MCAST_GROUP,
) -> ReceivedV3:
    """``decode_v3`` for a whole IPv4 datagram as a raw IPv4 socket returns it.

    The IPv4 checks are ``parse_datagram``'s (header, total length, no
    fragment, header checksum, TTL 255); an AH header is ``bad_protocol``,
    VRRPv3 having no authentication.
    """
    datagram = bytes(datagram)
    lay = _layout(datagram)
    if lay.vrrp_at != lay.ihl:
        raise PacketError("bad_protocol", "AH with VRRPv3")
    return decode_v3(
        datagram[lay.vrrp_at : lay.total],
        src=IPv4Address(datagram[12:16]),
        dst=IPv4Address(datagram[16:20]),
        ttl=datagram[8],
        checksum=checksum,
        mcast_group=mcast_group,
    )


def verify_v3(received: ReceivedV3, expect: ExpectationV3) -> None:
    """Per-instance checks of RFC 5798 §7.1: address count and list.  The caller has
    already matched the VRID.  The interval is not compared (§6.4.2: a Backup adopts
    the Master's), and, as with ``verify``, an address owner is not exempt."""
    mismatch = address_mismatch(received.advert.addresses, expect.addresses)
    if mismatch is not None:
        raise mismatch
