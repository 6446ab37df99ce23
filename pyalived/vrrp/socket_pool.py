"""The raw sockets shared by the VRRP instances of one runtime.

Theory of operation: instances on one interface share its sockets.  A
``SocketPool`` opens, through the ``SocketFactory`` port, one advert socket
per (interface, IP protocol) -- 112 for VRRP, 51 for AH -- and one
gratuitous-ARP socket per interface, the first time someone asks for it,
and hands out the same socket afterwards.  The instance drivers send through
it and the receivers (``pyalived.vrrp.demux``) listen on it.  Sockets stay
open until ``close()``, which the runtime calls once every instance has
finished its graceful stop (the priority-0 advert needs the socket); a reload
that removes the last instance of an interface leaves its sockets open.
"""

from __future__ import annotations

import logging

from pyalived.vrrp.ports import AdvertSocket, GarpSocket, SocketFactory

log = logging.getLogger("pyalived.vrrp")


class SocketPool:
    """One advert socket per (interface, protocol), one GARP socket per interface.

    Sockets stay open until ``close()``, which the owner calls after every
    instance has finished its graceful stop.
    """

    def __init__(self, factory: SocketFactory) -> None:
        self._factory = factory
        self._advert: dict[tuple[str, int], AdvertSocket] = {}
        self._garp: dict[str, GarpSocket] = {}

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

    def close(self) -> None:
        socks: list[AdvertSocket | GarpSocket] = [*self._advert.values(), *self._garp.values()]
        for sock in socks:
            try:
                sock.close()
            except OSError as exc:
                log.debug("closing socket: %s", exc)
        self._advert.clear()
        self._garp.clear()
