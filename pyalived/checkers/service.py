"""The LVS half of the daemon: health checkers driving the kernel's IPVS table.

Theory of operation: ``LvsService.run`` is one trio service.  One
``CheckerScheduler`` checks every configured real server.  The scheduler
reports through a plain callback: the service records each real server's
health (alive flag and effective weight, which ``misc_dynamic`` checkers may
change), queues the real server's ``notify_up``/``notify_down`` script on the
``ScriptRunner`` (fire and forget: a script never blocks anything), marks the
IPVS services of its ``virtual_server`` block for re-planning and wakes the
applier.  The applier task re-plans only the marked services --
``pyalived.ipvs.model.plan`` with their quorum state from the previous plan,
so hysteresis, the sorry server, ``inhibit_on_failure`` and alpha are the
planner's -- runs ``quorum_up`` / ``quorum_down`` once per virtual server
block whose quorum changed, and hands the desired table to
``IpvsTableManager`` naming the services that may have changed, so that the
difference is computed for those only and applied (its netlink calls run in
a worker thread, never on the event loop).  A health change thus costs the
size of its block, never that of the whole configuration.  Changes arriving
while an update is in flight coalesce into the next plan.

The kernel table is opened lazily, with the first non-empty desired table,
so a configuration without ``virtual_server`` never touches IPVS.  A kernel
without IPVS makes the manager log one error naming the cause; the service
then keeps running without a table: checkers still probe, report, log and
feed the metrics.

Reload (``apply``): a ``virtual_server`` block is known by its name and
protocol (``block_key``: TCP and UDP services on one address and port share
a name, and are checked and planned apart), a real server by its block and
its address and port; nothing else is identity.  A block equal to the
running one (compared serialized, see ``_fingerprint``) is kept as it is: nothing
is derived again, planned or compared, so an unchanged reload costs little
more than that comparison.  In a changed block, a real server that stays
keeps its checker state whatever changed around it
(``CheckerScheduler.update``: its verdict, retries and timers carry over, a
dead real server stays out of the table until a probe succeeds, see
``pyalived.checkers.policy``), new ones start, removed ones stop, and only
the block's services are re-planned, and only if their IPVS side changed or
a real server's weight did.  The reload gives the event loop a turn every
``APPLY_SLICE`` of work, so the checkers keep their times while a large
configuration is taken over.  keepalived 2.2.7 instead restarts every
checker on each reload, unchanged or not: each next check comes 1 s plus a
random part of ``warmup`` after the reload (all at once, 1 s after it, with
``warmup 0``), and a DOWN real server whose checker settings changed is put
back into the table until its new checker fails.
On cancellation the checkers stop first (``omega`` real servers are then
reported down, running their notify_down), the owned services are released
as keepalived does, and only then does the script runner wind down.

Tests observe the plans through ``plan_observer`` (called with the time and
the ``Plan`` of each re-plan); the service keeps no history of its own.

The kernel's per-service and per-destination statistics are read on demand
(``refresh_ipvs_stats``, awaited by the metrics server before it renders a
scrape) for the owned services only, in the IPVS worker thread, and one
read serves every scrape for a second.

Transitions are logged by the checker scheduler; this module logs only what
is its own (quorum changes, FILE_CHECK transitions and reloads).

FILE_CHECK (``pyalived.checkers.file_check``) is no probe: the service keeps
each real server's last report from the scheduler and lays its FILE_CHECKs
over it (down while one is at fault, else their weight added), whenever the
scheduler reports and whenever a watched track file changes; the result is
what the planner, the notify scripts, the alerts and the metrics see.  The
track files are read before the first plan, so a real server whose file
says down never enters the table.

``ha_suspend`` (``pyalived.checkers.ha_suspend``): while a virtual server
with it has its address on no interface of the host, the scheduler puts off
its real servers' probes (their state stays as it was); the
``AddressWatcher`` runs only while some block has ``ha_suspend`` and is
read before the checkers start, so a backup director never probes at all.

Global IPVS settings: ``lvs_flush`` empties the kernel table when the table
is first opened, ``lvs_timeouts`` is programmed then and again on each
reload that gives it, and ``lvs_flush_on_stop`` (without ``VS``) flushes the
whole table on stop instead of deleting the owned services (see
``IpvsTableManager``).
"""

from __future__ import annotations

import logging
import pickle
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

import trio

from pyalived.alerts import LvsAlerts
from pyalived.checkers.compile import (
    BlockKey,
    PackedLvs,
    blocks_of,
    dest_key,
    groups_of,
    ipvs_virtual_servers,
    unpacked,
    virtual_server_spec,
)
from pyalived.checkers.file_check import FileCheckWatcher, clamp_weight, file_effect
from pyalived.checkers.ha_suspend import AddressCallback, AddressWatcher
from pyalived.checkers.probes import Prober, RealProber
from pyalived.checkers.scheduler import (
    CallbackSink,
    CheckerScheduler,
    ProbeDoneObserver,
    RealServerEvent,
)
from pyalived.checkers.spec import RealServerSpec, VirtualServerSpec
from pyalived.config.lvs_parse import tls_client
from pyalived.config.model import (
    Config,
    FileCheck,
    GlobalDefs,
    ScriptUser,
    TrackFile,
    VirtualServer,
    VirtualServerGroup,
)
from pyalived.ipvs.model import (
    DestKey,
    Plan,
    ServiceEntry,
    ServiceKey,
    Table,
    Timeouts,
    VirtualServerConfig,
    plan,
)
from pyalived.ipvs.netlink import IpvsKernel, IpvsTableManager, NetlinkIpvs, ServiceDump
from pyalived.scripts import ScriptRunner, TrioScriptRunner, split_command

log = logging.getLogger("pyalived.lvs")

#: How long a read of the kernel's IPVS statistics serves scrapes before it is read again.
STATS_MAX_AGE = 1.0
#: Checks wake the process only on this grid of trio's clock (``TimerQueue``):
#: a check starts at most this late, and checks due together share a wake-up.
CHECK_TIMER_GRANULARITY = 0.01
#: A reload gives the event loop a turn after this many seconds of work.
APPLY_SLICE = 0.005

Address = tuple[IPv4Address | IPv6Address, int | None]  # a real server's address and port
RealServerId = tuple[BlockKey, IPv4Address | IPv6Address, int | None]  # block, address, port
PlanObserver = Callable[[float, Plan], None]  # (time, plan) of each re-plan


@dataclass(slots=True)
class RealServerState:
    """What the service knows of one real server (read by the metrics)."""

    virtual_server: str  # its block's name, "NAME/udp" or "NAME/sctp" if another has NAME
    real_server: RealServerSpec
    alive: bool
    weight: int
    reason: str = ""


@dataclass(eq=False)
class _Block:
    """One ``virtual_server`` block and what is derived from it."""

    key: BlockKey
    fingerprint: bytes  # the block as parsed, serialized (see ``PackedLvs``)
    group_name: str | None  # the group it expands (``virtual_server group NAME``)
    group: VirtualServerGroup | None  # that group as parsed (None if there is none)
    quorum_scripts: tuple[str | None, str | None]  # quorum_up, quorum_down
    spec: VirtualServerSpec
    services: tuple[VirtualServerConfig, ...]
    servers: dict[Address, RealServerSpec] = field(default_factory=dict)
    notify: dict[Address, tuple[str | None, str | None]] = field(default_factory=dict)
    # the USER [GROUP] of those notify_up / notify_down lines, and of quorum_up / quorum_down
    notify_users: dict[Address, tuple[ScriptUser | None, ScriptUser | None]] = field(
        default_factory=dict)
    quorum_users: tuple[ScriptUser | None, ScriptUser | None] = (None, None)
    fifo_name: str = ""  # as keepalived's notify FIFO lines name it: [IP]:tcp:PORT
    fifo_proto: str = "tcp"
    quorum_numbers: tuple[int, int] = (1, 0)  # quorum, hysteresis (for the mail alerts)
    vs_smtp: bool | None = None  # smtp_alert of the block; None: the global default
    rs_smtp: dict[Address, bool] = field(default_factory=dict)  # real servers' own
    file_checks: dict[Address, tuple[FileCheck, ...]] = field(default_factory=dict)
    ha_suspend: IPv4Address | IPv6Address | None = None  # the address whose absence suspends

    @classmethod
    def build(
        cls, key: BlockKey, vs: VirtualServer, fingerprint: bytes,
        groups: Mapping[str, VirtualServerGroup], prev: _Block | None = None,
    ) -> _Block:
        """The block of ``vs``; what is equal in ``prev`` (the running block of the same
        key) is taken from it, so a reload that changes, say, only ``delay_loop``
        holds no second copy of the rest."""
        spec = virtual_server_spec(vs)
        services = ipvs_virtual_servers(vs, groups)
        if prev is not None:
            spec = prev.spec if spec == prev.spec else spec
            services = prev.services if services == prev.services else services
        blk = cls(key, fingerprint, vs.group, _group_of(vs, groups),
                  (vs.quorum_up, vs.quorum_down), spec, services)
        if prev is not None and spec is prev.spec:
            blk.servers = prev.servers
        else:
            for rs in spec.real_servers:
                blk.servers.setdefault((rs.ip, rs.port), rs)
        blk.fifo_name, blk.fifo_proto = _fifo_name(vs)
        blk.quorum_users = (vs.quorum_up_user, vs.quorum_down_user)
        blk.quorum_numbers, blk.vs_smtp = (vs.quorum, vs.hysteresis), vs.smtp_alert
        if vs.ha_suspend and vs.address is not None:
            blk.ha_suspend = vs.address
        for conf in vs.real_servers:
            if conf.smtp_alert is not None:
                blk.rs_smtp[(conf.address, conf.port)] = conf.smtp_alert
            if conf.notify_up is not None or conf.notify_down is not None:
                blk.notify[(conf.address, conf.port)] = (conf.notify_up, conf.notify_down)
                blk.notify_users[(conf.address, conf.port)] = (conf.notify_up_user,
                                                               conf.notify_down_user)
            if conf.file_checks:
                blk.file_checks[(conf.address, conf.port)] = conf.file_checks
        return blk

    def same_config(self, fingerprint: bytes, groups: Mapping[str, VirtualServerGroup]) -> bool:
        if self.fingerprint != fingerprint:
            return False
        name = self.group_name
        return self.group == (groups.get(name) if name is not None else None)

    def service_keys(self) -> Iterable[ServiceKey]:
        return (c.key for c in self.services)

    def rid(self, rs: RealServerSpec) -> RealServerId:
        return (self.key, rs.ip, rs.port)


def _fifo_name(vs: VirtualServer) -> tuple[str, str]:
    """A virtual server as keepalived's notify FIFO lines name it, and its protocol word."""
    proto = vs.protocol.value.lower()
    if vs.fwmark is not None:
        return f"FWM {vs.fwmark}", "none"  # keepalived: RS [IP]:none:0 of FWM N
    if vs.group is not None:
        return f"[{vs.group}]:0", proto
    return f"[{vs.address}]:{proto}:{vs.port or 0}", proto


def _group_of(
    vs: VirtualServer, groups: Mapping[str, VirtualServerGroup]
) -> VirtualServerGroup | None:
    return groups.get(vs.group) if vs.group is not None else None


class _Pacer:
    """Gives the event loop a turn once ``slice`` seconds of work have passed."""

    def __init__(self, slice: float) -> None:
        self._slice = slice
        self._last = time.perf_counter()

    async def tick(self) -> None:
        if time.perf_counter() - self._last >= self._slice:
            await trio.lowlevel.checkpoint()
            self._last = time.perf_counter()


@dataclass(frozen=True)
class ReloadCounts:
    """What a reload did to the real servers (``LvsService.apply``)."""

    kept: int  # stayed, with their checker state
    updated: int  # of the kept ones, those whose settings changed
    started: int
    stopped: int


class LvsService:
    """Health checkers + IPVS table for one configuration (replaced on reload)."""

    def __init__(
        self,
        config: Config | PackedLvs,
        *,
        open_kernel: Callable[[], IpvsKernel] = NetlinkIpvs,
        prober: Prober | None = None,
        scripts: ScriptRunner | None = None,
        rng: random.Random | None = None,
        probe_observer: ProbeDoneObserver | None = None,
        release_on_stop: bool = True,
        manager: IpvsTableManager | None = None,
        timer_granularity: float = CHECK_TIMER_GRANULARITY,
        plan_observer: PlanObserver | None = None,
        apply_slice: float = APPLY_SLICE,
        alerts: bool | LvsAlerts = False,
        vrrp_running: bool = True,
        address_watcher: Callable[[AddressCallback], AddressWatcher] = AddressWatcher,
    ) -> None:
        self.manager = (
            manager
            if manager is not None
            else IpvsTableManager(open_kernel, release_on_stop=release_on_stop)
        )
        self._global_ipvs(unpacked(config).global_defs)
        self._events: dict[RealServerId, RealServerEvent] = {}  # the scheduler's last reports
        self._files = FileCheckWatcher(self._file_value)
        self._addresses: AddressWatcher | None = None  # while some block has ha_suspend
        self._address_watcher = address_watcher
        self._file_fault: dict[RealServerId, bool] = {}
        self._suspended_blocks: set[BlockKey] = set()
        self._track_files: dict[str, TrackFile] = {
            t.name: t for t in unpacked(config).track_files}
        self._prober: Prober = prober if prober is not None else RealProber()
        self._probe_observer = probe_observer
        self._plan_observer = plan_observer
        self._own_scripts = scripts is None
        self._scripts: ScriptRunner = scripts if scripts is not None else TrioScriptRunner()
        self._rng = rng if rng is not None else random.Random()
        # notify_fifo / lvs_notify_fifo lines (pyalived.alerts); the shared notify_fifo's
        # script is the VRRP half's unless it does not run.
        self.alerts = alerts if isinstance(alerts, LvsAlerts) else (
            LvsAlerts(unpacked(config), self._scripts, vrrp_running=vrrp_running)
            if alerts else None)
        self._scheduler: CheckerScheduler | None = None
        self._timer_granularity = timer_granularity
        self._apply_slice = apply_slice
        self.health: dict[RealServerId, RealServerState] = {}
        self.quorum: dict[ServiceKey, bool] = {}
        self.desired: dict[ServiceKey, ServiceEntry] = {}
        self.last_reload: ReloadCounts | None = None
        self._pending: set[ServiceKey] = set()  # services to re-plan
        self._kernel_started = False
        self._dirty = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None
        self._stats: Mapping[ServiceKey, ServiceDump] = {}
        self._stats_at: float | None = None
        self._stats_lock = trio.Lock()
        self._blocks: dict[BlockKey, _Block] = {}
        self._labels: dict[BlockKey, str] = {}
        self._log_all_failures = False
        self._script_user: tuple[str | None, str | None] = (None, None)
        self._configure_globals(config)
        groups = groups_of(unpacked(config))
        for key, data, vs in blocks_of(config):
            if key not in self._blocks:
                vs = vs if vs is not None else pickle.loads(data)
                self._blocks[key] = _Block.build(key, vs, data, groups)
        self._derive()
        self._pending.update(self._service_block)

    # ---- configuration -----------------------------------------------------------

    def _configure_globals(self, config: Config | PackedLvs) -> None:
        """The settings of every checker: SSL_GET's TLS client (the top-level SSL
        block) and global_defs' checker_log_all_failures."""
        conf = unpacked(config)
        if isinstance(self._prober, RealProber):
            self._prober.tls = tls_client(conf.ssl)
        self._log_all_failures = conf.global_defs.checker_log_all_failures
        self._script_user = conf.global_defs.script_user, conf.global_defs.script_group
        if self._scheduler is not None:
            self._scheduler.log_all_failures = self._log_all_failures

    def _global_ipvs(self, defs: GlobalDefs) -> Timeouts | None:
        """Hand ``lvs_flush``, ``lvs_flush_on_stop`` and ``lvs_timeouts`` to the manager."""
        self.manager.flush_at_start = defs.lvs_flush
        self.manager.flush_on_stop = defs.lvs_flush_on_stop == "full"
        t = defs.lvs_timeouts
        timeouts = None if t is None else Timeouts(t.tcp, t.tcpfin, t.udp)
        self.manager.timeouts = timeouts
        return timeouts

    async def _watch_addresses(self, nursery: trio.Nursery) -> None:
        """Start the address watcher once some block has ``ha_suspend``."""
        if self._addresses is not None or not any(
                b.ha_suspend is not None for b in self._blocks.values()):
            return
        watcher = self._address_watcher(self._address_changed)
        try:
            await nursery.start(watcher.run)
        except OSError as exc:
            log.error("ha_suspend: cannot watch the host's addresses (%s); checkers"
                      " are never suspended", exc)
            return
        self._addresses = watcher

    def _address_changed(self, address: IPv4Address | IPv6Address, present: bool) -> None:
        for blk in self._blocks.values():
            if blk.ha_suspend == address:
                self._suspend(blk)

    def _suspend(self, blk: _Block) -> None:
        """Suspend or resume the checkers of ``blk`` by its ``ha_suspend`` address."""
        scheduler, watcher = self._scheduler, self._addresses
        if scheduler is None:
            return
        suspended = (blk.ha_suspend is not None and watcher is not None
                     and blk.ha_suspend not in watcher.local)
        was = blk.key in self._suspended_blocks
        for rs in blk.servers.values():
            scheduler.suspend(blk.rid(rs), suspended)
        if suspended:
            self._suspended_blocks.add(blk.key)
        else:
            self._suspended_blocks.discard(blk.key)
        if suspended != was:
            log.info("virtual server %s: address %s %s: checkers %s", blk.spec.name,
                     blk.ha_suspend, "absent" if suspended else "present",
                     "suspended" if suspended else "active")

    def _wanted_files(self) -> list[TrackFile]:
        names = {fc.track_file for b in self._blocks.values()
                 for checks in b.file_checks.values() for fc in checks}
        return [self._track_files[n] for n in sorted(names) if n in self._track_files]

    def _derive(self) -> None:
        """Derive the service-wide views from ``self._blocks`` (linear in blocks and services)."""
        blocks = self._blocks.values()
        self.specs: tuple[VirtualServerSpec, ...] = tuple(b.spec for b in blocks)
        self.services: tuple[VirtualServerConfig, ...] = tuple(
            c for b in blocks for c in b.services
        )
        self._service_block: dict[ServiceKey, _Block] = {}
        for b in blocks:
            for c in b.services:
                self._service_block.setdefault(c.key, b)
        self._service_config = {c.key: c for c in self.services}
        self._service_order = {c.key: i for i, c in enumerate(self.services)}
        # What the metrics call each block: its name, qualified by its protocol
        # when another block shares the name (TCP and UDP on one address and port).
        names = Counter(key[0] for key in self._blocks)
        labels = {
            key: key[0] if names[key[0]] == 1 or key[1] in ("", "TCP") else
            f"{key[0]}/{key[1].lower()}"
            for key in self._blocks
        }
        for key, label in labels.items():
            if label != self._labels.get(key, key[0]):
                blk = self._blocks[key]
                for rs in blk.servers.values():
                    state = self.health.get(blk.rid(rs))
                    if state is not None:
                        state.virtual_server = label
        self._labels = labels

    @property
    def real_server_count(self) -> int:
        return sum(len(b.servers) for b in self._blocks.values())

    @property
    def ipvs_unavailable(self) -> str | None:
        """Why IPVS is not in use (None while it is, or has not been needed yet)."""
        return self.manager.unavailable

    @property
    def owned(self) -> Table:
        """The IPVS entries this service owns, as last programmed."""
        return self.manager.owned

    # ---- checker events ----------------------------------------------------------------

    def _changed(self, event: RealServerEvent) -> None:
        rid = event.key
        assert isinstance(rid, tuple)
        blk = self._blocks.get(rid[0])
        if blk is None:
            return
        self._events[rid] = event
        self._refresh(blk, rid, event.checker)

    def _file_value(self, name: str, value: int) -> None:
        """A watched track file now reads ``value``: re-derive the real servers using it."""
        for blk in self._blocks.values():
            for addr, checks in blk.file_checks.items():
                if any(fc.track_file == name for fc in checks):
                    rid = (blk.key, addr[0], addr[1])
                    if rid in self._events:
                        self._refresh(blk, rid, "FILE_CHECK")

    def _refresh(self, blk: _Block, rid: RealServerId, checker: str | None) -> None:
        """Record a real server's health: the scheduler's last report, FILE_CHECKs over it."""
        event = self._events[rid]
        alive, weight, reason = event.alive, event.weight, event.reason
        checks = blk.file_checks.get((rid[1], rid[2]))
        if checks:
            fault, delta = file_effect(checks, self._track_files, self._files.values)
            if fault is not None:
                if alive:
                    checker, reason = "FILE_CHECK", f"FILE_CHECK: {fault}"
                alive = False
            else:
                weight = clamp_weight(weight + delta)
            was = self._file_fault.get(rid, False)
            if was != (fault is not None):
                self._file_fault[rid] = fault is not None
                log.warning("virtual server %s: real server %s: FILE_CHECK %s%s",
                            blk.spec.name, event.real_server,
                            "DOWN: " if fault is not None else "UP", fault or "")
        elif rid in self._file_fault:
            del self._file_fault[rid]
        prev = self.health.get(rid)
        self.health[rid] = RealServerState(
            self._labels[blk.key], event.real_server, alive, weight, reason
        )
        if prev is not None and prev.alive != alive:
            up, down = blk.notify.get((rid[1], rid[2]), (None, None))
            up_user, down_user = blk.notify_users.get((rid[1], rid[2]), (None, None))
            self._run_script(up if alive else down, up_user if alive else down_user)
            if self.alerts is not None:
                rs = event.real_server
                port = 0 if blk.fifo_proto == "none" else rs.port or 0
                kind = checker.split("#")[0] if checker else None
                self.alerts.real_server(f"[{rs.ip}]:{blk.fifo_proto}:{port}", blk.fifo_name,
                                        alive, kind, blk.rs_smtp.get((rid[1], rid[2])))
        if prev is None or prev.alive != alive or prev.weight != weight:
            self._pending.update(blk.service_keys())
            self._mark_dirty()

    def _run_script(self, line: str | None, who: ScriptUser | None) -> None:
        """Start a notify_up/down or quorum_up/down line as its own USER [GROUP], else as
        global_defs' script_user (root if there is none)."""
        if not line:
            return
        argv = split_command(line)
        if argv:
            user, group = (who.user, who.group) if who is not None else self._script_user
            self._scripts.notify(argv, user, group)

    def _mark_dirty(self) -> None:
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._dirty.set()

    # ---- planning --------------------------------------------------------------------

    def _plan(self) -> list[ServiceKey]:
        """Re-plan the pending services into ``desired``; return their keys."""
        keys, self._pending = self._pending, set()
        configs: list[VirtualServerConfig] = []
        verdicts: dict[ServiceKey, dict[DestKey, bool]] = {}
        weights: dict[ServiceKey, dict[DestKey, int]] = {}
        order = self._service_order
        for skey in sorted(keys, key=lambda k: order.get(k, -1)):
            blk = self._service_block.get(skey)
            if blk is None:  # gone with a reload
                self.desired.pop(skey, None)
                self.quorum.pop(skey, None)
                continue
            configs.append(self._service_config[skey])
            v, w = verdicts[skey], weights[skey] = {}, {}
            for rs in blk.servers.values():
                st = self.health.get(blk.rid(rs))
                if st is not None:
                    dk = dest_key(rs, skey)
                    v[dk], w[dk] = st.alive, st.weight
        if not keys:
            return []
        result = plan(configs, verdicts, self.quorum, weights)
        self.quorum.update(result.quorum)
        self.desired.update(result.table)
        if self._plan_observer is not None:
            self._plan_observer(trio.current_time(), result)
        seen: set[tuple[str, bool]] = set()
        for change in result.changes:
            blk = self._service_block[change.service]
            if (blk.spec.name, change.up) in seen:
                continue
            seen.add((blk.spec.name, change.up))
            log.warning(
                "virtual server %s: quorum %s (live weight %d)",
                blk.spec.name, "gained" if change.up else "lost", change.weight,
            )
            index = 0 if change.up else 1
            self._run_script(blk.quorum_scripts[index], blk.quorum_users[index])
            if self.alerts is not None:
                self.alerts.virtual_server(blk.fifo_name, change.up, *blk.quorum_numbers,
                                           change.weight, blk.vs_smtp)
        return list(keys)

    async def _apply_table(self, changed: Sequence[ServiceKey] | None) -> None:
        table = dict(self.desired)  # what the manager diffs against, whatever happens meanwhile
        if not self._kernel_started:
            if not table:
                return  # nothing to program: do not even open IPVS
            self._kernel_started = True
            try:
                await self.manager.start(table)
            except OSError as exc:
                self.manager.unavailable = str(exc)
                log.error("IPVS disabled: cannot open the IPVS netlink interface: %s", exc)
            return
        if changed:
            await self.manager.update(table, changed)

    async def _applier(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            await self._apply_table(self._plan())
            if not self._dirty.is_set():
                self._idle.set()

    async def wait_applied(self) -> None:
        """Return once every change reported so far is in the IPVS table."""
        await self._idle.wait()

    # ---- service ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: checkers, the applier and (if owned) the script runner."""
        script_scope = trio.CancelScope(shield=True)  # outlives the checkers' last reports
        alerts_scope = trio.CancelScope(shield=True)
        async with trio.open_nursery() as outer:
            if self._own_scripts:
                runner = self._scripts
                assert isinstance(runner, TrioScriptRunner)

                async def scripts(*, task_status: trio.TaskStatus[None]) -> None:
                    with script_scope:
                        await runner.run_forever(task_status=task_status)

                await outer.start(scripts)
            if self.alerts is not None:
                alerts = self.alerts

                async def fifos(*, task_status: trio.TaskStatus[None]) -> None:
                    with alerts_scope:  # outlives the checkers' last reports too
                        await alerts.run(task_status=task_status)

                await outer.start(fifos)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await self._files.configure(nursery, self._wanted_files())
                    await self._watch_addresses(nursery)
                    self._scheduler = CheckerScheduler(
                        (), CallbackSink(self._changed), self._prober, self._rng,
                        timer_granularity=self._timer_granularity,
                        on_probe_done=self._probe_observer,
                    )
                    self._scheduler.log_all_failures = self._log_all_failures
                    for blk in self._blocks.values():
                        for rs in blk.servers.values():
                            self._scheduler.add(blk.spec, rs, blk.rid(rs))
                        if blk.ha_suspend is not None:
                            self._suspend(blk)
                    await nursery.start(self._scheduler.run)  # reports every initial state
                    await self._scheduler.wait_running()  # probes due at once have started
                    self._dirty = trio.Event()  # the initial states are in this plan
                    await self._apply_table(self._plan())
                    self._alert_start()
                    if not self._dirty.is_set():
                        self._idle.set()
                    nursery.start_soon(self._applier)
                    log.info(
                        "LVS started: %d virtual server(s), %d real server checker set(s)%s",
                        len(self._blocks), self.real_server_count,
                        "" if self.ipvs_unavailable is None else ", without IPVS",
                    )
                    task_status.started()
            finally:
                self._nursery = None
                with trio.CancelScope(shield=True):
                    await self._shutdown()
                script_scope.cancel()
                alerts_scope.cancel()

    def _alert_start(self) -> None:
        """Each virtual server's quorum state at start, as keepalived reports it."""
        if self.alerts is None:
            return
        for blk in self._blocks.values():
            states = [self.quorum[k] for k in blk.service_keys() if k in self.quorum]
            if not states:
                continue
            weight = sum(st.weight for rs in blk.servers.values()
                         if (st := self.health.get(blk.rid(rs))) is not None and st.alive)
            self.alerts.virtual_server(blk.fifo_name, all(states), *blk.quorum_numbers,
                                       weight, blk.vs_smtp, starting=True)

    async def _shutdown(self) -> None:
        # The checkers have stopped, so the omega reports are in (their notify_down
        # scripts already queued): plan once more for the quorum scripts, then
        # release the table (or leave it as planned, without release_on_stop).
        if self._dirty.is_set():
            self._dirty = trio.Event()
            changed = self._plan()
            if not self.manager.release_on_stop:
                await self._apply_table(changed)
        await self.manager.stop()

    async def apply(self, config: Config | PackedLvs) -> ReloadCounts:
        """Take a reloaded configuration, changing checkers and IPVS by the difference.

        See the module docstring; returns (and logs) what happened to the real
        servers.  The work yields to the event loop every ``apply_slice``
        seconds, so the checkers (and whatever else shares the loop) keep
        their times during a long reload.
        """
        if self._nursery is None:
            raise RuntimeError("LvsService.apply called while the service is not running")
        scheduler = self._scheduler
        assert scheduler is not None
        pace = _Pacer(self._apply_slice)
        # 1. What the new configuration is, block by block; nothing running changes yet.
        self._configure_globals(config)  # e.g. the SSL block: the next SSL_GET checks use it
        groups = groups_of(unpacked(config))
        if self.alerts is not None:
            self.alerts.configure(unpacked(config))  # FIFOs reopened only if changed
        old = self._blocks
        blocks: dict[BlockKey, _Block] = {}
        changed: list[tuple[_Block | None, _Block]] = []
        kept = updated = started = stopped = 0
        for key, data, vs in blocks_of(config):
            if key in blocks:
                continue
            prev = old.get(key)
            if prev is not None and prev.same_config(data, groups):
                blocks[key] = prev
                kept += len(prev.servers)
            else:
                vs = vs if vs is not None else pickle.loads(data)
                blocks[key] = _Block.build(key, vs, data, groups, prev)
                changed.append((prev, blocks[key]))
            del vs
            await pace.tick()
        removed = [prev for key, prev in old.items() if key not in blocks]
        # 2. Switch to it: events from here on find the new blocks.
        self._blocks = blocks
        self._derive()
        defs = unpacked(config).global_defs
        timeouts = self._global_ipvs(defs)
        if timeouts is not None:
            await self.manager.set_timeouts(timeouts)  # keepalived sets them on each reload
        files = {t.name: t for t in unpacked(config).track_files}
        files_changed, self._track_files = files != self._track_files, files
        await self._files.configure(self._nursery, self._wanted_files())
        if files_changed:  # a track_file's weight or file: every FILE_CHECK using it
            for blk in blocks.values():
                for addr in blk.file_checks:
                    rid = (blk.key, addr[0], addr[1])
                    if rid in self._events:
                        self._refresh(blk, rid, "FILE_CHECK")
        for prev, blk in changed:
            prev_servers = prev.servers if prev is not None else {}
            for addr, rs in blk.servers.items():
                rid = blk.rid(rs)
                was = prev_servers.get(addr)
                if was is None:
                    scheduler.add(blk.spec, rs, rid)  # reports its initial state
                    started += 1
                    continue
                kept += 1
                if rs != was:
                    updated += 1
                    state = self.health.get(rid)
                    if state is not None:
                        state.real_server = rs
                scheduler.update(blk.spec, rs, rid)  # reports a new weight, if any
            if prev is not None:
                for addr, rs in prev.servers.items():
                    if addr not in blk.servers:
                        self._stop_checker(prev.rid(rs))
                        stopped += 1
            if blk.file_checks or (prev is not None and prev.file_checks):
                for rs in blk.servers.values():
                    rid = blk.rid(rs)
                    if rid in self._events:
                        self._refresh(blk, rid, "FILE_CHECK")
            if prev is None or prev.services != blk.services:
                self._pending.update(blk.service_keys())
                if prev is not None:
                    self._pending.update(prev.service_keys())
            await pace.tick()
        await self._watch_addresses(self._nursery)
        for _prev, blk in changed:
            if blk.ha_suspend is not None or blk.key in self._suspended_blocks:
                self._suspend(blk)
        for prev in removed:
            self._suspended_blocks.discard(prev.key)
            for rs in prev.servers.values():
                self._stop_checker(prev.rid(rs))
                stopped += 1
            self._pending.update(prev.service_keys())
            await pace.tick()
        counts = ReloadCounts(kept, updated, started, stopped)
        self.last_reload = counts
        log.info(
            "reload: real servers: %d kept (%d with new settings), %d started, %d stopped",
            kept, updated, started, stopped,
        )
        if self._pending:
            self._mark_dirty()
            await self.wait_applied()
        return counts

    def _stop_checker(self, rid: RealServerId) -> None:
        assert self._scheduler is not None
        self._scheduler.remove_key(rid)  # it reports nothing more, not even omega
        self.health.pop(rid, None)
        self._events.pop(rid, None)
        self._file_fault.pop(rid, None)

    # ---- views for metrics ----------------------------------------------------------------

    def real_servers(self) -> Sequence[RealServerState]:
        return list(self.health.values())

    def next_checks(self) -> list[float]:
        """When each running checker's next probe is due (trio's clock)."""
        return self._scheduler.due_times() if self._scheduler is not None else []

    @property
    def ipvs_stats(self) -> Mapping[ServiceKey, ServiceDump]:
        """The owned services' kernel statistics as last read (``refresh_ipvs_stats``)."""
        return self._stats

    async def refresh_ipvs_stats(self, max_age: float = STATS_MAX_AGE) -> None:
        """Re-read the owned services' statistics unless the last read is fresher than
        ``max_age`` seconds.  The dump runs in the IPVS worker thread; concurrent callers
        share one read."""
        async with self._stats_lock:
            if self._stats_at is not None and trio.current_time() - self._stats_at < max_age:
                return
            keys = frozenset(self.manager.owned)
            stats: Mapping[ServiceKey, ServiceDump] = {}
            if keys:
                try:
                    stats = await self.manager.read_stats(keys)
                except OSError as exc:
                    log.warning("IPVS statistics unavailable: %s", exc)
            self._stats = stats
            self._stats_at = trio.current_time()

    def quorum_by_block(self) -> Mapping[str, bool]:
        """Each block's quorum (by the name the metrics give it): all its services'."""
        out: dict[str, bool] = {}
        for key, up in self.quorum.items():
            blk = self._service_block.get(key)
            if blk is not None:
                name = self._labels[blk.key]
                out[name] = out.get(name, True) and up
        return out
