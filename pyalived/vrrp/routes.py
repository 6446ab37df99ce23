"""Routes and policy rules on the host: ``virtual_routes``/``virtual_rules`` and the
static ones.

Theory of operation: ``route_request`` and ``rule_request`` are pure: they turn
a ``VirtualRoute`` / ``VirtualRule`` (``pyalived.config.model``) into the
keyword arguments of pyroute2's ``IPRoute.route`` / ``IPRoute.rule``, the
same for adding and for deleting, so that a deletion names exactly what was
added (destination, table, type, metric, TOS, gateway, device and protocol;
the kernel deletes only a route matching every one given, so a route tagged
``proto keepalived`` by this daemon is never mistaken for an operator's).
``RouteManager`` (the ``pyalived.vrrp.ports.RouteManager`` port) runs the
changes as one job in the netlink thread of ``pyalived.vrrp.netlink``:
adding puts the routes first and the rules after them (a rule sends traffic
to a table that should be filled already), removing takes the rules away
first.  Each change is idempotent (an existing route or rule counts as
added, a missing one as removed, and so does a route whose device is gone:
the kernel removed it with the device) and retried with the back-off of the
addresses, removals harder than additions; a change that still fails is
logged with its ``file:line`` and the others are still made, and the first
failure is raised as ``OSError`` once all were tried.  ``release_routes``
does the same removal synchronously, for the supervisor when a VRRP child
could not clean up itself.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from socket import AF_INET, AF_INET6
from typing import Any

from pyalived.config.model import VirtualIP, VirtualRoute, VirtualRule
from pyalived.vrrp.netlink import (
    ADD_ATTEMPTS,
    FIRST_DELAY,
    REMOVE_ATTEMPTS,
    AddressManager,
    NetlinkThread,
    _lookup,
    _netlink_errno,
    _retrying,
    default_thread,
)

log = logging.getLogger("pyalived.vrrp.routes")

RTNH_F_ONLINK = 0x4  # linux/rtnetlink.h
FIB_RULE_INVERT = 0x2  # linux/fib_rules.h
_RULE_ACTIONS = {"table": "FR_ACT_TO_TBL", "goto": "FR_ACT_GOTO",
                 "nop": "FR_ACT_NOP", "blackhole": "FR_ACT_BLACKHOLE",
                 "unreachable": "FR_ACT_UNREACHABLE", "prohibit": "FR_ACT_PROHIBIT"}
# The errors that mean "already there" when adding and "already gone" when removing.
_ADD_DONE = frozenset({errno.EEXIST})
_DEL_DONE = frozenset({errno.ESRCH, errno.ENOENT, errno.ENODEV, errno.EADDRNOTAVAIL})


def _family(version: int) -> int:
    return AF_INET6 if version == 6 else AF_INET


def route_request(route: VirtualRoute) -> dict[str, Any]:
    """pyroute2 ``route()`` arguments for ``route``, but for its device (``dev``),
    which the netlink thread resolves to an index (``oif``)."""
    req: dict[str, Any] = {
        "family": _family(route.family),
        "dst_len": route.dst.prefixlen,
        "table": route.table,
        "proto": route.protocol,
        "type": route.type,
    }
    if route.dst.prefixlen:
        req["dst"] = str(route.dst.network_address)
    if route.via is not None:
        req["gateway"] = str(route.via)
    if route.src is not None:
        req["prefsrc"] = str(route.src)
    if route.scope is not None:
        req["scope"] = route.scope
    if route.metric is not None:
        req["priority"] = route.metric
    if route.tos:
        req["tos"] = route.tos
    if route.onlink:
        req["flags"] = RTNH_F_ONLINK
    return req


def rule_request(rule: VirtualRule) -> dict[str, Any]:
    """pyroute2 ``rule()`` arguments for ``rule``."""
    req: dict[str, Any] = {
        "family": _family(rule.family),
        "priority": rule.priority,
        "action": _RULE_ACTIONS[rule.action],
        "protocol": rule.protocol,
    }
    if rule.action == "table":
        req["table"] = rule.table
    if rule.action == "goto":
        req["goto"] = rule.goto
    if rule.src is not None:
        req["src"], req["src_len"] = str(rule.src.network_address), rule.src.prefixlen
    if rule.dst is not None:
        req["dst"], req["dst_len"] = str(rule.dst.network_address), rule.dst.prefixlen
    if rule.iif is not None:
        req["iifname"] = rule.iif
    if rule.oif is not None:
        req["oifname"] = rule.oif
    if rule.fwmark is not None:
        req["fwmark"] = rule.fwmark
        if rule.fwmask is not None:
            req["fwmask"] = rule.fwmask
    if rule.tos:
        req["tos"] = rule.tos
    if rule.invert:
        req["flags"] = FIB_RULE_INVERT
    return req


def _change(ipr: Any, what: str, adding: bool, request: dict[str, Any], dev: str | None,
            call: str) -> None:
    """One idempotent route or rule change, retried (in the netlink thread)."""

    def op() -> None:
        req = dict(request)
        if dev is not None:
            index = _lookup(ipr, dev)
            if index is None:
                if not adding:
                    return  # the route went away with its device
                raise OSError(errno.ENODEV, f"no interface {dev}")
            req["oif"] = index
        try:
            getattr(ipr, call)("add" if adding else "del", **req)
        except Exception as exc:
            if _netlink_errno(exc) in (_ADD_DONE if adding else _DEL_DONE):
                return
            raise

    attempts = ADD_ATTEMPTS if adding else REMOVE_ATTEMPTS
    _retrying(what, attempts, FIRST_DELAY, op)


def apply_changes(ipr: Any, adding: bool, routes: Sequence[VirtualRoute],
                  rules: Sequence[VirtualRule]) -> None:
    """Add (routes, then rules) or remove (rules, then routes) with ``ipr``; every change
    is tried, and the first that failed is raised once all were."""
    verb = "add" if adding else "delete"
    Step = tuple[str, dict[str, Any], str | None, str]
    route_steps: list[Step] = [
        (f"{verb} route {r} ({r.location})", route_request(r), r.dev, "route") for r in routes
    ]
    rule_steps: list[Step] = [
        (f"{verb} rule {r} ({r.location})", rule_request(r), None, "rule") for r in rules
    ]
    steps = route_steps + rule_steps if adding else rule_steps + route_steps
    first_error: OSError | None = None
    for what, request, dev, call in steps:
        try:
            _change(ipr, what, adding, request, dev, call)
        except OSError as exc:
            log.error("%s", exc)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


class RouteManager:
    """``pyalived.vrrp.ports.RouteManager`` in the netlink thread."""

    def __init__(self, thread: NetlinkThread | None = None) -> None:
        self._thread = thread or default_thread()

    async def add(self, routes: Sequence[VirtualRoute], rules: Sequence[VirtualRule]) -> None:
        if routes or rules:
            await self._thread.call(lambda ipr: apply_changes(ipr, True, routes, rules))

    async def remove(self, routes: Sequence[VirtualRoute],
                     rules: Sequence[VirtualRule]) -> None:
        if routes or rules:
            await self._thread.call(lambda ipr: apply_changes(ipr, False, routes, rules))


def release_routes(routes: Sequence[VirtualRoute], rules: Sequence[VirtualRule],
                   addresses: Sequence[VirtualIP] = ()) -> None:
    """Remove ``rules``, ``routes`` and then the (static) ``addresses`` now, from a
    process without trio (the supervisor)."""
    if not (routes or rules or addresses):
        return
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        try:
            apply_changes(ipr, False, routes, rules)
        except OSError:
            pass  # logged per change; the others were still tried
        try:
            AddressManager._apply(ipr, "del", "", addresses)
        except OSError:
            pass
