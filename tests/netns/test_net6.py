"""pyalived.vrrp.net6, IPv6 VIPs and neighbour advertisements on a real namespace LAN.

Two hosts on a bridge, each with its link-local address (and DAD on, as the
kernel has it by default):

* a VRRPv3 message sent by one ``RawAdvert6Socket`` from its link-local
  address arrives at the other's, multicast (ff02::12) and unicast, with the
  source, destination and hop limit (255) the decoder needs; it does not loop
  back to the sender; the kernel writes the checksum (IPV6_CHECKSUM): a
  message sent with a wrong one arrives corrected, and one sent wrong from a
  socket without IPV6_CHECKSUM is dropped by the receiving kernel;
* an IPv6 VIP added by ``AddressManager`` is usable at once (no
  "tentative": IFA_F_NODAD) and goes on removal;
* ``send_na`` frames arrive at a packet listener in the peer byte for byte
  as ``ndisc.build_na_frame``, with the R flag when the interface forwards.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv6Address, IPv6Interface

import pytest
import trio

from pyalived.config.model import VirtualIP
from pyalived.vrrp.ndisc import build_na_frame
from pyalived.vrrp.net import interface_info, open_garp_socket
from pyalived.vrrp.net6 import link_local, open_advert6_socket
from pyalived.vrrp.netlink import AddressManager, NetlinkThread, in_netns
from pyalived.vrrp.packet import AdvertV3, decode_v3, encode_v3
from tests.netns._ns import NsLan, ns_lan

pytestmark = pytest.mark.netns
GROUP6 = IPv6Address("ff02::12")
VIP6 = IPv6Address("fd00:198:18::100")


@pytest.fixture
def lan() -> Iterator[NsLan]:
    with ns_lan(2) as net:
        yield net


def wait_link_local(ns: str) -> IPv6Address:
    deadline = time.monotonic() + 15
    while True:
        with in_netns(ns):
            try:
                return link_local("eth0")
            except OSError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.05)


def message(src: IPv6Address, dst: IPv6Address, priority: int = 100) -> bytes:
    return encode_v3(AdvertV3(52, priority, 100, (VIP6,)), src, dst)


@pytest.mark.parametrize("unicast", [False, True])
async def test_ipv6_advert_between_hosts(lan: NsLan, unicast: bool) -> None:
    ll0, ll1 = wait_link_local(lan.hosts[0]), wait_link_local(lan.hosts[1])
    dst = ll1 if unicast else GROUP6
    with in_netns(lan.hosts[0]):
        tx = open_advert6_socket("eth0")
    with in_netns(lan.hosts[1]):
        rx = open_advert6_socket("eth0")
    try:
        sent = message(ll0, dst)
        with trio.fail_after(10):
            tx.send6(sent, ll0, dst)
            got = await rx.receive6()
        assert (got.message, got.src, got.dst, got.hop_limit) == (sent, ll0, dst, 255)
        decode_v3(got.message, src=got.src, dst=got.dst, ttl=got.hop_limit)
        # The kernel writes the checksum: a wrong one leaves corrected.
        wrong = sent[:6] + b"\x12\x34" + sent[8:]
        with trio.fail_after(10):
            tx.send6(wrong, ll0, dst)
            assert (await rx.receive6()).message == sent
        # multicast loop is off, and unicast to a peer does not come back either
        with trio.move_on_after(0.3):
            await tx.receive6()
            pytest.fail("the sender heard its own advert")
    finally:
        tx.close()
        rx.close()


async def test_ipv6_bad_checksum_is_dropped_by_the_kernel(lan: NsLan) -> None:
    ll0 = wait_link_local(lan.hosts[0])
    wait_link_local(lan.hosts[1])
    with in_netns(lan.hosts[0]):
        plain = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 112)  # no IPV6_CHECKSUM
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
        plain.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        index = socket.if_nametoindex("eth0")
    with in_netns(lan.hosts[1]):
        rx = open_advert6_socket("eth0")
    try:
        good = message(ll0, GROUP6)
        bad = good[:6] + bytes([good[6] ^ 0xFF, good[7]]) + good[8:]
        plain.sendto(bad, (str(GROUP6), 0, 0, index))
        with trio.move_on_after(0.5):
            await rx.receive6()
            pytest.fail("a datagram with a bad checksum was delivered")
        plain.sendto(good, (str(GROUP6), 0, 0, index))
        with trio.fail_after(10):
            assert (await rx.receive6()).message == good
    finally:
        plain.close()
        rx.close()


@pytest.fixture
async def thread(lan: NsLan) -> AsyncIterator[NetlinkThread]:
    t = NetlinkThread(netns=lan.hosts[0])
    try:
        yield t
    finally:
        t.close()


async def test_ipv6_vip_is_usable_at_once(lan: NsLan, thread: NetlinkThread) -> None:
    wait_link_local(lan.hosts[0])
    mgr = AddressManager(thread)
    vip = VirtualIP(IPv6Interface(f"{VIP6}/64"))
    await mgr.add("eth0", [vip])
    out = lan.run(lan.hosts[0], "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope",
                  "global")
    (line,) = out.splitlines()
    assert f"{VIP6}/64" in line and "tentative" not in line and "nodad" in line
    await mgr.add("eth0", [vip])  # idempotent
    await mgr.remove("eth0", [vip])
    assert str(VIP6) not in lan.run(lan.hosts[0], "ip", "-6", "addr", "show", "dev", "eth0")


@pytest.mark.parametrize("forwarding", [False, True])
async def test_na_frames_reach_peer(lan: NsLan, forwarding: bool) -> None:
    if forwarding:
        lan.run(lan.hosts[0], "sysctl", "-qw", "net.ipv6.conf.eth0.forwarding=1")
    with in_netns(lan.hosts[1]):
        listener = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
    try:
        listener.bind(("eth0", 0))
        listener.settimeout(10)
        with in_netns(lan.hosts[0]):  # (the sysctl is read in the sender's namespace)
            na = open_garp_socket("eth0")
            mac = interface_info("eth0").mac
            try:
                na.send_na([VIP6], 2)
            finally:
                na.close()
        want = build_na_frame(mac, VIP6, router=forwarding)
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            frame = listener.recv(2048)
            if frame[20] == 58 and frame[54] == 136 and frame[62:78] == VIP6.packed:
                got.append(frame[:86])
        assert got == [want, want]
        assert (want[58] & 0x80 != 0) is forwarding  # R flag
    finally:
        listener.close()
