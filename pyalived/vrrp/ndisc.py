"""Unsolicited neighbour advertisements: the IPv6 counterpart of gratuitous ARP.

Theory of operation: pure builders, no I/O.  When an IPv6 instance becomes
master it announces each virtual IPv6 address with an unsolicited Neighbor
Advertisement (RFC 5798 §6.4.2: "for each IPv6 address associated with the
Virtual Router, send an unsolicited ND Neighbor Advertisement with the
Router Flag (R) set, the Solicited Flag (S) unset, the Override flag (O)
set, the target address set to the IPv6 address of the Virtual Router, and
the target link-layer address set to the Virtual Router MAC address"; the
message itself is RFC 4861 §4.4, unsolicited ones §7.2.6).  keepalived 2.2.7
(``ndisc.c``) sends them as whole Ethernet frames through a packet socket,
and ``build_na_frame`` returns the same frame:

* Ethernet: to 33:33:00:00:00:01 (RFC 2464 §7, the all-nodes group), from
  the sending interface's MAC (the VMAC's on a VMAC), type 0x86dd.
* IPv6 (RFC 8200): traffic class 0, flow label 0, next header 58 (ICMPv6),
  hop limit 255 (RFC 4861 §7.1.2 requires it of the receiver), to ff02::1
  and *from the virtual address itself* (captured from keepalived 2.2.7:
  not the interface's link-local address; RFC 4861 §7.2.6 allows any
  address of the sending interface).
* ICMPv6 type 136, code 0, the checksum over the RFC 8200 §8.1
  pseudo-header; flags: Override always, Router as keepalived sets it --
  when IPv6 forwarding is on for the interface (RFC 4861 §4.4: "the R-bit
  indicates that the sender is a router"), not unconditionally as RFC 5798
  says -- and Solicited never; the target is the VIP; one option, Target
  Link-Layer Address (type 2, length 1 = 8 bytes) carrying the same MAC.

The frame is 86 bytes.  ``na_message`` is the ICMPv6 message alone, for
tests and for a sender that lets the kernel build the IPv6 header.
"""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

from pyalived.vrrp.packet import internet_checksum

ETH_P_IPV6 = 0x86DD
ICMPV6_PROTO = 58
ND_NEIGHBOR_ADVERT = 136
ND_OPT_TARGET_LINKADDR = 2
NA_FLAG_ROUTER = 0x80000000
NA_FLAG_SOLICITED = 0x40000000
NA_FLAG_OVERRIDE = 0x20000000
HOP_LIMIT = 255
ALL_NODES = IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"  # RFC 2464 §7
NA_FRAME_LEN = 14 + 40 + 32


def _icmpv6_checksum(src: IPv6Address, dst: IPv6Address, message: bytes) -> int:
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(message), ICMPV6_PROTO)
    return internet_checksum(pseudo + message)


def na_message(src: IPv6Address, target: IPv6Address, mac: bytes, *, router: bool,
               dst: IPv6Address = ALL_NODES) -> bytes:
    """The ICMPv6 Neighbor Advertisement for ``target`` at ``mac``, checksummed for
    ``src`` -> ``dst``."""
    if len(mac) != 6:
        raise ValueError(f"a MAC address has 6 bytes, not {len(mac)}")
    flags = NA_FLAG_OVERRIDE | (NA_FLAG_ROUTER if router else 0)
    body = struct.pack("!BBHI", ND_NEIGHBOR_ADVERT, 0, 0, flags) + target.packed
    body += struct.pack("!BB", ND_OPT_TARGET_LINKADDR, 1) + mac
    csum = _icmpv6_checksum(src, dst, body)
    return body[:2] + struct.pack("!H", csum) + body[4:]


def build_na_frame(src_mac: bytes, target: IPv6Address, *, router: bool) -> bytes:
    """The Ethernet frame of an unsolicited NA announcing ``target`` at ``src_mac``,
    sent from ``target`` itself as keepalived does."""
    src = target
    icmp = na_message(src, target, src_mac, router=router)
    ethernet = ALL_NODES_MAC + src_mac + struct.pack("!H", ETH_P_IPV6)
    ipv6 = struct.pack("!IHBB", 6 << 28, len(icmp), ICMPV6_PROTO, HOP_LIMIT)
    return ethernet + ipv6 + src.packed + ALL_NODES.packed + icmp
