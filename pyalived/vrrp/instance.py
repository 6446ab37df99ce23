"""The trio driver of VRRP instances.

Theory of operation: every configured ``vrrp_instance`` becomes an
``Instance``, one trio task that owns a pure ``VrrpMachine`` and feeds it
events: its timer (``get_timer()`` compared with ``trio.current_time()``),
received adverts, tracking verdicts and sync-group orders.  Everything that
reaches the task goes through its inbox, so the machine is only ever touched
by its own task, one event at a time.

Reception is shared: a ``Demux`` runs one receiver per (interface, IP
protocol), parses each datagram (``parse_datagram``: RFC 3768 §7.1 structural
checks) and hands it to the instance owning the VRID, which applies its own
checks (``verify``: authentication, address list, advert interval) before the
machine sees it.  Every ``PacketError`` is counted by reason in
``VrrpCounters`` and dropped; no malformed datagram reaches a machine.  A peer
announcing other addresses than ours is also logged, as a warning once per
change of its list (``pyalived.vrrp.peer_addresses``), not once per advert.

Timing: an advert's ``now`` is the time it arrived, not the time its
instance got round to it.  A socket with ``receive_timed``
(``TimedAdvertSocket``: the kernel's receive timestamp on trio's clock) gives
that time; otherwise it is read when the datagram leaves the socket.  So the
Master_Down timer of RFC 3768 §6.4.2 runs from the advert's arrival, however
busy the loop was.  Before each wait an instance posts its next deadline to
the optional ``Wakeup`` port (``pyalived.vrrp.wakeup``), which wakes the loop
at that exact moment instead of whenever epoll's rounded, slack-stretched
timeout ends.

Actions are executed in the machine's order, with one exception: adding or
removing VIPs (a netlink round trip) is done after the adverts and gratuitous
ARPs of the same batch, so that a new master announces itself first.
Gratuitous ARPs must not be lost to a passing shortage of this process's
resources.  An instance opens its GARP socket when it starts, so that a
failover needs no new file descriptor, and a burst that fails for lack of
resources (``pyalived.limits``: EMFILE, ENFILE, ENOBUFS, ENOMEM, or EAGAIN
from a full send buffer) is logged as an internal error -- through a
``LogThrottle``, no traceback -- and sent again ``GARP_RETRY_INTERVAL``
later, up to ``GARP_RETRY_LIMIT`` attempts, for as long as the instance is
MASTER.  The task's wait covers the earliest pending retry.

Adverts go to the VRRP multicast group (RFC 3768 §5.2.2) or to each
``unicast_peer``, from the interface's primary address or
``unicast_src_ip``; with ``use_vmac`` they and the GARPs leave through the
VMAC interface unless ``vmac_xmit_base``.  On cancellation the instance runs
``shutdown`` (a master sends a priority-0 advert, RFC 3768 §6.4.3, and drops
its VIPs), runs its stop notify scripts and deletes its VMAC inside a
shielded scope with a time limit, so a daemon stop completes even though the
surrounding nursery is being cancelled.

``VrrpRuntime`` holds the running instances of one config and applies a
configuration reload (``pyalived.reload``): removed instances stop
gracefully, changed ones are reconfigured by their own task (state, timers
and unchanged VIPs kept; a MASTER adds only the new VIPs and sends gratuitous
ARPs for those alone), new ones start, and receivers and trackers follow.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Protocol, runtime_checkable

import trio

from pyalived.config.model import (
    AuthType,
    Config,
    InitialState,
    Notify,
    VirtualIP,
    VrrpInstance,
    VrrpScript,
    VrrpSyncGroup,
)
from pyalived.limits import LogThrottle, is_resource_exhaustion
from pyalived.vrrp import packet
from pyalived.vrrp.fsm import (
    Action,
    AddVips,
    GarpKind,
    MachineConfig,
    RemoveVips,
    SendAdvert,
    SendGarp,
    State,
    StateChanged,
    VrrpMachine,
)
from pyalived.vrrp.peer_addresses import PeerAddressWatch
from pyalived.vrrp.ports import (
    AddressManager,
    AdvertSocket,
    GarpSocket,
    LinkWatcher,
    ScriptRunner,
    VmacManager,
)
from pyalived.vrrp.scripts import split_command
from pyalived.vrrp.sync import SyncGroup
from pyalived.vrrp.tracking import (
    InstanceTracking,
    Tracked,
    Verdict,
    run_link_dispatch,
    run_script_tracker,
)

log = logging.getLogger("pyalived.vrrp")

STOP_TIMEOUT = 5.0  # seconds allowed for a graceful stop of one instance
INBOX_SIZE = 256  # queued events per instance before received adverts are dropped
#: Seconds between attempts at a GARP burst that failed for lack of resources.
GARP_RETRY_INTERVAL = 0.5
#: Attempts at such a burst (the first included) before it is given up.
GARP_RETRY_LIMIT = 20
#: Seconds between two log lines about GARP bursts failing for lack of resources.
GARP_ERROR_LOG_INTERVAL = 10.0


# ---- counters --------------------------------------------------------------


@dataclass
class VrrpCounters:
    """Counters read by the metrics exporter."""

    rx_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    instance_rx_errors: collections.Counter[tuple[str, str]] = field(
        default_factory=collections.Counter
    )
    adverts_received: collections.Counter[str] = field(default_factory=collections.Counter)
    adverts_sent: collections.Counter[str] = field(default_factory=collections.Counter)
    garps_sent: collections.Counter[str] = field(default_factory=collections.Counter)
    transitions: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    tx_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    priority_zero_received: collections.Counter[str] = field(default_factory=collections.Counter)
    priority_zero_sent: collections.Counter[str] = field(default_factory=collections.Counter)
    # trio time of each instance's last accepted advert (failover duration metric)
    last_advert_received: dict[str, float] = field(default_factory=dict)

    def rx_error(self, reason: str, instance: str | None = None) -> None:
        self.rx_errors[reason] += 1
        if instance is not None:
            self.instance_rx_errors[(instance, reason)] += 1


# ---- sockets ---------------------------------------------------------------


@runtime_checkable
class TimedAdvertSocket(Protocol):
    """An ``AdvertSocket`` that also tells when each datagram arrived."""

    async def receive_timed(self) -> tuple[bytes, float]:
        """The next datagram and its arrival time on trio's clock."""
        ...


class Wakeup(Protocol):
    """Wakes the event loop exactly at posted deadlines (``pyalived.vrrp.wakeup``).

    A callable ``owner`` is called when its deadline has come; ``fallback`` is how
    long after the deadline its task stops waiting for that call.
    """

    fallback: float

    def wake_at(self, owner: Hashable, deadline: float | None) -> None: ...


class SocketFactory(Protocol):
    """Opens the raw sockets; production: ``pyalived.vrrp.net``."""

    def open_advert(self, ifname: str, proto: int) -> AdvertSocket: ...

    def open_garp(self, ifname: str) -> GarpSocket: ...


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


# ---- the instance ----------------------------------------------------------


@dataclass(frozen=True)
class _Rx:
    received: packet.Received
    datagram: bytes
    at: float  # arrival time (trio clock)


@dataclass(frozen=True)
class _Script:
    name: str
    ok: bool


@dataclass(frozen=True)
class _Link:
    ifname: str
    up: bool


@dataclass(frozen=True)
class _Tick:
    """The wake-up port says the machine's timer is due."""


_TICK = _Tick()


@dataclass(frozen=True)
class _Force:
    state: State
    reason: str


@dataclass(frozen=True)
class _Reconf:
    conf: VrrpInstance
    tracking: InstanceTracking
    done: trio.Event


_Event = _Rx | _Script | _Link | _Force | _Reconf | _Tick


@dataclass(frozen=True)
class _GarpRetry:
    """A GARP burst to send again (it failed for lack of resources)."""

    due: float  # trio time
    dev: str
    ips: tuple[IPv4Address, ...]
    count: int
    attempt: int  # the attempt this will be (2 for the first retry)


def _garp_retryable(exc: OSError) -> bool:
    """A send that failed because this host was short of something, not the link."""
    return is_resource_exhaustion(exc) or isinstance(exc, BlockingIOError)

StateListener = Callable[["Instance", StateChanged], None]

_NOTIFY_STATE = {
    State.MASTER: "MASTER",
    State.BACKUP: "BACKUP",
    State.FAULT: "FAULT",
    State.INIT: "STOP",
}


def auth_fields(conf: VrrpInstance) -> tuple[int, bytes]:
    """The advert's auth_type and auth_data (RFC 3768 §5.3.6, §5.3.10)."""
    auth = conf.authentication
    if auth is None:
        return 0, b"\0" * 8
    if auth.type is AuthType.PASS:
        return 1, auth.password[:8].ljust(8, b"\0")
    return 2, b"\0" * 8


def state_script(notify: Notify, state: State) -> str | None:
    """The per-state notify script (notify_master, ...) for ``state``; INIT means stop."""
    return {
        State.MASTER: notify.master,
        State.BACKUP: notify.backup,
        State.FAULT: notify.fault,
        State.INIT: notify.stop,
    }[state]


def machine_config(conf: VrrpInstance, src_ip: IPv4Address) -> MachineConfig:
    """The state machine's settings for ``conf``, tie-breaking on ``src_ip``."""
    return MachineConfig(
        name=conf.name,
        vrid=conf.virtual_router_id,
        priority=conf.priority,
        advert_int=conf.advert_int,
        primary_ip=src_ip,
        initial_state=(State.MASTER if conf.state is InitialState.MASTER else State.BACKUP),
        preempt=not conf.nopreempt,
        preempt_delay=conf.preempt_delay,
        garp_master_delay=conf.garp_master_delay,
        garp_master_refresh=conf.garp_master_refresh,
        garp_lower_prio_delay=conf.garp_lower_prio_delay,
    )


def _expectation(conf: VrrpInstance) -> packet.Expectation:
    return packet.Expectation(
        vrid=conf.virtual_router_id,
        advert_int=max(1, round(conf.advert_int)),
        addresses=frozenset(v.ip for v in conf.virtual_ipaddress),
        auth_type=conf.authentication.type if conf.authentication else None,
        auth_key=conf.authentication.password if conf.authentication else b"",
    )


class Instance:
    """One VRRP instance: a machine, its inbox and the execution of its actions."""

    def __init__(
        self,
        conf: VrrpInstance,
        *,
        primary_ip: IPv4Address,
        sockets: SocketPool,
        demux: Demux,
        addresses: AddressManager,
        scripts: ScriptRunner,
        counters: VrrpCounters,
        vmac: VmacManager | None = None,
        links: LinkWatcher | None = None,
        tracking: InstanceTracking | None = None,
        multicast_group: IPv4Address = packet.VRRP_MCAST_GROUP,
        script_user: str | None = None,
        machine_factory: Callable[[MachineConfig], VrrpMachine] = VrrpMachine,
        wakeup: Wakeup | None = None,
    ) -> None:
        self.conf = conf
        self.name = conf.name
        self.primary_ip = primary_ip
        self.src_ip = conf.unicast_src_ip or conf.mcast_src_ip or primary_ip
        self._sockets = sockets
        self._addresses = addresses
        self._scripts = scripts
        self._counters = counters
        self._vmac = vmac if conf.use_vmac else None
        self._links = links
        self._script_user = script_user
        self.proto = (
            packet.AH_PROTO
            if conf.authentication is not None and conf.authentication.type is AuthType.AH
            else packet.VRRP_PROTO
        )
        self._use_vmac_name(conf.effective_vmac_name)
        self.destinations: tuple[IPv4Address, ...] = conf.unicast_peer or (multicast_group,)
        self.vips: tuple[VirtualIP, ...] = conf.virtual_ipaddress + conf.virtual_ipaddress_excluded
        self.tracking = tracking or InstanceTracking(conf.priority)
        self._multicast_group = multicast_group
        self.machine = machine_factory(machine_config(conf, self.src_ip))
        self.state_listeners: list[StateListener] = []
        self._inbox_tx, self._inbox_rx = trio.open_memory_channel[_Event](math.inf)
        self._ip_id = 0
        self._ah_seq = 0
        self._ah_last: int | None = None  # last accepted AH sequence number (anti-replay)
        self._peer_lists = PeerAddressWatch()  # peers' differing address lists, to log
        self._auth_type, self._auth_data = auth_fields(conf)
        self._expect = _expectation(conf)
        self._applied: Verdict | None = None
        self._stop_notified = False
        self._stop_priority = conf.priority
        self.started = False
        self._demux = demux
        self._wakeup = wakeup
        # The latest ``now`` given to the machine for anything but an advert:
        # an advert that arrived earlier is handled as of this time.
        self._floor = -math.inf
        self._garp_retries: list[_GarpRetry] = []
        self._garp_log = LogThrottle(log, GARP_ERROR_LOG_INTERVAL, trio.current_time)

    def _use_vmac_name(self, vmac_name: str | None) -> None:
        """The VMAC's actual name (``VmacManager.create`` may pick another than configured)."""
        conf = self.conf
        self.vmac_name = vmac_name
        # VIPs live on the VMAC when there is one; adverts and GARPs leave from it.
        self.vip_dev = vmac_name or conf.interface
        self.xmit_dev = conf.interface if (vmac_name is None or conf.vmac_xmit_base) else vmac_name
        self.garp_dev = vmac_name or conf.interface

    # -- inputs (any task; never block) --

    @property
    def state(self) -> State:
        return self.machine.state

    def deliver(
        self, received: packet.Received, datagram: bytes, received_at: float | None = None
    ) -> None:
        """Called by the demux for a datagram carrying this instance's VRID.

        ``received_at`` is its arrival time on trio's clock (default: now); the
        machine sees the advert as of that moment.
        """
        if self._inbox_tx.statistics().current_buffer_used >= INBOX_SIZE:
            self._counters.rx_error("queue_full", self.name)
            return
        at = trio.current_time() if received_at is None else received_at
        self._inbox_tx.send_nowait(_Rx(received, datagram, at))

    def post_script(self, name: str, ok: bool) -> None:
        self._post(_Script(name, ok))

    def post_link(self, ifname: str, up: bool) -> None:
        self._post(_Link(ifname, up))

    def force_state(self, state: State, reason: str) -> None:
        self._post(_Force(state, reason))

    async def reconfigure(self, conf: VrrpInstance, tracking: InstanceTracking) -> None:
        """Configuration reload: apply ``conf`` in place and wait until the task has.

        The state, its timers and the unchanged VIPs are kept and nothing is
        sent for them; on a MASTER the added VIPs are configured and only they
        are announced by gratuitous ARP, the removed ones are deleted.  The
        caller guarantees that the reload identity (VRID, interface) and the
        settings that need a restart (``pyalived.reload.RESTART_FIELDS``) are
        unchanged.  Returns at once if the instance is not running.
        """
        if not self.started:
            return
        done = trio.Event()
        self._post(_Reconf(conf, tracking, done))
        await done.wait()

    def _post(self, event: _Event) -> None:
        # Control events are never dropped (the inbox is unbounded; only
        # received adverts are limited, in ``deliver``).
        self._inbox_tx.send_nowait(event)

    # -- the task --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            if self._vmac is not None and self.conf.effective_vmac_name is not None:
                self._use_vmac_name(await self._vmac.create(
                    self.conf.interface, self.conf.effective_vmac_name, self.conf.virtual_router_id
                ))
            self._sockets.advert(self.xmit_dev, self.proto)
            self._open_garp_sockets()
            # With a VMAC the peers' adverts carry the virtual MAC as source; a private
            # macvlan delivers those frames to the VMAC only, so listen where we send
            # (and only once the VMAC exists).
            self._demux.register(
                self.xmit_dev, self.proto, self.conf.virtual_router_id, self.deliver
            )
            if self._links is not None:
                for ifname in self.tracking.interface_names:
                    self.tracking.update_link(ifname, self._links.is_up(ifname))
            self._floor = now = trio.current_time()
            self.started = True
            actions = self.machine.start(now)
            await self._execute(actions)
            if self.machine.state is not State.MASTER and not any(
                isinstance(a, RemoveVips | AddVips) for a in actions
            ):
                # As keepalived does: a backup starts by removing VIPs that a
                # previous run may have left behind.
                await self._vip_action(RemoveVips())
            await self._apply_tracking()
            task_status.started()
            await self._loop()
        finally:
            if self._wakeup is not None:
                self._wakeup.wake_at(self._tick, None)
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + STOP_TIMEOUT
                await self._stop()
            if scope.cancelled_caught:
                log.warning("(%s) graceful stop did not finish in %gs", self.name, STOP_TIMEOUT)

    async def _loop(self) -> None:
        while True:
            self._retry_garps(trio.current_time())
            timer = self.machine.get_timer()
            wait_until = math.inf if timer is None else timer
            if self._wakeup is not None:
                # Woken by a tick in the inbox at the deadline; the trio deadline
                # is only the fallback.
                self._wakeup.wake_at(self._tick, timer)
                wait_until += self._wakeup.fallback
            retry_at = min((r.due for r in self._garp_retries), default=math.inf)
            event: _Event | None = None
            with trio.move_on_at(min(wait_until, retry_at)):
                event = await self._inbox_rx.receive()
            if event is not None and not isinstance(event, _Tick):
                await self._handle(event)
                continue
            if event is None and retry_at < wait_until and trio.current_time() < wait_until:
                continue  # woken for a GARP retry only
            self._floor = now = trio.current_time()
            if timer is not None and now >= timer:
                await self._execute(self.machine.timer_expired(now))

    def _tick(self) -> None:
        self._inbox_tx.send_nowait(_TICK)

    async def _handle(self, event: _Event) -> None:
        now = trio.current_time()
        if isinstance(event, _Rx):
            # As of its arrival, but never before an event the machine already saw.
            at = min(now, max(event.at, self._floor))
            await self._received(at, event.received, event.datagram)
            return
        self._floor = now
        if isinstance(event, _Script):
            self.tracking.update_script(event.name, event.ok)
            await self._apply_tracking()
        elif isinstance(event, _Link):
            self.tracking.update_link(event.ifname, event.up)
            await self._apply_tracking()
        elif isinstance(event, _Reconf):
            try:
                await self._reconfigure(event.conf, event.tracking)
            finally:
                event.done.set()
        elif isinstance(event, _Force):
            await self._execute(self.machine.force_state(now, event.state, event.reason))

    async def _received(self, now: float, received: packet.Received, datagram: bytes) -> None:
        if received.src == self.src_ip:
            log.debug("(%s) ignoring own advert", self.name)
            return
        try:
            packet.verify(received, self._expect, datagram)
            self._ah_last = packet.check_ah_sequence(self._ah_last, received)
        except packet.PacketError as exc:
            self._counters.rx_error(exc.reason, self.name)
            self._note_peer_addresses(received, exc.reason)
            log.debug("(%s) dropped advert from %s: %s", self.name, received.src, exc)
            return
        self._note_peer_addresses(received, None)
        self._counters.adverts_received[self.name] += 1
        self._counters.last_advert_received[self.name] = now
        if received.advert.priority == 0:
            self._counters.priority_zero_received[self.name] += 1
        await self._execute(
            self.machine.advert_received(now, received.src, received.advert.priority)
        )

    def _note_peer_addresses(self, received: packet.Received, reason: str | None) -> None:
        """Log a change of a peer's address list (keepalived logs each such advert)."""
        note = self._peer_lists.observe(
            received.src, received.advert.addresses, self._expect.addresses, reason
        )
        if note is not None:
            log.log(note.level, "(%s) %s", self.name, note.message)

    async def _apply_tracking(self) -> None:
        verdict = self.tracking.verdict()
        previous = self._applied or Verdict(False, self.conf.priority, "")
        self._applied = verdict
        now = trio.current_time()
        if verdict.priority != previous.priority and verdict.priority != 255:
            reason = verdict.reason or "tracked items restored"
            log.info(
                "(%s) priority %d -> %d (%s)",
                self.name,
                previous.priority,
                verdict.priority,
                reason,
            )
            await self._execute(self.machine.set_priority(now, verdict.priority, reason))
        if verdict.faulty != previous.faulty:
            reason = verdict.reason if verdict.faulty else "tracked items recovered"
            await self._execute(self.machine.set_fault(now, verdict.faulty, reason))

    async def _reconfigure(self, conf: VrrpInstance, tracking: InstanceTracking) -> None:
        from pyalived.reload import vip_key

        old_keys = {vip_key(v) for v in self.vips}
        new_vips = conf.virtual_ipaddress + conf.virtual_ipaddress_excluded
        new_keys = {vip_key(v) for v in new_vips}
        added = tuple(v for v in new_vips if vip_key(v) not in old_keys)
        removed = tuple(v for v in self.vips if vip_key(v) not in new_keys)
        if conf.name != self.name:
            log.info("(%s) renamed to %s", self.name, conf.name)
        self.conf = conf
        self.name = conf.name
        self.vips = new_vips
        self.destinations = conf.unicast_peer or (self._multicast_group,)
        self._auth_type, self._auth_data = auth_fields(conf)
        self._expect = _expectation(conf)
        # Carry the known results over to the new tracking set.
        for name in tracking.script_names:
            ok = self.tracking.script_ok(name)
            if ok is not None:
                tracking.update_script(name, ok)
        if self._links is not None:
            for ifname in tracking.interface_names:
                tracking.update_link(ifname, self._links.is_up(ifname))
        self.tracking = tracking
        now = trio.current_time()
        await self._execute(self.machine.reconfigure(now, machine_config(conf, self.src_ip)))
        if self.machine.state is State.MASTER:
            if removed:
                await self._vip_change(removed, adding=False)
            if added:
                await self._vip_change(added, adding=True)
                self._send_garp(GarpKind.MASTER, added)
        await self._apply_tracking()

    # -- executing actions --

    async def _execute(self, actions: Sequence[Action]) -> None:
        deferred: list[AddVips | RemoveVips] = []
        for action in actions:
            if isinstance(action, SendAdvert):
                self._send_advert(action.priority)
            elif isinstance(action, SendGarp):
                self._send_garp(action.kind)
            elif isinstance(action, StateChanged):
                self._state_changed(action)
            else:
                deferred.append(action)
        for vip_action in deferred:
            await self._vip_action(vip_action)

    def _send_advert(self, priority: int) -> None:
        advert = packet.Advert(
            vrid=self.conf.virtual_router_id,
            priority=priority,
            advert_int=max(1, round(self.conf.advert_int)),
            addresses=tuple(v.ip for v in self.conf.virtual_ipaddress),
            auth_type=self._auth_type,
            auth_data=self._auth_data,
        )
        auth = self.conf.authentication
        sock = self._sockets.advert(self.xmit_dev, self.proto)
        for dst in self.destinations:
            self._ip_id = (self._ip_id + 1) & 0xFFFF
            if self.proto == packet.AH_PROTO:
                self._ah_seq = (self._ah_seq + 1) & 0xFFFFFFFF
            datagram = packet.build_datagram(
                self.src_ip,
                dst,
                advert,
                ip_id=self._ip_id,
                auth=auth.type if auth else None,
                auth_key=auth.password if auth else b"",
                ah_seq=self._ah_seq,
            )
            try:
                sock.send(datagram, dst)
            except OSError as exc:
                self._counters.tx_errors[self.name] += 1
                log.warning("(%s) sending advert to %s failed: %s", self.name, dst, exc)
            else:
                self._counters.adverts_sent[self.name] += 1
                if priority == 0:
                    self._counters.priority_zero_sent[self.name] += 1

    def _garp_count(self, kind: GarpKind) -> int:
        if kind is GarpKind.MASTER:
            return self.conf.garp_master_repeat
        if kind is GarpKind.REFRESH:
            return self.conf.garp_master_refresh_repeat
        if self.conf.garp_lower_prio_repeat is not None:
            return self.conf.garp_lower_prio_repeat
        return self.conf.garp_master_repeat

    def _garp_devs(self, vips: Sequence[VirtualIP]) -> dict[str, tuple[IPv4Address, ...]]:
        by_dev: dict[str, list[IPv4Address]] = {}
        for vip in vips:
            by_dev.setdefault(vip.dev or self.garp_dev, []).append(vip.ip)
        return {dev: tuple(ips) for dev, ips in by_dev.items()}

    def _open_garp_sockets(self) -> None:
        """Open the GARP sockets now: a failover then needs no new file descriptor."""
        for dev in self._garp_devs(self.vips):
            try:
                self._sockets.garp(dev)
            except OSError as exc:  # tried again when a burst is due
                log.warning("(%s) cannot open the gratuitous ARP socket on %s yet: %s",
                            self.name, dev, exc)

    def _send_garp(self, kind: GarpKind, vips: Sequence[VirtualIP] | None = None) -> None:
        count = self._garp_count(kind)
        vips = self.vips if vips is None else vips
        if count <= 0 or not vips:
            return
        for dev, ips in self._garp_devs(vips).items():
            self._garp_burst(dev, ips, count, 1)

    def _garp_burst(self, dev: str, ips: tuple[IPv4Address, ...], count: int,
                    attempt: int) -> None:
        try:
            self._sockets.garp(dev).send_garp(ips, count)
        except OSError as exc:
            self._counters.tx_errors[self.name] += 1
            if not _garp_retryable(exc):
                log.warning("(%s) sending gratuitous ARP on %s failed: %s", self.name, dev, exc)
            elif attempt < GARP_RETRY_LIMIT:
                self._garp_retries.append(_GarpRetry(
                    trio.current_time() + GARP_RETRY_INTERVAL, dev, ips, count, attempt + 1))
                self._garp_log.log(
                    logging.ERROR,
                    "(%s) sending gratuitous ARP on %s failed: %s (internal error; "
                    "retrying every %g s)", self.name, dev, exc, GARP_RETRY_INTERVAL)
            else:
                log.error("(%s) sending gratuitous ARP on %s failed %d times, giving up: %s",
                          self.name, dev, attempt, exc)
        else:
            self._counters.garps_sent[self.name] += count * len(ips)
            if attempt > 1:
                log.info("(%s) gratuitous ARP on %s sent at attempt %d",
                         self.name, dev, attempt)

    def _retry_garps(self, now: float) -> None:
        """Send the failed GARP bursts that are due again (only while MASTER)."""
        if not self._garp_retries:
            return
        if self.machine.state is not State.MASTER:
            self._garp_retries.clear()
            return
        due = [r for r in self._garp_retries if r.due <= now]
        if due:
            self._garp_retries = [r for r in self._garp_retries if r.due > now]
            for r in due:
                self._garp_burst(r.dev, r.ips, r.count, r.attempt)

    async def _vip_action(self, action: AddVips | RemoveVips) -> None:
        await self._vip_change(self.vips, adding=isinstance(action, AddVips))

    async def _vip_change(self, vips: tuple[VirtualIP, ...], *, adding: bool) -> None:
        if not vips:
            return
        try:
            if adding:
                await self._addresses.add(self.vip_dev, vips)
            else:
                await self._addresses.remove(self.vip_dev, vips)
        except OSError as exc:
            log.error(
                "(%s) %s virtual addresses failed: %s",
                self.name,
                "adding" if adding else "removing",
                exc,
            )
        else:
            log.debug(
                "(%s) %s %d virtual address(es)",
                self.name,
                "added" if adding else "removed",
                len(vips),
            )

    def _state_changed(self, change: StateChanged) -> None:
        log.info("(%s) %s -> %s: %s", self.name, change.old.name, change.new.name, change.reason)
        self._counters.transitions[(self.name, change.new.name)] += 1
        if change.new is not State.BACKUP:
            # No longer listening to a master: accept its restarted AH count.
            self._ah_last = None
        if change.new is not State.MASTER:
            self._garp_retries.clear()  # announcing addresses is no longer ours to do
        if change.new is State.INIT:
            self._stop_notified = True
        self._notify(change.new)
        for listener in self.state_listeners:
            listener(self, change)

    def _notify(self, state: State) -> None:
        notify = self.conf.notify
        script = state_script(notify, state)
        if script:
            self._scripts.notify(split_command(script), self._script_user)
        if notify.generic:
            priority = (
                self._stop_priority if state is State.INIT else self.machine.effective_priority
            )
            argv = [
                *split_command(notify.generic),
                "INSTANCE",
                self.name,
                _NOTIFY_STATE[state],
                str(priority),
            ]
            self._scripts.notify(argv, self._script_user)

    async def _stop(self) -> None:
        if self.started:
            self.started = False
            # keepalived reports the priority the instance ran with, not the
            # priority 0 of its last advert, to the STOP notification.
            self._stop_priority = self.machine.effective_priority
            await self._execute(self.machine.shutdown(trio.current_time()))
            if not self._stop_notified:
                log.info("(%s) stopped", self.name)
                self._notify(State.INIT)
                self._stop_notified = True
        if self._vmac is not None and self.vmac_name is not None:
            try:
                await self._vmac.delete(self.vmac_name)
            except OSError as exc:
                log.error("(%s) deleting %s failed: %s", self.name, self.vmac_name, exc)


# ---- all instances of a config ----------------------------------------------


@dataclass
class VrrpPorts:
    sockets: SocketFactory
    addresses: AddressManager
    vmac: VmacManager
    links: LinkWatcher
    scripts: ScriptRunner
    primary_ip: Callable[[str], IPv4Address]  # an interface's primary IPv4 address
    wakeup: Wakeup | None = None  # exact timer wake-ups (pyalived.vrrp.wakeup); None: epoll's


def _group_of(config: Config, name: str) -> VrrpSyncGroup | None:
    for group in config.vrrp_sync_groups:
        if name in group.group:
            return group
    return None


def build_tracking(config: Config, conf: VrrpInstance) -> InstanceTracking:
    """The tracked scripts and interfaces of one instance (with its sync group's)."""
    group = _group_of(config, conf.name)
    refs = conf.track_script + (group.track_script if group else ())
    scripts: list[Tracked] = []
    for ref in refs:
        try:
            script = config.script(ref.name)
        except KeyError:
            continue
        scripts.append(Tracked(ref.name, ref.weight if ref.weight is not None else script.weight))
    interfaces = [
        Tracked(t.name, t.weight)
        for t in conf.track_interface + (group.track_interface if group else ())
    ]
    if not conf.dont_track_primary:
        interfaces.insert(0, Tracked(conf.interface, 0))
    return InstanceTracking(conf.priority, scripts, interfaces)


def build_instances(
    config: Config,
    ports: VrrpPorts,
    pool: SocketPool,
    demux: Demux,
    counters: VrrpCounters,
    only: Sequence[VrrpInstance] | None = None,
) -> list[Instance]:
    """The ``Instance`` of every configured instance (or of ``only`` those).

    Sync groups are wired among the built instances; with ``only``, a group
    is wired when all of its members are being built (a reload restarts a
    changed group whole).
    """
    gd = config.global_defs
    confs = config.vrrp_instances if only is None else tuple(only)
    building = {conf.name for conf in confs}
    wired = [g for g in config.vrrp_sync_groups if set(g.group) <= building]
    groups: dict[str, SyncGroup] = {}
    for group_conf in wired:
        sync = SyncGroup(group_conf.name, group_conf.group)
        for member in group_conf.group:
            groups[member] = sync

    def machine_for(conf: VrrpInstance) -> Callable[[MachineConfig], VrrpMachine]:
        return functools.partial(VrrpMachine, sync=groups.get(conf.name))

    instances = [
        Instance(
            conf,
            primary_ip=ports.primary_ip(conf.interface),
            sockets=pool,
            demux=demux,
            addresses=ports.addresses,
            scripts=ports.scripts,
            counters=counters,
            vmac=ports.vmac,
            links=ports.links,
            tracking=build_tracking(config, conf),
            multicast_group=gd.vrrp_mcast_group4,
            script_user=gd.script_user,
            machine_factory=machine_for(conf),
            wakeup=ports.wakeup,
        )
        for conf in confs
    ]
    by_name = {inst.name: inst for inst in instances}
    for group_conf in wired:
        follower = _SyncFollower(
            groups[group_conf.group[0]], group_conf, by_name, ports.scripts, gd.script_user
        )
        for member in group_conf.group:
            by_name[member].state_listeners.append(follower)
    return instances


class _SyncFollower:
    """Makes a sync group's members follow each other, and runs the group's notify scripts.

    Each member's ``StateChanged`` goes to the pure ``SyncGroup``; the transitions it
    orders are posted to the other members' inboxes (never executed re-entrantly).  When
    every member has reached the same state the group's own notify scripts run once, with
    keepalived's arguments (``GROUP NAME STATE`` for the generic ``notify`` script).
    """

    def __init__(
        self,
        sync: SyncGroup,
        conf: VrrpSyncGroup,
        members: dict[str, Instance],
        scripts: ScriptRunner,
        script_user: str | None,
    ) -> None:
        self._sync = sync
        self._conf = conf
        self._members = members
        self._scripts = scripts
        self._user = script_user
        self._notified: State | None = None

    def __call__(self, inst: Instance, change: StateChanged) -> None:
        for forced in self._sync.state_changed(inst.name, change):
            self._members[forced.member].force_state(forced.state, forced.reason)
        states = {self._sync.state_of(m) for m in self._conf.group}
        if len(states) == 1:
            (state,) = states
            if state is not self._notified:
                self._notified = state
                self._notify_group(state)

    def _notify_group(self, state: State) -> None:
        notify = self._conf.notify
        script = state_script(notify, state)
        if script:
            self._scripts.notify(split_command(script), self._user)
        if notify.generic:
            argv = [*split_command(notify.generic), "GROUP", self._conf.name, _NOTIFY_STATE[state]]
            self._scripts.notify(argv, self._user)


class VrrpRuntime:
    """The running VRRP half of a config; ``apply`` moves it to a reloaded config.

    Every instance runs in its own cancel scope under the runtime's nursery, so
    a reload can stop one (gracefully: priority-0 advert if MASTER) without
    touching the others.  The receivers, the link dispatcher and one tracker
    per ``vrrp_script`` are shared; their subscriber lists are edited in place
    on reload, and a tracker is restarted only when its script changed.
    """

    def __init__(
        self,
        config: Config,
        ports: VrrpPorts,
        counters: VrrpCounters | None = None,
        *,
        on_instances: Callable[[Sequence[Instance], Sequence[Instance]], None] | None = None,
    ) -> None:
        self.config = config
        self.ports = ports
        self.counters = counters if counters is not None else VrrpCounters()
        self.pool = SocketPool(ports.sockets)
        self.demux = Demux(self.pool, self.counters)
        self.instances: list[Instance] = []
        # Called with (all instances, newly built ones) at start and after each reload.
        self.on_instances = on_instances
        self._running: dict[Instance, tuple[trio.CancelScope, trio.Event]] = {}
        self._link_subs: dict[str, list[Callable[[str, bool], None]]] = {}
        self._link_dispatch = False
        self._script_subs: dict[str, list[Callable[[str, bool], None]]] = {}
        self._trackers: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()

    async def run(
        self, *, task_status: trio.TaskStatus[VrrpRuntime] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every instance; run until cancelled, then stop them gracefully."""
        try:
            self.instances = build_instances(
                self.config, self.ports, self.pool, self.demux, self.counters
            )
            if self.on_instances is not None:
                self.on_instances(self.instances, self.instances)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.demux.run)
                await self._sync_links()
                for inst in self.instances:
                    await self._start(inst)
                await self._sync_scripts(())
                task_status.started(self)
        finally:
            self._nursery = None
            self.pool.close()

    async def apply(self, config: Config, plan: ReloadPlanLike) -> None:
        """Move to ``config`` as ``plan`` (``pyalived.reload.plan_reload``) says."""
        from pyalived.reload import instance_key

        async with self._lock:
            by_key = {instance_key(inst.conf): inst for inst in self.instances}
            for conf in [*plan.removed, *(u.old for u in plan.restarted)]:
                inst = by_key.pop(instance_key(conf), None)
                if inst is not None:
                    await self._stop(inst)
            for upd in plan.in_place:
                inst = by_key.get(instance_key(upd.old))
                if inst is not None:
                    await inst.reconfigure(upd.new, build_tracking(config, upd.new))
            fresh_confs = [*plan.added, *(u.new for u in plan.restarted)]
            fresh = build_instances(
                config, self.ports, self.pool, self.demux, self.counters, only=fresh_confs
            )
            for inst in fresh:
                by_key[instance_key(inst.conf)] = inst
            self.config = config
            self.instances = [by_key[instance_key(c)] for c in config.vrrp_instances]
            if self.on_instances is not None:
                self.on_instances(self.instances, fresh)
            await self._sync_links()
            for inst in fresh:
                await self._start(inst)
            await self._sync_scripts(plan.scripts_changed)

    # -- internals --

    def _nursery_or_fail(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("the VRRP runtime is not running")
        return self._nursery

    async def _start(self, inst: Instance) -> None:
        done = trio.Event()

        async def runner(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with trio.CancelScope() as scope:
                    self._running[inst] = (scope, done)
                    await inst.run(task_status=task_status)
            finally:
                self._running.pop(inst, None)
                done.set()

        await self._nursery_or_fail().start(runner)

    async def _stop(self, inst: Instance) -> None:
        entry = self._running.get(inst)
        if entry is not None:
            scope, done = entry
            scope.cancel()
            await done.wait()
        self.demux.unregister(inst.conf.virtual_router_id, inst.deliver)

    async def _sync_links(self) -> None:
        subs: dict[str, list[Callable[[str, bool], None]]] = {}
        for inst in self.instances:
            for ifname in inst.tracking.interface_names:
                subs.setdefault(ifname, []).append(inst.post_link)
        self._link_subs.clear()
        self._link_subs.update(subs)
        if subs and not self._link_dispatch:
            self._link_dispatch = True
            await self._nursery_or_fail().start(
                run_link_dispatch, self.ports.links, self._link_subs
            )

    async def _sync_scripts(self, changed: Sequence[str]) -> None:
        subs: dict[str, list[Callable[[str, bool], None]]] = {}
        for inst in self.instances:
            for name in inst.tracking.script_names:
                subs.setdefault(name, []).append(inst.post_script)
        for name in list(self._trackers):
            if name not in subs or name in changed:
                self._trackers.pop(name).cancel()
        for name in list(self._script_subs):
            if name not in subs:
                del self._script_subs[name]
        for name, targets in subs.items():
            self._script_subs.setdefault(name, [])[:] = targets
            if name not in self._trackers:
                await self._nursery_or_fail().start(self._tracker, self.config.script(name))

    async def _tracker(
        self, script: VrrpScript, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as scope:
            self._trackers[script.name] = scope
            await run_script_tracker(
                script,
                self.ports.scripts,
                self._script_subs[script.name],
                default_user=self.config.global_defs.script_user,
                task_status=task_status,
            )


class _UpdateLike(Protocol):
    @property
    def old(self) -> VrrpInstance: ...
    @property
    def new(self) -> VrrpInstance: ...


class ReloadPlanLike(Protocol):
    """What ``VrrpRuntime.apply`` reads of a ``pyalived.reload.ReloadPlan``."""

    @property
    def added(self) -> Sequence[VrrpInstance]: ...
    @property
    def removed(self) -> Sequence[VrrpInstance]: ...
    @property
    def in_place(self) -> Sequence[_UpdateLike]: ...
    @property
    def restarted(self) -> Sequence[_UpdateLike]: ...
    @property
    def scripts_changed(self) -> Sequence[str]: ...


async def run_vrrp(
    config: Config,
    ports: VrrpPorts,
    counters: VrrpCounters | None = None,
    *,
    on_instances: Callable[[list[Instance]], None] | None = None,
    task_status: trio.TaskStatus[list[Instance]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every VRRP instance of ``config`` until cancelled, then stop them gracefully."""

    def first_only(all_instances: Sequence[Instance], fresh: Sequence[Instance]) -> None:
        if on_instances is not None and all_instances is fresh:
            on_instances(list(all_instances))

    runtime = VrrpRuntime(config, ports, counters, on_instances=first_only)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        task_status.started(runtime.instances)
