"""From the configured virtual servers to checker specs and the desired IPVS services.

Theory of operation: pure functions over the frozen LVS model of
``pyalived.config.model``.  ``checker_specs`` builds what the checker
scheduler runs (``pyalived.checkers.spec``): one ``VirtualServerSpec`` per
``virtual_server`` block, one ``RealServerSpec`` per ``real_server``, and the
checkers with keepalived's inheritance resolved: a generic option
(``delay_loop``, ``connect_timeout``, ``retry``, ``delay_before_retry``,
``warmup``, ``alpha``) set on the checker wins over the real server's, which
wins over the virtual server's, and unset everywhere it takes the checker
type's default; ``virtualhost`` inherits the same way.  ``ipvs_configs``
builds what the IPVS planner needs (``pyalived.ipvs.model``): one
``VirtualServerConfig`` per IPVS service, so a ``virtual_server group`` is
expanded into one service per address of each group entry (ranges included)
and one per fwmark, all sharing the block's real servers (fwmark services
ignore a real server's port, as keepalived does).  Checkers run once
per real server of a block, so a checker event for a ``VirtualServerSpec``
name applies to every service of ``services_by_name``.

Equal checker specs are one object (``_interned``): the real servers of a
block usually share their checker settings, and a large director holds tens
of thousands of them, so one spec per distinct setting saves most of the
memory the specs would take.
"""

from __future__ import annotations

import dataclasses
import pickle
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from socket import AF_INET6

from pyalived.checkers.spec import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DELAY_LOOP,
    DEFAULT_HELO_NAME,
    DEFAULT_STATUS,
    CheckerSpec,
    DnsCheck,
    FailedCheck,
    HttpGet,
    MiscCheck,
    PingCheck,
    RealServerSpec,
    SmtpCheck,
    SslGet,
    StatusRange,
    TcpCheck,
    Timing,
    UdpCheck,
    UrlSpec,
    VirtualServerSpec,
)
from pyalived.config.lvs_parse import service_keys
from pyalived.config.model import (
    Checker,
    CheckerType,
    Config,
    LvsMethod,
    LvsTunnel,
    RealServer,
    VirtualServer,
    VirtualServerGroup,
)
from pyalived.ipvs.model import (
    NO_TUNNEL,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    SVC_F_SCHED3,
    TUN_FLAGS,
    TUN_TYPES,
    DestKey,
    Forwarding,
    RealServerConfig,
    ServiceKey,
    SorryServerConfig,
    Tunnel,
    VirtualServerConfig,
)

_SCHED_FLAG_BITS = {
    "flag-1": SVC_F_SCHED1,
    "sh-fallback": SVC_F_SCHED1,
    "mh-fallback": SVC_F_SCHED1,
    "flag-2": SVC_F_SCHED2,
    "sh-port": SVC_F_SCHED2,
    "mh-port": SVC_F_SCHED2,
    "flag-3": SVC_F_SCHED3,
}

Groups = Mapping[str, VirtualServerGroup]


def groups_of(config: Config) -> dict[str, VirtualServerGroup]:
    return {g.name: g for g in config.virtual_server_groups}


# ---- checker side --------------------------------------------------------------


_SPECS: weakref.WeakValueDictionary[CheckerSpec, CheckerSpec] = weakref.WeakValueDictionary()


def _interned(spec: CheckerSpec) -> CheckerSpec:
    """The one live spec equal to ``spec`` (``spec`` itself if none is)."""
    return _SPECS.setdefault(spec, spec)


def checker_spec(checker: Checker, rs: RealServer, vs: VirtualServer) -> CheckerSpec:
    """One checker with the virtual server -> real server -> checker inheritance resolved."""
    return _interned(_checker_spec(checker, rs, vs))


def _checker_spec(checker: Checker, rs: RealServer, vs: VirtualServer) -> CheckerSpec:
    o = checker.options.over(rs.options).over(vs.options)
    timing = Timing(
        delay_loop=DEFAULT_DELAY_LOOP if o.delay_loop is None else o.delay_loop,
        retry=o.retry,
        delay_before_retry=o.delay_before_retry,
        warmup=o.warmup,
        alpha=bool(o.alpha),
        log_all_failures=checker.log_all_failures,
    )
    timeout = DEFAULT_CONNECT_TIMEOUT if o.connect_timeout is None else o.connect_timeout
    if checker.type is CheckerType.MISC_CHECK:
        assert checker.misc_path is not None  # the parser refuses a MISC_CHECK without one
        return MiscCheck(
            misc_path=checker.misc_path,
            misc_timeout=checker.misc_timeout,
            misc_dynamic=checker.misc_dynamic,
            user=checker.user,
            group=checker.group,
            timing=timing,
        )
    conn = {
        "connect_ip": checker.connect_ip,
        "connect_port": checker.connect_port,
        "bindto": checker.bindto,
        "bind_port": checker.bind_port,
        "connect_timeout": timeout,
        "bind_if": checker.bind_if,
        "fwmark": checker.fwmark or None,  # 0: no mark, as keepalived
    }
    if checker.type is CheckerType.TCP_CHECK:
        return TcpCheck(timing=timing, **conn)  # type: ignore[arg-type]
    if checker.type is CheckerType.DNS_CHECK:
        return DnsCheck(type=checker.dns_type or "SOA", name=checker.dns_name or ".",
                        timing=timing, **conn)  # type: ignore[arg-type]
    if checker.type is CheckerType.UDP_CHECK:
        return UdpCheck(
            payload=checker.payload,
            require_reply=checker.require_reply,
            reply=checker.reply,
            reply_mask=checker.reply_mask,
            min_reply_length=checker.min_reply_length or 0,
            max_reply_length=255 if checker.max_reply_length is None else checker.max_reply_length,
            timing=timing,
            **conn,  # type: ignore[arg-type]
        )
    if checker.type is CheckerType.PING_CHECK:
        return PingCheck(timing=timing, **conn)  # type: ignore[arg-type]
    if checker.type is CheckerType.SMTP_CHECK:
        helo = checker.helo_name or DEFAULT_HELO_NAME
        return SmtpCheck(helo_name=helo, timing=timing, **conn)  # type: ignore[arg-type]
    urls = tuple(
        UrlSpec(
            path=u.path,
            status_code=tuple(StatusRange(lo, hi) for lo, hi in u.status_code) or DEFAULT_STATUS,
            digest=u.digest,
            virtualhost=u.virtualhost,
            regex=u.regex,
            regex_no_match=u.regex_no_match,
            regex_options=u.regex_options,
            regex_min_offset=u.regex_min_offset,
            regex_max_offset=u.regex_max_offset,
        )
        for u in checker.urls
    )
    vhost = checker.virtualhost or rs.virtualhost or vs.virtualhost
    proto = checker.http_protocol or "1.0"
    if checker.type is CheckerType.SSL_GET:
        return SslGet(
            urls=urls,
            virtualhost=vhost,
            http_protocol=proto,
            timing=timing,
            fast_recovery=checker.fast_recovery,
            enable_sni=checker.enable_sni,
            **conn,  # type: ignore[arg-type]
        )
    return HttpGet(urls=urls, virtualhost=vhost, http_protocol=proto, timing=timing,
                   fast_recovery=checker.fast_recovery, **conn)  # type: ignore[arg-type]


def real_server_spec(rs: RealServer, vs: VirtualServer) -> RealServerSpec:
    """A real server's checkers; one whose only checkers pyalived cannot run gets a
    ``FailedCheck``, so it is never counted as up for want of a checker."""
    checkers = tuple(checker_spec(c, rs, vs) for c in rs.checkers)
    if not checkers and rs.unsupported_checkers:
        checkers = (_interned(FailedCheck(", ".join(rs.unsupported_checkers))),)
    return RealServerSpec(
        ip=rs.address,
        port=rs.port,
        weight=rs.weight,
        checkers=checkers,
    )


def virtual_server_spec(vs: VirtualServer) -> VirtualServerSpec:
    return VirtualServerSpec(
        name=vs.name,
        real_servers=tuple(real_server_spec(rs, vs) for rs in vs.real_servers),
        omega=vs.omega,
    )


def checker_specs(config: Config) -> tuple[VirtualServerSpec, ...]:
    """What the checker scheduler runs, one ``VirtualServerSpec`` per virtual_server block."""
    return tuple(virtual_server_spec(vs) for vs in config.virtual_servers)


# ---- IPVS side -------------------------------------------------------------------


def _forwarding(method: LvsMethod | None) -> Forwarding | None:
    return None if method is None else Forwarding[method.value]


def tunnel(t: LvsTunnel | None) -> Tunnel | None:
    """The IPVS tunnel settings of ``lvs_method TUN ...`` (None: not given)."""
    if t is None:
        return None
    return Tunnel(TUN_TYPES[t.type], t.port, TUN_FLAGS[t.checksum])


def real_server_config(rs: RealServer, fwmark: bool = False) -> RealServerConfig:
    """IPVS view of a real server; a fwmark service ignores its port, as keepalived does."""
    return RealServerConfig(
        address=rs.address,
        port=0 if fwmark else rs.port or 0,
        weight=rs.weight,
        forwarding=_forwarding(rs.lvs_method),
        inhibit_on_failure=rs.inhibit_on_failure,
        u_threshold=rs.uthreshold,
        l_threshold=rs.lthreshold,
        checked=bool(rs.checkers or rs.unsupported_checkers or rs.file_checks),
        location=rs.location,
        tunnel=tunnel(rs.lvs_tunnel) if rs.lvs_method is not None else None,
    )


def ipvs_virtual_servers(vs: VirtualServer, groups: Groups) -> tuple[VirtualServerConfig, ...]:
    """One ``VirtualServerConfig`` per IPVS service of the block, sharing its real servers."""
    sorry = None
    if vs.sorry_server is not None:
        s = vs.sorry_server
        sorry = SorryServerConfig(
            address=s.address,
            port=s.port or 0,
            forwarding=_forwarding(vs.sorry_server_lvs_method),
            location=s.location,
            tunnel=tunnel(vs.sorry_server_lvs_tunnel)
            if vs.sorry_server_lvs_method is not None else None,
        )
    flags = 0
    for name in vs.sched_flags:
        flags |= _SCHED_FLAG_BITS[name]
    by_port = tuple(real_server_config(rs) for rs in vs.real_servers)
    by_mark = tuple(real_server_config(rs, fwmark=True) for rs in vs.real_servers)
    forwarding = Forwarding[vs.lvs_method.value]
    return tuple(
        VirtualServerConfig(
            key=key,
            scheduler=vs.lvs_sched,
            forwarding=forwarding,
            persistence_timeout=vs.persistence_timeout,
            persistence_granularity=vs.persistence_granularity,
            ops=vs.ops,
            sched_flags=flags,
            quorum=vs.quorum,
            hysteresis=vs.hysteresis,
            sorry_server=sorry,
            sorry_server_inhibit=vs.sorry_server_inhibit,
            inhibit_on_failure=vs.inhibit_on_failure,
            alpha=vs.alpha,
            omega=vs.omega,
            quorum_up=vs.quorum_up,
            quorum_down=vs.quorum_down,
            real_servers=by_mark if key.fwmark else by_port,
            location=vs.location,
            tunnel=tunnel(vs.lvs_tunnel) or NO_TUNNEL,
            persistence_engine=vs.persistence_engine,
        )
        for key in service_keys(vs, groups)
    )


def ipvs_configs(config: Config) -> tuple[VirtualServerConfig, ...]:
    """Every IPVS service the configuration asks for, in file order."""
    groups = groups_of(config)
    return tuple(c for vs in config.virtual_servers for c in ipvs_virtual_servers(vs, groups))


def services_by_name(config: Config) -> dict[str, tuple[ServiceKey, ...]]:
    """``VirtualServerSpec.name`` -> the IPVS services its checkers' verdicts apply to."""
    groups = groups_of(config)
    return {vs.name: service_keys(vs, groups) for vs in config.virtual_servers}


def dest_key(rs: RealServerSpec, service: ServiceKey | None = None) -> DestKey:
    """The IPVS destination, in ``service``, of a checked real server (a checker
    event's ``real_server``); fwmark services ignore the real server's port."""
    port = 0 if service is not None and service.fwmark else rs.port or 0
    return DestKey(rs.ip, port)


# ---- what the checker process is handed -----------------------------------------

BlockKey = tuple[str, str]  # (name, protocol; for a fwmark service "", or "inet6" if IPv6)


def block_key(vs: VirtualServer) -> BlockKey:
    """What identifies a ``virtual_server`` block across reloads: its name (address and
    port, fwmark or group) and, unless it is a fwmark service, its protocol; an IPv6
    fwmark service is told from the IPv4 one of the same mark by its family."""
    if vs.fwmark is not None:
        return (vs.name, "inet6" if vs.family == AF_INET6 else "")
    return (vs.name, vs.protocol.value)


@dataclass(frozen=True)
class PackedLvs:
    """The LVS half of a configuration with each ``virtual_server`` block serialized apart.

    What the checker process is handed (``pack``): it unserializes one block
    at a time, and only the blocks whose bytes differ from the running ones,
    so a reload never holds a second copy of a large configuration, and the
    process keeps each block's bytes (``_Block.fingerprint``), a fraction of
    the parsed objects' memory, to compare the next reload with.  Equal bytes
    mean equal blocks; equal blocks give equal bytes (the one exception, a
    ``sched_flags`` set serialized in another order, only makes a block look
    changed, and a changed block keeps its real servers' state anyway).
    """

    config: Config  # without its virtual servers
    blocks: tuple[tuple[BlockKey, bytes], ...]


def pack(config: Config) -> PackedLvs:
    return PackedLvs(
        dataclasses.replace(config, virtual_servers=()),
        tuple((block_key(vs), _serialize(vs)) for vs in config.virtual_servers),
    )


def _serialize(vs: VirtualServer) -> bytes:
    return pickle.dumps(vs, pickle.HIGHEST_PROTOCOL)


def blocks_of(
    config: Config | PackedLvs,
) -> Iterator[tuple[BlockKey, bytes, VirtualServer | None]]:
    """Each block's key, bytes and, when at hand, parsed form."""
    if isinstance(config, PackedLvs):
        for key, data in config.blocks:
            yield key, data, None
        return
    for vs in config.virtual_servers:
        yield block_key(vs), _serialize(vs), vs


def unpacked(config: Config | PackedLvs) -> Config:
    return config.config if isinstance(config, PackedLvs) else config
