"""Netlink side effects: virtual addresses, VMAC interfaces and link state.

Theory of operation: address and interface changes go through pyroute2, whose
0.9.7 synchronous ``IPRoute`` runs a private asyncio loop and whose sockets
belong to the thread that opened them.  So one dedicated ``NetlinkThread``
owns the ``IPRoute`` object and executes jobs (plain callables taking the
``IPRoute``) one at a time from a queue; trio tasks ``await thread.call(fn)``
and the result comes back through the trio token, so the trio loop never
blocks on netlink.  A job runs to completion even if its caller is
cancelled, which is what keeps ``AddressManager.remove`` from leaving a VIP
behind: its retries happen inside the job.  ``AddressManager`` and
``VmacManager`` are idempotent (an existing address or a missing one is not an
error) and retry a failing call a few times with a growing back-off before
raising ``OSError``.  IPv6 VIPs are added with IFA_F_NODAD, as keepalived
does: duplicate address detection (RFC 4862 §5.4) would keep a new
master's address tentative, unusable, for a second or more, while the
VRRP election has already settled who owns it.  ``ipv6_link_local`` reads
an interface's usable (neither tentative nor DAD-failed) link-local address,
the source of IPv6 adverts (RFC 5798 §5.1.2.1).  ``VmacManager`` gets the
RFC 3768 §7.3 virtual router MAC as a private-mode macvlan with the
per-interface sysctls keepalived 2.2.7 applies, so that only the VMAC
answers ARP for the virtual addresses; what to do with a VMAC left behind
by an earlier run, or with a foreign interface holding the configured name,
is decided in ``pyalived.vrrp.vmac``, whose
``LinkOps`` port ``RtnlLinkOps`` implements here (links and addresses read
with the small codec below, changes made through pyroute2).

``LinkWatcher`` needs no thread: it reads RTM_NEWLINK/RTM_DELLINK from a
non-blocking rtnetlink socket subscribed to RTMGRP_LINK, decoding the few
fields it needs itself.  The initial snapshot is a dump requested on the same
socket, so dump replies and change notifications arrive in one ordered
stream.  An interface is up when it is administratively up (IFF_UP) and
operationally running (IFF_RUNNING, i.e. it has carrier), as keepalived's
``track_interface`` sees it.  ``netns`` arguments (tests only) make every
socket of an object live in a named network namespace.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Any, TypeVar

import outcome
import trio

from pyalived.config.model import VirtualIP, VrrpInstance
from pyalived.vrrp.compile import instance_vips
from pyalived.vrrp.ports import LinkEvent
from pyalived.vrrp.vmac import LinkInfo, prepare_vmac, remove_vmac

log = logging.getLogger("pyalived.vrrp.netlink")

T = TypeVar("T")

# ---- network namespaces (used by tests to put sockets elsewhere) -----------

_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def enter_netns(name: str) -> None:
    """Move the calling thread into the named namespace (``/run/netns/NAME``) for good."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run a synchronous block in the named namespace, then come back.

    Sockets opened inside stay in that namespace.  Never ``await`` inside the
    block: other trio tasks would run in the foreign namespace.
    """
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(name)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


# ---- a minimal rtnetlink codec (links and addresses only) ------------------

NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
RTMGRP_LINK = 0x1
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_LINK = 5
IFLA_LINKINFO = 18
IFLA_LINK_NETNSID = 37
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_MACVLAN_MODE = 1
MACVLAN_MODES = {1: "private", 2: "vepa", 4: "bridge", 8: "passthru", 16: "source"}
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8
IFF_UP = 0x1
IFF_RUNNING = 0x40

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def _messages(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, body) of each netlink message in a datagram."""
    off = 0
    while off + _NLMSGHDR.size <= len(buf):
        length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < _NLMSGHDR.size:
            return
        yield mtype, buf[off + _NLMSGHDR.size : off + length]
        off += _align(length)


def _attrs(buf: bytes, off: int) -> dict[int, bytes]:
    """First value of each rtattr type from ``off`` on."""
    out: dict[int, bytes] = {}
    while off + _RTATTR.size <= len(buf):
        length, atype = _RTATTR.unpack_from(buf, off)
        if length < _RTATTR.size:
            break
        out.setdefault(atype & 0x3FFF, buf[off + _RTATTR.size : off + length])
        off += _align(length)
    return out


def _dump_request(mtype: int, body: bytes, seq: int = 1) -> bytes:
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), mtype, flags, seq, 0) + body


def _check_error(body: bytes) -> None:
    (code,) = struct.unpack_from("=i", body)
    if code < 0:
        raise OSError(-code, os.strerror(-code))


def _dump(mtype: int, body: bytes) -> list[tuple[int, bytes]]:
    """A complete rtnetlink dump, synchronously (the kernel answers at once)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        sock.send(_dump_request(mtype, body))
        out: list[tuple[int, bytes]] = []
        while True:
            for rtype, rbody in _messages(sock.recv(1 << 16)):
                if rtype == NLMSG_DONE:
                    return out
                if rtype == NLMSG_ERROR:
                    _check_error(rbody)
                    continue
                out.append((rtype, rbody))


@dataclass(frozen=True)
class LinkState:
    index: int
    name: str
    flags: int
    mac: bytes

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP) and bool(self.flags & IFF_RUNNING)


def _parse_link(body: bytes) -> LinkState | None:
    if len(body) < _IFINFOMSG.size:
        return None
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(body)
    attrs = _attrs(body, _IFINFOMSG.size)
    name = attrs.get(IFLA_IFNAME)
    if name is None:
        return None
    return LinkState(index, name.rstrip(b"\0").decode(), flags, attrs.get(IFLA_ADDRESS, b""))


def _parse_link_info(body: bytes) -> LinkInfo | None:
    """The ``pyalived.vrrp.vmac`` view of an RTM_NEWLINK message."""
    if len(body) < _IFINFOMSG.size:
        return None
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(body)
    attrs = _attrs(body, _IFINFOMSG.size)
    raw_name = attrs.get(IFLA_IFNAME)
    if raw_name is None:
        return None
    kind: str | None = None
    mode: str | None = None
    info = _attrs(attrs.get(IFLA_LINKINFO, b""), 0)
    if IFLA_INFO_KIND in info:
        kind = info[IFLA_INFO_KIND].rstrip(b"\0").decode(errors="replace")
        data = _attrs(info.get(IFLA_INFO_DATA, b""), 0)
        raw_mode = data.get(IFLA_MACVLAN_MODE)
        if kind == "macvlan" and raw_mode is not None and len(raw_mode) >= 4:
            (number,) = struct.unpack_from("=I", raw_mode)
            mode = MACVLAN_MODES.get(number, str(number))
    parent: int | None = None
    raw_link = attrs.get(IFLA_LINK)
    # With IFLA_LINK_NETNSID the lower device lives in another namespace.
    if raw_link is not None and len(raw_link) >= 4 and IFLA_LINK_NETNSID not in attrs:
        (parent,) = struct.unpack_from("=i", raw_link)
    mac = ":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b""))
    return LinkInfo(index, raw_name.rstrip(b"\0").decode(errors="replace"), kind, parent,
                    mac, mode, bool(flags & IFF_UP))


def link_infos() -> list[LinkInfo]:
    """Every interface of the calling thread's namespace, as ``pyalived.vrrp.vmac`` sees it."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    links = (_parse_link_info(b) for t, b in _dump(RTM_GETLINK, body) if t == RTM_NEWLINK)
    return [link for link in links if link is not None]


def dump_links() -> list[LinkState]:
    """Every interface of the calling thread's namespace."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    links = (_parse_link(b) for t, b in _dump(RTM_GETLINK, body) if t == RTM_NEWLINK)
    return [link for link in links if link is not None]


def ipv4_interfaces(index: int) -> list[IPv4Interface]:
    """The IPv4 addresses (with prefix length) of interface ``index``, primary first."""
    result: list[IPv4Interface] = []
    for mtype, body in _dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)):
        if mtype != RTM_NEWADDR or len(body) < _IFADDRMSG.size:
            continue
        family, plen, _flags, _scope, ifindex = _IFADDRMSG.unpack_from(body)
        if family != socket.AF_INET or ifindex != index:
            continue
        attrs = _attrs(body, _IFADDRMSG.size)
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if raw is not None and len(raw) == 4:
            result.append(IPv4Interface((IPv4Address(raw), plen)))
    return result


def ipv4_addresses(index: int) -> list[IPv4Address]:
    """The IPv4 addresses of interface ``index`` in the kernel's order (primary first)."""
    return [interface.ip for interface in ipv4_interfaces(index)]


IFA_F_NODAD = 0x02  # linux/if_addr.h: no duplicate address detection
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
INFINITY_LIFE_TIME = 0xFFFFFFFF  # linux/if_addr.h: a lifetime that never ends


def ipv6_interfaces(index: int) -> list[tuple[IPv6Interface, int]]:
    """The IPv6 addresses (with prefix length) of interface ``index`` and their flags."""
    result: list[tuple[IPv6Interface, int]] = []
    for mtype, body in _dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_INET6, 0, 0, 0, 0)):
        if mtype != RTM_NEWADDR or len(body) < _IFADDRMSG.size:
            continue
        family, plen, flags, _scope, ifindex = _IFADDRMSG.unpack_from(body)
        if family != socket.AF_INET6 or ifindex != index:
            continue
        attrs = _attrs(body, _IFADDRMSG.size)
        if IFA_FLAGS in attrs and len(attrs[IFA_FLAGS]) >= 4:
            flags = struct.unpack_from("=I", attrs[IFA_FLAGS])[0]
        raw = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
        if raw is not None and len(raw) == 16:
            result.append((IPv6Interface((IPv6Address(raw), plen)), flags))
    return result


def ipv6_link_local(index: int) -> IPv6Address | None:
    """The first usable (not tentative, DAD not failed) link-local IPv6 address of
    interface ``index``, as keepalived picks the source of IPv6 adverts and NAs."""
    for interface, flags in ipv6_interfaces(index):
        if interface.ip.is_link_local and not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
            return interface.ip
    return None


# ---- the netlink thread ----------------------------------------------------


@dataclass
class _Job:
    fn: Callable[[Any], Any]
    deliver: Callable[[outcome.Outcome[Any]], None]


class NetlinkThread:
    """One thread owning a pyroute2 ``IPRoute``; jobs run there one at a time.

    The thread starts on the first ``call`` and lives until ``close()`` (it is
    a daemon thread, so a forgotten close does not hold the process).  With
    ``netns`` the thread moves into that namespace first, so its netlink
    socket and its ``/proc/sys/net`` writes act there.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name="pyalived-netlink", daemon=True
                )
                self._thread.start()

    def _main(self) -> None:
        ipr: Any = None
        failure: BaseException | None = None
        try:
            if self.netns is not None:
                enter_netns(self.netns)
            from pyroute2 import IPRoute  # imported here: its cost is paid off the trio loop

            ipr = IPRoute(groups=0)
        except Exception as exc:
            failure = exc
            log.error("cannot open the netlink socket: %s", exc)
        try:
            while (job := self._jobs.get()) is not None:
                if ipr is None:
                    error = OSError(errno.EIO, f"netlink unavailable: {failure}")
                    job.deliver(outcome.Error(error))
                else:
                    job.deliver(outcome.capture(job.fn, ipr))
        finally:
            if ipr is not None:
                ipr.close()

    async def call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(ipr)`` in the netlink thread; return its result or raise its exception."""
        self._ensure_started()
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome[Any]] = []

        def arrived(result: outcome.Outcome[Any]) -> None:
            box.append(result)
            done.set()

        def deliver(result: outcome.Outcome[Any]) -> None:
            try:
                token.run_sync_soon(arrived, result)
            except trio.RunFinishedError:
                pass

        self._jobs.put(_Job(fn, deliver))
        await done.wait()
        value: T = box[0].unwrap()
        return value

    def close(self) -> None:
        """Finish the queued jobs and stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout=10.0)


_default_thread: NetlinkThread | None = None


def default_thread() -> NetlinkThread:
    """The process-wide netlink thread for the daemon's own namespace."""
    global _default_thread
    if _default_thread is None:
        _default_thread = NetlinkThread()
    return _default_thread


def _netlink_errno(exc: Exception) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    if isinstance(exc, OSError):
        return exc.errno
    return None


# Errors that a retry cannot cure: the request itself is wrong.
PERMANENT_ERRORS = frozenset({errno.EINVAL, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP})


def _retrying(what: str, attempts: int, first_delay: float, op: Callable[[], T]) -> T:
    """Run ``op`` until it succeeds, sleeping (in the netlink thread) between tries."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return op()
        except Exception as exc:
            if attempt == attempts or _netlink_errno(exc) in PERMANENT_ERRORS:
                code = _netlink_errno(exc) or errno.EIO
                raise OSError(code, f"{what}: {exc}") from exc
            log.warning("%s failed (%s), retry %d/%d in %gs", what, exc, attempt,
                        attempts - 1, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable: the last attempt returns or raises")


def _lookup(ipr: Any, ifname: str) -> int | None:
    found: list[int] = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


# ---- addresses ---------------------------------------------------------------

SCOPES = {"global": 0, "universe": 0, "site": 200, "link": 253, "host": 254, "nowhere": 255}
ADD_ATTEMPTS = 4  # back-off 0.05, 0.1, 0.2 s
REMOVE_ATTEMPTS = 8  # back-off up to 3.2 s: a VIP must not stay behind
FIRST_DELAY = 0.05


def scope_number(scope: str | None) -> int:
    """``scope`` of a virtual_ipaddress line as the kernel number (default global)."""
    if scope is None:
        return 0
    if scope.isdigit():
        return int(scope)
    try:
        return SCOPES[scope]
    except KeyError:
        raise ValueError(f"unknown address scope {scope!r}") from None


class AddressManager:
    """``ports.AddressManager`` over netlink (RTM_NEWADDR/RTM_DELADDR)."""

    def __init__(self, thread: NetlinkThread | None = None) -> None:
        self._thread = thread or default_thread()

    async def add(self, default_dev: str, vips: Sequence[VirtualIP]) -> None:
        await self._thread.call(lambda ipr: self._apply(ipr, "add", default_dev, vips))

    async def remove(self, default_dev: str, vips: Sequence[VirtualIP]) -> None:
        await self._thread.call(lambda ipr: self._apply(ipr, "del", default_dev, vips))

    @staticmethod
    def _apply(ipr: Any, cmd: str, default_dev: str, vips: Sequence[VirtualIP]) -> None:
        first_error: OSError | None = None
        for vip in vips:
            dev = vip.dev or default_dev

            def op(vip: VirtualIP = vip, dev: str = dev) -> None:
                index = _lookup(ipr, dev)
                if index is None:
                    if cmd == "del":
                        return  # the address went away with its interface
                    raise OSError(errno.ENODEV, f"no interface {dev}")
                kwargs: dict[str, Any] = {
                    "index": index,
                    "address": str(vip.ip),
                    "prefixlen": vip.address.network.prefixlen,
                }
                if cmd == "add" and vip.ip.version == 6:
                    # Usable at once: duplicate address detection would hold a
                    # new master's address tentative for a second or more.
                    kwargs["flags"] = IFA_F_NODAD
                if cmd == "add":
                    kwargs["scope"] = scope_number(vip.scope)
                    if vip.label is not None:
                        kwargs["label"] = vip.label
                    if vip.brd is not None:
                        kwargs["broadcast"] = str(vip.brd)
                try:
                    ipr.addr(cmd, **kwargs)
                except Exception as exc:
                    code = _netlink_errno(exc)
                    if cmd == "add" and code == errno.EEXIST:
                        return
                    if cmd == "del" and code == errno.EADDRNOTAVAIL:
                        return
                    raise

            attempts = ADD_ATTEMPTS if cmd == "add" else REMOVE_ATTEMPTS
            try:
                _retrying(f"{cmd} {vip.address} dev {dev}", attempts, FIRST_DELAY, op)
            except OSError as exc:
                log.error("%s", exc)
                # go on with the other addresses, above all when removing
                first_error = first_error or exc
        if first_error is not None:
            raise first_error


def release_addresses(instances: Sequence[VrrpInstance]) -> None:
    """Remove every VIP of ``instances`` now, from a process without trio.

    For the supervisor, when a VRRP child could not release them itself (it
    had to be killed, or died with ``-R``): no VIP may outlive its daemon.
    """
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for inst in instances:
            try:
                AddressManager._apply(
                    ipr, "del", inst.effective_vmac_name or inst.interface, instance_vips(inst)
                )
            except OSError:
                pass  # logged per address; the others were still tried


# ---- VMAC --------------------------------------------------------------------


def _write_sysctl(path: str, value: str) -> None:
    p = Path(path)
    if p.exists():
        p.write_text(value)


class RtnlLinkOps:
    """``pyalived.vrrp.vmac.LinkOps`` in the netlink thread: reads through the codec
    above, changes through the thread's pyroute2 ``IPRoute``; errors become ``OSError``."""

    def __init__(self, ipr: Any) -> None:
        self._ipr = ipr

    @staticmethod
    def _call(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except OSError:
            raise
        except Exception as exc:
            raise OSError(_netlink_errno(exc) or errno.EIO, f"{what}: {exc}") from exc

    def links(self) -> list[LinkInfo]:
        return link_infos()

    def add_macvlan(self, name: str, parent: int, mac: str) -> None:
        self._call(f"add macvlan {name}", lambda: self._ipr.link(
            "add", ifname=name, kind="macvlan", link=parent, macvlan_mode="private",
            address=mac))

    def delete(self, index: int) -> None:
        self._call(f"delete ifindex {index}", lambda: self._ipr.link("del", index=index))

    def set_up(self, index: int, up: bool) -> None:
        state = "up" if up else "down"
        self._call(f"set ifindex {index} {state}",
                   lambda: self._ipr.link("set", index=index, state=state))

    def rename(self, index: int, name: str) -> None:
        self._call(f"rename ifindex {index} to {name}",
                   lambda: self._ipr.link("set", index=index, ifname=name))

    def set_private(self, index: int) -> None:
        self._call(f"set ifindex {index} macvlan mode private", lambda: self._ipr.link(
            "set", index=index, kind="macvlan", macvlan_mode="private"))

    def addresses(self, index: int) -> list[IPv4Interface | IPv6Interface]:
        return [*ipv4_interfaces(index), *(i for i, _flags in ipv6_interfaces(index))]

    def link_local(self, index: int) -> IPv6Address | None:
        return ipv6_link_local(index)

    def add_link_local(self, index: int, address: IPv6Address) -> None:
        try:
            self._call(f"add {address} to ifindex {index}", lambda: self._ipr.addr(
                "add", index=index, address=str(address), prefixlen=64,
                flags=IFA_F_NODAD, IFA_CACHEINFO={
                    "ifa_preferred": 0, "ifa_valid": INFINITY_LIFE_TIME}))
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise

    def delete_address(self, index: int, address: IPv4Interface | IPv6Interface) -> None:
        try:
            self._call(f"delete {address} from ifindex {index}", lambda: self._ipr.addr(
                "del", index=index, address=str(address.ip),
                prefixlen=address.network.prefixlen))
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise

    def write_sysctl(self, path: str, value: str) -> None:
        _write_sysctl(f"/proc/sys/net/{path}", value)


class VmacManager:
    """``ports.VmacManager``: a private-mode macvlan with the VRRP virtual MAC.

    ``create`` adopts a leftover VMAC rather than failing on it and returns
    the name the VMAC ended up with (``pyalived.vrrp.vmac`` has the rules);
    ``delete`` deletes only a VMAC, never another kind of interface.  The
    VMACs it made stay claimed until deleted, so that one instance's VMAC
    (an IPv4 and an IPv6 instance may share a VRID) is never taken for a
    leftover by another.
    """

    def __init__(self, thread: NetlinkThread | None = None) -> None:
        self._thread = thread or default_thread()
        # name -> (parent, VRID, family) of the VMACs this daemon's instances use
        # (touched in the netlink thread only); asking again for one's own is fine.
        self._claimed: dict[str, tuple[str, int, int]] = {}

    async def create(self, parent: str, name: str, vrid: int, family: int = 4) -> str:
        owner = (parent, vrid, family)

        def job(ipr: Any) -> str:
            ops = RtnlLinkOps(ipr)
            others = frozenset(n for n, o in self._claimed.items() if o != owner)
            made = _retrying(f"create VMAC {name} on {parent}", ADD_ATTEMPTS, FIRST_DELAY,
                             lambda: prepare_vmac(ops, parent, name, vrid, family, others))
            self._claimed[made] = owner
            return made

        return await self._thread.call(job)

    async def delete(self, name: str) -> None:
        def job(ipr: Any) -> None:
            ops = RtnlLinkOps(ipr)
            try:
                _retrying(f"delete VMAC {name}", REMOVE_ATTEMPTS, FIRST_DELAY,
                          lambda: remove_vmac(ops, name))
            finally:  # a VMAC left behind is a leftover for the next one to adopt
                self._claimed.pop(name, None)

        await self._thread.call(job)


# ---- link state ----------------------------------------------------------------


class LinkWatcher:
    """``ports.LinkWatcher`` over an RTMGRP_LINK subscription.

    Start ``run`` (alias ``run_forever``) under a nursery with
    ``nursery.start``; once started, ``is_up`` answers from the kernel's state
    and every ``events()`` iterator receives each change of an interface's
    up/down state (and the first sighting of a new interface).
    """

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._links: dict[str, LinkState] = {}
        self._names: dict[int, str] = {}
        self._listeners: list[trio.MemorySendChannel[LinkEvent]] = []

    def is_up(self, ifname: str) -> bool:
        link = self._links.get(ifname)
        return link is not None and link.up

    def links(self) -> dict[str, LinkState]:
        return dict(self._links)

    async def events(self) -> AsyncIterator[LinkEvent]:
        tx, rx = trio.open_memory_channel[LinkEvent](math.inf)
        self._listeners.append(tx)
        try:
            async for event in rx:
                yield event
        finally:
            self._listeners.remove(tx)

    def _emit(self, ifname: str, up: bool) -> None:
        for tx in self._listeners:
            tx.send_nowait(LinkEvent(ifname, up))

    def _update(self, mtype: int, body: bytes) -> None:
        link = _parse_link(body)
        if link is None:
            return
        old_name = self._names.get(link.index)
        if mtype == RTM_DELLINK:
            self._names.pop(link.index, None)
            gone = self._links.pop(link.name, None)
            if gone is not None and gone.up:
                self._emit(link.name, False)
            return
        if old_name is not None and old_name != link.name:  # renamed
            gone = self._links.pop(old_name, None)
            if gone is not None and gone.up:
                self._emit(old_name, False)
        before = self._links.get(link.name)
        self._names[link.index] = link.name
        self._links[link.name] = link
        if before is None or before.up != link.up:
            self._emit(link.name, link.up)

    def _open(self) -> trio.socket.SocketType:
        with in_netns(self._netns):
            raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                socket.NETLINK_ROUTE)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            raw.bind((0, RTMGRP_LINK))
            raw.setblocking(False)
        except OSError:
            raw.close()
            raise
        return trio.socket.from_stdlib_socket(raw)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Track the kernel's links until cancelled."""
        with self._open() as sock:
            started = False
            dump_seq = 0
            while True:
                dump_seq += 1
                await sock.send(_dump_request(RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0),
                                              dump_seq))
                try:
                    while True:
                        data = await sock.recv(1 << 16)
                        for mtype, body in _messages(data):
                            if mtype in (RTM_NEWLINK, RTM_DELLINK):
                                self._update(mtype, body)
                            elif mtype == NLMSG_DONE and not started:
                                started = True
                                task_status.started()
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    # Notifications were lost: take a fresh snapshot.
                    log.warning("link notifications overran; re-reading every link")
                    fresh = {link.name for link in self._dump_now()}
                    for name in list(self._links):
                        if name not in fresh:
                            link = self._links.pop(name)
                            self._names.pop(link.index, None)
                            if link.up:
                                self._emit(name, False)

    run_forever = run

    def _dump_now(self) -> list[LinkState]:
        with in_netns(self._netns):
            return dump_links()
