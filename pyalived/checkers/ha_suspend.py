"""ha_suspend: a virtual server's checkers rest while its address is not on this host.

Theory of operation: keepalived 2.2.7's ``ha_suspend`` watches the host's
addresses (rtnetlink RTM_NEWADDR / RTM_DELADDR) in its checker process; a
virtual server with ``ha_suspend`` whose address is on no interface has its
checkers suspended: they keep their last verdict and do not probe, and they
resume when the address appears on any interface (a VRRP instance becoming
MASTER adds it) and go on from there.  The IPVS service itself stays as it
is, whatever the address does (keepalived does not touch it either).
Only a virtual server given by address has an address to watch; ``ha_suspend``
is dropped for fwmark services by the parser, as keepalived drops it.

``LocalAddresses`` is the pure part: the host's addresses as a set of
(address, interface index) pairs fed with decoded messages; an address is
local while any interface holds it (keepalived counts the same address on
several interfaces the same way).  ``AddressWatcher`` is the I/O part: one
non-blocking rtnetlink socket subscribed to the IPv4 and IPv6 address
groups, whose initial dump and later notifications arrive in one ordered
stream; each change of an address's presence goes to ``on_change``.  If the
socket's buffer overflows (ENOBUFS) the whole set is read again and the
differences reported.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

import trio

log = logging.getLogger("pyalived.lvs.ha_suspend")

IPAddress = IPv4Address | IPv6Address
AddressCallback = Callable[[IPAddress, bool], None]  # (address, now on some interface)

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x10, 0x100
IFA_ADDRESS, IFA_LOCAL = 1, 2

_NLMSGHDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def decode(buf: bytes) -> Iterator[tuple[int, int, int, IPAddress | None]]:
    """(message type, sequence number, interface index, address or None) of each
    message in ``buf``; an address message's address is IFA_LOCAL, else IFA_ADDRESS.
    An error reply raises ``OSError``."""
    off = 0
    while off + _NLMSGHDR.size <= len(buf):
        length, mtype, _flags, seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < _NLMSGHDR.size:
            return
        body = buf[off + _NLMSGHDR.size: off + length]
        off += (length + 3) & ~3
        if mtype in (RTM_NEWADDR, RTM_DELADDR) and len(body) >= _IFADDRMSG.size:
            index = _IFADDRMSG.unpack_from(body)[4]
            attrs: dict[int, bytes] = {}
            a = _IFADDRMSG.size
            while a + _RTATTR.size <= len(body):
                alen, atype = _RTATTR.unpack_from(body, a)
                if alen < _RTATTR.size:
                    break
                attrs.setdefault(atype & 0x3FFF, body[a + _RTATTR.size: a + alen])
                a += (alen + 3) & ~3
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            addr = ip_address(raw) if raw is not None and len(raw) in (4, 16) else None
            yield mtype, seq, index, addr
            continue
        if mtype == NLMSG_ERROR and len(body) >= 4:
            (code,) = struct.unpack_from("=i", body)
            if code < 0:
                raise OSError(-code, f"address dump: {os.strerror(-code)}")
        yield mtype, seq, 0, None


def dump_request(seq: int) -> bytes:
    body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETADDR,
                          NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


class LocalAddresses:
    """The host's addresses as (address, interface index) pairs (pure)."""

    def __init__(self) -> None:
        self._held: dict[IPAddress, set[int]] = {}

    def __contains__(self, addr: object) -> bool:
        return addr in self._held

    def add(self, addr: IPAddress, index: int) -> bool:
        """Record it; True if the address was on no interface before."""
        held = self._held.setdefault(addr, set())
        new = not held
        held.add(index)
        return new

    def remove(self, addr: IPAddress, index: int) -> bool:
        """Forget it; True if the address is now on no interface."""
        held = self._held.get(addr)
        if held is None:
            return False
        held.discard(index)
        if held:
            return False
        del self._held[addr]
        return True

    def forget(self, addr: IPAddress) -> None:
        self._held.pop(addr, None)

    def addresses(self) -> set[IPAddress]:
        return set(self._held)


class AddressWatcher:
    """Follows the host's addresses; see the module docstring."""

    def __init__(self, on_change: AddressCallback) -> None:
        self._on_change = on_change
        self.local = LocalAddresses()

    def _open(self) -> trio.socket.SocketType:
        raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                            socket.NETLINK_ROUTE)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            raw.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
            raw.setblocking(False)
        except OSError:
            raw.close()
            raise
        return trio.socket.from_stdlib_socket(raw)

    def _feed(self, buf: bytes, dumped: LocalAddresses | None) -> None:
        for mtype, _seq, index, addr in decode(buf):
            if addr is None:
                continue
            if dumped is not None and mtype == RTM_NEWADDR:
                dumped.add(addr, index)
            if mtype == RTM_NEWADDR:
                if self.local.add(addr, index):
                    self._on_change(addr, True)
            elif mtype == RTM_DELADDR:
                if dumped is not None:
                    dumped.remove(addr, index)
                if self.local.remove(addr, index):
                    self._on_change(addr, False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Follow the addresses until cancelled; started once the first dump is in."""
        started = False
        seq = 0
        with self._open() as sock:
            while True:
                seq += 1
                await sock.send(dump_request(seq))
                dumped = LocalAddresses()
                try:
                    while True:
                        buf = await sock.recv(1 << 16)
                        done = any(t == NLMSG_DONE and n == seq for t, n, _i, _a in decode(buf))
                        self._feed(buf, dumped)
                        if done:
                            break
                    # What the dump did not show is gone (changes lost to an overflow).
                    for addr in self.local.addresses() - dumped.addresses():
                        self.local.forget(addr)
                        self._on_change(addr, False)
                    if not started:
                        started = True
                        task_status.started()
                    while True:
                        self._feed(await sock.recv(1 << 16), None)
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    log.warning("address notifications lost (ENOBUFS); reading them again")
