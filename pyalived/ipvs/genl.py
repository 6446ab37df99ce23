"""Byte codec for the IPVS generic-netlink protocol.

Theory of operation: pure functions between ``pyalived.ipvs.model`` records
and netlink message bytes.  Requests are encoded directly with ``struct``
(the hot path: programming ten thousand entries must not cost more than the
kernel work itself); the layout is the one ``include/uapi/linux/ip_vs.h``
defines and the unit tests check every encoded message against pyroute2's
decoder.  Dump replies (services and destinations, with their connection
counts and traffic statistics) are decoded with ``struct`` too: reading back
a table of ten thousand destinations is the metrics' and the resync's hot
path; the unit tests check every decoded field against pyroute2's decoder
on the same bytes.  Only the rare family-lookup and error-text replies still
go through pyroute2's message classes.  A request message is: ``nlmsghdr``
(16 bytes), ``genlmsghdr`` (4 bytes), then nested attributes
``IPVS_CMD_ATTR_SERVICE`` (the service key, or the full service for
NEW/SET_SERVICE) and ``IPVS_CMD_ATTR_DEST``.  The
kernel requires the full attribute set (scheduler, flags, timeout, netmask;
forwarding method, weight, thresholds) for NEW and SET commands and only the
key otherwise.  IPv4 persistence netmasks travel as a network-order mask,
IPv6 ones as a prefix length.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from socket import AF_INET, AF_INET6

from pyroute2.netlink import ctrlmsg, nlmsgerr

from pyalived.ipvs.model import (
    SVC_FLAGS_MASK,
    AddDest,
    AddService,
    DeleteService,
    Destination,
    DestKey,
    EditDest,
    EditService,
    Forwarding,
    Op,
    Service,
    ServiceKey,
)

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300  # ROOT | MATCH
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_NAME = 2
GENL_NAME = "IPVS"
GENL_VERSION = 1

CMD_NEW_SERVICE = 1
CMD_SET_SERVICE = 2
CMD_DEL_SERVICE = 3
CMD_GET_SERVICE = 4
CMD_NEW_DEST = 5
CMD_SET_DEST = 6
CMD_DEL_DEST = 7
CMD_GET_DEST = 8
CMD_FLUSH = 17

ATTR_SERVICE = 1
ATTR_DEST = 2

SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK = 6, 7, 8, 9
DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT = 1, 2, 3, 4
DEST_U_THRESH, DEST_L_THRESH, DEST_ADDR_FAMILY = 5, 6, 11

_HDR = struct.Struct("=IHHII")
_GENL = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")


def _nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _NLA.pack(n, kind) + payload + b"\0" * (-n & 3)


def _addr_bytes(addr: IPv4Address | IPv6Address) -> bytes:
    return addr.packed


def encode_service_key(key: ServiceKey) -> bytes:
    out = _nla(SVC_AF, _U16.pack(key.family))
    if key.fwmark:
        return out + _nla(SVC_FWMARK, _U32.pack(key.fwmark))
    assert key.address is not None
    return (
        out
        + _nla(SVC_PROTOCOL, _U16.pack(key.protocol))
        + _nla(SVC_ADDR, _addr_bytes(key.address))
        + _nla(SVC_PORT, _BE16.pack(key.port))
    )


def _netmask(svc: Service) -> bytes:
    if svc.key.family == AF_INET6:
        return _U32.pack(svc.netmask)
    return struct.pack("!I", (0xFFFFFFFF << (32 - svc.netmask)) & 0xFFFFFFFF)


def encode_service(svc: Service) -> bytes:
    return (
        encode_service_key(svc.key)
        + _nla(SVC_SCHED_NAME, svc.scheduler.encode() + b"\0")
        + _nla(SVC_FLAGS, struct.pack("=II", svc.flags, SVC_FLAGS_MASK))
        + _nla(SVC_TIMEOUT, _U32.pack(svc.timeout))
        + _nla(SVC_NETMASK, _netmask(svc))
    )


def encode_dest_key(key: DestKey) -> bytes:
    return _nla(DEST_ADDR, _addr_bytes(key.address)) + _nla(DEST_PORT, _BE16.pack(key.port))


def encode_dest(d: Destination) -> bytes:
    fam = AF_INET6 if d.key.address.version == 6 else AF_INET
    return (
        encode_dest_key(d.key)
        + _nla(DEST_FWD_METHOD, _U32.pack(int(d.forwarding)))
        + _nla(DEST_WEIGHT, _U32.pack(d.weight))
        + _nla(DEST_U_THRESH, _U32.pack(d.u_threshold))
        + _nla(DEST_L_THRESH, _U32.pack(d.l_threshold))
        + _nla(DEST_ADDR_FAMILY, _U16.pack(fam))
    )


def message(family_id: int, cmd: int, attrs: bytes, seq: int, flags: int = NLM_F_REQUEST) -> bytes:
    n = _HDR.size + _GENL.size + len(attrs)
    return _HDR.pack(n, family_id, flags, seq, 0) + _GENL.pack(cmd, GENL_VERSION, 0) + attrs


def op_payload(op: Op) -> tuple[int, bytes]:
    """The command and the attribute bytes carrying ``op``."""
    if isinstance(op, AddService):
        return CMD_NEW_SERVICE, _nla(ATTR_SERVICE, encode_service(op.service))
    if isinstance(op, EditService):
        return CMD_SET_SERVICE, _nla(ATTR_SERVICE, encode_service(op.service))
    if isinstance(op, DeleteService):
        return CMD_DEL_SERVICE, _nla(ATTR_SERVICE, encode_service_key(op.key))
    svc = _nla(ATTR_SERVICE, encode_service_key(op.service))
    if isinstance(op, AddDest):
        return CMD_NEW_DEST, svc + _nla(ATTR_DEST, encode_dest(op.dest))
    if isinstance(op, EditDest):
        return CMD_SET_DEST, svc + _nla(ATTR_DEST, encode_dest(op.dest))
    return CMD_DEL_DEST, svc + _nla(ATTR_DEST, encode_dest_key(op.key))


def encode_op(family_id: int, op: Op, seq: int, flags: int = NLM_F_REQUEST) -> bytes:
    cmd, attrs = op_payload(op)
    return message(family_id, cmd, attrs, seq, flags)


def get_family_request(seq: int, name: str = GENL_NAME) -> bytes:
    attrs = _nla(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
    n = _HDR.size + _GENL.size + len(attrs)
    return (
        _HDR.pack(n, GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
        + _GENL.pack(CTRL_CMD_GETFAMILY, 1, 0)
        + attrs
    )


def dump_services_request(family_id: int, seq: int) -> bytes:
    return message(family_id, CMD_GET_SERVICE, b"", seq, NLM_F_REQUEST | NLM_F_DUMP)


def dump_dests_request(family_id: int, key: ServiceKey, seq: int) -> bytes:
    attrs = _nla(ATTR_SERVICE, encode_service_key(key))
    return message(family_id, CMD_GET_DEST, attrs, seq, NLM_F_REQUEST | NLM_F_DUMP)


# ---- replies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One netlink message of a reply stream."""

    type: int
    flags: int
    seq: int
    data: bytes  # the whole message, header included

    @property
    def error(self) -> int:
        """For NLMSG_ERROR: 0 (ack) or a positive errno."""
        (code,) = struct.unpack_from("=i", self.data, 16)
        return -int(code)


def split(buf: bytes) -> Iterator[Reply]:
    off = 0
    while off + _HDR.size <= len(buf):
        n, kind, flags, seq, _pid = _HDR.unpack_from(buf, off)
        if n < _HDR.size:
            break
        yield Reply(kind, flags, seq, buf[off : off + n])
        off += (n + 3) & ~3


def decode_family_id(reply: Reply) -> int:
    msg = ctrlmsg(reply.data)
    msg.decode()
    return int(msg.get_attr("CTRL_ATTR_FAMILY_ID"))


def decode_error_text(reply: Reply) -> str | None:
    """The extended-ack message of an error reply, if the kernel sent one."""
    msg = nlmsgerr(reply.data)
    try:
        msg.decode()
        text = msg.get_attr("NLMSGERR_ATTR_MSG")
    except Exception:
        return None
    return str(text) if text else None


# ---- dump replies (struct-decoded) ---------------------------------------------------
#
# Layouts as include/uapi/linux/ip_vs.h and net/netfilter/ipvs/ip_vs_ctl.c
# (ip_vs_genl_fill_service / _fill_dest / _fill_stats) produce them: addresses
# travel as a 16-byte ``union nf_inet_addr`` (an IPv4 address in its first 4
# bytes), ports in network order, everything else in host order.  The nests
# may carry NLA_F_NESTED; unknown attributes (PE name, tunnel settings,
# alignment pads) are skipped, so newer kernels decode too.

NLA_TYPE_MASK = 0x3FFF
SVC_STATS, SVC_PE_NAME, SVC_STATS64 = 10, 11, 12
DEST_ACTIVE_CONNS, DEST_INACT_CONNS, DEST_PERSIST_CONNS = 7, 8, 9
DEST_STATS, DEST_STATS64 = 10, 12
STATS_FIELDS = (
    "conns", "inpkts", "outpkts", "inbytes", "outbytes", "cps", "inpps", "outpps", "inbps",
    "outbps",
)  # IPVS_STATS_ATTR_CONNS (1) .. IPVS_STATS_ATTR_OUTBPS (10), in order


@dataclass(frozen=True)
class Stats:
    """IPVS traffic statistics of a service or a destination.

    ``conns``/``inpkts``/``outpkts``/``inbytes``/``outbytes`` are counters
    since the entry was created; the rest are the kernel's estimated rates
    (per second, over a few seconds).
    """

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


@dataclass(frozen=True)
class DestInfo:
    """A destination as dumped: its attributes, connection counts and statistics."""

    dest: Destination
    active_conns: int = 0
    inactive_conns: int = 0
    persist_conns: int = 0
    stats: Stats = Stats()


@dataclass(frozen=True)
class ServiceInfo:
    """A service as dumped: its attributes and statistics (destinations come separately)."""

    service: Service
    stats: Stats = Stats()


def _parse(buf: bytes, off: int = 0) -> dict[int, bytes]:
    """The attributes of ``buf[off:]`` by type (the last one wins)."""
    out: dict[int, bytes] = {}
    end = len(buf)
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        n, kind = unpack(buf, off)
        if n < 4 or off + n > end:
            raise ValueError(f"malformed netlink attribute at offset {off}")
        out[kind & NLA_TYPE_MASK] = buf[off + 4 : off + n]
        off += (n + 3) & ~3
    return out


def _nest(reply: Reply, kind: int) -> dict[int, bytes]:
    (n,) = _U32.unpack_from(reply.data, 0)
    top = _parse(reply.data[:n], _HDR.size + _GENL.size)
    try:
        return _parse(top[kind])
    except KeyError:
        raise ValueError(f"IPVS reply without attribute {kind}") from None


def _uint(raw: bytes) -> int:
    return int.from_bytes(raw, sys.byteorder)


def _address(raw: bytes, family: int) -> IPv4Address | IPv6Address:
    if family == AF_INET6:
        return IPv6Address(raw[:16])
    return IPv4Address(raw[:4])


def decode_stats(raw: bytes | None) -> Stats:
    """A ``IPVS_*_ATTR_STATS`` or ``_STATS64`` nest (4- or 8-byte values alike)."""
    if raw is None:
        return Stats()
    a = _parse(raw)
    return Stats(*(_uint(a.get(i, b"")) for i in range(1, len(STATS_FIELDS) + 1)))


def _key(a: dict[int, bytes]) -> ServiceKey:
    family = _uint(a[SVC_AF])
    fwmark = _uint(a.get(SVC_FWMARK, b""))
    if fwmark:
        return ServiceKey(family, 0, None, 0, fwmark)
    return ServiceKey(
        family,
        _uint(a[SVC_PROTOCOL]),
        _address(a[SVC_ADDR], family),
        _BE16.unpack(a[SVC_PORT])[0],
    )


def decode_service_key(reply: Reply) -> ServiceKey:
    return _key(_nest(reply, ATTR_SERVICE))


def decode_service_info(reply: Reply) -> ServiceInfo:
    a = _nest(reply, ATTR_SERVICE)
    key = _key(a)
    flags = _U32.unpack_from(a[SVC_FLAGS])[0] & SVC_FLAGS_MASK
    raw_mask = a[SVC_NETMASK]
    if key.family == AF_INET6:
        netmask = _U32.unpack(raw_mask)[0]  # a prefix length
    else:
        netmask = int.from_bytes(raw_mask, "big").bit_count()  # a network-order mask
    svc = Service(
        key,
        a[SVC_SCHED_NAME].split(b"\0", 1)[0].decode(),
        flags,
        _U32.unpack(a[SVC_TIMEOUT])[0],
        netmask,
    )
    return ServiceInfo(svc, decode_stats(a.get(SVC_STATS64, a.get(SVC_STATS))))


def decode_service(reply: Reply) -> Service:
    return decode_service_info(reply).service


def decode_dest_info(reply: Reply, family: int | None = None) -> DestInfo:
    """A destination reply; ``family`` (the service's) serves kernels that omit it."""
    a = _nest(reply, ATTR_DEST)
    raw = a[DEST_ADDR]
    if DEST_ADDR_FAMILY in a:
        fam = _uint(a[DEST_ADDR_FAMILY])
    elif len(raw) == 4:
        fam = AF_INET
    else:
        fam = family if family is not None else AF_INET6
    u32 = _U32.unpack
    dest = Destination(
        DestKey(_address(raw, fam), _BE16.unpack(a[DEST_PORT])[0]),
        u32(a[DEST_WEIGHT])[0],
        Forwarding(u32(a[DEST_FWD_METHOD])[0] & 0x7),
        u32(a[DEST_U_THRESH])[0],
        u32(a[DEST_L_THRESH])[0],
    )
    return DestInfo(
        dest,
        _uint(a.get(DEST_ACTIVE_CONNS, b"")),
        _uint(a.get(DEST_INACT_CONNS, b"")),
        _uint(a.get(DEST_PERSIST_CONNS, b"")),
        decode_stats(a.get(DEST_STATS64, a.get(DEST_STATS))),
    )


def decode_dest(reply: Reply) -> Destination:
    return decode_dest_info(reply).dest


# ---- the connection-synchronisation daemons -------------------------------------------
#
# IPVS_CMD_NEW_DAEMON / _DEL_DAEMON / _GET_DAEMON carry one IPVS_CMD_ATTR_DAEMON nest
# (include/uapi/linux/ip_vs.h, net/netfilter/ipvs/ip_vs_ctl.c ip_vs_genl_new_daemon /
# _fill_daemon): the state (master or backup) as a u32, the interface as a NUL-ended
# string, the sync id as a u32, the message length as a u16, the UDP port as a u16 and
# the TTL as a u8, all in host order; an IPv4 group as its 4 network-order bytes, an
# IPv6 one as 16.  NEW needs the state, the interface and the sync id (the rest falls
# back to the kernel's defaults: 224.0.0.81 / ff02::81, port 8848, TTL 1, a length from
# the interface's MTU); DEL needs only the state.  The dump lists the running ones.

CMD_NEW_DAEMON = 9
CMD_DEL_DAEMON = 10
CMD_GET_DAEMON = 11
ATTR_DAEMON = 3
DAEMON_STATE, DAEMON_MCAST_IFN, DAEMON_SYNC_ID, DAEMON_SYNC_MAXLEN = 1, 2, 3, 4
DAEMON_MCAST_GROUP, DAEMON_MCAST_GROUP6, DAEMON_MCAST_PORT, DAEMON_MCAST_TTL = 5, 6, 7, 8
DAEMON_MASTER = 1  # IP_VS_STATE_MASTER
DAEMON_BACKUP = 2  # IP_VS_STATE_BACKUP
IFNAME_MAX = 15  # IP_VS_IFNAME_MAXLEN (16) less the NUL


@dataclass(frozen=True)
class SyncDaemon:
    """One kernel sync daemon: ``state`` is ``DAEMON_MASTER`` or ``DAEMON_BACKUP``.

    ``None`` fields are left to the kernel's defaults when starting one; a dumped
    daemon has them all.
    """

    state: int
    interface: str
    sync_id: int
    maxlen: int | None = None
    port: int | None = None
    ttl: int | None = None
    group: IPv4Address | IPv6Address | None = None


def encode_daemon(d: SyncDaemon) -> bytes:
    out = (
        _nla(DAEMON_STATE, _U32.pack(d.state))
        + _nla(DAEMON_MCAST_IFN, d.interface.encode() + b"\0")
        + _nla(DAEMON_SYNC_ID, _U32.pack(d.sync_id))
    )
    if d.maxlen is not None:
        out += _nla(DAEMON_SYNC_MAXLEN, _U16.pack(d.maxlen))
    if d.group is not None:
        kind = DAEMON_MCAST_GROUP6 if d.group.version == 6 else DAEMON_MCAST_GROUP
        out += _nla(kind, d.group.packed)
    if d.port is not None:
        out += _nla(DAEMON_MCAST_PORT, _U16.pack(d.port))
    if d.ttl is not None:
        out += _nla(DAEMON_MCAST_TTL, bytes([d.ttl]))
    return out


def new_daemon_request(family_id: int, d: SyncDaemon, seq: int) -> bytes:
    attrs = _nla(ATTR_DAEMON, encode_daemon(d))
    return message(family_id, CMD_NEW_DAEMON, attrs, seq, NLM_F_REQUEST | NLM_F_ACK)


def del_daemon_request(family_id: int, state: int, seq: int) -> bytes:
    attrs = _nla(ATTR_DAEMON, _nla(DAEMON_STATE, _U32.pack(state)))
    return message(family_id, CMD_DEL_DAEMON, attrs, seq, NLM_F_REQUEST | NLM_F_ACK)


def dump_daemons_request(family_id: int, seq: int) -> bytes:
    return message(family_id, CMD_GET_DAEMON, b"", seq, NLM_F_REQUEST | NLM_F_DUMP)


def decode_daemon(reply: Reply) -> SyncDaemon:
    a = _nest(reply, ATTR_DAEMON)
    group: IPv4Address | IPv6Address | None = None
    if DAEMON_MCAST_GROUP6 in a:
        group = IPv6Address(a[DAEMON_MCAST_GROUP6][:16])
    elif DAEMON_MCAST_GROUP in a:
        group = IPv4Address(a[DAEMON_MCAST_GROUP][:4])
    maxlen = a.get(DAEMON_SYNC_MAXLEN)
    port = a.get(DAEMON_MCAST_PORT)
    ttl = a.get(DAEMON_MCAST_TTL)
    return SyncDaemon(
        state=_uint(a[DAEMON_STATE]),
        interface=a[DAEMON_MCAST_IFN].split(b"\0", 1)[0].decode(errors="replace"),
        sync_id=_uint(a[DAEMON_SYNC_ID]),
        maxlen=_U16.unpack(maxlen[:2])[0] if maxlen else None,
        port=_U16.unpack(port[:2])[0] if port else None,
        ttl=ttl[0] if ttl else None,
        group=group,
    )
