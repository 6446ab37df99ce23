"""pyalived.vrrp.netlink against a real kernel, inside throwaway namespaces.

Addresses added and removed by ``AddressManager`` are checked with
``ip -o addr`` (prefix, label, scope, broadcast; idempotency; default
device); ``VmacManager`` must produce a private-mode macvlan with the RFC 3768
virtual MAC, up, with keepalived 2.2.7's sysctls, and remove it; the
``LinkWatcher`` must report admin-down and carrier loss (the bridge side of
the veth going down) as down, and recovery as up.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address, IPv4Interface

import pytest
import trio

from pyalived.config.model import VirtualIP
from pyalived.vrrp.netlink import (
    AddressManager,
    LinkWatcher,
    NetlinkThread,
    VmacManager,
    scope_number,
)
from pyalived.vrrp.ports import LinkEvent
from tests.netns._ns import NsLan, ns_lan, sh

pytestmark = pytest.mark.netns


@pytest.fixture
def lan() -> Iterator[NsLan]:
    with ns_lan(1) as net:
        yield net


@pytest.fixture
async def thread(lan: NsLan) -> AsyncIterator[NetlinkThread]:
    t = NetlinkThread(netns=lan.hosts[0])
    try:
        yield t
    finally:
        t.close()


def vip(text: str, **kw: object) -> VirtualIP:
    return VirtualIP(IPv4Interface(text), **kw)  # type: ignore[arg-type]


def test_scope_numbers() -> None:
    assert scope_number(None) == 0
    assert scope_number("host") == 254
    assert scope_number("link") == 253
    assert scope_number("site") == 200
    assert scope_number("17") == 17
    with pytest.raises(ValueError):
        scope_number("galaxy")


async def test_address_add_remove(lan: NsLan, thread: NetlinkThread) -> None:
    ns = lan.hosts[0]
    sh("ip", "-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
    mgr = AddressManager(thread)
    vips = [
        vip("198.18.7.100"),
        # (a secondary must share its primary's scope: another subnet for scope link)
        vip("198.18.9.101/24", label="eth0:vip", scope="link", brd=IPv4Address("198.18.9.255")),
        vip("198.18.8.1/30", dev="eth1", scope="host"),
    ]
    await mgr.add("eth0", vips)
    eth0 = " | ".join(lan.addrs(ns, "eth0"))
    assert "inet 198.18.7.100/32 scope global eth0" in eth0
    assert "inet 198.18.9.101/24 brd 198.18.9.255 scope link eth0:vip" in eth0
    assert "inet 198.18.8.1/30 scope host eth1" in " | ".join(lan.addrs(ns, "eth1"))
    # adding again is fine and changes nothing
    await mgr.add("eth0", vips)
    assert len(lan.addrs(ns, "eth0")) == 3
    await mgr.remove("eth0", vips[:2])
    assert [line for line in lan.addrs(ns, "eth0") if ".100/" in line or ".101/" in line] == []
    assert lan.ip(0) in " ".join(lan.addrs(ns, "eth0"))  # the primary address stays
    # removing again (and removing from a vanished device) is fine
    await mgr.remove("eth0", vips[:2])
    sh("ip", "-n", ns, "link", "del", "eth1")
    await mgr.remove("eth0", vips[2:])


async def test_address_add_failure_raises_after_retries(lan: NsLan,
                                                        thread: NetlinkThread) -> None:
    mgr = AddressManager(thread)
    with pytest.raises(OSError):
        await mgr.add("nosuch0", [vip("198.18.7.100")])
    # one bad VIP does not stop the others from being added
    with pytest.raises(OSError):
        await mgr.add("eth0", [vip("198.18.7.102", dev="nosuch0"), vip("198.18.7.103")])
    # a permanent error (a secondary whose scope differs from its primary's) is not retried
    with pytest.raises(OSError):
        await mgr.add("eth0", [vip("198.18.7.104/24", scope="host")])
    assert "198.18.7.103/32" in " ".join(lan.addrs(lan.hosts[0], "eth0"))


async def test_remove_completes_even_if_caller_cancelled(lan: NsLan,
                                                         thread: NetlinkThread) -> None:
    mgr = AddressManager(thread)
    vips = [vip(f"198.18.7.{i}") for i in range(150, 170)]
    await mgr.add("eth0", vips)
    with trio.CancelScope() as scope:
        scope.cancel()
        await mgr.remove("eth0", vips)
    # the job was queued and runs to completion in the netlink thread
    await thread.call(lambda ipr: None)
    left = {a.split()[3] for a in lan.addrs(lan.hosts[0], "eth0")}
    assert left == {f"{lan.ip(0)}/24"}


def sysctl(lan: NsLan, path: str) -> str:
    return lan.run(lan.hosts[0], "cat", f"/proc/sys/net/{path}").strip()


async def test_vmac_create_delete(lan: NsLan, thread: NetlinkThread) -> None:
    ns = lan.hosts[0]
    mgr = VmacManager(thread)
    await mgr.create("eth0", "vrrp.51", 51)
    details = sh("ip", "-n", ns, "-d", "-o", "link", "show", "vrrp.51")
    assert "vrrp.51@eth0" in details
    assert "link/ether 00:00:5e:00:01:33" in details
    assert "macvlan mode private" in details
    assert ",UP," in details
    assert sysctl(lan, "ipv4/conf/vrrp.51/arp_ignore") == "1"
    assert sysctl(lan, "ipv4/conf/vrrp.51/accept_local") == "1"
    assert sysctl(lan, "ipv4/conf/vrrp.51/promote_secondaries") == "1"
    assert sysctl(lan, "ipv4/conf/eth0/arp_ignore") == "1"
    assert sysctl(lan, "ipv4/conf/eth0/arp_filter") == "1"
    if os.path.exists("/proc/sys/net/ipv6"):
        assert sysctl(lan, "ipv6/conf/vrrp.51/disable_ipv6") == "1"
    # creating again reuses it; after a restart (another manager), a wrong MAC
    # under the name is a leftover, replaced
    await mgr.create("eth0", "vrrp.51", 51)
    assert "vrrp1.51" not in sh("ip", "-n", ns, "-o", "link", "show")
    mgr = VmacManager(thread)
    await mgr.create("eth0", "vrrp.51", 52)
    assert "link/ether 00:00:5e:00:01:34" in sh("ip", "-n", ns, "-o", "link", "show", "vrrp.51")
    # addresses can be placed on it
    await AddressManager(thread).add("vrrp.51", [vip("198.18.7.100/24")])
    assert "198.18.7.100/24" in " ".join(lan.addrs(ns, "vrrp.51"))
    await mgr.delete("vrrp.51")
    assert sh("ip", "-n", ns, "link", "show", "vrrp.51", check=False) == ""
    await mgr.delete("vrrp.51")  # already gone: fine


async def next_event(events: AsyncIterator[LinkEvent], name: str) -> LinkEvent:
    with trio.fail_after(10):
        async for event in events:
            if event.ifname == name:
                return event
    raise AssertionError("event stream ended")


async def test_link_watcher(lan: NsLan) -> None:
    ns = lan.hosts[0]
    watcher = LinkWatcher(netns=ns)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        assert watcher.is_up("eth0")
        assert watcher.is_up("lo")
        assert not watcher.is_up("nosuch0")
        events = watcher.events()
        # administratively down
        sh("ip", "-n", ns, "link", "set", "eth0", "down")
        assert await next_event(events, "eth0") == LinkEvent("eth0", False)
        assert not watcher.is_up("eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        assert await next_event(events, "eth0") == LinkEvent("eth0", True)
        # carrier loss: the peer end of the veth goes down on the bridge
        sh("ip", "-n", lan.bridge, "link", "set", lan.leg(0), "down")
        assert await next_event(events, "eth0") == LinkEvent("eth0", False)
        sh("ip", "-n", lan.bridge, "link", "set", lan.leg(0), "up")
        assert await next_event(events, "eth0") == LinkEvent("eth0", True)
        # a new interface appears (down), comes up, and is deleted
        sh("ip", "-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
        assert await next_event(events, "eth1") == LinkEvent("eth1", False)
        sh("ip", "-n", ns, "link", "set", "eth1p", "up")
        sh("ip", "-n", ns, "link", "set", "eth1", "up")
        assert await next_event(events, "eth1") == LinkEvent("eth1", True)
        sh("ip", "-n", ns, "link", "del", "eth1")
        assert await next_event(events, "eth1") == LinkEvent("eth1", False)
        assert not watcher.is_up("eth1")
        nursery.cancel_scope.cancel()
