"""The struct-based IPVS dump decoder, checked field by field against pyroute2's decoder.

Replies are built here the way the kernel builds them (ip_vs_genl_fill_service /
_fill_dest / _fill_stats): 16-byte addresses, flags with the HASHED bit and a full
mask, both the 32-bit STATS nest (connections and packets truncated to 32 bits) and
STATS64, optional PE name, tunnel attributes and alignment pads.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import astuple
from ipaddress import IPv4Address, IPv6Address
from socket import AF_INET, AF_INET6
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.generic.ipvs import ipvsmsg

from pyalived.ipvs import genl
from pyalived.ipvs import model as m
from pyalived.ipvs.genl import DestInfo, ServiceInfo, Stats
from pyalived.ipvs.model import Destination, DestKey, Forwarding, Protocol, Service, ServiceKey

FAMILY_ID = 0x1A
NLA_F_NESTED = 0x8000
STATS_PAD = 11


def nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n & 3)


def u16(v: int) -> bytes:
    return struct.pack("=H", v)


def u32(v: int) -> bytes:
    return struct.pack("=I", v)


def u64(v: int) -> bytes:
    return struct.pack("=Q", v)


def addr16(a: IPv4Address | IPv6Address) -> bytes:
    return a.packed.ljust(16, b"\0")  # union nf_inet_addr


def stats_nest(kind: int, s: Stats, wide: bool, pad: bool, nested: bool) -> bytes:
    v = astuple(s)
    out = b""
    for i, value in enumerate(v, start=1):
        is64 = wide or i in (4, 5)  # in/out bytes are 64-bit in both nests
        if is64 and pad:
            out += nla(STATS_PAD, b"")
        out += nla(i, u64(value) if is64 else u32(value & 0xFFFFFFFF))
    return nla(kind | (NLA_F_NESTED if nested else 0), out)


def genl_msg(cmd: int, attrs: bytes, seq: int = 9) -> bytes:
    n = 20 + len(attrs)
    return struct.pack("=IHHII", n, FAMILY_ID, 0x2, seq, 0) + struct.pack("=BBH", cmd, 1, 0) + attrs


def kernel_service(info: ServiceInfo, *, stats64: bool = True, pad: bool = False,
                   nested: bool = False) -> bytes:
    svc, key = info.service, info.service.key
    a = nla(genl.SVC_AF, u16(key.family))
    if key.fwmark:
        a += nla(genl.SVC_FWMARK, u32(key.fwmark))
    else:
        assert key.address is not None
        a += nla(genl.SVC_PROTOCOL, u16(key.protocol))
        a += nla(genl.SVC_ADDR, addr16(key.address))
        a += nla(genl.SVC_PORT, struct.pack("!H", key.port))
    a += nla(genl.SVC_SCHED_NAME, svc.scheduler.encode() + b"\0")
    if svc.pe_name:
        a += nla(genl.SVC_PE_NAME, svc.pe_name.encode() + b"\0")
    a += nla(genl.SVC_FLAGS, struct.pack("=II", svc.flags | m.SVC_F_HASHED, 0xFFFFFFFF))
    a += nla(genl.SVC_TIMEOUT, u32(svc.timeout))
    if key.family == AF_INET6:
        a += nla(genl.SVC_NETMASK, u32(svc.netmask))
    else:
        a += nla(genl.SVC_NETMASK, struct.pack("!I", (0xFFFFFFFF << (32 - svc.netmask))
                                               & 0xFFFFFFFF))
    a += stats_nest(genl.SVC_STATS, info.stats, False, pad, nested)
    if stats64:
        a += stats_nest(genl.SVC_STATS64, info.stats, True, pad, nested)
    flag = NLA_F_NESTED if nested else 0
    return genl_msg(genl.CMD_NEW_SERVICE, nla(genl.ATTR_SERVICE | flag, a))


def kernel_dest(info: DestInfo, *, stats64: bool = True, pad: bool = False,
                nested: bool = False, family_attr: bool = True) -> bytes:
    d = info.dest
    fam = AF_INET6 if d.key.address.version == 6 else AF_INET
    a = nla(genl.DEST_ADDR, addr16(d.key.address))
    a += nla(genl.DEST_PORT, struct.pack("!H", d.key.port))
    a += nla(genl.DEST_FWD_METHOD, u32(int(d.forwarding)))
    a += nla(genl.DEST_WEIGHT, u32(d.weight))
    a += (nla(genl.DEST_TUN_TYPE, bytes((d.tun_type,)))
          + nla(genl.DEST_TUN_PORT, struct.pack("!H", d.tun_port))
          + nla(genl.DEST_TUN_FLAGS, u16(d.tun_flags)))
    a += nla(genl.DEST_U_THRESH, u32(d.u_threshold))
    a += nla(genl.DEST_L_THRESH, u32(d.l_threshold))
    a += nla(genl.DEST_ACTIVE_CONNS, u32(info.active_conns))
    a += nla(genl.DEST_INACT_CONNS, u32(info.inactive_conns))
    a += nla(genl.DEST_PERSIST_CONNS, u32(info.persist_conns))
    if family_attr:
        a += nla(genl.DEST_ADDR_FAMILY, u16(fam))
    a += stats_nest(genl.DEST_STATS, info.stats, False, pad, nested)
    if stats64:
        a += stats_nest(genl.DEST_STATS64, info.stats, True, pad, nested)
    flag = NLA_F_NESTED if nested else 0
    return genl_msg(genl.CMD_NEW_DEST, nla(genl.ATTR_DEST | flag, a))


def reply(data: bytes) -> genl.Reply:
    return next(genl.split(data))


# ---- pyroute2's view of the same bytes ---------------------------------------------------


def _pyroute2(data: bytes, name: str) -> Any:
    msg = ipvsmsg(data)
    msg.decode()
    return msg.get_attr(name)


def pyroute2_stats(nest: Any, prefix: str) -> Stats:
    s = nest.get_attr(prefix + "STATS64") or nest.get_attr(prefix + "STATS")
    return Stats(*(int(s.get_attr("IPVS_STATS_ATTR_" + f.upper())) for f in genl.STATS_FIELDS))


def pyroute2_service(data: bytes) -> ServiceInfo:
    n = _pyroute2(data, "IPVS_CMD_ATTR_SERVICE")
    family = int(n.get_attr("IPVS_SVC_ATTR_AF"))
    fwmark = int(n.get_attr("IPVS_SVC_ATTR_FWMARK") or 0)
    if fwmark:
        key = ServiceKey(family, 0, None, 0, fwmark)
    else:
        raw = n.get_attr("IPVS_SVC_ATTR_ADDR")
        key = ServiceKey(family, int(n.get_attr("IPVS_SVC_ATTR_PROTOCOL")),
                         IPv6Address(raw) if family == AF_INET6 else IPv4Address(raw),
                         int(n.get_attr("IPVS_SVC_ATTR_PORT")))
    mask = n.get_attr("IPVS_SVC_ATTR_NETMASK")  # typed as an IPv4 address by pyroute2
    if family == AF_INET6:
        netmask = int.from_bytes(IPv4Address(mask).packed, sys.byteorder)
    else:
        netmask = bin(int(IPv4Address(mask))).count("1")
    svc = Service(key, str(n.get_attr("IPVS_SVC_ATTR_SCHED_NAME")),
                  int(n.get_attr("IPVS_SVC_ATTR_FLAGS")["flags"]) & m.SVC_FLAGS_MASK,
                  int(n.get_attr("IPVS_SVC_ATTR_TIMEOUT")), netmask,
                  str(n.get_attr("IPVS_SVC_ATTR_PE_NAME") or ""))
    return ServiceInfo(svc, pyroute2_stats(n, "IPVS_SVC_ATTR_"))


def pyroute2_dest(data: bytes) -> DestInfo:
    n = _pyroute2(data, "IPVS_CMD_ATTR_DEST")
    raw = n.get_attr("IPVS_DEST_ATTR_ADDR")
    fam = int(n.get_attr("IPVS_DEST_ATTR_ADDR_FAMILY"))
    fwd = Forwarding(int(n.get_attr("IPVS_DEST_ATTR_FWD_METHOD")) & 7)
    tun = (0, 0, 0)
    if fwd is Forwarding.TUN:  # pyroute2 reads the network-order port in host order
        port = int(n.get_attr("IPVS_DEST_ATTR_TUN_PORT"))
        tun = (int(n.get_attr("IPVS_DEST_ATTR_TUN_TYPE")),
               int.from_bytes(port.to_bytes(2, sys.byteorder), "big"),
               int(n.get_attr("IPVS_DEST_ATTR_TUN_FLAGS")))
    dest = Destination(
        DestKey(IPv6Address(raw) if fam == AF_INET6 else IPv4Address(raw),
                int(n.get_attr("IPVS_DEST_ATTR_PORT"))),
        int(n.get_attr("IPVS_DEST_ATTR_WEIGHT")),
        fwd,
        int(n.get_attr("IPVS_DEST_ATTR_U_THRESH")),
        int(n.get_attr("IPVS_DEST_ATTR_L_THRESH")),
        *tun,
    )
    return DestInfo(dest, int(n.get_attr("IPVS_DEST_ATTR_ACTIVE_CONNS")),
                    int(n.get_attr("IPVS_DEST_ATTR_INACT_CONNS")),
                    int(n.get_attr("IPVS_DEST_ATTR_PERSIST_CONNS")),
                    pyroute2_stats(n, "IPVS_DEST_ATTR_"))


# ---- strategies ----------------------------------------------------------------------------

addr4 = st.integers(0, 2**32 - 1).map(IPv4Address)
addr6 = st.integers(0, 2**128 - 1).map(IPv6Address)
u32s = st.integers(0, 2**32 - 1)
u64s = st.integers(0, 2**64 - 1)
stats = st.builds(Stats, u64s, u64s, u64s, u64s, u64s, u64s, u64s, u64s, u64s, u64s)


@st.composite
def service_keys(draw: st.DrawFn) -> ServiceKey:
    family = draw(st.sampled_from([AF_INET, AF_INET6]))
    if draw(st.booleans()):
        return ServiceKey.mark(draw(st.integers(1, 2**32 - 1)), family)
    address: IPv4Address | IPv6Address = draw(addr6) if family == AF_INET6 else draw(addr4)
    return ServiceKey.inet(address, draw(st.integers(0, 65535)), draw(st.sampled_from(Protocol)))


@st.composite
def service_infos(draw: st.DrawFn) -> ServiceInfo:
    key = draw(service_keys())
    full = 128 if key.family == AF_INET6 else 32
    svc = Service(key, draw(st.sampled_from(sorted(m.SCHEDULERS))),
                  draw(st.sampled_from([0, m.SVC_F_PERSISTENT, m.SVC_FLAGS_MASK])),
                  draw(u32s), draw(st.integers(0, full)), draw(st.sampled_from(["", "sip"])))
    return ServiceInfo(svc, draw(stats))


def _dest(a: IPv4Address | IPv6Address, p: int, w: int, f: Forwarding, u: int, lo: int,
          tun: tuple[int, int, int]) -> Destination:
    return Destination(DestKey(a, p), w, f, u, lo, *(tun if f is Forwarding.TUN else (0, 0, 0)))


tunnels = st.tuples(st.sampled_from(sorted(m.TUN_TYPES.values())), st.integers(0, 65535),
                    st.sampled_from(sorted(m.TUN_FLAGS.values())))
dest_infos = st.builds(
    DestInfo,
    st.builds(_dest, st.one_of(addr4, addr6), st.integers(0, 65535), st.integers(0, 2**31 - 1),
              st.sampled_from(Forwarding), u32s, u32s, tunnels),
    u32s, u32s, u32s, stats,
)


def truncated(s: Stats) -> Stats:
    """What the 32-bit STATS nest carries of ``s``."""
    v = list(astuple(s))
    for i in (0, 1, 2, 5, 6, 7, 8, 9):
        v[i] &= 0xFFFFFFFF
    return Stats(*v)


# ---- tests -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(service_infos(), st.booleans(), st.booleans())
def test_service_replies_decode_like_pyroute2(info: ServiceInfo, wide: bool, pad: bool) -> None:
    data = kernel_service(info, stats64=wide, pad=pad)
    ours = genl.decode_service_info(reply(data))
    assert ours == pyroute2_service(data)
    assert ours == (info if wide else ServiceInfo(info.service, truncated(info.stats)))
    assert genl.decode_service(reply(data)) == info.service
    assert genl.decode_service_key(reply(data)) == info.service.key


@settings(max_examples=300, deadline=None)
@given(dest_infos, st.booleans(), st.booleans())
def test_dest_replies_decode_like_pyroute2(info: DestInfo, wide: bool, pad: bool) -> None:
    data = kernel_dest(info, stats64=wide, pad=pad)
    ours = genl.decode_dest_info(reply(data))
    assert ours == pyroute2_dest(data)
    want = info if wide else DestInfo(info.dest, info.active_conns, info.inactive_conns,
                                      info.persist_conns, truncated(info.stats))
    assert ours == want
    assert genl.decode_dest(reply(data)) == info.dest


@settings(max_examples=50, deadline=None)
@given(service_infos(), dest_infos)
def test_nested_flag_is_ignored(svc: ServiceInfo, dest: DestInfo) -> None:
    assert genl.decode_service_info(reply(kernel_service(svc, nested=True))) == svc
    assert genl.decode_dest_info(reply(kernel_dest(dest, nested=True))) == dest


def test_dest_family_from_the_service_when_the_kernel_omits_it() -> None:
    v6 = DestInfo(Destination(DestKey(IPv6Address("2001:db8::5"), 80)), 1, 2, 3, Stats(1))
    v4 = DestInfo(Destination(DestKey(IPv4Address("198.18.2.1"), 80)), 1, 2, 3, Stats(1))
    assert genl.decode_dest_info(reply(kernel_dest(v6, family_attr=False)), AF_INET6) == v6
    assert genl.decode_dest_info(reply(kernel_dest(v4, family_attr=False)), AF_INET) == v4


@settings(max_examples=100, deadline=None)
@given(st.lists(service_infos(), max_size=6), dest_infos)
def test_request_encoder_round_trips(infos: list[ServiceInfo], dest: DestInfo) -> None:
    # Our own requests (4-byte IPv4 addresses, no statistics) decode too.
    for info in infos:
        r = reply(genl.encode_op(FAMILY_ID, m.AddService(info.service), 3))
        assert genl.decode_service_info(r) == ServiceInfo(info.service)
        r = reply(genl.encode_op(FAMILY_ID, m.AddDest(info.service.key, dest.dest), 4))
        assert genl.decode_dest_info(r) == DestInfo(dest.dest)
        assert genl.decode_service_key(r) == info.service.key


def test_a_dump_stream_splits_into_its_messages() -> None:
    svc = ServiceInfo(Service(ServiceKey.inet("198.18.1.1", 80), "rr"), Stats(5, 6, 7, 8, 9))
    dest = DestInfo(Destination(DestKey(IPv4Address("198.18.2.1"), 80)), 4, 1, 0, Stats(3))
    done = struct.pack("=IHHIIi", 20, genl.NLMSG_DONE, 2, 9, 0, 0)
    stream = kernel_service(svc) + kernel_dest(dest) + done
    parts = list(genl.split(stream))
    assert [p.type for p in parts] == [FAMILY_ID, FAMILY_ID, genl.NLMSG_DONE]
    assert genl.decode_service_info(parts[0]) == svc
    assert genl.decode_dest_info(parts[1]) == dest


def test_malformed_replies_raise_value_error() -> None:
    svc = ServiceInfo(Service(ServiceKey.inet("198.18.1.1", 80), "rr"))
    data = bytearray(kernel_service(svc))
    struct.pack_into("=H", data, 24, 0xFFF)  # the service nest claims more than there is
    with pytest.raises(ValueError):
        genl.decode_service_info(genl.Reply(FAMILY_ID, 0, 9, bytes(data)))
    with pytest.raises(ValueError):
        genl.decode_dest_info(reply(kernel_service(svc)))  # no destination in it


def test_tunnel_settings_travel_only_with_tun_forwarding() -> None:
    key = DestKey(IPv4Address("198.18.2.1"), 80)
    gue = Destination(key, 3, Forwarding.TUN, 0, 0, m.TUN_TYPE_GUE, 6080, m.TUN_F_REMCSUM)
    raw = genl.encode_dest(gue)
    attrs = genl._parse(raw)
    assert attrs[genl.DEST_TUN_TYPE] == bytes((m.TUN_TYPE_GUE,))
    assert attrs[genl.DEST_TUN_PORT] == struct.pack("!H", 6080)
    assert attrs[genl.DEST_TUN_FLAGS] == u16(m.TUN_F_REMCSUM)
    dr = genl._parse(genl.encode_dest(Destination(key, 3, Forwarding.DR)))
    assert not {genl.DEST_TUN_TYPE, genl.DEST_TUN_PORT, genl.DEST_TUN_FLAGS} & set(dr)
    # an edit back to plain ipip states it: the kernel replaces what it had
    ipip = genl._parse(genl.encode_dest(Destination(key, 3, Forwarding.TUN)))
    assert ipip[genl.DEST_TUN_TYPE] == b"\0" and ipip[genl.DEST_TUN_PORT] == b"\0\0"


def test_the_persistence_engine_is_named_only_when_set() -> None:
    key = ServiceKey.inet("198.18.1.1", 5060, Protocol.UDP)
    sip = genl._parse(genl.encode_service(Service(key, "rr", m.SVC_F_PERSISTENT, 60, 32, "sip")))
    assert sip[genl.SVC_PE_NAME] == b"sip\0"
    assert genl.SVC_PE_NAME not in genl._parse(genl.encode_service(Service(key, "rr")))
    with pytest.raises(ValueError):
        Service(key, "rr", pe_name="x" * 16)


def test_timeouts_flush_and_config_messages() -> None:
    data = genl.set_config_request(FAMILY_ID, m.Timeouts(tcp=900, udp=30), 7)
    n, kind, flags, seq, _ = struct.unpack_from("=IHHII", data)
    assert (n, kind, seq) == (len(data), FAMILY_ID, 7)
    assert flags == genl.NLM_F_REQUEST | genl.NLM_F_ACK
    assert data[16] == genl.CMD_SET_CONFIG
    attrs = genl._parse(data, 20)
    assert attrs == {genl.ATTR_TIMEOUT_TCP: u32(900), genl.ATTR_TIMEOUT_UDP: u32(30)}
    # pyroute2 reads the same attributes out of it
    msg = ipvsmsg(data)
    msg.decode()
    assert msg.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP") is not None
    assert msg.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN") is None
    flush = genl.flush_request(FAMILY_ID, 8)
    assert flush[16] == genl.CMD_FLUSH and len(flush) == 20
    reply_ = genl_msg(genl.CMD_GET_CONFIG, nla(genl.ATTR_TIMEOUT_TCP, u32(900))
                      + nla(genl.ATTR_TIMEOUT_TCP_FIN, u32(120))
                      + nla(genl.ATTR_TIMEOUT_UDP, u32(300)))
    assert genl.decode_config(reply(reply_)) == m.Timeouts(900, 120, 300)
