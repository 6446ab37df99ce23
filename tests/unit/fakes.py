"""Fakes for every protocol of ``pyalived.vrrp.ports`` (and ``pyalived.vrrp.vmac.LinkOps``).

Each fake records what it was asked to do, stamped with ``trio.current_time()``
so that tests under trio's MockClock can assert exact times.  Nothing here
touches the host.
"""

from __future__ import annotations

import errno
import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_interface
from typing import Any

import trio

from pyalived.config.model import VirtualIP, VirtualRoute, VirtualRule
from pyalived.config.script_check import RunAs
from pyalived.vrrp.net6 import Datagram6
from pyalived.vrrp.ports import FirewallError, LinkEvent
from pyalived.vrrp.vmac import LinkInfo


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:  # outside trio
        return math.nan


@dataclass(frozen=True)
class SentDatagram:
    time: float
    datagram: bytes
    dst: IPv4Address


class FakeAdvertSocket:
    """Records sent datagrams; ``inject`` makes ``receive`` return a datagram."""

    def __init__(self, ifname: str = "eth0", proto: int = 112) -> None:
        self.ifname = ifname
        self.proto = proto
        self.sent: list[SentDatagram] = []
        self.closed = False
        self.fail_send: bool = False
        self._tx, self._rx = trio.open_memory_channel[bytes](math.inf)

    def send(self, datagram: bytes, dst: IPv4Address) -> None:
        if self.closed:
            raise OSError("socket closed")
        if self.fail_send:
            raise OSError("send failed")
        self.sent.append(SentDatagram(_now(), datagram, dst))

    async def receive(self) -> bytes:
        return await self._rx.receive()

    def inject(self, datagram: bytes) -> None:
        self._tx.send_nowait(datagram)

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class SentGarp:
    time: float
    ips: tuple[IPv4Address, ...]
    count: int


@dataclass(frozen=True)
class SentNa:
    time: float
    ips: tuple[IPv6Address, ...]
    count: int


class FakeGarpSocket:
    def __init__(self, ifname: str = "eth0") -> None:
        self.ifname = ifname
        self.sent: list[SentGarp] = []
        self.sent_na: list[SentNa] = []
        self.closed = False

    def send_garp(self, ips: Sequence[IPv4Address], count: int) -> None:
        if self.closed:
            raise OSError("socket closed")
        self.sent.append(SentGarp(_now(), tuple(ips), count))

    def send_na(self, ips: Sequence[IPv6Address], count: int) -> None:
        if self.closed:
            raise OSError("socket closed")
        self.sent_na.append(SentNa(_now(), tuple(ips), count))

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class SentMessage6:
    time: float
    message: bytes
    src: IPv6Address
    dst: IPv6Address


class FakeAdvert6Socket:
    """Records sent IPv6 VRRP messages; ``inject`` makes ``receive6`` return one."""

    def __init__(self, ifname: str = "eth0") -> None:
        self.ifname = ifname
        self.sent: list[SentMessage6] = []
        self.closed = False
        self._tx, self._rx = trio.open_memory_channel[Datagram6](math.inf)

    def send6(self, message: bytes, src: IPv6Address, dst: IPv6Address) -> None:
        if self.closed:
            raise OSError("socket closed")
        self.sent.append(SentMessage6(_now(), message, src, dst))

    async def receive6(self) -> Datagram6:
        return await self._rx.receive()

    def inject(self, message: bytes, src: IPv6Address, dst: IPv6Address,
               hop_limit: int = 255) -> None:
        self._tx.send_nowait(Datagram6(message, src, dst, hop_limit, _now()))

    def close(self) -> None:
        self.closed = True


class FakeSocketFactory:
    """Hands out (and remembers) one fake socket per (interface, protocol); also a
    ``SocketFactory6`` whose link-local addresses are ``link_locals``."""

    def __init__(self, link_locals: dict[str, IPv6Address] | None = None) -> None:
        self.advert: dict[tuple[str, int], FakeAdvertSocket] = {}
        self.advert6: dict[str, FakeAdvert6Socket] = {}
        self.garp: dict[str, FakeGarpSocket] = {}
        self.link_locals = link_locals or {}

    def open_advert6(self, ifname: str) -> FakeAdvert6Socket:
        sock = FakeAdvert6Socket(ifname)
        self.advert6[ifname] = sock
        return sock

    def link_local(self, ifname: str) -> IPv6Address:
        try:
            return self.link_locals[ifname]
        except KeyError:
            raise OSError(f"no link-local address on {ifname}") from None

    def open_advert(self, ifname: str, proto: int) -> FakeAdvertSocket:
        sock = FakeAdvertSocket(ifname, proto)
        self.advert[(ifname, proto)] = sock
        return sock

    def open_garp(self, ifname: str) -> FakeGarpSocket:
        sock = FakeGarpSocket(ifname)
        self.garp[ifname] = sock
        return sock


@dataclass(frozen=True)
class AddressCall:
    time: float
    op: str  # "add" or "remove"
    default_dev: str
    vips: tuple[VirtualIP, ...]


class FakeAddressManager:
    """Keeps the set of (dev, address) present; optionally fails."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[AddressCall] = []
        self.present: set[tuple[str, str]] = set()
        self.fail: bool = False
        self.delay = delay

    async def add(self, default_dev: str, vips: Sequence[VirtualIP]) -> None:
        self.calls.append(AddressCall(_now(), "add", default_dev, tuple(vips)))
        if self.delay:
            await trio.sleep(self.delay)
        if self.fail:
            raise OSError("netlink failure")
        for vip in vips:
            self.present.add((vip.dev or default_dev, str(vip.address)))

    async def remove(self, default_dev: str, vips: Sequence[VirtualIP]) -> None:
        self.calls.append(AddressCall(_now(), "remove", default_dev, tuple(vips)))
        if self.delay:
            await trio.sleep(self.delay)
        if self.fail:
            raise OSError("netlink failure")
        for vip in vips:
            self.present.discard((vip.dev or default_dev, str(vip.address)))


@dataclass(frozen=True)
class RouteCall:
    time: float
    op: str  # "add" or "remove"
    routes: tuple[str, ...]  # str() of each route and rule
    rules: tuple[str, ...]
    addresses: frozenset[tuple[str, str]]  # the addresses present at the call


class FakeRouteManager:
    """Keeps the routes and rules present (by their text); optionally fails.  Each call
    records which addresses of ``addresses`` were present then, to check the order."""

    def __init__(self, addresses: FakeAddressManager | None = None) -> None:
        self.calls: list[RouteCall] = []
        self.routes: set[str] = set()
        self.rules: set[str] = set()
        self.fail = False
        self._addresses = addresses

    def _call(self, op: str, routes: Sequence[VirtualRoute],
              rules: Sequence[VirtualRule]) -> None:
        present = frozenset(self._addresses.present) if self._addresses else frozenset()
        self.calls.append(RouteCall(_now(), op, tuple(map(str, routes)),
                                    tuple(map(str, rules)), present))
        if self.fail:
            raise OSError("netlink failure")

    async def add(self, routes: Sequence[VirtualRoute], rules: Sequence[VirtualRule]) -> None:
        self._call("add", routes, rules)
        self.routes |= {str(r) for r in routes}
        self.rules |= {str(r) for r in rules}

    async def remove(self, routes: Sequence[VirtualRoute],
                     rules: Sequence[VirtualRule]) -> None:
        self._call("remove", routes, rules)
        self.routes -= {str(r) for r in routes}
        self.rules -= {str(r) for r in rules}


class FakeVmacManager:
    """``names`` maps a configured VMAC name to the one ``create`` ends up using."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.present: dict[str, tuple[str, int]] = {}
        self.calls: list[tuple[float, str, str]] = []
        self.names = dict(names or {})
        self.families: dict[str, int] = {}

    async def create(self, parent: str, name: str, vrid: int, family: int = 4) -> str:
        self.calls.append((_now(), "create", name))
        actual = self.names.get(name, name)
        self.present[actual] = (parent, vrid)
        self.families[actual] = family
        return actual

    async def delete(self, name: str) -> None:
        self.calls.append((_now(), "delete", name))
        self.present.pop(name, None)


class FakeLinkWatcher:
    """Link states set by the test; every ``events()`` iterator sees every change."""

    def __init__(self, up: Sequence[str] = ("eth0",)) -> None:
        self.states: dict[str, bool] = dict.fromkeys(up, True)
        self._listeners: list[trio.MemorySendChannel[LinkEvent]] = []

    def is_up(self, ifname: str) -> bool:
        return self.states.get(ifname, False)

    def set(self, ifname: str, up: bool) -> None:
        self.states[ifname] = up
        for tx in self._listeners:
            tx.send_nowait(LinkEvent(ifname, up))

    async def events(self) -> AsyncIterator[LinkEvent]:
        tx, rx = trio.open_memory_channel[LinkEvent](math.inf)
        self._listeners.append(tx)
        try:
            async for event in rx:
                yield event
        finally:
            self._listeners.remove(tx)


@dataclass(frozen=True)
class ScriptCall:
    time: float
    argv: tuple[str, ...]
    user: str | None
    timeout: float | None = None
    group: str | None = None


@dataclass
class FakeScriptRunner:
    """``results`` maps argv[0] to an exit status or to a callable returning one.

    ``durations`` maps argv[0] to how long (trio time) a run takes; a run
    longer than its timeout returns -1 at the timeout, as the real runner does.
    """

    results: dict[str, int | Callable[[], int]] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    runs: list[ScriptCall] = field(default_factory=list)
    notified: list[ScriptCall] = field(default_factory=list)

    async def run(self, argv: Sequence[str], timeout: float | None, user: str | None,
                  group: str | None = None) -> int:
        self.runs.append(ScriptCall(_now(), tuple(argv), user, timeout, group))
        duration = self.durations.get(argv[0], 0.0)
        if timeout is not None and duration > timeout:
            await trio.sleep(timeout)
            return -1
        if duration:
            await trio.sleep(duration)
        result = self.results.get(argv[0], 0)
        return result() if callable(result) else result

    def notify(self, argv: Sequence[str], user: str | None, group: str | None = None) -> None:
        self.notified.append(ScriptCall(_now(), tuple(argv), user, group=group))


@dataclass
class FakeLink:
    name: str
    kind: str | None = None
    parent: int | None = None
    mac: str = ""
    mode: str | None = None
    up: bool = False
    addresses: list[IPv4Interface | IPv6Interface] = field(default_factory=list)
    fixed_mode: bool = False  # the fake kernel refuses to change its macvlan mode
    deprecated: set[IPv6Address] = field(default_factory=set)  # added with preferred_lft 0


class FakeLinkOps:
    """``pyalived.vrrp.vmac.LinkOps`` over an in-memory model of the kernel's rules.

    It enforces what makes leftover VMACs hard: two macvlans of one parent
    with the same MAC cannot both be up (EADDRINUSE), a name is unique
    (EEXIST), and (as on kernels before 6.x) a running interface cannot be
    renamed (EBUSY).  Deleting a link deletes its macvlan children.  As
    addrconf does, bringing a link up with IPv6 on and addr_gen_mode 0 gives
    it an EUI-64 link-local address, and IPv6 addresses go when IPv6 is
    disabled.  ``ops`` records every change made, in order.
    """

    def __init__(self) -> None:
        self.table: dict[int, FakeLink] = {}
        self.sysctls: dict[str, str] = {}
        self.ops: list[tuple[object, ...]] = []
        self._next = 1

    # -- building the scene --

    def add(self, name: str, *, kind: str | None = None, parent: str | None = None,
            mac: str = "", mode: str | None = None, up: bool = False,
            addresses: tuple[str, ...] = (), fixed_mode: bool = False) -> int:
        index = self._next
        self._next += 1
        parent_index = None if parent is None else self.index(parent)
        if kind == "macvlan" and mode is None:
            mode = "private"
        self.table[index] = FakeLink(name, kind, parent_index, mac, mode, up,
                                     [ip_interface(a) for a in addresses], fixed_mode)
        return index

    def index(self, name: str) -> int:
        for index, link in self.table.items():
            if link.name == name:
                return index
        raise KeyError(name)

    def get(self, name: str) -> FakeLink:
        return self.table[self.index(name)]

    def names(self) -> set[str]:
        return {link.name for link in self.table.values()}

    # -- LinkOps --

    def _link(self, index: int) -> FakeLink:
        try:
            return self.table[index]
        except KeyError:
            raise OSError(errno.ENODEV, f"no ifindex {index}") from None

    def links(self) -> list[LinkInfo]:
        return [LinkInfo(i, link.name, link.kind, link.parent, link.mac, link.mode, link.up)
                for i, link in sorted(self.table.items())]

    def add_macvlan(self, name: str, parent: int, mac: str) -> None:
        self.ops.append(("add_macvlan", name, parent, mac))
        self._link(parent)
        if name in self.names():
            raise OSError(errno.EEXIST, f"{name} exists")
        index = self._next
        self._next += 1
        self.table[index] = FakeLink(name, "macvlan", parent, mac, "private")

    def delete(self, index: int) -> None:
        self.ops.append(("delete", self._link(index).name))
        del self.table[index]
        for child in [i for i, link in self.table.items() if link.parent == index]:
            del self.table[child]

    def set_up(self, index: int, up: bool) -> None:
        link = self._link(index)
        self.ops.append(("set_up", link.name, up))
        if up and link.kind == "macvlan" and not link.up:
            for other_index, other in self.table.items():
                if (other_index != index and other.up and other.kind == "macvlan"
                        and other.parent == link.parent and other.mac == link.mac):
                    raise OSError(errno.EADDRINUSE, "Address already in use")
        if up and not link.up and self._ipv6_on(link) and self.sysctls.get(
                f"ipv6/conf/{link.name}/addr_gen_mode", "0") == "0" and link.mac:
            link.addresses.append(IPv6Interface((_eui64(link.mac), 64)))
        link.up = up

    def _ipv6_on(self, link: FakeLink) -> bool:
        return self.sysctls.get(f"ipv6/conf/{link.name}/disable_ipv6", "0") == "0"

    def rename(self, index: int, name: str) -> None:
        link = self._link(index)
        self.ops.append(("rename", link.name, name))
        if name in self.names() - {link.name}:
            raise OSError(errno.EEXIST, f"{name} exists")
        if link.up:
            raise OSError(errno.EBUSY, "Device or resource busy")
        for key in [k for k in self.sysctls if f"/conf/{link.name}/" in k]:
            family, _conf, _old, leaf = key.split("/")
            self.sysctls[f"{family}/conf/{name}/{leaf}"] = self.sysctls.pop(key)
        link.name = name

    def set_private(self, index: int) -> None:
        link = self._link(index)
        self.ops.append(("set_private", link.name))
        if link.kind != "macvlan" or link.fixed_mode:
            raise OSError(errno.EINVAL, "Invalid argument")
        link.mode = "private"

    def addresses(self, index: int) -> list[IPv4Interface | IPv6Interface]:
        return list(self._link(index).addresses)

    def delete_address(self, index: int, address: IPv4Interface | IPv6Interface) -> None:
        link = self._link(index)
        self.ops.append(("delete_address", link.name, str(address)))
        link.addresses.remove(address)

    def link_local(self, index: int) -> IPv6Address | None:
        for address in self._link(index).addresses:
            if address.version == 6 and address.ip.is_link_local:
                return IPv6Address(address.ip)
        return None

    def add_link_local(self, index: int, address: IPv6Address) -> None:
        link = self._link(index)
        self.ops.append(("add_link_local", link.name, str(address)))
        if not self._ipv6_on(link):
            raise OSError(errno.EACCES, "IPv6 is disabled on this interface")
        interface = IPv6Interface((address, 64))
        if interface not in link.addresses:
            link.addresses.append(interface)
        link.deprecated.add(address)

    def write_sysctl(self, path: str, value: str) -> None:
        name = path.split("/")[2]
        if name in self.names():  # as /proc/sys/net: only existing interfaces
            self.sysctls[path] = value
            if path.endswith("/disable_ipv6") and value == "1":
                link = self.get(name)
                link.addresses = [a for a in link.addresses if a.version == 4]


def _eui64(mac: str) -> IPv6Address:
    """The link-local address the kernel derives from ``mac`` (RFC 4291 appendix A)."""
    octets = bytes.fromhex(mac.replace(":", ""))
    iid = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return IPv6Address(b"\xfe\x80" + bytes(6) + iid)


class FakeNft:
    """An nftables ``NftRunner`` keeping a small model of the tables it was asked to build:
    per (family, table) its sets' elements and its number of rules.  ``fail`` makes the
    next batches fail (all or nothing, as nftables does); every batch is recorded."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[dict[str, Any]]]] = []
        self.tables: dict[tuple[str, str], dict[str, Any]] = {}
        self.fail = 0  # number of batches still to refuse

    async def run(self, commands: list[dict[str, Any]]) -> None:
        self.batches.append((_now(), commands))
        if self.fail:
            self.fail -= 1
            raise FirewallError("Could not process rule: Operation not permitted")
        tables = {k: {"sets": {n: set(e) for n, e in v["sets"].items()}, "rules": v["rules"]}
                  for k, v in self.tables.items()}
        for cmd in commands:
            (verb, obj), = cmd.items()
            (kind, body), = obj.items()
            key = (body["family"], body.get("table", body.get("name")))
            if kind == "table":
                if verb == "add":
                    tables.setdefault(key, {"sets": {}, "rules": 0})
                elif key in tables:
                    del tables[key]
                else:
                    raise FirewallError("No such file or directory")
            elif kind == "set":
                tables[key]["sets"][body["name"]] = {json.dumps(e) for e in body.get("elem", [])}
            elif kind == "rule":
                tables[key]["rules"] += 1
            elif kind == "element":
                elems = tables[key]["sets"][body["name"]]
                for e in body["elem"]:
                    if verb == "add":
                        elems.add(json.dumps(e))
                    else:
                        elems.remove(json.dumps(e))
        self.tables = tables

    def elements(self, family: str = "ip", table: str = "keepalived",
                 name: str = "vips") -> set[object]:
        return {json.loads(e) for e in self.tables[(family, table)]["sets"][name]
                if not e.startswith("{")} | {
            tuple(json.loads(e)["concat"]) for e in self.tables[(family, table)]["sets"][name]
            if e.startswith("{")}


class EveryScriptRuns:
    """``ScriptHost`` of a host where every script named exists, is safe, and every user
    resolves (to root's ids), ``keepalived_script`` too: for tests about parsing, not
    about finding scripts."""

    def resolve_user(self, user: str, group: str | None) -> RunAs | str:
        return RunAs(user, 0, frozenset({0}))

    def user_exists(self, name: str) -> bool:
        return True

    def find(self, program: str, who: RunAs) -> str | None:
        return program if program.startswith("/") else f"/usr/bin/{program}"

    def insecurity(self, real: str) -> str | None:
        return None
