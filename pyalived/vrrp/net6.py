"""Raw IPv6 sockets for VRRPv3 adverts (RFC 5798 over IPv6), and the link-local source.

Theory of operation: ``open_advert6_socket`` returns a raw AF_INET6 socket on
protocol 112 bound to one interface (SO_BINDTODEVICE).  Unlike IPv4 there is
no IP_HDRINCL: the kernel writes the IPv6 header, so the socket carries what
keepalived 2.2.7 sets on its own (``vrrp.c``, ``vrrp_scheduler.c``), and so
the wire is the same:

* hop limit 255 for multicast and unicast alike (IPV6_MULTICAST_HOPS,
  IPV6_UNICAST_HOPS; RFC 5798 §5.1.2.3);
* traffic class 0xc0 (IPV6_TCLASS), as keepalived's IPv4 TOS;
* the checksum computed by the kernel (IPV6_CHECKSUM with offset 6, RFC 5798
  §5.2.8, RFC 3542 §3.1): it fills in the pseudo-header checksum of RFC
  8200 §8.1 on sending and drops received datagrams whose checksum fails.
  ``packet.encode_v3`` already writes that same value, which the kernel
  replaces with itself; ``packet.decode_v3`` checks it again;
* for multicast, membership of the group (``vrrp_mcast_group6``, ff02::12 by
  default, RFC 5798 §5.1.2.2) on that interface only (IPV6_JOIN_GROUP), the
  interface as the multicast output (IPV6_MULTICAST_IF) and no loopback of
  our own adverts (IPV6_MULTICAST_LOOP off).

The source address of each advert is given per datagram (an IPV6_PKTINFO
control message with the interface index): the interface's link-local
address, as keepalived sends (RFC 5798 §5.1.2.1: "the IPv6 link-local
address of the interface over which the packet is transmitted"), or
``unicast_src_ip``.  Binding the socket to it instead would filter out what
arrives for the group.

Reception asks for IPV6_RECVPKTINFO and IPV6_RECVHOPLIMIT: a raw IPv6
socket returns the VRRP message alone, and ``receive6`` returns it with the
source, the destination and the hop limit the decoder needs (RFC 5798 §7.1
requires 255), plus the arrival time from SO_TIMESTAMPNS on trio's clock, as
``pyalived.vrrp.net`` does for IPv4.  Sending is synchronous and
non-blocking with the same bounded wait on a full buffer (``net``).

``NetSockets6`` is the production ``ports.SocketFactory6``: these sockets,
and the link-local address (``netlink.ipv6_link_local``).
"""

from __future__ import annotations

import functools
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import cast

import trio

from pyalived.vrrp.net import RCVBUF, SO_TIMESTAMPNS, _send_nonblocking, arrival_age
from pyalived.vrrp.netlink import ipv6_link_local

VRRP_PROTO = 112
VRRP_GROUP6 = IPv6Address("ff02::12")
TRAFFIC_CLASS = 0xC0
HOP_LIMIT = 255
CHECKSUM_OFFSET = 6  # of the VRRP checksum in the message (RFC 5798 §5.1.1)

# Python 3.11 lacks some names; Linux values (linux/in6.h).
IPV6_CHECKSUM = getattr(socket, "IPV6_CHECKSUM", 7)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
_PKTINFO = struct.Struct("@16sI")  # struct in6_pktinfo
_ANCBUF = (socket.CMSG_SPACE(_PKTINFO.size) + socket.CMSG_SPACE(4)
           + socket.CMSG_SPACE(16) + 64)


@dataclass(frozen=True)
class Datagram6:
    """A VRRP message as a raw IPv6 socket delivers it, with what the decoder needs."""

    message: bytes
    src: IPv6Address
    dst: IPv6Address
    hop_limit: int
    at: float  # arrival time on trio's clock


def parse_ancillary(ancdata: Sequence[tuple[int, int, bytes]]) -> tuple[IPv6Address | None, int]:
    """(destination, hop limit) from IPV6_PKTINFO and IPV6_HOPLIMIT (hop limit -1 if absent)."""
    dst: IPv6Address | None = None
    hop = -1
    for level, kind, data in ancdata:
        if level != socket.IPPROTO_IPV6:
            continue
        if kind == IPV6_PKTINFO and len(data) >= _PKTINFO.size:
            dst = IPv6Address(_PKTINFO.unpack_from(data)[0])
        elif kind == IPV6_HOPLIMIT and len(data) >= 4:
            hop = struct.unpack_from("@i", data)[0]
    return dst, hop


class RawAdvert6Socket:
    """``ports.Advert6Socket`` over a raw IPv6 socket (see the module docstring)."""

    def __init__(self, sock: socket.socket, ifname: str, index: int) -> None:
        self.ifname = ifname
        self.index = index
        self._raw = sock
        self._trio = trio.socket.from_stdlib_socket(sock)

    def send6(self, message: bytes, src: IPv6Address, dst: IPv6Address) -> None:
        pktinfo = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, _PKTINFO.pack(src.packed, self.index))]
        scope = self.index if dst.is_link_local or dst.is_multicast else 0
        send = functools.partial(
            self._raw.sendmsg, [message], pktinfo, 0, (str(dst), 0, 0, scope)
        )
        _send_nonblocking(self._raw, send)

    async def receive6(self) -> Datagram6:
        while True:
            data, ancdata, _flags, addr = await self._trio.recvmsg(1 << 16, _ANCBUF)
            now = trio.current_time()
            dst, hop = parse_ancillary(ancdata)
            if dst is None:
                continue  # cannot be checked without its destination
            host = cast(tuple[str, int, int, int], addr)[0]
            src = IPv6Address(host.split("%", 1)[0])
            return Datagram6(bytes(data), src, dst, hop, now - arrival_age(ancdata, time.time()))

    def close(self) -> None:
        self._trio.close()

    def fileno(self) -> int:
        return self._raw.fileno()


def open_advert6_socket(
    ifname: str, *, multicast_group: IPv6Address | None = VRRP_GROUP6
) -> RawAdvert6Socket:
    """A raw IPv6 socket for VRRP on ``ifname``; ``multicast_group=None``: unicast only."""
    index = socket.if_nametoindex(ifname)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW | socket.SOCK_CLOEXEC, VRRP_PROTO)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, CHECKSUM_OFFSET)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS, TRAFFIC_CLASS)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, HOP_LIMIT)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, HOP_LIMIT)
        if multicast_group is not None:
            mreq = struct.pack("@16sI", multicast_group.packed, index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return RawAdvert6Socket(sock, ifname, index)


def link_local(ifname: str) -> IPv6Address:
    """The usable link-local address of ``ifname``; ``OSError`` if it has none (yet)."""
    addr = ipv6_link_local(socket.if_nametoindex(ifname))
    if addr is None:
        raise OSError(f"interface {ifname} has no usable IPv6 link-local address")
    return addr


class NetSockets6:
    """``ports.SocketFactory6`` over the sockets above."""

    def __init__(self, multicast_group: IPv6Address = VRRP_GROUP6) -> None:
        self._group = multicast_group

    def open_advert6(self, ifname: str) -> RawAdvert6Socket:
        return open_advert6_socket(ifname, multicast_group=self._group)

    def link_local(self, ifname: str) -> IPv6Address:
        return link_local(ifname)
