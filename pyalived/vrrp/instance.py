"""The trio driver of one VRRP instance.

Theory of operation: every configured ``vrrp_instance`` becomes an
``Instance``, one trio task that owns a pure ``VrrpMachine`` and feeds it
events: its timer (``get_timer()`` compared with ``trio.current_time()``),
received adverts, tracking verdicts, sync-group orders and reloads.
Everything that reaches the task goes through its inbox, so the machine is
only ever touched by its own task, one event at a time.  The decisions are
not made here: the machine decides transitions and their actions, and the
pure helpers decide the rest -- what the configuration means
(``pyalived.vrrp.compile``), AH anti-replay (``pyalived.vrrp.ah_replay``),
removing stale VIPs at start (``fsm.start_cleanup``), the VIP work of a
reload (``pyalived.reload.reload_vip_change``), tracking verdicts
(``pyalived.vrrp.tracking``) and notify commands (``pyalived.vrrp.notify``).
This module executes them.

Reception: the ``Demux`` (``pyalived.vrrp.demux``) calls ``deliver`` with
each datagram carrying this instance's VRID and its arrival time; the task
applies the instance's own checks (``packet.verify``: authentication,
address list, advert interval; then the AH sequence) before the machine
sees it.  Every ``PacketError`` is counted by reason in ``VrrpCounters`` and
dropped.  A peer announcing other addresses than ours is also logged, as a
warning once per change of its list (``pyalived.vrrp.peer_addresses``), not
once per advert.  Adverts beyond ``INBOX_SIZE`` queued ones are dropped as
``queue_full``; control events never are.

Timing: an advert's ``now`` is the time it arrived, not the time its
instance got round to it (but never earlier than an event the machine has
already seen), so the Master_Down timer of RFC 3768 §6.4.2 runs from the
advert's arrival, however busy the loop was.  Before each wait the instance
posts its next deadline to the optional ``Wakeup`` port
(``pyalived.vrrp.wakeup``), which wakes the loop at that exact moment
instead of whenever epoll's rounded, slack-stretched timeout ends.

Actions are executed in the machine's order, with one exception: adding or
removing VIPs (a netlink round trip) is done after the adverts and gratuitous
ARPs of the same batch, so that a new master announces itself first.  A
``no_accept`` instance's VIPs are blocked by the ``VipFirewall``
(``pyalived.vrrp.firewall``) before they are added and unblocked after they
are removed; a reload switching the mode blocks or unblocks a MASTER's VIPs
in place.
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
``unicast_src_ip``.  An IPv6 instance (RFC 5798 §5.1.2, always VRRPv3)
sends the VRRP message alone through the pool's raw IPv6 socket
(``pyalived.vrrp.net6``), from its interface's link-local address (or
``unicast_src_ip``) to ``vrrp_mcast_group6`` (ff02::12) or its peers, and
registers with the demux's IPv6 receiver; an advert of the other family is
ignored.  The bursts of a takeover announce IPv4 addresses by gratuitous ARP
and IPv6 ones by unsolicited neighbour advertisements (RFC 5798 §6.4.2,
``pyalived.vrrp.ndisc``), with the same delays, repeats, refreshes and
retries, whichever family the instance is (``virtual_ipaddress_excluded``
may hold both).  With ``gna_interval`` (keepalived's ``vrrp_gna_interval``)
the NAs of a burst go out one per interval, the loop waking for each; only
the first of them is retried on a shortage.  With ``use_vmac`` adverts,
GARPs and NAs leave through the VMAC interface unless ``vmac_xmit_base``.
The ``virtual_routes`` and ``virtual_rules`` follow the VIPs through the
``RouteManager`` port: added right after the VIPs (a route may use one as
its source or reach its gateway through one's subnet), removed right
before them, wherever the VIPs are (becoming MASTER; leaving it for BACKUP
or FAULT; the stop; the clean-up of a start that is not MASTER, which
removes what a killed predecessor left); a reload on a MASTER deletes the
dropped ones and adds the new ones only.
On cancellation the instance runs ``shutdown`` (a master sends a
priority-0 advert, RFC 3768 §6.4.3, and drops its VIPs), runs its stop
notify scripts and deletes its VMAC inside a shielded scope with a time
limit, so a daemon stop completes even though the surrounding nursery is
being cancelled.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import trio

from pyalived.config.model import VirtualIP, VirtualRoute, VirtualRule, VrrpInstance
from pyalived.limits import LogThrottle, is_resource_exhaustion
from pyalived.reload import difference, reload_vip_change
from pyalived.scripts import ScriptRunner
from pyalived.vrrp import packet
from pyalived.vrrp.ah_replay import AhReplayGuard
from pyalived.vrrp.compile import (
    advert_destinations,
    advert_for,
    advert_for_v3,
    advert_proto,
    advert_source,
    expectation,
    expectation_v3,
    garp_count,
    instance_vips,
    machine_config,
    v3_checksum,
)
from pyalived.vrrp.counters import VrrpCounters
from pyalived.vrrp.demux import Demux, V3Route
from pyalived.vrrp.firewall import VipFirewall, blocked, blocks
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
    start_cleanup,
)
from pyalived.vrrp.garp_pacing import GarpPacer
from pyalived.vrrp.notify import NOTIFY_STATE, notify_runs
from pyalived.vrrp.peer_addresses import PeerAddressWatch
from pyalived.vrrp.ports import (
    AddressManager,
    GarpSocket,
    LinkWatcher,
    RouteManager,
    StateAlerts,
    VmacManager,
    Wakeup,
)
from pyalived.vrrp.socket_pool import SocketPool
from pyalived.vrrp.tracking import InstanceTracking, Verdict
from pyalived.vrrp.v3_checksum import ChecksumMode

log = logging.getLogger("pyalived.vrrp")

STOP_TIMEOUT = 5.0  # seconds allowed for a graceful stop of one instance
INBOX_SIZE = 256  # queued events per instance before received adverts are dropped
#: Seconds between attempts at a GARP burst that failed for lack of resources.
GARP_RETRY_INTERVAL = 0.5
#: Attempts at such a burst (the first included) before it is given up.
GARP_RETRY_LIMIT = 20
#: Seconds between two log lines about GARP bursts failing for lack of resources.
GARP_ERROR_LOG_INTERVAL = 10.0
#: Seconds between checks for a missing interface (dynamic_interfaces), besides its link events.
INTERFACE_POLL = 1.0


@dataclass(frozen=True)
class _Rx:
    received: packet.Received | packet.ReceivedV3
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
class _File:
    name: str
    value: int


@dataclass(frozen=True)
class _Process:
    name: str
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


_Event = _Rx | _Script | _Link | _Force | _Reconf | _Tick | _File | _Process


@dataclass(frozen=True)
class _SpacedNa:
    """One frame of a paced burst (``pyalived.vrrp.garp_pacing``), due later: a
    gratuitous ARP for an IPv4 address, an unsolicited NA for an IPv6 one."""

    due: float  # trio time
    dev: str
    ip: packet.IPAddress


@dataclass(frozen=True)
class _GarpRetry:
    """A GARP burst to send again (it failed for lack of resources)."""

    due: float  # trio time
    dev: str
    ips: tuple[packet.IPAddress, ...]
    count: int
    attempt: int  # the attempt this will be (2 for the first retry)


def _garp_retryable(exc: OSError) -> bool:
    """A send that failed because this host was short of something, not the link."""
    return is_resource_exhaustion(exc) or isinstance(exc, BlockingIOError)


StateListener = Callable[["Instance", StateChanged], None]


class Instance:
    """One VRRP instance: a machine, its inbox and the execution of its actions."""

    def __init__(
        self,
        conf: VrrpInstance,
        *,
        primary_ip: packet.IPAddress,
        sockets: SocketPool,
        demux: Demux,
        addresses: AddressManager,
        scripts: ScriptRunner,
        counters: VrrpCounters,
        vmac: VmacManager | None = None,
        links: LinkWatcher | None = None,
        tracking: InstanceTracking | None = None,
        multicast_group: IPv4Address = packet.VRRP_MCAST_GROUP,
        multicast_group6: IPv6Address = packet.VRRP_MCAST_GROUP6,
        script_user: str | None = None,
        script_group: str | None = None,
        machine_factory: Callable[[MachineConfig], VrrpMachine] = VrrpMachine,
        wakeup: Wakeup | None = None,
        alerts: StateAlerts | None = None,
        firewall: VipFirewall | None = None,
        routes: RouteManager | None = None,
        pacer: GarpPacer | None = None,
        start_at: float | None = None,
        interface_index: Callable[[str], int | None] | None = None,
        resolve_address: Callable[[], packet.IPAddress] | None = None,
    ) -> None:
        self.conf = conf
        self._alerts = alerts
        self._firewall = firewall
        self._routes = routes  # virtual_routes / virtual_rules; None: not managed
        # dynamic_interfaces: the interface's index, None while it does not exist (no
        # callable: it must exist, as checked when the configuration was read), and
        # once it does, the instance's own address.
        self._interface_index = interface_index
        self._resolve_address = resolve_address
        self._ifindex: int | None = None  # of the interface the sockets were opened on
        self._recreated = False  # deleted and created again, not usable yet: FAULT
        self._recheck_at = math.inf
        # vrrp_startup_delay: the instance starts at this trio time, not at once.
        self._start_at = start_at
        self._machine_factory = machine_factory
        self._pacer = pacer if pacer is not None else GarpPacer()
        self.name = conf.name
        self.family = conf.family  # 6: VRRPv3 over IPv6 (RFC 5798 §5.1.2)
        self.primary_ip = primary_ip
        self.src_ip = advert_source(conf, primary_ip)
        self._sockets = sockets
        self._addresses = addresses
        self._scripts = scripts
        self._counters = counters
        self._vmac = vmac if conf.use_vmac else None
        self._links = links
        self._script_user = script_user
        self._script_group = script_group
        self.proto = advert_proto(conf)
        self._use_vmac_name(conf.effective_vmac_name)
        self._multicast_group6 = multicast_group6
        self.destinations = advert_destinations(conf, multicast_group, multicast_group6)
        self.vips = instance_vips(conf)
        self.tracking = tracking or InstanceTracking(conf.priority)
        self._multicast_group = multicast_group
        self.machine = machine_factory(machine_config(conf, self.src_ip))
        self.state_listeners: list[StateListener] = []
        self._inbox_tx, self._inbox_rx = trio.open_memory_channel[_Event](math.inf)
        self._ip_id = 0
        self._ah_seq = 0
        self._ah_replay = AhReplayGuard()
        self._peer_lists = PeerAddressWatch()  # peers' differing address lists, to log
        self._last_src: packet.IPAddress | None = None  # of the last advert that counted
        self._expect = expectation(conf)
        self._expect_v3 = expectation_v3(conf)
        self._checksum = ChecksumMode(v3_checksum(conf))  # VRRPv3 only
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
        self._spaced_nas: list[_SpacedNa] = []
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
        self,
        received: packet.Received | packet.ReceivedV3,
        datagram: bytes,
        received_at: float | None = None,
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

    def post_file(self, name: str, value: int) -> None:
        """A track file's value; before the task runs it is simply recorded."""
        if self.started:
            self._post(_File(name, value))
        else:
            self.tracking.update_file(name, value)

    def post_process(self, name: str, up: bool) -> None:
        """A tracked process's status; before the task runs it is simply recorded."""
        if self.started:
            self._post(_Process(name, up))
        else:
            self.tracking.update_process(name, up)

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
            if self._start_at is not None:  # still waiting to start: start with ``conf``
                self._pending_conf(conf, tracking)
            return
        done = trio.Event()
        self._post(_Reconf(conf, tracking, done))
        await done.wait()

    def _post(self, event: _Event) -> None:
        # Control events are never dropped (the inbox is unbounded; only
        # received adverts are limited, in ``deliver``).
        self._inbox_tx.send_nowait(event)

    # -- the task --

    def _interface_ready(self) -> bool:
        """dynamic_interfaces: the interface exists and has the address adverts leave from."""
        assert self._interface_index is not None
        index = self._interface_index(self.conf.interface)
        if index is None:
            return False
        self._ifindex = index
        if self._resolve_address is not None:
            try:
                self.primary_ip = self._resolve_address()
            except OSError:
                return False
            self.src_ip = advert_source(self.conf, self.primary_ip)
        return True

    async def _await_interface(self, task_status: trio.TaskStatus[None]) -> None:
        """dynamic_interfaces: FAULT until the interface exists (checked on each of its
        link events, and every ``INTERFACE_POLL`` seconds for its address)."""
        ifname = self.conf.interface
        self._floor = now = trio.current_time()
        self.started = True
        log.warning("(%s) interface %s does not exist: FAULT until it appears "
                    "(dynamic_interfaces)", self.name, ifname)
        await self._execute(self.machine.set_fault(now, True, f"interface {ifname} is missing"))
        await self._execute(self.machine.start(now))
        task_status.started()
        while not self._interface_ready():
            event: _Event | None = None
            with trio.move_on_after(INTERFACE_POLL):
                event = await self._inbox_rx.receive()
            if isinstance(event, _Reconf):
                try:
                    self._pending_conf(event.conf, event.tracking, keep_machine=True)
                    await self._execute(self.machine.reconfigure(
                        trio.current_time(), machine_config(self.conf, self.src_ip)))
                finally:
                    event.done.set()
            elif isinstance(event, _Script):
                self.tracking.update_script(event.name, event.ok)
            elif isinstance(event, _Force):
                await self._execute(self.machine.force_state(
                    trio.current_time(), event.state, event.reason))
        await self._execute(self.machine.reconfigure(
            trio.current_time(), machine_config(self.conf, self.src_ip)))
        log.info("(%s) interface %s exists now (%s)", self.name, ifname, self.primary_ip)

    def _pending_conf(self, conf: VrrpInstance, tracking: InstanceTracking,
                      keep_machine: bool = False) -> None:
        """A reload before the delayed start: the instance will start with ``conf``."""
        self.conf = conf
        self.name = conf.name
        self.vips = instance_vips(conf)
        self.destinations = advert_destinations(
            conf, self._multicast_group, self._multicast_group6
        )
        self._expect = expectation(conf)
        self._expect_v3 = expectation_v3(conf)
        self.tracking = tracking
        if not keep_machine:
            self.machine = self._machine_factory(machine_config(conf, self.src_ip))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            if self._start_at is not None and trio.current_time() < self._start_at:
                # vrrp_startup_delay: nothing is opened, sent or heard until then.
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                await trio.sleep_until(self._start_at)
            self._start_at = None
            waited = False
            if self._interface_index is not None and not self._interface_ready():
                await self._await_interface(task_status)
                task_status = trio.TASK_STATUS_IGNORED
                waited = True
            elif self._interface_index is not None:
                self._ifindex = self._interface_index(self.conf.interface)
            if self._vmac is not None and self.conf.effective_vmac_name is not None:
                self._use_vmac_name(await self._vmac.create(
                    self.conf.interface, self.conf.effective_vmac_name,
                    self.conf.virtual_router_id, self.family,
                ))
            if self.family == 6:
                self._sockets.advert6(self.xmit_dev)
            else:
                self._sockets.advert(self.xmit_dev, self.proto)
            self._open_garp_sockets()
            # With a VMAC the peers' adverts carry the virtual MAC as source; a private
            # macvlan delivers those frames to the VMAC only, so listen where we send
            # (and only once the VMAC exists).
            if self.family == 6:
                self._demux.register6(self.xmit_dev, self.conf.virtual_router_id, self.deliver)
            else:
                self._demux.register(
                    self.xmit_dev, self.proto, self.conf.virtual_router_id, self.deliver,
                    self._v3_route(),
                )
            if self._links is not None:
                for ifname in self.tracking.interface_names:
                    self.tracking.update_link(ifname, self._links.is_up(ifname))
            self._floor = now = trio.current_time()
            self.started = True
            if waited:
                actions = self.machine.set_fault(
                    now, False, f"interface {self.conf.interface} appeared")
            else:
                actions = self.machine.start(now)
            await self._execute(actions)
            await self._execute(start_cleanup(self.machine.state, actions))
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
            retry_at = min([r.due for r in self._garp_retries]
                           + [n.due for n in self._spaced_nas], default=math.inf)
            if self._recreated:
                retry_at = min(retry_at, self._recheck_at)
            event: _Event | None = None
            with trio.move_on_at(min(wait_until, retry_at)):
                event = await self._inbox_rx.receive()
            if event is not None and not isinstance(event, _Tick):
                await self._handle(event)
                continue
            if self._recreated and trio.current_time() >= self._recheck_at:
                await self._resume_recreated(trio.current_time())
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
            if event.ifname == self.conf.interface:
                self._check_recreated()
            await self._apply_tracking()
        elif isinstance(event, _File):
            self.tracking.update_file(event.name, event.value)
            await self._apply_tracking()
        elif isinstance(event, _Process):
            self.tracking.update_process(event.name, event.up)
            await self._apply_tracking()
        elif isinstance(event, _Reconf):
            try:
                await self._reconfigure(event.conf, event.tracking)
            finally:
                event.done.set()
        elif isinstance(event, _Force):
            await self._execute(self.machine.force_state(now, event.state, event.reason))

    async def _received(
        self, now: float, received: packet.Received | packet.ReceivedV3, datagram: bytes
    ) -> None:
        if isinstance(received, packet.ReceivedV3):
            await self._received_v3(now, received)
            return
        if received.src == self.src_ip:
            log.debug("(%s) ignoring own advert", self.name)
            return
        # RFC 3768 §7.1, in its order: authentication, addresses, interval.  An advert
        # whose only fault is its address list still counts for the election, unless
        # vrrp_strict (see pyalived.vrrp.peer_addresses).
        try:
            packet.verify_auth(received, self._expect, datagram)
        except packet.PacketError as exc:
            self._dropped(received, exc, exc.reason)
            return
        # skip_check_adv_addr: no address check on adverts of the master heard last
        checked = not (self.conf.skip_check_adv_addr and received.src == self._last_src)
        mismatch = (packet.address_mismatch(received.advert.addresses, self._expect.addresses)
                    if checked else None)
        try:
            if mismatch is not None and self.conf.strict_mode:
                raise mismatch
            packet.verify_interval(received, self._expect)
            self._ah_replay.accept(received)
        except packet.PacketError as exc:
            self._dropped(received, exc, mismatch.reason if mismatch is not None else exc.reason,
                          checked)
            return
        self._last_src = received.src
        if mismatch is not None:
            self._counters.address_mismatches[(self.name, mismatch.reason)] += 1
        if checked:
            self._note_peer_addresses(received, None if mismatch is None else mismatch.reason,
                                      counted=True)
        self._counters.adverts_received[self.name] += 1
        self._counters.last_advert_received[self.name] = now
        if received.advert.priority == 0:
            self._counters.priority_zero_received[self.name] += 1
        await self._execute(
            self.machine.advert_received(now, received.src, received.advert.priority)
        )

    def _dropped(self, received: packet.Received, exc: packet.PacketError, reason: str,
                 checked: bool = True) -> None:
        """Count and forget an advert (``reason``: what it says of the peer's addresses)."""
        self._counters.rx_error(exc.reason, self.name)
        if checked:
            self._note_peer_addresses(received, reason, counted=False)
        log.debug("(%s) dropped advert from %s: %s", self.name, received.src, exc)

    def _note_peer_addresses(self, received: packet.Received, reason: str | None,
                             counted: bool) -> None:
        self._note_addresses(received.src, received.advert.addresses, self._expect.addresses,
                             reason, counted)

    def _note_addresses(self, src: packet.IPAddress, announced: Sequence[packet.IPAddress],
                        ours: Iterable[packet.IPAddress], reason: str | None,
                        counted: bool) -> None:
        """Log a change of a peer's address list (keepalived logs each such advert)."""
        note = self._peer_lists.observe(
            src, announced, ours, reason, counted
        )
        if note is not None:
            log.log(note.level, "(%s) %s", self.name, note.message)

    def _check_recreated(self) -> None:
        """dynamic_interfaces: the interface came back under another index.  The runtime
        has given the pool new sockets for it (``VrrpRuntime._link_changed``); the
        instance stays in FAULT until the new link has its address (which may come a
        little after the link), then takes it as its own again.  With a VMAC (deleted
        with its parent) it stays in FAULT until pyalived is restarted."""
        if self._interface_index is None or self._ifindex is None or self._recreated:
            return
        index = self._interface_index(self.conf.interface)
        if index is None or index == self._ifindex:
            return
        self._recreated = True
        self._recheck_at = trio.current_time()
        if self._vmac is not None:
            log.error("(%s) interface %s was deleted and created again (index %d, was %d), "
                      "and its VMAC with it: FAULT until pyalived is restarted",
                      self.name, self.conf.interface, index, self._ifindex)
        else:
            log.warning("(%s) interface %s was deleted and created again (index %d, "
                        "was %d)", self.name, self.conf.interface, index, self._ifindex)

    async def _resume_recreated(self, now: float) -> None:
        """The re-created interface is usable once it has its address: leave the pin."""
        self._recheck_at = now + INTERFACE_POLL
        if self._vmac is not None or not self._interface_ready():
            return
        self._recreated = False
        await self._execute(self.machine.reconfigure(now, machine_config(self.conf,
                                                                         self.src_ip)))
        log.info("(%s) interface %s usable again (%s)", self.name, self.conf.interface,
                 self.primary_ip)
        await self._apply_tracking()

    async def _apply_tracking(self) -> None:
        verdict = self.tracking.verdict()
        if self._recreated:
            verdict = Verdict(True, verdict.priority,
                              f"interface {self.conf.interface} was re-created")
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
        running_vips = self.vips
        routes_added, routes_removed = difference(self.conf.virtual_routes, conf.virtual_routes)
        rules_added, rules_removed = difference(self.conf.virtual_rules, conf.virtual_rules)
        if self.machine.state is State.MASTER:  # the dropped ones go in any case
            await self._route_change(routes_removed, rules_removed, adding=False)
        if conf.name != self.name:
            log.info("(%s) renamed to %s", self.name, conf.name)
        self.conf = conf
        self.name = conf.name
        self.vips = instance_vips(conf)
        self.destinations = advert_destinations(
            conf, self._multicast_group, self._multicast_group6
        )
        self._expect = expectation(conf)
        self._expect_v3 = expectation_v3(conf)
        # Carry the known results over to the new tracking set.
        for name in tracking.script_names:
            ok = self.tracking.script_ok(name)
            if ok is not None:
                tracking.update_script(name, ok)
        for name in tracking.file_names:
            value = self.tracking.file_value(name)
            if value is not None:
                tracking.update_file(name, value)
        for name in tracking.process_names:
            up = self.tracking.process_up(name)
            if up is not None:
                tracking.update_process(name, up)
        if self._links is not None:
            for ifname in tracking.interface_names:
                tracking.update_link(ifname, self._links.is_up(ifname))
        self.tracking = tracking
        now = trio.current_time()
        await self._execute(self.machine.reconfigure(now, machine_config(conf, self.src_ip)))
        change = reload_vip_change(running_vips, self.vips, self.machine.state)
        await self._vip_change(change.remove, adding=False)
        await self._accept_mode_changed()
        await self._vip_change(change.add, adding=True)
        if self.machine.state is State.MASTER:
            await self._route_change(routes_added, rules_added, adding=True)
        if change.announce:
            self._send_garp(GarpKind.MASTER, change.announce)
        await self._apply_tracking()

    # -- VRRPv3 (RFC 5798) --

    def _v3_route(self) -> V3Route | None:
        """How the demux parses this instance's adverts: VRRPv3 with the current checksum."""
        if self.conf.version != 3:
            return None
        return V3Route(self._checksum, self._multicast_group)

    async def _received_v3(self, now: float, received: packet.ReceivedV3) -> None:
        """The per-instance checks of RFC 5798 §7.1 (the address list), then the machine."""
        src = received.src
        if src == self.src_ip or src.version != self.family:
            log.debug("(%s) ignoring own advert", self.name)
            return
        # RFC 5798 §7.1: the addresses, treated as in VRRPv2 (see ``_received``)
        announced, ours = received.advert.addresses, self._expect_v3.addresses
        checked = not (self.conf.skip_check_adv_addr and src == self._last_src)
        mismatch = packet.address_mismatch(announced, ours) if checked else None
        if mismatch is not None and self.conf.strict_mode:
            self._counters.rx_error(mismatch.reason, self.name)
            self._note_addresses(src, announced, ours, mismatch.reason, counted=False)
            log.debug("(%s) dropped advert from %s: %s", self.name, src, mismatch)
            return
        self._last_src = src
        if mismatch is not None:
            self._counters.address_mismatches[(self.name, mismatch.reason)] += 1
        if checked:
            self._note_addresses(src, announced, ours,
                                 None if mismatch is None else mismatch.reason, counted=True)
        if self._checksum.observe(received):
            log.info("(%s) Setting unicast VRRPv3 checksum to old version (advert from %s)",
                     self.name, src)
        self._counters.adverts_received[self.name] += 1
        self._counters.last_advert_received[self.name] = now
        if received.advert.priority == 0:
            self._counters.priority_zero_received[self.name] += 1
        advert = received.advert
        await self._execute(
            self.machine.advert_received(now, src, advert.priority, advert.max_advert_int)
        )

    def _send_advert_v3(self, priority: int) -> None:
        """VRRPv3 adverts (RFC 5798 §5.1), with the instance's current checksum mode."""
        advert = advert_for_v3(self.conf, priority)
        if self.family == 6:
            self._send_advert_v6(advert)
            return
        sock = self._sockets.advert(self.xmit_dev, self.proto)
        for dst in self.destinations:
            assert isinstance(dst, IPv4Address) and isinstance(self.src_ip, IPv4Address)
            self._ip_id = (self._ip_id + 1) & 0xFFFF
            datagram = packet.build_datagram_v3(
                self.src_ip,
                dst,
                advert,
                ip_id=self._ip_id,
                checksum=self._checksum.mode,
                mcast_group=self._multicast_group,
            )
            self._sent(functools.partial(sock.send, datagram, dst), dst, priority)

    def _send_advert_v6(self, advert: packet.AdvertV3) -> None:
        """VRRPv3 over IPv6 (RFC 5798 §5.1.2): the message alone, from the link-local
        address (or ``unicast_src_ip``); the socket sets hop limit 255 and the kernel
        the checksum (``pyalived.vrrp.net6``)."""
        sock = self._sockets.advert6(self.xmit_dev)
        src = self.src_ip
        assert isinstance(src, IPv6Address)
        for dst in self.destinations:
            assert isinstance(dst, IPv6Address)
            message = packet.encode_v3(advert, src, dst)
            self._sent(functools.partial(sock.send6, message, src, dst), dst, advert.priority)

    def _sent(self, send: Callable[[], object], dst: object, priority: int) -> None:
        """Send one advert (``send``) and count it, or its failure."""
        try:
            send()
        except OSError as exc:
            self._counters.tx_errors[self.name] += 1
            log.warning("(%s) sending advert to %s failed: %s", self.name, dst, exc)
        else:
            self._counters.adverts_sent[self.name] += 1
            if priority == 0:
                self._counters.priority_zero_sent[self.name] += 1

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
        if self.conf.version == 3:
            self._send_advert_v3(priority)
            return
        advert = advert_for(self.conf, priority)
        auth = self.conf.authentication
        sock = self._sockets.advert(self.xmit_dev, self.proto)
        for dst in self.destinations:
            assert isinstance(dst, IPv4Address) and isinstance(self.src_ip, IPv4Address)
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
            self._sent(functools.partial(sock.send, datagram, dst), dst, priority)

    def _garp_devs(self, vips: Sequence[VirtualIP]) -> dict[str, tuple[packet.IPAddress, ...]]:
        by_dev: dict[str, list[packet.IPAddress]] = {}
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
        count = garp_count(self.conf, kind)
        vips = self.vips if vips is None else vips
        if count <= 0 or not vips:
            return
        for dev, ips in self._garp_devs(vips).items():
            self._garp_burst(dev, ips, count, 1)

    def _garp_burst(self, dev: str, ips: tuple[packet.IPAddress, ...], count: int,
                    attempt: int) -> None:
        """GARPs for the IPv4 addresses, unsolicited NAs (``pyalived.vrrp.ndisc``,
        RFC 5798 §6.4.2) for the IPv6 ones; retried together."""
        ips4 = [ip for ip in ips if isinstance(ip, IPv4Address)]
        ips6 = [ip for ip in ips if isinstance(ip, IPv6Address)]
        try:
            sock = self._sockets.garp(dev)
            if ips4:
                self._paced_burst(sock, dev, ips4, count, arp=True)
            if ips6:
                self._paced_burst(sock, dev, ips6, count, arp=False)
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

    def _paced_burst(self, sock: GarpSocket, dev: str, ips: Sequence[packet.IPAddress],
                     count: int, *, arp: bool) -> None:
        """``count`` frames per address, spaced as the interface's pace says
        (``vrrp_garp_interval``/``garp_interval``, ``vrrp_gna_interval``/``gna_interval``,
        ``garp_group``): the frames due now leave now, the others are woken for.
        Only a failure of the frames sent now is retried (``_garp_burst``)."""
        own = self.conf.garp_interval if arp else self.conf.gna_interval
        # A VMAC shares its parent's pace: they are one port on the switch.
        base = self.conf.interface if dev == self.vmac_name else dev
        key, interval = self._pacer.pace(base, arp=arp, own=own)
        if interval <= 0:
            if arp:
                sock.send_garp([ip for ip in ips if isinstance(ip, IPv4Address)], count)
            else:
                sock.send_na([ip for ip in ips if isinstance(ip, IPv6Address)], count)
            return
        now = trio.current_time()
        frames = [ip for ip in ips for _ in range(count)]
        times = self._pacer.reserve(key, arp=arp, interval=interval, n=len(frames), now=now)
        for due, ip in zip(times, frames, strict=True):
            if due <= now:
                self._send_one(sock, ip)
            else:
                self._spaced_nas.append(_SpacedNa(due, dev, ip))

    @staticmethod
    def _send_one(sock: GarpSocket, ip: packet.IPAddress) -> None:
        if isinstance(ip, IPv4Address):
            sock.send_garp([ip], 1)
        else:
            sock.send_na([ip], 1)

    def _send_spaced_nas(self, now: float) -> None:
        """Send the frames of a paced burst that are due (only while MASTER)."""
        if self.machine.state is not State.MASTER:
            self._spaced_nas.clear()
            return
        due = [n for n in self._spaced_nas if n.due <= now]
        self._spaced_nas = [n for n in self._spaced_nas if n.due > now]
        for n in due:
            try:
                self._send_one(self._sockets.garp(n.dev), n.ip)
            except OSError as exc:
                self._counters.tx_errors[self.name] += 1
                log.warning("(%s) sending a %s on %s failed: %s", self.name,
                            "gratuitous ARP" if n.ip.version == 4 else
                            "neighbour advertisement", n.dev, exc)

    def _retry_garps(self, now: float) -> None:
        """Send the failed GARP bursts that are due again (only while MASTER)."""
        if self._spaced_nas:
            self._send_spaced_nas(now)
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
        conf = self.conf
        if isinstance(action, AddVips):  # the routes may use the VIPs: after them
            await self._vip_change(self.vips, adding=True)
            await self._route_change(conf.virtual_routes, conf.virtual_rules, adding=True)
        else:
            await self._route_change(conf.virtual_routes, conf.virtual_rules, adding=False)
            await self._vip_change(self.vips, adding=False)

    async def _route_change(self, routes: Sequence[VirtualRoute], rules: Sequence[VirtualRule],
                            *, adding: bool) -> None:
        if self._routes is None or not (routes or rules):
            return
        verb = "setting" if adding else "removing"
        log.info("(%s) %s %d virtual route(s) and %d virtual rule(s)", self.name, verb,
                 len(routes), len(rules))
        try:
            if adding:
                await self._routes.add(routes, rules)
            else:
                await self._routes.remove(routes, rules)
        except OSError as exc:  # each failure is logged with its line by the manager
            log.error("(%s) %s virtual routes and rules failed: %s", self.name, verb, exc)

    async def _accept_mode_changed(self) -> None:
        """A reload switched ``accept``/``no_accept``: block or unblock the VIPs a
        MASTER holds (the ones a reload adds are blocked as they are added)."""
        if self._firewall is None:
            return
        if not blocks(self.conf):
            await self._firewall.unblock(self)
        elif self.machine.state is State.MASTER:
            await self._firewall.block(self, blocked(self.vips, self.vip_dev))

    async def _vip_change(self, vips: tuple[VirtualIP, ...], *, adding: bool) -> None:
        if not vips:
            return
        # no_accept: the VIPs are blocked before they are configured, and unblocked
        # once they are gone (pyalived.vrrp.firewall).
        if adding and self._firewall is not None and blocks(self.conf):
            await self._firewall.block(self, blocked(vips, self.vip_dev))
        try:
            await self._vip_netlink(vips, adding=adding)
        finally:
            if not adding and self._firewall is not None:
                await self._firewall.unblock(self, blocked(vips, self.vip_dev))

    async def _vip_netlink(self, vips: tuple[VirtualIP, ...], *, adding: bool) -> None:
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
        self._ah_replay.state_changed(change.new)
        if change.new is not State.MASTER:
            self._garp_retries.clear()  # announcing addresses is no longer ours to do
            self._spaced_nas.clear()
        if change.new is State.INIT:
            self._stop_notified = True
        self._notify(change.new)
        for listener in self.state_listeners:
            listener(self, change)

    def _notify(self, state: State) -> None:
        priority = self._stop_priority if state is State.INIT else self.machine.effective_priority
        for argv, user, group in notify_runs(self.conf.notify, state, "INSTANCE", self.name,
                                             priority, (self._script_user, self._script_group)):
            self._scripts.notify(argv, user, group)
        if self._alerts is not None:  # notify FIFOs and mail
            self._alerts.instance_state(self.name, NOTIFY_STATE[state], priority)

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


