"""pyalived.vrrp.routes against a real kernel, inside a throwaway namespace.

``RouteManager`` in its netlink thread: a batch of IPv4 and IPv6 routes and rules
of every kind read back with ``ip route`` / ``ip rule`` as an operator sees them;
adding twice and removing twice are no-ops; a change the kernel refuses is logged
with its line, retried one at a time and raised, while every other change is
made; a route whose device disappears counts as removed; an operator's route
with the same destination (another protocol) survives our deletion; a batch
larger than one datagram goes through whole.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from pyalived.config.diagnostics import DiagnosticSink
from pyalived.config.model import Location, VirtualRoute, VirtualRule
from pyalived.config.routes_parse import RouteReader, RulePreferences
from pyalived.config.values import ValueReader
from pyalived.vrrp.netlink import NetlinkThread
from pyalived.vrrp.routes import RouteManager
from tests.netns._ns import NsLan, ns_lan, sh

pytestmark = pytest.mark.netns

READER = RouteReader(ValueReader(DiagnosticSink(), lambda _name: True), RulePreferences())


def route(text: str, line: int = 1) -> VirtualRoute:
    parsed = READER.route(text.split(), Location("keepalived.conf", line))
    assert parsed is not None, text
    return parsed


def rule(text: str) -> VirtualRule:
    parsed = READER.rule(text.split(), Location("keepalived.conf", 1))
    assert parsed is not None, text
    return parsed


ROUTES = [route(t) for t in (
    "198.18.7.0/24 via 198.18.0.1 table 100 metric 5",
    "src 198.18.0.11 198.18.8.0/24 dev eth0 scope link",
    "blackhole 198.18.9.0/24",
    "throw 198.18.10.0/24 table 70000",
    "default via 198.18.0.1 table 8",
    "198.18.11.0/24 via 198.18.99.1 dev eth0 onlink tos 8",
    "fd00:198:18:5::/64 via fd00:198:18::1",
    "unreachable fd00:198:18:6::/64 metric 7",
    "prohibit fd00:198:18:7::/64",
)]
RULES = [rule(t) for t in (
    "from 198.18.0.100 table 100 preference 100",
    "to 198.18.7.0/24 fwmark 3/0xff lookup 70000 preference 101",
    "not from fd00:198:18::/64 blackhole priority 5",
    "iif eth0 oif eth0 goto 32766 preference 7",
    "from 198.18.0.101 unreachable preference 9 tos 16",
    "to fd00:198:18:8::/64 prohibit preference 10 protocol static",
)]
EXPECTED_ROUTES = {
    "198.18.7.0/24 via 198.18.0.1 dev eth0 table 100 proto keepalived metric 5",
    "198.18.8.0/24 dev eth0 proto keepalived scope link src 198.18.0.11",
    "blackhole 198.18.9.0/24 proto keepalived",
    "throw 198.18.10.0/24 table 70000 proto keepalived",
    "default via 198.18.0.1 dev eth0 table 8 proto keepalived",
    "198.18.11.0/24 tos 0x08 via 198.18.99.1 dev eth0 proto keepalived onlink",
    "fd00:198:18:5::/64 via fd00:198:18::1 dev eth0 proto keepalived metric 1024 pref medium",
    "unreachable fd00:198:18:6::/64 dev lo proto keepalived metric 7 pref medium",
    "prohibit fd00:198:18:7::/64 dev lo proto keepalived metric 1024 pref medium",
}
EXPECTED_RULES = {
    "100: from 198.18.0.100 lookup 100 proto keepalived",
    "101: from all to 198.18.7.0/24 fwmark 0x3/0xff lookup 70000 proto keepalived",
    "5: not from fd00:198:18::/64 blackhole proto keepalived",
    "7: from all iif eth0 oif eth0 goto 32766 proto keepalived",
    "9: from 198.18.0.101 tos 0x10 unreachable proto keepalived",
    "10: from all to fd00:198:18:8::/64 prohibit proto static",
}


@pytest.fixture
def lan() -> Iterator[NsLan]:
    with ns_lan(1) as net:
        for address in ("198.18.0.11/24", "fd00:198:18::11/64"):
            sh("ip", "-n", net.hosts[0], "addr", "add", address, "dev", "eth0", "nodad")
        yield net


@pytest.fixture
async def manager(lan: NsLan) -> AsyncIterator[RouteManager]:
    thread = NetlinkThread(netns=lan.hosts[0])
    try:
        yield RouteManager(thread)
    finally:
        thread.close()


def table(ns: str) -> tuple[set[str], set[str]]:
    routes: set[str] = set()
    rules: set[str] = set()
    for family in ("-4", "-6"):
        out = sh("ip", "-n", ns, family, "route", "show", "table", "all")
        routes |= {" ".join(line.split()) for line in out.splitlines()
                   if "proto keepalived" in line}
        out = sh("ip", "-n", ns, family, "rule", "show")
        rules |= {" ".join(line.split()) for line in out.splitlines()
                  if "proto keepalived" in line or "proto static" in line}
    return routes, rules


async def test_every_kind_of_route_and_rule_is_added_and_removed_idempotently(
    lan: NsLan, manager: RouteManager,
) -> None:
    ns = lan.hosts[0]
    await manager.add(ROUTES, RULES)
    assert table(ns) == (EXPECTED_ROUTES, EXPECTED_RULES)
    await manager.add(ROUTES, RULES)  # a restarted master finds them: no error
    assert table(ns) == (EXPECTED_ROUTES, EXPECTED_RULES)
    await manager.remove(ROUTES, RULES)
    assert table(ns) == (set(), set())
    await manager.remove(ROUTES, RULES)  # already gone: no error
    assert table(ns) == (set(), set())


async def test_a_refused_route_is_retried_logged_and_raised_and_the_others_are_made(
    lan: NsLan, manager: RouteManager, caplog: pytest.LogCaptureFixture,
) -> None:
    ns = lan.hosts[0]
    unreachable_gateway = route("198.18.12.0/24 via 198.18.99.1 dev eth0", line=42)
    with caplog.at_level(logging.WARNING, "pyalived"), pytest.raises(OSError):
        await manager.add([ROUTES[0], unreachable_gateway, ROUTES[2]], RULES[:1])
    routes, rules = table(ns)
    assert routes == {"198.18.7.0/24 via 198.18.0.1 dev eth0 table 100 proto keepalived "
                      "metric 5", "blackhole 198.18.9.0/24 proto keepalived"}
    assert rules == {"100: from 198.18.0.100 lookup 100 proto keepalived"}
    assert "add route 198.18.12.0/24 via 198.18.99.1 dev eth0 (keepalived.conf:42)" in (
        caplog.text)
    assert "retry 1/3" in caplog.text


async def test_a_route_whose_device_is_gone_counts_as_removed(
    lan: NsLan, manager: RouteManager,
) -> None:
    ns = lan.hosts[0]
    sh("ip", "-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
    sh("ip", "-n", ns, "link", "set", "eth1", "up")
    on_eth1 = route("198.18.13.0/24 dev eth1")
    await manager.add([on_eth1], [])
    assert table(ns)[0] == {"198.18.13.0/24 dev eth1 proto keepalived linkdown"}
    sh("ip", "-n", ns, "link", "del", "eth1")
    await manager.remove([on_eth1], [])  # no error
    assert table(ns) == (set(), set())


async def test_an_operator_s_route_with_the_same_destination_survives(
    lan: NsLan, manager: RouteManager,
) -> None:
    ns = lan.hosts[0]
    sh("ip", "-n", ns, "route", "add", "198.18.7.0/24", "via", "198.18.0.2", "table", "100",
       "metric", "5", "proto", "static")
    await manager.add(ROUTES[:1], [])  # the same key: the kernel says it exists
    await manager.remove(ROUTES[:1], [])
    out = sh("ip", "-n", ns, "route", "show", "table", "100")
    assert "198.18.7.0/24 via 198.18.0.2 dev eth0 proto static metric 5" in out


async def test_a_batch_larger_than_one_datagram(lan: NsLan, manager: RouteManager) -> None:
    ns = lan.hosts[0]
    many = [route(f"198.19.{n // 250}.{n % 250}/32 via 198.18.0.1 table 100")
            for n in range(1500)]
    await manager.add(many, [])
    out = sh("ip", "-n", ns, "route", "show", "table", "100")
    assert len(out.splitlines()) == 1500
    await manager.remove(many, [])
    assert sh("ip", "-n", ns, "route", "show", "table", "100") == ""
