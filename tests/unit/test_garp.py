"""Gratuitous ARP frame and virtual MAC builders."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from pyalived.vrrp.garp import build_garp_frame, format_mac, vmac_address

MAC = bytes.fromhex("62d7fdeb35d5")

# fmt: off
# Hand-assembled from RFC 826 and RFC 3768 §6.4.1 for 198.18.0.100.
GARP = bytes.fromhex(
    "ffffffffffff"  # Ethernet destination: broadcast
    "62d7fdeb35d5"  # Ethernet source
    "0806"          # EtherType ARP
    "0001"          # hardware type Ethernet
    "0800"          # protocol type IPv4
    "06" "04"       # address lengths
    "0001"          # opcode 1: request
    "62d7fdeb35d5"  # sender hardware address
    "c6120064"      # sender protocol address: the VIP
    "ffffffffffff"  # target hardware address: broadcast, as keepalived
    "c6120064"      # target protocol address: the VIP again
)
# fmt: on


def test_garp_frame_bytes() -> None:
    assert build_garp_frame(MAC, IPv4Address("198.18.0.100")) == GARP
    assert len(GARP) == 42


def test_garp_frame_with_vmac_sender() -> None:
    vmac = vmac_address(51)
    frame = build_garp_frame(vmac, IPv4Address("198.18.0.101"))
    assert frame[6:12] == vmac
    assert frame[22:28] == vmac
    assert frame[28:32] == frame[38:42] == IPv4Address("198.18.0.101").packed


def test_garp_rejects_bad_mac() -> None:
    with pytest.raises(ValueError):
        build_garp_frame(b"\x00" * 5, IPv4Address("198.18.0.100"))


def test_vmac_address() -> None:
    assert vmac_address(1) == bytes.fromhex("00005e000101")
    assert vmac_address(255) == bytes.fromhex("00005e0001ff")
    assert format_mac(vmac_address(51)) == "00:00:5e:00:01:33"


@pytest.mark.parametrize("vrid", [0, 256, -1])
def test_vmac_rejects_bad_vrid(vrid: int) -> None:
    with pytest.raises(ValueError):
        vmac_address(vrid)
