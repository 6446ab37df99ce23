"""virtual_routes, virtual_rules and the static blocks on the host: the netlink requests,
and the driver and runtime moving them with the VIPs (fake ports, trio's MockClock, exact
times)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Network
from socket import AF_INET, AF_INET6

import pytest
import trio
import trio.testing

from pyalived.config.model import (
    Config,
    InitialState,
    Location,
    TrackInterface,
    VirtualIP,
    VirtualRoute,
    VirtualRule,
)
from pyalived.reload import plan_reload
from pyalived.vrrp.fsm import State
from pyalived.vrrp.routes import (
    FIB_RULE_INVERT,
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    RTNH_F_ONLINK,
    encode_route,
    encode_rule,
    route_request,
    rule_request,
)
from pyalived.vrrp.runtime import VrrpRuntime
from tests.unit.fakes import FakeRouteManager
from tests.unit.test_instance import MASTER_DOWN_90, PEER, Rig, advert_from, instance_conf

ROUTE = VirtualRoute(IPv4Network("198.18.7.0/24"), via=IPv4Address("198.18.0.1"), table=100)
ROUTE2 = VirtualRoute(IPv4Network("198.18.8.0/24"), src=IPv4Address("198.18.0.100"),
                      dev="eth0")
RULE = VirtualRule(4, 100, table=100, src=IPv4Network("198.18.0.100/32"))
RULE2 = VirtualRule(4, 101, table=100, dst=IPv4Network("198.18.7.0/24"))
STATIC_IP = VirtualIP(IPv4Interface("198.18.5.5/32"), dev="eth0")
STATIC_ROUTE = VirtualRoute(IPv4Network("198.18.6.0/24"), via=IPv4Address("198.18.0.1"))
STATIC_RULE = VirtualRule(4, 200, table=100, src=IPv4Network("198.18.5.5/32"))


# ---- the netlink requests --------------------------------------------------------


def test_route_requests_name_everything_a_deletion_must_match() -> None:
    assert route_request(ROUTE) == {
        "family": AF_INET, "dst": "198.18.7.0", "dst_len": 24, "gateway": "198.18.0.1",
        "table": 100, "proto": 18, "type": "unicast"}
    onlink = VirtualRoute(IPv6Network("::/0"), via=IPv6Address("fd00:198:18::1"), dev="eth0",
                          scope=0, metric=5, tos=8, onlink=True, protocol=4)
    assert route_request(onlink) == {
        "family": AF_INET6, "dst_len": 0, "gateway": "fd00:198:18::1", "table": 254,
        "proto": 4, "type": "unicast", "scope": 0, "priority": 5, "tos": 8,
        "flags": RTNH_F_ONLINK}
    assert route_request(ROUTE2)["prefsrc"] == "198.18.0.100"
    assert route_request(VirtualRoute(IPv4Network("198.18.9.0/24"), "blackhole"))["type"] == (
        "blackhole")


def test_rule_requests() -> None:
    assert rule_request(RULE) == {
        "family": AF_INET, "priority": 100, "action": "FR_ACT_TO_TBL", "protocol": 18,
        "table": 100, "src": "198.18.0.100", "src_len": 32}
    rule = VirtualRule(6, 7, "goto", goto=9, dst=IPv6Network("fd00:198:18::/64"), iif="eth0",
                       oif="eth1", fwmark=3, fwmask=255, tos=4, invert=True)
    assert rule_request(rule) == {
        "family": AF_INET6, "priority": 7, "action": "FR_ACT_GOTO", "protocol": 18, "goto": 9,
        "dst": "fd00:198:18::", "dst_len": 64, "iifname": "eth0", "oifname": "eth1",
        "fwmark": 3, "fwmask": 255, "tos": 4, "flags": FIB_RULE_INVERT}


# ---- the driver: routes and rules move with the VIPs -------------------------------


class RouteRig(Rig):
    def __init__(self) -> None:
        super().__init__()
        self.routes = FakeRouteManager(self.addresses)
        self.ports.routes = self.routes


@asynccontextmanager
async def runtime(rig: RouteRig, config: Config) -> AsyncIterator[tuple[VrrpRuntime, float]]:
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        rt = VrrpRuntime(config, rig.ports, rig.counters)
        await nursery.start(rt.run)
        yield rt, start
        nursery.cancel_scope.cancel()


def with_routes(**changes: object) -> Config:
    fields: dict[str, object] = {"virtual_routes": (ROUTE, ROUTE2), "virtual_rules": (RULE,)}
    fields.update(changes)
    conf = instance_conf(**fields)
    return Config(vrrp_instances=(conf,))


VIP_ON = frozenset({("eth0", "198.18.0.100/24")})
ROUTES = (str(ROUTE), str(ROUTE2))


async def test_routes_follow_the_vips_to_master_and_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = RouteRig()
    async with runtime(rig, with_routes()) as (rt, start):
        (inst,) = rt.instances
        await trio.sleep(MASTER_DOWN_90 + 0.5)
        assert inst.state is State.MASTER
        assert rig.routes.routes == set(ROUTES) and rig.routes.rules == {str(RULE)}
        # a higher priority router takes over: the routes leave with the VIPs
        rig.inject(advert_from(PEER, 200))
        await trio.sleep(0.5)
        assert inst.state is State.BACKUP
        assert rig.routes.routes == set() and rig.routes.rules == set()
        assert rig.addresses.present == set()
    calls = [(c.time - start, c.op, c.routes, c.rules, c.addresses) for c in rig.routes.calls]
    assert calls == [
        # the clean-up of a start as BACKUP: what a killed predecessor may have left
        (0, "remove", ROUTES, (str(RULE),), frozenset()),
        # added after the VIPs, at the takeover
        (MASTER_DOWN_90, "add", ROUTES, (str(RULE),), VIP_ON),
        # removed before the VIPs, when the other router wins
        (MASTER_DOWN_90 + 0.5, "remove", ROUTES, (str(RULE),), VIP_ON),
    ]


async def test_an_owner_adds_its_routes_at_start_and_removes_them_on_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = RouteRig()
    async with runtime(rig, with_routes(priority=255, state=InitialState.MASTER)) as (rt, _):
        assert rt.instances[0].state is State.MASTER
        assert rig.routes.routes == set(ROUTES)
        await trio.sleep(3)
    assert [(c.op, c.addresses) for c in rig.routes.calls] == [("add", VIP_ON),
                                                               ("remove", VIP_ON)]
    assert rig.routes.routes == set() and rig.routes.rules == set()
    assert rig.addresses.present == set()


async def test_fault_removes_the_routes(autojump_clock: trio.testing.MockClock) -> None:
    rig = RouteRig()
    config = with_routes(priority=255, state=InitialState.MASTER,
                         track_interface=(TrackInterface("eth1"),))
    rig.links.set("eth1", True)
    async with runtime(rig, config) as (rt, start):
        await trio.sleep(1)
        rig.links.set("eth1", False)
        await trio.sleep(0.5)
        assert rt.instances[0].state is State.FAULT
        assert rig.routes.routes == set() and rig.routes.rules == set()
        assert [(c.time - start, c.op) for c in rig.routes.calls] == [(0, "add"), (1, "remove")]


async def test_a_failing_route_change_is_logged_and_the_instance_stays_master(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    rig = RouteRig()
    rig.routes.fail = True
    with caplog.at_level(logging.ERROR, "pyalived.vrrp"):
        async with runtime(rig, with_routes(priority=255, state=InitialState.MASTER)) as (rt, _):
            await trio.sleep(2)
            assert rt.instances[0].state is State.MASTER
            assert ("eth0", "198.18.0.100/24") in rig.addresses.present
    assert "(VI_1) setting virtual routes and rules failed: netlink failure" in caplog.text


async def test_a_reload_on_a_master_changes_only_the_changed_routes_and_rules(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = RouteRig()
    config = with_routes(priority=255, state=InitialState.MASTER)
    async with runtime(rig, config) as (rt, start):
        (inst,) = rt.instances
        await trio.sleep(2.5)
        address_calls = len(rig.addresses.calls)
        route_calls = len(rig.routes.calls)
        moved = replace(ROUTE2, location=Location("other.conf", 9))  # same route, moved
        new = with_routes(priority=255, state=InitialState.MASTER,
                          virtual_routes=(moved, STATIC_ROUTE), virtual_rules=(RULE, RULE2))
        await rt.apply(new, plan_reload(rt.config, new))
        assert rt.instances == [inst] and inst.state is State.MASTER
        assert len(rig.addresses.calls) == address_calls  # the VIPs were not touched
        assert [(c.time - start, c.op, c.routes, c.rules) for c in
                rig.routes.calls[route_calls:]] == [
            (2.5, "remove", (str(ROUTE),), ()),
            (2.5, "add", (str(STATIC_ROUTE),), (str(RULE2),)),
        ]
        assert rig.routes.routes == {str(ROUTE2), str(STATIC_ROUTE)}
        assert rig.routes.rules == {str(RULE), str(RULE2)}


async def test_a_reload_on_a_backup_touches_no_route(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = RouteRig()
    async with runtime(rig, with_routes()) as (rt, _start):
        await trio.sleep(1)
        calls = len(rig.routes.calls)
        new = with_routes(virtual_routes=(STATIC_ROUTE,))
        await rt.apply(new, plan_reload(rt.config, new))
        assert rt.instances[0].state is State.BACKUP
        assert rig.routes.calls[calls:] == []
        await trio.sleep(MASTER_DOWN_90)
        assert rt.instances[0].state is State.MASTER
        assert rig.routes.routes == {str(STATIC_ROUTE)}  # the new list, as MASTER


# ---- the runtime: static addresses, routes and rules ------------------------------------


def with_statics(config: Config, ips: tuple[VirtualIP, ...] = (STATIC_IP,),
                 routes: tuple[VirtualRoute, ...] = (STATIC_ROUTE,),
                 rules: tuple[VirtualRule, ...] = (STATIC_RULE,)) -> Config:
    return replace(config, static_ipaddress=ips, static_routes=routes, static_rules=rules)


async def test_statics_are_set_at_start_kept_through_vrrp_states_and_removed_on_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = RouteRig()
    static_on = ("eth0", "198.18.5.5/32")
    async with runtime(rig, with_statics(with_routes())) as (rt, start):
        (inst,) = rt.instances
        assert static_on in rig.addresses.present
        assert rig.routes.calls[0].op == "add" and rig.routes.calls[0].time == start
        assert rig.routes.calls[0].routes == (str(STATIC_ROUTE),)
        await trio.sleep(MASTER_DOWN_90 + 0.5)
        rig.inject(advert_from(PEER, 200))  # MASTER, then BACKUP again
        await trio.sleep(0.5)
        assert inst.state is State.BACKUP
        assert static_on in rig.addresses.present
        assert rig.routes.routes == {str(STATIC_ROUTE)}
        assert rig.routes.rules == {str(STATIC_RULE)}
        for call in rig.routes.calls[1:]:
            assert str(STATIC_ROUTE) not in call.routes
    # the stop: the instance first, then the statics, rules and routes before the address
    last = rig.routes.calls[-1]
    assert (last.op, last.routes, last.rules) == ("remove", (str(STATIC_ROUTE),),
                                                  (str(STATIC_RULE),))
    assert static_on in last.addresses
    assert rig.addresses.present == set() and rig.routes.routes == set()


async def test_a_reload_changes_only_the_changed_statics(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = RouteRig()
    ip2 = VirtualIP(IPv4Interface("198.18.5.6/32"), dev="eth0")
    async with runtime(rig, with_statics(with_routes())) as (rt, _start):
        await trio.sleep(1)
        addr_calls, route_calls = len(rig.addresses.calls), len(rig.routes.calls)
        new = with_statics(with_routes(), ips=(STATIC_IP, ip2), routes=(ROUTE2,),
                           rules=(replace(STATIC_RULE, location=Location("x.conf", 3)),))
        await rt.apply(new, plan_reload(rt.config, new))
        assert [(c.op, c.vips) for c in rig.addresses.calls[addr_calls:]] == [("add", (ip2,))]
        assert [(c.op, c.routes, c.rules) for c in rig.routes.calls[route_calls:]] == [
            ("remove", (str(STATIC_ROUTE),), ()), ("add", (str(ROUTE2),), ())]
        assert rig.routes.routes == {str(ROUTE2)}
        assert rig.routes.rules == {str(STATIC_RULE)}


def test_encoded_route_requests() -> None:
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    big = VirtualRoute(IPv4Network("198.18.7.0/24"), via=IPv4Address("198.18.0.1"),
                       table=70000, metric=5, onlink=True)
    msg = rtmsg(encode_route(big, 3, True, 7))
    msg.decode()
    assert msg["header"]["type"] == RTM_NEWROUTE and msg["header"]["sequence_number"] == 7
    assert msg["header"]["flags"] == 0x1 | 0x4 | 0x200 | 0x400  # REQUEST ACK EXCL CREATE
    assert (msg["family"], msg["dst_len"], msg["table"], msg["proto"], msg["scope"],
            msg["type"], msg["flags"]) == (AF_INET, 24, 252, 18, 0, 1, RTNH_F_ONLINK)
    assert (msg.get_attr("RTA_TABLE"), msg.get_attr("RTA_DST"), msg.get_attr("RTA_GATEWAY"),
            msg.get_attr("RTA_OIF"), msg.get_attr("RTA_PRIORITY")) == (
        70000, "198.18.7.0", "198.18.0.1", 3, 5)
    # a deletion matches any scope unless one was written, as ``ip route del``
    gone = rtmsg(encode_route(VirtualRoute(IPv6Network("::/0"), "unreachable"), None, False, 1))
    gone.decode()
    assert gone["header"]["type"] == RTM_DELROUTE and gone["header"]["flags"] == 0x1 | 0x4
    assert (gone["family"], gone["dst_len"], gone["scope"], gone["type"]) == (AF_INET6, 0,
                                                                             255, 7)
    assert gone.get_attr("RTA_DST") is None and gone.get_attr("RTA_OIF") is None


def test_encoded_rule_requests() -> None:
    from pyroute2.netlink.rtnl.fibmsg import fibmsg

    rule = VirtualRule(6, 7, "table", table=70000, src=IPv6Network("fd00:198:18::/64"),
                       iif="eth0", fwmark=3, fwmask=255, tos=4, invert=True)
    msg = fibmsg(encode_rule(rule, True, 2))
    msg.decode()
    assert msg["header"]["type"] == RTM_NEWRULE
    assert (msg["family"], msg["src_len"], msg["dst_len"], msg["tos"], msg["table"],
            msg["action"], msg["flags"]) == (AF_INET6, 64, 0, 4, 0, 1, FIB_RULE_INVERT)
    assert (msg.get_attr("FRA_PRIORITY"), msg.get_attr("FRA_TABLE"), msg.get_attr("FRA_SRC"),
            msg.get_attr("FRA_IIFNAME"), msg.get_attr("FRA_FWMARK"),
            msg.get_attr("FRA_FWMASK"), msg.get_attr("FRA_PROTOCOL")) == (
        7, 70000, "fd00:198:18::", "eth0", 3, 255, 18)
    goto = fibmsg(encode_rule(VirtualRule(4, 9, "goto", goto=32766), False, 3))
    goto.decode()
    assert goto["header"]["type"] == RTM_DELRULE and goto["action"] == 2
    assert goto.get_attr("FRA_GOTO") == 32766 and goto.get_attr("FRA_TABLE") is None
