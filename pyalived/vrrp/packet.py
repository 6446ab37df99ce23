"""VRRPv2 packet codec (RFC 3768 §5) with the IPv4 header and IPsec AH.

CONTRACT STUB: the public names and signatures below are fixed; the bodies
are to be implemented.  The I/O layer depends on exactly this interface.

Theory of operation: pure functions between bytes and frozen dataclasses.
``build_datagram`` produces a whole IPv4 datagram (sent with IP_HDRINCL, as
keepalived does), ``parse_datagram`` takes a whole received IPv4 datagram
(as a raw socket returns it) and ``verify`` applies the per-instance
reception checks of RFC 3768 §7.1.  Every failure raises ``PacketError``
whose ``reason`` is a short stable identifier used as a metric label.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from pyalived.config.model import AuthType

VRRP_PROTO = 112
AH_PROTO = 51
VRRP_MCAST_GROUP = IPv4Address("224.0.0.18")


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
    raise NotImplementedError


def parse_datagram(datagram: bytes) -> Received:
    """Structural checks: IPv4 header, TTL 255, optional AH, version 2, type 1, checksum."""
    raise NotImplementedError


def verify(received: Received, expect: Expectation, datagram: bytes) -> None:
    """Per-instance checks of §7.1: auth (incl. the AH ICV over ``datagram``), address
    count and list, advert interval.  The caller has already matched the VRID."""
    raise NotImplementedError
