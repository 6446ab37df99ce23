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
are serialized by a lock.  ``run_vrrp`` runs a runtime without reloads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

import trio

from pyalived.config.model import (
    Config,
    IPAddress,
    TrackFile,
    TrackProcess,
    VrrpInstance,
    VrrpScript,
    VrrpSyncGroup,
)
from pyalived.reload import ReloadPlan, instance_key, strip_locations
from pyalived.scripts import ScriptRunner
from pyalived.vrrp.compile import build_tracking
from pyalived.vrrp.counters import VrrpCounters
from pyalived.vrrp.demux import Demux
from pyalived.vrrp.fsm import MachineConfig, State, StateChanged, VrrpMachine
from pyalived.vrrp.instance import Instance
from pyalived.vrrp.notify import notify_commands
from pyalived.vrrp.ports import (
    AddressManager,
    LinkWatcher,
    SocketFactory,
    SocketFactory6,
    VmacManager,
    Wakeup,
)
from pyalived.vrrp.proc_events import EventSource, ProcessWatcher, Reader, Scanner
from pyalived.vrrp.socket_pool import SocketPool
from pyalived.vrrp.sync import SyncGroup
from pyalived.vrrp.track_file import FileTracker, Watch
from pyalived.vrrp.tracking import run_link_dispatch, run_script_tracker


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
    # Track files and processes; None: the real inotify, /proc and connector.
    file_watch: Callable[[str], Watch] | None = None
    file_read: Callable[[str], bytes | None] | None = None
    process_source: Callable[[], EventSource | None] | None = None
    process_scan: Scanner | None = None
    process_read: Reader | None = None


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
            primary_ip=_own_address(conf, ports, pool),
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
        for argv in notify_commands(self._conf.notify, state, "GROUP", self._conf.name):
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
        self.pool = SocketPool(ports.sockets, ports.sockets6,
                               config.global_defs.vrrp_mcast_group6)
        self.demux = Demux(self.pool, self.counters)
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
                await self._sync_files()
                await self._sync_processes()
                for inst in self.instances:
                    await self._start(inst)
                await self._sync_scripts(())
                task_status.started(self)
        finally:
            self._nursery = None
            self.pool.close()

    async def apply(self, config: Config, plan: ReloadPlan) -> None:
        """Move to ``config`` as ``plan`` (``pyalived.reload.plan_reload``) says."""
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
            await self._sync_files()
            await self._sync_processes()
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
