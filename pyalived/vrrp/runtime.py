"""The running VRRP half of a configuration, and its reloads.

Theory of operation: a ``VrrpRuntime`` builds one ``Instance``
(``pyalived.vrrp.instance``) per configured ``vrrp_instance`` and runs each
in its own cancel scope under the runtime's nursery, so that a reload can
stop one gracefully (priority-0 advert if MASTER) without touching the
others.  What the runtime shares among the instances is its own: the
``SocketPool`` (also the raw IPv6 sockets of IPv6 instances, whose own
address is their interface's link-local one, RFC 5798 §5.1.2.1) and the
``Demux`` (``pyalived.vrrp.demux``), the link
dispatcher and one tracker per ``vrrp_script`` (``pyalived.vrrp.tracking``),
one per ``track_file`` (``pyalived.vrrp.track_file``) and the one process
watcher of every ``vrrp_track_process`` (``pyalived.vrrp.proc_events``).
Their subscriber lists are edited in place, and a tracker is restarted only
when its script changed.  So is the ``VipFirewall`` of ``no_accept`` VIPs
(``pyalived.vrrp.firewall``), when the ports have nftables: configured
before the first instance starts (replacing a killed daemon's leftovers) and
on each reload before the instances change, its retry task under the
nursery, its tables deleted once every instance has stopped.
when its script or file definition changed (the process watcher is given
the new definitions and scans /proc again).  Track files and processes are
read before the instances start, so an instance starts with their effect;
after a reload each instance is told the current values again.

Building (``build_instances``): each instance gets its settings and its
tracking from ``pyalived.vrrp.compile``, and the members of a
``vrrp_sync_group`` share one pure ``SyncGroup`` (``pyalived.vrrp.sync``),
consulted by their machines, plus a ``_SyncFollower`` that posts the
transitions the group orders to the other members' inboxes (never executed
re-entrantly) and runs the group's notify scripts once all members agree.

Reloading (``apply``): the planner (``pyalived.reload.plan_reload``) has
already said, purely, what changes; the runtime carries the plan out in this
order: removed instances and the old halves of restarted ones stop
gracefully; changed ones are reconfigured by their own task (state, timers
and unchanged VIPs kept; the VIP work is ``pyalived.reload.reload_vip_change``);
new ones and the new halves of restarted ones are built and started; then
the link subscriptions and the script trackers follow the new set.  Reloads
are serialized by a lock.

Static addresses, routes and rules (``static_ipaddress``, ``static_routes``,
``static_rules``) belong to the runtime, not to an instance: set up before
the instances start, left alone by every VRRP state, removed when the
runtime stops (as keepalived 2.2.7 removes them on stop), and on a reload
only the dropped ones are removed and the new ones added, before the
instances are touched.  ``run_vrrp`` runs a runtime without reloads.

``lvs_sync_daemon``: the runtime owns the ``SyncDaemonDriver``
(``pyalived.vrrp.lvs_sync``), started before the instances; every instance
gets its state listener, and at start and after each reload the driver is
told the settings and the followed instance's VRID and current state.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

import trio

from pyalived.config.model import (
    Config,
    IPAddress,
    TrackFile,
    TrackProcess,
    VirtualIP,
    VirtualRoute,
    VirtualRule,
    VrrpInstance,
    VrrpScript,
    VrrpSyncGroup,
)
from pyalived.reload import ReloadPlan, difference, instance_key, strip_locations
from pyalived.scripts import ScriptRunner
from pyalived.vrrp.compile import build_tracking
from pyalived.vrrp.counters import VrrpCounters
from pyalived.vrrp.demux import Demux
from pyalived.vrrp.firewall import VipFirewall, firewall_settings
from pyalived.vrrp.fsm import MachineConfig, State, StateChanged, VrrpMachine
from pyalived.vrrp.garp_pacing import GarpPacer
from pyalived.vrrp.instance import Instance
from pyalived.vrrp.lvs_sync import Blocking, SyncDaemonDriver, SyncDaemonKernel
from pyalived.vrrp.notify import NOTIFY_STATE, notify_runs
from pyalived.vrrp.ports import (
    AddressManager,
    LinkWatcher,
    NftRunner,
    RouteManager,
    SocketFactory,
    SocketFactory6,
    StateAlerts,
    VmacManager,
    Wakeup,
)
from pyalived.vrrp.proc_events import EventSource, ProcessWatcher, Reader, Scanner
from pyalived.vrrp.socket_pool import SocketPool
from pyalived.vrrp.sync import SyncGroup
from pyalived.vrrp.track_file import FileTracker, Watch
from pyalived.vrrp.tracking import run_link_dispatch, run_script_tracker

log = logging.getLogger("pyalived.vrrp")

STATIC_STOP_TIMEOUT = 10.0  # seconds allowed to remove the static addresses, routes, rules


@dataclass
class VrrpPorts:
    sockets: SocketFactory
    addresses: AddressManager
    vmac: VmacManager
    links: LinkWatcher
    scripts: ScriptRunner
    primary_ip: Callable[[str], IPv4Address]  # an interface's primary IPv4 address
    wakeup: Wakeup | None = None  # exact timer wake-ups (pyalived.vrrp.wakeup); None: epoll's
    # IPv6 advert sockets and link-local addresses; None: pyalived.vrrp.net6's, made
    # when an IPv6 instance first needs them.
    sockets6: SocketFactory6 | None = None
    # Notify FIFOs and mail alerts (pyalived.alerts); None: none.
    alerts: StateAlerts | None = None
    # The firewall of no_accept VIPs (pyalived.vrrp.nftables); None: no firewall.
    nft: NftRunner | None = None
    # virtual_routes/virtual_rules and the static ones (pyalived.vrrp.routes); None:
    # routes and rules are not touched.
    routes: RouteManager | None = None
    # An interface's index, None if it does not exist (dynamic_interfaces); no callable:
    # the interfaces checked when the configuration was read are taken to exist.
    interface_index: Callable[[str], int | None] | None = None
    # Track files and processes; None: the real inotify, /proc and connector.
    file_watch: Callable[[str], Watch] | None = None
    file_read: Callable[[str], bytes | None] | None = None
    process_source: Callable[[], EventSource | None] | None = None
    process_scan: Scanner | None = None
    process_read: Reader | None = None
    # The kernel's IPVS sync daemons (pyalived.vrrp.lvs_sync), opened when
    # ``lvs_sync_daemon`` first needs one; None: lvs_sync_daemon is not acted on.
    sync_daemons: Callable[[], SyncDaemonKernel] | None = None
    sync_blocking: Blocking | None = None  # how its calls run; None: on a worker thread


def build_instances(
    config: Config,
    ports: VrrpPorts,
    pool: SocketPool,
    demux: Demux,
    counters: VrrpCounters,
    only: Sequence[VrrpInstance] | None = None,
    firewall: VipFirewall | None = None,
    pacer: GarpPacer | None = None,
    start_at: float | None = None,
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

    def own_address(conf: VrrpInstance) -> IPAddress:
        if waits_for_interface(conf):
            return IPv4Address(0)  # not known yet: resolved when the interface appears
        return _own_address(conf, ports, pool)

    def waits_for_interface(conf: VrrpInstance) -> bool:
        exists = ports.interface_index
        return gd.dynamic_interfaces and exists is not None and exists(conf.interface) is None

    dynamic = gd.dynamic_interfaces and ports.interface_index is not None
    instances = [
        Instance(
            conf,
            primary_ip=own_address(conf),
            sockets=pool,
            demux=demux,
            addresses=ports.addresses,
            scripts=ports.scripts,
            counters=counters,
            vmac=ports.vmac,
            links=ports.links,
            tracking=build_tracking(config, conf),
            multicast_group=gd.vrrp_mcast_group4,
            multicast_group6=gd.vrrp_mcast_group6,
            script_user=gd.script_user,
            script_group=gd.script_group,
            machine_factory=machine_for(conf),
            wakeup=ports.wakeup,
            alerts=ports.alerts,
            firewall=firewall,
            routes=ports.routes,
            pacer=pacer,
            start_at=start_at,
            interface_index=ports.interface_index if dynamic else None,
            resolve_address=functools.partial(_own_address, conf, ports, pool),
        )
        for conf in confs
    ]
    by_name = {inst.name: inst for inst in instances}
    for group_conf in wired:
        follower = _SyncFollower(
            groups[group_conf.group[0]], group_conf, by_name, ports.scripts,
            gd.script_user, gd.script_group, ports.alerts,
        )
        for member in group_conf.group:
            by_name[member].state_listeners.append(follower)
    return instances


def _own_address(conf: VrrpInstance, ports: VrrpPorts, pool: SocketPool) -> IPAddress:
    """The instance's address on its LAN: the interface's primary IPv4 address, or for
    an IPv6 instance ``unicast_src_ip`` / its link-local address (RFC 5798 §5.1.2.1)."""
    if conf.family == 4:
        return ports.primary_ip(conf.interface)
    return conf.unicast_src_ip or conf.mcast_src_ip or pool.link_local(conf.interface)


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
        script_group: str | None = None,
        alerts: StateAlerts | None = None,
    ) -> None:
        self._alerts = alerts
        self._sync = sync
        self._conf = conf
        self._members = members
        self._scripts = scripts
        self._user = script_user
        self._group = script_group
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
        for argv, user, group in notify_runs(self._conf.notify, state, "GROUP",
                                             self._conf.name, None, (self._user, self._group)):
            self._scripts.notify(argv, user, group)
        if self._alerts is not None:
            self._alerts.group_state(self._conf.name, NOTIFY_STATE[state])


FIREWALL_STOP_TIMEOUT = 5.0  # seconds allowed for deleting the nftables tables on stop


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
        self.pool = SocketPool(ports.sockets, ports.sockets6,
                               config.global_defs.vrrp_mcast_group6)
        self.demux = Demux(self.pool, self.counters)
        # GARP / NA spacing per interface or garp_group, shared by every instance.
        self.pacer = GarpPacer(config.global_defs.garp_groups)
        self.instances: list[Instance] = []
        # Called with (all instances, newly built ones) at start and after each reload.
        self.on_instances = on_instances
        self._running: dict[Instance, tuple[trio.CancelScope, trio.Event]] = {}
        self._link_subs: dict[str, list[Callable[[str, bool], None]]] = {}
        self._link_dispatch = False
        self._script_subs: dict[str, list[Callable[[str, bool], None]]] = {}
        self._trackers: dict[str, trio.CancelScope] = {}
        self._file_subs: dict[str, list[Callable[[str, int], None]]] = {}
        self._file_trackers: dict[str, tuple[trio.CancelScope, FileTracker]] = {}
        self._process_subs: dict[str, list[Callable[[str, bool], None]]] = {}
        self._process_watcher: tuple[trio.CancelScope, ProcessWatcher] | None = None
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()
        self.firewall = (VipFirewall(ports.nft, firewall_settings(config))
                         if ports.nft is not None else None)
        # dynamic_interfaces: the index each instance interface had when last seen.
        self._ifindex: dict[str, int] = {}
        # lvs_sync_daemon: the kernel's sync daemon follows one instance's state.
        self.sync_daemon = (SyncDaemonDriver(ports.sync_daemons, ports.sync_blocking)
                            if ports.sync_daemons is not None else None)

    async def run(
        self, *, task_status: trio.TaskStatus[VrrpRuntime] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every instance; run until cancelled, then stop them gracefully."""
        try:
            await self._statics(self.config.static_ipaddress, self.config.static_routes,
                                self.config.static_rules, adding=True)
            delay = self.config.global_defs.vrrp_startup_delay
            start_at = None
            if delay > 0:
                log.info("delaying the start of the VRRP instances by %g s "
                         "(vrrp_startup_delay)", delay)
                start_at = trio.current_time() + delay
            self.instances = build_instances(
                self.config, self.ports, self.pool, self.demux, self.counters,
                firewall=self.firewall, pacer=self.pacer, start_at=start_at,
            )
            if self.on_instances is not None:
                self.on_instances(self.instances, self.instances)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.sync_daemon is not None:
                    await nursery.start(self.sync_daemon.run)
                    self._follow_sync_daemon()
                if self.firewall is not None:
                    # Replaces what a killed daemon left, before any VIP is blocked.
                    await self.firewall.configure(firewall_settings(self.config))
                    await nursery.start(self.firewall.run)
                await nursery.start(self.demux.run)
                await self._sync_links()
                await self._sync_files()
                await self._sync_processes()
                for inst in self.instances:
                    await self._start(inst)
                await self._sync_scripts(())
                task_status.started(self)
        finally:
            self._nursery = None
            self.pool.close()
            if self.firewall is not None:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + FIREWALL_STOP_TIMEOUT
                    await self.firewall.close()
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + STATIC_STOP_TIMEOUT
                config = self.config
                await self._statics(config.static_ipaddress, config.static_routes,
                                    config.static_rules, adding=False)

    async def apply(self, config: Config, plan: ReloadPlan) -> None:
        """Move to ``config`` as ``plan`` (``pyalived.reload.plan_reload``) says."""
        async with self._lock:
            if self.firewall is not None:
                await self.firewall.configure(firewall_settings(config))
            self.pacer.set_groups(config.global_defs.garp_groups)
            by_key = {instance_key(inst.conf): inst for inst in self.instances}
            old = self.config
            ips_added, ips_removed = difference(old.static_ipaddress, config.static_ipaddress)
            routes_added, routes_removed = difference(old.static_routes, config.static_routes)
            rules_added, rules_removed = difference(old.static_rules, config.static_rules)
            await self._statics(ips_removed, routes_removed, rules_removed, adding=False)
            await self._statics(ips_added, routes_added, rules_added, adding=True)
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
                config, self.ports, self.pool, self.demux, self.counters, only=fresh_confs,
                firewall=self.firewall,
                pacer=self.pacer,
            )
            for inst in fresh:
                by_key[instance_key(inst.conf)] = inst
            self.config = config
            if self.ports.alerts is not None:  # new FIFOs, mail settings, smtp_alert
                self.ports.alerts.configure(config)
            self.instances = [by_key[instance_key(c)] for c in config.vrrp_instances]
            self._follow_sync_daemon()
            if self.on_instances is not None:
                self.on_instances(self.instances, fresh)
            await self._sync_links()
            await self._sync_files()
            await self._sync_processes()
            for inst in fresh:
                await self._start(inst)
            await self._sync_scripts(plan.scripts_changed)

    # -- internals --

    async def _statics(self, ips: Sequence[VirtualIP], routes: Sequence[VirtualRoute],
                       rules: Sequence[VirtualRule], *, adding: bool) -> None:
        """static_ipaddress, static_routes and static_rules: addresses, routes, rules in
        that order when adding, the other way round when removing; logged, never raised."""
        if not (ips or routes or rules):
            return
        verb = "setting" if adding else "removing"
        log.info("%s %d static address(es), %d static route(s) and %d static rule(s)", verb,
                 len(ips), len(routes), len(rules))
        try:
            if adding and ips:
                await self.ports.addresses.add("", ips)
        except OSError as exc:
            log.error("%s static addresses failed: %s", verb, exc)
        if self.ports.routes is not None:
            try:
                if adding:
                    await self.ports.routes.add(routes, rules)
                else:
                    await self.ports.routes.remove(routes, rules)
            except OSError as exc:
                log.error("%s static routes and rules failed: %s", verb, exc)
        try:
            if not adding and ips:
                await self.ports.addresses.remove("", ips)
        except OSError as exc:
            log.error("%s static addresses failed: %s", verb, exc)

    def _follow_sync_daemon(self) -> None:
        """Point the sync daemon at its instance (at start and after a reload): its
        settings, the instance's VRID (the default sync id) and current state."""
        driver = self.sync_daemon
        if driver is None:
            return
        conf = self.config.global_defs.lvs_sync_daemon
        followed = None
        for inst in self.instances:
            if driver.listener not in inst.state_listeners:
                inst.state_listeners.append(driver.listener)
            if conf is not None and inst.name == conf.instance:
                followed = inst
        if followed is None:
            driver.configure(conf, None, None)
        else:
            driver.configure(conf, followed.conf.virtual_router_id, followed.state)

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
        dynamic = (self.config.global_defs.dynamic_interfaces
                   and self.ports.interface_index is not None)
        for inst in self.instances:
            names = set(inst.tracking.interface_names)
            if dynamic:  # an instance waiting for its interface hears of it
                names.add(inst.conf.interface)
                subs.setdefault(inst.conf.interface, [self._link_changed])
            for ifname in names:
                subs.setdefault(ifname, []).append(inst.post_link)
        if dynamic:
            for ifname in subs:
                self._note_index(ifname)
        self._link_subs.clear()
        self._link_subs.update(subs)
        if subs and not self._link_dispatch:
            self._link_dispatch = True
            await self._nursery_or_fail().start(
                run_link_dispatch, self.ports.links, self._link_subs
            )

    def _note_index(self, ifname: str) -> int | None:
        assert self.ports.interface_index is not None
        index = self.ports.interface_index(ifname)
        if index is not None:
            self._ifindex.setdefault(ifname, index)
        return index

    def _link_changed(self, ifname: str, up: bool) -> None:
        """dynamic_interfaces: an instance interface deleted and created again has a new
        index; its sockets belong to the old link, so the pool opens new ones and the
        demux listens on them.  Called before the instances hear of the change."""
        known = self._ifindex.get(ifname)
        index = self._note_index(ifname)
        if index is None or known is None or index == known:
            return
        self._ifindex[ifname] = index
        log.warning("interface %s was created again (index %d, was %d): opening new sockets",
                    ifname, index, known)
        old = self.pool.forget(ifname)
        self.demux.reopen(ifname)
        for sock in old:
            try:
                sock.close()
            except OSError as exc:
                log.debug("closing a socket of the old %s: %s", ifname, exc)

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

    async def _sync_files(self) -> None:
        subs: dict[str, list[Callable[[str, int], None]]] = {}
        for inst in self.instances:
            for name in inst.tracking.file_names:
                subs.setdefault(name, []).append(inst.post_file)
        defs = {t.name: t for t in self.config.track_files}
        for name, (scope, tracker) in list(self._file_trackers.items()):
            spec = defs.get(name)
            if (name not in subs or spec is None
                    or strip_locations(spec) != strip_locations(tracker.spec)):
                scope.cancel()
                del self._file_trackers[name]
        for name in list(self._file_subs):
            if name not in subs:
                del self._file_subs[name]
        for name, targets in subs.items():
            self._file_subs.setdefault(name, [])[:] = targets
            running = self._file_trackers.get(name)
            if running is not None:
                value = running[1].value
                if value is not None:
                    for target in targets:  # instances new to it learn the value
                        target(name, value)
            elif name in defs:
                await self._nursery_or_fail().start(self._file_tracker, defs[name])

    async def _file_tracker(
        self, spec: TrackFile, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        tracker = FileTracker(spec, self._file_subs[spec.name], watch=self.ports.file_watch,
                              read=self.ports.file_read)
        with trio.CancelScope() as scope:
            self._file_trackers[spec.name] = (scope, tracker)
            await tracker.run(task_status=task_status)

    async def _sync_processes(self) -> None:
        subs: dict[str, list[Callable[[str, bool], None]]] = {}
        for inst in self.instances:
            for name in inst.tracking.process_names:
                subs.setdefault(name, []).append(inst.post_process)
        specs = [t for t in self.config.track_processes if t.name in subs]
        for name in list(self._process_subs):
            if name not in subs:
                del self._process_subs[name]
        for name, targets in subs.items():
            self._process_subs.setdefault(name, [])[:] = targets
        if not specs:
            if self._process_watcher is not None:
                self._process_watcher[0].cancel()
                self._process_watcher = None
            return
        if self._process_watcher is None:
            await self._nursery_or_fail().start(self._run_process_watcher, specs)
            return
        watcher = self._process_watcher[1]
        if strip_locations(tuple(specs)) != strip_locations(watcher.table.specs):
            watcher.update(specs)
        for name, targets in subs.items():
            up = watcher.status(name)
            if up is not None:
                for target in targets:
                    target(name, up)

    async def _run_process_watcher(
        self, specs: list[TrackProcess],
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        p = self.ports
        watcher = ProcessWatcher(specs, self._process_subs, source=p.process_source,
                                 scan=p.process_scan, read=p.process_read)
        with trio.CancelScope() as scope:
            self._process_watcher = (scope, watcher)
            await watcher.run(task_status=task_status)

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
                default_group=self.config.global_defs.script_group,
                task_status=task_status,
            )


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
