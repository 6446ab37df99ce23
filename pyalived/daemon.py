"""The daemon: every configured service under one trio nursery.

Theory of operation: ``run_daemon`` is the root task.  It opens the signal
receiver first (so a SIGTERM arriving during start-up is not lost), builds
the side-effect ports (production ones from ``pyalived.vrrp.net``,
``netlink`` and ``scripts`` unless the caller passes its own), starts the VRRP
half (``pyalived.vrrp.runtime.VrrpRuntime``: one task per instance, shared
receivers, track-script runners, the link watcher) and reports itself
started.  SIGTERM and SIGINT cancel the services: each instance then stops
gracefully (priority-0 advert, VIPs removed, VMAC deleted) inside its own
shielded scope, and ``run_daemon`` returns.  SIGHUP re-reads the
configuration file: a config with errors is refused (diagnostics logged, the
running one untouched); a valid one is applied as a difference
(``pyalived.reload``), leaving unchanged instances alone.  Reloads run in a
service of their own (``_reloader``), never in the signal loop, so a slow
reload cannot hold up SIGTERM; SIGHUPs that arrive during a reload are
coalesced into one more.  The file is read in a worker thread that the
reload abandons after ``DaemonOptions.reload_timeout`` seconds (a file on a
hung network mount): the reload is then refused, and so is every later one
until that read has returned.  Any exception from the reader refuses the
reload too, with a logged traceback; the running configuration stays.  SIGUSR1, SIGUSR2
and SIGRTMIN+2 write the state, statistics and JSON dumps (``pyalived.dump``).

Operations hooks: with ``metrics_listen`` set, a ``pyalived.metrics`` HTTP
server runs as one more service, reading the live counters and instances at
scrape time.  The service manager (``pyalived.sdnotify``) is told READY=1
once every service has started (configuration applied, sockets open),
STOPPING=1 when a stop signal arrives, and, with a watchdog configured,
WATCHDOG=1 from a task on the same event loop.

The health-checker half (``pyalived.checkers.service.LvsService``) is one more service:
checkers for every real server driving the kernel's IPVS table.  It runs
unless ``checkers`` is off (``-P``); ``vrrp`` off (``-C``) runs it alone.
A kernel without IPVS is logged once and does not stop anything: VRRP and
the checkers keep running.  SIGHUP hands the new configuration to both halves.

A child of the supervisor (``control`` given: ``pyalived.supervisor``) reads
no file and leaves SIGHUP to the supervisor.  Its reload starts when the
supervisor sends a new half (read by a reader process, and pickled); the
control's loader unpickles it here in the child, and the reload goes on as
above.
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any, Protocol

import trio

from pyalived.checkers.compile import PackedLvs, unpacked
from pyalived.config.model import Config
from pyalived.metrics import Metrics, serve_metrics
from pyalived.sdnotify import Notifier, run_watchdog
from pyalived.tuning import Tuner
from pyalived.vrrp.counters import VrrpCounters
from pyalived.vrrp.instance import Instance
from pyalived.vrrp.ports import AdvertSocket, GarpSocket, NftRunner
from pyalived.vrrp.runtime import VrrpPorts, VrrpRuntime

if TYPE_CHECKING:
    # Imported when the service is built, after the VRRP instances have started:
    # its IPVS netlink stack (pyroute2) would otherwise delay the first advert.
    from pyalived.checkers.service import LvsService

log = logging.getLogger("pyalived.daemon")

# Twice the time the largest hostile file the reader accepts takes to refuse on a
# 2-core machine (the reader's own caps, ``pyalived.config.lexer.ReaderLimits``).
RELOAD_TIMEOUT = 30.0

class Control(Protocol):
    """How a supervised child hears from its supervisor (``pyalived.supervisor``)."""

    loader: Loader  # the configuration the supervisor sent last

    async def serve(
        self,
        reloads: trio.MemorySendChannel[None],
        metrics: Metrics,
        stop: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None: ...


PortsFactory = Callable[[Config], AbstractAsyncContextManager[VrrpPorts]]
Loader = Callable[[], Awaitable[Any]]  # re-reads the config: a pyalived.config.LoadResult
LvsFactory = Callable[[Config | PackedLvs, Metrics], "LvsService"]


@dataclass(frozen=True)
class DaemonOptions:
    vrrp: bool = True  # run the VRRP half (-P alone: only this)
    checkers: bool = True  # run the health-checker half (-C alone: only this)
    metrics_listen: tuple[str, int] | None = None  # (host, port) of the metrics server; None: off
    config_path: str | None = None  # re-read on SIGHUP; None: reload refused
    config_id: str | None = None  # -i, for '@' lines on reload
    dump_dir: str = "/tmp"  # where SIGUSR1/SIGUSR2/SIGRTMIN+2 write their dumps
    reload_timeout: float = RELOAD_TIMEOUT  # seconds a SIGHUP's read may take before refusal
    tune: bool = False  # apply the half's process settings (pyalived.tuning): children only


class _NetSockets:
    """``SocketFactory`` over the production raw sockets."""

    def __init__(self, multicast_group: IPv4Address) -> None:
        self._group = multicast_group

    def open_advert(self, ifname: str, proto: int) -> AdvertSocket:
        from pyalived.vrrp import net

        sock: AdvertSocket = net.open_advert_socket(
            ifname, proto=proto, multicast_group=self._group
        )
        return sock

    def open_garp(self, ifname: str) -> GarpSocket:
        from pyalived.vrrp import net

        sock: GarpSocket = net.open_garp_socket(ifname)
        return sock


def _interface_index(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def _primary_ip(ifname: str) -> IPv4Address:
    from pyalived.vrrp import net

    info: Any = net.interface_info(ifname)
    ip = info.primary_ip
    if ip is None:
        raise OSError(f"interface {ifname} has no IPv4 address")
    return IPv4Address(ip)


def _nft_runner(config: Config) -> NftRunner | None:
    """nftables for the no_accept VIPs; missing nftables is logged when it is needed."""
    from pyalived.vrrp import nftables
    from pyalived.vrrp.firewall import blocks

    runner = nftables.default_runner()
    if runner is None and any(blocks(inst) for inst in config.vrrp_instances):
        log.error("no_accept (or vrrp_strict) is configured but nftables is not available"
                  " (libnftables or nft): the VIPs will not be blocked")
    return runner


@asynccontextmanager
async def production_ports(config: Config) -> AsyncIterator[VrrpPorts]:
    """The real ports: raw sockets, netlink, script runner and exact timer wake-ups."""
    from pyalived import scripts
    from pyalived.alerts import VrrpAlerts
    from pyalived.ipvs.netlink import NetlinkIpvs
    from pyalived.vrrp import netlink, routes, wakeup

    runner = scripts.TrioScriptRunner()
    watcher = netlink.LinkWatcher()
    timers = wakeup.TimerfdWakeup()
    alerts = VrrpAlerts(config, runner)
    # The runner outlives the instances: a shutdown cancels everything at once, and the
    # instances' "stop" notifications, sent as they stop, must still find it running.
    runner_scope = trio.CancelScope(shield=True)

    async def run_scripts(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
        with runner_scope:
            await runner.run_forever(task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_scripts)
        try:
            await nursery.start(alerts.run)
            await nursery.start(watcher.run_forever)
            await nursery.start(timers.run)
            yield VrrpPorts(
                sockets=_NetSockets(config.global_defs.vrrp_mcast_group4),
                addresses=netlink.AddressManager(),
                vmac=netlink.VmacManager(),
                links=watcher,
                scripts=runner,
                primary_ip=_primary_ip,
                wakeup=timers,
                alerts=alerts,
                nft=_nft_runner(config),
                routes=routes.RouteManager(),
                interface_index=_interface_index,
                sync_daemons=NetlinkIpvs,
            )
        finally:
            runner_scope.cancel()  # the instances have stopped: the runner may stop too
        nursery.cancel_scope.cancel()


async def run_daemon(
    config: Config | PackedLvs,
    options: DaemonOptions,
    *,
    ports: PortsFactory | None = None,
    counters: VrrpCounters | None = None,
    notifier: Notifier | None = None,
    metrics: Metrics | None = None,
    loader: Loader | None = None,
    lvs: LvsFactory | None = None,
    control: Control | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT (or cancellation), then stop every service gracefully.

    ``loader`` re-reads the configuration on SIGHUP (default: ``options.config_path``);
    ``lvs`` builds the health-checker service (default: real probes and kernel IPVS).
    ``control`` makes this a supervised child (``pyalived.supervisor``): the
    configuration comes from it instead of the file, SIGHUP is the supervisor's
    business and is ignored here, and the control link's end stops the daemon.
    """
    ports_factory = ports or production_ports
    counters = counters if counters is not None else VrrpCounters()
    notifier = notifier if notifier is not None else Notifier(None)
    metrics = metrics if metrics is not None else Metrics(counters)
    from pyalived import dump

    stop_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    dump_signals = (dump.SIGDATA, dump.SIGSTATS, dump.SIGJSON)
    if control is not None:
        loader = control.loader
    loader = loader or _file_loader(options)
    runtime: VrrpRuntime | None = None
    lvs_service: LvsService | None = None
    # keepalived's vrrp_*/checker_* process settings, for the half this process runs
    tuner = Tuner("vrrp" if options.vrrp else "checker") if options.tune else None
    if tuner is not None:
        tuner.apply(unpacked(config).global_defs)
    with trio.open_signal_receiver(*stop_signals, *dump_signals) as signals:
        # The command line blocks these until now (no-op otherwise); any that
        # arrived in between are delivered to the receiver.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (*stop_signals, *dump_signals))
        async with trio.open_nursery() as nursery:
            if options.vrrp:
                vrrp_config = unpacked(config)
                runtime = await nursery.start(
                    _vrrp_service, vrrp_config, ports_factory, counters, _attacher(metrics)
                )
                log.info("VRRP started with %d instance(s)", len(vrrp_config.vrrp_instances))
                del vrrp_config
            if options.checkers:
                lvs_service = (lvs or functools.partial(
                    _production_lvs, vrrp_running=options.vrrp))(config, metrics)
                metrics.lvs = lvs_service
                await nursery.start(lvs_service.run)
            del config  # the services hold what they need; a reload replaces it
            if options.metrics_listen is not None:
                await start_metrics(nursery, metrics, *options.metrics_listen)
            await nursery.start(run_watchdog, notifier)
            reloads = await nursery.start(partial(
                _reloader, runtime, lvs_service, loader, notifier, metrics,
                options.reload_timeout, tuner=tuner,
            ))
            if control is not None:
                await nursery.start(
                    control.serve, reloads, metrics, nursery.cancel_scope.cancel
                )
            notifier.ready(status=_status(runtime, lvs_service))
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP and control is not None:
                    log.info("SIGHUP ignored: the supervisor reloads the configuration")
                    continue
                if signum == signal.SIGHUP:
                    queue_reload(reloads)
                    continue
                if signum in dump_signals:
                    await _dump(signum, runtime, counters, options.dump_dir)
                    continue
                log.info("%s received, stopping", signal.Signals(signum).name)
                notifier.stopping(status=f"stopping on {signal.Signals(signum).name}")
                nursery.cancel_scope.cancel()
                break
    log.info("stopped")


def _production_lvs(
    config: Config | PackedLvs, metrics: Metrics, *, vrrp_running: bool = True
) -> LvsService:
    from pyalived.checkers.service import LvsService

    return LvsService(config, probe_observer=metrics.observe_probe, alerts=True,
                      vrrp_running=vrrp_running)


def _status(runtime: VrrpRuntime | None, lvs: LvsService | None) -> str:
    parts = []
    if runtime is not None:
        parts.append(f"{len(runtime.instances)} VRRP instance(s)")
    if lvs is not None:
        parts.append(f"{len(lvs.specs)} virtual server(s)")
    return (", ".join(parts) or "nothing") + " running"


async def start_metrics(nursery: trio.Nursery, metrics: Metrics, host: str, port: int) -> None:
    """Start the metrics server; failing to listen is logged, not fatal (VRRP matters more)."""
    try:
        await nursery.start(serve_metrics, metrics, host, port)
    except OSError as exc:
        log.error("metrics: cannot listen on %s port %d: %s", host, port, exc)
    else:
        log.info("metrics served on %s port %d", host, port)


def _attacher(metrics: Metrics) -> Callable[[Sequence[Instance], Sequence[Instance]], None]:
    def attach(instances: Sequence[Instance], fresh: Sequence[Instance]) -> None:
        metrics.attach(fresh)  # listeners on the new instances only
        metrics.instances = tuple(instances)

    return attach


#: What a loader returns when the files are known to be unchanged (see ``_file_loader``).
UNCHANGED = object()


def _file_loader(
    options: DaemonOptions, unchanged: Callable[[], bool] | None = None
) -> Loader | None:
    """A ``ThreadLoader`` of ``options.config_path``.

    ``unchanged``, checked first in the same thread, may answer that the files
    hold exactly what was last applied: the loader then returns ``UNCHANGED``
    without parsing anything.
    """
    if options.config_path is None:
        return None
    path, config_id = options.config_path, options.config_id

    def interface_exists(name: str) -> bool:
        try:
            socket.if_nametoindex(name)
        except OSError:
            return False
        return True

    def read() -> Any:
        from pyalived.config import load as load_config

        if unchanged is not None and unchanged():
            return UNCHANGED
        return load_config(path, config_id=config_id, interface_exists=interface_exists)

    return ThreadLoader(read, path)


class ThreadLoader:
    """A loader running ``read`` in a worker thread that a timeout may abandon.

    While an abandoned read has not returned (``busy``), later loads raise
    ``ReloadBusy`` at once rather than pile up more hung threads.
    """

    def __init__(self, read: Callable[[], Any], what: str) -> None:
        self._read = read
        self._what = what
        self.busy = False  # set and cleared by the worker thread itself

    def _run(self) -> Any:
        self.busy = True
        # Signals are for the main thread, where trio handles them, never for a read
        # that may hang.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            return self._read()
        finally:
            self.busy = False

    async def __call__(self) -> Any:
        if self.busy:
            raise ReloadBusy(f"the previous read of {self._what} has not returned yet")
        return await trio.to_thread.run_sync(self._run, abandon_on_cancel=True)


def queue_reload(reloads: trio.MemorySendChannel[None]) -> None:
    """SIGHUP: one more reload, unless one is queued already (they coalesce)."""
    try:
        reloads.send_nowait(None)
    except trio.WouldBlock:
        log.info("SIGHUP received: a reload is already queued")


class ReloadBusy(Exception):
    """The loader cannot read now (an earlier, abandoned read is still hung)."""


async def _reloader(
    runtime: VrrpRuntime | None,
    lvs: LvsService | None,
    loader: Loader | None,
    notifier: Notifier,
    metrics: Metrics,
    timeout: float,
    *,
    tuner: Tuner | None = None,
    task_status: trio.TaskStatus[trio.MemorySendChannel[None]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The reload service: one reload per item sent, one at a time.

    The channel holds one item, so SIGHUPs during a reload make exactly one more.
    """
    send, receive = trio.open_memory_channel[None](1)
    task_status.started(send)
    async for _ in receive:
        await _reload(runtime, lvs, loader, notifier, metrics, timeout, tuner)


async def _read(loader: Loader, timeout: float) -> Any:
    """The loader's result, or None (logged) if the read failed or took over ``timeout`` s."""
    with trio.move_on_after(timeout):
        try:
            return await loader()
        except ReloadBusy as exc:
            log.error("reload refused: %s", exc)
            return None
        except Exception:
            log.exception("reload refused: reading the configuration failed")
            return None
    log.error("reload refused: reading the configuration took more than %g s", timeout)
    return None


async def _reload(
    runtime: VrrpRuntime | None,
    lvs: LvsService | None,
    loader: Loader | None,
    notifier: Notifier,
    metrics: Metrics,
    timeout: float,
    tuner: Tuner | None = None,
) -> None:
    """SIGHUP: re-read the config; refuse it whole on errors, else apply the difference."""
    from pyalived.reload import plan_reload

    if loader is None or (runtime is None and lvs is None):
        log.warning("SIGHUP received: nothing to reload (no configuration file or no service)")
        return
    log.info("SIGHUP received: reloading the configuration")
    notifier.reloading()
    try:
        result = await _read(loader, timeout)
        new: Config | PackedLvs | None = None
        if result is not None:
            for diagnostic in result.diagnostics:
                log.warning("reload: %s", diagnostic)
            new = result.config
            if new is None:
                log.error("reload refused: the new configuration has errors")
        if new is None:
            log.error("reload refused: keeping the running configuration")
            metrics.reloaded(False)
            return
        if runtime is not None:
            vrrp_config = unpacked(new)
            plan = plan_reload(runtime.config, vrrp_config)
            log.info("reload: %s", plan.summary())
            await runtime.apply(vrrp_config, plan)
        if lvs is not None:
            await lvs.apply(new)
        if tuner is not None:
            tuner.apply(unpacked(new).global_defs)
        metrics.reloaded(True)
    finally:
        notifier.ready(status=_status(runtime, lvs))


async def _dump(
    signum: int, runtime: VrrpRuntime | None, counters: VrrpCounters, directory: str
) -> None:
    from pyalived import dump

    instances = runtime.instances if runtime is not None else []
    out = dump.dump_for_signal(signum, instances, counters, trio.current_time(), directory)
    if out is None:
        return
    path, text = out
    try:
        await trio.to_thread.run_sync(dump.write_atomically, path, text)
    except OSError as exc:
        log.error("cannot write %s: %s", path, exc)
    else:
        log.info("wrote %s", path)


async def _vrrp_service(
    config: Config,
    ports_factory: PortsFactory,
    counters: VrrpCounters,
    on_instances: Callable[[Sequence[Instance], Sequence[Instance]], None] | None = None,
    *,
    task_status: trio.TaskStatus[VrrpRuntime] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with ports_factory(config) as vrrp_ports, trio.open_nursery() as nursery:
        runtime = VrrpRuntime(config, vrrp_ports, counters, on_instances=on_instances)
        await nursery.start(runtime.run)
        task_status.started(runtime)
