"""LVS over IPv6: the parser's IPv6 forms and diagnostics (compared with keepalived
2.2.7's ``-t``), the IPVS services and destinations they make, their generic-netlink
encoding and decoding, the checker probes against an IPv6 listener on ::1, and the
names the metrics show."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from socket import AF_INET, AF_INET6

import pytest
import trio

from pyalived.checkers.compile import (
    block_key,
    checker_specs,
    dest_key,
    ipvs_configs,
)
from pyalived.checkers.probes import RealProber, http_probe, tcp_probe
from pyalived.checkers.spec import HttpGet, RealServerSpec, TcpCheck, UrlSpec
from pyalived.config import LoadResult, Severity, load, render
from pyalived.config.lvs_parse import service_keys
from pyalived.config.model import Config, LvsMethod, VirtualServer
from pyalived.ipvs import genl
from pyalived.ipvs.model import (
    SVC_F_PERSISTENT,
    AddDest,
    AddService,
    DeleteDest,
    DeleteService,
    Destination,
    DestKey,
    EditDest,
    EditService,
    Forwarding,
    Protocol,
    Service,
    ServiceKey,
    plan,
)
from pyalived.metrics import service_labels

V6 = IPv6Address

HEAD = "virtual_server {vs} {{\n protocol TCP\n lvs_sched rr\n lvs_method {method}\n"


def run(tmp_path: Path, text: str) -> LoadResult:
    p = tmp_path / "keepalived.conf"
    p.write_text(text)
    return load(str(p), interface_exists={"eth0"}.__contains__)


def config(res: LoadResult) -> Config:
    assert res.config is not None, render(res.diagnostics)
    return res.config


def one_vs(res: LoadResult) -> VirtualServer:
    (vs,) = config(res).virtual_servers
    return vs


def vs_text(vs: str, body: str, method: str = "NAT") -> str:
    return HEAD.format(vs=vs, method=method) + body + "}\n"


def messages(res: LoadResult) -> list[tuple[Severity, int, str]]:
    return [(d.severity, d.location.line, d.message) for d in res.diagnostics]


# ---- parser: virtual_server, real_server, sorry_server ----------------------------


def test_ipv6_virtual_server_real_and_sorry_servers(tmp_path: Path) -> None:
    text = vs_text(
        "2001:db8::1 80",
        " persistence_timeout 30\n persistence_granularity 64\n"
        " sorry_server 2001:db8::99 8080\n"
        " real_server 2001:db8::10 80 {\n  weight 3\n"
        "  TCP_CHECK {\n   connect_ip 2001:db8::100\n   bindto 2001:db8::1\n  }\n }\n"
        " real_server 2001:db8::11 80 {\n"
        "  HTTP_GET {\n   url {\n    path /\n   }\n  }\n }\n",
    )
    res = run(tmp_path, text)
    assert not res.diagnostics, render(res.diagnostics)
    vs = one_vs(res)
    assert vs.address == V6("2001:db8::1") and vs.family == AF_INET6
    assert vs.name == "[2001:db8::1]:80"
    assert [str(rs) for rs in vs.real_servers] == ["[2001:db8::10]:80", "[2001:db8::11]:80"]
    assert vs.sorry_server is not None and vs.sorry_server.address == V6("2001:db8::99")
    tcp = vs.real_servers[0].checkers[0]
    assert (tcp.connect_ip, tcp.bindto) == (V6("2001:db8::100"), V6("2001:db8::1"))
    (conf,) = ipvs_configs(config(res))
    key = ServiceKey.inet("2001:db8::1", 80, Protocol.TCP)
    assert conf.key == key and conf.key.family == AF_INET6
    svc = conf.service()
    assert svc.netmask == 64 and svc.flags & SVC_F_PERSISTENT
    assert [rs.key for rs in conf.real_servers] == [
        DestKey(V6("2001:db8::10"), 80),
        DestKey(V6("2001:db8::11"), 80),
    ]
    table = plan([conf], {}).table
    assert set(table[key].dests) == {
        DestKey(V6("2001:db8::10"), 80),
        DestKey(V6("2001:db8::11"), 80),
    }
    assert table[key].service.netmask == 64
    (spec,) = checker_specs(config(res))
    assert spec.name == "[2001:db8::1]:80"
    assert dest_key(spec.real_servers[0], key) == DestKey(V6("2001:db8::10"), 80)
    assert str(spec.real_servers[0]) == "[2001:db8::10]:80"


def test_an_unpersistent_ipv6_service_is_per_client_128(tmp_path: Path) -> None:
    res = run(tmp_path, vs_text("2001:db8::1 80", " real_server 2001:db8::10 80 {\n }\n"))
    (conf,) = ipvs_configs(config(res))
    assert conf.service().netmask == 128


def test_real_server_of_the_other_family_is_skipped_unless_tunnelled(tmp_path: Path) -> None:
    # keepalived -t: "Address family of virtual server and real server 198.18.0.2 don't
    # match - skipping real server." for NAT and DR; TUN is accepted.
    body = " real_server 2001:db8::10 80 {\n }\n real_server 198.18.0.2 80 {\n }\n"
    for method in ("NAT", "DR"):
        res = run(tmp_path, vs_text("2001:db8::1 80", body, method))
        (d,) = res.diagnostics
        assert (d.severity, d.location.line) == (Severity.WARNING, 7)
        assert "real server 198.18.0.2 don't match" in d.message and "skipped" in d.message
        assert [str(rs) for rs in one_vs(res).real_servers] == ["[2001:db8::10]:80"]
    res = run(tmp_path, vs_text("2001:db8::1 80", body, "TUN"))
    assert not res.diagnostics, render(res.diagnostics)
    assert [str(rs) for rs in one_vs(res).real_servers] == ["[2001:db8::10]:80", "198.18.0.2:80"]
    # a real server's own TUN is enough; the IPVS dest keeps its family
    tun = " real_server 198.18.0.2 80 {\n  lvs_method TUN\n }\n"
    res = run(tmp_path, vs_text("2001:db8::1 80", tun))
    assert not res.diagnostics, render(res.diagnostics)
    (conf,) = ipvs_configs(config(res))
    assert conf.real_servers[0].key == DestKey(IPv4Address("198.18.0.2"), 80)
    assert conf.real_servers[0].forwarding is Forwarding.TUN


def test_sorry_server_of_the_other_family(tmp_path: Path) -> None:
    body = " sorry_server 198.18.0.3 80\n real_server 2001:db8::2 80 {\n }\n"
    res = run(tmp_path, vs_text("2001:db8::1 80", body))
    (d,) = res.diagnostics
    assert d.severity is Severity.WARNING and d.location.line == 5
    assert "sorry server 198.18.0.3 don't match" in d.message
    assert one_vs(res).sorry_server is None
    body += " sorry_server_lvs_method TUN\n"
    res = run(tmp_path, vs_text("2001:db8::1 80", body))
    assert not res.diagnostics and one_vs(res).sorry_server is not None


def test_fwmark_family(tmp_path: Path) -> None:
    def fwm(body: str, method: str = "NAT") -> tuple[LoadResult, VirtualServer]:
        res = run(tmp_path, vs_text("fwmark 7", body, method).replace(" protocol TCP\n", ""))
        return res, one_vs(res)

    res, vs = fwm(" ip_family inet6\n real_server 2001:db8::2 {\n }\n")
    assert not res.diagnostics and vs.family == AF_INET6
    keys = service_keys(vs, {})
    assert keys == (ServiceKey.mark(7, AF_INET6),) and str(keys[0]) == "FWM 7 IPv6"
    assert block_key(vs) == ("fwmark 7", "inet6")
    # without ip_family: the real servers' family; all tunnelled and mixed: IPv4
    assert fwm(" real_server 2001:db8::2 {\n }\n")[1].family == AF_INET6
    assert fwm(" real_server 198.18.0.2 {\n }\n")[1].family == AF_INET
    mixed = " real_server 198.18.0.2 {\n }\n real_server 2001:db8::2 {\n }\n"
    assert fwm(mixed, "TUN")[1].family == AF_INET
    assert fwm(" ip_family inet6\n" + mixed, "TUN")[1].family == AF_INET6
    assert fwm(" real_server 2001:db8::2 {\n }\n", "TUN")[1].family == AF_INET6
    assert block_key(fwm(mixed, "TUN")[1]) == ("fwmark 7", "")
    # a dotted persistence_granularity makes it IPv4, a prefix length IPv6
    assert fwm(" persistence_granularity 64\n real_server 2001:db8::2 {\n }\n")[1].family == (
        AF_INET6
    )
    # keepalived -t: "Address family of virtual server and real server 198.18.0.2 don't
    # match - skipping real server." then "... has no real servers"
    res, vs = fwm(" ip_family inet6\n real_server 198.18.0.2 {\n }\n")
    assert [m[:2] for m in messages(res)] == [(Severity.WARNING, 5), (Severity.WARNING, 1)]
    assert "don't match" in res.diagnostics[0].message and vs.real_servers == ()
    # keepalived -t: "Virtual server specified family inet6 conflicts with server family"
    res, vs = fwm(" real_server 198.18.0.2 {\n }\n ip_family inet6\n")
    ((sev, line, msg),) = messages(res)
    assert (sev, line) == (Severity.WARNING, 6) and "ip_family inet6 conflicts" in msg
    assert vs.family == AF_INET and len(vs.real_servers) == 1


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        # keepalived -t: "Invalid virtual server IP address/port 2001:db8::g/80 - skipping"
        (vs_text("2001:db8::g 80", ""), 1, "'2001:db8::g' is not an IP address"),
        (vs_text("[2001:db8::1] 80", ""), 1, "'[2001:db8::1]' is not an IP address"),
        # keepalived -t: "Invalid real server ip address/port 2001:db8:::2/80 - skipping"
        (
            vs_text("2001:db8::1 80", " real_server 2001:db8:::2 80 {\n }\n"),
            5,
            "'2001:db8:::2' is not an IP address",
        ),
        (
            vs_text("2001:db8::1 80", " real_server fe80::2%eth0 80 {\n }\n"),
            5,
            "addresses with a zone are not supported",
        ),
        (
            vs_text("2001:db8::1 80", " real_server 2001:db8::2 80 {\n  TCP_CHECK {\n"
                    "   connect_ip 2001:db8::zz\n  }\n }\n"),
            7,
            "'2001:db8::zz' is not an IP address",
        ),
        # keepalived -t: "Invalid IPv6 persistence_granularity specified - 255.255.255.0"
        (
            vs_text("2001:db8::1 80", " persistence_granularity 255.255.255.0\n"),
            5,
            "not an IPv6 prefix length",
        ),
        (
            vs_text("2001:db8::1 80", " persistence_granularity 129\n"),
            5,
            "not an IPv6 prefix length",
        ),
        # keepalived -t: "unknown address family ipx"
        (vs_text("fwmark 1", " ip_family ipx\n"), 5, "unknown address family 'ipx'"),
        # virtual_server_group: keepalived -t's diagnostics, each skipping the entry
        # "Address range end is not greater than address range start"
        ("virtual_server_group G {\n 2001:db8::10-10 80\n}\n", 2, "the end is not above"),
        ("virtual_server_group G {\n 2001:db8::20-10 80\n}\n", 2, "the end is not above"),
        # "Virtual server group range '2001:db8::10-1ffff' end '1ffff' too large"
        ("virtual_server_group G {\n 2001:db8::10-1ffff 80\n}\n", 2, "above ffff"),
        # "... has extra characters at end 'g'"
        ("virtual_server_group G {\n 2001:db8::10-2g 80\n}\n", 2, "not a hexadecimal"),
        # "Address range end is less than address range start"
        (
            "virtual_server_group G {\n 2001:db8::1:10-2001:db8::5 80\n}\n",
            2,
            "ends before it starts",
        ),
        # "Address mask bits not empty - 2001:db8::1/120 - skipping"
        ("virtual_server_group G {\n 2001:db8::1/120 80\n}\n", 2, "outside the prefix"),
        # "Invalid netmask - 2001:db8::/0 - skipping" (and /129)
        ("virtual_server_group G {\n 2001:db8::/0 80\n}\n", 2, "invalid prefix length"),
        ("virtual_server_group G {\n 2001:db8::/129 80\n}\n", 2, "invalid prefix length"),
        # "Invalid virtual server group IP address 198.18.0.1-2001:db8::1 /port/80"
        ("virtual_server_group G {\n 198.18.0.1-2001:db8::1 80\n}\n", 2, "not an address"),
        ("virtual_server_group G {\n 2001:db8::10-198.18.0.1 80\n}\n", 2, "families do not"),
        ("virtual_server_group G {\n [2001:db8::10] 80\n}\n", 2, "not an address"),
        # a whole /64 is more than this project expands
        ("virtual_server_group G {\n 2001:db8::/64 80\n}\n", 2, "more than 65536"),
        # "(G): fwmark '5' family inet7 unknown - ignoring"
        ("virtual_server_group G {\n fwmark 5 inet7\n}\n", 2, "'inet7' is not inet or inet6"),
        # "virtual server group G cannot have IPv4, IPv6 and fwmark without family"
        (
            "virtual_server_group G {\n 198.18.0.1 80\n 2001:db8::1 80\n fwmark 3\n}\n",
            1,
            "each fwmark needs its family",
        ),
    ],
)
def test_ipv6_errors(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    res = run(tmp_path, text)
    assert res.config is None
    errors = [d for d in res.diagnostics if d.severity is Severity.ERROR]
    assert any(d.location.line == line and fragment in d.message for d in errors), render(
        res.diagnostics
    )
    assert res.exit_code == 5


def test_bindto_of_the_other_family_is_ignored(tmp_path: Path) -> None:
    # keepalived -t: "bindto address 198.18.0.1 does not match address family of
    # connect_ip - skipping"
    chk = " real_server 2001:db8::2 80 {\n  TCP_CHECK {\n   bindto 198.18.0.1\n  }\n }\n"
    res = run(tmp_path, vs_text("2001:db8::1 80", chk))
    ((sev, line, msg),) = messages(res)
    assert (sev, line) == (Severity.WARNING, 6) and "bindto 198.18.0.1 does not match" in msg
    (check,) = one_vs(res).real_servers[0].checkers
    assert check.bindto is None
    # connect_ip of the other family is fine (keepalived -t accepts it), bindto then follows it
    chk = (
        " real_server 2001:db8::2 80 {\n  TCP_CHECK {\n   connect_ip 198.18.0.9\n"
        "   bindto 198.18.0.1\n  }\n }\n"
    )
    res = run(tmp_path, vs_text("2001:db8::1 80", chk))
    assert not res.diagnostics, render(res.diagnostics)


# ---- parser: virtual_server_group -------------------------------------------------

GROUP6 = """\
virtual_server_group G6 {
 2001:db8::1 80
 2001:db8::10-12 80
 2001:db8::fff0-2001:db8::1:1 443
 2001:db8:1::/126 8080
 fwmark 5
}
virtual_server group G6 {
 protocol TCP
 lvs_sched rr
 lvs_method NAT
 real_server 2001:db8::100 80 {
 }
}
"""


def test_ipv6_group_forms(tmp_path: Path) -> None:
    res = run(tmp_path, GROUP6)
    cfg = config(res)
    assert all(
        "port is ignored for fwmark" in d.message for d in res.diagnostics
    ), render(res.diagnostics)
    g = cfg.virtual_server_group("G6")
    assert [list(map(str, e.addresses())) for e in g.entries[:2]] == [
        ["2001:db8::1"],
        ["2001:db8::10", "2001:db8::11", "2001:db8::12"],  # the end is hexadecimal
    ]
    assert len(list(g.entries[2].addresses())) == 18  # fff0..ffff, 1:0, 1:1
    assert list(map(str, g.entries[3].addresses())) == [f"2001:db8:1::{i or ''}" for i in range(4)]
    (vs,) = cfg.virtual_servers
    assert vs.family == AF_INET6
    keys = service_keys(vs, {"G6": g})
    assert len(keys) == 1 + 3 + 18 + 4 + 1
    assert keys[0] == ServiceKey.inet("2001:db8::1", 80, Protocol.TCP)
    assert ServiceKey.inet("2001:db8::1:1", 443, Protocol.TCP) in keys
    # a fwmark without family in an IPv6 group is an IPv6 service
    assert keys[-1] == ServiceKey.mark(5, AF_INET6)
    configs = ipvs_configs(cfg)
    assert [c.key for c in configs] == list(keys)
    assert configs[-1].real_servers[0].key == DestKey(V6("2001:db8::100"), 0)
    assert configs[0].real_servers[0].key == DestKey(V6("2001:db8::100"), 80)


def test_ipv6_range_end_accepts_hex_like_keepalived(tmp_path: Path) -> None:
    # keepalived -t accepts 2001:db8::10-ff, -FF and -0x20 (strtoul base 16)
    for tail, count in (("ff", 0xF0), ("FF", 0xF0), ("0x20", 0x11)):
        text = GROUP6.replace("2001:db8::10-12", f"2001:db8::10-{tail}")
        g = config(run(tmp_path, text)).virtual_server_group("G6")
        assert len(list(g.entries[1].addresses())) == count


def test_mixed_group_needs_tunnels(tmp_path: Path) -> None:
    def mixed(method: str) -> str:
        return (
            "virtual_server_group M {\n 198.18.0.1 80\n 2001:db8::1 80\n fwmark 4 inet6\n}\n"
            "virtual_server group M {\n protocol TCP\n lvs_sched rr\n"
            f" lvs_method {method}\n real_server 2001:db8::2 80 {{\n }}\n}}\n"
        )

    res = run(tmp_path, mixed("TUN"))
    cfg = config(res)
    (vs,) = cfg.virtual_servers
    assert vs.family is None
    keys = service_keys(vs, {"M": cfg.virtual_server_group("M")})
    assert keys == (
        ServiceKey.inet("198.18.0.1", 80, Protocol.TCP),
        ServiceKey.inet("2001:db8::1", 80, Protocol.TCP),
        ServiceKey.mark(4, AF_INET6),
    )
    # NAT settles the virtual server's family: keepalived ignores it ("virtual server group
    # with IPv4 & IPv6 doesn't match virtual server"); here a warning, and no service
    res = run(tmp_path, mixed("NAT"))
    cfg = config(res)
    assert any(
        d.location.line == 6 and "address family doesn't match" in d.message
        for d in res.diagnostics
    ), render(res.diagnostics)
    assert ipvs_configs(cfg) == ()


def test_group_of_the_other_family_is_ignored(tmp_path: Path) -> None:
    text = GROUP6.replace("real_server 2001:db8::100 80", "real_server 198.18.0.100 80")
    res = run(tmp_path, text)
    cfg = config(res)
    assert any("the group is inet6, the virtual server inet" in d.message
               for d in res.diagnostics), render(res.diagnostics)
    assert ipvs_configs(cfg) == ()


# ---- generic netlink: AF_INET6 services and destinations ------------------------


def _attrs(buf: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(buf):
        n, kind = struct.unpack_from("=HH", buf, off)
        out[kind & 0x3FFF] = buf[off + 4 : off + n]
        off += (n + 3) & ~3
    return out


SVC6 = Service(
    ServiceKey.inet("fd00:198:18::100", 80, Protocol.TCP), "rr", SVC_F_PERSISTENT, 300, 64
)
DEST6 = Destination(DestKey(V6("fd00:198:18::10"), 8080), 5, Forwarding.NAT, 100, 10)


def test_ipv6_service_encoding() -> None:
    a = _attrs(genl.encode_service(SVC6))
    assert struct.unpack("=H", a[genl.SVC_AF])[0] == AF_INET6
    assert a[genl.SVC_ADDR] == V6("fd00:198:18::100").packed and len(a[genl.SVC_ADDR]) == 16
    assert struct.unpack("!H", a[genl.SVC_PORT])[0] == 80
    assert struct.unpack("=I", a[genl.SVC_NETMASK])[0] == 64  # IPv6: a prefix length
    mark = _attrs(genl.encode_service_key(ServiceKey.mark(9, AF_INET6)))
    assert struct.unpack("=H", mark[genl.SVC_AF])[0] == AF_INET6
    assert struct.unpack("=I", mark[genl.SVC_FWMARK])[0] == 9


def test_ipv6_dest_encoding() -> None:
    a = _attrs(genl.encode_dest(DEST6))
    assert a[genl.DEST_ADDR] == V6("fd00:198:18::10").packed
    assert struct.unpack("=H", a[genl.DEST_ADDR_FAMILY])[0] == AF_INET6
    # an IPv4 destination behind an IPv6 service (tunnelled): its own family
    d4 = Destination(DestKey(IPv4Address("198.18.0.2"), 80), 1, Forwarding.TUN)
    a4 = _attrs(genl.encode_dest(d4))
    assert len(a4[genl.DEST_ADDR]) == 4
    assert struct.unpack("=H", a4[genl.DEST_ADDR_FAMILY])[0] == AF_INET


def _reply(cmd: int, payload: bytes) -> genl.Reply:
    """A dump reply as the kernel sends it: addresses as 16-byte nf_inet_addr."""
    data = genl.message(0x20, cmd, payload, 7)
    return next(genl.split(data))


def _kernel_service(svc: Service) -> bytes:
    """IPVS_CMD_ATTR_SERVICE as ip_vs_genl_fill_service writes it."""
    key = svc.key
    assert key.address is not None
    inner = (
        genl._nla(genl.SVC_AF, struct.pack("=H", key.family))
        + genl._nla(genl.SVC_PROTOCOL, struct.pack("=H", key.protocol))
        + genl._nla(genl.SVC_ADDR, key.address.packed.ljust(16, b"\0"))
        + genl._nla(genl.SVC_PORT, struct.pack("!H", key.port))
        + genl._nla(genl.SVC_SCHED_NAME, svc.scheduler.encode() + b"\0")
        + genl._nla(genl.SVC_FLAGS, struct.pack("=II", svc.flags | 2, 0xFFFFFFFF))
        + genl._nla(genl.SVC_TIMEOUT, struct.pack("=I", svc.timeout))
        + genl._nla(genl.SVC_NETMASK, struct.pack("=I", svc.netmask))
    )
    return genl._nla(genl.ATTR_SERVICE | 0x8000, inner)


def _kernel_dest(d: Destination, with_family: bool) -> bytes:
    inner = (
        genl._nla(genl.DEST_ADDR, d.key.address.packed.ljust(16, b"\0"))
        + genl._nla(genl.DEST_PORT, struct.pack("!H", d.key.port))
        + genl._nla(genl.DEST_FWD_METHOD, struct.pack("=I", int(d.forwarding)))
        + genl._nla(genl.DEST_WEIGHT, struct.pack("=I", d.weight))
        + genl._nla(genl.DEST_U_THRESH, struct.pack("=I", d.u_threshold))
        + genl._nla(genl.DEST_L_THRESH, struct.pack("=I", d.l_threshold))
    )
    if with_family:
        fam = AF_INET6 if d.key.address.version == 6 else AF_INET
        inner += genl._nla(genl.DEST_ADDR_FAMILY, struct.pack("=H", fam))
    return genl._nla(genl.ATTR_DEST | 0x8000, inner)


def test_ipv6_dumps_decode() -> None:
    svc = genl.decode_service(_reply(genl.CMD_NEW_SERVICE, _kernel_service(SVC6)))
    assert svc == SVC6
    for with_family in (True, False):
        raw = _reply(genl.CMD_NEW_DEST, _kernel_dest(DEST6, with_family))
        assert genl.decode_dest_info(raw, AF_INET6).dest == DEST6
    d4 = Destination(DestKey(IPv4Address("198.18.0.2"), 80), 1, Forwarding.TUN)
    raw = _reply(genl.CMD_NEW_DEST, _kernel_dest(d4, True))
    assert genl.decode_dest_info(raw, AF_INET6).dest == d4


def test_ipv6_ops_round_trip_through_the_request_encoder() -> None:
    """Every request's service and dest attributes decode back to what was asked."""
    key = SVC6.key
    for op in (AddService(SVC6), EditService(SVC6), DeleteService(key), AddDest(key, DEST6),
               EditDest(key, DEST6), DeleteDest(key, DEST6.key)):
        cmd, attrs = genl.op_payload(op)
        reply = _reply(cmd, attrs)
        assert genl.decode_service_key(reply) == key
        if isinstance(op, (AddService, EditService)):
            assert genl.decode_service(reply) == SVC6
        if isinstance(op, (AddDest, EditDest)):
            assert genl.decode_dest(reply) == DEST6


# ---- names in metrics and logs ------------------------------------------------------


def test_ipv6_names_as_ipvsadm_prints_them() -> None:
    key = ServiceKey.inet("2001:db8::1", 80, Protocol.TCP)
    assert str(key) == "TCP [2001:db8::1]:80"
    assert service_labels(key) == ("[2001:db8::1]:80", "TCP")
    assert service_labels(ServiceKey.mark(3, AF_INET6)) == ("3", "FWM6")
    assert str(DestKey(V6("2001:db8::10"), 80)) == "[2001:db8::10]:80"
    assert str(RealServerSpec(V6("2001:db8::10"), 80)) == "[2001:db8::10]:80"
    assert VirtualServer(address=V6("2001:db8::1"), port=80).name == "[2001:db8::1]:80"
    assert VirtualServer(address=IPv4Address("198.18.0.1"), port=80).name == "198.18.0.1:80"


# ---- probes against an IPv6 listener on ::1 -------------------------------------------

Handler = Callable[[trio.SocketStream], Awaitable[None]]
LOOP6 = V6("::1")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_v6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")


@asynccontextmanager
async def serve6(handler: Handler) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="::1"))
        sock = listeners[0].socket
        assert sock.family == AF_INET6
        yield sock.getsockname()[1]
        nursery.cancel_scope.cancel()


def _closed_port6() -> int:
    with socket.socket(AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


@needs_v6
async def test_tcp_check_on_ipv6() -> None:
    peers: list[str] = []

    async def idle(stream: trio.SocketStream) -> None:
        peers.append(stream.socket.getpeername()[0])
        await trio.sleep_forever()

    async with serve6(idle) as port:
        ok = await tcp_probe(TcpCheck(), RealServerSpec(LOOP6, port))
        assert ok.ok and ok.reason == f"connected to [::1]:{port}"
        bound = await tcp_probe(TcpCheck(bindto=LOOP6, bind_port=0), RealServerSpec(LOOP6, port))
        assert bound.ok, bound.reason
        # connect_ip overrides an unreachable real server, of either family
        dead = RealServerSpec(V6("2001:db8::dead"), port)
        assert (await tcp_probe(TcpCheck(connect_ip=LOOP6), dead)).ok
        # the scheduler's fast path, as the checker process runs it
        start = RealProber().starter(TcpCheck(), RealServerSpec(LOOP6, port))
        outcome = start()
        res = outcome if not isinstance(outcome, Awaitable) else await outcome
        assert res.ok, res.reason
        await trio.sleep(0.05)
    assert peers and set(peers) == {"::1"}
    refused = await tcp_probe(TcpCheck(), RealServerSpec(LOOP6, _closed_port6()))
    assert not refused.ok and "refused" in refused.reason and "[::1]:" in refused.reason


@needs_v6
async def test_http_get_on_ipv6() -> None:
    requests: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        requests.append(data)
        code = 503 if b"GET /down" in data else 200
        await stream.send_all(b"HTTP/1.0 %d X\r\nContent-Length: 2\r\n\r\nok" % code)
        await stream.aclose()

    async with serve6(handler) as port:
        rs = RealServerSpec(LOOP6, port)
        spec = HttpGet(urls=(UrlSpec("/", digest="444bcb3a3fcf8389296c49467f27e1d6"),))
        res = await http_probe(spec, rs)
        assert res.ok, res.reason
        assert f"[::1]:{port}" in res.reason
        # the Host header brackets the IPv6 address, as keepalived does
        assert f"\r\nHost: [::1]:{port}\r\n".encode() in requests[-1]
        down = await http_probe(HttpGet(urls=(UrlSpec("/down"),)), rs)
        assert not down.ok and "503" in down.reason
        # through the prober, with connect_ip and bindto
        dead = RealServerSpec(V6("2001:db8::dead"), port)
        via = HttpGet(urls=(UrlSpec("/"),), connect_ip=LOOP6, bindto=LOOP6)
        res = await RealProber().probe(via, dead)
        assert res.ok, res.reason
    res = await http_probe(HttpGet(urls=(UrlSpec("/"),)), RealServerSpec(LOOP6, _closed_port6()))
    assert not res.ok and "refused" in res.reason


def test_checker_specs_keep_the_ipv6_targets(tmp_path: Path) -> None:
    text = vs_text(
        "2001:db8::1 80",
        " real_server 2001:db8::10 80 {\n  lvs_method NAT\n"
        "  HTTP_GET {\n   url {\n    path /\n   }\n   connect_ip ::1\n   bindto ::1\n  }\n }\n",
    )
    (spec,) = checker_specs(config(run(tmp_path, text)))
    (check,) = spec.real_servers[0].checkers
    assert isinstance(check, HttpGet)
    assert (check.connect_ip, check.bindto) == (LOOP6, LOOP6)
    assert one_vs(run(tmp_path, text)).real_servers[0].lvs_method is LvsMethod.NAT
