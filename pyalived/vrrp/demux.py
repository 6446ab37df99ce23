"""Reception of adverts: one receiver per socket, dispatching by VRID.

Theory of operation: reception is shared.  A ``Demux`` runs one receiver
task per (interface, IP protocol) on the ``SocketPool``'s advert socket,
parses each datagram (``packet.parse_datagram``: the structural checks of
RFC 3768 §7.1) and hands it to the sink registered for its VRID there -- an
instance driver's ``deliver``, which applies the per-instance checks.  A
datagram that fails to parse, or carries a VRID nobody registered on that
socket, is counted by reason in ``VrrpCounters`` and dropped; no malformed
datagram reaches an instance.

Timing: an advert's time is the time it arrived.  A socket that offers
``receive_timed`` (``TimedAdvertSocket``: the kernel's receive timestamp on
trio's clock) gives that time; otherwise it is read when the datagram leaves
the socket.  The sink gets it with the datagram, so the Master_Down timer of
RFC 3768 §6.4.2 runs from the advert's arrival however busy the loop was.

Routes are edited in place: an instance registers once its sockets (and its
VMAC) exist and is unregistered when it stops.  A registration for a new
(interface, protocol) while the demux runs -- a reload added an instance
there -- starts that receiver at once; receivers are never stopped before
the demux itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from pyalived.vrrp import packet
from pyalived.vrrp.counters import VrrpCounters
from pyalived.vrrp.ports import AdvertSocket, TimedAdvertSocket
from pyalived.vrrp.socket_pool import SocketPool

log = logging.getLogger("pyalived.vrrp")

# (parsed advert, raw datagram, arrival time on trio's clock)
Sink = Callable[[packet.Received, bytes, float], None]


class Demux:
    """One receiver task per (interface, protocol), dispatching by VRID."""

    def __init__(self, pool: SocketPool, counters: VrrpCounters) -> None:
        self._pool = pool
        self._counters = counters
        self._routes: dict[tuple[str, int], dict[int, Sink]] = {}
        self._nursery: trio.Nursery | None = None

    def register(self, ifname: str, proto: int, vrid: int, sink: Sink) -> None:
        key = (ifname, proto)
        new_key = key not in self._routes
        self._routes.setdefault(key, {})[vrid] = sink
        if new_key and self._nursery is not None:
            # A reload added an instance on a new (interface, protocol).
            self._nursery.start_soon(self._receive, key, self._pool.advert(*key))

    def unregister(self, vrid: int, sink: Sink) -> None:
        """Forget ``sink`` wherever it still owns ``vrid``; the receivers keep running."""
        for routes in self._routes.values():
            if routes.get(vrid) == sink:
                del routes[vrid]

    def dispatch(
        self, key: tuple[str, int], datagram: bytes, received_at: float | None = None
    ) -> None:
        """Hand ``datagram`` (arrived at ``received_at``, default: now) to its instance."""
        if received_at is None:
            received_at = trio.current_time()
        try:
            received = packet.parse_datagram(datagram)
        except packet.PacketError as exc:
            self._counters.rx_error(exc.reason)
            log.debug("%s: dropped datagram: %s", key[0], exc)
            return
        sink = self._routes.get(key, {}).get(received.advert.vrid)
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
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _receive(self, key: tuple[str, int], sock: AdvertSocket) -> None:
        if isinstance(sock, TimedAdvertSocket):
            while True:
                datagram, received_at = await sock.receive_timed()
                self.dispatch(key, datagram, received_at)
        while True:
            datagram = await sock.receive()
            self.dispatch(key, datagram, trio.current_time())
