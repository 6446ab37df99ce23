"""The daemon: every configured service under one trio nursery.

Theory of operation: ``run_daemon`` is the root task.  It opens the signal
receiver first (so a SIGTERM arriving during start-up is not lost), builds
the side-effect ports (production ones from ``pyalived.vrrp.net``,
``netlink`` and ``scripts`` unless the caller passes its own), starts the VRRP
half (``pyalived.vrrp.instance.run_vrrp``: one task per instance, shared
receivers, track-script runners, the link watcher) and reports itself
started.  SIGTERM and SIGINT cancel the services: each instance then stops
gracefully (priority-0 advert, VIPs removed, VMAC deleted) inside its own
shielded scope, and ``run_daemon`` returns.  SIGHUP is acknowledged but
configuration reload is not implemented yet.

Operations hooks: with ``metrics_listen`` set, a ``pyalived.metrics`` HTTP
server runs as one more service, reading the live counters and instances at
scrape time.  The service manager (``pyalived.sdnotify``) is told READY=1
once every service has started (configuration applied, sockets open),
STOPPING=1 when a stop signal arrives, and, with a watchdog configured,
WATCHDOG=1 from a task on the same event loop.  The health-checker half does
not exist yet: with ``checkers`` only, the daemon runs with no service.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import trio

from pyalived.config.model import Config
from pyalived.metrics import Metrics, serve_metrics
from pyalived.sdnotify import Notifier, run_watchdog
from pyalived.vrrp.instance import Instance, VrrpCounters, VrrpPorts, run_vrrp
from pyalived.vrrp.ports import AdvertSocket, GarpSocket

log = logging.getLogger("pyalived.daemon")

PortsFactory = Callable[[Config], AbstractAsyncContextManager[VrrpPorts]]


@dataclass(frozen=True)
class DaemonOptions:
    vrrp: bool = True  # run the VRRP half (-P alone: only this)
    checkers: bool = True  # run the health-checker half (-C alone: only this; not written yet)
    metrics_listen: tuple[str, int] | None = None  # (host, port) of the metrics server; None: off


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


def _primary_ip(ifname: str) -> IPv4Address:
    from pyalived.vrrp import net

    info: Any = net.interface_info(ifname)
    ip = info.primary_ip
    if ip is None:
        raise OSError(f"interface {ifname} has no IPv4 address")
    return IPv4Address(ip)


@asynccontextmanager
async def production_ports(config: Config) -> AsyncIterator[VrrpPorts]:
    """The real ports: raw sockets, netlink and script runner."""
    from pyalived.vrrp import netlink, scripts

    runner = scripts.TrioScriptRunner()
    watcher = netlink.LinkWatcher()
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run_forever)
        await nursery.start(watcher.run_forever)
        yield VrrpPorts(
            sockets=_NetSockets(config.global_defs.vrrp_mcast_group4),
            addresses=netlink.AddressManager(),
            vmac=netlink.VmacManager(),
            links=watcher,
            scripts=runner,
            primary_ip=_primary_ip,
        )
        nursery.cancel_scope.cancel()


async def run_daemon(
    config: Config,
    options: DaemonOptions,
    *,
    ports: PortsFactory | None = None,
    counters: VrrpCounters | None = None,
    notifier: Notifier | None = None,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT (or cancellation), then stop every service gracefully."""
    ports_factory = ports or production_ports
    counters = counters if counters is not None else VrrpCounters()
    notifier = notifier if notifier is not None else Notifier(None)
    metrics = metrics if metrics is not None else Metrics(counters)
    stop_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    with trio.open_signal_receiver(*stop_signals) as signals:
        # The command line blocks these until now (no-op otherwise); any that
        # arrived in between are delivered to the receiver.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        async with trio.open_nursery() as nursery:
            if options.vrrp:
                await nursery.start(
                    _vrrp_service, config, ports_factory, counters, metrics.attach
                )
                log.info("VRRP started with %d instance(s)", len(config.vrrp_instances))
            if options.checkers and not options.vrrp:
                log.warning("health checkers are not implemented yet; nothing to run")
            if options.metrics_listen is not None:
                await _start_metrics(nursery, metrics, *options.metrics_listen)
            await nursery.start(run_watchdog, notifier)
            notifier.ready(status=f"{len(config.vrrp_instances) if options.vrrp else 0} "
                           "VRRP instance(s) running")
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.warning("SIGHUP received: configuration reload is not supported yet")
                    continue
                log.info("%s received, stopping", signal.Signals(signum).name)
                notifier.stopping(status=f"stopping on {signal.Signals(signum).name}")
                nursery.cancel_scope.cancel()
                break
    log.info("stopped")


async def _start_metrics(nursery: trio.Nursery, metrics: Metrics, host: str, port: int) -> None:
    """Start the metrics server; failing to listen is logged, not fatal (VRRP matters more)."""
    try:
        await nursery.start(serve_metrics, metrics, host, port)
    except OSError as exc:
        log.error("metrics: cannot listen on %s port %d: %s", host, port, exc)
    else:
        log.info("metrics served on %s port %d", host, port)


async def _vrrp_service(
    config: Config,
    ports_factory: PortsFactory,
    counters: VrrpCounters,
    on_instances: Callable[[list[Instance]], None] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with ports_factory(config) as vrrp_ports, trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(run_vrrp, on_instances=on_instances), config, vrrp_ports, counters
        )
        task_status.started()
