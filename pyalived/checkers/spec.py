"""Frozen specifications of the LVS health checkers.

Theory of operation: a keepalived ``virtual_server`` block lists
``real_server`` blocks, each with zero or more checkers (``TCP_CHECK``,
``HTTP_GET``, ``SSL_GET``, ``MISC_CHECK``, ``DNS_CHECK``, ``UDP_CHECK``,
``PING_CHECK``, ``SMTP_CHECK``).  The config parser resolves the
inheritance of the generic options (virtual server -> real server -> checker)
and builds these dataclasses; everything downstream (the pure policy in
``pyalived.checkers.policy``, the probes in ``pyalived.checkers.probes`` and the
scheduler) only reads them.  Defaults are keepalived 2.2.7's: ``delay_loop``
60 s, ``connect_timeout`` 5 s, ``retry`` 1 (0 for MISC_CHECK),
``delay_before_retry`` 3 s for HTTP_GET/SSL_GET, ``delay_loop`` for DNS_CHECK
and 1 s otherwise (DNS_CHECK's ``retry`` is 3), ``warmup``
up to ``delay_loop``, ``status_code`` 200-299, HTTP/1.0 requests, no TLS
certificate verification, no ``regex``, no ``fast_recovery``, no
``fwmark`` or ``bind_if``.  Fields left ``None`` mean "the checker type's
default" and are resolved by the ``effective_*`` properties.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar

IPAddress = IPv4Address | IPv6Address

DEFAULT_DELAY_LOOP = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_HELO_NAME = "smtpchecker.keepalived.org"


@dataclass(frozen=True, slots=True)
class Timing:
    """The generic scheduling options every checker has."""

    delay_loop: float = DEFAULT_DELAY_LOOP
    retry: int | None = None  # None: the checker type's default
    delay_before_retry: float | None = None  # None: the checker type's default
    warmup: float | None = None  # None: up to delay_loop; 0: no initial random delay
    alpha: bool = False  # start DOWN until the first successful check
    log_all_failures: bool = False  # log each failed check while UP, not only the last

    @property
    def effective_warmup(self) -> float:
        return self.delay_loop if self.warmup is None else self.warmup


@dataclass(frozen=True, slots=True)
class StatusRange:
    """One ``status_code`` item: a single code (lo == hi) or an inclusive range."""

    lo: int
    hi: int

    def __contains__(self, code: object) -> bool:
        return isinstance(code, int) and self.lo <= code <= self.hi


DEFAULT_STATUS = (StatusRange(200, 299),)


@dataclass(frozen=True, slots=True)
class UrlSpec:
    path: str
    status_code: tuple[StatusRange, ...] = DEFAULT_STATUS
    digest: str | None = None  # lower-case hex MD5 of the body, as printed by genhash
    virtualhost: str | None = None  # overrides the checker's virtualhost
    regex: str | None = None  # searched for in the body (pyalived.checkers.bodymatch)
    regex_no_match: bool = False  # the check fails when the regex matches
    regex_options: tuple[str, ...] = ()  # keepalived's PCRE2 option names
    regex_min_offset: int = 0  # first body offset a match may start at
    regex_max_offset: int | None = None  # last body offset a match may start at

    def status_ok(self, code: int) -> bool:
        return any(code in r for r in self.status_code)


class _Retrying:
    """keepalived's per-checker-type defaults for retry and delay_before_retry."""

    __slots__ = ()

    timing: Timing
    default_retry: ClassVar[int]
    default_delay_before_retry: ClassVar[float]

    @property
    def effective_retry(self) -> int:
        return self.default_retry if self.timing.retry is None else self.timing.retry

    @property
    def effective_delay_before_retry(self) -> float:
        t = self.timing.delay_before_retry
        return self.default_delay_before_retry if t is None else t


@dataclass(frozen=True, slots=True)
class _Connection:
    connect_ip: IPAddress | None = None  # None: the real server's address
    connect_port: int | None = None  # None: the real server's port
    bindto: IPAddress | None = None
    bind_port: int | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    bind_if: str | None = None  # SO_BINDTODEVICE: the interface the checks leave by
    fwmark: int | None = None  # SO_MARK: the mark of every packet the checks send


@dataclass(frozen=True, slots=True, weakref_slot=True)
class TcpCheck(_Connection, _Retrying):
    timing: Timing = field(default_factory=Timing)

    kind = "TCP_CHECK"

    default_retry: ClassVar[int] = 1
    default_delay_before_retry: ClassVar[float] = 1.0


@dataclass(frozen=True, slots=True, weakref_slot=True)
class HttpGet(_Connection, _Retrying):
    urls: tuple[UrlSpec, ...] = ()
    virtualhost: str | None = None  # Host header; None: "IP:PORT" of the connection
    http_protocol: str = "1.0"  # "1.0", "1.0C" (adds Connection: close) or "1.1"
    timing: Timing = field(default_factory=Timing)
    fast_recovery: bool = False  # while not up, each URL right after the last

    kind = "HTTP_GET"

    default_retry: ClassVar[int] = 1
    default_delay_before_retry: ClassVar[float] = 3.0


@dataclass(frozen=True, slots=True)
class SslGet(HttpGet):
    enable_sni: bool = False  # send the virtualhost as TLS server name
    verify: bool = False  # keepalived does not verify the server certificate
    ca_file: str | None = None  # trust anchors when verify is set

    kind = "SSL_GET"


@dataclass(frozen=True, slots=True, weakref_slot=True)
class MiscCheck(_Retrying):
    misc_path: str  # command line; split like a shell would, but run without one
    misc_timeout: float | None = None  # None: delay_loop
    misc_dynamic: bool = False
    user: str | None = None
    group: str | None = None
    timing: Timing = field(default_factory=Timing)

    kind = "MISC_CHECK"

    default_retry: ClassVar[int] = 0
    default_delay_before_retry: ClassVar[float] = 1.0

    @property
    def effective_timeout(self) -> float:
        return self.timing.delay_loop if self.misc_timeout is None else self.misc_timeout


@dataclass(frozen=True, slots=True, weakref_slot=True)
class DnsCheck(_Connection, _Retrying):
    """DNS_CHECK: one query over UDP; success is a reply with RCODE NOERROR."""

    type: str = "SOA"  # A, NS, CNAME, SOA, MX, TXT or AAAA
    name: str = "."
    timing: Timing = field(default_factory=Timing)

    kind = "DNS_CHECK"
    default_port: ClassVar[int] = 53  # when neither connect_port nor the real server has one

    default_retry: ClassVar[int] = 3

    @property
    def effective_delay_before_retry(self) -> float:
        t = self.timing.delay_before_retry
        return self.timing.delay_loop if t is None else t


@dataclass(frozen=True, slots=True, weakref_slot=True)
class UdpCheck(_Connection, _Retrying):
    """UDP_CHECK: send ``payload`` (random bytes if None) to a connected UDP socket.

    Failure is an ICMP error (port, host or network unreachable) within
    ``connect_timeout``; without ``require_reply`` silence is success.  With
    it a reply must come, of ``min_reply_length``..``max_reply_length`` bytes,
    and if ``reply`` is set its bytes must match it (``reply_mask`` marks the
    bits that count) up to the shorter of the two.
    """

    payload: bytes | None = None
    require_reply: bool = False
    reply: bytes | None = None
    reply_mask: bytes | None = None
    min_reply_length: int = 0
    max_reply_length: int = 255
    timing: Timing = field(default_factory=Timing)

    kind = "UDP_CHECK"

    default_retry: ClassVar[int] = 1
    default_delay_before_retry: ClassVar[float] = 1.0


@dataclass(frozen=True, slots=True, weakref_slot=True)
class PingCheck(_Connection, _Retrying):
    """PING_CHECK: one ICMP (or ICMPv6) echo request; success is the echo reply."""

    timing: Timing = field(default_factory=Timing)

    kind = "PING_CHECK"

    default_retry: ClassVar[int] = 1
    default_delay_before_retry: ClassVar[float] = 1.0


@dataclass(frozen=True, slots=True, weakref_slot=True)
class SmtpCheck(_Connection, _Retrying):
    """SMTP_CHECK on one host: a 220 greeting, 250 to HELO ``helo_name``, then QUIT."""

    helo_name: str = DEFAULT_HELO_NAME
    timing: Timing = field(default_factory=Timing)

    kind = "SMTP_CHECK"
    default_port: ClassVar[int] = 25  # when neither connect_port nor the real server has one

    default_retry: ClassVar[int] = 1
    default_delay_before_retry: ClassVar[float] = 1.0


@dataclass(frozen=True, slots=True, weakref_slot=True)
class FailedCheck(_Retrying):
    """Stands for a checker pyalived cannot run (BFD_CHECK, FILE_CHECK) on a real server that
    has no other checker: it never succeeds, so the server is never counted as up."""

    what: str  # "BFD_CHECK at FILE:LINE"
    timing: Timing = field(default_factory=lambda: Timing(warmup=0.0, alpha=True))

    kind = "UNSUPPORTED"

    default_retry: ClassVar[int] = 0
    default_delay_before_retry: ClassVar[float] = 1.0


CheckerSpec = (
    TcpCheck | HttpGet | SslGet | MiscCheck | DnsCheck | UdpCheck | PingCheck | SmtpCheck
    | FailedCheck
)


@dataclass(frozen=True, slots=True)
class RealServerSpec:
    ip: IPAddress
    port: int | None  # None: fwmark services without a port
    weight: int = 1
    checkers: tuple[CheckerSpec, ...] = ()

    def __str__(self) -> str:
        host = f"[{self.ip}]" if isinstance(self.ip, IPv6Address) else str(self.ip)
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class VirtualServerSpec:
    name: str  # "IP:PORT", "fwmark N" or "group NAME": used in logs and events
    real_servers: tuple[RealServerSpec, ...] = ()
    omega: bool = False  # on shutdown report every real server DOWN

    def __str__(self) -> str:
        return self.name


def checker_label(spec: CheckerSpec, index: int) -> str:
    """A short, stable name for the index-th checker of a real server."""
    return f"{spec.kind}#{index}"
