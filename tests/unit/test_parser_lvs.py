"""LVS parser tests: virtual_server / virtual_server_group keywords, defaults,
inheritance, errors with file:line, and the mapping to checker and IPVS specs."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from socket import AF_INET

import pytest

from pyalived.checkers.compile import (
    checker_specs,
    dest_key,
    ipvs_configs,
    service_keys,
    services_by_name,
)
from pyalived.checkers.spec import HttpGet, MiscCheck, SslGet, StatusRange, TcpCheck
from pyalived.config import LoadResult, Severity, load, render
from pyalived.config.diagnostics import Category
from pyalived.config.model import (
    CheckerType,
    Config,
    LvsMethod,
    LvsProtocol,
    VirtualServer,
)
from pyalived.ipvs.model import (
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    DestKey,
    Forwarding,
    Protocol,
    ServiceKey,
    plan,
)
from tests.unit.fakes import EveryScriptRuns

SECURE = "global_defs {\n enable_script_security\n}\n"

FULL = (
    SECURE
    + """\
virtual_server 198.18.0.1 80 {
  delay_loop 6
  lb_algo wrr
  lb_kind DR
  persistence_timeout 50
  persistence_granularity 255.255.255.0
  protocol TCP
  ha_suspend
  virtualhost vs.example
  sorry_server 198.18.0.99 8080
  sorry_server_inhibit
  sorry_server_lvs_method NAT
  quorum 3
  quorum_up "/bin/qup arg"
  quorum_down /bin/qdown
  hysteresis 1
  alpha
  omega
  inhibit_on_failure
  retry 4
  delay_before_retry 7
  warmup 2
  connect_timeout 9
  sh-port
  flag-1
  real_server 198.18.0.2 80 {
    weight 5
    inhibit_on_failure false
    lvs_method TUN
    uthreshold 100
    lthreshold 10
    notify_up /bin/up
    notify_down "/bin/down now"
    TCP_CHECK {
      connect_ip 198.18.0.12
      connect_port 8081
      bindto 198.18.0.3
      bind_port 4000
      connect_timeout 3
      retry 2
      delay_before_retry 1.5
      warmup 0
      delay_loop 4
      alpha off
    }
    HTTP_GET {
      url {
        path /health
        status_code 200 300-302
        digest 640205B7B0FC66C1EA91C463FAC6334D
        virtualhost url.example
      }
      url {
        path /
      }
      virtualhost chk.example
      http_protocol 1.1
      connect_port 8080
    }
  }
  real_server 198.18.0.3 80 {
    virtualhost rs.example
    SSL_GET {
      url {
        path /s
      }
      enable_sni
    }
    MISC_CHECK {
      misc_path "/bin/check 198.18.0.3"
      misc_timeout 5
      misc_dynamic
      user nobody nogroup
      retry 3
    }
  }
}
"""
)


def run(tmp_path: Path, text: str) -> LoadResult:
    p = tmp_path / "keepalived.conf"
    p.write_text(text)
    return load(str(p), interface_exists={"eth0"}.__contains__, scripts=EveryScriptRuns())


def only_config(res: LoadResult) -> Config:
    assert res.config is not None, render(res.diagnostics)
    return res.config


def one_vs(res: LoadResult) -> VirtualServer:
    (vs,) = only_config(res).virtual_servers
    return vs


def test_every_lvs_keyword_lands_in_the_model(tmp_path: Path) -> None:
    res = run(tmp_path, FULL)
    assert res.diagnostics == (), render(res.diagnostics)
    assert res.exit_code == 0
    vs = one_vs(res)
    assert vs.location.line == 4 and vs.name == "198.18.0.1:80"
    assert (vs.address, vs.port, vs.fwmark, vs.group) == (IPv4Address("198.18.0.1"), 80, None, None)
    assert (vs.lvs_sched, vs.lvs_method, vs.protocol) == ("wrr", LvsMethod.DR, LvsProtocol.TCP)
    assert (vs.persistence_timeout, vs.persistence_granularity) == (50, 24)
    assert vs.ha_suspend and vs.virtualhost == "vs.example"
    assert vs.sorry_server is not None and vs.sorry_server.location.line == 13
    assert (vs.sorry_server.address, vs.sorry_server.port) == (IPv4Address("198.18.0.99"), 8080)
    assert vs.sorry_server_inhibit and vs.sorry_server_lvs_method is LvsMethod.NAT
    assert (vs.quorum, vs.hysteresis) == (3, 1)
    assert (vs.quorum_up, vs.quorum_down) == ("/bin/qup arg", "/bin/qdown")
    assert vs.alpha and vs.omega and vs.inhibit_on_failure
    o = vs.options
    assert (o.delay_loop, o.retry, o.delay_before_retry, o.warmup, o.connect_timeout) == (
        6.0,
        4,
        7.0,
        2.0,
        9.0,
    )
    assert vs.sched_flags == frozenset({"sh-port", "flag-1"})

    rs1, rs2 = vs.real_servers
    assert rs1.location.line == 29 and str(rs1) == "198.18.0.2:80"
    assert (rs1.weight, rs1.inhibit_on_failure, rs1.lvs_method) == (5, False, LvsMethod.TUN)
    assert (rs1.uthreshold, rs1.lthreshold) == (100, 10)
    assert (rs1.notify_up, rs1.notify_down) == ("/bin/up", "/bin/down now")
    tcp, http = rs1.checkers
    assert tcp.type is CheckerType.TCP_CHECK and tcp.location.line == 37
    assert (tcp.connect_ip, tcp.connect_port) == (IPv4Address("198.18.0.12"), 8081)
    assert (tcp.bindto, tcp.bind_port) == (IPv4Address("198.18.0.3"), 4000)
    t = tcp.options
    assert (t.connect_timeout, t.retry, t.delay_before_retry, t.warmup, t.delay_loop, t.alpha) == (
        3.0,
        2,
        1.5,
        0.0,
        4.0,
        False,
    )
    assert http.type is CheckerType.HTTP_GET
    u1, u2 = http.urls
    assert (u1.path, u1.status_code) == ("/health", ((200, 200), (300, 302)))
    assert u1.digest == "640205b7b0fc66c1ea91c463fac6334d" and u1.virtualhost == "url.example"
    assert (u2.path, u2.status_code, u2.digest) == ("/", (), None)
    assert (http.virtualhost, http.http_protocol, http.connect_port) == ("chk.example", "1.1", 8080)
    assert rs2.virtualhost == "rs.example" and rs2.weight == 1
    ssl, misc = rs2.checkers
    assert ssl.type is CheckerType.SSL_GET and ssl.enable_sni
    assert misc.type is CheckerType.MISC_CHECK
    assert (misc.misc_path, misc.misc_timeout, misc.misc_dynamic) == (
        "/bin/check 198.18.0.3",
        5.0,
        True,
    )
    assert (misc.user, misc.group, misc.options.retry) == ("nobody", "nogroup", 3)


def test_checker_specs_resolve_inheritance(tmp_path: Path) -> None:
    cfg = only_config(run(tmp_path, FULL))
    (spec,) = checker_specs(cfg)
    assert spec.name == "198.18.0.1:80" and spec.omega
    rs1, rs2 = spec.real_servers
    assert (rs1.ip, rs1.port, rs1.weight) == (IPv4Address("198.18.0.2"), 80, 5)
    tcp, http = rs1.checkers
    assert isinstance(tcp, TcpCheck)
    assert (tcp.connect_timeout, tcp.effective_retry, tcp.effective_delay_before_retry) == (
        3.0,
        2,
        1.5,
    )
    assert (tcp.timing.delay_loop, tcp.timing.effective_warmup, tcp.timing.alpha) == (
        4.0,
        0.0,
        False,
    )
    assert tcp.connect_ip == IPv4Address("198.18.0.12") and tcp.bind_port == 4000
    # the HTTP_GET sets none of the generic options: all come from the virtual server
    assert type(http) is HttpGet
    assert (http.connect_timeout, http.effective_retry, http.effective_delay_before_retry) == (
        9.0,
        4,
        7.0,
    )
    assert (http.timing.delay_loop, http.timing.warmup, http.timing.alpha) == (6.0, 2.0, True)
    assert http.virtualhost == "chk.example" and http.http_protocol == "1.1"
    assert http.urls[0].status_code == (StatusRange(200, 200), StatusRange(300, 302))
    assert http.urls[0].virtualhost == "url.example"
    assert http.urls[1].status_code == (StatusRange(200, 299),)
    assert http.urls[1].status_ok(204) and not http.urls[1].status_ok(302)
    ssl, misc = rs2.checkers
    assert isinstance(ssl, SslGet) and ssl.enable_sni and ssl.virtualhost == "rs.example"
    assert isinstance(misc, MiscCheck)
    assert (misc.misc_path, misc.effective_timeout, misc.effective_retry) == (
        "/bin/check 198.18.0.3",
        5.0,
        3,
    )
    assert misc.misc_dynamic and (misc.user, misc.group) == ("nobody", "nogroup")


def test_ipvs_configs_from_full(tmp_path: Path) -> None:
    cfg = only_config(run(tmp_path, FULL))
    (v,) = ipvs_configs(cfg)
    assert v.key == ServiceKey.inet("198.18.0.1", 80, Protocol.TCP)
    assert (v.scheduler, v.forwarding) == ("wrr", Forwarding.DR)
    svc = v.service()
    assert svc.flags == SVC_F_PERSISTENT | SVC_F_SCHED1 | SVC_F_SCHED2
    assert (svc.timeout, svc.netmask) == (50, 24)
    assert (v.quorum, v.hysteresis, v.alpha, v.omega) == (3, 1, True, True)
    assert (v.quorum_up, v.quorum_down) == ("/bin/qup arg", "/bin/qdown")
    assert v.inhibit_on_failure and v.sorry_server_inhibit
    assert v.sorry_server is not None and v.sorry_server.key == DestKey(
        IPv4Address("198.18.0.99"), 8080
    )
    assert v.sorry_server.forwarding is Forwarding.NAT
    r1, r2 = v.real_servers
    assert (r1.weight, r1.forwarding, r1.inhibit_on_failure) == (5, Forwarding.TUN, False)
    assert (r1.u_threshold, r1.l_threshold, r1.checked) == (100, 10, True)
    assert (r2.forwarding, r2.inhibit_on_failure, r2.location.line) == (None, None, 64)
    # the planner takes it as is: alpha puts checked servers down, quorum 3 is lost
    p = plan(ipvs_configs(cfg), {})
    dests = p.table[v.key].dests
    assert r1.key not in dests  # its own inhibit_on_failure false wins over the VS's
    assert dests[r2.key].weight == 0  # inherits the VS's inhibit_on_failure
    assert dests[v.sorry_server.key].weight == 1
    assert p.quorum == {v.key: False}


def test_defaults_like_keepalived(tmp_path: Path) -> None:
    res = run(
        tmp_path,
        "virtual_server 198.18.0.1 80 {\n real_server 198.18.0.2 80 {\n"
        "  TCP_CHECK {\n  }\n  HTTP_GET {\n   url {\n    path /\n   }\n  }\n"
        "  MISC_CHECK {\n   misc_path /bin/true\n  }\n }\n}\n",
    )
    warnings = sorted(d.message for d in res.diagnostics if d.location.line == 1)
    assert warnings == [
        "virtual_server 198.18.0.1:80: no lvs_method set; using NAT",
        "virtual_server 198.18.0.1:80: no lvs_sched set; using wlc",
        "virtual_server 198.18.0.1:80: no protocol set; using UDP, as IPVS does",
    ]
    assert res.exit_code == 6  # MISC_CHECK without enable_script_security
    vs = one_vs(res)
    assert (vs.lvs_sched, vs.lvs_method, vs.protocol) == ("wlc", LvsMethod.NAT, LvsProtocol.UDP)
    assert (vs.quorum, vs.hysteresis, vs.persistence_timeout) == (1, 0, None)
    assert not (vs.alpha or vs.omega or vs.inhibit_on_failure or vs.ha_suspend or vs.ops)
    (spec,) = checker_specs(only_config(res))
    (rs,) = spec.real_servers
    assert rs.weight == 1
    tcp, http, misc = rs.checkers
    assert isinstance(tcp, TcpCheck) and isinstance(http, HttpGet) and isinstance(misc, MiscCheck)
    assert (tcp.timing.delay_loop, tcp.connect_timeout) == (60.0, 5.0)
    assert (tcp.effective_retry, tcp.effective_delay_before_retry) == (1, 1.0)
    assert tcp.timing.effective_warmup == 60.0 and not tcp.timing.alpha
    assert (http.effective_retry, http.effective_delay_before_retry) == (1, 3.0)
    assert http.http_protocol == "1.0" and http.virtualhost is None
    assert (misc.effective_retry, misc.effective_timeout) == (0, 60.0)
    (v,) = ipvs_configs(only_config(res))
    assert v.key == ServiceKey.inet("198.18.0.1", 80, Protocol.UDP)
    assert v.service().flags == 0 and v.service().netmask == 32


def test_inheritance_does_not_depend_on_order(tmp_path: Path) -> None:
    text = (
        SECURE + "virtual_server 198.18.0.1 80 {\n protocol TCP\n lb_algo rr\n lb_kind NAT\n"
        " real_server 198.18.0.2 80 {\n  TCP_CHECK {\n  }\n  delay_loop 3\n }\n"
        " delay_loop 9\n connect_timeout 2\n alpha\n virtualhost v\n"
        " real_server 198.18.0.3 80 {\n  MISC_CHECK {\n   misc_path /bin/true\n  }\n }\n}\n"
    )
    res = run(tmp_path, text)
    assert res.diagnostics == (), render(res.diagnostics)
    (spec,) = checker_specs(only_config(res))
    (tcp,) = spec.real_servers[0].checkers
    (misc,) = spec.real_servers[1].checkers
    assert isinstance(tcp, TcpCheck) and isinstance(misc, MiscCheck)
    assert (tcp.timing.delay_loop, tcp.connect_timeout, tcp.timing.alpha) == (3.0, 2.0, True)
    assert (misc.timing.delay_loop, misc.effective_timeout, misc.timing.alpha) == (9.0, 9.0, True)


GROUP = (
    "virtual_server_group G {\n 198.18.0.1 80\n 198.18.0.10-12 443\n 198.18.0.250-198.18.1.1 53\n"
    " 198.18.2.0/30 8080\n fwmark 7\n}\n"
    "virtual_server group G {\n protocol TCP\n lb_algo rr\n lb_kind DR\n"
    " real_server 198.18.3.1 80 {\n  weight 2\n }\n}\n"
    "virtual_server fwmark 9 {\n lb_algo rr\n lb_kind NAT\n real_server 198.18.3.2 {\n }\n}\n"
)


def test_virtual_server_group_forms(tmp_path: Path) -> None:
    res = run(tmp_path, GROUP)
    # like keepalived: DR cannot map the port; the group's fwmark ignores it
    d1, d2 = sorted(res.diagnostics, key=lambda d: d.message)
    assert d1.location.line == d2.location.line == 12
    assert "DR cannot change the port; it differs from the service port 53, 443, 8080" in d1.message
    assert "the port is ignored for fwmark services" in d2.message
    cfg = only_config(res)
    g = cfg.virtual_server_group("G")
    assert g.location.line == 1 and [e.location.line for e in g.entries] == [2, 3, 4, 5, 6]
    assert [list(map(str, e.addresses())) for e in g.entries[:2]] == [
        ["198.18.0.1"],
        ["198.18.0.10", "198.18.0.11", "198.18.0.12"],
    ]
    assert len(list(g.entries[2].addresses())) == 8 and g.entries[2].port == 53
    assert len(list(g.entries[3].addresses())) == 4
    assert (g.entries[4].fwmark, g.entries[4].first) == (7, None)
    vs_group, vs_mark = cfg.virtual_servers
    assert vs_group.group == "G" and vs_group.name == "group G"
    assert vs_mark.fwmark == 9 and vs_mark.name == "fwmark 9"
    assert vs_mark.real_servers[0].port is None
    keys = service_keys(vs_group, {"G": g})
    assert len(keys) == 1 + 3 + 8 + 4 + 1
    assert keys[0] == ServiceKey.inet("198.18.0.1", 80, Protocol.TCP)
    assert ServiceKey.inet("198.18.1.1", 53, Protocol.TCP) in keys
    assert keys[-1] == ServiceKey.mark(7)
    configs = ipvs_configs(cfg)
    assert len(configs) == len(keys) + 1
    assert all(c.forwarding is Forwarding.DR for c in configs[:-1])
    assert configs[-1].key == ServiceKey(AF_INET, 0, None, 0, 9)
    assert configs[-1].real_servers[0].port == 0
    by_name = services_by_name(cfg)
    assert by_name["group G"] == keys and by_name["fwmark 9"] == (ServiceKey.mark(9),)
    specs = checker_specs(cfg)
    assert [s.name for s in specs] == ["group G", "fwmark 9"]
    assert dest_key(specs[0].real_servers[0]) == DestKey(IPv4Address("198.18.3.1"), 80)
    assert dest_key(specs[1].real_servers[0]) == DestKey(IPv4Address("198.18.3.2"), 0)
    # every service of the group carries the block's real servers
    p = plan(configs, {})
    rs = specs[0].real_servers[0]
    assert all(dest_key(rs, k) in p.table[k].dests for k in keys)
    assert dest_key(rs, keys[-1]) == DestKey(IPv4Address("198.18.3.1"), 0)
    assert set(p.table[keys[-1]].dests) == {DestKey(IPv4Address("198.18.3.1"), 0)}


VS = (
    "virtual_server 198.18.0.1 80 {{\n protocol TCP\n lb_algo rr\n lb_kind NAT\n"
    " real_server 198.18.0.2 80 {{\n{rs}\n }}\n{vs}\n}}\n"
)


def vsx(rs: str = "", vs: str = "") -> str:
    return VS.format(rs=rs, vs=vs)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("virtual_server 198.18.0.300 80 {\n}\n", 1, "'198.18.0.300' is not an IP address"),
        ("virtual_server 198.18.0.1 70000 {\n}\n", 1, "port 70000 is outside [1, 65535]"),
        ("virtual_server 198.18.0.1 http {\n}\n", 1, "'http' is not a port number"),
        ("virtual_server fwmark 0 {\n}\n", 1, "fwmark '0' is invalid"),
        ("virtual_server {\n}\n", 1, "needs IP [PORT], fwmark N or group NAME"),
        (vsx().replace("lb_algo rr", "lb_algo bogus"), 3, "unknown scheduler 'bogus'"),
        (vsx().replace("lb_kind NAT", "lb_kind BOGUS"), 4, "unknown forwarding method 'BOGUS'"),
        (vsx().replace("protocol TCP", "protocol ICMP"), 2, "TCP, UDP or SCTP"),
        (vsx(" weight 2147483648"), 6, "weight 2147483648 is outside [0, 2147483647]"),
        (vsx(" weight -1"), 6, "weight -1 is outside"),
        (vsx().replace("198.18.0.2 80", "198.18.0.2 65536"), 5, "port 65536 is outside [0, 65535]"),
        (vsx().replace("198.18.0.2 80", "nope 80"), 5, "'nope' is not an IP address"),
        (vsx(vs=" quorum 0"), 8, "quorum 0 is outside"),
        (vsx(vs=" delay_loop x"), 8, "not a number"),
        (vsx(vs=" persistence_granularity 255.0.255.0"), 8, "not an IPv4 netmask"),
        (vsx(vs=" sorry_server 198.18.0.9 99999"), 8, "port 99999"),
        (vsx(" TCP_CHECK {\n  connect_port 0\n }"), 7, "connect_port: port 0"),
        (vsx(" TCP_CHECK {\n  connect_ip 198.18.0.256\n }"), 7, "not an IP address"),
        (vsx(" TCP_CHECK {\n  retry -1\n }"), 7, "retry -1 is outside"),
        (vsx(" HTTP_GET {\n }"), 6, "HTTP_GET has no url"),
        (vsx(" HTTP_GET {\n  url {\n   digest 00\n  }\n }"), 7, "url has no path"),
        (vsx(" HTTP_GET {\n  url {\n   path /\n   digest 00\n  }\n }"), 9, "32 hexadecimal"),
        (vsx(" SSL_GET {\n  url {\n   path /\n   status_code 299-200\n  }\n }"), 9, "low to high"),
        (vsx(" SSL_GET {\n  url {\n   path /\n   status_code 2xx\n  }\n }"), 9, "'2xx'"),
        (vsx(" HTTP_GET {\n  url {\n   path /\n  }\n  http_protocol 2\n }"), 10, "http_protocol"),
        (vsx(" MISC_CHECK {\n  misc_timeout 3\n }"), 6, "MISC_CHECK has no misc_path"),
        (vsx(" TCP_CHECK"), 6, "TCP_CHECK needs a { ... } block"),
        ("virtual_server group NOPE {\n protocol TCP\n}\n", 1, "no virtual_server_group of that"),
        ("virtual_server_group G {\n 198.18.0.1-x 80\n}\n", 2, "not an address, address range"),
        ("virtual_server_group G {\n 198.18.0.9-3 80\n}\n", 2, "ends before it starts"),
        ("virtual_server_group G {\n 198.18.0.0/8 80\n}\n", 2, "more than 65536"),
        ("virtual_server_group G {\n 198.18.0.1 0\n}\n", 2, "port 0 is outside"),
        ("virtual_server_group G {\n fwmark x\n}\n", 2, "not a whole number"),
        (
            "virtual_server_group G {\n 198.18.0.1 80\n}\nvirtual_server_group G {\n fwmark 1\n}\n",
            4,
            "virtual_server_group G is already defined at",
        ),
        (vsx() + vsx(), 10, "claims service TCP 198.18.0.1:80, like virtual_server"),
        (
            "virtual_server_group G {\n 198.18.0.1-2 80\n}\n"
            + vsx()
            + vsx().replace("198.18.0.1 80", "group G"),
            13,
            "claims service TCP 198.18.0.1:80",
        ),
    ],
)
def test_errors_refuse_the_config(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    res = run(tmp_path, text)
    assert res.config is None
    path = str(tmp_path / "keepalived.conf")
    errors = [d for d in res.diagnostics if d.severity is Severity.ERROR]
    assert any(
        d.location.file == path and d.location.line == line and fragment in d.message
        for d in errors
    ), render(res.diagnostics)
    assert res.exit_code == 5


def test_bad_value_is_not_also_reported_as_missing(tmp_path: Path) -> None:
    res = run(tmp_path, vsx().replace("lb_algo rr", "lb_algo bogus"))
    assert [d.location.line for d in res.diagnostics] == [3]


@pytest.mark.parametrize("kind", ["BFD_CHECK", "FILE_CHECK"])
def test_unsupported_checker_is_a_warning_and_the_rest_applies(tmp_path: Path, kind: str) -> None:
    text = vsx(f" weight 3\n {kind} {{\n  connect_timeout 1\n }}\n TCP_CHECK {{\n }}")
    res = run(tmp_path, text)
    assert [(d.severity, d.location.line) for d in res.diagnostics] == [(Severity.WARNING, 7)]
    assert f"checker {kind} is not supported yet" in res.diagnostics[0].message
    assert res.exit_code == 5
    (rs,) = one_vs(res).real_servers
    assert rs.weight == 3 and [c.type for c in rs.checkers] == [CheckerType.TCP_CHECK]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (vsx(vs=" persistence_engine sip"), 8, "persistence_engine is not supported yet"),
        (vsx(vs=" frob 1"), 8, "unknown keyword frob in virtual_server 198.18.0.1:80"),
        (vsx(" snmp_name x"), 6, "snmp_name is not supported yet"),
        (vsx(" TCP_CHECK {\n  fwmark 3\n }"), 7, "fwmark is not supported yet"),
        (vsx(" HTTP_GET {\n  url {\n   path /\n   regex ok\n  }\n }"), 9, "regex is not"),
        (vsx(" lvs_method TUN type gue port 6080"), 6, "tunnel options are not supported"),
        ("virtual_server_group G {\n}\n", 1, "virtual_server_group G is empty"),
        (vsx().replace(" real_server 198.18.0.2 80 {\n\n }\n", ""), 1, "has no real_server"),
        (vsx(" weight 3", vs=" quorum 2\n hysteresis 2"), 1,
         "hysteresis 2 is not below quorum 2; using 1"),
        # keepalived 2.2.7 -t: "quorum 5 ... exceeds total weight of real servers 3,
        # reducing quorum to 3"
        (vsx(" weight 3", vs=" quorum 5"), 1,
         "quorum 5 is more than the total weight of its real servers (3); using 3"),
        (vsx(vs=" ops"), 1, "ops (one-packet scheduling) needs UDP; cleared"),
        (vsx().replace("198.18.0.1 80", "fwmark 3").replace("NAT", "DR"), 1,
         "protocol is ignored for fwmark"),
        (vsx().replace("198.18.0.1 80", "198.18.0.1"), 1, "must be persistent; using"),
        (vsx(vs=" real_server 198.18.0.2 80 {\n }"), 8, "real_server 198.18.0.2:80 is already"),
        (vsx().replace("lb_kind NAT", "lb_kind DR").replace("2 80", "2 81"), 5, "DR cannot"),
        # keepalived 2.2.7 -t warns for DR and TUN only (see test_config_deprecations)
        (vsx().replace("198.18.0.1 80", "fwmark 1").replace("NAT", "DR"), 5,
         "port is ignored for fwmark"),
    ],
)
def test_warnings_keep_the_config(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    res = run(tmp_path, text)
    assert res.config is not None, render(res.diagnostics)
    assert all(d.severity is Severity.WARNING for d in res.diagnostics)
    assert any(d.location.line == line and fragment in d.message for d in res.diagnostics), render(
        res.diagnostics
    )
    assert res.exit_code == 5


def test_warning_fixups_land_in_the_model(tmp_path: Path) -> None:
    text = vsx(" weight 2", vs=" quorum 2\n hysteresis 5\n ops\n ha_suspend")
    cfg = only_config(run(tmp_path, text))
    (vs,) = cfg.virtual_servers
    assert (vs.hysteresis, vs.ops, vs.ha_suspend) == (1, False, True)
    # a quorum above the total weight is lowered to it first, then the hysteresis below it
    cfg = only_config(run(tmp_path, vsx(" weight 3", vs=" quorum 5\n hysteresis 4")))
    (vs,) = cfg.virtual_servers
    assert (vs.quorum, vs.hysteresis) == (3, 2)
    # all real servers of weight 0: keepalived sets quorum 0; pyalived keeps 1
    cfg = only_config(run(tmp_path, vsx(" weight 0", vs=" quorum 2")))
    assert cfg.virtual_servers[0].quorum == 1
    cfg = only_config(
        run(tmp_path, vsx(vs=" ha_suspend\n ops").replace("198.18.0.1 80", "fwmark 3"))
    )
    (vs,) = cfg.virtual_servers
    assert not vs.ha_suspend and vs.ops  # ops is fine on fwmark services
    assert ipvs_configs(cfg)[0].service().flags == SVC_F_ONEPACKET
    cfg = only_config(run(tmp_path, vsx().replace("198.18.0.1 80", "198.18.0.1")))
    (v,) = ipvs_configs(cfg)
    assert v.key.port == 0 and v.service().timeout == 360


def test_bare_persistence_timeout_and_prefix_granularity(tmp_path: Path) -> None:
    cfg = only_config(run(tmp_path, vsx(vs=" persistence_timeout\n persistence_granularity 16")))
    (vs,) = cfg.virtual_servers
    assert (vs.persistence_timeout, vs.persistence_granularity) == (360, 16)


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (vsx(" notify_up /bin/up"), 6),
        (vsx(" notify_down /bin/down"), 6),
        (vsx(" MISC_CHECK {\n  misc_path /bin/true\n }"), 7),
        (vsx(vs=" quorum_up /bin/q"), 8),
        (vsx(vs=" quorum_down /bin/q"), 8),
    ],
)
def test_lvs_scripts_need_script_security(tmp_path: Path, body: str, line: int) -> None:
    res = run(tmp_path, body)
    (d,) = res.diagnostics
    assert d.category is Category.SCRIPT_SECURITY and d.location.line == line
    assert res.exit_code == 6
    assert run(tmp_path, SECURE + body).exit_code == 0


def test_lb_aliases_and_masq(tmp_path: Path) -> None:
    text = (
        vsx(" lb_kind masq")
        .replace("lb_algo rr", "lvs_sched sh")
        .replace("lb_kind NAT", "lvs_method tun")
    )
    vs = one_vs(run(tmp_path, text))
    assert (vs.lvs_sched, vs.lvs_method) == ("sh", LvsMethod.TUN)
    assert vs.real_servers[0].lvs_method is LvsMethod.NAT


def test_lvs_and_vrrp_together(tmp_path: Path) -> None:
    text = (
        "vrrp_instance V {\n interface eth0\n virtual_router_id 1\n"
        " virtual_ipaddress {\n  198.18.0.1\n }\n}\n" + vsx()
    )
    res = run(tmp_path, text)
    assert res.diagnostics == (), render(res.diagnostics)
    cfg = only_config(res)
    assert cfg.instance("V").virtual_router_id == 1
    assert cfg.virtual_servers[0].location.line == 8
