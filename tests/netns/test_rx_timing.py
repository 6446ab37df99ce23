"""Kernel receive timestamps on a real raw advert socket (``receive_timed``).

Two hosts on a namespace bridge: an advert read some time after it arrived
is reported with its arrival time, not with the time of the read; and the
plain ``receive`` still returns the bare datagram on a socket that asks for
timestamps.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
import trio

from pyalived.vrrp.net import open_advert_socket
from pyalived.vrrp.netlink import in_netns
from tests.netns._ns import NsLan, ns_lan

pytestmark = pytest.mark.netns
GROUP = IPv4Address("224.0.0.18")
PAYLOAD = bytes([0x21, 51, 100, 1, 0, 1, 0, 0]) + IPv4Address("198.18.7.100").packed


def datagram(src: str, dst: str, payload: bytes) -> bytes:
    """An IPv4 header (checksum left 0: the kernel fills it in for IP_HDRINCL) + payload."""
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(payload), 0, 0, 255, 112, 0,
                       IPv4Address(src).packed, IPv4Address(dst).packed) + payload


@pytest.fixture
def lan() -> Iterator[NsLan]:
    with ns_lan(2) as net:
        yield net


async def test_receive_timed_reports_the_arrival(lan: NsLan) -> None:
    with in_netns(lan.hosts[0]):
        tx = open_advert_socket("eth0")
    with in_netns(lan.hosts[1]):
        rx = open_advert_socket("eth0")
    try:
        # The kernel turns receive stamping on from a work queue after the first
        # socket asks for it; until then a datagram is stamped when it is read.
        # One datagram through first, and time for that work to run.
        tx.send(datagram(lan.ip(0), str(GROUP), PAYLOAD), GROUP)
        with trio.fail_after(10):
            await rx.receive()
        await trio.sleep(0.5)
        before = trio.current_time()
        tx.send(datagram(lan.ip(0), str(GROUP), PAYLOAD), GROUP)
        with trio.fail_after(10):
            await trio.lowlevel.wait_readable(rx.fileno())
        await trio.sleep(0.05)  # left in the socket buffer for a while
        read_after = trio.current_time()
        with trio.fail_after(10):
            got, at = await rx.receive_timed()
        assert got[20:] == PAYLOAD
        assert before <= at < read_after  # arrival, not read time
        tx.send(datagram(lan.ip(0), str(GROUP), PAYLOAD), GROUP)
        with trio.fail_after(10):
            plain = await rx.receive()
        assert plain[20:] == PAYLOAD
    finally:
        tx.close()
        rx.close()
