"""IPVS table model: what the kernel should hold, and how to get there.

Theory of operation: this module is pure.  It has three layers.

1. The *kernel view*: ``Service`` and ``Destination`` are frozen records of
   exactly the attributes IPVS stores for a virtual service and a real server
   (the generic-netlink ``IPVS_SVC_ATTR_*`` / ``IPVS_DEST_ATTR_*`` set).  A
   ``Table`` maps each ``ServiceKey`` to a ``ServiceEntry`` (the service plus
   its destinations by ``DestKey``).
2. The *config view*: ``VirtualServerConfig`` / ``RealServerConfig`` /
   ``SorryServerConfig`` are what a keepalived.conf ``virtual_server`` block
   means for the table (defaults are keepalived 2.2.7's).  ``plan`` turns the
   configs plus the health checkers' current verdicts into the desired
   ``Table``, tracking each virtual server's quorum with hysteresis: quorum is
   lost when the live weight drops below ``quorum - hysteresis`` (or to 0) and
   regained at ``quorum + hysteresis`` or more.  While quorum is lost and a
   sorry server is configured, the sorry server replaces the live real
   servers; ``inhibit_on_failure`` keeps a failed server at weight 0 instead
   of removing it (``sorry_server_inhibit`` does the same for the sorry server
   while it is not needed); ``alpha`` starts unchecked servers as failed.
3. The *transition*: ``diff(current, desired)`` returns the ordered operations
   that turn one table into the other: destination deletions, service
   deletions (which implicitly drop their destinations), service additions and
   edits, then destination additions and edits.  ``apply_ops`` is the pure
   reference semantics of those operations (used by tests and fakes); the
   netlink layer (``pyalived.ipvs.netlink``) executes them on the kernel.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from socket import AF_INET, AF_INET6
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Not imported at run time: pyalived.config imports this module.
    from pyalived.config.model import Location


IPAddress = IPv4Address | IPv6Address

# Schedulers known to Linux IPVS (``ip_vs_<name>.ko``).
SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos"}
)
DEFAULT_SCHEDULER = "wlc"
DEFAULT_PERSISTENCE_TIMEOUT = 360  # keepalived: bare ``persistence_timeout`` means 6 minutes

# IP_VS_SVC_F_* (include/uapi/linux/ip_vs.h)
SVC_F_PERSISTENT = 0x0001
SVC_F_HASHED = 0x0002  # set by the kernel, never by us
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008  # sh-fallback / mh-fallback
SVC_F_SCHED2 = 0x0010  # sh-port / mh-port
SVC_F_SCHED3 = 0x0020
SVC_FLAGS_MASK = SVC_F_PERSISTENT | SVC_F_ONEPACKET | SVC_F_SCHED1 | SVC_F_SCHED2 | SVC_F_SCHED3


class Protocol(enum.IntEnum):
    TCP = 6
    UDP = 17
    SCTP = 132


# IP_VS_CONN_F_TUNNEL_TYPE_* and IP_VS_TUNNEL_ENCAP_FLAG_* (Linux 5.2+ / 5.3+)
TUN_TYPE_IPIP, TUN_TYPE_GUE, TUN_TYPE_GRE = 0, 1, 2
TUN_TYPES = {"ipip": TUN_TYPE_IPIP, "gue": TUN_TYPE_GUE, "gre": TUN_TYPE_GRE}
TUN_F_NOCSUM, TUN_F_CSUM, TUN_F_REMCSUM = 0, 1, 2
TUN_FLAGS = {"nocsum": TUN_F_NOCSUM, "csum": TUN_F_CSUM, "remcsum": TUN_F_REMCSUM}
PE_NAME_MAX = 15  # IP_VS_PENAME_MAXLEN less its NUL


class Forwarding(enum.IntEnum):
    """IP_VS_CONN_F_FWD_MASK values; keepalived's ``lvs_method``."""

    NAT = 0  # masquerading
    TUN = 2
    DR = 3


def _family_of(addr: IPAddress) -> int:
    return AF_INET6 if addr.version == 6 else AF_INET


# ---- kernel view -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """How IPVS identifies a virtual service: (family, protocol, address, port) or a fwmark."""

    family: int
    protocol: int = 0  # Protocol for address services; 0 for fwmark services
    address: IPAddress | None = None
    port: int = 0
    fwmark: int = 0

    def __post_init__(self) -> None:
        if self.family not in (AF_INET, AF_INET6):
            raise ValueError(f"unsupported address family {self.family}")
        if self.fwmark:
            if self.address is not None or self.port or self.protocol:
                raise ValueError("a fwmark service has no address, port or protocol")
            if not 0 < self.fwmark < 2**32:
                raise ValueError(f"fwmark {self.fwmark} out of range")
        else:
            if self.address is None:
                raise ValueError("a service needs an address or a fwmark")
            if _family_of(self.address) != self.family:
                raise ValueError("service address does not match its family")
            if self.protocol not in tuple(Protocol):
                raise ValueError(f"unsupported protocol {self.protocol}")
            if not 0 <= self.port <= 65535:
                raise ValueError(f"port {self.port} out of range")

    @classmethod
    def inet(
        cls, address: IPAddress | str, port: int, protocol: Protocol = Protocol.TCP
    ) -> ServiceKey:
        addr = ip_address(address)
        return cls(_family_of(addr), int(protocol), addr, port)

    @classmethod
    def mark(cls, fwmark: int, family: int = AF_INET) -> ServiceKey:
        return cls(family, 0, None, 0, fwmark)

    def sort_key(self) -> tuple[int, int, int, int, int]:
        addr = int(self.address) if self.address is not None else 0
        return (self.family, self.protocol, addr, self.port, self.fwmark)

    def __str__(self) -> str:
        if self.fwmark:
            return f"FWM {self.fwmark}" + (" IPv6" if self.family == AF_INET6 else "")
        proto = Protocol(self.protocol).name
        host = f"[{self.address}]" if self.family == AF_INET6 else str(self.address)
        return f"{proto} {host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Service:
    """The editable attributes of a virtual service (IPVS_SVC_ATTR_*)."""

    key: ServiceKey
    scheduler: str = DEFAULT_SCHEDULER
    flags: int = 0  # SVC_F_* without HASHED
    timeout: int = 0  # persistence timeout, seconds (meaningful with SVC_F_PERSISTENT)
    netmask: int = 32  # persistence granularity as a prefix length (/32 or /128: per client)
    pe_name: str = ""  # persistence engine (``sip``); "": none

    def __post_init__(self) -> None:
        if len(self.pe_name) > PE_NAME_MAX:
            raise ValueError(f"persistence engine name {self.pe_name!r} too long")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown IPVS scheduler {self.scheduler!r}")
        if self.flags & ~SVC_FLAGS_MASK:
            raise ValueError(f"unsupported service flags {self.flags:#x}")
        maxlen = 128 if self.key.family == AF_INET6 else 32
        if not 0 <= self.netmask <= maxlen:
            raise ValueError(f"persistence netmask /{self.netmask} out of range")
        if self.timeout < 0:
            raise ValueError("negative persistence timeout")

    @property
    def persistent(self) -> bool:
        return bool(self.flags & SVC_F_PERSISTENT)


@dataclass(frozen=True, slots=True)
class DestKey:
    address: IPAddress
    port: int = 0

    def sort_key(self) -> tuple[int, int, int]:
        return (self.address.version, int(self.address), self.port)

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Destination:
    """The editable attributes of a real server in a service (IPVS_DEST_ATTR_*)."""

    key: DestKey
    weight: int = 1
    forwarding: Forwarding = Forwarding.NAT
    u_threshold: int = 0
    l_threshold: int = 0
    # Tunnel encapsulation (forwarding TUN only; 0 otherwise): TUN_TYPE_*, the GUE
    # UDP port, TUN_F_* checksum flags.
    tun_type: int = TUN_TYPE_IPIP
    tun_port: int = 0
    tun_flags: int = TUN_F_NOCSUM

    def __post_init__(self) -> None:
        if not 0 <= self.weight < 2**31:
            raise ValueError(f"weight {self.weight} out of range")
        if self.tun_type not in TUN_TYPES.values() or not 0 <= self.tun_port <= 65535:
            raise ValueError(f"bad tunnel settings {self.tun_type}/{self.tun_port}")
        if self.tun_flags not in TUN_FLAGS.values():
            raise ValueError(f"bad tunnel flags {self.tun_flags:#x}")
        if not (0 <= self.u_threshold < 2**32 and 0 <= self.l_threshold < 2**32):
            raise ValueError("thresholds out of range")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """IPVS connection timeouts in seconds (``lvs_timeouts``); 0 leaves one unchanged."""

    tcp: int = 0
    tcpfin: int = 0
    udp: int = 0


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    service: Service
    dests: Mapping[DestKey, Destination] = field(default_factory=dict)


Table = Mapping[ServiceKey, ServiceEntry]


def make_table(
    entries: Iterable[tuple[Service, Iterable[Destination]]],
) -> dict[ServiceKey, ServiceEntry]:
    return {s.key: ServiceEntry(s, {d.key: d for d in ds}) for s, ds in entries}


# ---- operations ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddService:
    service: Service


@dataclass(frozen=True, slots=True)
class EditService:
    service: Service


@dataclass(frozen=True, slots=True)
class DeleteService:
    key: ServiceKey


@dataclass(frozen=True, slots=True)
class AddDest:
    service: ServiceKey
    dest: Destination


@dataclass(frozen=True, slots=True)
class EditDest:
    service: ServiceKey
    dest: Destination


@dataclass(frozen=True, slots=True)
class DeleteDest:
    service: ServiceKey
    key: DestKey


Op = AddService | EditService | DeleteService | AddDest | EditDest | DeleteDest


def diff(
    current: Table, desired: Table, keys: Collection[ServiceKey] | None = None
) -> list[Op]:
    """Ordered operations turning ``current`` into ``desired``.

    Deleting a service drops its destinations in the kernel, so no per-dest
    deletions are emitted for it.  Dest deletions come first (free
    capacity before adding), services before their destinations.  With
    ``keys``, only those services are compared (the others are taken to be
    equal): the cost is that of the services named, not of the whole table.
    """
    dest_dels: list[Op] = []
    svc_dels: list[Op] = []
    svc_sets: list[Op] = []
    dest_sets: list[Op] = []
    if keys is None:
        gone: Iterable[ServiceKey] = current
        wanted: Iterable[ServiceKey] = desired
    else:
        gone = [k for k in keys if k in current]
        wanted = [k for k in keys if k in desired]
    for skey in sorted(gone, key=ServiceKey.sort_key):
        if skey not in desired:
            svc_dels.append(DeleteService(skey))
    for skey in sorted(wanted, key=ServiceKey.sort_key):
        want = desired[skey]
        have = current.get(skey)
        if have is None:
            svc_sets.append(AddService(want.service))
            have_dests: Mapping[DestKey, Destination] = {}
        else:
            if have is want:
                continue
            if have.service != want.service:
                svc_sets.append(EditService(want.service))
            have_dests = have.dests
            for dkey in sorted(have_dests, key=DestKey.sort_key):
                if dkey not in want.dests:
                    dest_dels.append(DeleteDest(skey, dkey))
        for dkey in sorted(want.dests, key=DestKey.sort_key):
            d = want.dests[dkey]
            old = have_dests.get(dkey)
            if old is None:
                dest_sets.append(AddDest(skey, d))
            elif old != d:
                dest_sets.append(EditDest(skey, d))
    return dest_dels + svc_dels + svc_sets + dest_sets


class OpError(Exception):
    """An operation does not fit the table (the kernel would say EEXIST/ENOENT/ESRCH)."""


def apply_ops(
    table: Table, ops: Iterable[Op], *, lenient: bool = False
) -> dict[ServiceKey, ServiceEntry]:
    """Pure reference semantics of ``ops``; raises ``OpError`` like the kernel would.

    With ``lenient`` an operation that does not fit is skipped instead.  The
    cost is that of the operations plus one shallow copy of the table: only
    the services they touch are copied.
    """
    out: dict[ServiceKey, ServiceEntry] = dict(table)
    touched: dict[ServiceKey, tuple[Service, dict[DestKey, Destination]]] = {}

    def dests_of(key: ServiceKey) -> dict[DestKey, Destination]:
        t = touched.get(key)
        if t is None:
            entry = out[key]
            t = touched[key] = (entry.service, dict(entry.dests))
        return t[1]

    for op in ops:
        try:
            if isinstance(op, AddService):
                key = op.service.key
                if key in out:
                    raise OpError(f"service {key} exists")
                out[key] = ServiceEntry(op.service)
                touched[key] = (op.service, {})
            elif isinstance(op, EditService):
                key = op.service.key
                if key not in out:
                    raise OpError(f"no service {key}")
                touched[key] = (op.service, dests_of(key))
            elif isinstance(op, DeleteService):
                if op.key not in out:
                    raise OpError(f"no service {op.key}")
                del out[op.key]
                touched.pop(op.key, None)
            else:
                if op.service not in out:
                    raise OpError(f"no service {op.service}")
                dests = dests_of(op.service)
                if isinstance(op, AddDest):
                    if op.dest.key in dests:
                        raise OpError(f"dest {op.dest.key} exists in {op.service}")
                    dests[op.dest.key] = op.dest
                elif isinstance(op, EditDest):
                    if op.dest.key not in dests:
                        raise OpError(f"no dest {op.dest.key} in {op.service}")
                    dests[op.dest.key] = op.dest
                else:
                    if op.key not in dests:
                        raise OpError(f"no dest {op.key} in {op.service}")
                    del dests[op.key]
        except OpError:
            if not lenient:
                raise
    for key, (service, dests) in touched.items():
        out[key] = ServiceEntry(service, dests)
    return out


def restrict(table: Table, owned: Table) -> dict[ServiceKey, ServiceEntry]:
    """The part of ``table`` whose services and dests also appear in ``owned``."""
    out: dict[ServiceKey, ServiceEntry] = {}
    for skey, entry in table.items():
        mine = owned.get(skey)
        if mine is not None:
            dests = {k: d for k, d in entry.dests.items() if k in mine.dests}
            out[skey] = ServiceEntry(entry.service, dests)
    return out


def union(a: Table, b: Table) -> dict[ServiceKey, ServiceEntry]:
    """Every service and dest of ``a`` and of ``b`` (``b``'s attributes win)."""
    out = dict(a)
    for k, e in b.items():
        if k in out:
            out[k] = ServiceEntry(out[k].service, {**out[k].dests, **e.dests})
        else:
            out[k] = e
    return out


def apply_except(
    table: Table, ops: Sequence[Op], failed: Collection[Op]
) -> dict[ServiceKey, ServiceEntry]:
    """``table`` after ``ops`` minus the ``failed`` ones (told apart by identity), as
    the kernel holds it after a batch some of whose operations it refused."""
    ids = {id(op) for op in failed}
    done = [op for op in ops if id(op) not in ids] if ids else ops
    return apply_ops(table, done, lenient=True)


# ---- config view -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tunnel:
    """``lvs_method TUN [type ipip|gue port N|gre] [nocsum|csum|remcsum]``."""

    type: int = TUN_TYPE_IPIP
    port: int = 0  # GUE only
    flags: int = TUN_F_NOCSUM

    def __str__(self) -> str:
        names = {v: k for k, v in TUN_TYPES.items()}
        flags = {v: k for k, v in TUN_FLAGS.items()}
        port = f" port {self.port}" if self.type == TUN_TYPE_GUE else ""
        return f"type {names[self.type]}{port} {flags[self.flags]}"


NO_TUNNEL = Tunnel()


@dataclass(frozen=True, slots=True)
class RealServerConfig:
    """One ``real_server`` block (the parts that shape the IPVS table)."""

    address: IPAddress
    port: int = 0
    weight: int = 1
    forwarding: Forwarding | None = None  # None: the virtual server's lvs_method
    inhibit_on_failure: bool | None = None  # None: the virtual server's setting
    u_threshold: int = 0
    l_threshold: int = 0
    checked: bool = True  # False: no checkers, so always alive (even with alpha)
    location: Location | None = None  # where the config declared it
    tunnel: Tunnel | None = None  # with its own lvs_method TUN; None: the virtual server's

    @property
    def key(self) -> DestKey:
        return DestKey(self.address, self.port)


@dataclass(frozen=True, slots=True)
class SorryServerConfig:
    address: IPAddress
    port: int = 0
    forwarding: Forwarding | None = None  # sorry_server_lvs_method; None: the VS's
    location: Location | None = None  # where the config declared it
    tunnel: Tunnel | None = None  # sorry_server_lvs_method TUN's; None: the VS's

    @property
    def key(self) -> DestKey:
        return DestKey(self.address, self.port)


@dataclass(frozen=True, slots=True)
class VirtualServerConfig:
    """One ``virtual_server`` block (address/port/protocol or fwmark)."""

    key: ServiceKey
    scheduler: str = DEFAULT_SCHEDULER  # lvs_sched / lb_algo
    forwarding: Forwarding = Forwarding.NAT  # lvs_method / lb_kind
    persistence_timeout: int | None = None  # None: not persistent
    persistence_granularity: int | None = None  # prefix length; None: per client address
    ops: bool = False
    sched_flags: int = 0  # SVC_F_SCHED1|2|3 (flag-1/2/3, sh-/mh-fallback, sh-/mh-port)
    quorum: int = 1
    hysteresis: int = 0
    sorry_server: SorryServerConfig | None = None
    sorry_server_inhibit: bool = False
    inhibit_on_failure: bool = False
    alpha: bool = False
    omega: bool = False
    quorum_up: str | None = None
    quorum_down: str | None = None
    real_servers: tuple[RealServerConfig, ...] = ()
    location: Location | None = None  # where the config declared it
    tunnel: Tunnel = NO_TUNNEL  # lvs_method TUN's options
    persistence_engine: str | None = None

    def service(self) -> Service:
        flags = self.sched_flags | (SVC_F_ONEPACKET if self.ops else 0)
        timeout = 0
        full = 128 if self.key.family == AF_INET6 else 32
        netmask = full
        if self.persistence_timeout is not None:
            flags |= SVC_F_PERSISTENT
            timeout = self.persistence_timeout
            if self.persistence_granularity is not None:
                netmask = self.persistence_granularity
        return Service(self.key, self.scheduler, flags, timeout, netmask,
                       self.persistence_engine or "")


def _destination(
    key: DestKey, weight: int, fwd: Forwarding, tunnel: Tunnel, u: int = 0, low: int = 0
) -> Destination:
    if fwd is not Forwarding.TUN:
        return Destination(key, weight, fwd, u, low)
    return Destination(key, weight, fwd, u, low, tunnel.type, tunnel.port, tunnel.flags)


@dataclass(frozen=True, slots=True)
class QuorumChange:
    """A virtual server gained (up=True) or lost quorum; callers run quorum_up/down."""

    service: ServiceKey
    up: bool
    weight: int  # live weight at the transition


@dataclass(frozen=True, slots=True)
class Plan:
    table: dict[ServiceKey, ServiceEntry]
    quorum: dict[ServiceKey, bool]  # feed back into the next ``plan`` call
    changes: tuple[QuorumChange, ...] = ()


def is_alive(
    vs: VirtualServerConfig, rs: RealServerConfig, verdicts: Mapping[DestKey, bool]
) -> bool:
    """A real server's health: its checkers' verdict, else the startup assumption."""
    if not rs.checked:
        return True
    v = verdicts.get(rs.key)
    return (not vs.alpha) if v is None else v


def current_weight(rs: RealServerConfig, weights: Mapping[DestKey, int] | None) -> int:
    """A real server's weight: as set by its checkers (misc_dynamic), else as configured."""
    if weights is None:
        return rs.weight
    return weights.get(rs.key, rs.weight)


def live_weight(
    vs: VirtualServerConfig,
    verdicts: Mapping[DestKey, bool],
    weights: Mapping[DestKey, int] | None = None,
) -> int:
    return sum(
        current_weight(rs, weights) for rs in vs.real_servers if is_alive(vs, rs, verdicts)
    )


def next_quorum(vs: VirtualServerConfig, weight: int, was_up: bool) -> bool:
    """Quorum state after seeing ``weight`` live weight, with hysteresis."""
    if was_up:
        return not (weight == 0 or weight < vs.quorum - vs.hysteresis)
    return weight >= vs.quorum + vs.hysteresis and weight > 0


def plan_service(
    vs: VirtualServerConfig,
    verdicts: Mapping[DestKey, bool],
    quorum_up: bool,
    weights: Mapping[DestKey, int] | None = None,
) -> ServiceEntry:
    """Desired service entry for one virtual server given its quorum state.

    ``weights`` overrides configured weights (misc_dynamic checkers).
    """
    dests: dict[DestKey, Destination] = {}
    sorry_active = vs.sorry_server is not None and not quorum_up
    for rs in vs.real_servers:
        fwd = rs.forwarding if rs.forwarding is not None else vs.forwarding
        inhibit = vs.inhibit_on_failure if rs.inhibit_on_failure is None else rs.inhibit_on_failure
        tun = rs.tunnel if rs.tunnel is not None else vs.tunnel
        d = _destination(
            rs.key, current_weight(rs, weights), fwd, tun, rs.u_threshold, rs.l_threshold
        )
        if is_alive(vs, rs, verdicts) and not sorry_active:
            dests[rs.key] = d
        elif inhibit:
            dests[rs.key] = replace(d, weight=0)
    s = vs.sorry_server
    if s is not None:
        fwd = s.forwarding if s.forwarding is not None else vs.forwarding
        sd = _destination(s.key, 1, fwd, s.tunnel if s.tunnel is not None else vs.tunnel)
        if sorry_active:
            dests[s.key] = sd  # replaces a same-address real server entry
        elif vs.sorry_server_inhibit and s.key not in dests:
            dests[s.key] = replace(sd, weight=0)
    return ServiceEntry(vs.service(), dests)


def plan(
    virtual_servers: Sequence[VirtualServerConfig],
    verdicts: Mapping[ServiceKey, Mapping[DestKey, bool]],
    quorum: Mapping[ServiceKey, bool] | None = None,
    weights: Mapping[ServiceKey, Mapping[DestKey, int]] | None = None,
) -> Plan:
    """The desired table for ``virtual_servers`` given the checkers' verdicts.

    ``verdicts`` holds, per service, the checkers' verdict per real server
    (missing: not yet checked).  ``quorum`` is the previous ``Plan.quorum`` (None at startup: every
    service starts with quorum and loses it at once if the live weight is too
    low, as keepalived does).  ``weights`` holds, per service, the weights the
    checkers set (misc_dynamic); missing real servers keep their configured
    weight, which also counts for the quorum.
    """
    prev = quorum or {}
    table: dict[ServiceKey, ServiceEntry] = {}
    states: dict[ServiceKey, bool] = {}
    changes: list[QuorumChange] = []
    for vs in virtual_servers:
        v = verdicts.get(vs.key, {})
        dyn = weights.get(vs.key) if weights is not None else None
        w = live_weight(vs, v, dyn)
        was = prev.get(vs.key, True)
        up = next_quorum(vs, w, was)
        if up != was:
            changes.append(QuorumChange(vs.key, up, w))
        states[vs.key] = up
        table[vs.key] = plan_service(vs, v, up, dyn)
    return Plan(table, states, tuple(changes))
