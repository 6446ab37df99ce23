"""The firewall of ``no_accept`` VIPs: nftables drop rules, as keepalived 2.2.7 sets them.

Theory of operation: RFC 5798 Accept_Mode off (``no_accept``, the default
under ``vrrp_strict``) means a master that does not own its addresses must
not accept packets addressed to them.  keepalived does this with nftables,
and so does pyalived, with the same layout (the table name is ``nftables
TABLE``, default ``keepalived``; the hook priority ``nftables_priority``,
default -1; ``nftables_counters`` adds a counter to each rule):

- ``table ip keepalived``: a set ``vips`` (``ipv4_addr``) and two base chains,
  ``in`` (hook input: ``ip daddr @vips drop``) and ``out`` (hook output:
  ``ip saddr @vips drop``);
- ``table ip6 keepalived``: the same with ``ipv6_addr``, plus neighbour
  solicitations and advertisements accepted first (a set
  ``neighbor-discovery``), and link-local VIPs matched with their interface
  (a set ``vips_link_local`` of ``ipv6_addr . iface_index``, chains
  ``in_link_local`` and ``out_link_local``).

A table exists for a family as long as some ``no_accept`` instance has a VIP
of that family in the configuration; its sets hold the VIPs of the instances
that are MASTER now.  ARP, and the adverts (sent from the interface's own
address), are untouched, so the instance still elects normally.

``VipFirewall`` holds the desired state: the settings and, for each owner
(an instance), the VIPs it blocks.  ``plan`` (pure) turns the state known
to be in the kernel and the desired one into one nftables JSON batch, which
the ``NftRunner`` port (``pyalived.vrrp.nftables``: libnftables, or ``nft -j
-f -``) applies as one transaction, so a failing batch changes nothing.
While the settings are unchanged, a batch only adds and deletes set
elements; a reload that changes them (or the first batch after a start)
replaces the tables whole in one transaction, so the leftovers of a killed
daemon are replaced, never duplicated.  A failed batch is logged and the
state tried again every ``RETRY_INTERVAL`` seconds by ``run`` until it
applies (at most one error line per ``ERROR_LOG_INTERVAL``); ``close``
deletes the tables on stop.

The driver (``pyalived.vrrp.instance``) blocks an instance's VIPs before
adding them to the interface and unblocks them after removing them, so a
non-owner master never answers for a VIP, even for a moment.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Any

import trio

from pyalived.config.model import Config, VirtualIP, VrrpInstance
from pyalived.limits import LogThrottle
from pyalived.vrrp.ports import FirewallError, NftRunner

log = logging.getLogger("pyalived.vrrp")

RETRY_INTERVAL = 1.0  # seconds between attempts at a batch that failed
CLOSE_ATTEMPTS = 3  # attempts at deleting the tables on stop
ERROR_LOG_INTERVAL = 10.0  # seconds between two log lines about failing batches
LINK_LOCAL = IPv6Network("fe80::/10")

JsonCmd = dict[str, Any]


@dataclass(frozen=True)
class Blocked:
    """One address a ``no_accept`` master blocks; ``dev`` is set for an IPv6 link-local
    address only (it is matched together with its interface)."""

    ip: IPv4Address | IPv6Address
    dev: str | None = None

    @property
    def family(self) -> int:
        return self.ip.version


@dataclass(frozen=True)
class FirewallSettings:
    table: str = "keepalived"
    priority: int = -1
    counters: bool = False
    ifindex: bool = False  # nftables_ifindex: accepted; interfaces are matched by index anyway
    families: frozenset[int] = frozenset()  # 4, 6: the tables there must be


def blocks(conf: VrrpInstance) -> bool:
    """Whether the instance's VIPs are blocked while it is MASTER."""
    return conf.accept is False


def firewall_settings(config: Config) -> FirewallSettings:
    """The firewall a configuration needs (no family at all: none)."""
    g = config.global_defs
    families = frozenset(
        vip.ip.version
        for inst in config.vrrp_instances if blocks(inst)
        for vip in (*inst.virtual_ipaddress, *inst.virtual_ipaddress_excluded)
    )
    return FirewallSettings(g.nftables, g.nftables_priority, g.nftables_counters,
                            g.nftables_ifindex, families)


def blocked(vips: Iterable[VirtualIP], vip_dev: str) -> frozenset[Blocked]:
    """The elements for ``vips`` configured on ``vip_dev`` (or each VIP's own ``dev``)."""
    out: set[Blocked] = set()
    for vip in vips:
        ip = vip.ip
        if isinstance(ip, IPv6Address) and ip in LINK_LOCAL:
            out.add(Blocked(ip, vip.dev or vip_dev))
        else:
            out.add(Blocked(ip))
    return frozenset(out)


# ---- the nftables JSON batches (pure) ------------------------------------------------------


def _family(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def _elem(b: Blocked) -> object:
    return {"concat": [str(b.ip), b.dev]} if b.dev is not None else str(b.ip)


def _match(left: object, right: object) -> JsonCmd:
    return {"match": {"op": "==", "left": left, "right": right}}


def _payload(protocol: str, field: str) -> JsonCmd:
    return {"payload": {"protocol": protocol, "field": field}}


def table_commands(settings: FirewallSettings, family: int,
                   elements: Iterable[Blocked]) -> list[JsonCmd]:
    """Create the table of ``family`` with its sets, chains and rules and ``elements``."""
    fam, table = _family(family), settings.table
    proto = "ip" if family == 4 else "ip6"
    count: list[JsonCmd] = [{"counter": {"packets": 0, "bytes": 0}}] if settings.counters else []

    def chain(name: str, hook: str | None = None) -> JsonCmd:
        body: JsonCmd = {"family": fam, "table": table, "name": name}
        if hook is not None:
            body.update(type="filter", hook=hook, prio=settings.priority, policy="accept")
        return {"add": {"chain": body}}

    def rule(chain_name: str, *expr: JsonCmd) -> JsonCmd:
        return {"add": {"rule": {"family": fam, "table": table, "chain": chain_name,
                                 "expr": [*expr[:-1], *count, expr[-1]]}}}

    def add_set(name: str, type_: object, **extra: object) -> JsonCmd:
        return {"add": {"set": {"family": fam, "table": table, "name": name, "type": type_,
                                **extra}}}

    drop: JsonCmd = {"drop": None}
    cmds: list[JsonCmd] = [
        {"add": {"table": {"family": fam, "name": table}}},
        add_set("vips", "ipv4_addr" if family == 4 else "ipv6_addr"),
    ]
    if family == 6:
        cmds += [
            add_set("neighbor-discovery", "icmpv6_type", flags=["constant"],
                    elem=["nd-neighbor-solicit", "nd-neighbor-advert"]),
            add_set("vips_link_local", ["ipv6_addr", "iface_index"]),
        ]
    cmds += [chain("out", "output"), chain("in", "input")]
    if family == 6:
        ll = {"prefix": {"addr": "fe80::", "len": 10}}
        nd = _match(_payload("icmpv6", "type"), "@neighbor-discovery")
        cmds += [
            chain("in_link_local"), chain("out_link_local"),
            rule("out", nd, {"accept": None}),
            rule("out", _match(_payload(proto, "saddr"), ll),
                 {"goto": {"target": "out_link_local"}}),
        ]
    cmds.append(rule("out", _match(_payload(proto, "saddr"), "@vips"), drop))
    if family == 6:
        cmds += [
            rule("in", nd, {"accept": None}),
            rule("in", _match(_payload(proto, "daddr"), ll),
                 {"goto": {"target": "in_link_local"}}),
        ]
    cmds.append(rule("in", _match(_payload(proto, "daddr"), "@vips"), drop))
    if family == 6:
        for name, addr, meta in (("in_link_local", "daddr", "iif"),
                                 ("out_link_local", "saddr", "oif")):
            left = {"concat": [_payload(proto, addr), {"meta": {"key": meta}}]}
            cmds.append(rule(name, _match(left, "@vips_link_local"), drop))
    cmds += element_commands("add", settings, family, elements)
    return cmds


def element_commands(verb: str, settings: FirewallSettings, family: int,
                     elements: Iterable[Blocked]) -> list[JsonCmd]:
    """``verb`` (add, delete) ``elements`` in the sets of the table of ``family``."""
    plain = sorted((b for b in elements if b.dev is None), key=lambda b: b.ip)
    linked = sorted((b for b in elements if b.dev is not None), key=lambda b: (b.ip, b.dev))
    cmds: list[JsonCmd] = []
    for name, items in (("vips", plain), ("vips_link_local", linked)):
        if items:
            cmds.append({verb: {"element": {"family": _family(family), "table": settings.table,
                                            "name": name, "elem": [_elem(b) for b in items]}}})
    return cmds


def drop_table_commands(table: str, family: int) -> list[JsonCmd]:
    """Delete the table whether or not it exists (adding it first makes the delete valid)."""
    body = {"table": {"family": _family(family), "name": table}}
    return [{"add": body}, {"delete": body}]


Applied = dict[int, frozenset[Blocked]]  # family -> the elements in its table


def plan(applied_settings: FirewallSettings | None, applied: Applied,
         settings: FirewallSettings, desired: Mapping[int, frozenset[Blocked]]) -> list[JsonCmd]:
    """The batch from the kernel's state (``applied_settings`` None: unknown, e.g. at
    start, when a killed daemon may have left tables) to the desired one."""
    want = {f: desired.get(f, frozenset()) for f in settings.families}
    if applied_settings != settings:
        cmds: list[JsonCmd] = []
        tables = {settings.table} | ({applied_settings.table} if applied_settings else set())
        for table in sorted(tables):
            for family in (4, 6):
                cmds += drop_table_commands(table, family)
        for family in sorted(want):
            cmds += table_commands(settings, family, want[family])
        return cmds
    cmds = []
    for family in sorted(want):
        have = applied.get(family, frozenset())
        cmds += element_commands("delete", settings, family, have - want[family])
        cmds += element_commands("add", settings, family, want[family] - have)
    return cmds


# ---- the service ----------------------------------------------------------------------------


class VipFirewall:
    """The desired firewall state, kept applied; see the module docstring."""

    def __init__(self, runner: NftRunner, settings: FirewallSettings,
                 *, retry_interval: float = RETRY_INTERVAL) -> None:
        self._runner = runner
        self.settings = settings
        self._owners: dict[Hashable, frozenset[Blocked]] = {}
        self._applied_settings: FirewallSettings | None = None
        self._applied: Applied = {}
        self._retry_interval = retry_interval
        self._lock = trio.Lock()
        self._ok = True  # False while the kernel lags behind the desired state
        self._wake = trio.Event()  # set when a batch fails, for ``run``
        self._touched = False  # anything was ever asked of the kernel
        self._errors = LogThrottle(log, ERROR_LOG_INTERVAL, trio.current_time)

    @property
    def in_sync(self) -> bool:
        return self._ok

    def desired(self) -> dict[int, frozenset[Blocked]]:
        out: dict[int, set[Blocked]] = {}
        for elements in self._owners.values():
            for b in elements:
                out.setdefault(b.family, set()).add(b)
        return {f: frozenset(s) for f, s in out.items()}

    async def configure(self, settings: FirewallSettings) -> None:
        """New settings (start-up, reload); a firewall that is not needed is left alone
        until it has been used."""
        self.settings = settings
        if settings.families or self._touched:
            await self.sync()

    async def block(self, owner: Hashable, elements: frozenset[Blocked]) -> None:
        self._owners[owner] = self._owners.get(owner, frozenset()) | elements
        await self.sync()

    async def unblock(self, owner: Hashable, elements: frozenset[Blocked] | None = None) -> None:
        """Stop blocking ``elements`` (None: all) for ``owner``."""
        left = frozenset() if elements is None else self._owners.get(owner, frozenset()) - elements
        if left:
            self._owners[owner] = left
        elif self._owners.pop(owner, None) is None:
            return
        await self.sync()

    async def sync(self) -> bool:
        """Apply the desired state; False (logged, retried by ``run``) if that failed."""
        async with self._lock:
            settings, desired = self.settings, self.desired()
            cmds = plan(self._applied_settings, self._applied, settings, desired)
            if not cmds:
                self._ok = True
                return True
            self._touched = True
            try:
                await self._runner.run(cmds)
            except FirewallError as exc:
                self._errors.log(logging.ERROR, "nftables: setting the VIP drop rules failed"
                                 " (retrying every %gs): %s", self._retry_interval, exc)
                self._ok = False
                self._wake.set()
                return False
            was_failing = not self._ok
            self._ok = True
            if settings != self._applied_settings and settings.families:
                log.info("nftables: table %s (%s, priority %d) drops traffic to the VIPs of"
                         " no_accept instances", settings.table,
                         ", ".join(_family(f) for f in sorted(settings.families)),
                         settings.priority)
            self._applied_settings = settings
            self._applied = {f: desired.get(f, frozenset()) for f in settings.families}
            if was_failing:
                log.warning("nftables: the VIP drop rules are set")
            return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Retry a failed batch every ``retry_interval`` until it applies; forever."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while not self._ok:
                await trio.sleep(self._retry_interval)
                await self.sync()

    async def close(self) -> None:
        """Delete the tables (stop); retried a few times, then logged."""
        self._owners.clear()
        if not self._touched:
            return
        async with self._lock:
            tables = {self.settings.table}
            if self._applied_settings is not None:
                tables.add(self._applied_settings.table)
            cmds = [c for t in sorted(tables) for f in (4, 6) for c in drop_table_commands(t, f)]
            for attempt in range(1, CLOSE_ATTEMPTS + 1):
                try:
                    await self._runner.run(cmds)
                except FirewallError as exc:
                    log.error("nftables: deleting table %s failed (attempt %d): %s",
                              self.settings.table, attempt, exc)
                    await trio.sleep(min(self._retry_interval, 0.2) * attempt)
                    continue
                self._applied_settings = None
                self._applied = {}
                return
            log.error("nftables: table %s left behind", self.settings.table)
