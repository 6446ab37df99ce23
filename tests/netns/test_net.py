"""pyalived.vrrp.net on a real namespace LAN: raw advert sockets and GARP.

Two hosts on a bridge: an advert datagram sent by one ``AdvertSocket``
arrives whole (IP header included) at the other's, multicast and unicast,
with the TTL the sender wrote (IP_HDRINCL honoured) and without looping back
to the sender; gratuitous ARP frames arrive at an AF_PACKET listener in the
peer namespace byte for byte as built by hand here.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
import trio

from pyalived.vrrp.net import interface_info, open_advert_socket, open_garp_socket
from pyalived.vrrp.netlink import in_netns
from pyalived.vrrp.packet import internet_checksum
from tests.netns._ns import NsLan, ns_lan

pytestmark = pytest.mark.netns
GROUP = IPv4Address("224.0.0.18")


@pytest.fixture
def lan() -> Iterator[NsLan]:
    with ns_lan(2) as net:
        yield net


def datagram(src: str, dst: str, payload: bytes, ttl: int = 255, proto: int = 112) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(payload), 0, 0, ttl, proto, 0,
                      IPv4Address(src).packed, IPv4Address(dst).packed)
    hdr = hdr[:10] + struct.pack("!H", internet_checksum(hdr)) + hdr[12:]
    return hdr + payload


PAYLOAD = bytes([0x21, 51, 100, 1, 0, 1, 0, 0]) + IPv4Address("198.18.7.100").packed


async def test_interface_info(lan: NsLan) -> None:
    with in_netns(lan.hosts[0]):
        info = interface_info("eth0")
        lo = interface_info("lo")
    mac = lan.run(lan.hosts[0], "cat", "/sys/class/net/eth0/address").strip()
    assert info.mac == bytes.fromhex(mac.replace(":", ""))
    assert info.primary_ip == IPv4Address(lan.ip(0))
    assert info.index == int(lan.run(lan.hosts[0], "cat", "/sys/class/net/eth0/ifindex"))
    assert lo.primary_ip == IPv4Address("127.0.0.1")
    # a second address on the same subnet is secondary: the primary stays first
    lan.run(lan.hosts[0], "ip", "addr", "add", "198.18.7.200/24", "dev", "eth0")
    with in_netns(lan.hosts[0]):
        assert interface_info("eth0").primary_ip == IPv4Address(lan.ip(0))
        with pytest.raises(OSError):
            interface_info("nosuchif0")


@pytest.mark.parametrize("unicast", [False, True])
async def test_advert_between_hosts(lan: NsLan, unicast: bool) -> None:
    group = None if unicast else GROUP
    dst = lan.ip(1) if unicast else str(GROUP)
    with in_netns(lan.hosts[0]):
        tx = open_advert_socket("eth0", multicast_group=group)
    with in_netns(lan.hosts[1]):
        rx = open_advert_socket("eth0", multicast_group=group)
    try:
        sent = datagram(lan.ip(0), dst, PAYLOAD, ttl=255)
        with trio.fail_after(10):
            tx.send(sent, IPv4Address(dst))
            got = await rx.receive()
        # whole datagram; the kernel fills in only the IP id (ours was 0)
        assert got[20:] == PAYLOAD
        assert got[8] == 255  # TTL as written (RFC 3768 §5.2.3)
        assert got[9] == 112
        assert got[12:16] == IPv4Address(lan.ip(0)).packed
        assert got[16:20] == IPv4Address(dst).packed
        # IP_HDRINCL honoured: a different TTL goes out unchanged too
        tx.send(datagram(lan.ip(0), dst, PAYLOAD, ttl=7), IPv4Address(dst))
        with trio.fail_after(10):
            assert (await rx.receive())[8] == 7
        # multicast loop is off, and unicast to a peer does not come back either
        with trio.move_on_after(0.3):
            await tx.receive()
            pytest.fail("the sender heard its own advert")
    finally:
        tx.close()
        rx.close()


async def test_ah_protocol_socket(lan: NsLan) -> None:
    with in_netns(lan.hosts[0]):
        tx = open_advert_socket("eth0", proto=51)
    with in_netns(lan.hosts[1]):
        rx = open_advert_socket("eth0", proto=51)
        rx112 = open_advert_socket("eth0")
    try:
        tx.send(datagram(lan.ip(0), str(GROUP), PAYLOAD, proto=51), GROUP)
        with trio.fail_after(10):
            got = await rx.receive()
        assert got[9] == 51
        with trio.move_on_after(0.3):
            await rx112.receive()
            pytest.fail("a VRRP socket received an AH datagram")
    finally:
        for s in (tx, rx, rx112):
            s.close()


def expected_garp(mac: bytes, ip: IPv4Address) -> bytes:
    bcast = b"\xff" * 6
    return (bcast + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
            + mac + ip.packed + bcast + ip.packed)


async def test_garp_frames_reach_peer(lan: NsLan) -> None:
    vips = [IPv4Address("198.18.7.100"), IPv4Address("198.18.7.101")]
    with in_netns(lan.hosts[1]):
        listener = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    listener.bind(("eth0", 0))
    listener.settimeout(10)
    with in_netns(lan.hosts[0]):
        garp = open_garp_socket("eth0")
        mac = interface_info("eth0").mac
    vmac = bytes.fromhex("00005e000133")
    with in_netns(lan.hosts[0]):
        vgarp = open_garp_socket("eth0", mac=vmac)
    try:
        assert garp.mac == mac
        garp.send_garp(vips, 3)
        frames = [listener.recv(2048) for _ in range(6)]
        assert frames == [expected_garp(mac, vips[0])] * 3 + [expected_garp(mac, vips[1])] * 3
        vgarp.send_garp(vips[:1], 1)
        assert listener.recv(2048) == expected_garp(vmac, vips[0])
    finally:
        listener.close()
        garp.close()
        vgarp.close()
