"""virtual_routes, virtual_rules and the static blocks in the parser: keepalived 2.2.7's
syntax, defaults and diagnostics."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from pyalived.config import load
from pyalived.config.diagnostics import Category
from pyalived.config.model import (
    Config,
    Location,
    VirtualRoute,
    VirtualRule,
)

STATIC_ROUTE = VirtualRoute(IPv4Network("198.18.6.0/24"), via=IPv4Address("198.18.0.1"))

INSTANCE = """vrrp_instance VI_1 {{
 interface eth0
 virtual_router_id 51
 virtual_ipaddress {{
  198.18.0.100/24
 }}
{body}}}
"""


def load_text(tmp_path: Path, text: str) -> tuple[Config | None, list[str]]:
    path = tmp_path / "keepalived.conf"
    path.write_text(text)
    res = load(str(path), interface_exists=lambda name: name in ("eth0", "eth1"))
    return res.config, [f"{d.location.line}: {d.severity.name.lower()}: {d.message}"
                        for d in res.diagnostics]


def routes_of(tmp_path: Path, lines: str) -> tuple[tuple[VirtualRoute, ...], list[str]]:
    config, diags = load_text(tmp_path, INSTANCE.format(
        body=f" virtual_routes {{\n{lines}\n }}\n"))
    assert config is not None, diags
    return config.vrrp_instances[0].virtual_routes, diags


def rules_of(tmp_path: Path, lines: str) -> tuple[tuple[VirtualRule, ...], list[str]]:
    config, diags = load_text(tmp_path, INSTANCE.format(
        body=f" virtual_rules {{\n{lines}\n }}\n"))
    assert config is not None, diags
    return config.vrrp_instances[0].virtual_rules, diags


# ---- the parser: keepalived's syntax ------------------------------------------------


def test_the_route_forms_of_keepalived_s_man_page(tmp_path: Path) -> None:
    routes, diags = routes_of(tmp_path, """\
  src 198.18.0.100 to 198.18.9.0/24 via 198.18.0.254 dev eth1
  198.18.10.0/24 via 198.18.0.254 dev eth1
  198.18.11.0/24 via 198.18.0.1 scope link metric 7 protocol static
  198.18.12.0/24 gw 198.18.0.254 table 100 onlink dev eth0 tos 0x10
  blackhole 198.18.13.0/24
  unreachable fd00:198:18:1::/64
  default gw 198.18.0.1 table 100
  default via fd00:198:18::1 dev eth0""")
    # keepalived 2.2.7 -t warns "gw" as deprecated too
    assert diags == [f"{n}: warning: route option gw is deprecated; write via instead"
                     for n in (11, 14)]
    src, plain, link, onlink, blackhole, unreach, default4, default6 = routes
    assert src == VirtualRoute(IPv4Network("198.18.9.0/24"), src=IPv4Address("198.18.0.100"),
                               via=IPv4Address("198.18.0.254"), dev="eth1",
                               location=src.location)
    assert src.location.line == 8 and src.protocol == 18 and src.table == 254
    assert plain.via == IPv4Address("198.18.0.254") and plain.src is None
    assert (link.scope, link.metric, link.protocol) == (253, 7, 4)
    assert (onlink.onlink, onlink.table, onlink.tos) == (True, 100, 16)
    assert (blackhole.type, blackhole.dst) == ("blackhole", IPv4Network("198.18.13.0/24"))
    assert (unreach.type, unreach.family) == ("unreachable", 6)
    assert default4.dst == IPv4Network("0.0.0.0/0") and default4.table == 100
    assert default6.dst == IPv6Network("::/0") and default6.via == IPv6Address("fd00:198:18::1")


def test_route_options_not_implemented_are_warned_and_multipath_is_skipped(
    tmp_path: Path,
) -> None:
    routes, diags = routes_of(tmp_path, """\
  198.18.9.0/24 via 198.18.0.1 mtu lock 1400 no_track
  198.18.10.0/24 via 198.18.0.1 or 198.18.0.2
  198.18.11.0/24 nexthop via 198.18.0.1 dev eth0 weight 1""")
    assert [r.dst for r in routes] == [IPv4Network("198.18.9.0/24")]
    assert diags == [
        "8: warning: route option mtu is not supported yet; ignored",
        "8: warning: route option no_track is not supported yet; ignored",
        "9: warning: route option or is not supported yet; route ignored",
        "10: warning: route option nexthop is not supported yet; route ignored",
    ]


def test_a_prefix_with_host_bits_is_masked_silently_as_keepalived_does(tmp_path: Path) -> None:
    (route,), diags = routes_of(tmp_path, "  198.18.9.1/24 dev eth0")
    assert route.dst == IPv4Network("198.18.9.0/24") and diags == []


def test_a_virtual_route_with_a_device_keeps_keepalived_s_protocol(tmp_path: Path) -> None:
    (route,), diags = routes_of(tmp_path, "  198.18.9.0/24 dev eth0 protocol static")
    assert route.protocol == 18
    assert diags == ["8: warning: a virtual route with a dev keeps protocol keepalived (18), "
                     "as in keepalived; protocol 4 ignored"]
    config, diags = load_text(tmp_path, "static_routes {\n 198.18.9.0/24 dev eth0 protocol 4\n}\n")
    assert config is not None and diags == [] and config.static_routes[0].protocol == 4


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("198.18.9.0/24 via 198.18.0.300", "route gateway '198.18.0.300' is not an IP address"),
        ("198.18.9.0/24 via fd00:198:18::1", "cannot mix IPv4 and IPv6 addresses for a route"),
        ("198.18.9.0/24 via 198.18.0.1 table nosuchtable", "routing table nosuchtable not found"),
        ("198.18.9.0/24", "route 198.18.9.0/24 needs a gateway (via) or a device (dev)"),
        ("blackhole 198.18.9.0/24 via 198.18.0.1", "a blackhole route takes no gateway"),
        ("198.18.9.0/24 via 198.18.0.1 metric x", "route metric 'x' is not a number"),
        ("198.18.9.0/24 via 198.18.0.1 scope wide", "unknown route scope 'wide'"),
        ("198.18.9.0/24 via 198.18.0.1 protocol nosuch", "unknown route protocol 'nosuch'"),
        ("198.18.9.0/24 via", "route option via needs a value"),
        ("via 198.18.0.1", "route has no destination"),
        ("198.18.9.0/24 via 198.18.0.1 bogus", "unknown route option 'bogus'"),
    ],
)
def test_a_bad_route_is_skipped_as_keepalived_skips_it(tmp_path: Path, line: str,
                                                       message: str) -> None:
    config, diags = load_text(tmp_path, INSTANCE.format(
        body=f" virtual_routes {{\n  {line}\n 198.18.8.0/24 via 198.18.0.1\n }}\n"))
    assert config is not None, diags
    assert [str(r.dst) for r in config.vrrp_instances[0].virtual_routes] == ["198.18.8.0/24"]
    assert any(d.startswith("8: warning: ") and message in d and d.endswith("; line skipped")
               for d in diags), diags


def test_a_missing_interface_is_keepalived_s_missing_interface_category(tmp_path: Path) -> None:
    path = tmp_path / "keepalived.conf"
    path.write_text("static_routes {\n 198.18.9.0/24 dev eth7\n}\n")
    res = load(str(path), interface_exists=lambda name: name == "eth0")
    (d,) = res.diagnostics
    assert d.category is Category.MISSING_INTERFACE and d.location.line == 2


def test_the_rule_forms_and_actions(tmp_path: Path) -> None:
    rules, diags = rules_of(tmp_path, """\
  from 198.18.0.100 table 100 preference 100
  to 198.18.7.0/24 lookup main priority 101
  from 198.18.0.0/24 to 198.18.9.0/24 iif eth0 oif eth1 fwmark 3/0xff tos 16 order 102 table 100
  not from fd00:198:18::/64 blackhole preference 103
  fwmark 7 goto 200 preference 104
  from all unreachable preference 105
  to fd00:198:18:1::/64 prohibit preference 106 protocol static
  iif eth0 nop preference 107""")
    assert diags == []
    by_pref = {r.priority: r for r in rules}
    assert by_pref[100] == VirtualRule(4, 100, table=100, src=IPv4Network("198.18.0.100/32"),
                                       location=by_pref[100].location)
    assert (by_pref[101].table, by_pref[101].dst) == (254, IPv4Network("198.18.7.0/24"))
    r102 = by_pref[102]
    assert (r102.iif, r102.oif, r102.fwmark, r102.fwmask, r102.tos) == ("eth0", "eth1", 3, 255,
                                                                         16)
    assert (by_pref[103].family, by_pref[103].invert, by_pref[103].action) == (6, True,
                                                                                "blackhole")
    assert (by_pref[104].action, by_pref[104].goto, by_pref[104].fwmask) == ("goto", 200, None)
    assert (by_pref[105].action, by_pref[105].src) == ("unreachable", None)
    assert (by_pref[106].family, by_pref[106].protocol) == (6, 4)
    assert by_pref[107].action == "nop"
    assert all(r.protocol == 18 for p, r in by_pref.items() if p != 106)


def test_rules_without_a_preference_are_numbered_as_keepalived_numbers_them(
    tmp_path: Path,
) -> None:
    # keepalived 2.2.7: 16384 for the first such rule of the file, then 16383...,
    # static and virtual alike and in file order; a line it skips takes no number.
    config, diags = load_text(tmp_path, INSTANCE.format(body="""\
 virtual_rules {
  from 198.18.0.100 table 100
  to 198.18.7.0/24 table 100 preference 5
  to 198.18.8.0/24 table 100
 }
""") + """static_rules {
 from 198.18.5.5 table 100
 to 198.18.300.0/24 table 100
 from 198.18.5.6 table 100
 iif eth0
}
""")
    assert config is not None  # the bad address's line is skipped
    assert sorted(diags, key=lambda d: int(d.split(":")[0])) == [
        "8: warning: rule has no preference specified; setting it to 16384 (as keepalived does)",
        "10: warning: rule has no preference specified; setting it to 16383 (as keepalived does)",
        "14: warning: rule has no preference specified; setting it to 16382 (as keepalived does)",
        "15: warning: rule to '198.18.300.0/24' is not an address[/prefix]; line skipped",
        "16: warning: rule has no preference specified; setting it to 16381 (as keepalived does)",
        "17: warning: no action specified for rule; ignored",
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("from 198.18.0.1 to fd00:198:18::/64 table 1 preference 1",
         "cannot mix IPv4 and IPv6 addresses for a rule"),
        ("from 198.18.0.1 table nosuch preference 1", "routing table nosuch not found"),
        ("fwmark 3/x table 1 preference 1", "rule fwmark '3/x' is not MARK[/MASK]"),
        ("from 198.18.0.1 table 1 preference -1", "rule preference '-1' is not a number"),
        ("from 198.18.0.1 table 1 preference 1 bogus", "unknown rule option 'bogus'"),
    ],
)
def test_a_bad_rule_is_skipped_as_keepalived_skips_it(tmp_path: Path, line: str,
                                                      message: str) -> None:
    config, diags = load_text(tmp_path, INSTANCE.format(
        body=f" virtual_rules {{\n  {line}\n }}\n"))
    assert config is not None, diags
    assert config.vrrp_instances[0].virtual_rules == ()
    assert any(d.startswith("8: warning: ") and message in d and d.endswith("; line skipped")
               for d in diags), diags


def test_rule_options_not_implemented_are_warned(tmp_path: Path) -> None:
    (rule,), diags = rules_of(
        tmp_path, "  from 198.18.0.1 table 1 preference 1 uidrange 1-2 no_track")
    assert rule.table == 1
    assert diags == ["8: warning: rule option uidrange is not supported yet; ignored",
                     "8: warning: rule option no_track is not supported yet; ignored"]


def test_a_rule_without_addresses_takes_the_instance_s_family(tmp_path: Path) -> None:
    config, diags = load_text(tmp_path, INSTANCE.replace("198.18.0.100/24", "fd00:198:18::100")
                              .format(body=" virtual_rules {\n  fwmark 1 table 1 prio 9\n }\n"))
    assert config is not None, diags
    assert config.vrrp_instances[0].virtual_rules[0].family == 6


def test_static_blocks_are_read_into_the_configuration(tmp_path: Path) -> None:
    config, diags = load_text(tmp_path, """static_ipaddress {
 198.18.5.5/32 dev eth0 scope host
 fd00:198:18::5/128 dev eth1
}
static_routes {
 198.18.6.0/24 via 198.18.0.1
}
static_rules {
 from 198.18.5.5 table 100 preference 200
}
""")
    assert config is not None and diags == []
    assert [str(v.address) for v in config.static_ipaddress] == ["198.18.5.5/32",
                                                                 "fd00:198:18::5/128"]
    assert config.static_ipaddress[0].scope == "host"
    assert config.static_routes == (replace(STATIC_ROUTE, location=Location(str(
        tmp_path / "keepalived.conf"), 6)),)
    assert config.static_rules[0].priority == 200 and config.vrrp_instances == ()


def test_the_checker_half_does_not_carry_the_static_blocks(tmp_path: Path) -> None:
    from pyalived.config.reader import CHECKERS, VRRP, half_config

    config, _ = load_text(tmp_path, "static_routes {\n 198.18.6.0/24 via 198.18.0.1\n}\n")
    assert config is not None
    assert half_config(VRRP, config).static_routes == config.static_routes
    assert half_config(CHECKERS, config).static_routes == ()




def test_a_static_address_without_dev_goes_on_eth0_as_in_keepalived(tmp_path: Path) -> None:
    config, diags = load_text(tmp_path, "static_ipaddress {\n 198.18.5.5/32\n}\n")
    assert config is not None and diags == []
    assert config.static_ipaddress[0].dev == "eth0"
    path = tmp_path / "keepalived.conf"
    res = load(str(path), interface_exists=lambda name: name == "ens3")
    (d,) = res.diagnostics
    assert (d.location.line, d.message, d.category) == (
        2, "interface eth0 does not exist", Category.MISSING_INTERFACE)
