"""Notify FIFOs: keepalived's one-line event records, written without ever blocking.

Theory of operation: keepalived 2.2.7 writes a line to ``notify_fifo`` (both
halves), ``vrrp_notify_fifo`` (VRRP) and ``lvs_notify_fifo`` (checkers) for
each state change.  The formatters here give its lines, checked against
keepalived in a namespace:

* ``INSTANCE "VI_1" MASTER 100`` -- an instance and its priority; the
  states are MASTER, BACKUP, FAULT and STOP;
* ``GROUP "G1" MASTER 0`` -- a sync group, always with priority 0;
* ``VS [198.18.0.1]:tcp:80 UP`` and
  ``RS [198.18.0.11]:tcp:8080 [198.18.0.1]:tcp:80 DOWN`` -- a virtual server's
  quorum and a real server's health (the man page's format).

``FifoWriter`` is one FIFO.  As keepalived does, it creates a missing FIFO
(mode 0600, owned by the given user and group) and opens it read-write and
non-blocking (``O_RDWR | O_NONBLOCK | O_NOFOLLOW``): holding a read end
itself, it never gets ENXIO or SIGPIPE when no reader is there, the kernel
buffers lines for a reader that comes later, and a write either goes
through at once or fails with EAGAIN when the pipe is full; that line is
then dropped and counted (a line is far below PIPE_BUF, so it is never
written in part).  A path that exists but is not a FIFO is refused with an
error.

``NotifyFifos`` is the trio service of one half's FIFOs.  Each FIFO's
``..._script`` is started with the FIFO's path as its last argument (as
``script_user`` unless the line names a user), and runs for as long as the
FIFO is in use.  On stop or reload the FIFO is closed first, so that a
script reading it sees the end of its input, and the script gets
``SCRIPT_GRACE`` seconds to exit before its process group is killed.  A
reload that changes a FIFO's settings reopens it and restarts its script;
one that does not leaves both alone.
"""

from __future__ import annotations

import errno
import grp
import logging
import math
import os
import pwd
import stat
from collections.abc import Sequence

import trio

from pyalived.config.model import NotifyFifo
from pyalived.limits import LogThrottle
from pyalived.scripts import ScriptRunner, split_command

log = logging.getLogger("pyalived.fifo")

SCRIPT_GRACE = 1.0  # seconds a FIFO script has to exit once its FIFO is closed
MAX_LINE = 4000  # bytes; below PIPE_BUF (4096), so a write is all or nothing
DROP_LOG_INTERVAL = 10.0


def instance_line(name: str, state: str, priority: int) -> str:
    return f'INSTANCE "{name}" {state} {priority}\n'


def group_line(name: str, state: str) -> str:
    return f'GROUP "{name}" {state} 0\n'


def vs_line(vs: str, up: bool) -> str:
    """``vs`` as keepalived prints it: ``[198.18.0.1]:tcp:80``."""
    return f"VS {vs} {'UP' if up else 'DOWN'}\n"


def rs_line(rs: str, vs: str, up: bool) -> str:
    return f"RS {rs} {vs} {'UP' if up else 'DOWN'}\n"


def _ids(user: str | None, group: str | None) -> tuple[int, int]:
    uid = gid = -1
    if user is not None:
        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    if group is not None:
        gid = grp.getgrnam(group).gr_gid
    return uid, gid


class FifoWriter:
    """One notify FIFO, opened as keepalived opens it (see the module docstring)."""

    def __init__(self, conf: NotifyFifo) -> None:
        self.conf = conf
        self.path = conf.path
        self.fd: int | None = None
        self.written = 0
        self.dropped = 0
        self._throttle = LogThrottle(log, DROP_LOG_INTERVAL)

    def open(self) -> bool:
        """Create the FIFO if missing and open it; False (logged) if that fails."""
        try:
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                os.mkfifo(self.path, 0o600)
                os.chmod(self.path, 0o600)  # whatever the umask
                uid, gid = _ids(self.conf.user, self.conf.group)
                if uid != -1 or gid != -1:
                    os.chown(self.path, uid, gid)
                log.info("created notify FIFO %s", self.path)
            else:
                if not stat.S_ISFIFO(st.st_mode):
                    log.error("notify FIFO %s exists and is not a FIFO; not used", self.path)
                    return False
            self.fd = os.open(
                self.path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
            )
        except (OSError, KeyError) as exc:
            log.error("cannot open notify FIFO %s: %s", self.path, exc)
            return False
        return True

    def write(self, line: str) -> bool:
        """Write one line at once; a full pipe drops it (counted)."""
        if self.fd is None:
            return False
        data = line.encode("utf-8", "replace")[:MAX_LINE]
        try:
            os.write(self.fd, data)
        except OSError as exc:
            self.dropped += 1
            why = "full (no reader?)" if exc.errno == errno.EAGAIN else exc.strerror
            self._throttle.log(logging.WARNING,
                               "notify FIFO %s %s: line dropped (%d dropped so far)",
                                   self.path, why, self.dropped)
            return False
        self.written += 1
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class NotifyFifos:
    """The notify FIFOs of one half, with their scripts (see the module docstring)."""

    def __init__(
        self,
        runner: ScriptRunner,
        confs: Sequence[NotifyFifo] = (),
        *,
        script_user: str | None = None,
        scripts: Sequence[bool] | None = None,
        script_group: str | None = None,
    ) -> None:
        self._runner = runner
        self._script_user = script_user
        self._script_group = script_group
        self._wanted = self._key(confs, scripts)
        self._active: tuple[tuple[NotifyFifo, bool], ...] = ()
        self.writers: list[FifoWriter] = []
        self._generation: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()

    @staticmethod
    def _key(
        confs: Sequence[NotifyFifo], scripts: Sequence[bool] | None
    ) -> tuple[tuple[NotifyFifo, bool], ...]:
        """Each FIFO (one per path) with whether this half starts its script."""
        flags = scripts if scripts is not None else [True] * len(confs)
        seen: dict[str, tuple[NotifyFifo, bool]] = {}
        for conf, flag in zip(confs, flags, strict=True):
            if conf.path in seen:  # one FIFO named twice: opened once, one script
                prev = seen[conf.path]
                seen[conf.path] = (prev[0], prev[1] or (flag and conf.script is not None))
            else:
                seen[conf.path] = (conf, flag)
        return tuple(seen.values())

    def configure(
        self,
        confs: Sequence[NotifyFifo],
        *,
        script_user: str | None = None,
        scripts: Sequence[bool] | None = None,
        script_group: str | None = None,
    ) -> None:
        """A reload: reopen the FIFOs (and restart their scripts) only if they changed."""
        wanted = self._key(confs, scripts)
        if (wanted, script_user, script_group) == (
                self._wanted, self._script_user, self._script_group):
            return
        self._wanted, self._script_user, self._script_group = wanted, script_user, script_group
        self._changed.set()

    def write(self, line: str) -> None:
        for writer in self.writers:
            writer.write(line)

    @property
    def dropped(self) -> int:
        return sum(w.dropped for w in self.writers)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the configured FIFOs open and their scripts running until cancelled."""
        started = False
        while True:
            self._changed = trio.Event()
            async with trio.open_nursery() as nursery:
                await nursery.start(self._run_generation, self._wanted)
                if not started:
                    started = True
                    task_status.started()
                await self._changed.wait()
                nursery.cancel_scope.cancel()

    async def _run_generation(
        self,
        wanted: tuple[tuple[NotifyFifo, bool], ...],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        writers = [w for conf, _ in wanted if (w := FifoWriter(conf)).open()]
        self.writers = writers
        scopes: list[trio.CancelScope] = []
        try:
            async with trio.open_nursery() as nursery:
                for writer in writers:
                    flag = next(f for c, f in wanted if c.path == writer.path)
                    if flag and writer.conf.script:
                        nursery.start_soon(self._script, writer.conf, scopes)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self.writers = [w for w in self.writers if w not in writers]
                    for writer in writers:
                        writer.close()  # the scripts reading them see the end of input
                    deadline = trio.current_time() + SCRIPT_GRACE
                    for scope in scopes:
                        scope.deadline = min(scope.deadline, deadline)
        finally:
            for writer in writers:
                writer.close()

    async def _script(self, conf: NotifyFifo, scopes: list[trio.CancelScope]) -> None:
        assert conf.script is not None
        argv = [*split_command(conf.script), conf.path]
        # The line's USER [GROUP], else script_user and its group, as keepalived.
        user, group = ((conf.script_user, conf.script_group) if conf.script_user
                       else (self._script_user, self._script_group))
        # Shielded so that it outlives the cancellation by SCRIPT_GRACE (set on stop).
        with trio.CancelScope(shield=True) as scope:
            scopes.append(scope)
            log.info("starting notify FIFO script %s", " ".join(argv))
            status = await self._runner.run(argv, None, user, group)
            stopping = scope.deadline != math.inf  # its FIFO was closed
            log.log(logging.INFO if stopping else logging.WARNING,
                    "notify FIFO script %s exited with status %d", argv[0], status)
        if scope.cancelled_caught:
            log.info("notify FIFO script %s killed on stop", argv[0])
