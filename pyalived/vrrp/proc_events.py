"""Process events for ``vrrp_track_process``: the kernel's connector, and /proc.

Theory of operation: keepalived learns about processes from the kernel's
process-events connector (``CONFIG_PROC_EVENTS``): a ``NETLINK_CONNECTOR``
socket subscribed to ``CN_IDX_PROC`` receives one message per fork, exec,
rename (comm) and exit of every process on the host.  ``decode_events`` is
the pure codec of those messages (``struct nlmsghdr``, ``struct cn_msg``,
``struct proc_event``); ``encode_listen`` the subscription.

The kernel serves the connector in its initial network namespace only: a
daemon started inside another namespace (``ip netns exec``) gets
ECONNREFUSED when it subscribes.  ``open_connector`` then opens the socket
in the initial namespace instead -- the namespace of the kernel thread
``kthreadd`` (pid 2), entered with ``setns`` by a short-lived thread, as a
socket keeps the namespace it was made in.  This needs CAP_SYS_ADMIN; when
it fails, or the kernel has no connector, pyalived falls back to scanning
/proc every ``POLL_INTERVAL`` seconds, and says so in the log; the exit of a
process that counts is then still seen at once, through a pidfd
(``pidfd_open``, Linux 5.3) per such process, readable when it exits.

``ProcessWatcher`` is the one trio service of every ``vrrp_track_process``
in the VRRP child.  It scans /proc at start (``scan_proc``), then feeds
each connector event to the pure ``ProcessTable``
(``pyalived.vrrp.track_process``), reading ``/proc/PID/stat`` (and
``cmdline`` when a tracked process needs it) for exec, fork and rename
events; it reports status changes to the subscribers of each name.  When
the socket overflows (ENOBUFS: the host made processes faster than we
read), events were lost, so it scans /proc again.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import os
import socket
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from pyalived.config.model import TrackProcess
from pyalived.vrrp.track_process import Change, ProcessTable, ProcInfo

log = logging.getLogger("pyalived.vrrp.proc_events")

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3

PROC_EVENT_NONE = 0x00000000
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_COMM = 0x00000200
PROC_EVENT_EXIT = 0x80000000

CLONE_NEWNET = 0x40000000
INIT_NETNS = "/proc/2/ns/net"  # kthreadd's: the kernel's initial network namespace

PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread
POLL_INTERVAL = 0.5  # seconds between /proc scans without the connector
RCVBUF = 4 << 20  # bytes: room for bursts of process events

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_PIDS = struct.Struct("=IIII")


@dataclass(frozen=True)
class ProcEvent:
    kind: int  # PROC_EVENT_*
    pid: int  # the process (thread group) concerned: the child of a fork
    thread: bool = False  # the event is about a thread, not a process
    err: int = 0  # PROC_EVENT_NONE: the subscription's answer
    parent: int = 0  # PROC_EVENT_FORK: the parent process


def encode_listen() -> bytes:
    """The netlink message subscribing to process events."""
    op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn


def decode_events(data: bytes) -> list[ProcEvent]:
    """The process events of one datagram (other connector messages are skipped)."""
    out: list[ProcEvent] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length = _NLMSGHDR.unpack_from(data, offset)[0]
        if length < _NLMSGHDR.size:
            break
        body = offset + _NLMSGHDR.size
        offset += (length + 3) & ~3
        if body + _CN_MSG.size + _EVENT_HEAD.size > len(data):
            break
        idx, _val, _seq, _ack, _len, _flags = _CN_MSG.unpack_from(data, body)
        if idx != CN_IDX_PROC:
            continue
        ev = body + _CN_MSG.size
        what = _EVENT_HEAD.unpack_from(data, ev)[0]
        at = ev + _EVENT_HEAD.size
        if what == PROC_EVENT_FORK and at + 16 <= len(data):
            _ppid, ptgid, child_pid, child_tgid = _PIDS.unpack_from(data, at)
            out.append(ProcEvent(what, child_tgid, child_pid != child_tgid, parent=ptgid))
        elif what in (PROC_EVENT_EXEC, PROC_EVENT_COMM, PROC_EVENT_EXIT) and at + 8 <= len(data):
            pid, tgid = struct.unpack_from("=II", data, at)
            out.append(ProcEvent(what, tgid, pid != tgid))
        elif what == PROC_EVENT_NONE and at + 4 <= len(data):
            out.append(ProcEvent(what, 0, err=struct.unpack_from("=I", data, at)[0]))
    return out


# ---- /proc -------------------------------------------------------------------------


def read_proc(pid: int, cmdline: bool, proc: str = "/proc") -> ProcInfo | None:
    """The name (and command line) of a live process; None if gone, a zombie or a
    kernel thread (neither counts)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
        argv: tuple[str, ...] = ()
        if cmdline:
            with open(f"{proc}/{pid}/cmdline", "rb") as f:
                raw = f.read()
            if not raw:
                return None  # a kernel thread or a zombie
            argv = tuple(os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0"))
    except OSError:
        return None
    open_, close = stat.find(b"("), stat.rfind(b")")
    if open_ < 0 or close < open_:
        return None
    fields = stat[close + 2:].split()
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    if len(fields) > 6 and int(fields[6]) & PF_KTHREAD:
        return None
    return ProcInfo(os.fsdecode(stat[open_ + 1: close]), argv)


def scan_proc(cmdline: bool, proc: str = "/proc") -> dict[int, ProcInfo]:
    """Every live process (thread groups: /proc lists no threads at its top)."""
    out: dict[int, ProcInfo] = {}
    try:
        names = os.listdir(proc)
    except OSError:
        return out
    for name in names:
        if name.isdigit():
            info = read_proc(int(name), cmdline, proc)
            if info is not None:
                out[int(name)] = info
    return out


# ---- the connector -----------------------------------------------------------------


class Overflow(Exception):
    """Events were lost (ENOBUFS): scan /proc again."""


class EventSource(Protocol):
    """Where process events come from (the connector; tests give fakes)."""

    async def receive(self) -> list[ProcEvent]: ...

    def close(self) -> None: ...


class Connector:
    """A subscribed NETLINK_CONNECTOR socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def receive(self) -> list[ProcEvent]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise Overflow from None
                raise
            return decode_events(data)

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


def _socket_in(netns: str | None) -> socket.socket:
    """A connector socket, made in ``netns`` (a namespace file) by a helper thread."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[socket.socket | OSError] = []

    def make() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if libc.setns(target, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns {netns}: {os.strerror(err)}")
                    try:
                        result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                                                    NETLINK_CONNECTOR))
                    finally:
                        if libc.setns(own, CLONE_NEWNET) != 0:
                            # The thread is ending anyway; nothing else runs in it.
                            log.warning("could not return from %s", netns)
                finally:
                    os.close(target)
            finally:
                os.close(own)
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=make, name="pyalived-proc-connector", daemon=True)
    thread.start()
    thread.join()
    got = result[0] if result else OSError(errno.EIO, "no result")
    if isinstance(got, OSError):
        raise got
    return got


def _subscribe(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, CN_IDX_PROC))
        sock.send(encode_listen())
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)


def open_connector() -> Connector | None:
    """The connector, subscribed; None (logged) when this host or process cannot have it."""
    try:
        sock = _socket_in(None)
        try:
            _subscribe(sock)
            return Connector(sock)
        except OSError as exc:
            if exc.errno != errno.ECONNREFUSED:
                raise
        # Not the initial network namespace: make the socket there.
        sock = _socket_in(INIT_NETNS)
        _subscribe(sock)
        log.info("process events: connector opened in the initial network namespace")
        return Connector(sock)
    except OSError as exc:
        log.warning("process events connector unavailable (%s); scanning /proc every %gs",
                    exc.strerror or exc, POLL_INTERVAL)
        return None


# ---- the service -------------------------------------------------------------------


ProcessSubscriber = Callable[[str, bool], None]
Scanner = Callable[[bool], Mapping[int, ProcInfo]]
Reader = Callable[[int, bool], ProcInfo | None]


class ProcessWatcher:
    """The status of every tracked process, reported to its subscribers."""

    def __init__(
        self,
        specs: Sequence[TrackProcess],
        subscribers: Mapping[str, Sequence[ProcessSubscriber]],
        *,
        source: Callable[[], EventSource | None] | None = None,  # None: open_connector
        scan: Scanner | None = None,  # None: scan_proc
        read: Reader | None = None,  # None: read_proc
        scan_in_thread: bool = True,
        pidfds: bool = True,
    ) -> None:
        self.table = ProcessTable(specs)
        self.subscribers = subscribers
        self._source_factory = source or open_connector
        self._scan: Scanner = scan or scan_proc
        self._read: Reader = read or read_proc
        self._scan_in_thread = scan_in_thread  # a /proc scan takes ~2 ms per 100 processes
        self._source: EventSource | None = None
        self._use_pidfds = pidfds  # without the connector: exits seen through pidfds
        self._pidfds: dict[int, int] = {}

    def status(self, name: str) -> bool | None:
        return self.table.status(name)

    def update(self, specs: Sequence[TrackProcess]) -> None:
        """A reload: track ``specs`` from now on (scanned afresh; status kept when
        the count says the same)."""
        old = self.table
        self.table = ProcessTable(specs)
        changes = self.table.rescan(trio.current_time(),
                                    self._scan(self.table.needs_cmdline))
        for name, up in changes:
            if old.status(name) != up:
                self._publish(name, up)

    def _publish(self, name: str, up: bool) -> None:
        log.info("tracked process %s is %s (%d running)", name,
                 "up" if up else "down", self.table.count(name))
        for subscriber in self.subscribers.get(name, ()):
            subscriber(name, up)

    def _apply(self, changes: list[Change]) -> None:
        for name, up in changes:
            self._publish(name, up)

    async def _scan_now(self) -> None:
        table = self.table
        if self._scan_in_thread:
            procs = await trio.to_thread.run_sync(self._scan, table.needs_cmdline)
        else:
            procs = self._scan(table.needs_cmdline)
        if table is self.table:
            self._apply(table.rescan(trio.current_time(), procs))

    def _event(self, now: float, ev: ProcEvent) -> None:
        if ev.thread:
            return
        table = self.table
        if ev.kind == PROC_EVENT_EXIT:
            self._apply(table.exit(now, ev.pid))
        elif ev.kind == PROC_EVENT_FORK:
            # A child is its parent's copy: only a matching parent makes a matching
            # child (so most forks cost no read of /proc).
            if table.tracks(ev.parent):
                self._apply(table.fork(now, ev.pid, self._read(ev.pid, table.needs_cmdline)))
        elif ev.kind in (PROC_EVENT_EXEC, PROC_EVENT_COMM):
            self._apply(table.exec(now, ev.pid, self._read(ev.pid, table.needs_cmdline)))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._source = self._source_factory()
        try:
            # Subscribed first, scanned second: a process started in between is seen
            # by both, which is harmless; none is missed.
            self._apply(self.table.rescan(trio.current_time(),
                                          self._scan(self.table.needs_cmdline)))
            task_status.started()
            await self._loop()
        finally:
            if self._source is not None:
                self._source.close()
            for pid in list(self._pidfds):
                self._close_pidfd(pid)

    # -- exits without the connector --

    def _close_pidfd(self, pid: int) -> None:
        fd = self._pidfds.pop(pid)
        trio.lowlevel.notify_closing(fd)
        os.close(fd)

    async def _wait_exits(self, until: float) -> list[int]:
        """Wait until ``until`` or the exit of a counted process; the pids that exited."""
        if not self._use_pidfds:
            await trio.sleep_until(until)
            return []
        wanted = self.table.pids()
        for pid in set(self._pidfds) - wanted:
            self._close_pidfd(pid)
        exited: list[int] = []
        for pid in wanted - set(self._pidfds):
            try:
                self._pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                exited.append(pid)
            except OSError as exc:  # EMFILE and the like: the next scan will tell
                log.debug("pidfd_open %d: %s", pid, exc.strerror)
        if exited:
            return exited

        async def watch(pid: int, fd: int, scope: trio.CancelScope) -> None:
            await trio.lowlevel.wait_readable(fd)
            exited.append(pid)
            scope.cancel()

        with trio.move_on_at(until):
            async with trio.open_nursery() as nursery:
                for pid, fd in self._pidfds.items():
                    nursery.start_soon(watch, pid, fd, nursery.cancel_scope)
                await trio.sleep_forever()
        for pid in exited:
            self._close_pidfd(pid)
        return exited

    async def _loop(self) -> None:
        poll_at = trio.current_time() + POLL_INTERVAL
        while True:
            timer = self.table.get_timer()
            deadline = math.inf if timer is None else timer
            events: list[ProcEvent] = []
            source = self._source
            if source is None:
                exited = await self._wait_exits(min(deadline, poll_at))
                now = trio.current_time()
                for pid in exited:
                    self._apply(self.table.exit(now, pid))
            else:
                with trio.move_on_at(deadline):
                    try:
                        events = await source.receive()
                    except Overflow:
                        log.warning("process events were lost (socket overflow); "
                                    "scanning /proc")
                        await self._scan_now()
                        continue
                    except OSError as exc:
                        log.warning("process events connector failed (%s); scanning /proc "
                                    "every %gs", exc.strerror or exc, POLL_INTERVAL)
                        source.close()
                        self._source = None
                        poll_at = trio.current_time()
                        continue
            now = trio.current_time()
            for ev in events:
                if ev.kind != PROC_EVENT_NONE:
                    self._event(now, ev)
                elif ev.err and source is not None:
                    log.warning("process events connector refused the subscription (%s); "
                                "scanning /proc every %gs", os.strerror(ev.err), POLL_INTERVAL)
                    source.close()
                    self._source = None
                    poll_at = now
                    break
            if self._source is None and now >= poll_at:
                poll_at = now + POLL_INTERVAL
                await self._scan_now()
            self._apply(self.table.timer_expired(trio.current_time()))
