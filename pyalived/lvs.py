"""The LVS half of the daemon: health checkers driving the kernel's IPVS table.

Theory of operation: ``LvsService.run`` is one trio service.  One
``CheckerScheduler`` checks every configured real server (a reload adds and
removes single real servers on it while the others keep their checker
state).  The scheduler reports through a plain callback: the service records
each real server's health (alive flag and effective weight, which
``misc_dynamic`` checkers may change), queues the real server's
``notify_up``/``notify_down`` script on the ``ScriptRunner`` (fire and
forget: a script never blocks anything) and marks the table dirty.  One
applier task then re-plans -- ``pyalived.ipvs.model.plan`` with the quorum
state of the previous plan, so hysteresis, the sorry server,
``inhibit_on_failure`` and alpha are the planner's -- runs ``quorum_up`` /
``quorum_down`` once per virtual server block whose quorum changed, and
hands the desired table to ``IpvsTableManager``, which changes only the
difference (its netlink calls run in a worker thread, never on the event
loop).  Changes arriving while an update is in flight coalesce into the next
plan.

The kernel table is opened lazily, with the first non-empty desired table,
so a configuration without ``virtual_server`` never touches IPVS.  A kernel
without IPVS makes the manager log one error naming the cause; the service
then keeps running without a table: checkers still probe, report, log and
feed the metrics.  ``apply`` takes a reloaded configuration: real servers
whose checker specification is unchanged keep their running checkers, new
ones start, removed ones stop, and the table moves by the difference.  On
cancellation the checkers stop first (``omega`` real servers are then
reported down, running their notify_down), the owned services are released
as keepalived does, and only then does the script runner wind down.

The kernel's per-service and per-destination statistics are read on demand
(``refresh_ipvs_stats``, awaited by the metrics server before it renders a
scrape) for the owned services only, in the IPVS worker thread, and one
read serves every scrape for a second.

Transitions are logged by the checker scheduler; this module logs only what
is its own (quorum changes and reloads).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import trio

from pyalived.checkers.probes import Prober, RealProber
from pyalived.checkers.scheduler import (
    CallbackSink,
    CheckerScheduler,
    ProbeDoneObserver,
    RealServerEvent,
)
from pyalived.checkers.spec import RealServerSpec, VirtualServerSpec
from pyalived.config.lvs import checker_specs, dest_key, ipvs_configs, services_by_name
from pyalived.config.model import Config
from pyalived.ipvs.model import (
    DestKey,
    Plan,
    ServiceEntry,
    ServiceKey,
    Table,
    VirtualServerConfig,
    plan,
)
from pyalived.ipvs.netlink import IpvsKernel, IpvsTableManager, NetlinkIpvs, ServiceDump
from pyalived.vrrp.ports import ScriptRunner
from pyalived.vrrp.scripts import TrioScriptRunner, split_command

log = logging.getLogger("pyalived.lvs")

#: How long a read of the kernel's IPVS statistics serves scrapes before it is read again.
STATS_MAX_AGE = 1.0
#: Checks wake the process only on this grid of trio's clock (``TimerQueue``):
#: a check starts at most this late, and checks due together share a wake-up.
CHECK_TIMER_GRANULARITY = 0.01

RealServerId = tuple[str, RealServerSpec]  # (VirtualServerSpec.name, the real server's spec)


@dataclass
class RealServerState:
    """What the service knows of one real server (read by the metrics)."""

    virtual_server: str
    real_server: RealServerSpec
    alive: bool
    weight: int
    reason: str = ""


def _rs_lookup(config: Config) -> dict[tuple[str, IPv4Address | IPv6Address, int | None],
                                       tuple[str | None, str | None]]:
    """(VS name, address, port) -> the real server's (notify_up, notify_down)."""
    return {
        (vs.name, rs.address, rs.port): (rs.notify_up, rs.notify_down)
        for vs in config.virtual_servers
        for rs in vs.real_servers
    }


class LvsService:
    """Health checkers + IPVS table for one configuration (replaced on reload)."""

    def __init__(
        self,
        config: Config,
        *,
        open_kernel: Callable[[], IpvsKernel] = NetlinkIpvs,
        prober: Prober | None = None,
        scripts: ScriptRunner | None = None,
        rng: random.Random | None = None,
        probe_observer: ProbeDoneObserver | None = None,
        release_on_stop: bool = True,
        manager: IpvsTableManager | None = None,
        timer_granularity: float = CHECK_TIMER_GRANULARITY,
    ) -> None:
        self.manager = (
            manager
            if manager is not None
            else IpvsTableManager(open_kernel, release_on_stop=release_on_stop)
        )
        self._prober: Prober = prober if prober is not None else RealProber()
        self._probe_observer = probe_observer
        self._own_scripts = scripts is None
        self._scripts: ScriptRunner = scripts if scripts is not None else TrioScriptRunner()
        self._rng = rng if rng is not None else random.Random()
        self._scheduler: CheckerScheduler | None = None
        self._timer_granularity = timer_granularity
        self.health: dict[RealServerId, RealServerState] = {}
        self.quorum: dict[ServiceKey, bool] = {}
        self.desired: dict[ServiceKey, ServiceEntry] = {}
        self.plans: list[tuple[float, Plan]] = []  # (time, plan) of every re-plan, for tests
        self._kernel_started = False
        self._dirty = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None
        self._stats: Mapping[ServiceKey, ServiceDump] = {}
        self._stats_at: float | None = None
        self._stats_lock = trio.Lock()
        self._set_config(config)

    # ---- configuration -----------------------------------------------------------

    def _set_config(self, config: Config) -> None:
        self.config = config
        self.specs: tuple[VirtualServerSpec, ...] = checker_specs(config)
        self.services: tuple[VirtualServerConfig, ...] = ipvs_configs(config)
        self._by_name = services_by_name(config)
        self._block_of = {k: name for name, keys in self._by_name.items() for k in keys}
        self._notify = _rs_lookup(config)
        self._quorum_scripts = {
            vs.name: (vs.quorum_up, vs.quorum_down) for vs in config.virtual_servers
        }

    def _wanted(self) -> dict[RealServerId, VirtualServerSpec]:
        out: dict[RealServerId, VirtualServerSpec] = {}
        for vs in self.specs:
            for rs in vs.real_servers:
                out.setdefault((vs.name, rs), vs)
        return out

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
        rid = (event.virtual_server, event.real_server)
        prev = self.health.get(rid)
        self.health[rid] = RealServerState(
            event.virtual_server, event.real_server, event.alive, event.weight, event.reason
        )
        if prev is not None and prev.alive != event.alive:
            up, down = self._notify.get(
                (event.virtual_server, event.real_server.ip, event.real_server.port), (None, None)
            )
            self._run_script(up if event.alive else down)
        if prev is None or prev.alive != event.alive or prev.weight != event.weight:
            self._mark_dirty()

    def _run_script(self, line: str | None) -> None:
        if not line:
            return
        argv = split_command(line)
        if argv:
            self._scripts.notify(argv, None)

    def _mark_dirty(self) -> None:
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._dirty.set()

    # ---- planning --------------------------------------------------------------------

    def _plan(self) -> Plan:
        verdicts: dict[ServiceKey, dict[DestKey, bool]] = {}
        weights: dict[ServiceKey, dict[DestKey, int]] = {}
        for (name, rs), st in self.health.items():
            for skey in self._by_name.get(name, ()):
                dk = dest_key(rs, skey)
                verdicts.setdefault(skey, {})[dk] = st.alive
                weights.setdefault(skey, {})[dk] = st.weight
        result = plan(self.services, verdicts, self.quorum, weights)
        self.quorum = {k: result.quorum[k] for k in result.quorum}
        self.desired = result.table
        self.plans.append((trio.current_time(), result))
        seen: set[tuple[str, bool]] = set()
        for change in result.changes:
            name = self._block_of.get(change.service, str(change.service))
            if (name, change.up) in seen:
                continue
            seen.add((name, change.up))
            log.warning(
                "virtual server %s: quorum %s (live weight %d)",
                name, "gained" if change.up else "lost", change.weight,
            )
            up, down = self._quorum_scripts.get(name, (None, None))
            self._run_script(up if change.up else down)
        return result

    async def _apply_table(self, table: Table) -> None:
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
        await self.manager.update(table)

    async def _applier(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            result = self._plan()
            await self._apply_table(result.table)
            if not self._dirty.is_set():
                self._idle.set()

    async def wait_applied(self) -> None:
        """Return once every change reported so far is in the IPVS table."""
        await self._idle.wait()

    # ---- checkers ----------------------------------------------------------------------

    def _stop_checker(self, rid: RealServerId) -> None:
        assert self._scheduler is not None
        self._scheduler.remove(*rid)  # it reports nothing more, not even omega
        self.health.pop(rid, None)

    # ---- service ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: checkers, the applier and (if owned) the script runner."""
        script_scope = trio.CancelScope(shield=True)  # outlives the checkers' last reports
        async with trio.open_nursery() as outer:
            if self._own_scripts:
                runner = self._scripts
                assert isinstance(runner, TrioScriptRunner)

                async def scripts(*, task_status: trio.TaskStatus[None]) -> None:
                    with script_scope:
                        await runner.run_forever(task_status=task_status)

                await outer.start(scripts)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._scheduler = CheckerScheduler(
                        self.specs, CallbackSink(self._changed), self._prober, self._rng,
                        timer_granularity=self._timer_granularity,
                        on_probe_done=self._probe_observer,
                    )
                    await nursery.start(self._scheduler.run)  # reports every initial state
                    await self._scheduler.wait_running()  # probes due at once have started
                    self._dirty = trio.Event()  # the initial states are in this plan
                    result = self._plan()
                    await self._apply_table(result.table)
                    if not self._dirty.is_set():
                        self._idle.set()
                    nursery.start_soon(self._applier)
                    log.info(
                        "LVS started: %d virtual server(s), %d real server checker set(s)%s",
                        len(self.specs), len(self._wanted()),
                        "" if self.ipvs_unavailable is None else ", without IPVS",
                    )
                    task_status.started()
            finally:
                self._nursery = None
                with trio.CancelScope(shield=True):
                    await self._shutdown()
                script_scope.cancel()

    async def _shutdown(self) -> None:
        # The checkers have stopped, so the omega reports are in (their notify_down
        # scripts already queued): plan once more for the quorum scripts, then
        # release the table (or leave it as planned, without release_on_stop).
        if self._dirty.is_set():
            self._dirty = trio.Event()
            result = self._plan()
            if not self.manager.release_on_stop:
                await self._apply_table(result.table)
        await self.manager.stop()

    async def apply(self, config: Config) -> None:
        """Take a reloaded configuration, changing checkers and IPVS by the difference."""
        nursery = self._nursery
        if nursery is None:
            raise RuntimeError("LvsService.apply called while the service is not running")
        self._set_config(config)
        scheduler = self._scheduler
        assert scheduler is not None
        wanted = self._wanted()
        stopped = [rid for rid in self.health if rid not in wanted]
        for rid in stopped:
            self._stop_checker(rid)
        started = 0
        for rid, vs in wanted.items():
            if rid not in scheduler:
                scheduler.add(vs, rid[1])
                started += 1
        kept = len(wanted) - started
        known = {s.key for s in self.services}
        self.quorum = {k: v for k, v in self.quorum.items() if k in known}
        log.info(
            "reload: real server checkers: %d kept, %d started, %d stopped",
            kept, started, len(stopped),
        )
        self._mark_dirty()
        await self.wait_applied()

    # ---- views for metrics ----------------------------------------------------------------

    def real_servers(self) -> Sequence[RealServerState]:
        return list(self.health.values())

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
        out: dict[str, bool] = {}
        for key, up in self.quorum.items():
            name = self._block_of.get(key)
            if name is not None:
                out[name] = out.get(name, True) and up
        return out
