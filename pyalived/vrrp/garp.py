"""Gratuitous ARP frames and the VRRP virtual MAC address.

Theory of operation: pure builders, no I/O.  When an instance becomes master
it announces each virtual IPv4 address with a gratuitous ARP (RFC 3768 §6.4.1,
"broadcast a gratuitous ARP request containing the virtual router MAC address
for each IP address").  ``build_garp_frame`` returns the whole Ethernet frame
exactly as keepalived 2.2.7 puts it on the wire (checked in captures): an ARP
*request* (opcode 1) to the Ethernet broadcast address, whose sender and
target protocol addresses are both the virtual address, whose sender hardware
address is the sending interface's MAC and whose target hardware address is
ff:ff:ff:ff:ff:ff.  The frame is 42 bytes; the driver pads it if needed.
``vmac_address`` is the virtual router MAC of RFC 3768 §7.3.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

BROADCAST_MAC = b"\xff" * 6
ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARP_HRD_ETHER = 1
ARP_OP_REQUEST = 1
VMAC_PREFIX = b"\x00\x00\x5e\x00\x01"  # IANA OUI + VRRP IPv4 block, RFC 3768 §7.3


def build_garp_frame(src_mac: bytes, ip: IPv4Address) -> bytes:
    """The Ethernet frame of a gratuitous ARP request announcing ``ip`` at ``src_mac``."""
    if len(src_mac) != 6:
        raise ValueError(f"a MAC address has 6 bytes, not {len(src_mac)}")
    ethernet = BROADCAST_MAC + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", ARP_HRD_ETHER, ETH_P_IP, 6, 4, ARP_OP_REQUEST)
    arp += src_mac + ip.packed + BROADCAST_MAC + ip.packed
    return ethernet + arp


def vmac_address(vrid: int) -> bytes:
    """The virtual router MAC 00:00:5e:00:01:VRID (RFC 3768 §7.3)."""
    if not 1 <= vrid <= 255:
        raise ValueError(f"VRID {vrid} is outside 1..255")
    return VMAC_PREFIX + bytes([vrid])


def format_mac(mac: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff`` notation."""
    return ":".join(f"{b:02x}" for b in mac)
