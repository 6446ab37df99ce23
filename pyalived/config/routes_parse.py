"""Parser for routes, rules and static addresses: ``virtual_routes``, ``virtual_rules``,
``static_ipaddress``, ``static_routes`` and ``static_rules``.

Theory of operation: each line of these blocks is one ``ip route`` / ``ip rule``
command line without its verb, and is read word by word into a frozen
``VirtualRoute`` or ``VirtualRule`` (``pyalived.config.model``), as keepalived
2.2.7 reads it:

* routes: ``[TYPE] [src ADDR] [to] PREFIX [via|gw ADDR] [dev|oif IF] [scope S]
  [table T] [metric|priority|preference M] [protocol P] [tos|dsfield N]
  [onlink]``; TYPE is ``blackhole``, ``unreachable``, ``prohibit`` or
  ``throw`` (those take no gateway or device).  ``default`` is 0.0.0.0/0
  (or ::/0 next to an IPv6 gateway); a prefix with host bits set is
  masked, silently as in keepalived.  Without ``protocol`` a route is tagged
  ``proto keepalived`` (18), as keepalived tags it, which is also what makes
  a deletion match only the route this daemon added; a virtual route with a
  device always is, as keepalived resets it (it tracks such routes).
* rules: ``[not] [from P|all] [to P|all] [iif IF] [oif IF] [fwmark N[/M]]
  [tos N] [preference|priority|order N] [protocol P]`` and one action:
  ``table|lookup T``, ``goto N``, ``blackhole``, ``unreachable``,
  ``prohibit`` or ``nop``.  A rule without an action is ignored with a
  warning, as keepalived does.  A rule without a preference gets one, as
  keepalived gives it: 16384 for the first such rule of the file, then
  16383 and so on, in file order (``RulePreferences``), with keepalived's
  warning.  The family of a rule is its addresses'; without any, the
  instance's (IPv4 for a static rule).
* table names come from ``rt_tables`` (``/etc/iproute2``, then
  ``/usr/share/iproute2``, and their ``.d`` directories), protocol names from
  ``rt_protos``; ``main``, ``local``, ``default`` and ``keepalived`` are
  always known.

Options keepalived knows but pyalived does not implement (route metrics such
as ``mtu`` or ``initcwnd``, multipath ``nexthop``/``or``, ``vrf``,
``encap``, rule ``uidrange``, ``ip_proto``, ``sport``/``dport``,
``suppress_prefixlength``, ``track_group``, ``no_track``...) are warned
about at their ``file:line``; an option that changes where traffic goes
(multipath, ``vrf``, ``encap``) skips the whole line instead, so that a
route is never installed meaning something else.  A line with a bad value
(an address that is not one, families mixed, an unknown table) is warned
about and skipped, as keepalived 2.2.7 skips it (keepalived's own sample
``keepalived.conf.vrrp.rules`` has two such lines); a missing interface is
an error, as for a VIP.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from pathlib import Path

from pyalived.config.diagnostics import Category, DiagnosticSink
from pyalived.config.model import (
    MAIN_TABLE,
    RTPROT_KEEPALIVED,
    Location,
    VirtualRoute,
    VirtualRule,
)
from pyalived.config.tree import Node
from pyalived.config.values import InterfaceExists, ValueReader

IPAddr = IPv4Address | IPv6Address
IPNet = IPv4Network | IPv6Network

U32_MAX = 0xFFFFFFFF
FIRST_DEFAULT_PREFERENCE = 16384  # keepalived's first preference for a rule without one

ROUTE_TYPES = ("blackhole", "unreachable", "prohibit", "throw")
_ROUTE_TYPES_UNSUPPORTED = ("local", "broadcast", "anycast", "multicast", "nat", "unicast")
RULE_ACTIONS = ("blackhole", "unreachable", "prohibit", "nop")
SCOPE_NAMES = {"global": 0, "universe": 0, "site": 200, "link": 253, "host": 254,
               "nowhere": 255}
_BASE_TABLES = {"main": MAIN_TABLE, "local": 255, "default": 253}
_BASE_PROTOS = {"unspec": 0, "redirect": 1, "kernel": 2, "boot": 3, "static": 4,
                "keepalived": RTPROT_KEEPALIVED}
_IPROUTE2_DIRS = (Path("/etc/iproute2"), Path("/usr/share/iproute2"))

# Route options keepalived 2.2.7 takes with one value that pyalived ignores (warned).
_ROUTE_IGNORED_1 = frozenset(
    """mtu hoplimit advmss rtt rttvar reordering window cwnd ssthresh realms rto_min
    initcwnd initrwnd features quickack congctl pref fastopen_no_cookie track_group
    expires ttl-propagate""".split()
)
_ROUTE_METRICS_WITH_LOCK = frozenset(
    "mtu hoplimit advmss rtt rttvar reordering window cwnd ssthresh rto_min initcwnd "
    "initrwnd".split()
)
_ROUTE_IGNORED_FLAGS = frozenset("no_track append prepend".split())
# Options that change where the traffic goes: the line is skipped.
_ROUTE_SKIP_LINE = frozenset("nexthop or vrf encap from".split())
_RULE_IGNORED_1 = frozenset(
    """realms uidrange ip_proto ipproto sport dport suppress_prefixlength
    suppress_ifgroup track_group""".split()
)
_RULE_IGNORED_FLAGS = frozenset("no_track l3mdev".split())


def _name_table(filename: str, base: dict[str, int]) -> dict[str, int]:
    """``NUMBER NAME`` lines of iproute2's ``filename`` (and ``filename.d/*.conf``)."""
    names = dict(base)
    for folder in reversed(_IPROUTE2_DIRS):  # /etc wins
        files = [folder / filename]
        extra = folder / f"{filename}.d"
        if extra.is_dir():
            files += sorted(extra.glob("*.conf"))
        for path in files:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if len(words) >= 2:
                    try:
                        names[words[1]] = int(words[0], 0)
                    except ValueError:
                        continue
    return names


_tables: dict[str, int] | None = None
_protos: dict[str, int] | None = None


def table_number(text: str) -> int | None:
    """A routing table by number or name (``main``, ``rt_tables``); None: unknown."""
    global _tables
    if text.isdigit():
        value = int(text)
        return value if 0 < value <= U32_MAX else None
    if _tables is None:
        _tables = _name_table("rt_tables", _BASE_TABLES)
    return _tables.get(text)


def protocol_number(text: str) -> int | None:
    """A route protocol by number or name (``rt_protos``); None: unknown."""
    global _protos
    if text.isdigit():
        value = int(text)
        return value if value <= 255 else None
    if _protos is None:
        _protos = _name_table("rt_protos", _BASE_PROTOS)
    return _protos.get(text)


def _number(text: str, hi: int) -> int | None:
    try:
        value = int(text, 0)
    except ValueError:
        return None
    return value if 0 <= value <= hi else None


@dataclass
class RulePreferences:
    """keepalived's preferences for rules written without one: 16384, 16383, ... in
    file order, static and virtual rules alike.  ``reserve`` is called in file order
    (an instance's rules are read after the whole file); ``take`` hands the line its
    reserved preference."""

    next: int = FIRST_DEFAULT_PREFERENCE
    reserved: dict[tuple[str, int], int] = field(default_factory=dict)

    def reserve(self, lines: Iterable[Node], exists: InterfaceExists) -> None:
        """Reserve a preference for each line that is a valid rule without one (a
        line keepalived skips takes none); the lines are read here without a word."""
        quiet = RouteReader(ValueReader(DiagnosticSink(), exists), RulePreferences())
        for m in lines:
            words = [m.name, *m.values]
            if any(w in ("preference", "priority", "order", "prio") for w in words):
                continue
            if quiet.rule(words, m.location) is not None:
                self.reserved[(m.location.file, m.location.line)] = self.next
                self.next -= 1

    def take(self, loc: Location) -> int:
        key = (loc.file, loc.line)
        if key not in self.reserved:
            self.reserved[key] = self.next
            self.next -= 1
        return self.reserved[key]


def instance_blocks(body: Iterable[Node], name: str) -> Iterator[Node]:
    """The ``name`` blocks (``virtual_rules``...) among an instance's statements."""
    return (n for n in body if n.name == name)


class RouteReader:
    """Reads route and rule lines into the model; see the module docstring."""

    def __init__(self, r: ValueReader, preferences: RulePreferences) -> None:
        self.r = r
        self.preferences = preferences

    # ---- blocks -----------------------------------------------------------------------

    def routes(self, node: Node, family: int = 4, *, virtual: bool = False
               ) -> list[VirtualRoute]:
        out: list[VirtualRoute] = []
        for m in self.r.block(node):
            self.r.no_block(m)
            route = self.route([m.name, *m.values], m.location, family)
            if route is None:
                continue
            if virtual and route.dev is not None and route.protocol != RTPROT_KEEPALIVED:
                # keepalived tracks a virtual route with a device, which takes its tag.
                self.r.sink.warning(m.location, "a virtual route with a dev keeps protocol "
                                    f"keepalived ({RTPROT_KEEPALIVED}), as in keepalived; "
                                    f"protocol {route.protocol} ignored")
                route = replace(route, protocol=RTPROT_KEEPALIVED)
            out.append(route)
        return out

    def rules(self, node: Node, family: int = 4) -> list[VirtualRule]:
        out: list[VirtualRule] = []
        for m in self.r.block(node):
            self.r.no_block(m)
            rule = self.rule([m.name, *m.values], m.location, family)
            if rule is not None:
                out.append(rule)
        return out

    # ---- values -----------------------------------------------------------------------

    def _skip(self, loc: Location, message: str) -> None:
        """A line keepalived 2.2.7 skips with a warning: so does pyalived."""
        self.r.sink.warning(loc, f"{message}; line skipped")

    def _address(self, loc: Location, what: str, text: str) -> IPAddr | None:
        try:
            return ip_address(text)
        except ValueError:
            self._skip(loc, f"{what} '{text}' is not an IP address")
            return None

    def _prefix(self, loc: Location, what: str, text: str, family: int) -> IPNet | None:
        if text in ("default", "all", "any"):
            return IPv6Network("::/0") if family == 6 else IPv4Network("0.0.0.0/0")
        if text == "default6":  # keepalived 2.2.7 still reads it, and -t says nothing
            self.r.sink.notice(loc, f"{what} default6 is deprecated; write ::/0 instead")
            return IPv6Network("::/0")
        try:
            net = ip_network(text, strict=False)
        except ValueError:
            self._skip(loc, f"{what} '{text}' is not an address[/prefix]")
            return None
        return net  # host bits masked silently, as keepalived does

    def _interface(self, loc: Location, name: str) -> str:
        if not self.r.exists(name):
            self.r.sink.error(loc, f"interface {name} does not exist", Category.MISSING_INTERFACE)
        return name

    # ---- one route ---------------------------------------------------------------------

    def route(self, words: list[str], loc: Location, family: int = 4) -> VirtualRoute | None:
        """One route line; None (reported) when it is not installed."""
        sink = self.r.sink
        kind = "unicast"
        dst_text: str | None = None
        src: IPAddr | None = None
        via: IPAddr | None = None
        dev: str | None = None
        scope: int | None = None
        table = MAIN_TABLE
        metric: int | None = None
        protocol = RTPROT_KEEPALIVED
        tos = 0
        onlink = False
        ok = True
        i = 0
        while i < len(words):
            word = words[i]
            i += 1
            if word in ROUTE_TYPES and dst_text is None and kind == "unicast":
                kind = word
                continue
            if word in _ROUTE_TYPES_UNSUPPORTED and dst_text is None:
                if word != "unicast":
                    sink.warning(loc, f"route type {word} is not supported yet; route ignored")
                    return None
                continue
            if word == "onlink":
                onlink = True
                continue
            if word in _ROUTE_IGNORED_FLAGS:
                sink.warning(loc, f"route option {word} is not supported yet; ignored")
                continue
            if word in _ROUTE_SKIP_LINE:
                sink.warning(loc, f"route option {word} is not supported yet; route ignored")
                return None
            takes_value = word in _ROUTE_IGNORED_1 or word in (
                "src", "to", "via", "gw", "dev", "oif", "scope", "table", "metric",
                "priority", "preference", "protocol", "tos", "dsfield")
            if not takes_value:
                if dst_text is None:
                    dst_text = word
                    continue
                self._skip(loc, f"unknown route option '{word}'")
                return None
            if i >= len(words):
                self._skip(loc, f"route option {word} needs a value")
                return None
            value = words[i]
            i += 1
            if word in _ROUTE_IGNORED_1:
                if word in _ROUTE_METRICS_WITH_LOCK and value == "lock" and i < len(words):
                    i += 1
                sink.warning(loc, f"route option {word} is not supported yet; ignored")
            elif word == "to":
                dst_text = value
            elif word == "src":
                src = self._address(loc, "route src", value)
                ok = ok and src is not None
            elif word in ("via", "gw"):
                if word == "gw":  # still read by keepalived 2.2.7, with a warning
                    sink.warning(loc, "route option gw is deprecated; write via instead")
                via = self._address(loc, "route gateway", value)
                ok = ok and via is not None
            elif word in ("dev", "oif"):
                dev = self._interface(loc, value)
            elif word == "scope":
                scope = SCOPE_NAMES.get(value, _number(value, 255))
                if scope is None:
                    self._skip(loc, f"unknown route scope '{value}'")
                    ok = False
            elif word == "table":
                number = table_number(value)
                if number is None:
                    self._skip(loc, f"routing table {value} not found for route")
                    ok = False
                else:
                    table = number
            elif word in ("metric", "priority", "preference"):
                metric = _number(value, U32_MAX)
                if metric is None:
                    self._skip(loc, f"route {word} '{value}' is not a number in [0, {U32_MAX}]")
                    ok = False
            elif word == "protocol":
                number = protocol_number(value)
                if number is None:
                    self._skip(loc, f"unknown route protocol '{value}'")
                    ok = False
                else:
                    protocol = number
            else:  # tos, dsfield
                number = _number(value, 255)
                if number is None:
                    self._skip(loc, f"route {word} '{value}' is not a number in [0, 255]")
                    ok = False
                else:
                    tos = number
        if dst_text is None:
            self._skip(loc, "route has no destination")
            return None
        hint = next((a.version for a in (via, src) if a is not None), family)
        dst = self._prefix(loc, "route destination", dst_text, hint)
        if dst is None or not ok:
            return None
        if any(a is not None and a.version != dst.version for a in (via, src)):
            self._skip(loc, "cannot mix IPv4 and IPv6 addresses for a route")
            return None
        if kind != "unicast" and (via is not None or dev is not None):
            self._skip(loc, f"a {kind} route takes no gateway or device")
            return None
        if kind == "unicast" and via is None and dev is None:
            self._skip(loc, f"route {dst} needs a gateway (via) or a device (dev)")
            return None
        return VirtualRoute(dst, kind, src, via, dev, scope, table, metric, protocol, tos,
                            onlink, loc)

    # ---- one rule ----------------------------------------------------------------------

    def rule(self, words: list[str], loc: Location, family: int = 4) -> VirtualRule | None:
        """One rule line; None (reported) when it is not installed."""
        sink = self.r.sink
        texts: dict[str, str] = {}
        action: str | None = None
        table: int | None = None
        goto: int | None = None
        iif: str | None = None
        oif: str | None = None
        fwmark: int | None = None
        fwmask: int | None = None
        tos = 0
        priority: int | None = None
        protocol = RTPROT_KEEPALIVED
        invert = False
        ok = True
        i = 0
        while i < len(words):
            word = words[i]
            i += 1
            if word == "not":
                invert = True
                continue
            if word in RULE_ACTIONS:
                action = word
                continue
            if word in _RULE_IGNORED_FLAGS:
                sink.warning(loc, f"rule option {word} is not supported yet; ignored")
                continue
            takes_value = word in _RULE_IGNORED_1 or word in (
                "from", "to", "iif", "iifname", "dev", "oif", "oifname", "fwmark", "tos",
                "dsfield", "preference", "priority", "order", "prio", "table", "lookup",
                "goto", "protocol")
            if not takes_value:
                self._skip(loc, f"unknown rule option '{word}'")
                return None
            if i >= len(words):
                self._skip(loc, f"rule option {word} needs a value")
                return None
            value = words[i]
            i += 1
            if word in _RULE_IGNORED_1:
                sink.warning(loc, f"rule option {word} is not supported yet; ignored")
            elif word in ("from", "to"):
                texts[word] = value
            elif word in ("iif", "iifname", "dev"):
                iif = value
            elif word in ("oif", "oifname"):
                oif = value
            elif word == "fwmark":
                mark_text, _, mask_text = value.partition("/")
                fwmark = _number(mark_text, U32_MAX)
                fwmask = _number(mask_text, U32_MAX) if mask_text else None
                if fwmark is None or (mask_text and fwmask is None):
                    self._skip(loc, f"rule fwmark '{value}' is not MARK[/MASK]")
                    ok = False
            elif word in ("tos", "dsfield"):
                number = _number(value, 255)
                if number is None:
                    self._skip(loc, f"rule {word} '{value}' is not a number in [0, 255]")
                    ok = False
                else:
                    tos = number
            elif word in ("preference", "priority", "order", "prio"):
                priority = _number(value, U32_MAX)
                if priority is None:
                    self._skip(loc, f"rule {word} '{value}' is not a number in [0, {U32_MAX}]")
                    ok = False
            elif word in ("table", "lookup"):
                table = table_number(value)
                action = "table"
                if table is None:
                    self._skip(loc, f"routing table {value} not found for rule")
                    ok = False
            elif word == "goto":
                goto = _number(value, U32_MAX)
                action = "goto"
                if goto is None:
                    self._skip(loc, f"rule goto '{value}' is not a rule preference")
                    ok = False
            else:  # protocol
                number = protocol_number(value)
                if number is None:
                    self._skip(loc, f"unknown rule protocol '{value}'")
                    ok = False
                else:
                    protocol = number
        families = {ip_network(t, strict=False).version for t in texts.values()
                    if _is_prefix(t)}
        hint = min(families, default=family)
        src = dst = None
        if "from" in texts:
            src = self._prefix(loc, "rule from", texts["from"], hint)
            ok = ok and src is not None
        if "to" in texts:
            dst = self._prefix(loc, "rule to", texts["to"], hint)
            ok = ok and dst is not None
        if not ok:
            return None
        if len(families) > 1:
            self._skip(loc, "cannot mix IPv4 and IPv6 addresses for a rule")
            return None
        if action is None:
            sink.warning(loc, "no action specified for rule; ignored")
            return None
        if priority is None:
            priority = self.preferences.take(loc)
            sink.warning(loc, f"rule has no preference specified; setting it to {priority}"
                              " (as keepalived does)")
        if src is not None and src.prefixlen == 0:
            src = None  # ``from all``
        if dst is not None and dst.prefixlen == 0:
            dst = None
        return VirtualRule(hint, priority, action, table, goto, src, dst, iif, oif, fwmark,
                           fwmask, tos, invert, protocol, loc)


def _is_prefix(text: str) -> bool:
    try:
        ip_network(text, strict=False)
    except ValueError:
        return False
    return True
