"""Parser for the LVS half of keepalived.conf: virtual_server and virtual_server_group.

Theory of operation: ``LvsParser`` works on the statement tree like the VRRP
parser and shares its value helpers and its ``DiagnosticSink`` (it is handed
the ``_Parser`` instance).  It fills the frozen LVS dataclasses of
``pyalived.config.model``, keeping the generic checker options exactly as
written at each level (``None`` inherits); ``pyalived.config.lvs`` resolves
the inheritance later.  As in keepalived 2.2.7, a virtual server given by
address without ``protocol`` gets UDP (the kernel's choice for protocol 0),
one without ``lvs_sched`` gets ``wlc`` and one without ``lvs_method`` gets
NAT, each with a warning; ``ha_suspend`` is dropped for fwmark services and
``ops`` for anything but UDP.  Checker types this project does not run yet
(SMTP_CHECK, DNS_CHECK, UDP_CHECK, PING_CHECK, BFD_CHECK, FILE_CHECK) are
warnings and skipped; the rest of their real server still applies.  Bad
addresses, out-of-range numbers, unknown schedulers or forwarding methods and
references to unknown groups are errors, which refuse the configuration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address
from typing import TYPE_CHECKING

from pyalived.config.lvs import service_keys
from pyalived.config.model import (
    Checker,
    CheckerOptions,
    CheckerType,
    Config,
    Location,
    LvsMethod,
    LvsProtocol,
    RealServer,
    SorryServer,
    UrlCheck,
    VirtualServer,
    VirtualServerGroup,
    VirtualServerGroupEntry,
)
from pyalived.config.tree import Node
from pyalived.ipvs.model import (
    DEFAULT_PERSISTENCE_TIMEOUT,
    DEFAULT_SCHEDULER,
    SCHEDULERS,
    ServiceKey,
)

if TYPE_CHECKING:
    from pyalived.config.parser import _Parser

U31 = 2**31 - 1
U32 = 2**32 - 1
MAX_TIMER = 86400.0 * 365
MAX_GROUP_RANGE = 65536  # addresses in one virtual_server_group range

UNSUPPORTED_CHECKERS = frozenset(
    "SMTP_CHECK DNS_CHECK UDP_CHECK PING_CHECK BFD_CHECK FILE_CHECK".split()
)
SCHED_FLAGS = frozenset("flag-1 flag-2 flag-3 sh-port sh-fallback mh-port mh-fallback".split())
UNSUPPORTED_VS = frozenset(
    """persistence_engine smtp_alert snmp_name ip_family nat_mask lvs_sync_daemon
    tunnel_type""".split()
)
UNSUPPORTED_RS = frozenset("smtp_alert snmp_name".split()) | UNSUPPORTED_CHECKERS
UNSUPPORTED_CHECKER_OPTS = frozenset("bind_if fwmark log_all_failures fast_recovery".split())
UNSUPPORTED_URL = frozenset(
    "regex regex_no_match regex_options regex_stack regex_min_offset regex_max_offset".split()
)
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{32}")
_GENERIC = frozenset(
    "delay_loop connect_timeout retry nb_get_retry delay_before_retry warmup alpha".split()
)
_NO_OPTIONS = CheckerOptions()


@dataclass
class LvsParser:
    p: _Parser
    servers: list[VirtualServer] = field(default_factory=list)
    groups: list[VirtualServerGroup] = field(default_factory=list)
    _shared_options: dict[tuple[tuple[str, float | int | bool], ...], CheckerOptions] = field(
        default_factory=dict
    )
    _groups_named: dict[str, list[VirtualServerGroup]] = field(default_factory=dict)  # so far

    # ---- value helpers ----------------------------------------------------------

    def _port(self, node: Node, text: str, what: str) -> int | None:
        try:
            port = int(text, 10)
        except ValueError:
            self.p.sink.error(node.location, f"{what}: '{text}' is not a port number")
            return None
        if not 1 <= port <= 65535:
            self.p.sink.error(node.location, f"{what}: port {port} is outside [1, 65535]")
            return None
        return port

    def _port_value(self, node: Node) -> int | None:
        text = self.p._one(node)
        return None if text is None else self._port(node, text, node.name)

    def _addr_value(self, node: Node) -> IPv4Address | None:
        text = self.p._one(node)
        return None if text is None else self.p._ipv4(node, text)

    def _text(self, node: Node) -> str | None:
        self.p._no_block(node)
        if not node.values:
            self.p.sink.error(node.location, f"{node.name} needs a value")
            return None
        return " ".join(node.values)

    def _method(self, node: Node) -> LvsMethod | None:
        self.p._no_block(node)
        if not node.values:
            self.p.sink.error(node.location, f"{node.name} needs NAT, DR or TUN")
            return None
        word = node.values[0].upper()
        if word == "MASQ":
            word = "NAT"
        try:
            method = LvsMethod(word)
        except ValueError:
            self.p.sink.error(
                node.location,
                f"{node.name}: unknown forwarding method '{node.values[0]}' (NAT, DR or TUN)",
            )
            return None
        if len(node.values) > 1:
            self.p.sink.warning(
                node.location,
                f"{node.name}: tunnel options are not supported yet: {' '.join(node.values[1:])}",
            )
        return method

    def _script(self, node: Node) -> str | None:
        self.p.notify_locations.append(node.location)  # scripts need enable_script_security
        return self.p._command(node)

    def _generic(self, node: Node, opts: dict[str, float | int | bool]) -> None:
        """A generic checker option, at any level, into ``opts`` (see ``_options``)."""
        k = node.name
        p = self.p
        value: float | int | bool | None
        if k == "retry" or k == "nb_get_retry":
            k = "retry"
            value = p._int(node, 0, U31)
        elif k == "alpha":
            value = p._flag(node)
        elif k == "delay_loop" or k == "connect_timeout":
            value = p._float(node, 0.001, MAX_TIMER)
        else:
            assert k == "delay_before_retry" or k == "warmup"
            value = p._float(node, 0, MAX_TIMER)
        if value is not None:  # a bad value is reported and leaves the option as it was
            opts[k] = value

    def _options(self, opts: dict[str, float | int | bool]) -> CheckerOptions:
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

    def group(self, node: Node) -> None:
        name = self.p._block_name(node)
        body = self.p._block(node)
        if name is None:
            return
        entries: list[VirtualServerGroupEntry] = []
        for n in body:
            self.p._no_block(n)
            if n.name == "fwmark":
                mark = self.p._int(n, 1, U32)
                if mark is not None:
                    entries.append(VirtualServerGroupEntry(fwmark=mark, location=n.location))
                continue
            span = self._range(n, n.name)
            if span is None:
                continue
            port: int | None = None
            words = list(n.values)
            if words:
                port = self._port(n, words.pop(0), f"virtual_server_group {name}")
                if port is None:
                    continue
            if words:
                self.p.sink.warning(n.location, f"extra words ignored: {' '.join(words)}")
            first, last = span
            entries.append(VirtualServerGroupEntry(first, last, port, location=n.location))
        if not entries:
            self.p.sink.warning(node.location, f"virtual_server_group {name} is empty")
        group = VirtualServerGroup(name, tuple(entries), node.location)
        self.groups.append(group)
        self._groups_named.setdefault(name, []).append(group)

    def _range(self, node: Node, text: str) -> tuple[IPv4Address, IPv4Address] | None:
        """``A.B.C.D``, ``A.B.C.D-E``, ``A.B.C.D-E.F.G.H`` or ``A.B.C.D/NN``."""
        bad = f"'{text}' is not an address, address range or network"
        head = text.split("/", 1)[0].split("-", 1)[0]
        try:
            first = ip_address(head)
        except ValueError:
            self.p.sink.error(node.location, bad)
            return None
        if isinstance(first, IPv6Address):
            self.p.sink.warning(node.location, f"IPv6 address {text} is not supported yet; ignored")
            return None
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
            self.p.sink.error(node.location, bad)
            return None
        if last < first:
            self.p.sink.error(node.location, f"address range {text} ends before it starts")
            return None
        if int(last) - int(first) >= MAX_GROUP_RANGE:
            self.p.sink.error(
                node.location, f"address range {text} has more than {MAX_GROUP_RANGE} addresses"
            )
            return None
        return first, last

    # ---- virtual_server -------------------------------------------------------------

    def virtual_server(self, node: Node) -> None:
        p = self.p
        body = p._block(node)
        words = list(node.values)
        vs: VirtualServer
        if not words:
            p.sink.error(node.location, "virtual_server needs IP [PORT], fwmark N or group NAME")
            return
        if words[0] in ("fwmark", "group"):
            if len(words) < 2:
                p.sink.error(node.location, f"virtual_server {words[0]} needs a value")
                return
            if words[0] == "group":
                vs = VirtualServer(group=words[1], location=node.location)
            else:
                try:
                    mark = int(words[1], 10)
                except ValueError:
                    mark = 0
                if not 1 <= mark <= U32:
                    p.sink.error(node.location, f"virtual_server fwmark '{words[1]}' is invalid")
                    return
                vs = VirtualServer(fwmark=mark, location=node.location)
            extra = words[2:]
        else:
            addr = p._ipv4(node, words[0])
            if addr is None:
                return
            port: int | None = None
            if len(words) > 1:
                port = self._port(node, words[1], "virtual_server")
                if port is None:
                    return
            vs = VirtualServer(address=addr, port=port, location=node.location)
            extra = words[2:]
        if extra:
            p.sink.warning(node.location, f"virtual_server: extra words ignored: {' '.join(extra)}")
        where = f"virtual_server {vs.name}"
        fields: dict[str, object] = {}
        opts: dict[str, float | int | bool] = {}
        flags: set[str] = set()
        real_servers: list[RealServer] = []
        seen_rs: dict[tuple[int, int | None], Location] = {}

        def setf(key: str, value: object) -> None:
            if value is not None:
                fields[key] = value

        for n in body:
            k = n.name
            if k == "real_server":
                rs = self._real_server(n)
                if rs is None:
                    continue
                key = (int(rs.address), rs.port)
                if key in seen_rs:
                    p.sink.warning(
                        n.location,
                        f"real_server {rs} is already defined at {seen_rs[key]}; ignored",
                    )
                    continue
                seen_rs[key] = n.location
                real_servers.append(rs)
            elif k in ("lvs_sched", "lb_algo"):
                v = p._one(n)
                if v is not None:
                    if v in SCHEDULERS:
                        fields["lvs_sched"] = v
                    else:
                        p.sink.error(
                            n.location,
                            f"{k}: unknown scheduler '{v}' ({', '.join(sorted(SCHEDULERS))})",
                        )
            elif k in ("lvs_method", "lb_kind"):
                setf("lvs_method", self._method(n))
            elif k == "persistence_timeout":
                p._no_block(n)
                if n.values:
                    setf("persistence_timeout", p._int(n, 1, U32))
                else:
                    fields["persistence_timeout"] = DEFAULT_PERSISTENCE_TIMEOUT
            elif k == "persistence_granularity":
                setf("persistence_granularity", self._granularity(n))
            elif k == "protocol":
                v = p._one(n)
                if v is not None:
                    try:
                        fields["protocol"] = LvsProtocol(v.upper())
                    except ValueError:
                        p.sink.error(n.location, f"protocol must be TCP, UDP or SCTP, not {v}")
            elif k == "ops":
                fields["ops"] = p._flag(n)
            elif k in SCHED_FLAGS:
                if p._flag(n):
                    flags.add(k)
            elif k == "ha_suspend":
                fields["ha_suspend"] = p._flag(n)
            elif k == "virtualhost":
                setf("virtualhost", p._one(n))
            elif k == "sorry_server":
                setf("sorry_server", self._sorry(n))
            elif k == "sorry_server_inhibit":
                fields["sorry_server_inhibit"] = p._flag(n)
            elif k == "sorry_server_lvs_method":
                setf("sorry_server_lvs_method", self._method(n))
            elif k == "quorum":
                setf("quorum", p._int(n, 1, U31))
            elif k == "hysteresis":
                setf("hysteresis", p._int(n, 0, U31))
            elif k in ("quorum_up", "quorum_down"):
                setf(k, self._script(n))
            elif k == "alpha":
                fields["alpha"] = p._flag(n)
            elif k == "omega":
                fields["omega"] = p._flag(n)
            elif k == "inhibit_on_failure":
                fields["inhibit_on_failure"] = p._flag(n)
            elif k in _GENERIC:
                self._generic(n, opts)
            else:
                p._unknown(n, UNSUPPORTED_VS, where)
        vs = replace(
            vs,
            options=self._options(opts),
            sched_flags=frozenset(flags),
            **fields,  # type: ignore[arg-type]
        )
        vs = replace(vs, real_servers=tuple(real_servers))
        # a keyword given with a bad value is an error already: no "not set" warning too
        aliases = {"lb_algo": "lvs_sched", "lb_kind": "lvs_method"}
        given = set(fields) | {aliases.get(n.name, n.name) for n in body}
        self.servers.append(self._finish(vs, given))

    def _finish(self, vs: VirtualServer, given: set[str]) -> VirtualServer:
        """keepalived's end-of-block fix-ups, each with a warning."""
        sink = self.p.sink
        where = f"virtual_server {vs.name}"
        loc = vs.location
        if vs.alpha and vs.options.alpha is None:
            vs = replace(vs, options=replace(vs.options, alpha=True))
        if vs.fwmark is not None and vs.ha_suspend:
            sink.warning(loc, f"{where}: ha_suspend does not apply to fwmark services; cleared")
            vs = replace(vs, ha_suspend=False)
        by_address = vs.address is not None or vs.group is not None
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
        if vs.hysteresis >= vs.quorum:
            sink.warning(
                loc,
                f"{where}: hysteresis {vs.hysteresis} is not below quorum {vs.quorum};"
                f" using {vs.quorum - 1}",
            )
            vs = replace(vs, hysteresis=vs.quorum - 1)
        if self._has_fwmark(vs):
            for rs in vs.real_servers:
                if rs.port is not None:
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

    def release(self) -> None:
        """Forget the model built (see ``_Parser.finish``)."""
        self.servers, self.groups = [], []
        self._groups_named.clear()
        self._shared_options.clear()

    def _granularity(self, node: Node) -> int | None:
        text = self.p._one(node)
        if text is None:
            return None
        try:
            if text.isdigit():
                prefix = int(text)
                if prefix > 32:
                    raise ValueError(text)
                return prefix
            return IPv4Network(f"0.0.0.0/{text.lstrip('/')}").prefixlen
        except ValueError:
            self.p.sink.error(
                node.location, f"persistence_granularity '{text}' is not an IPv4 netmask"
            )
            return None

    def _sorry(self, node: Node) -> SorryServer | None:
        self.p._no_block(node)
        if not node.values:
            self.p.sink.error(node.location, "sorry_server needs IP [PORT]")
            return None
        addr = self.p._ipv4(node, node.values[0])
        if addr is None:
            return None
        port: int | None = None
        if len(node.values) > 1:
            port = self._port(node, node.values[1], "sorry_server")
            if port is None:
                return None
        return SorryServer(addr, port, node.location)

    # ---- real_server ------------------------------------------------------------------

    def _real_server(self, node: Node) -> RealServer | None:
        p = self.p
        body = node.children or ()
        if not node.values:
            p.sink.error(node.location, "real_server needs IP [PORT]")
            return None
        addr = p._ipv4(node, node.values[0])
        if addr is None:
            return None
        port: int | None = None
        if len(node.values) > 1:
            port = self._port(node, node.values[1], "real_server")
            if port is None:
                return None
        fields: dict[str, object] = {}
        opts: dict[str, float | int | bool] = {}
        checkers: list[Checker] = []
        for n in body:
            k = n.name
            if k == "TCP_CHECK":
                c = self._checker(n, CheckerType.TCP_CHECK)
                if c is not None:
                    checkers.append(c)
            elif k == "weight":
                if (i := p._int(n, 0, U31)) is not None:
                    fields["weight"] = i
            elif k in _GENERIC:
                self._generic(n, opts)
            elif k == "lvs_method" or k == "lb_kind":
                if (method := self._method(n)) is not None:
                    fields["lvs_method"] = method
            elif k == "inhibit_on_failure":
                fields["inhibit_on_failure"] = p._flag(n)
            elif k == "notify_up" or k == "notify_down":
                if (script := self._script(n)) is not None:
                    fields[k] = script
            elif k == "uthreshold" or k == "lthreshold":
                if (i := p._int(n, 0, U32)) is not None:
                    fields[k] = i
            elif k == "virtualhost":
                if (v := p._one(n)) is not None:
                    fields["virtualhost"] = v
            elif k in ("HTTP_GET", "SSL_GET", "MISC_CHECK"):
                c = self._checker(n, CheckerType(k))
                if c is not None:
                    checkers.append(c)
            else:
                where = f"real_server {addr}" if port is None else f"real_server {addr}:{port}"
                if k in UNSUPPORTED_CHECKERS:
                    p.sink.warning(
                        n.location,
                        f"checker {k} is not supported yet; skipped (the rest of {where} applies)",
                    )
                else:
                    p._unknown(n, UNSUPPORTED_RS, where)
        return RealServer(
            addr,
            port,
            node.location,
            options=self._options(opts),
            checkers=tuple(checkers),
            **fields,  # type: ignore[arg-type]
        )

    # ---- checkers -----------------------------------------------------------------------

    def _checker(self, node: Node, kind: CheckerType) -> Checker | None:
        p = self.p
        body = node.children
        if body is None:
            p.sink.error(node.location, f"{kind.value} needs a {{ ... }} block")
            return None
        if node.values:
            p.sink.warning(
                node.location, f"{kind.value}: extra words ignored: {' '.join(node.values)}"
            )
        is_http = kind in (CheckerType.HTTP_GET, CheckerType.SSL_GET)
        is_misc = kind is CheckerType.MISC_CHECK
        fields: dict[str, object] = {}
        opts: dict[str, float | int | bool] = {}
        urls: list[UrlCheck] = []
        for n in body:
            k = n.name
            if k in _GENERIC and not (is_misc and k == "connect_timeout"):
                self._generic(n, opts)
            elif not is_misc and (k == "connect_port" or k == "bind_port"):
                if (port := self._port_value(n)) is not None:
                    fields[k] = port
            elif not is_misc and (k == "connect_ip" or k == "bindto"):
                if (addr := self._addr_value(n)) is not None:
                    fields[k] = addr
            elif is_http and k == "url":
                u = self._url(n)
                if u is not None:
                    urls.append(u)
            elif is_http and k == "virtualhost":
                if (v := p._one(n)) is not None:
                    fields["virtualhost"] = v
            elif is_http and k == "http_protocol":
                v = p._one(n)
                if v is not None:
                    if v.upper() in ("1.0", "1.0C", "1.1"):
                        fields["http_protocol"] = v.upper()
                    else:
                        p.sink.error(n.location, f"http_protocol must be 1.0, 1.0C or 1.1, not {v}")
            elif kind is CheckerType.SSL_GET and k == "enable_sni":
                fields["enable_sni"] = p._flag(n)
            elif is_misc and k == "misc_path":
                if (script := self._script(n)) is not None:
                    fields["misc_path"] = script
            elif is_misc and k == "misc_timeout":
                if (f := p._float(n, 0.001, MAX_TIMER)) is not None:
                    fields["misc_timeout"] = f
            elif is_misc and k == "misc_dynamic":
                fields["misc_dynamic"] = p._flag(n)
            elif is_misc and k == "user":
                p._no_block(n)
                if not n.values or len(n.values) > 2:
                    p.sink.error(n.location, "user needs USER [GROUP]")
                else:
                    fields["user"] = n.values[0]
                    fields["group"] = n.values[1] if len(n.values) > 1 else None
            else:
                p._unknown(n, UNSUPPORTED_CHECKER_OPTS, kind.value)
        if is_misc and "misc_path" not in fields:
            p.sink.error(node.location, "MISC_CHECK has no misc_path")
            return None
        if is_http and not urls:
            p.sink.error(node.location, f"{kind.value} has no url")
            return None
        return Checker(
            kind,
            node.location,
            self._options(opts),
            urls=tuple(urls),
            **fields,  # type: ignore[arg-type]
        )

    def _url(self, node: Node) -> UrlCheck | None:
        p = self.p
        path: str | None = None
        status: list[tuple[int, int]] = []
        digest: str | None = None
        vhost: str | None = None
        for n in p._block(node):
            k = n.name
            if k == "path":
                path = p._one(n)
            elif k == "digest":
                v = p._one(n)
                if v is not None:
                    if _HEX_DIGEST.fullmatch(v):
                        digest = v.lower()
                    else:
                        p.sink.error(n.location, f"digest '{v}' is not 32 hexadecimal digits")
            elif k == "status_code":
                p._no_block(n)
                if not n.values:
                    p.sink.error(n.location, "status_code needs a code or a range")
                for word in n.values:
                    r = self._status(n, word)
                    if r is not None:
                        status.append(r)
            elif k == "virtualhost":
                vhost = p._one(n)
            else:
                p._unknown(n, UNSUPPORTED_URL, "url")
        if path is None:
            p.sink.error(node.location, "url has no path")
            return None
        return UrlCheck(path, tuple(status), digest, vhost, node.location)

    def _status(self, node: Node, word: str) -> tuple[int, int] | None:
        lo_s, sep, hi_s = word.partition("-")
        try:
            lo = int(lo_s, 10)
            hi = int(hi_s, 10) if sep else lo
        except ValueError:
            self.p.sink.error(node.location, f"status_code '{word}' is not a code or a range")
            return None
        if not (100 <= lo <= hi <= 599):
            self.p.sink.error(
                node.location, f"status_code {word}: codes must be in [100, 599], low to high"
            )
            return None
        return lo, hi

    # ---- whole-config checks --------------------------------------------------------

    def cross_check(self, config: Config) -> None:
        """Group names are unique and known; no IPVS service is claimed twice."""
        sink = self.p.sink
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
