"""Raw sockets for VRRP: advertisements and gratuitous ARP.

Theory of operation: ``open_advert_socket`` returns a raw IPv4 socket on
protocol 112 (VRRP, RFC 3768 §5.2.4) or 51 (AH, RFC 2338 §5.3.6.3) bound to
one interface with SO_BINDTODEVICE.  We build whole datagrams ourselves
(IP_HDRINCL), so the TTL of 255 required by RFC 3768 §5.2.3 is whatever the
codec wrote; IP_MULTICAST_TTL is set to 255 as well for good measure.  For
multicast the socket joins 224.0.0.18 (RFC 3768 §5.2.2) on that interface
only (ip_mreqn with the ifindex), sends through it (IP_MULTICAST_IF) and does
not loop its own adverts back (IP_MULTICAST_LOOP off).  Raw sockets deliver
the whole IPv4 datagram, header included, which is what ``receive`` returns.
The socket also asks for the kernel's receive timestamps (SO_TIMESTAMPNS):
``receive_timed`` returns each datagram with its arrival time converted to
trio's clock, so that a backup's Master_Down timer (RFC 3768 §6.4.2) runs
from the advert's arrival, not from when the event loop got to it.  The
kernel stamps with CLOCK_REALTIME; the datagram's age (wall clock now minus
the stamp) is taken from trio's clock, and bounded by ``MAX_RX_AGE`` so that
a step of the wall clock cannot move an arrival by more than that.  The
kernel switches its receive stamping on from a work queue once the first
socket asks, so the first datagrams after start-up may carry the time they
were read instead (a later arrival, never an earlier one).

``send`` is on the failover critical path (the gratuitous ARPs must follow the
first advert within a millisecond), so it is synchronous: the socket is
non-blocking and the datagram goes straight to ``sendto``.  Only when the
kernel's send buffer is full (EAGAIN) does it wait, by ``poll`` for at most
``SEND_RETRY_WAIT`` seconds, and try once more; if the buffer is still full
the datagram is dropped with ``BlockingIOError`` (an ``OSError``) -- VRRP
tolerates a lost advert, a stalled event loop it does not.

``open_garp_socket`` returns an AF_PACKET socket bound to the interface; it
reads the interface's MAC once, from the bound socket's own address (or takes
the VMAC's MAC given explicitly), so that opening it costs one file
descriptor and nothing else, and sends complete Ethernet frames from
``pyalived.vrrp.garp`` (RFC 3768 §6.4.1), with the same synchronous,
non-blocking discipline.  Its failures are plain ``OSError``s; when the
errno says the process is out of resources (``pyalived.limits``) the
instance logs an internal error and tries the burst again.
The same socket sends the unsolicited neighbour advertisements of IPv6 VIPs
(``send_na``, frames from ``pyalived.vrrp.ndisc``, RFC 5798 §6.4.2); whether
the interface forwards IPv6 (the NA's R flag) is read at each burst.
``interface_info`` gives the index, MAC and primary IPv4 address (the first
one the kernel lists, as keepalived picks it) of an interface.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import trio

from pyalived.vrrp.garp import build_garp_frame
from pyalived.vrrp.ndisc import build_na_frame
from pyalived.vrrp.netlink import ipv4_addresses

VRRP_PROTO = 112
AH_PROTO = 51
VRRP_GROUP = IPv4Address("224.0.0.18")
SEND_RETRY_WAIT = 0.002  # seconds to wait for buffer space before dropping a frame
RCVBUF = 1 << 20
# SO_TIMESTAMPNS (Linux, asm-generic and x86: 35; Python 3.11 lacks the name);
# its control message type SCM_TIMESTAMPNS has the same value.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_ANCBUF = socket.CMSG_SPACE(_TIMESPEC.size)
MAX_RX_AGE = 0.1  # seconds: a datagram older than this is taken as this old

SIOCGIFHWADDR = 0x8927
_IFREQ = struct.Struct("16sH6s")


@dataclass(frozen=True)
class InterfaceInfo:
    index: int
    name: str
    mac: bytes
    primary_ip: IPv4Address | None


def interface_mac(ifname: str) -> bytes:
    """The hardware address of ``ifname`` (SIOCGIFHWADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16s18x", ifname.encode())
        res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)
    _name, _family, mac = _IFREQ.unpack_from(res)
    return bytes(mac)


def interface_info(ifname: str) -> InterfaceInfo:
    """Index, MAC and primary IPv4 address of ``ifname``; ``OSError`` if it does not exist."""
    index = socket.if_nametoindex(ifname)
    addresses = ipv4_addresses(index)
    return InterfaceInfo(index, ifname, interface_mac(ifname),
                         addresses[0] if addresses else None)


def _send_nonblocking(sock: socket.socket, send: Callable[[], object]) -> None:
    try:
        send()
        return
    except BlockingIOError:
        pass
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    if not poller.poll(SEND_RETRY_WAIT * 1000):
        raise BlockingIOError(errno.EAGAIN, "send buffer full, datagram dropped")
    send()


class RawAdvertSocket:
    """``ports.AdvertSocket`` over a raw IPv4 socket (see the module docstring)."""

    def __init__(self, sock: socket.socket, ifname: str) -> None:
        self.ifname = ifname
        self._raw = sock
        self._trio = trio.socket.from_stdlib_socket(sock)

    def send(self, datagram: bytes, dst: IPv4Address) -> None:
        _send_nonblocking(self._raw, functools.partial(self._raw.sendto, datagram, (str(dst), 0)))

    async def receive(self) -> bytes:
        return await self._trio.recv(1 << 16)

    async def receive_timed(self) -> tuple[bytes, float]:
        """The next datagram and its arrival time on trio's clock (see the module docstring)."""
        data, ancdata, _flags, _addr = await self._trio.recvmsg(1 << 16, _ANCBUF)
        now = trio.current_time()
        return data, now - arrival_age(ancdata, time.time())

    def close(self) -> None:
        self._trio.close()

    def fileno(self) -> int:
        return self._raw.fileno()


def arrival_age(ancdata: Sequence[tuple[int, int, bytes]], wall_now: float) -> float:
    """Seconds since the kernel stamped the datagram (0 without a stamp), within
    [0, ``MAX_RX_AGE``]."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            stamp = float(sec) + float(nsec) * 1e-9
            return min(max(wall_now - stamp, 0.0), MAX_RX_AGE)
    return 0.0


def open_advert_socket(
    ifname: str,
    *,
    proto: int = VRRP_PROTO,
    multicast_group: IPv4Address | None = VRRP_GROUP,
) -> RawAdvertSocket:
    """A raw socket for adverts on ``ifname``; ``multicast_group=None`` for unicast peers."""
    index = socket.if_nametoindex(ifname)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if multicast_group is not None:
            mreqn = struct.pack("4s4si", multicast_group.packed, bytes(4), index)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                            struct.pack("4s4si", bytes(4), bytes(4), index))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return RawAdvertSocket(sock, ifname)


class PacketGarpSocket:
    """``ports.GarpSocket`` over an AF_PACKET socket bound to one interface."""

    def __init__(self, sock: socket.socket, ifname: str, mac: bytes) -> None:
        self.ifname = ifname
        self.mac = mac
        self._sock = sock

    def send_garp(self, ips: Sequence[IPv4Address], count: int) -> None:
        for ip in ips:
            frame = build_garp_frame(self.mac, ip)
            send = functools.partial(self._sock.send, frame)
            for _ in range(count):
                _send_nonblocking(self._sock, send)

    def send_na(self, ips: Sequence[IPv6Address], count: int) -> None:
        """Unsolicited neighbour advertisements for ``ips`` (``pyalived.vrrp.ndisc``),
        the R flag as the interface's IPv6 forwarding says."""
        router = ipv6_forwarding(self.ifname)
        for ip in ips:
            frame = build_na_frame(self.mac, ip, router=router)
            send = functools.partial(self._sock.send, frame)
            for _ in range(count):
                _send_nonblocking(self._sock, send)

    def close(self) -> None:
        self._sock.close()


def ipv6_forwarding(ifname: str) -> bool:
    """Whether IPv6 forwarding is on for ``ifname`` (keepalived then sets the NA's R flag)."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/forwarding") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def open_garp_socket(ifname: str, mac: bytes | None = None) -> PacketGarpSocket:
    """An ARP sender on ``ifname`` whose frames carry ``mac`` (default: the interface's)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    try:
        # Protocol 0 at creation and bind: a send-only socket that receives nothing.
        sock.bind((ifname, 0))
        sock.setblocking(False)
        if mac is None:
            # (ifname, proto, pkttype, hatype, address): the interface's MAC, no
            # second socket needed.
            address = bytes(sock.getsockname()[4])
            mac = address if len(address) == 6 else interface_mac(ifname)
    except OSError:
        sock.close()
        raise
    return PacketGarpSocket(sock, ifname, mac)
