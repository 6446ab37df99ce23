"""VRRPv2 packet codec (RFC 3768 §5) with the IPv4 header and IPsec AH.

Theory of operation: pure functions between bytes and frozen dataclasses.
``build_datagram`` produces a whole IPv4 datagram (sent with IP_HDRINCL, as
keepalived does), ``parse_datagram`` takes a whole received IPv4 datagram
(as a raw socket returns it) and ``verify`` applies the per-instance
reception checks of RFC 3768 §7.1.  Every failure raises ``PacketError``
whose ``reason`` is a short stable identifier used as a metric label; the
complete set of reasons is ``DROP_REASONS``.  Nothing here keeps state: the
AH replay check needs the last accepted sequence number, so it is the
separate helper ``check_ah_sequence`` whose result an ``AhReplayGuard``
(``pyalived.vrrp.ah_replay``) stores.

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
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from pyalived.config.model import AuthType

VRRP_PROTO = 112
AH_PROTO = 51
VRRP_MCAST_GROUP = IPv4Address("224.0.0.18")

VRRP_VERSION = 2
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
    "bad_protocol",  # neither VRRP (112) nor AH (51)
    "bad_ttl",  # TTL is not 255 (§7.1)
    "bad_ah_header",  # AH not carrying VRRP, or an ICV size other than 96 bits
    "bad_version",  # VRRP version is not 2 (§7.1)
    "bad_type",  # VRRP type is not 1 = ADVERTISEMENT (§5.3.2)
    "bad_length",  # VRRP length is not 8 + 4 * count + 8, or bytes past the total length
    "bad_checksum",  # VRRP checksum does not verify (§5.3.8, §7.1)
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
    checked here; see ``check_ah_sequence``.
    """
    advert = received.advert
    _verify_auth(received, expect, bytes(datagram))
    if len(advert.addresses) != len(expect.addresses):
        raise PacketError(
            "addr_count_mismatch",
            f"{len(advert.addresses)} addresses, expected {len(expect.addresses)}",
        )
    if frozenset(advert.addresses) != expect.addresses:
        missing = sorted(expect.addresses - frozenset(advert.addresses))
        raise PacketError("addr_list_mismatch", f"missing {', '.join(map(str, missing))}")
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
