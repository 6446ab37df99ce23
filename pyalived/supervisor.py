"""The supervisor: one process per half, as keepalived runs them.

Theory of operation: ``Supervisor.run`` is the parent process.  It forks a
VRRP child and a checker child (``-P`` or ``-C``: only one), each of which
runs ``pyalived.daemon.run_daemon`` for its half in its own ``trio.run``, so
checker, IPVS and configuration work never share an event loop with the
adverts.  The parent does no VRRP or checker work at all: it watches the
children, restarts one that dies, forwards signals, has the configuration
read on reload, serves the metrics of both halves and talks to systemd.

Where the configuration is parsed, and what the parent keeps: the parent
never parses it.  A short-lived reader process (``pyalived.config.reader``)
does, at start-up for the command line and on each reload whose files
changed, and writes each half's ``Config`` pickled on its own
(``pickle_halves``).  The parent holds only those bytes, one string per half
(``Supervisor.pickled``), and the sources they were read from.  What
start-up left is freed (``gc.collect``, glibc's ``malloc_trim``) before
``gc.freeze()`` and the first fork, and the heap is trimmed again after each
reload, in the parent and in the children.  Each child unpickles
its half itself, after the fork; a restarted child gets the bytes of the last
configuration the parent accepted.  The rare path that needs the VRRP
instances in the parent (removing the VIPs of a VRRP child that could not)
unpickles them there and then.

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
* parent to child: ``("reload", generation, pickled)`` -- the half of a
  configuration the reader has read and checked, as pickled bytes that the
  child unpickles, numbered so that the acknowledgement of an older reload is
  never taken for this one;
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
(``pyalived.checkers.service``), it never flushes it.

Signals to the parent: SIGHUP first checks, in a worker thread, whether the
files still hold what is running (``sources_unchanged``: then nothing is
applied).  If they changed, the file is parsed once, never in the parent:
a short-lived ``python -m pyalived.config.reader`` process loads it and
writes the diagnostics, the sources and each half's pickled configuration to
its standard output (``pyalived.config.reader``).  Check and read share one
``RELOAD_TIMEOUT`` (``DaemonOptions.reload_timeout``); past it the reader is
killed.  A timeout, a reader that fails (nonzero exit, killed, output that
is not a result) or a file with errors refuses the reload with both halves
untouched; otherwise each half is sent its part.  SIGTERM and SIGINT stop
both children (priority-0 adverts, VIPs and owned IPVS entries removed) and
then the parent; SIGUSR1, SIGUSR2 and SIGRTMIN+2 go to the VRRP child, which
writes the dumps.

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
import pickle
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from pyalived.checkers.compile import PackedLvs, unpacked
from pyalived.config import reader
from pyalived.config.lexer import Source, sources_unchanged
from pyalived.config.model import Config
from pyalived.config.reader import CHECKERS, VRRP, ReaderError, ReadResult, half_config
from pyalived.config.script_check import scripts_unchanged
from pyalived.daemon import (
    RELOAD_TIMEOUT,
    DaemonOptions,
    Loader,
    ReloadBusy,
    ThreadLoader,
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
READER_KILL_WAIT = 2.0  # seconds a killed reader gets to exit before it counts as stuck
READER_MAX_OUTPUT = 1 << 30  # bytes of a reader's standard output; more is a failed read
READER_MAX_ERRORS = 64 * 1024  # the tail of its standard error that is kept
#: What ``Supervisor._read`` returns when the files hold what is running.
UNCHANGED = object()



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

    config: Config | PackedLvs | None
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
            _malloc_trim()  # the configuration it replaced is free: back to the system
        return sent


class ChildControl:
    """``pyalived.daemon.Control`` over the link to the supervisor."""

    def __init__(self, sock: socket.socket, notifier: LinkNotifier) -> None:
        self._sock = sock
        self._notifier = notifier
        self._pending: bytes | None = None  # the pickled half of the last reload message
        self._generation = 0
        self.loader: Loader = self._load

    async def _load(self) -> Any:
        """The configuration of the last reload message, unpickled here in the child."""
        self._notifier.applying = self._generation
        pickled, self._pending = self._pending, None
        if pickled is None:
            return _Applied(None)
        return _Applied(_unpickle(pickled))

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
                    _kind, self._generation, self._pending = message
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


def _unpickle(pickled: bytes) -> Config | PackedLvs:
    config = pickle.loads(pickled)
    if not isinstance(config, (Config, PackedLvs)):
        raise TypeError(f"a {type(config).__name__} where a configuration was expected")
    return config


def child_main(half: str, pickled: bytes, options: DaemonOptions, sock: socket.socket,
               watchdog: float | None) -> int:
    """Body of a forked child: its half of the daemon (``pickled``), until stopped."""
    from pyalived.cli import run_trio

    handed = [_unpickle(pickled)]  # run_daemon's alone: no frame here keeps it
    counters = VrrpCounters()
    metrics = Metrics(counters, parts=frozenset({"vrrp"} if half == VRRP else {"lvs"}))
    notifier = LinkNotifier(watchdog)
    control = ChildControl(sock, notifier)
    opts = dataclasses.replace(options, vrrp=half == VRRP, checkers=half == CHECKERS,
                               metrics_listen=None, config_path=None, tune=True)

    async def main() -> None:
        await run_daemon(handed.pop(), opts, counters=counters, notifier=notifier,
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
    """The parent process (see the module docstring).

    ``pickled``: each running half's configuration, as ``reader.pickle_halves``
    packs it (``reader.ReadResult.halves``); it never holds a ``Config`` itself.
    """

    def __init__(
        self,
        pickled: dict[str, bytes],
        options: DaemonOptions,
        notifier: Notifier,
        *,
        pid_files: dict[str, str | None],
        respawn: bool = True,
        sources: tuple[Source, ...] = (),
    ) -> None:
        self.sources = sources  # what the running configuration was read from
        self.options = options
        self.notifier = notifier
        self.halves = [h for h, on in ((VRRP, options.vrrp), (CHECKERS, options.checkers)) if on]
        missing = [h for h in self.halves if h not in pickled]
        if missing:
            raise ValueError(f"no configuration for the {' and '.join(missing)} half")
        # The configuration each child runs (the last one accepted), pickled.
        self.pickled = {h: pickled[h] for h in self.halves}
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
        # The command that reads a changed configuration (``pyalived.config.reader``).
        self.reader_command = list(reader.COMMAND)
        self._reader_stuck: trio.Process | None = None  # killed, yet still not gone
        self._check = ThreadLoader(self._unchanged, options.config_path or "")

    # -- processes (outside trio) --

    def run(self) -> int:
        """Start the children and supervise them until the daemon stops."""
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        _preload()
        _fixed_mmap_threshold()
        gc.collect()  # what loading the configuration left behind ...
        _malloc_trim()  # ... goes back to the system, not to the children
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
                code = child_main(half, self.pickled[half], self.options, child_end, watchdog)
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
        from pyalived.vrrp.routes import release_routes

        pickled = self.pickled.get(VRRP)
        if pickled is None:
            return
        log.warning("removing the VIPs the VRRP child left behind")
        try:  # the one place the parent needs a configuration: unpickled for the occasion
            config = unpacked(_unpickle(pickled))
            # Rules and routes first: a route may use a VIP, as when the child removes them.
            release_routes([r for i in config.vrrp_instances for r in i.virtual_routes]
                           + list(config.static_routes),
                           [r for i in config.vrrp_instances for r in i.virtual_rules]
                           + list(config.static_rules), config.static_ipaddress)
            release_addresses(config.vrrp_instances)
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
        """In a worker thread: do the files hold what is running already?"""
        try:
            return bool(self.sources) and sources_unchanged(self.sources,
                                                            other=scripts_unchanged)
        except Exception:  # then the reader reads them, and says what is wrong
            return False

    async def _read(self) -> ReadResult | object | None:
        """``UNCHANGED``, the reader's result, or None (logged) if the read is refused.

        The unchanged check and the reader share ``options.reload_timeout``.
        """
        path = self.options.config_path
        assert path is not None
        timeout = self.options.reload_timeout
        with trio.move_on_after(timeout):
            try:
                if await self._check():
                    return UNCHANGED
                return await self._run_reader(path)
            except (ReloadBusy, ReaderError) as exc:
                log.error("reload refused: %s", exc)
                return None
            except Exception:  # a fault of the parent's own: the daemon stays up
                log.exception("reload refused: reading the configuration failed")
                return None
        log.error("reload refused: reading the configuration took more than %g s", timeout)
        return None

    async def _run_reader(self, path: str) -> ReadResult:
        """Run the reader process on ``path``; killed if cancelled (the timeout)."""
        if self._reader_stuck is not None:
            if self._reader_stuck.poll() is None:
                raise ReloadBusy(f"the previous read of {path} has not returned yet")
            self._reader_stuck = None
        argv = [*self.reader_command, *reader.argv(path, self.options.config_id, self.halves)]
        try:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=reader.environment())
        except OSError as exc:
            raise ReaderError(f"cannot start the configuration reader: {exc}") from None
        out = _Capture(READER_MAX_OUTPUT)
        err = _Capture(READER_MAX_ERRORS, tail=True)
        try:
            async with trio.open_nursery() as nursery:
                assert proc.stdout is not None and proc.stderr is not None
                nursery.start_soon(out.drain, proc.stdout)
                nursery.start_soon(err.drain, proc.stderr)
                await proc.wait()
        except BaseException:  # the timeout, or the daemon stopping
            await self._kill_reader(proc)
            raise
        assert proc.returncode is not None
        if proc.returncode != 0:  # its last line says why (its traceback stays out of the log)
            raise reader.failure(proc.returncode, err.data)
        if err.data:
            log.debug("configuration reader (pid %d): %s", proc.pid,
                      err.data.decode(errors="replace").strip())
        if out.overflow:
            raise ReaderError(f"the configuration reader wrote more than {out.limit} bytes")
        return reader.decode(out.data, self.halves)

    async def _kill_reader(self, proc: trio.Process) -> None:
        with trio.CancelScope(shield=True):
            proc.kill()
            with trio.move_on_after(READER_KILL_WAIT):
                await proc.wait()
        if proc.returncode is None:  # in an uninterruptible read, say of a hung mount
            log.error("the configuration reader (pid %d) did not exit when killed", proc.pid)
            self._reader_stuck = proc

    async def _reload(self) -> None:
        if self.options.config_path is None:
            log.warning("SIGHUP received: no configuration file to reload")
            return
        log.info("SIGHUP received: reloading the configuration")
        self.notifier.reloading()
        try:
            result = await self._read()
            if result is UNCHANGED:
                log.info("reload: the %d configuration file(s) are unchanged: nothing to apply",
                         sum(s.kind == "file" for s in self.sources))
                self.metrics.reloaded(True)
                return
            halves: dict[str, bytes] | None = None
            if isinstance(result, ReadResult):
                for diagnostic in result.diagnostics:
                    log.warning("reload: %s", diagnostic)
                halves = result.halves
                if halves is None:
                    log.error("reload refused: the new configuration has errors")
            if halves is None or not isinstance(result, ReadResult):
                log.error("reload refused: keeping the running configuration")
                self.metrics.reloaded(False)
                return
            self.pickled = {h: halves[h] for h in self.halves}
            self.sources = result.sources
            del result, halves  # the bytes of the halves that do not run, if any
            self._generation += 1
            self._applied = trio.Event()
            for child in list(self.children.values()):
                if child.link is not None:
                    message = ("reload", self._generation, self.pickled[child.half])
                    try:
                        await child.link.send(message)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass  # it died: its restart takes the new configuration
            _malloc_trim()  # the reader's output, read and sent
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


class _Capture:
    """What a reader process writes to one pipe, up to ``limit`` bytes.

    Past the limit the first bytes are kept and the rest dropped (or, with
    ``tail``, the last ``limit`` bytes are kept), and ``overflow`` is set.
    """

    def __init__(self, limit: int, *, tail: bool = False) -> None:
        self.data = bytearray()
        self.limit = limit
        self.tail = tail
        self.overflow = False

    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        async with stream:
            async for chunk in stream:
                if self.overflow and not self.tail:
                    continue
                self.data += chunk
                if len(self.data) > self.limit:
                    self.overflow = True
                    if self.tail:
                        del self.data[: -self.limit]


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 * 1024  # glibc's default, kept from growing


def _fixed_mmap_threshold() -> None:
    """Keep large blocks (a pickled configuration, a reader's output) in their own
    mappings, returned to the system when freed.

    glibc raises its threshold each time such a block is freed, so later
    ones come from the heap, where what is freed stays with the process: a
    daemon that reads a configuration of megabytes at each reload would grow
    by a few megabytes, and its children with it.  Inherited by the children.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _malloc_trim() -> None:
    """Give the C heap's free memory back to the system (glibc only; elsewhere nothing)."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)


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
    import pyalived.checkers.service
    import pyalived.scripts
    import pyalived.vrrp.net
    import pyalived.vrrp.netlink
    import pyalived.vrrp.wakeup  # noqa: F401


def supervise(pickled: dict[str, bytes], options: DaemonOptions, notifier: Notifier,
               pid_files: dict[str, str | None], respawn: bool,
               sources: tuple[Source, ...] = ()) -> int:
    """Run the daemon's parent on ``pickled`` (``reader.pickle_halves``) until it stops."""
    return Supervisor(pickled, options, notifier, pid_files=pid_files, respawn=respawn,
                      sources=sources).run()


__all__ = ["CHECKERS", "RELOAD_TIMEOUT", "VRRP", "Supervisor", "child_main", "half_config",
           "supervise"]

