"""Byte codec for the IPVS generic-netlink protocol.

Theory of operation: pure functions between ``pyalived.ipvs.model`` records
and netlink message bytes.  Requests are encoded directly with ``struct``
(the hot path: programming ten thousand entries must not cost more than the
kernel work itself); the layout is the one ``include/uapi/linux/ip_vs.h``
defines and the unit tests check every encoded message against pyroute2's
decoder.  Replies (dumps, family lookups, errors) are decoded with pyroute2's
message classes.  A request message is: ``nlmsghdr`` (16 bytes), ``genlmsghdr``
(4 bytes), then nested attributes ``IPVS_CMD_ATTR_SERVICE`` (the service key,
or the full service for NEW/SET_SERVICE) and ``IPVS_CMD_ATTR_DEST``.  The
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
from ipaddress import IPv4Address, IPv6Address, ip_address
from socket import AF_INET, AF_INET6
from typing import Any

from pyroute2.netlink import ctrlmsg, nlmsgerr
from pyroute2.netlink.generic.ipvs import ipvsmsg

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


def _attrs(reply: Reply, name: str) -> Any:
    msg = ipvsmsg(reply.data)
    msg.decode()
    return msg.get_attr(name)


def _decode_key(nest: Any) -> ServiceKey:
    family = int(nest.get_attr("IPVS_SVC_ATTR_AF"))
    fwmark = int(nest.get_attr("IPVS_SVC_ATTR_FWMARK") or 0)
    if fwmark:
        return ServiceKey(family, 0, None, 0, fwmark)
    return ServiceKey(
        family,
        int(nest.get_attr("IPVS_SVC_ATTR_PROTOCOL")),
        ip_address(nest.get_attr("IPVS_SVC_ATTR_ADDR")),
        int(nest.get_attr("IPVS_SVC_ATTR_PORT")),
    )


def decode_service_key(reply: Reply) -> ServiceKey:
    return _decode_key(_attrs(reply, "IPVS_CMD_ATTR_SERVICE"))


def decode_service(reply: Reply) -> Service:
    nest = _attrs(reply, "IPVS_CMD_ATTR_SERVICE")
    key = _decode_key(nest)
    family = key.family
    flags = int(nest.get_attr("IPVS_SVC_ATTR_FLAGS")["flags"]) & SVC_FLAGS_MASK
    raw_mask = nest.get_attr("IPVS_SVC_ATTR_NETMASK")
    if family == AF_INET6:
        # pyroute2 types the attribute as IPv4; the kernel sends a prefix length.
        netmask = int.from_bytes(IPv4Address(raw_mask).packed, sys.byteorder)
    else:
        netmask = bin(int(IPv4Address(raw_mask))).count("1")
    return Service(
        key,
        str(nest.get_attr("IPVS_SVC_ATTR_SCHED_NAME")),
        flags,
        int(nest.get_attr("IPVS_SVC_ATTR_TIMEOUT")),
        netmask,
    )


def decode_dest(reply: Reply) -> Destination:
    nest = _attrs(reply, "IPVS_CMD_ATTR_DEST")
    return Destination(
        DestKey(
            ip_address(nest.get_attr("IPVS_DEST_ATTR_ADDR")),
            int(nest.get_attr("IPVS_DEST_ATTR_PORT")),
        ),
        int(nest.get_attr("IPVS_DEST_ATTR_WEIGHT")),
        Forwarding(int(nest.get_attr("IPVS_DEST_ATTR_FWD_METHOD")) & 0x7),
        int(nest.get_attr("IPVS_DEST_ATTR_U_THRESH")),
        int(nest.get_attr("IPVS_DEST_ATTR_L_THRESH")),
    )
