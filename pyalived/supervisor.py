"""The supervisor: one process per half, as keepalived runs them.

Theory of operation: ``Supervisor.run`` is the parent process.  It forks a
VRRP child and a checker child (``-P`` or ``-C``: only one), each of which
runs ``pyalived.daemon.run_daemon`` for its half in its own ``trio.run``, so
checker, IPVS and configuration work never share an event loop with the
adverts.  The parent does no VRRP or checker work at all: it watches the
children, restarts one that dies, forwards signals, parses the configuration
on reload, serves the metrics of both halves and talks to systemd.

Forking and trio: a fork inside ``trio.run`` is unsupported, so the parent
runs trio in *epochs*.  Children are forked outside trio; the parent then
runs one epoch (``trio.run(self._epoch)``) until a child must be restarted
or the daemon stops, forks again outside trio and starts the next epoch.  The
signals it handles are blocked between epochs, so none is lost or acted on
by default.  Modules the children need are imported before the first fork and
``gc.freeze()`` keeps their pages shared copy-on-write.

Each child is joined to the parent by a ``pyalived.ipc.Link``.  Messages:

* child to parent: ``("notify", fields)`` -- what the child would have told
  systemd (READY, STOPPING, WATCHDOG, STATUS), which the parent combines;
  ``("applied", generation)`` -- a reload is applied;
  ``("metrics", id, body, content_type)`` -- an answer.
* parent to child: ``("reload", generation, config)`` -- the half of a
  configuration the parent has read and checked, numbered so that the
  acknowledgement of an older reload is never taken for this one;
  ``("metrics", id, accept)`` -- render your families.

The end of the link (the parent died) stops the child gracefully, and so
does the parent's death by ``PR_SET_PDEATHSIG``.

Restart: a child that exits while the daemon is not stopping is started again
with the latest configuration, at once the first time and then with a delay
that doubles from ``RESTART_DELAY`` up to ``RESTART_DELAY_MAX`` while it keeps
dying young; ``-R`` stops the daemon instead.  A restarted VRRP child starts
as its configuration says (BACKUP removes any of its VIPs still on the host,
so the VIPs of the dead child are never left next to a new master); a
restarted checker child takes over the IPVS table it finds and reconciles it
(``pyalived.lvs``), it never flushes it.

Signals to the parent: SIGHUP reads the file once (in a worker thread, with
``RELOAD_TIMEOUT``), refuses a bad file with both halves untouched, and sends
each half its part; SIGTERM and SIGINT stop both children (priority-0
adverts, VIPs and owned IPVS entries removed) and then the parent; SIGUSR1,
SIGUSR2 and SIGRTMIN+2 go to the VRRP child, which writes the dumps.

systemd: READY=1 once every child has said READY; RELOADING=1 on SIGHUP and
READY=1 once every child has applied the new configuration; with a watchdog,
each child pings the parent and the parent sends WATCHDOG=1 only while every
child has pinged within the watchdog interval, so a hung child is noticed.

Metrics: the parent serves one endpoint.  It renders its own families (the
daemon's liveness and reload, the HTTP server's) and asks each child for its
own (``Metrics`` ``parts``), so every series appears exactly once.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import itertools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from pyalived.config.lexer import Source, sources_unchanged
from pyalived.config.model import Config
from pyalived.daemon import (
    RELOAD_TIMEOUT,
    UNCHANGED,
    DaemonOptions,
    Loader,
    _file_loader,
    _read,
    queue_reload,
    run_daemon,
    start_metrics,
)
from pyalived.dump import SIGDATA, SIGJSON, SIGSTATS
from pyalived.ipc import Link, LinkClosed
from pyalived.metrics import Metrics
from pyalived.pidfile import remove_pid, write_pid
from pyalived.sdnotify import READY, STOPPING, WATCHDOG, Notifier
from pyalived.vrrp.counters import VrrpCounters

log = logging.getLogger("pyalived.supervisor")

VRRP = "vrrp"
CHECKERS = "checkers"
NAMES = {VRRP: "VRRP child", CHECKERS: "checker child"}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DUMP_SIGNALS = (SIGDATA, SIGSTATS, SIGJSON)
SIGNALS = (*STOP_SIGNALS, signal.SIGHUP, *DUMP_SIGNALS)

RESTART_DELAY = 1.0  # seconds before the second restart of a child that keeps dying
RESTART_DELAY_MAX = 30.0
YOUNG = 10.0  # a child that dies within this many seconds of its start "dies young"
STOP_TIMEOUT = 20.0  # then the children still running are killed
METRICS_TIMEOUT = 5.0  # a child that does not answer a scrape by then is left out of it
RELOAD_APPLY_TIMEOUT = 120.0  # waiting for the children to say they applied a reload
PR_SET_PDEATHSIG = 1


def half_config(half: str, config: Config) -> Config:
    """The part of ``config`` one half needs (a reload sends only that)."""
    if half == VRRP:
        return dataclasses.replace(config, virtual_servers=(), virtual_server_groups=())
    return dataclasses.replace(config, vrrp_instances=(), vrrp_sync_groups=(), vrrp_scripts=())


@dataclass
class Child:
    half: str
    pid: int
    pidfd: int
    sock: socket.socket  # the parent's end of the link
    started: float  # time.monotonic()
    link: Link | None = None  # per epoch
    ready: bool = False
    applied: int = 0  # the last reload generation it acknowledged
    pinged: float = 0.0  # time.monotonic() of the last WATCHDOG=1
    exited: int | None = None  # wait status
    buffered: bytearray = field(default_factory=bytearray)

    @property
    def name(self) -> str:
        return f"{NAMES[self.half]} (pid {self.pid})"


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


# ---- the child side -------------------------------------------------------------


@dataclass
class _Applied:
    """What the child's reloader reads: the configuration the supervisor sent."""

    config: Config | None
    diagnostics: tuple[Any, ...] = ()


class LinkNotifier(Notifier):
    """A child's notifier: what it would tell systemd goes to the supervisor."""

    def __init__(self, watchdog: float | None) -> None:
        super().__init__(None)
        self.watchdog_interval = watchdog
        self._send, self.outbox = trio.open_memory_channel[Any](256)
        self.applying: int | None = None  # the reload generation being applied

    def _queue(self, message: Any) -> bool:
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            return False
        return True

    @property
    def enabled(self) -> bool:
        return True

    def notify(self, fields: Any) -> bool:
        sent = self._queue(("notify", dict(fields)))
        if fields.get(READY) and self.applying is not None:
            # The daemon says READY when a reload is over: that one is applied.
            self._queue(("applied", self.applying))
            self.applying = None
        return sent


class ChildControl:
    """``pyalived.daemon.Control`` over the link to the supervisor."""

    def __init__(self, sock: socket.socket, notifier: LinkNotifier) -> None:
        self._sock = sock
        self._notifier = notifier
        self._pending: _Applied = _Applied(None)
        self._generation = 0
        self.loader: Loader = self._load

    async def _load(self) -> Any:
        self._notifier.applying = self._generation
        return self._pending

    async def serve(
        self,
        reloads: trio.MemorySendChannel[None],
        metrics: Metrics,
        stop: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        link = Link(self._sock)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_outbox, link)
            task_status.started()
            while True:
                try:
                    message = await link.receive()
                except (LinkClosed, trio.BrokenResourceError, OSError):
                    message = None
                if message is None:
                    log.warning("the supervisor has gone away: stopping")
                    stop()
                    return
                kind = message[0]
                if kind == "reload":
                    _kind, self._generation, config = message
                    self._pending = _Applied(config)
                    await reloads.send(None)
                elif kind == "metrics":
                    _kind, ident, accept = message
                    nursery.start_soon(self._answer_metrics, link, metrics, ident, accept)

    async def _send_outbox(self, link: Link) -> None:
        async for message in self._notifier.outbox:
            try:
                await link.send(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return

    @staticmethod
    async def _answer_metrics(link: Link, metrics: Metrics, ident: int, accept: str) -> None:
        await metrics.refresh(accept)
        body, content_type = metrics.render(accept)
        try:
            await link.send(("metrics", ident, body, content_type))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def child_main(half: str, config: Config, options: DaemonOptions, sock: socket.socket,
               watchdog: float | None) -> int:
    """Body of a forked child: its half of the daemon, until stopped."""
    from pyalived.cli import run_trio

    counters = VrrpCounters()
    metrics = Metrics(counters, parts=frozenset({"vrrp"} if half == VRRP else {"lvs"}))
    notifier = LinkNotifier(watchdog)
    control = ChildControl(sock, notifier)
    opts = dataclasses.replace(options, vrrp=half == VRRP, checkers=half == CHECKERS,
                               metrics_listen=None, config_path=None)

    async def main() -> None:
        await run_daemon(half_config(half, config), opts, counters=counters, notifier=notifier,
                         metrics=metrics, control=control)

    return run_trio(main)


# ---- the parent side ------------------------------------------------------------


class SupervisorMetrics(Metrics):
    """The parent's families, followed by each child's, in the requested format."""

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__(VrrpCounters(), parts=frozenset({"daemon", "http"}))
        self._supervisor = supervisor
        self._parts: dict[str, list[bytes]] = {}

    async def refresh(self, accept: str = "") -> None:
        self._parts[accept] = await self._supervisor.children_metrics(accept)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        body, content_type = super().render(accept)
        parts = [body, *self._parts.pop(accept, [])]
        eof = b"# EOF\n"
        if body.endswith(eof):  # OpenMetrics: one end marker, at the very end
            parts = [p[: -len(eof)] if p.endswith(eof) else p for p in parts] + [eof]
        return b"".join(parts), content_type


class Supervisor:
    def __init__(
        self,
        config: Config,
        options: DaemonOptions,
        notifier: Notifier,
        *,
        pid_files: dict[str, str | None],
        respawn: bool = True,
        sources: tuple[Source, ...] = (),
    ) -> None:
        self.config = config
        self.sources = sources  # what the running configuration was read from
        self.options = options
        self.notifier = notifier
        self.halves = [h for h, on in ((VRRP, options.vrrp), (CHECKERS, options.checkers)) if on]
        self.pid_files = pid_files
        self.respawn = respawn
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.announced_ready = False
        self.exit_code = 0
        self._restart: list[str] = []
        self._orphaned_vips = False  # a VRRP child ended without releasing its VIPs
        self._failures: dict[str, int] = {}
        self._epoch_scope: trio.CancelScope | None = None
        self._ids = itertools.count(1)
        self._answers: dict[int, tuple[trio.Event, list[bytes]]] = {}
        self._applied: trio.Event | None = None
        self._generation = 0  # of the configuration the children should be running
        self.metrics = SupervisorMetrics(self)
        self.loader: Loader | None = _file_loader(options, self._unchanged)

    # -- processes (outside trio) --

    def run(self) -> int:
        """Start the children and supervise them until the daemon stops."""
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        _preload()
        gc.collect()
        gc.freeze()  # what exists now stays shared with the children
        try:
            for half in self.halves:
                self._spawn(half)
            while True:
                trio.run(self._epoch)
                if self.stopping:
                    for child in self.children.values():
                        log.error("%s did not stop within %g s: killed", child.name,
                                  STOP_TIMEOUT)
                        if child.half == VRRP:
                            self._orphaned_vips = True
                    break
                for half in self._restart:
                    self._spawn(half)
                self._restart.clear()
        finally:
            for child in list(self.children.values()):  # late to stop, or an internal error
                _kill(child)
                path = self.pid_files.get(child.half)
                if path:
                    remove_pid(path, child.pid)
            if self._orphaned_vips:
                self._release_vips()
        return self.exit_code

    def _spawn(self, half: str) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                parent_end.close()
                for other in self.children.values():
                    other.sock.close()
                    os.close(other.pidfd)
                signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
                _die_with_parent(parent)
                watchdog = self.notifier.watchdog_interval if self.notifier.enabled else None
                code = child_main(half, self.config, self.options, child_end, watchdog)
            except BaseException:
                log.exception("%s failed", NAMES[half])
            finally:
                logging.shutdown()
                os._exit(code)
        child_end.close()
        child = Child(half, pid, os.pidfd_open(pid), parent_end, time.monotonic(),
                      applied=self._generation)
        child.pinged = child.started
        self.children[half] = child
        path = self.pid_files.get(half)
        if path:
            write_pid(path, pid)
        log.info("%s started", child.name)

    def _release_vips(self) -> None:
        from pyalived.vrrp.netlink import release_addresses

        log.warning("removing the VIPs the VRRP child left behind")
        try:
            release_addresses(self.config.vrrp_instances)
        except OSError as exc:
            log.error("removing the VIPs failed: %s", exc)

    # -- one epoch (inside trio) --

    async def _epoch(self) -> None:
        with trio.open_signal_receiver(*SIGNALS) as signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            try:
                async with trio.open_nursery() as nursery:
                    self._epoch_scope = nursery.cancel_scope
                    for child in self.children.values():
                        child.link = Link(child.sock, child.buffered)
                        nursery.start_soon(self._watch, child)
                        nursery.start_soon(self._listen, child)
                    if self.options.metrics_listen is not None and not self.stopping:
                        await start_metrics(nursery, self.metrics, *self.options.metrics_listen)
                    nursery.start_soon(self._watchdog)
                    reloads = await nursery.start(self._reloader)
                    async for signum in signals:
                        await self._signal(signum, reloads)
            finally:
                signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
                for child in self.children.values():
                    if child.link is not None:
                        child.buffered = child.link.detach()
                        child.link = None

    async def _signal(self, signum: int, reloads: trio.MemorySendChannel[None]) -> None:
        if signum in STOP_SIGNALS:
            name = signal.Signals(signum).name
            if not self.stopping:
                log.info("%s received, stopping", name)
                self.notifier.stopping(status=f"stopping on {name}")
                self.stopping = True
                for child in self.children.values():
                    _signal_child(child, signal.SIGTERM)
                assert self._epoch_scope is not None
                self._epoch_scope.deadline = trio.current_time() + STOP_TIMEOUT
            return
        if signum == signal.SIGHUP:
            queue_reload(reloads)
            return
        vrrp = self.children.get(VRRP)
        if vrrp is not None:
            _signal_child(vrrp, signum)  # the dumps are the VRRP half's

    async def _watch(self, child: Child) -> None:
        await trio.lowlevel.wait_readable(child.pidfd)
        _pid, status = os.waitpid(child.pid, 0)
        os.close(child.pidfd)
        child.sock.close()
        del self.children[child.half]
        path = self.pid_files.get(child.half)
        if path:
            remove_pid(path, child.pid)
        assert self._epoch_scope is not None
        if self.stopping:
            log.info("%s stopped (%s)", child.name, describe_status(status))
            if not self.children:
                self._epoch_scope.cancel()
            return
        log.error("%s died (%s)", child.name, describe_status(status))
        if not self.respawn:
            log.error("not respawning it (-R): stopping")
            self._orphaned_vips = self._orphaned_vips or child.half == VRRP
            self.exit_code = 1
            self.stopping = True
            self.notifier.stopping(status=f"{NAMES[child.half]} died")
            for other in self.children.values():
                _signal_child(other, signal.SIGTERM)
            if not self.children:
                self._epoch_scope.cancel()
            self._epoch_scope.deadline = trio.current_time() + STOP_TIMEOUT
            return
        young = time.monotonic() - child.started < YOUNG
        failures = self._failures.get(child.half, 0) + 1 if young else 1
        self._failures[child.half] = failures
        delay = 0.0 if failures <= 1 else min(RESTART_DELAY * 2 ** (failures - 2),
                                              RESTART_DELAY_MAX)
        if delay:
            log.warning("%s keeps dying: restarting it in %g s", NAMES[child.half], delay)
            await trio.sleep(delay)
        self._restart.append(child.half)
        self._epoch_scope.cancel()

    async def _listen(self, child: Child) -> None:
        link = child.link
        assert link is not None
        while True:
            try:
                message = await link.receive()
            except (LinkClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if message is None:
                return
            if message[0] == "notify":
                self._notified(child, message[1])
            elif message[0] == "applied":
                child.applied = max(child.applied, message[1])
                self._check_applied()
            elif message[0] == "metrics":
                _kind, ident, body, _content_type = message
                waiting = self._answers.get(ident)
                if waiting is not None:
                    waiting[1].append(body)
                    waiting[0].set()

    def _check_applied(self) -> None:
        if self._applied is not None and all(
                c.applied >= self._generation for c in self.children.values()):
            self._applied.set()

    def _notified(self, child: Child, fields: dict[str, Any]) -> None:
        if fields.get(WATCHDOG):
            child.pinged = time.monotonic()
        if fields.get(READY):
            child.ready = True
            child.pinged = time.monotonic()
            if all(c.ready for c in self.children.values()) and len(self.children) == len(
                    self.halves):
                if not self.announced_ready:
                    self.announced_ready = True
                    log.info("all children ready")
                    self.notifier.ready(status=self._status())
        if fields.get(STOPPING) and not self.stopping:
            log.info("%s is stopping", child.name)

    def _status(self) -> str:
        return ", ".join(f"{NAMES[c.half]} pid {c.pid}" for c in self.children.values()) + \
            " running"

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None or not self.notifier.enabled:
            return
        while True:
            now = time.monotonic()
            late = [c for c in self.children.values() if now - c.pinged > interval]
            if late:
                log.error("watchdog: %s silent for %.1f s", ", ".join(c.name for c in late),
                          max(now - c.pinged for c in late))
            elif not self.stopping:
                self.notifier.watchdog()
            await trio.sleep(interval / 4)

    async def _reloader(
        self, *, task_status: trio.TaskStatus[trio.MemorySendChannel[None]] = (
            trio.TASK_STATUS_IGNORED)
    ) -> None:
        send, receive = trio.open_memory_channel[None](1)
        task_status.started(send)
        async for _ in receive:
            await self._reload()

    def _unchanged(self) -> bool:
        """In the reader's thread: do the files hold what is running already?"""
        return bool(self.sources) and sources_unchanged(self.sources)

    async def _reload(self) -> None:
        if self.loader is None:
            log.warning("SIGHUP received: no configuration file to reload")
            return
        log.info("SIGHUP received: reloading the configuration")
        self.notifier.reloading()
        try:
            result = await _read(self.loader, self.options.reload_timeout)
            if result is UNCHANGED:
                log.info("reload: the %d configuration file(s) are unchanged: nothing to apply",
                         sum(s.kind == "file" for s in self.sources))
                self.metrics.reloaded(True)
                return
            new: Config | None = None
            if result is not None:
                for diagnostic in result.diagnostics:
                    log.warning("reload: %s", diagnostic)
                new = result.config
                if new is None:
                    log.error("reload refused: the new configuration has errors")
            if new is None:
                log.error("reload refused: keeping the running configuration")
                self.metrics.reloaded(False)
                return
            self.config = new
            self.sources = result.sources
            self._generation += 1
            self._applied = trio.Event()
            for child in list(self.children.values()):
                if child.link is not None:
                    message = ("reload", self._generation, half_config(child.half, new))
                    try:
                        await child.link.send(message)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass  # it died: its restart takes the new configuration
            self._check_applied()
            with trio.move_on_after(RELOAD_APPLY_TIMEOUT) as waiting:
                await self._applied.wait()
            self._applied = None
            if waiting.cancelled_caught:
                log.error("reload: not every child applied it within %g s",
                          RELOAD_APPLY_TIMEOUT)
            else:
                log.info("reload: applied by every child")
            self.metrics.reloaded(True)
        finally:
            self.notifier.ready(status=self._status())

    async def children_metrics(self, accept: str) -> list[bytes]:
        """Each child's metrics text, asked for in parallel; a silent child is left out."""
        bodies: list[bytes] = []
        waits: list[tuple[trio.Event, list[bytes]]] = []
        for child in list(self.children.values()):
            if child.link is None:
                continue
            ident = next(self._ids)
            entry: tuple[trio.Event, list[bytes]] = (trio.Event(), [])
            self._answers[ident] = entry
            waits.append(entry)
            try:
                await child.link.send(("metrics", ident, accept))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                entry[0].set()
        with trio.move_on_after(METRICS_TIMEOUT):
            for event, _body in waits:
                await event.wait()
        for _event, body in waits:
            bodies.extend(body)
        for ident in [i for i, e in self._answers.items() if e in waits]:
            del self._answers[ident]
        return bodies


def _signal_child(child: Child, signum: int) -> None:
    try:
        signal.pidfd_send_signal(child.pidfd, signum)
    except (ProcessLookupError, OSError):
        pass


def _kill(child: Child) -> None:
    _signal_child(child, signal.SIGKILL)
    try:
        os.waitpid(child.pid, 0)
    except ChildProcessError:
        pass


def _preload() -> None:
    """Import what the children need, so that the pages are shared after the fork."""
    import pyalived.lvs
    import pyalived.vrrp.net
    import pyalived.vrrp.netlink
    import pyalived.vrrp.scripts
    import pyalived.vrrp.wakeup  # noqa: F401


def supervise(config: Config, options: DaemonOptions, notifier: Notifier,
              pid_files: dict[str, str | None], respawn: bool,
              sources: tuple[Source, ...] = ()) -> int:
    return Supervisor(config, options, notifier, pid_files=pid_files, respawn=respawn,
                      sources=sources).run()


__all__ = ["RELOAD_TIMEOUT", "Supervisor", "child_main", "half_config", "supervise"]

