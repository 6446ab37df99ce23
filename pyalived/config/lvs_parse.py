"""Parser for the LVS half of keepalived.conf: virtual_server and virtual_server_group.

Theory of operation: ``LvsParser`` takes the top-level statements of its half
from the loader (``pyalived.config.parser``) and fills the frozen LVS
dataclasses of ``pyalived.config.model``.  The blocks ``virtual_server``,
``real_server``, the checkers and ``url`` each have a keyword table
(``pyalived.config.keywords``) of ``field`` lines and handlers, reading
values with the shared readers of ``pyalived.config.values`` plus the LVS
ones below (forwarding method, scheduler, netmask, sorry server, digest).
The generic checker options (``delay_loop``, ``connect_timeout``, ``retry``,
``delay_before_retry``, ``warmup``, ``alpha``) are one table part shared by
the three levels, kept exactly as written at each level (``None`` inherits);
``pyalived.checkers.compile`` resolves the inheritance later.  A checker type's
table says which keywords it takes: ``connect_timeout`` is unknown to
MISC_CHECK, ``url`` to TCP_CHECK, ``enable_sni`` to all but SSL_GET.
A ``url``'s ``regex`` must compile (``pyalived.checkers.bodymatch``) and its
companions follow keepalived's end-of-url rules (dropped with a warning
without a regex, or with a minimum offset above the maximum); the top-level
``SSL`` block's files must load (``pyalived.checkers.tls``), else the
configuration is refused with the block's line.

As in keepalived 2.2.7, a virtual server given by address without
``protocol`` gets UDP (the kernel's choice for protocol 0), one without
``lvs_sched`` gets ``wlc`` and one without ``lvs_method`` gets NAT, each with
a warning; ``ha_suspend`` is dropped for fwmark services and ``ops`` for
anything but UDP.  ``lvs_method TUN`` (and ``sorry_server_lvs_method``)
takes keepalived's tunnel options, ``type ipip|gue port N|gre`` and one of
``nocsum|csum|remcsum``, with its checks (GUE needs a port, only GUE has
one; ipip takes no checksum option, GRE no ``remcsum``); options after NAT
or DR are warned about and ignored.  ``persistence_engine`` names an IPVS
persistence engine (a longer name than 15 characters is cut, with a
warning).  ``FILE_CHECK { track_file NAME; weight N [reverse] }`` refers to a
top-level ``track_file`` (unknown names are errors, checked once the whole
file is read).  Checker types this project does not run yet (BFD_CHECK)
are warnings and skipped; the rest of their real server still
applies, but a real server left with no other checker is never counted as up
(its ``unsupported_checkers`` say why; see ``pyalived.checkers.compile``).
SMTP_CHECK's ``host { }`` sub-blocks each become one more SMTP_CHECK with the
block's ``helo_name`` and generic options and the host's connection options
(those it leaves out are the block's); a block with hosts does not check
the real server itself unless a host names it.  Bad addresses,
out-of-range numbers, unknown schedulers or forwarding methods and
references to unknown groups are errors, which refuse the configuration.

IPv6: every address (virtual, real and sorry servers, ``connect_ip``,
``bindto``, group entries) may be IPv4 or IPv6, written bare
(``2001:db8::1 80``); a group's IPv6 range ends in hexadecimal, the last 16
bits of its last address (``2001:db8::10-20``), or in a full address, and
``fwmark N inet6`` gives a group's fwmark its family.  A virtual server's
family is settled as keepalived does, in file order: by its address, else by
``ip_family``, ``persistence_granularity`` (a prefix length up to 128 for
IPv6) or the first real server not tunnelled, else by its sorry server; a
fwmark service whose real servers are all tunnelled takes theirs if they
agree, else IPv4.  A real or sorry server of the other family is skipped
with a warning unless it is tunnelled (IPVS forwards across families only
through a tunnel), and so is a ``bindto`` of another family than the
address checked; a group virtual server whose family does not match its
group's is warned about and makes no IPVS service (keepalived ignores it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from socket import AF_INET, AF_INET6

import dns.exception
import dns.name

from pyalived.checkers.bodymatch import KNOWN_OPTIONS, NO_EQUIVALENT, compile_regex
from pyalived.checkers.tls import TlsClient, TlsConfigError, client_context
from pyalived.config.keywords import Block, Handler, Keywords, field, user_fields, writes
from pyalived.config.model import (
    Checker,
    CheckerOptions,
    CheckerType,
    Config,
    FileCheck,
    IPAddress,
    Location,
    LvsMethod,
    LvsProtocol,
    LvsTunnel,
    RealServer,
    SorryServer,
    SslSettings,
    UrlCheck,
    VirtualServer,
    VirtualServerGroup,
    VirtualServerGroupEntry,
    family_name,
    host_port,
)
from pyalived.config.tree import Node
from pyalived.config.values import Read, ValueReader, float_in, int_in, one_of
from pyalived.ipvs.model import (
    DEFAULT_PERSISTENCE_TIMEOUT,
    DEFAULT_SCHEDULER,
    PE_NAME_MAX,
    SCHEDULERS,
    TUN_FLAGS,
    TUN_TYPES,
    Protocol,
    ServiceKey,
)

U31 = 2**31 - 1


def _family_of(address: IPAddress) -> int:
    return AF_INET6 if address.version == 6 else AF_INET


def group_families(group: VirtualServerGroup) -> set[int]:
    """The address families a group names: its addresses' and its fwmarks' given ones."""
    out: set[int] = set()
    for entry in group.entries:
        if entry.first is not None:
            out.add(_family_of(entry.first))
        elif entry.family is not None:
            out.add(entry.family)
        if len(out) == 2:
            break
    return out


def group_mismatch(vs: VirtualServer, group: VirtualServerGroup) -> str | None:
    """Why keepalived ignores the group virtual server ``vs`` (None: it does not).

    A virtual server whose family is settled (by a real or sorry server not
    tunnelled, ``ip_family`` or ``persistence_granularity``) needs a group of
    that family alone.
    """
    if vs.family is None:
        return None
    families = group_families(group)
    if len(families) == 2:
        return "a group with IPv4 and IPv6 addresses needs every real server tunnelled"
    if families and vs.family not in families:
        return (
            f"the group is {family_name(families.pop())}, the virtual server"
            f" {family_name(vs.family)} (from its real servers or ip_family)"
        )
    return None


def service_keys(
    vs: VirtualServer, groups: Mapping[str, VirtualServerGroup]
) -> tuple[ServiceKey, ...]:
    """The IPVS services of a virtual_server block (a group gives several, or none if
    unknown or of the wrong address family: see ``group_mismatch``)."""
    proto = Protocol[vs.protocol.value]
    if vs.fwmark is not None:
        return (ServiceKey.mark(vs.fwmark, vs.family or AF_INET),)
    if vs.address is not None:
        return (ServiceKey.inet(vs.address, vs.port or 0, proto),)
    group = groups.get(vs.group or "")
    if group is None or group_mismatch(vs, group) is not None:
        return ()
    family = vs.family
    if family is None:
        families = group_families(group)
        family = families.pop() if len(families) == 1 else None
    keys: list[ServiceKey] = []
    for entry in group.entries:
        if entry.fwmark is not None:
            keys.append(ServiceKey.mark(entry.fwmark, entry.family or family or AF_INET))
        else:
            keys.extend(ServiceKey.inet(a, entry.port or 0, proto) for a in entry.addresses())
    return tuple(dict.fromkeys(keys))

U32 = 2**32 - 1
MAX_TIMER = 86400.0 * 365
MAX_GROUP_RANGE = 65536  # addresses in one virtual_server_group range

UNSUPPORTED_CHECKERS = frozenset("BFD_CHECK".split())
DNS_TYPES = frozenset("A NS CNAME SOA MX TXT AAAA".split())
MAX_UDP_PAYLOAD = 65507
SCHED_FLAGS = frozenset("flag-1 flag-2 flag-3 sh-port sh-fallback mh-port mh-fallback".split())
UNSUPPORTED_VS = frozenset(
    """snmp_name nat_mask lvs_sync_daemon tunnel_type""".split()
)
UNSUPPORTED_RS = frozenset("snmp_name".split())  # and UNSUPPORTED_CHECKERS
UNSUPPORTED_CHECKER_OPTS: frozenset[str] = frozenset()
UNSUPPORTED_URL: frozenset[str] = frozenset()
MAX_REGEX_OFFSET = 2**63 - 1
_REGEX_PARAMS = ("regex_no_match", "regex_options", "regex_min_offset", "regex_max_offset")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{32}")
_NO_OPTIONS = CheckerOptions()
_PROTOCOLS = {p.value: p for p in LvsProtocol}
_FAMILIES = {"inet": AF_INET, "inet6": AF_INET6}
_HTTP_PROTOCOLS = {v: v for v in ("1.0", "1.0C", "1.1")}

Option = float | int | bool  # a generic checker option's value


def tls_client(settings: SslSettings | None) -> TlsClient:
    """The checkers' TLS client settings from the ``SSL`` block (default without one)."""
    if settings is None:
        return TlsClient()
    return TlsClient(settings.certificate, settings.key, settings.password, settings.ca)


# ---- block states ------------------------------------------------------------------


class _Options(Block):
    """A block that takes the generic checker options: virtual server, real server, checker.

    The constructors set every slot themselves: tens of thousands of real
    servers and checkers make the calls up the class chain add up.
    """

    __slots__ = ("lvs", "opts")
    lvs: LvsParser
    opts: dict[str, Option]  # CheckerOptions' fields


class _VirtualServer(_Options):
    __slots__ = ("family", "flags", "real_servers", "seen")

    def __init__(
        self, r: ValueReader, label: str, lvs: LvsParser, family: int | None
    ) -> None:
        self.r, self.label, self.lvs = r, label, lvs
        self.fields = {}
        self.opts = {}
        self.flags: set[str] = set()
        self.real_servers: list[RealServer] = []
        # real servers so far, by (address, version, port)
        self.seen: dict[tuple[int, int, int | None], Location] = {}
        # The address family as settled so far, in file order as keepalived does:
        # the address's, ip_family, persistence_granularity, a real server not tunnelled.
        self.family = family


class _RealServer(_Options):
    __slots__ = ("address", "checkers", "file_checks", "port", "unsupported")

    def __init__(
        self, r: ValueReader, lvs: LvsParser, address: IPAddress, port: int | None
    ) -> None:
        self.r, self.label, self.lvs = r, "", lvs
        self.fields = {}
        self.opts = {}
        self.address = address
        self.port = port
        self.checkers: list[Checker] = []
        self.file_checks: list[FileCheck] = []
        self.unsupported: list[str] = []  # checkers not run: "KIND at FILE:LINE"

    def where(self) -> str:
        return f"real_server {host_port(self.address, self.port)}"


class _Checker(_Options):
    __slots__ = ("hosts", "urls")

    def __init__(self, r: ValueReader, label: str, lvs: LvsParser) -> None:
        self.r, self.label, self.lvs = r, label, lvs
        self.fields = {}
        self.opts = {}
        self.urls: list[UrlCheck] = []
        self.hosts: list[tuple[Location, dict[str, object]]] = []  # SMTP_CHECK host { }


class _Url(Block):
    __slots__ = ("status",)

    def __init__(self, r: ValueReader) -> None:
        super().__init__(r, "url")
        self.status: list[tuple[int, int]] = []


def option(name: str, read: Read[Option]) -> Handler[_Options]:
    """A handler that reads one generic checker option into ``opts[name]``."""

    @writes(name)
    def handle(block: _Options, node: Node) -> None:
        value = read(block.r, node)
        if value is not None:  # a bad value is reported and leaves the option as it was
            block.opts[name] = value

    return handle


# ---- readers -------------------------------------------------------------------------


def _method(r: ValueReader, node: Node) -> LvsMethod | None:
    """``NAT``, ``DR`` or ``TUN`` (``MASQ`` is NAT), without its tunnel options."""
    read = _method_tunnel(r, node)
    return None if read is None else read[0]


def _method_tunnel(r: ValueReader, node: Node) -> tuple[LvsMethod, LvsTunnel | None] | None:
    """``NAT``, ``DR`` or ``TUN [type ipip|gue port N|gre] [nocsum|csum|remcsum]``."""
    r.no_block(node)
    if not node.values:
        r.sink.error(node.location, f"{node.name} needs NAT, DR or TUN")
        return None
    word = node.values[0].upper()
    if word == "MASQ":
        word = "NAT"
    try:
        method = LvsMethod(word)
    except ValueError:
        r.sink.error(
            node.location,
            f"{node.name}: unknown forwarding method '{node.values[0]}' (NAT, DR or TUN)",
        )
        return None
    rest = node.values[1:]
    if method is not LvsMethod.TUN:
        if rest:
            r.sink.warning(
                node.location,
                f"{node.name}: options of {method.value} ignored: {' '.join(rest)}",
            )
        return method, None
    kind, port, checksum = "ipip", 0, "nocsum"
    i = 0
    while i < len(rest):
        word = rest[i].lower()
        value = rest[i + 1] if i + 1 < len(rest) else None
        if word == "type":
            if value is None or value.lower() not in TUN_TYPES:
                r.sink.error(
                    node.location, f"{node.name}: unknown tunnel type {value} (ipip, gue or gre)"
                )
                return None
            kind = value.lower()
            i += 2
        elif word == "port":
            if value is None or not value.isdigit() or not 1 <= int(value) <= 65535:
                r.sink.error(
                    node.location, f"{node.name}: tunnel port {value} is outside [1, 65535]"
                )
                return None
            port = int(value)
            i += 2
        elif word in TUN_FLAGS:
            checksum = word
            i += 1
        else:
            r.sink.error(node.location, f"{node.name}: unknown tunnel option '{rest[i]}'")
            return None
    if (kind == "gue") != (port != 0):
        r.sink.error(node.location, f"{node.name}: gue tunnels need a port, and only they take one")
        return None
    if kind == "ipip" and checksum != "nocsum":
        r.sink.error(node.location, f"{node.name}: ipip tunnels take no checksum option")
        return None
    if kind == "gre" and checksum == "remcsum":
        r.sink.error(node.location, f"{node.name}: gre tunnels do not support remcsum")
        return None
    return method, LvsTunnel(kind, port, checksum)


def method_field(method: str, tunnel: str) -> Handler[Block]:
    """A handler of ``lvs_method``-like keywords: the method and its tunnel options."""

    @writes(method, tunnel)
    def handle(block: Block, node: Node) -> None:
        read = _method_tunnel(block.r, node)
        if read is not None:
            block.fields[method], block.fields[tunnel] = read

    return handle


def _persistence_engine(r: ValueReader, node: Node) -> str | None:
    name = r.one(node)
    if name is not None and len(name) > PE_NAME_MAX:
        r.sink.warning(
            node.location,
            f"{node.name}: '{name}' is longer than {PE_NAME_MAX} characters; cut to"
            f" '{name[:PE_NAME_MAX]}'",
        )
        name = name[:PE_NAME_MAX]
    return name


def _scheduler(r: ValueReader, node: Node) -> str | None:
    name = r.one(node)
    if name is None:
        return None
    if name not in SCHEDULERS:
        r.sink.error(
            node.location,
            f"{node.name}: unknown scheduler '{name}' ({', '.join(sorted(SCHEDULERS))})",
        )
        return None
    return name


def _granularity(r: ValueReader, node: Node, family: int | None) -> tuple[int, int] | None:
    """A prefix length, or an IPv4 netmask as one, and the family it is for.

    As in keepalived: for an IPv6 service a prefix length in [1, 128]; for an
    IPv4 one a netmask or a prefix length; for a service of no family yet,
    IPv4 if the value has a dot, else IPv6.
    """
    text = r.one(node)
    if text is None:
        return None
    if family is None:
        family = AF_INET if "." in text else AF_INET6
    if family == AF_INET6:
        if text.isdigit() and 1 <= int(text) <= 128:
            return int(text), family
        r.sink.error(
            node.location, f"persistence_granularity '{text}' is not an IPv6 prefix length"
            " (1 to 128)"
        )
        return None
    try:
        if text.isdigit():
            prefix = int(text)
            if prefix > 32:
                raise ValueError(text)
            return prefix, family
        return IPv4Network(f"0.0.0.0/{text.lstrip('/')}").prefixlen, family
    except ValueError:
        r.sink.error(node.location, f"persistence_granularity '{text}' is not an IPv4 netmask")
        return None


def _ip(r: ValueReader, node: Node, text: str) -> IPAddress | None:
    """``text`` (a word of ``node``) as an IPv4 or IPv6 address (errors reported)."""
    if ":" not in text:
        return r.ipv4(node, text)
    try:
        addr = IPv6Address(text)
    except ValueError:
        r.sink.error(node.location, f"{node.name}: '{text}' is not an IP address")
        return None
    if addr.scope_id is not None:
        r.sink.error(
            node.location, f"{node.name}: '{text}': addresses with a zone are not supported"
        )
        return None
    return addr


def _address(r: ValueReader, node: Node) -> IPAddress | None:
    """The one word of the statement as an IPv4 or IPv6 address."""
    text = r.one(node)
    return None if text is None else _ip(r, node, text)


def _ip_port(r: ValueReader, node: Node) -> tuple[IPAddress, int | None] | None:
    """``IP [PORT]`` of a ``sorry_server`` or ``real_server`` line (errors reported).

    Port 0, as keepalived reads it, is no port: the usual way to write a
    real server of a fwmark service (None here).
    """
    if not node.values:
        r.sink.error(node.location, f"{node.name} needs IP [PORT]")
        return None
    addr = _ip(r, node, node.values[0])
    if addr is None:
        return None
    port: int | None = None
    if len(node.values) > 1:
        port = r.port(node, node.values[1], node.name, lowest=0)
        if port is None:
            return None
    return addr, port or None


def _sorry_server(r: ValueReader, node: Node) -> SorryServer | None:
    r.no_block(node)
    where = _ip_port(r, node)
    if where is None:
        return None
    return SorryServer(where[0], where[1], node.location)


def _digest(r: ValueReader, node: Node) -> str | None:
    text = r.one(node)
    if text is None:
        return None
    if not _HEX_DIGEST.fullmatch(text):
        r.sink.error(node.location, f"digest '{text}' is not 32 hexadecimal digits")
        return None
    return text.lower()


def _status(r: ValueReader, node: Node, word: str) -> tuple[int, int] | None:
    """A ``status_code`` word: ``CODE`` or ``LOW-HIGH``."""
    lo_s, sep, hi_s = word.partition("-")
    try:
        lo = int(lo_s, 10)
        hi = int(hi_s, 10) if sep else lo
    except ValueError:
        r.sink.error(node.location, f"status_code '{word}' is not a code or a range")
        return None
    if not (100 <= lo <= hi <= 599):
        r.sink.error(node.location, f"status_code {word}: codes must be in [100, 599], low to high")
        return None
    return lo, hi


# ---- handlers ------------------------------------------------------------------------


@writes("persistence_timeout")
def _persistence_timeout(block: _VirtualServer, node: Node) -> None:
    """Seconds; with no value, keepalived's default."""
    block.r.no_block(node)
    if node.values:
        value = block.r.integer(node, 1, U32)
        if value is not None:
            block.fields["persistence_timeout"] = value
    else:
        block.fields["persistence_timeout"] = DEFAULT_PERSISTENCE_TIMEOUT


@writes("persistence_granularity")
def _persistence_granularity(block: _VirtualServer, node: Node) -> None:
    read = _granularity(block.r, node, block.family)
    if read is not None:
        block.fields["persistence_granularity"] = read[0]
        if block.family is None:
            block.family = read[1]


@writes("family")
def _ip_family(block: _VirtualServer, node: Node) -> None:
    """``inet`` or ``inet6``; one that conflicts with the family settled so far is ignored."""
    r = block.r
    word = r.one(node)
    if word is None:
        return
    family = _FAMILIES.get(word)
    if family is None:
        r.sink.error(node.location, f"ip_family: unknown address family '{word}' (inet or inet6)")
        return
    if block.family is not None and block.family != family:
        r.sink.warning(
            node.location,
            f"ip_family {word} conflicts with the family of {block.label}"
            f" ({family_name(block.family)}); ignored",
        )
        return
    block.family = family


@writes("sched_flags")
def _sched_flag(block: _VirtualServer, node: Node) -> None:
    if block.r.flag(node):
        block.flags.add(node.name)


@writes("real_servers")
def _real_server(block: _VirtualServer, node: Node) -> None:
    rs = block.lvs.real_server(node)
    if rs is None:
        return
    address = rs.address
    key = (int(address), address.version, rs.port)
    seen = block.seen
    if key in seen:
        block.r.sink.warning(
            node.location, f"real_server {rs} is already defined at {seen[key]}; ignored"
        )
        return
    # As keepalived: a real server not tunnelled settles the family, or is skipped if it
    # differs (IPVS forwards to the other family only through a tunnel).
    method = rs.lvs_method or block.fields.get("lvs_method", LvsMethod.NAT)
    assert isinstance(method, LvsMethod)
    if method is not LvsMethod.TUN:
        family = _family_of(address)
        if block.family is None:
            block.family = family
        elif block.family != family:
            block.r.sink.warning(
                node.location,
                f"real_server {rs}: address family of {block.label} and real server"
                f" {address} don't match ({method.value} cannot forward to"
                f" {family_name(family)} from {family_name(block.family)}); skipped",
            )
            return
    seen[key] = node.location
    block.real_servers.append(rs)


@writes("weight", "reverse")
def _file_weight(block: Block, node: Node) -> None:
    """``weight N [reverse|noreverse]``, N in [-2147483647, 2147483647]."""
    r = block.r
    r.no_block(node)
    if not node.values:
        r.sink.error(node.location, "weight needs a value")
        return
    try:
        weight = int(node.values[0], 10)
    except ValueError:
        r.sink.error(node.location, f"weight: '{node.values[0]}' is not a whole number")
        return
    if not -U31 <= weight <= U31:
        r.sink.error(node.location, f"weight {weight} is outside [{-U31}, {U31}]")
        return
    reverse = False
    if len(node.values) > 1:
        word = node.values[1]
        if word not in ("reverse", "noreverse"):
            r.sink.error(node.location, f"weight: unknown option '{word}' (reverse, noreverse)")
            return
        reverse = word == "reverse"
        if len(node.values) > 2:
            r.sink.warning(
                node.location, f"weight: extra words ignored: {' '.join(node.values[2:])}"
            )
    block.fields["weight"], block.fields["reverse"] = weight, reverse


_FILE_CHECK = Keywords[Block](
    {"track_file": field("track_file", ValueReader.one), "weight": _file_weight}
)


@writes("file_checks")
def _file_check(block: _RealServer, node: Node) -> None:
    """``FILE_CHECK { track_file NAME; weight N [reverse] }``."""
    r = block.r
    if node.values:
        r.sink.warning(node.location, f"FILE_CHECK: extra words ignored: {' '.join(node.values)}")
    inner = Block(r, "FILE_CHECK")
    _FILE_CHECK.run(inner, r.block(node))
    name = inner.fields.pop("track_file", None)
    if not isinstance(name, str):
        r.sink.error(node.location, "FILE_CHECK has no track_file")
        return
    block.file_checks.append(
        FileCheck(name, location=node.location, **inner.fields)  # type: ignore[arg-type]
    )


@writes()  # warns: not supported yet (and notes it in the real server's unsupported_checkers)
def _unsupported_checker(block: _RealServer, node: Node) -> None:
    block.r.sink.warning(
        node.location,
        f"checker {node.name} is not supported yet; skipped (the rest of {block.where()}"
        " applies; with no other checker it is never counted as up)",
    )
    block.unsupported.append(f"{node.name} at {node.location}")


def hex_bytes(text: str, wildcard: bool = False) -> tuple[bytes, bytes] | None:
    """keepalived's free-format HEX_STR: the bytes and, with ``wildcard``, their mask.

    Each word is read two hexadecimal digits at a time; a word of odd length
    ends in a byte of its last digit (``Ab12f 3`` is AB 12 0F 03).  With
    ``wildcard`` a digit ``X`` matches anything: its four bits are clear in
    the mask.  None if a character is not a hexadecimal digit.
    """
    data = bytearray()
    mask = bytearray()
    for word in text.split():
        pairs = [word[i:i + 2] for i in range(0, len(word), 2)]
        for pair in pairs:
            if len(pair) == 1:
                pair = "0" + pair
            value = m = 0
            for ch in pair:
                value <<= 4
                m <<= 4
                if wildcard and ch in "xX":
                    continue
                if ch not in "0123456789abcdefABCDEF":
                    return None
                value |= int(ch, 16)
                m |= 0xF
            data.append(value)
            mask.append(m)
    return bytes(data), bytes(mask)


def _payload(r: ValueReader, node: Node) -> bytes | None:
    r.no_block(node)
    got = hex_bytes(" ".join(node.values))
    if got is None or not got[0]:
        r.sink.error(node.location, f"payload '{' '.join(node.values)}' is not a hex string")
        return None
    if len(got[0]) > MAX_UDP_PAYLOAD:
        r.sink.error(node.location, f"payload is longer than {MAX_UDP_PAYLOAD} bytes")
        return None
    return got[0]


@writes("require_reply", "reply", "reply_mask")
def _require_reply(block: _Checker, node: Node) -> None:
    """``require_reply [HEX_STR]`` (``X`` digits match anything)."""
    r = block.r
    r.no_block(node)
    if node.values:
        got = hex_bytes(" ".join(node.values), wildcard=True)
        if got is None or not got[0]:
            r.sink.error(
                node.location, f"require_reply '{' '.join(node.values)}' is not a hex string"
            )
            return
        block.fields["reply"], block.fields["reply_mask"] = got
    block.fields["require_reply"] = True


def _ifname(r: ValueReader, node: Node) -> str | None:
    """An interface name as the kernel takes it (1 to 15 bytes, no "/", blank or ":")."""
    name = r.one(node)
    if name is None:
        return None
    if not 0 < len(name.encode()) < 16 or any(c in name for c in "/: \t") or name in (".", ".."):
        r.sink.error(node.location, f"{node.name}: '{name}' is not an interface name")
        return None
    return name


def _dns_type(r: ValueReader, node: Node) -> str | None:
    word = r.one(node)
    if word is None:
        return None
    if word.upper() not in DNS_TYPES:
        r.sink.error(
            node.location,
            f"DNS_CHECK: unknown type '{word}' ({', '.join(sorted(DNS_TYPES))})",
        )
        return None
    return word.upper()


def _dns_name(r: ValueReader, node: Node) -> str | None:
    word = r.one(node)
    if word is None:
        return None
    try:
        dns.name.from_text(word)
    except dns.exception.DNSException as exc:
        r.sink.error(node.location, f"DNS_CHECK: name '{word}' is not a domain name: {exc}")
        return None
    return word


@writes("connect_ip", "connect_port", "bindto", "bind_port", "connect_timeout")
def _smtp_host(block: _Checker, node: Node) -> None:
    """``host { connect_ip; connect_port; bindto; bind_port; connect_timeout }``."""
    block.r.sink.notice(  # keepalived 2.2.7 reads it without a -t warning
        node.location, "SMTP_CHECK host blocks are deprecated; write one SMTP_CHECK per host"
    )
    host = _Checker(block.r, "host", block.lvs)
    _SMTP_HOST.run(host, block.r.block(node))
    fields: dict[str, object] = dict(host.fields)
    if "connect_timeout" in host.opts:
        fields["connect_timeout"] = host.opts["connect_timeout"]
    block.hosts.append((node.location, fields))


@writes("urls")
def _url(block: _Checker, node: Node) -> None:
    r = block.r
    url = _Url(r)
    _URL.run(url, r.block(node))
    if url.fields.get("path") is None:
        r.sink.error(node.location, "url has no path")
        return
    _url_regex(r, url, node)
    if "regex" in url.fields and url.fields["regex"] is None:
        del url.fields["regex"]
    block.urls.append(
        UrlCheck(
            status_code=tuple(url.status),
            location=node.location,
            **url.fields,  # type: ignore[arg-type]
        )
    )


def _regex(r: ValueReader, node: Node) -> str | None:
    """``regex PATTERN``: one word (quote a pattern with blanks); it must compile."""
    r.no_block(node)
    if len(node.values) != 1:
        r.sink.error(
            node.location,
            "regex needs exactly one pattern (quote a pattern that holds blanks)"
            if node.values else "regex needs a pattern",
        )
        return None
    pattern = node.values[0]
    try:
        compile_regex(pattern)
    except ValueError as exc:
        r.sink.error(node.location, f"invalid regex '{pattern}': {exc}")
        return None
    return pattern


@writes("regex_options")
def _regex_options(block: _Url, node: Node) -> None:
    """``regex_options OPTION...``: keepalived's PCRE2 option names."""
    r = block.r
    r.no_block(node)
    options = list(block.fields.get("regex_options", ()))  # type: ignore[call-overload]
    for word in node.values:
        if word not in KNOWN_OPTIONS:
            r.sink.warning(node.location, f"regex_options: unknown option '{word}' ignored")
        elif word in NO_EQUIVALENT:
            r.sink.warning(
                node.location,
                f"regex_options: '{word}' has no equivalent in pyalived's regex engine; ignored",
            )
        elif word not in options:
            options.append(word)
    block.fields["regex_options"] = tuple(options)


@writes()
def _regex_stack(block: _Url, node: Node) -> None:
    """``regex_stack START MAX``: checked, then ignored (PCRE2's JIT stack sizes)."""
    r = block.r
    r.no_block(node)
    values = node.values
    if len(values) != 2 or not all(v.isdigit() for v in values):
        r.sink.error(node.location, "regex_stack needs START and MAX, whole numbers of bytes")
        return
    if int(values[0]) > int(values[1]):
        r.sink.error(node.location, f"regex_stack: START {values[0]} exceeds MAX {values[1]}")
        return
    r.sink.warning(
        node.location,
        "regex_stack sizes PCRE2's JIT stack, which pyalived's regex engine does not have;"
        " ignored",
    )


def _url_regex(r: ValueReader, url: _Url, node: Node) -> None:
    """keepalived's end-of-url checks of the regex options (both are warnings there too)."""
    fields = url.fields
    if fields.get("regex") is None:
        given = [k for k in _REGEX_PARAMS if k in fields]
        if given:
            r.sink.warning(
                node.location,
                f"url: {', '.join(given)} without regex; ignored",
            )
            for k in given:
                del fields[k]
        return
    options = fields.get("regex_options")
    if options:
        try:
            compile_regex(str(fields["regex"]), options)  # type: ignore[arg-type]
        except ValueError as exc:
            r.sink.error(
                node.location, f"invalid regex '{fields['regex']}' with its options: {exc}"
            )
            fields["regex"] = None
            return
    low = fields.get("regex_min_offset", 0)
    high = fields.get("regex_max_offset")
    assert isinstance(low, int) and (high is None or isinstance(high, int))
    if high is not None and low > high:
        r.sink.warning(
            node.location,
            f"url: regex_min_offset {low} > regex_max_offset {high}; both ignored",
        )
        fields.pop("regex_min_offset", None)
        fields.pop("regex_max_offset", None)


@writes("status_code")
def _status_code(block: _Url, node: Node) -> None:
    r = block.r
    r.no_block(node)
    if not node.values:
        r.sink.error(node.location, "status_code needs a code or a range")
    for word in node.values:
        span = _status(r, node, word)
        if span is not None:
            block.status.append(span)


# ---- keyword tables --------------------------------------------------------------------

# The generic checker options, taken at every level.
_GENERIC: dict[str, Handler[_Options]] = {
    "delay_loop": option("delay_loop", float_in(0.001, MAX_TIMER)),
    "connect_timeout": option("connect_timeout", float_in(0.001, MAX_TIMER)),
    "retry": option("retry", int_in(0, U31)),
    "delay_before_retry": option("delay_before_retry", float_in(0, MAX_TIMER)),
    "warmup": option("warmup", float_in(0, MAX_TIMER)),
    "alpha": option("alpha", ValueReader.flag),
}

_URL = Keywords[_Url](
    {
        # A bad path or virtualhost line unsets the one given before.
        "path": field("path", ValueReader.one, unset_on_error=True),
        "digest": field("digest", _digest),
        "status_code": _status_code,
        "virtualhost": field("virtualhost", ValueReader.one, unset_on_error=True),
        # A bad regex line unsets the one given before: the url then fails at
        # start (the configuration is refused), never checks without it.
        "regex": field("regex", _regex, unset_on_error=True),
        "regex_no_match": field("regex_no_match", ValueReader.flag),
        "regex_options": _regex_options,
        "regex_min_offset": field("regex_min_offset", int_in(0, MAX_REGEX_OFFSET)),
        "regex_max_offset": field("regex_max_offset", int_in(0, MAX_REGEX_OFFSET)),
        "regex_stack": _regex_stack,
    },
    UNSUPPORTED_URL,
)

# The top-level SSL block: keepalived's TLS client context of every SSL_GET.
_SSL = Keywords[Block](
    {
        "password": field("password", ValueReader.one),
        "ca": field("ca", ValueReader.one),
        "certificate": field("certificate", ValueReader.one),
        "key": field("key", ValueReader.one),
    }
)

_TCP_CHECK: dict[str, Handler[_Checker]] = {
    **_GENERIC,
    "connect_port": field("connect_port", ValueReader.port_value),
    "bind_port": field("bind_port", ValueReader.port_value),
    "connect_ip": field("connect_ip", _address),
    "bindto": field("bindto", _address),
    "bind_if": field("bind_if", _ifname),
    "fwmark": field("fwmark", int_in(0, U32)),
    "log_all_failures": field("log_all_failures", ValueReader.flag),
}
_RETRY = _GENERIC["retry"]


@writes("retry")
def _nb_get_retry(block: _Checker, node: Node) -> None:
    """keepalived 2.2.7 still reads ``nb_get_retry`` in HTTP_GET and SSL_GET, with a
    warning; anywhere else it is an unknown keyword (so it is here)."""
    block.r.sink.warning(node.location, "nb_get_retry is deprecated; write retry instead")
    _RETRY(block, node)


_HTTP_GET: dict[str, Handler[_Checker]] = {
    **_TCP_CHECK,
    "nb_get_retry": _nb_get_retry,
    "url": _url,
    "virtualhost": field("virtualhost", ValueReader.one),
    "fast_recovery": field("fast_recovery", ValueReader.flag),
    "http_protocol": field(
        "http_protocol", one_of(_HTTP_PROTOCOLS, "http_protocol must be 1.0, 1.0C or 1.1")
    ),
}
_SSL_GET: dict[str, Handler[_Checker]] = {
    **_HTTP_GET,
    "enable_sni": field("enable_sni", ValueReader.flag),
}
_CONNECTION: dict[str, Handler[_Checker]] = {
    k: handle for k, handle in _TCP_CHECK.items()
    if k not in _GENERIC and k != "log_all_failures"
}
_SMTP_HOST = Keywords[_Checker](
    {**_CONNECTION, "connect_timeout": _GENERIC["connect_timeout"]}, UNSUPPORTED_CHECKER_OPTS
)
_DNS_CHECK: dict[str, Handler[_Checker]] = {
    **_TCP_CHECK,
    "type": field("dns_type", _dns_type),
    "name": field("dns_name", _dns_name),
}
_UDP_CHECK: dict[str, Handler[_Checker]] = {
    **_TCP_CHECK,
    "payload": field("payload", _payload),
    "require_reply": _require_reply,
    "min_reply_length": field("min_reply_length", int_in(0, MAX_UDP_PAYLOAD)),
    "max_reply_length": field("max_reply_length", int_in(0, MAX_UDP_PAYLOAD)),
}
# connect_port and bind_port are accepted and mean nothing to ICMP, as in keepalived
_PING_CHECK: dict[str, Handler[_Checker]] = {**_TCP_CHECK}
_SMTP_CHECK: dict[str, Handler[_Checker]] = {
    **_TCP_CHECK,
    "helo_name": field("helo_name", ValueReader.one),
    "host": _smtp_host,
}
def _notify_line(key: str) -> Handler[Block]:
    """``notify_up`` / ``notify_down`` / ``quorum_up`` / ``quorum_down SCRIPT [USER
    [GROUP]]`` into ``fields[key]`` and ``fields[key + "_user"]``."""

    @writes(key, f"{key}_user")
    def handle(block: Block, node: Node) -> None:
        read = block.r.notify_script(node)
        if read is not None:
            block.fields[key], block.fields[f"{key}_user"] = read

    return handle


_MISC_CHECK: dict[str, Handler[_Checker]] = {
    **{k: handle for k, handle in _GENERIC.items() if k != "connect_timeout"},
    "misc_path": field("misc_path", ValueReader.script),
    "misc_timeout": field("misc_timeout", float_in(0.001, MAX_TIMER)),
    "misc_dynamic": field("misc_dynamic", ValueReader.flag),
    "log_all_failures": field("log_all_failures", ValueReader.flag),
    "user": user_fields("user", "group"),
}


@dataclass(frozen=True)
class _CheckerKind:
    type: CheckerType
    name: str  # type.value
    keywords: Keywords[_Checker]
    http: bool  # needs a url
    misc: bool  # needs a misc_path


def _checker(kind: CheckerType, keywords: dict[str, Handler[_Checker]]) -> Handler[_RealServer]:
    """The handler of one checker type's block in a real server."""
    spec = _CheckerKind(
        kind,
        kind.value,
        Keywords(keywords, UNSUPPORTED_CHECKER_OPTS),
        kind in (CheckerType.HTTP_GET, CheckerType.SSL_GET),
        kind is CheckerType.MISC_CHECK,
    )

    @writes("checkers")
    def handle(block: _RealServer, node: Node) -> None:
        checker = block.lvs.checker(node, spec)
        if checker is None:
            return
        if block.lvs.smtp_hosts:
            for location, fields in block.lvs.smtp_hosts:
                options = checker.options
                timeout = fields.pop("connect_timeout", None)
                if isinstance(timeout, float):
                    options = replace(options, connect_timeout=timeout)
                # the host's connection options, else the block's
                one = replace(checker, location=location, options=options,
                              **fields)  # type: ignore[arg-type]
                _add_checker(block, node, spec, one)
            return
        _add_checker(block, node, spec, checker)

    return handle


def _add_checker(block: _RealServer, node: Node, spec: _CheckerKind, checker: Checker) -> None:
    target = checker.connect_ip or block.address
    if (isinstance(target, IPv6Address) and target.is_link_local and checker.bind_if is None
            and spec.type is not CheckerType.MISC_CHECK):
        block.r.sink.error(
            node.location,
            f"{spec.name}: link-local address {target} needs bind_if (the interface to use)",
        )
        return
    bindto = checker.bindto
    if bindto is not None:
        target = checker.connect_ip or block.address
        if bindto.version != target.version:
            what = "connect_ip" if checker.connect_ip is not None else block.where()
            block.r.sink.warning(
                node.location,
                f"{spec.name}: bindto {bindto} does not match the address family of"
                f" {what} ({target}); bindto ignored",
            )
            checker = replace(checker, bindto=None)
    block.checkers.append(checker)


_REAL_SERVER = Keywords[_RealServer](
    {
        **_GENERIC,
        "TCP_CHECK": _checker(CheckerType.TCP_CHECK, _TCP_CHECK),
        "HTTP_GET": _checker(CheckerType.HTTP_GET, _HTTP_GET),
        "SSL_GET": _checker(CheckerType.SSL_GET, _SSL_GET),
        "MISC_CHECK": _checker(CheckerType.MISC_CHECK, _MISC_CHECK),
        "DNS_CHECK": _checker(CheckerType.DNS_CHECK, _DNS_CHECK),
        "UDP_CHECK": _checker(CheckerType.UDP_CHECK, _UDP_CHECK),
        "PING_CHECK": _checker(CheckerType.PING_CHECK, _PING_CHECK),
        "SMTP_CHECK": _checker(CheckerType.SMTP_CHECK, _SMTP_CHECK),
        **dict.fromkeys(UNSUPPORTED_CHECKERS, _unsupported_checker),
        "weight": field("weight", int_in(0, U31)),
        "lvs_method": method_field("lvs_method", "lvs_tunnel"),
        "lb_kind": method_field("lvs_method", "lvs_tunnel"),
        "FILE_CHECK": _file_check,
        "inhibit_on_failure": field("inhibit_on_failure", ValueReader.flag),
        "notify_up": _notify_line("notify_up"),
        "notify_down": _notify_line("notify_down"),
        "uthreshold": field("uthreshold", int_in(0, U32)),
        "lthreshold": field("lthreshold", int_in(0, U32)),
        "virtualhost": field("virtualhost", ValueReader.one),
        "smtp_alert": field("smtp_alert", ValueReader.flag),
    },
    UNSUPPORTED_RS,
)

_VIRTUAL_SERVER = Keywords[_VirtualServer](
    {
        **_GENERIC,
        "real_server": _real_server,
        "lvs_sched": field("lvs_sched", _scheduler),
        "lb_algo": field("lvs_sched", _scheduler),
        "lvs_method": method_field("lvs_method", "lvs_tunnel"),
        "lb_kind": method_field("lvs_method", "lvs_tunnel"),
        "persistence_engine": field("persistence_engine", _persistence_engine),
        "persistence_timeout": _persistence_timeout,
        "persistence_granularity": _persistence_granularity,
        "ip_family": _ip_family,
        "protocol": field("protocol", one_of(_PROTOCOLS, "protocol must be TCP, UDP or SCTP")),
        "ops": field("ops", ValueReader.flag),
        **dict.fromkeys(SCHED_FLAGS, _sched_flag),
        "ha_suspend": field("ha_suspend", ValueReader.flag),
        "virtualhost": field("virtualhost", ValueReader.one),
        "sorry_server": field("sorry_server", _sorry_server),
        "sorry_server_inhibit": field("sorry_server_inhibit", ValueReader.flag),
        "sorry_server_lvs_method": method_field(
            "sorry_server_lvs_method", "sorry_server_lvs_tunnel"
        ),
        "quorum": field("quorum", int_in(1, U31)),
        "hysteresis": field("hysteresis", int_in(0, U31)),
        "quorum_up": _notify_line("quorum_up"),
        "quorum_down": _notify_line("quorum_down"),
        # The virtual server's own alpha, not the generic option (see ``_finish``).
        "alpha": field("alpha", ValueReader.flag),
        "omega": field("omega", ValueReader.flag),
        "inhibit_on_failure": field("inhibit_on_failure", ValueReader.flag),
        "smtp_alert": field("smtp_alert", ValueReader.flag),
    },
    UNSUPPORTED_VS,
)
_ALIASES = {"lb_algo": "lvs_sched", "lb_kind": "lvs_method"}


# ---- the parser ------------------------------------------------------------------------


class LvsParser:
    """The LVS half of the configuration; see the module docstring."""

    def __init__(self, r: ValueReader) -> None:
        self.r = r
        self.servers: list[VirtualServer] = []
        self.groups: list[VirtualServerGroup] = []
        self._shared_options: dict[tuple[tuple[str, Option], ...], CheckerOptions] = {}
        self._groups_named: dict[str, list[VirtualServerGroup]] = {}  # so far
        # the host { } blocks of the SMTP_CHECK read last (location, connection fields)
        self.smtp_hosts: list[tuple[Location, dict[str, object]]] = []
        self.ssl_settings: SslSettings | None = None  # the top-level SSL block

    # ---- SSL ------------------------------------------------------------------------

    def ssl(self, node: Node) -> None:
        """The top-level ``SSL { password; ca; certificate; key }`` block.

        Its files must load (the configuration is refused otherwise, with this
        block's line); a second block replaces the first, as in keepalived.
        """
        r = self.r
        if node.children is None:
            r.sink.error(node.location, "SSL needs a { ... } block")
            return
        block = Block(r, "SSL")
        _SSL.run(block, node.children)
        settings = SslSettings(location=node.location, **block.fields)  # type: ignore[arg-type]
        if settings.key is not None and settings.certificate is None:
            r.sink.warning(
                node.location, "SSL: key without certificate; no client certificate to present"
            )
        try:
            client_context(tls_client(settings))
        except TlsConfigError as exc:
            r.sink.error(node.location, f"SSL: {exc}")
            return
        if self.ssl_settings is not None:
            r.sink.warning(
                node.location,
                f"SSL: already given at {self.ssl_settings.location}; this block replaces it",
            )
        self.ssl_settings = settings

    def _options(self, opts: dict[str, Option]) -> CheckerOptions:
        """``CheckerOptions`` of the collected values, one shared object per set of values.

        Frozen and compared by value, so sharing changes nothing but the memory
        (a large configuration repeats the same few options on every checker).
        A zero is never shared: 0.0 and -0.0 are equal as keys but print apart.
        """
        if not opts:
            return _NO_OPTIONS
        if 0 in opts.values():
            return CheckerOptions(**opts)  # type: ignore[arg-type]
        key = tuple(opts.items())
        shared = self._shared_options.get(key)
        if shared is None:
            shared = self._shared_options[key] = CheckerOptions(**opts)  # type: ignore[arg-type]
        return shared

    # ---- virtual_server_group -----------------------------------------------------

    def virtual_server_group(self, node: Node) -> None:
        r = self.r
        name = r.block_name(node)
        body = r.block(node)
        if name is None:
            return
        entries: list[VirtualServerGroupEntry] = []
        for n in body:
            r.no_block(n)
            if n.name == "fwmark":
                entry = self._group_fwmark(n, name)
                if entry is not None:
                    entries.append(entry)
                continue
            span = self._range(n, n.name)
            if span is None:
                continue
            port: int | None = None
            words = list(n.values)
            if words:
                port = r.port(n, words.pop(0), f"virtual_server_group {name}")
                if port is None:
                    continue
            if words:
                r.sink.warning(n.location, f"extra words ignored: {' '.join(words)}")
            first, last = span
            entries.append(VirtualServerGroupEntry(first, last, port, location=n.location))
        if not entries:
            r.sink.warning(node.location, f"virtual_server_group {name} is empty")
        group = VirtualServerGroup(name, tuple(entries), node.location)
        if len(group_families(group)) == 2 and any(
            e.fwmark is not None and e.family is None for e in entries
        ):
            r.sink.error(
                node.location,
                f"virtual_server_group {name} has IPv4 and IPv6 addresses: each fwmark"
                " needs its family (fwmark N inet|inet6)",
            )
        self.groups.append(group)
        self._groups_named.setdefault(name, []).append(group)

    def _group_fwmark(self, node: Node, name: str) -> VirtualServerGroupEntry | None:
        """``fwmark N [inet|inet6]``."""
        r = self.r
        mark: int | None
        if len(node.values) != 2:
            mark = r.integer(node, 1, U32)
            return None if mark is None else VirtualServerGroupEntry(
                fwmark=mark, location=node.location
            )
        text, word = node.values
        try:
            mark = int(text, 10)
        except ValueError:
            r.sink.error(node.location, f"fwmark: '{text}' is not a whole number")
            mark = None
        if mark is not None and not 1 <= mark <= U32:
            r.sink.error(node.location, f"fwmark {mark} is outside [1, {U32}]")
            mark = None
        family = _FAMILIES.get(word)
        if family is None:
            r.sink.error(
                node.location,
                f"virtual_server_group {name}: fwmark family '{word}' is not inet or inet6",
            )
            return None
        if mark is None:
            return None
        return VirtualServerGroupEntry(fwmark=mark, location=node.location, family=family)

    def _range(self, node: Node, text: str) -> tuple[IPAddress, IPAddress] | None:
        """``A.B.C.D``, ``A.B.C.D-E``, ``A.B.C.D-E.F.G.H`` or ``A.B.C.D/NN``, or the IPv6
        forms ``X::Y``, ``X::Y-Z`` (Z: hexadecimal, the last 16 bits of the last address),
        ``X::Y-X::Z`` or ``X::/NN``."""
        bad = f"'{text}' is not an address, address range or network"
        head = text.split("/", 1)[0].split("-", 1)[0]
        try:
            first: IPAddress = ip_address(head)
        except ValueError:
            self.r.sink.error(node.location, bad)
            return None
        if isinstance(first, IPv6Address):
            return self._range6(node, text, first)
        last = first
        try:
            if "/" in text:
                net = IPv4Network(text, strict=False)
                first, last = net.network_address, net.broadcast_address
            elif "-" in text:
                tail = text.split("-", 1)[1]
                if "." in tail:
                    last = IPv4Address(tail)
                elif tail.isdigit() and int(tail) <= 255:
                    last = IPv4Address((int(first) & ~0xFF) | int(tail))
                else:
                    raise ValueError(bad)
        except ValueError:
            self.r.sink.error(node.location, bad)
            return None
        return self._span(node, text, first, last)

    def _span(
        self, node: Node, text: str, first: IPAddress, last: IPAddress
    ) -> tuple[IPAddress, IPAddress] | None:
        if int(last) < int(first):
            self.r.sink.error(node.location, f"address range {text} ends before it starts")
            return None
        if int(last) - int(first) >= MAX_GROUP_RANGE:
            self.r.sink.error(
                node.location, f"address range {text} has more than {MAX_GROUP_RANGE} addresses"
            )
            return None
        return first, last

    def _range6(
        self, node: Node, text: str, first: IPv6Address
    ) -> tuple[IPAddress, IPAddress] | None:
        """The IPv6 forms of ``_range``, with keepalived 2.2.7's diagnostics."""
        sink = self.r.sink
        if first.scope_id is not None:
            sink.error(node.location, f"'{text}': addresses with a zone are not supported")
            return None
        last: IPv6Address = first
        if "/" in text:
            prefix = text.split("/", 1)[1]
            if not prefix.isdigit() or not 1 <= int(prefix) <= 128:
                sink.error(node.location, f"'{text}': invalid prefix length")
                return None
            try:
                net = IPv6Network(text)
            except ValueError:
                sink.error(node.location, f"'{text}': address bits set outside the prefix")
                return None
            return self._span(node, text, net.network_address, net.broadcast_address)
        if "-" in text:
            tail = text.split("-", 1)[1]
            if "." in tail and ":" not in tail:
                sink.error(node.location, f"'{text}': address families do not match")
                return None
            if ":" in tail:
                try:
                    last = IPv6Address(tail)
                except ValueError:
                    sink.error(node.location, f"'{text}': invalid range end '{tail}'")
                    return None
                if last.scope_id is not None:
                    sink.error(node.location, f"'{text}': addresses with a zone are not supported")
                    return None
            else:
                try:
                    end = int(tail, 16)  # as keepalived: hexadecimal, like the address
                except ValueError:
                    sink.error(
                        node.location,
                        f"'{text}': range end '{tail}' is not a hexadecimal number",
                    )
                    return None
                if not 0 <= end <= 0xFFFF:
                    sink.error(node.location, f"'{text}': range end '{tail}' is above ffff")
                    return None
                if end <= int(first) & 0xFFFF:
                    sink.error(
                        node.location, f"address range {text}: the end is not above the start"
                    )
                    return None
                last = IPv6Address((int(first) & ~0xFFFF) | end)
        return self._span(node, text, first, last)

    # ---- virtual_server -------------------------------------------------------------

    def virtual_server(self, node: Node) -> None:
        r = self.r
        body = r.block(node)
        words = list(node.values)
        vs: VirtualServer
        if not words:
            r.sink.error(node.location, "virtual_server needs IP [PORT], fwmark N or group NAME")
            return
        if words[0] in ("fwmark", "group"):
            if len(words) < 2:
                r.sink.error(node.location, f"virtual_server {words[0]} needs a value")
                return
            if words[0] == "group":
                vs = VirtualServer(group=words[1], location=node.location)
            else:
                try:
                    mark = int(words[1], 10)
                except ValueError:
                    mark = 0
                if not 1 <= mark <= U32:
                    r.sink.error(node.location, f"virtual_server fwmark '{words[1]}' is invalid")
                    return
                vs = VirtualServer(fwmark=mark, location=node.location)
            extra = words[2:]
        else:
            addr = _ip(r, node, words[0])
            if addr is None:
                return
            port: int | None = None
            if len(words) > 1:
                port = r.port(node, words[1], "virtual_server")
                if port is None:
                    return
            vs = VirtualServer(address=addr, port=port, location=node.location)
            extra = words[2:]
        if extra:
            r.sink.warning(node.location, f"virtual_server: extra words ignored: {' '.join(extra)}")
        family = None if vs.address is None else _family_of(vs.address)
        block = _VirtualServer(r, f"virtual_server {vs.name}", self, family)
        _VIRTUAL_SERVER.run(block, body)
        fields = block.fields
        vs = replace(
            vs,
            options=self._options(block.opts),
            sched_flags=frozenset(block.flags),
            real_servers=tuple(block.real_servers),
            family=block.family,
            **fields,  # type: ignore[arg-type]
        )
        # a keyword given with a bad value is an error already: no "not set" warning too
        given = set(fields) | {_ALIASES.get(n.name, n.name) for n in body}
        self.servers.append(self._finish(vs, given))

    def _finish(self, vs: VirtualServer, given: set[str]) -> VirtualServer:
        """keepalived's end-of-block fix-ups, each with a warning."""
        sink = self.r.sink
        where = f"virtual_server {vs.name}"
        loc = vs.location
        s = vs.sorry_server
        if s is not None and (vs.sorry_server_lvs_method or vs.lvs_method) is not LvsMethod.TUN:
            family = _family_of(s.address)
            if vs.family is None:
                vs = replace(vs, family=family)
            elif vs.family != family:
                sink.warning(
                    s.location,
                    f"{where}: address family of virtual server and sorry server {s.address}"
                    f" don't match; sorry_server skipped",
                )
                vs = replace(vs, sorry_server=None)
        if vs.fwmark is not None and vs.family is None:
            # all its real servers tunnelled: keepalived takes theirs if they agree, else IPv4
            families = {_family_of(rs.address) for rs in vs.real_servers}
            if s is not None:
                families.add(_family_of(s.address))
            vs = replace(vs, family=families.pop() if len(families) == 1 else AF_INET)
        if vs.alpha and vs.options.alpha is None:
            vs = replace(vs, options=replace(vs.options, alpha=True))
        if vs.fwmark is not None and vs.ha_suspend:
            sink.warning(loc, f"{where}: ha_suspend does not apply to fwmark services; cleared")
            vs = replace(vs, ha_suspend=False)
        if vs.group is not None and vs.ha_suspend:
            sink.warning(loc, f"{where}: ha_suspend is not supported yet for virtual server"
                              " groups; cleared (the checkers always run)")
            vs = replace(vs, ha_suspend=False)
        # a group of fwmarks only is a fwmark service here (keepalived 2.2.7 -t agrees)
        by_address = vs.address is not None or any(
            e.fwmark is None for g in self._named(vs.group) for e in g.entries
        )
        if vs.fwmark is not None and "protocol" in given:
            sink.warning(loc, f"{where}: protocol is ignored for fwmark services")
        if by_address and "protocol" not in given:
            sink.warning(loc, f"{where}: no protocol set; using UDP, as IPVS does")
            vs = replace(vs, protocol=LvsProtocol.UDP)
        if vs.ops and vs.address is not None and vs.protocol is not LvsProtocol.UDP:
            sink.warning(loc, f"{where}: ops (one-packet scheduling) needs UDP; cleared")
            vs = replace(vs, ops=False)
        if vs.address is not None and vs.port is None and vs.persistence_timeout is None:
            sink.warning(
                loc,
                f"{where}: a service without a port must be persistent; using"
                f" persistence_timeout {DEFAULT_PERSISTENCE_TIMEOUT}",
            )
            vs = replace(vs, persistence_timeout=DEFAULT_PERSISTENCE_TIMEOUT)
        if "lvs_sched" not in given:
            sink.warning(loc, f"{where}: no lvs_sched set; using {DEFAULT_SCHEDULER}")
        if "lvs_method" not in given:
            sink.warning(loc, f"{where}: no lvs_method set; using NAT")
        total = sum(rs.weight for rs in vs.real_servers)
        if vs.real_servers and vs.quorum > total:  # none: "has no real_server" says enough
            # keepalived lowers the quorum to the total weight; with a total of 0 it
            # sets 0 and its hysteresis wraps around, pyalived keeps the least quorum, 1
            quorum = max(total, 1)
            sink.warning(
                loc,
                f"{where}: quorum {vs.quorum} is more than the total weight of its real"
                f" servers ({total}); using {quorum}",
            )
            vs = replace(vs, quorum=quorum)
        if vs.hysteresis >= vs.quorum:
            sink.warning(
                loc,
                f"{where}: hysteresis {vs.hysteresis} is not below quorum {vs.quorum};"
                f" using {vs.quorum - 1}",
            )
            vs = replace(vs, hysteresis=vs.quorum - 1)
        if vs.address is not None and vs.port is not None:
            # keepalived: a real server without a port (or port 0) of an
            # IP PORT service takes the service's port, for IPVS and checkers.
            vs = replace(
                vs,
                real_servers=tuple(
                    rs if rs.port is not None else replace(rs, port=vs.port)
                    for rs in vs.real_servers
                ),
            )
        if self._has_fwmark(vs):
            for rs in vs.real_servers:
                if rs.port is None:
                    continue
                if (rs.lvs_method or vs.lvs_method) is LvsMethod.NAT:
                    if by_address:  # the port is used for the group's addresses
                        continue
                    # keepalived 2.2.7 keeps this port for NAT and says nothing under -t
                    sink.notice(
                        rs.location,
                        f"{where}: real_server {rs}: a fwmark service forwards each packet"
                        " to its own destination port; this port is not used",
                    )
                else:
                    sink.warning(
                        rs.location,
                        f"{where}: real_server {rs}: the port is ignored for fwmark services",
                    )
        vs_ports = self._ports(vs)
        for rs in vs.real_servers:
            method = rs.lvs_method or vs.lvs_method
            if method is LvsMethod.NAT or rs.port is None:
                continue
            others = sorted(p for p in vs_ports if p != rs.port)
            if others:
                sink.warning(
                    rs.location,
                    f"{where}: real_server {rs}: {method.value} cannot change the port;"
                    f" it differs from the service port {', '.join(map(str, others))}",
                )
        if not vs.real_servers and vs.sorry_server is None:
            sink.warning(loc, f"{where} has no real_server")
        return vs

    def _has_fwmark(self, vs: VirtualServer) -> bool:
        if vs.fwmark is not None:
            return True
        return any(
            e.fwmark is not None
            for g in self._named(vs.group)
            for e in g.entries
        )

    def _ports(self, vs: VirtualServer) -> set[int]:
        """Ports of the address services of a virtual server (for the DR/TUN check)."""
        if vs.address is not None:
            return {vs.port} if vs.port is not None else set()
        return {
            e.port
            for g in self._named(vs.group)
            for e in g.entries
            if e.port is not None
        }

    def _named(self, name: str | None) -> list[VirtualServerGroup]:
        """The groups of that name defined so far (a duplicate name is an error later)."""
        return [] if name is None else self._groups_named.get(name, [])

    # ---- real_server and checkers ---------------------------------------------------------

    def real_server(self, node: Node) -> RealServer | None:
        r = self.r
        body = node.children or ()
        where = _ip_port(r, node)
        if where is None:
            return None
        addr, port = where
        block = _RealServer(r, self, addr, port)
        _REAL_SERVER.run(block, body)
        return RealServer(
            addr,
            port,
            node.location,
            options=self._options(block.opts),
            checkers=tuple(block.checkers),
            unsupported_checkers=tuple(block.unsupported),
            file_checks=tuple(block.file_checks),
            **block.fields,  # type: ignore[arg-type]
        )

    def checker(self, node: Node, kind: _CheckerKind) -> Checker | None:
        r = self.r
        body = node.children
        if body is None:
            r.sink.error(node.location, f"{kind.name} needs a {{ ... }} block")
            return None
        if node.values:
            extra = " ".join(node.values)
            r.sink.warning(node.location, f"{kind.name}: extra words ignored: {extra}")
        block = _Checker(r, kind.name, self)
        kind.keywords.run(block, body)
        self.smtp_hosts = block.hosts
        fields = block.fields
        low = fields.get("min_reply_length", 0)
        high = fields.get("max_reply_length", 255)
        assert isinstance(low, int) and isinstance(high, int)
        if low > high:
            r.sink.error(
                node.location,
                f"{kind.name}: min_reply_length {low} is above max_reply_length {high}",
            )
            return None
        if kind.misc and "misc_path" not in fields:
            r.sink.error(node.location, "MISC_CHECK has no misc_path")
            return None
        if kind.http and not block.urls:
            r.sink.error(node.location, f"{kind.name} has no url")
            return None
        return Checker(
            kind.type,
            node.location,
            self._options(block.opts),
            urls=tuple(block.urls),
            **fields,  # type: ignore[arg-type]
        )

    # ---- whole-config checks --------------------------------------------------------

    def cross_check(self, config: Config) -> None:
        """Group names are unique and known, of the family of the virtual servers using
        them; no IPVS service is claimed twice."""
        sink = self.r.sink
        groups: dict[str, VirtualServerGroup] = {}
        for g in config.virtual_server_groups:
            if g.name in groups:
                sink.error(
                    g.location,
                    f"virtual_server_group {g.name} is already defined"
                    f" at {groups[g.name].location}",
                )
            else:
                groups[g.name] = g
        owner: dict[ServiceKey, VirtualServer] = {}
        for vs in config.virtual_servers:
            if vs.group is not None and vs.group not in groups:
                sink.error(
                    vs.location,
                    f"virtual_server group {vs.group}: no virtual_server_group of that name",
                )
                continue
            if vs.group is not None:
                why = group_mismatch(vs, groups[vs.group])
                if why is not None:
                    sink.warning(
                        vs.location,
                        f"virtual_server {vs.name}: address family doesn't match: {why};"
                        " the virtual server is ignored (no IPVS service)",
                    )
                    continue
            for key in service_keys(vs, groups):
                other = owner.get(key)
                if other is not None:
                    sink.error(
                        vs.location,
                        f"virtual_server {vs.name} claims service {key}, like"
                        f" virtual_server {other.name} at {other.location}",
                    )
                    break
                owner[key] = vs
        files = {t.name for t in config.track_files}
        for vs in config.virtual_servers:
            for rs in vs.real_servers:
                for fc in rs.file_checks:
                    if fc.track_file not in files:
                        sink.error(
                            fc.location,
                            f"FILE_CHECK: track_file {fc.track_file} not found",
                        )
