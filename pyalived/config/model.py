"""Typed, frozen model of a keepalived.conf.

Theory of operation: the parser (``pyalived.config.parser``, with its VRRP
and LVS halves) turns the statements of the lexer and tree builder into these
dataclasses.  Every object is immutable and carries the ``Location`` (file
and line) it was declared at, so that any later diagnostic, including those
found while the daemon applies the config, can name ``file:line``.
Defaults are keepalived 2.2.7's defaults.  Values are already validated when
they reach the model: a ``VrrpInstance`` always has a VRID in 1..255 and a
priority in 1..255, for example.

The LVS half (``VirtualServer`` and friends) keeps the generic checker options
(``delay_loop``, ``connect_timeout``, ``retry``, ...) as written at each level,
``None`` meaning "inherit from the enclosing block"; ``pyalived.checkers.compile``
resolves that inheritance when it builds the checker and IPVS specifications.
Its classes have ``__slots__``: a configuration may hold tens of thousands of
real servers and checkers, and a slotted object is less than half the size of
one with a ``__dict__``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from socket import AF_INET6


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


NOWHERE = Location("<default>", 0)


class InitialState(enum.Enum):
    MASTER = "MASTER"
    BACKUP = "BACKUP"


class AuthType(enum.Enum):
    PASS = "PASS"
    AH = "AH"


@dataclass(frozen=True)
class Authentication:
    type: AuthType
    # keepalived keeps the first 8 bytes of auth_pass (RFC 3768 §5.3.10 field size).
    password: bytes


@dataclass(frozen=True)
class VirtualIP:
    """One ``virtual_ipaddress`` line: ``ADDR[/PREFIX] [brd X] [dev IF] [scope S] [label L]``."""

    address: IPv4Interface | IPv6Interface  # prefix defaults to /32 or /128, as in keepalived
    dev: str | None = None  # None: the instance's interface
    label: str | None = None
    scope: str | None = None  # "global", "host", "link", "site" or a number
    brd: IPv4Address | None = None
    location: Location = NOWHERE

    @property
    def ip(self) -> IPv4Address | IPv6Address:
        return self.address.ip


RTPROT_KEEPALIVED = 18  # linux/rtnetlink.h: the protocol keepalived tags its routes with
MAIN_TABLE = 254  # RT_TABLE_MAIN


@dataclass(frozen=True)
class VirtualRoute:
    """One ``virtual_routes`` / ``static_routes`` line (``pyalived.config.routes_parse``):
    ``[src ADDR] [to] PREFIX [via|gw ADDR] [dev IF] [scope S] [table T] [metric M]
    [protocol P] [tos N] [onlink]``, or a ``blackhole``/``unreachable``/``prohibit``/``throw``
    PREFIX."""

    dst: IPv4Network | IPv6Network
    type: str = "unicast"  # unicast, blackhole, unreachable, prohibit, throw
    src: IPv4Address | IPv6Address | None = None  # preferred source (RTA_PREFSRC)
    via: IPv4Address | IPv6Address | None = None
    dev: str | None = None
    scope: int | None = None  # None: universe, as keepalived leaves it
    table: int = MAIN_TABLE
    metric: int | None = None
    protocol: int = RTPROT_KEEPALIVED
    tos: int = 0
    onlink: bool = False
    location: Location = NOWHERE

    @property
    def family(self) -> int:
        return self.dst.version

    def __str__(self) -> str:
        words = [] if self.type == "unicast" else [self.type]
        words.append(str(self.dst))
        for key, value in (("via", self.via), ("src", self.src), ("dev", self.dev)):
            if value is not None:
                words += [key, str(value)]
        if self.table != MAIN_TABLE:
            words += ["table", str(self.table)]
        if self.metric is not None:
            words += ["metric", str(self.metric)]
        return " ".join(words)


@dataclass(frozen=True)
class VirtualRule:
    """One ``virtual_rules`` / ``static_rules`` line: the selector (``from``, ``to``,
    ``iif``, ``oif``, ``fwmark``, ``tos``), ``preference`` and the action (``table``,
    ``goto``, ``blackhole``, ``unreachable``, ``prohibit``, ``nop``)."""

    family: int  # 4 or 6
    priority: int
    action: str = "table"  # table, goto, blackhole, unreachable, prohibit, nop
    table: int | None = None
    goto: int | None = None
    src: IPv4Network | IPv6Network | None = None
    dst: IPv4Network | IPv6Network | None = None
    iif: str | None = None
    oif: str | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    tos: int = 0
    invert: bool = False  # ``not``
    protocol: int = RTPROT_KEEPALIVED
    location: Location = NOWHERE

    def __str__(self) -> str:
        words = [f"{self.priority}:"] + (["not"] if self.invert else [])
        words += ["from", str(self.src) if self.src is not None else "all"]
        for key, value in (("to", self.dst), ("iif", self.iif), ("oif", self.oif)):
            if value is not None:
                words += [key, str(value)]
        if self.fwmark is not None:
            mask = "" if self.fwmask is None else f"/{self.fwmask:#x}"
            words += ["fwmark", f"{self.fwmark:#x}{mask}"]
        if self.action == "table":
            words += ["lookup", str(self.table)]
        elif self.action == "goto":
            words += ["goto", str(self.goto)]
        else:
            words.append(self.action)
        return " ".join(words)


@dataclass(frozen=True)
class TrackInterface:
    name: str
    weight: int = 0  # 0: interface down means FAULT; otherwise a priority change
    location: Location = NOWHERE


@dataclass(frozen=True)
class TrackScriptRef:
    name: str
    weight: int | None = None  # overrides the vrrp_script's own weight when set
    location: Location = NOWHERE


@dataclass(frozen=True)
class TrackRef:
    """One line of a ``track_file { }`` or ``track_process { }`` block of an instance
    or sync group: ``NAME [weight N [reverse|noreverse]]``."""

    name: str
    weight: int | None = None  # None: the track_file's / vrrp_track_process's own weight
    reverse: bool = False
    location: Location = NOWHERE


@dataclass(frozen=True)
class TrackFile:
    """``track_file NAME { file PATH; weight N [reverse]; init_file [VALUE] [overwrite] }``."""

    name: str
    file: str
    weight: int = 1
    reverse: bool = False
    init_value: int | None = None  # None: no init_file
    init_overwrite: bool = False
    location: Location = NOWHERE


class ParamMatch(enum.Enum):
    """How a ``vrrp_track_process``'s parameters are compared with a command line's."""

    NONE = "none"  # no parameters and no param_match: the parameters do not matter
    EXACT = "exact"  # the same parameters, no more
    PARTIAL = "partial"  # the configured parameters first, maybe more after them
    INITIAL = "initial"  # as partial, the last configured one may be a prefix


@dataclass(frozen=True)
class TrackProcess:
    """``vrrp_track_process NAME { process ...; param_match; weight; quorum; ... }``."""

    name: str
    process: str
    params: tuple[str, ...] = ()
    param_match: ParamMatch = ParamMatch.NONE
    weight: int = 1
    reverse: bool = False
    quorum: int = 1
    quorum_max: int | None = None  # None: no maximum
    fork_delay: float = 0.0
    terminate_delay: float = 0.0
    full_command: bool = False
    location: Location = NOWHERE


@dataclass(frozen=True)
class VrrpScript:
    name: str
    script: str
    interval: float = 1.0
    timeout: float | None = None  # None: keepalived uses the interval
    weight: int = 0
    rise: int = 1
    fall: int = 1
    user: str | None = None
    group: str | None = None
    location: Location = NOWHERE


@dataclass(frozen=True)
class ScriptUser:
    """The ``USER [GROUP]`` written after a notify-like script (``notify_master SCRIPT
    [USER [GROUP]]``): who that one script runs as instead of ``script_user``."""

    user: str
    group: str | None = None  # None: the user's primary group


@dataclass(frozen=True)
class Notify:
    """The four per-state scripts plus the generic ``notify`` script, each with the
    user of its own line if it names one (None: ``script_user``)."""

    master: str | None = None
    backup: str | None = None
    fault: str | None = None
    stop: str | None = None
    generic: str | None = None  # called as: SCRIPT INSTANCE|GROUP NAME STATE PRIORITY
    master_user: ScriptUser | None = None
    backup_user: ScriptUser | None = None
    fault_user: ScriptUser | None = None
    stop_user: ScriptUser | None = None
    generic_user: ScriptUser | None = None


class OldUnicastChecksum(enum.Enum):
    """keepalived's ``old_unicast_checksum [never]`` (VRRPv3 over IPv4, unicast only)."""

    AUTO = "auto"  # no keyword: RFC 5798 checksum, switching to the old one if a peer uses it
    ALWAYS = "always"  # ``old_unicast_checksum``: the pre-1.3.6 keepalived checksum
    NEVER = "never"  # ``old_unicast_checksum never``: the RFC 5798 checksum only


@dataclass(frozen=True)
class VrrpInstance:
    name: str
    interface: str
    virtual_router_id: int
    location: Location = NOWHERE
    state: InitialState = InitialState.BACKUP
    priority: int = 100
    advert_int: float = 1.0
    nopreempt: bool = False
    preempt_delay: float = 0.0
    authentication: Authentication | None = None
    virtual_ipaddress: tuple[VirtualIP, ...] = ()
    virtual_ipaddress_excluded: tuple[VirtualIP, ...] = ()
    unicast_src_ip: IPv4Address | IPv6Address | None = None
    unicast_peer: tuple[IPv4Address | IPv6Address, ...] = ()
    use_vmac: bool = False
    vmac_name: str | None = None  # None with use_vmac: "vrrp.<VRID>"
    vmac_xmit_base: bool = False
    garp_master_delay: float = 5.0
    garp_master_repeat: int = 5
    garp_master_refresh: float = 0.0  # 0: no periodic refresh
    garp_master_refresh_repeat: int = 1
    garp_lower_prio_delay: float | None = None
    garp_lower_prio_repeat: int | None = None
    gna_interval: float = 0.0  # seconds between unsolicited NAs (default: vrrp_gna_interval)
    track_interface: tuple[TrackInterface, ...] = ()
    track_script: tuple[TrackScriptRef, ...] = ()
    notify: Notify = field(default_factory=Notify)
    smtp_alert: bool = False
    dont_track_primary: bool = False
    mcast_src_ip: IPv4Address | IPv6Address | None = None
    version: int = 2  # VRRP version: 2 (RFC 3768) or 3 (RFC 5798); advert_int in centiseconds
    old_unicast_checksum: OldUnicastChecksum = OldUnicastChecksum.AUTO
    # How an advert announcing other addresses than ours is treated (see
    # pyalived.vrrp.peer_addresses); None until the parser resolves the global default.
    skip_check_adv_addr: bool | None = None  # default: global vrrp_skip_check_adv_addr
    strict_mode: bool | None = None  # global vrrp_strict (the instance keyword: not yet)
    # RFC 5798 Accept_Mode: ``accept`` / ``no_accept``; None until the parser resolves
    # the default (accept unless vrrp_strict; always for the address owner).
    accept: bool | None = None
    # Added on becoming MASTER (after the VIPs), removed on leaving it (before them).
    virtual_routes: tuple[VirtualRoute, ...] = ()
    virtual_rules: tuple[VirtualRule, ...] = ()
    garp_interval: float = 0.0  # seconds between gratuitous ARPs (default: vrrp_garp_interval)
    track_file: tuple[TrackRef, ...] = ()
    track_process: tuple[TrackRef, ...] = ()

    @property
    def family(self) -> int:
        """4 or 6: an instance whose ``virtual_ipaddress`` is IPv6 is an IPv6 instance
        (always VRRPv3, RFC 5798); without addresses, the family of its unicast ones."""
        for addr in (*(v.ip for v in self.virtual_ipaddress), self.unicast_src_ip,
                     *self.unicast_peer):
            if addr is not None:
                return addr.version
        return 4

    @property
    def effective_vmac_name(self) -> str | None:
        if not self.use_vmac:
            return None
        return self.vmac_name or f"vrrp.{self.virtual_router_id}"


@dataclass(frozen=True)
class VrrpSyncGroup:
    name: str
    group: tuple[str, ...]  # instance names
    location: Location = NOWHERE
    notify: Notify = field(default_factory=Notify)
    track_script: tuple[TrackScriptRef, ...] = ()
    track_interface: tuple[TrackInterface, ...] = ()
    smtp_alert: bool = False
    track_file: tuple[TrackRef, ...] = ()
    track_process: tuple[TrackRef, ...] = ()


@dataclass(frozen=True)
class NotifyFifo:
    """``notify_fifo`` / ``vrrp_notify_fifo`` / ``lvs_notify_fifo PATH [USER [GROUP]]`` with
    its ``..._script`` companion (started with PATH as its last argument)."""

    path: str
    user: str | None = None  # owner of a FIFO pyalived creates
    group: str | None = None
    script: str | None = None  # the script line, split as keepalived splits it
    script_user: str | None = None  # None: script_user
    script_group: str | None = None


@dataclass(frozen=True)
class SmtpServer:
    """``smtp_server HOST [PORT]``: an IP address or a host name."""

    host: str
    port: int = 25


VRRP_MCAST_GROUP4 = IPv4Address("224.0.0.18")  # RFC 3768 §5.2.2
VRRP_MCAST_GROUP6 = IPv6Address("ff02::12")  # RFC 5798 §5.1.2.2


@dataclass(frozen=True)
class GlobalDefs:
    router_id: str | None = None
    vrrp_version: int = 2
    vrrp_mcast_group4: IPv4Address = VRRP_MCAST_GROUP4
    vrrp_mcast_group6: IPv6Address = VRRP_MCAST_GROUP6
    vrrp_garp_master_delay: float = 5.0
    vrrp_garp_master_repeat: int = 5
    vrrp_garp_master_refresh: float = 0.0
    vrrp_garp_master_refresh_repeat: int = 1
    vrrp_garp_interval: float = 0.0
    vrrp_gna_interval: float = 0.0  # seconds between unsolicited neighbour advertisements
    vrrp_garp_lower_prio_delay: float | None = None
    vrrp_garp_lower_prio_repeat: int | None = None
    script_user: str | None = None
    script_group: str | None = None
    enable_script_security: bool = False
    vrrp_strict: bool = False
    vrrp_skip_check_adv_addr: bool = False
    # The children's scheduling and memory (pyalived.tuning); None/False/(): untouched.
    vrrp_priority: int | None = None
    checker_priority: int | None = None
    vrrp_rt_priority: int | None = None
    checker_rt_priority: int | None = None
    vrrp_rlimit_rttime: int | None = None  # microseconds
    checker_rlimit_rttime: int | None = None
    vrrp_no_swap: bool = False
    checker_no_swap: bool = False
    vrrp_cpu_affinity: tuple[int, ...] = ()
    checker_cpu_affinity: tuple[int, ...] = ()
    # The firewall of no_accept VIPs (pyalived.vrrp.firewall): nftables [TABLE] and its knobs.
    nftables: str = "keepalived"
    nftables_priority: int = -1
    nftables_counters: bool = False
    nftables_ifindex: bool = False
    location: Location = NOWHERE
    # Mail alerts (pyalived.mail).  The smtp_alert* flags are None when not written:
    # an instance's own smtp_alert then defaults to smtp_alert_vrrp, else smtp_alert.
    notification_email: tuple[str, ...] = ()
    notification_email_from: str | None = None  # None: keepalived@<host name>
    smtp_server: SmtpServer | None = None
    smtp_helo_name: str | None = None  # None: the host name
    smtp_connect_timeout: float = 30.0
    smtp_alert: bool | None = None
    smtp_alert_vrrp: bool | None = None
    smtp_alert_checker: bool | None = None
    checker_log_all_failures: bool = False  # log every failed check of an up checker
    # FIFO notifications (pyalived.fifo).
    notify_fifo: NotifyFifo | None = None
    vrrp_notify_fifo: NotifyFifo | None = None
    lvs_notify_fifo: NotifyFifo | None = None
    # Start-up and interfaces (see pyalived.startup)
    vrrp_startup_delay: float = 0.0  # seconds before the VRRP instances start
    dynamic_interfaces: bool = False  # a missing interface: FAULT until it appears
    dynamic_interfaces_allow_changes: bool = False  # ``dynamic_interfaces allow_if_changes``
    startup_script: ParentScript | None = None
    shutdown_script: ParentScript | None = None
    net_namespace: str | None = None  # top-level ``net_namespace NAME``
    vrrp_min_garp: bool = False  # already applied to the garp defaults above
    lvs_flush: bool = False  # empty the whole IPVS table when the checkers start
    lvs_flush_on_stop: str | None = None  # "full" or "vs" (``lvs_flush_on_stop VS``)
    lvs_timeouts: LvsTimeouts | None = None
    garp_groups: tuple[GarpGroup, ...] = ()  # the top-level ``garp_group`` blocks
    # ``lvs_sync_daemon`` (or an instance's deprecated ``lvs_sync_daemon_interface``):
    # the kernel's IPVS connection-sync daemon, driven by the VRRP child
    # (pyalived.vrrp.lvs_sync); None: not managed.
    lvs_sync_daemon: LvsSyncDaemon | None = None


STARTUP_SCRIPT_TIMEOUT = 10.0  # keepalived's default for both scripts


@dataclass(frozen=True)
class LvsSyncDaemon:
    """``lvs_sync_daemon IF [[inst] INSTANCE] [id N] [maxlen N] [port N] [ttl N] [group IP]``.

    ``sync_id`` None: the instance's virtual_router_id.  ``maxlen``, ``port``, ``ttl``
    and ``group`` None: the kernel's defaults (a length from the interface's MTU, port
    8848, TTL 1, 224.0.0.81).  ``instance`` None: keepalived 2.2.7 then starts no
    daemon, nor does pyalived.
    """

    interface: str
    instance: str | None = None
    sync_id: int | None = None
    maxlen: int | None = None
    port: int | None = None
    ttl: int | None = None
    group: IPv4Address | IPv6Address | None = None
    location: Location = NOWHERE


@dataclass(frozen=True)
class ParentScript:
    """``startup_script`` / ``shutdown_script``: run by the parent, killed at ``timeout``."""

    command: str
    timeout: float = STARTUP_SCRIPT_TIMEOUT
    user: str | None = None
    group: str | None = None
    location: Location = NOWHERE


@dataclass(frozen=True)
class GarpGroup:
    """One ``garp_group`` block: GARP / NA spacing shared by its interfaces."""

    interfaces: tuple[str, ...]
    garp_interval: float = 0.0
    gna_interval: float = 0.0
    location: Location = NOWHERE


# ---- LVS: virtual_server, virtual_server_group -------------------------------

IPAddress = IPv4Address | IPv6Address  # LVS addresses are of either family


def host_port(address: IPAddress, port: int | None) -> str:
    """``IP:PORT`` as ipvsadm and keepalived print it: an IPv6 address in brackets."""
    host = f"[{address}]" if address.version == 6 else str(address)
    return host if port is None else f"{host}:{port}"


def family_name(family: int) -> str:
    """``inet`` or ``inet6``, keepalived's words for an address family."""
    return "inet6" if family == AF_INET6 else "inet"


class LvsMethod(enum.Enum):
    """``lvs_method`` / ``lb_kind``: how IPVS forwards to a real server."""

    NAT = "NAT"
    DR = "DR"
    TUN = "TUN"


class LvsProtocol(enum.Enum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class CheckerType(enum.Enum):
    TCP_CHECK = "TCP_CHECK"
    HTTP_GET = "HTTP_GET"
    SSL_GET = "SSL_GET"
    MISC_CHECK = "MISC_CHECK"
    DNS_CHECK = "DNS_CHECK"
    UDP_CHECK = "UDP_CHECK"
    PING_CHECK = "PING_CHECK"
    SMTP_CHECK = "SMTP_CHECK"


@dataclass(frozen=True, slots=True)
class CheckerOptions:
    """Generic checker options; each level (virtual server, real server, checker)
    may set them, ``None`` inherits the enclosing level's value."""

    delay_loop: float | None = None
    connect_timeout: float | None = None
    retry: int | None = None
    delay_before_retry: float | None = None
    warmup: float | None = None
    alpha: bool | None = None

    def over(self, outer: CheckerOptions) -> CheckerOptions:
        """These options, with the unset ones taken from ``outer``."""
        unset = {
            f.name: getattr(outer, f.name) for f in fields(self) if getattr(self, f.name) is None
        }
        return replace(self, **unset)


@dataclass(frozen=True, slots=True)
class SslSettings:
    """The top-level ``SSL`` block: the TLS client side of every SSL_GET checker."""

    password: str | None = None  # of an encrypted key
    ca: str | None = None  # trust anchors loaded, as keepalived does (it verifies nothing)
    certificate: str | None = None  # client certificate chain (PEM), presented if asked for
    key: str | None = None  # its private key (PEM); None: in the certificate file
    location: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class UrlCheck:
    """One ``url`` block of an HTTP_GET / SSL_GET checker."""

    path: str
    status_code: tuple[tuple[int, int], ...] = ()  # inclusive ranges; (): 200-299
    digest: str | None = None  # lower-case hex MD5
    virtualhost: str | None = None
    location: Location = NOWHERE
    regex: str | None = None  # searched for in the body
    regex_no_match: bool = False  # the check fails when the regex matches
    regex_options: tuple[str, ...] = ()  # keepalived's PCRE2 option names
    regex_min_offset: int = 0  # first body offset a match may start at
    regex_max_offset: int | None = None  # last body offset a match may start at


@dataclass(frozen=True, slots=True)
class LvsTunnel:
    """``lvs_method TUN [type ipip|gue port N|gre] [nocsum|csum|remcsum]`` (Linux 5.2+)."""

    type: str = "ipip"  # ipip, gue, gre
    port: int = 0  # gue's UDP port (1..65535); 0 otherwise
    checksum: str = "nocsum"  # nocsum, csum (gue, gre), remcsum (gue)


@dataclass(frozen=True, slots=True)
class FileCheck:
    """``FILE_CHECK { track_file NAME; weight N [reverse] }`` in a real server."""

    track_file: str
    weight: int = 0  # 0: the track_file's own weight and reverse
    reverse: bool = False
    location: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class LvsTimeouts:
    """global ``lvs_timeouts tcp N tcpfin N udp N`` (seconds; 0: left as it is)."""

    tcp: int = 0
    tcpfin: int = 0
    udp: int = 0


@dataclass(frozen=True, slots=True)
class Checker:
    """One checker block of a real server; the fields used depend on ``type``."""

    type: CheckerType
    location: Location = NOWHERE
    options: CheckerOptions = field(default_factory=CheckerOptions)
    # TCP_CHECK, HTTP_GET, SSL_GET
    connect_ip: IPAddress | None = None
    connect_port: int | None = None
    bindto: IPAddress | None = None
    bind_port: int | None = None
    bind_if: str | None = None  # SO_BINDTODEVICE
    fwmark: int | None = None  # SO_MARK
    # HTTP_GET, SSL_GET
    urls: tuple[UrlCheck, ...] = ()
    virtualhost: str | None = None
    http_protocol: str | None = None  # None: "1.0"
    enable_sni: bool = False
    fast_recovery: bool = False  # no delay_loop between URLs while not up
    # MISC_CHECK
    misc_path: str | None = None
    misc_timeout: float | None = None
    misc_dynamic: bool = False
    user: str | None = None
    group: str | None = None
    # DNS_CHECK
    dns_type: str | None = None  # None: SOA
    dns_name: str | None = None  # None: "."
    # UDP_CHECK
    payload: bytes | None = None  # None: random bytes
    require_reply: bool = False
    reply: bytes | None = None  # require_reply's HEX_STR
    reply_mask: bytes | None = None  # its X nibbles cleared
    min_reply_length: int | None = None  # None: 0
    max_reply_length: int | None = None  # None: 255
    # SMTP_CHECK
    helo_name: str | None = None  # None: smtpchecker.keepalived.org
    # every checker
    log_all_failures: bool = False  # log every failed check while the checker is up


@dataclass(frozen=True, slots=True)
class RealServer:
    address: IPAddress
    port: int | None = None  # None: no port (fwmark services)
    location: Location = NOWHERE
    weight: int = 1
    lvs_method: LvsMethod | None = None  # None: the virtual server's
    inhibit_on_failure: bool | None = None  # None: the virtual server's
    notify_up: str | None = None
    notify_down: str | None = None
    notify_up_user: ScriptUser | None = None  # the line's USER [GROUP]; None: script_user
    notify_down_user: ScriptUser | None = None
    uthreshold: int = 0
    lthreshold: int = 0
    virtualhost: str | None = None
    options: CheckerOptions = field(default_factory=CheckerOptions)
    checkers: tuple[Checker, ...] = ()
    smtp_alert: bool | None = None  # None: global smtp_alert_checker / smtp_alert (alerts.py)
    # checkers pyalived cannot run (BFD_CHECK): "KIND at FILE:LINE"
    unsupported_checkers: tuple[str, ...] = ()
    lvs_tunnel: LvsTunnel | None = None  # its own lvs_method TUN's options (None: not TUN)
    file_checks: tuple[FileCheck, ...] = ()

    def __str__(self) -> str:
        return host_port(self.address, self.port)


@dataclass(frozen=True, slots=True)
class SorryServer:
    address: IPAddress
    port: int | None = None
    location: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class VirtualServerGroupEntry:
    """``IP [PORT]``, ``IP-RANGE [PORT]`` (first..last inclusive, one address family) or
    ``fwmark N [inet|inet6]`` (``family``: None unless given)."""

    first: IPAddress | None = None
    last: IPAddress | None = None
    port: int | None = None
    fwmark: int | None = None
    location: Location = NOWHERE
    family: int | None = None  # a fwmark's AF_INET / AF_INET6, if given

    def addresses(self) -> Iterator[IPAddress]:
        if self.first is None:
            return
        last = self.first if self.last is None else self.last
        kind = IPv6Address if self.first.version == 6 else IPv4Address
        for n in range(int(self.first), int(last) + 1):
            yield kind(n)


@dataclass(frozen=True, slots=True)
class VirtualServerGroup:
    name: str
    entries: tuple[VirtualServerGroupEntry, ...] = ()
    location: Location = NOWHERE


@dataclass(frozen=True, slots=True)
class VirtualServer:
    """One ``virtual_server`` block: exactly one of address, fwmark or group is set.

    ``family`` is its address family as keepalived settles it (AF_INET or
    AF_INET6): the address's, else ``ip_family``, else that of its first
    real or sorry server not tunnelled, else (fwmark) AF_INET; None for a
    group whose real servers are all tunnelled, whose entries then decide.
    """

    address: IPAddress | None = None
    port: int | None = None
    fwmark: int | None = None
    group: str | None = None
    location: Location = NOWHERE
    lvs_sched: str = "wlc"
    lvs_method: LvsMethod = LvsMethod.NAT
    protocol: LvsProtocol = LvsProtocol.TCP
    persistence_timeout: int | None = None  # None: not persistent
    persistence_granularity: int | None = None  # prefix length; None: per client
    ops: bool = False
    sched_flags: frozenset[str] = frozenset()  # "flag-1", "sh-port", "mh-fallback", ...
    ha_suspend: bool = False
    virtualhost: str | None = None
    sorry_server: SorryServer | None = None
    sorry_server_inhibit: bool = False
    sorry_server_lvs_method: LvsMethod | None = None
    quorum: int = 1
    quorum_up: str | None = None
    quorum_down: str | None = None
    quorum_up_user: ScriptUser | None = None  # the line's USER [GROUP]; None: script_user
    quorum_down_user: ScriptUser | None = None
    hysteresis: int = 0
    alpha: bool = False
    omega: bool = False
    inhibit_on_failure: bool = False
    options: CheckerOptions = field(default_factory=CheckerOptions)
    real_servers: tuple[RealServer, ...] = ()
    family: int | None = None
    smtp_alert: bool | None = None  # None: global smtp_alert_checker / smtp_alert (alerts.py)
    lvs_tunnel: LvsTunnel | None = None  # lvs_method TUN's options (None: not TUN)
    sorry_server_lvs_tunnel: LvsTunnel | None = None  # sorry_server_lvs_method TUN's
    persistence_engine: str | None = None  # IPVS persistence engine (``sip``)

    @property
    def name(self) -> str:
        """``IP:PORT`` (``[IPv6]:PORT``), ``IP``, ``fwmark N`` or ``group NAME``."""
        if self.group is not None:
            return f"group {self.group}"
        if self.fwmark is not None:
            return f"fwmark {self.fwmark}"
        assert self.address is not None
        return host_port(self.address, self.port)


@dataclass(frozen=True)
class Config:
    global_defs: GlobalDefs = field(default_factory=GlobalDefs)
    vrrp_scripts: tuple[VrrpScript, ...] = ()
    vrrp_instances: tuple[VrrpInstance, ...] = ()
    vrrp_sync_groups: tuple[VrrpSyncGroup, ...] = ()
    virtual_servers: tuple[VirtualServer, ...] = ()
    virtual_server_groups: tuple[VirtualServerGroup, ...] = ()
    # Set up when the VRRP half starts, removed when it stops; VRRP states leave them be.
    static_ipaddress: tuple[VirtualIP, ...] = ()
    static_routes: tuple[VirtualRoute, ...] = ()
    static_rules: tuple[VirtualRule, ...] = ()
    track_files: tuple[TrackFile, ...] = ()
    track_processes: tuple[TrackProcess, ...] = ()
    ssl: SslSettings | None = None  # the top-level SSL block

    def instance(self, name: str) -> VrrpInstance:
        for inst in self.vrrp_instances:
            if inst.name == name:
                return inst
        raise KeyError(name)

    def script(self, name: str) -> VrrpScript:
        for s in self.vrrp_scripts:
            if s.name == name:
                return s
        raise KeyError(name)

    def track_file(self, name: str) -> TrackFile:
        for t in self.track_files:
            if t.name == name:
                return t
        raise KeyError(name)

    def track_process(self, name: str) -> TrackProcess:
        for t in self.track_processes:
            if t.name == name:
                return t
        raise KeyError(name)

    def virtual_server_group(self, name: str) -> VirtualServerGroup:
        for g in self.virtual_server_groups:
            if g.name == name:
                return g
        raise KeyError(name)
