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
changes as one job in the netlink thread of ``pyalived.vrrp.netlink``.  The
job first sends every change in one batch (``encode_route``/``encode_rule``,
pyroute2's message classes encoding, ``send_batch`` writing them on one
rtnetlink socket, several per datagram, and reading the kernel's answers),
so that a hundred routes cost about what one does; a change the batch could
not make goes again through pyroute2's ``IPRoute``, one at a time.  Either way
adding puts the routes first and the rules after them (a rule sends traffic
to a table that should be filled already), removing takes the rules away
first.  Each change is idempotent (an existing route or rule counts as added,
a missing one as removed, and so does a route whose device is gone: the
kernel removed it with the device) and retried with the back-off of the
addresses, removals harder than additions; a change that still fails is
logged with its ``file:line`` and the others are still made, and the first
failure is raised as ``OSError`` once all were tried.  ``release_routes``
does the same removal synchronously, for the supervisor when a VRRP child
could not clean up itself.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Sequence
from socket import AF_INET, AF_INET6
from typing import Any

from pyalived.config.model import VirtualIP, VirtualRoute, VirtualRule
from pyalived.vrrp.netlink import (
    ADD_ATTEMPTS,
    FIRST_DELAY,
    NLMSG_ERROR,
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


# ---- the batch: every change in one go, the kernel's answers read together ----------

RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWRULE, RTM_DELRULE = 24, 25, 32, 33
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RT_TABLE_COMPAT = 252  # rtm_table when the table number needs RTA_TABLE (> 255)
RT_SCOPE_NOWHERE = 255  # a deletion matching any scope, as ``ip route del`` asks
ROUTE_TYPE_NUMBERS = {"unicast": 1, "blackhole": 6, "unreachable": 7, "prohibit": 8,
                      "throw": 9}
RULE_ACTION_NUMBERS = {"table": 1, "goto": 2, "nop": 3, "blackhole": 6, "unreachable": 7,
                       "prohibit": 8}
BATCH_BYTES = 32 * 1024  # requests per send: their acknowledgements fit the receive buffer
_ACK = struct.Struct("=IHHIIi")  # nlmsghdr + the error code of an NLMSG_ERROR


def encode_route(route: VirtualRoute, oif: int | None, adding: bool, seq: int) -> bytes:
    """The RTM_NEWROUTE / RTM_DELROUTE request for ``route`` (``oif``: its device)."""
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    msg = rtmsg()
    msg["family"] = _family(route.family)
    msg["dst_len"] = route.dst.prefixlen
    msg["tos"] = route.tos
    msg["table"] = route.table if route.table < 256 else RT_TABLE_COMPAT
    msg["proto"] = route.protocol
    scope = route.scope if route.scope is not None else 0
    msg["scope"] = scope if adding else (route.scope if route.scope is not None
                                         else RT_SCOPE_NOWHERE)
    msg["type"] = ROUTE_TYPE_NUMBERS[route.type]
    msg["flags"] = RTNH_F_ONLINK if route.onlink else 0
    attrs: list[tuple[str, Any]] = [("RTA_TABLE", route.table)]
    if route.dst.prefixlen:
        attrs.append(("RTA_DST", str(route.dst.network_address)))
    if route.via is not None:
        attrs.append(("RTA_GATEWAY", str(route.via)))
    if oif is not None:
        attrs.append(("RTA_OIF", oif))
    if route.src is not None:
        attrs.append(("RTA_PREFSRC", str(route.src)))
    if route.metric is not None:
        attrs.append(("RTA_PRIORITY", route.metric))
    msg["attrs"] = attrs
    return _encoded(msg, RTM_NEWROUTE if adding else RTM_DELROUTE, adding, seq)


def encode_rule(rule: VirtualRule, adding: bool, seq: int) -> bytes:
    """The RTM_NEWRULE / RTM_DELRULE request for ``rule``."""
    from pyroute2.netlink.rtnl.fibmsg import fibmsg

    msg = fibmsg()
    msg["family"] = _family(rule.family)
    msg["src_len"] = rule.src.prefixlen if rule.src is not None else 0
    msg["dst_len"] = rule.dst.prefixlen if rule.dst is not None else 0
    msg["tos"] = rule.tos
    table = rule.table if rule.action == "table" and rule.table is not None else 0
    msg["table"] = table if table < 256 else 0
    msg["action"] = RULE_ACTION_NUMBERS[rule.action]
    msg["flags"] = FIB_RULE_INVERT if rule.invert else 0
    attrs: list[tuple[str, Any]] = [("FRA_PRIORITY", rule.priority),
                                    ("FRA_PROTOCOL", rule.protocol)]
    if table:
        attrs.append(("FRA_TABLE", table))
    if rule.action == "goto" and rule.goto is not None:
        attrs.append(("FRA_GOTO", rule.goto))
    if rule.src is not None:
        attrs.append(("FRA_SRC", str(rule.src.network_address)))
    if rule.dst is not None:
        attrs.append(("FRA_DST", str(rule.dst.network_address)))
    if rule.iif is not None:
        attrs.append(("FRA_IIFNAME", rule.iif))
    if rule.oif is not None:
        attrs.append(("FRA_OIFNAME", rule.oif))
    if rule.fwmark is not None:
        attrs.append(("FRA_FWMARK", rule.fwmark))
        if rule.fwmask is not None:
            attrs.append(("FRA_FWMASK", rule.fwmask))
    msg["attrs"] = attrs
    return _encoded(msg, RTM_NEWRULE if adding else RTM_DELRULE, adding, seq)


def _encoded(msg: Any, mtype: int, adding: bool, seq: int) -> bytes:
    msg["header"]["type"] = mtype
    flags = NLM_F_REQUEST | NLM_F_ACK
    msg["header"]["flags"] = flags | NLM_F_CREATE | NLM_F_EXCL if adding else flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    data: bytes = msg.data
    return data


def send_batch(requests: Sequence[bytes]) -> list[int]:
    """Send ``requests`` (sequence numbers 1..n, in order) over one rtnetlink socket,
    several per datagram (the kernel runs them in order), and return each one's errno
    (0: done).  Raises OSError if the socket fails or an answer does not come."""
    answers: dict[int, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.settimeout(5.0)
        sock.bind((0, 0))
        start = 0
        while start < len(requests):
            end, size = start, 0
            while end < len(requests) and (end == start or size + len(requests[end])
                                           <= BATCH_BYTES):
                size += len(requests[end])
                end += 1
            sock.send(b"".join(requests[start:end]))
            while any(seq not in answers for seq in range(start + 1, end + 1)):
                data = sock.recv(1 << 16)
                off = 0
                while off + _ACK.size <= len(data):
                    length, mtype, _flags, seq, _pid, code = _ACK.unpack_from(data, off)
                    if length < 16:
                        break
                    if mtype == NLMSG_ERROR:
                        answers[seq] = -code
                    off += (length + 3) & ~3
            start = end
    return [answers[seq] for seq in range(1, len(requests) + 1)]


def apply_changes(ipr: Any, adding: bool, routes: Sequence[VirtualRoute],
                  rules: Sequence[VirtualRule]) -> None:
    """Add (routes, then rules) or remove (rules, then routes) with ``ipr``; every change
    is tried, and the first that failed is raised once all were.

    Every change goes to the kernel in one batch first; the ones that failed for
    another reason than being done already are then made one by one through ``ipr``,
    with retries (``_change``), which also logs them.
    """
    verb = "add" if adding else "delete"
    Step = tuple[str, dict[str, Any], str | None, str, "VirtualRoute | VirtualRule"]
    route_steps: list[Step] = [
        (f"{verb} route {r} ({r.location})", route_request(r), r.dev, "route", r)
        for r in routes
    ]
    rule_steps: list[Step] = [
        (f"{verb} rule {r} ({r.location})", rule_request(r), None, "rule", r) for r in rules
    ]
    steps = route_steps + rule_steps if adding else rule_steps + route_steps
    done = _ADD_DONE if adding else _DEL_DONE
    indexes: dict[str, int | None] = {}
    batched: list[Step] = []
    requests: list[bytes] = []
    slow: list[Step] = []
    for step in steps:
        item, dev = step[4], step[2]
        if isinstance(item, VirtualRule):
            requests.append(encode_rule(item, adding, len(requests) + 1))
        else:
            if dev is not None and dev not in indexes:
                indexes[dev] = _lookup(ipr, dev)
            oif = indexes[dev] if dev is not None else None
            if dev is not None and oif is None:
                if adding:
                    slow.append(step)  # the device may come: retried below
                continue  # removing: the route went away with its device
            requests.append(encode_route(item, oif, adding, len(requests) + 1))
        batched.append(step)
    try:
        codes = send_batch(requests) if requests else []
    except OSError as exc:
        log.warning("%s routes and rules in one batch failed (%s); one by one", verb, exc)
        codes = [errno.EIO] * len(requests)
    slow += [step for step, code in zip(batched, codes, strict=True)
             if code and code not in done]
    order = {id(step): n for n, step in enumerate(steps)}
    slow.sort(key=lambda step: order[id(step)])  # in the order of ``steps``
    first_error: OSError | None = None
    for what, request, dev, call, _item in slow:
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
