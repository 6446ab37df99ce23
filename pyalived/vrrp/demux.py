"""Reception of adverts: one receiver per socket, dispatching by VRID.

Theory of operation: reception is shared.  A ``Demux`` runs one receiver
task per (interface, IP protocol) on the ``SocketPool``'s advert socket,
reads the VRID of each datagram first (``peek_vrid``), then parses it the
way the instance registered for that VRID there wants: VRRPv2
(``packet.parse_datagram``, the structural checks of RFC 3768 §7.1) or
VRRPv3 (``packet.parse_datagram_v3``, RFC 5798 §7.1, with the instance's
current checksum mode and multicast group, ``V3Route``), and hands it to
that instance's sink -- its driver's ``deliver``, which applies the
per-instance checks.  VRRPv2 and VRRPv3 instances thus share a socket, each
advert being judged by the version of its VRID's instance: a v3 advert for
a v2 instance is ``bad_version``, and the reverse.  A datagram that fails to
parse, or carries a VRID nobody registered on that socket, is counted by
reason in ``VrrpCounters`` and dropped (for an unknown VRID, a malformed
datagram is counted by its parse error, read with the version it claims);
no malformed datagram reaches an instance.

Timing: an advert's time is the time it arrived.  A socket that offers
``receive_timed`` (``TimedAdvertSocket``: the kernel's receive timestamp on
trio's clock) gives that time; otherwise it is read when the datagram leaves
the socket.  The sink gets it with the datagram, so the Master_Down timer of
RFC 3768 §6.4.2 runs from the advert's arrival however busy the loop was.

IPv6 instances (VRRPv3 only, RFC 5798 §5.1.2) have their own receiver per
interface, on the pool's raw IPv6 socket (``pyalived.vrrp.net6``), which
delivers the VRRP message alone with its source, destination and hop limit:
``dispatch6`` reads the VRID from the message and decodes it with
``packet.decode_v3`` (hop limit 255, version, type, length, the RFC 8200
pseudo-header checksum) before the sink sees it; ``register6`` routes a VRID
there.

Routes are edited in place: an instance registers once its sockets (and its
VMAC) exist and is unregistered when it stops.  A registration for a new
(interface, protocol) while the demux runs -- a reload added an instance
there -- starts that receiver at once; receivers are never stopped before
the demux itself.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import trio

from pyalived.vrrp import packet
from pyalived.vrrp.counters import VrrpCounters
from pyalived.vrrp.ports import Advert6Socket, AdvertSocket, TimedAdvertSocket
from pyalived.vrrp.socket_pool import SocketPool
from pyalived.vrrp.v3_checksum import ChecksumMode

log = logging.getLogger("pyalived.vrrp")

# (parsed advert, raw datagram, arrival time on trio's clock)
Sink = Callable[[packet.Received | packet.ReceivedV3, bytes, float], None]


@dataclass(frozen=True)
class V3Route:
    """How a VRRPv3 instance's adverts are parsed: its (changing) checksum mode and
    the multicast group of the old checksum form (``vrrp_mcast_group4``)."""

    checksum: ChecksumMode
    mcast_group: IPv4Address = packet.VRRP_MCAST_GROUP


def peek_vrid(datagram: bytes) -> tuple[int, int] | None:
    """(VRRP version, VRID) of a raw IPv4 datagram, before any check; None if too short.

    The VRRP header follows the IPv4 header, or the 24-byte AH header when the
    protocol is 51 (VRRPv2 with ``auth_type AH``).
    """
    if len(datagram) < 20:
        return None
    ihl = (datagram[0] & 0x0F) * 4
    at = ihl + (packet.AH_LEN if datagram[9] == packet.AH_PROTO else 0)
    if len(datagram) < at + 2:
        return None
    first, vrid = struct.unpack_from("!BB", datagram, at)
    return first >> 4, vrid


class Demux:
    """One receiver task per (interface, protocol), dispatching by VRID."""

    def __init__(self, pool: SocketPool, counters: VrrpCounters) -> None:
        self._pool = pool
        self._counters = counters
        self._routes: dict[tuple[str, int], dict[int, Sink]] = {}
        self._v3: dict[tuple[str, int], dict[int, V3Route]] = {}
        self._routes6: dict[str, dict[int, Sink]] = {}  # IPv6: by interface, then VRID
        self._nursery: trio.Nursery | None = None
        # Each receiver's cancel scope, by (interface, protocol) or (interface, "6").
        self._scopes: dict[tuple[str, int | str], trio.CancelScope] = {}

    def register6(self, ifname: str, vrid: int, sink: Sink) -> None:
        """Route ``vrid`` of the IPv6 adverts on ``ifname`` to ``sink`` (VRRPv3)."""
        new_key = ifname not in self._routes6
        self._routes6.setdefault(ifname, {})[vrid] = sink
        if new_key and self._nursery is not None:
            self._nursery.start_soon(self._receive6, ifname, self._pool.advert6(ifname))

    def dispatch6(self, ifname: str, message: bytes, src: IPv6Address, dst: IPv6Address,
                  hop_limit: int, received_at: float | None = None) -> None:
        """Decode an IPv6 VRRP message and hand it to its instance."""
        if received_at is None:
            received_at = trio.current_time()
        vrid = message[1] if len(message) >= 2 else None
        sink = self._routes6.get(ifname, {}).get(vrid) if vrid is not None else None
        try:
            received = packet.decode_v3(message, src=src, dst=dst, ttl=hop_limit)
        except packet.PacketError as exc:
            self._counters.rx_error(exc.reason)
            log.debug("%s: dropped IPv6 datagram from %s: %s", ifname, src, exc)
            return
        if sink is None:
            self._counters.rx_error("unknown_vrid")
            log.debug("%s: dropped advert from %s for VRID %d not configured here",
                      ifname, src, received.advert.vrid)
            return
        sink(received, message, received_at)

    def reopen(self, ifname: str) -> None:
        """``ifname`` was deleted and created again: its receivers stop and new ones
        listen on the pool's new sockets (after ``SocketPool.forget``)."""
        if self._nursery is None:
            return
        for key in [k for k in self._routes if k[0] == ifname]:
            scope = self._scopes.pop(key, None)
            if scope is not None:
                scope.cancel()
            self._nursery.start_soon(self._receive, key, self._pool.advert(*key))
        if ifname in self._routes6:
            scope = self._scopes.pop((ifname, "6"), None)
            if scope is not None:
                scope.cancel()
            self._nursery.start_soon(self._receive6, ifname, self._pool.advert6(ifname))

    async def _receive6(self, ifname: str, sock: Advert6Socket) -> None:
        with self._scope((ifname, "6")):
            await self._receive6_loop(ifname, sock)

    @contextlib.contextmanager
    def _scope(self, key: tuple[str, int | str]) -> Iterator[None]:
        with trio.CancelScope() as scope:
            self._scopes[key] = scope
            try:
                yield
            finally:
                if self._scopes.get(key) is scope:
                    del self._scopes[key]

    async def _receive6_loop(self, ifname: str, sock: Advert6Socket) -> None:
        while True:
            d = await sock.receive6()
            self.dispatch6(ifname, d.message, d.src, d.dst, d.hop_limit, d.at)

    def register(
        self, ifname: str, proto: int, vrid: int, sink: Sink, v3: V3Route | None = None
    ) -> None:
        """Route ``vrid`` on (``ifname``, ``proto``) to ``sink``: VRRPv3 with ``v3``."""
        key = (ifname, proto)
        new_key = key not in self._routes
        self._routes.setdefault(key, {})[vrid] = sink
        if v3 is not None:
            self._v3.setdefault(key, {})[vrid] = v3
        else:
            self._v3.get(key, {}).pop(vrid, None)
        if new_key and self._nursery is not None:
            # A reload added an instance on a new (interface, protocol).
            self._nursery.start_soon(self._receive, key, self._pool.advert(*key))

    def unregister(self, vrid: int, sink: Sink) -> None:
        """Forget ``sink`` wherever it still owns ``vrid``; the receivers keep running."""
        for key, routes in self._routes.items():
            if routes.get(vrid) == sink:
                del routes[vrid]
                self._v3.get(key, {}).pop(vrid, None)
        for routes6 in self._routes6.values():
            if routes6.get(vrid) == sink:
                del routes6[vrid]

    def dispatch(
        self, key: tuple[str, int], datagram: bytes, received_at: float | None = None
    ) -> None:
        """Hand ``datagram`` (arrived at ``received_at``, default: now) to its instance."""
        if received_at is None:
            received_at = trio.current_time()
        peek = peek_vrid(datagram)
        vrid = peek[1] if peek is not None else None
        sink = self._routes.get(key, {}).get(vrid) if vrid is not None else None
        v3 = self._v3.get(key, {}).get(vrid) if vrid is not None else None
        if sink is None:  # parsed for its drop reason, as the version it claims
            v3 = V3Route(ChecksumMode(packet.V3Checksum.RFC)) if peek and peek[0] == 3 else None
        received: packet.Received | packet.ReceivedV3
        try:
            if v3 is None:
                received = packet.parse_datagram(datagram)
            else:
                received = packet.parse_datagram_v3(
                    datagram, checksum=v3.checksum.mode, mcast_group=v3.mcast_group
                )
        except packet.PacketError as exc:
            self._counters.rx_error(exc.reason)
            log.debug("%s: dropped datagram: %s", key[0], exc)
            return
        if sink is None:
            self._counters.rx_error("unknown_vrid")
            log.debug(
                "%s: dropped advert from %s for VRID %d not configured here",
                key[0],
                received.src,
                received.advert.vrid,
            )
            return
        sink(received, datagram, received_at)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for key in self._routes:
                sock = self._pool.advert(*key)
                nursery.start_soon(self._receive, key, sock)
            for ifname in self._routes6:
                nursery.start_soon(self._receive6, ifname, self._pool.advert6(ifname))
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _receive(self, key: tuple[str, int], sock: AdvertSocket) -> None:
        with self._scope(key):
            await self._receive_loop(key, sock)

    async def _receive_loop(self, key: tuple[str, int], sock: AdvertSocket) -> None:
        if isinstance(sock, TimedAdvertSocket):
            while True:
                datagram, received_at = await sock.receive_timed()
                self.dispatch(key, datagram, received_at)
        while True:
            datagram = await sock.receive()
            self.dispatch(key, datagram, trio.current_time())
