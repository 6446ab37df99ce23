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
configuration reload is not implemented yet.  The health-checker half does
not exist yet: with ``checkers`` only, the daemon runs with no service.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import trio

from pyalived.config.model import Config
from pyalived.vrrp.instance import VrrpCounters, VrrpPorts, run_vrrp
from pyalived.vrrp.ports import AdvertSocket, GarpSocket

log = logging.getLogger("pyalived.daemon")

PortsFactory = Callable[[Config], AbstractAsyncContextManager[VrrpPorts]]


@dataclass(frozen=True)
class DaemonOptions:
    vrrp: bool = True  # run the VRRP half (-P alone: only this)
    checkers: bool = True  # run the health-checker half (-C alone: only this; not written yet)


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

    runner: Any = scripts.TrioScriptRunner()
    watcher: Any = netlink.LinkWatcher()
    async with trio.open_nursery() as nursery:
        for service in (runner, watcher):
            run = getattr(service, "run", None)
            if run is not None:
                await nursery.start(run)
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
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT (or cancellation), then stop every service gracefully."""
    ports_factory = ports or production_ports
    counters = counters if counters is not None else VrrpCounters()
    stop_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    with trio.open_signal_receiver(*stop_signals) as signals:
        # The command line blocks these until now (no-op otherwise); any that
        # arrived in between are delivered to the receiver.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        async with trio.open_nursery() as nursery:
            if options.vrrp:
                await nursery.start(_vrrp_service, config, ports_factory, counters)
                log.info("VRRP started with %d instance(s)", len(config.vrrp_instances))
            if options.checkers and not options.vrrp:
                log.warning("health checkers are not implemented yet; nothing to run")
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.warning("SIGHUP received: configuration reload is not supported yet")
                    continue
                log.info("%s received, stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    log.info("stopped")


async def _vrrp_service(
    config: Config,
    ports_factory: PortsFactory,
    counters: VrrpCounters,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with ports_factory(config) as vrrp_ports, trio.open_nursery() as nursery:
        await nursery.start(run_vrrp, config, vrrp_ports, counters)
        task_status.started()
