"""The raw sockets shared by the VRRP instances of one runtime.

Theory of operation: instances on one interface share its sockets.  A
``SocketPool`` opens, through the ``SocketFactory`` port, one advert socket
per (interface, IP protocol) -- 112 for VRRP, 51 for AH -- and one
gratuitous-ARP socket per interface, and through the ``SocketFactory6``
port one raw IPv6 socket per interface for IPv6 instances (VRRPv3, RFC 5798
§5.1.2), the first time someone asks for it,
and hands out the same socket afterwards.  The instance drivers send through
it and the receivers (``pyalived.vrrp.demux``) listen on it.  Sockets stay
open until ``close()``, which the runtime calls once every instance has
finished its graceful stop (the priority-0 advert needs the socket); a reload
that removes the last instance of an interface leaves its sockets open.  An
interface deleted and created again (``dynamic_interfaces``) has its sockets
dropped (``forget``): they belong to the old link, and new ones are opened.
"""

from __future__ import annotations

import logging
from ipaddress import IPv6Address

from pyalived.vrrp.ports import (
    Advert6Socket,
    AdvertSocket,
    GarpSocket,
    SocketFactory,
    SocketFactory6,
)

log = logging.getLogger("pyalived.vrrp")

VRRP_GROUP6 = IPv6Address("ff02::12")  # RFC 5798 §5.1.2.2


class SocketPool:
    """One advert socket per (interface, protocol), one GARP socket per interface.

    Sockets stay open until ``close()``, which the owner calls after every
    instance has finished its graceful stop.
    """

    def __init__(self, factory: SocketFactory, factory6: SocketFactory6 | None = None,
                 group6: IPv6Address = VRRP_GROUP6) -> None:
        self._factory = factory
        self._factory6 = factory6  # None: the production one, made when first needed
        self._group6 = group6  # the production one's multicast group
        self._advert: dict[tuple[str, int], AdvertSocket] = {}
        self._advert6: dict[str, Advert6Socket] = {}
        self._garp: dict[str, GarpSocket] = {}

    @property
    def factory6(self) -> SocketFactory6:
        if self._factory6 is None:
            from pyalived.vrrp.net6 import NetSockets6

            self._factory6 = NetSockets6(self._group6)
        return self._factory6

    def advert6(self, ifname: str) -> Advert6Socket:
        sock = self._advert6.get(ifname)
        if sock is None:
            sock = self.factory6.open_advert6(ifname)
            self._advert6[ifname] = sock
        return sock

    def link_local(self, ifname: str) -> IPv6Address:
        """The link-local address of ``ifname`` (the source of IPv6 adverts)."""
        return self.factory6.link_local(ifname)

    def advert(self, ifname: str, proto: int) -> AdvertSocket:
        sock = self._advert.get((ifname, proto))
        if sock is None:
            sock = self._factory.open_advert(ifname, proto)
            self._advert[(ifname, proto)] = sock
        return sock

    def garp(self, ifname: str) -> GarpSocket:
        sock = self._garp.get(ifname)
        if sock is None:
            sock = self._factory.open_garp(ifname)
            self._garp[ifname] = sock
        return sock

    def forget(self, ifname: str) -> list[AdvertSocket | Advert6Socket | GarpSocket]:
        """Drop the sockets of ``ifname`` (deleted and created again: they belong to the
        old link) and return them, for the caller to close once nobody listens on them;
        the next request opens new ones."""
        old: list[AdvertSocket | Advert6Socket | GarpSocket] = []
        for key in [k for k in self._advert if k[0] == ifname]:
            old.append(self._advert.pop(key))
        for table in (self._advert6, self._garp):
            sock = table.pop(ifname, None)
            if sock is not None:
                old.append(sock)
        return old

    def close(self) -> None:
        socks: list[AdvertSocket | Advert6Socket | GarpSocket] = [
            *self._advert.values(), *self._advert6.values(), *self._garp.values()
        ]
        for sock in socks:
            try:
                sock.close()
            except OSError as exc:
                log.debug("closing socket: %s", exc)
        self._advert.clear()
        self._advert6.clear()
        self._garp.clear()
