"""Running notify and track scripts without ever blocking the VRRP engine.

Theory of operation: ``TrioScriptRunner.run`` starts a script with
``trio.lowlevel.open_process`` in a session (and so a process group) of its
own, optionally as another user (that user's uid, primary gid and
supplementary groups, looked up with ``pwd``/``os.getgrouplist``), with
stdin, stdout and stderr on /dev/null.  It awaits the exit; at the timeout, or
if the awaiting task is cancelled, it kills the whole process group with
SIGKILL and still reaps the child (in a shielded scope), so no zombie is left
behind.  The return value is the exit status, -1 on timeout, and 128+N when
the script died of signal N (as a shell reports it).

``notify`` is synchronous and returns at once: it hands the script to the
runner's own nursery, which ``run_forever`` opens (start it with
``nursery.start``).  Notifications made before the runner is started are kept
and started with it.  Notify scripts have no timeout, like keepalived's, but
when the runner is cancelled (daemon shutdown) the ones still running get
``shutdown_grace`` seconds to finish -- so the "stop" notification sent while
the instances shut down still runs -- and are then killed.

``split_command`` (defined in ``pyalived.cmdline``, re-exported here) splits a
script line the way keepalived 2.2.7 does once the configuration lexer has
handled backslashes: on blanks, with single or double quotes grouping words
(the quotes are removed and adjacent pieces join, so ``g'h i'j`` is one word
``gh ij``); a backslash is an ordinary character here.
"""

from __future__ import annotations

import grp
import logging
import math
import os
import pwd
import signal
import subprocess
from collections.abc import Sequence
from typing import Any, Protocol

import trio

from pyalived.cmdline import split_command
from pyalived.tuning import spawn_options

__all__ = ["ScriptRunner", "TrioScriptRunner", "split_command"]

log = logging.getLogger("pyalived.scripts")

TIMEOUT_STATUS = -1


def run_as(user: str | None, group: str | None = None) -> dict[str, Any]:
    """``subprocess`` arguments that switch to ``user`` and ``group`` (default: the
    user's primary group); nothing for no user, or for ourselves in our own group."""
    if user is None:
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise OSError(f"unknown script user {user!r}") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise OSError(f"unknown script group {group!r}") from None
    if entry.pw_uid == os.geteuid() and gid == os.getegid():
        return {}
    return {
        "user": entry.pw_uid,
        "group": gid,
        "extra_groups": os.getgrouplist(entry.pw_name, gid),
    }


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # pid is the group id: the child leads its session
    except ProcessLookupError:
        pass


class ScriptRunner(Protocol):
    """Runs external scripts without ever blocking the caller's state machine."""

    async def run(self, argv: Sequence[str], timeout: float | None, user: str | None,
                  group: str | None = None) -> int:
        """Run to completion (killed at ``timeout``) as ``user`` [``group``]; return the
        exit status (-1 on timeout)."""
        ...

    def notify(self, argv: Sequence[str], user: str | None, group: str | None = None) -> None:
        """Fire-and-forget, but reaped by the runner's own task (no detached tasks)."""
        ...


class TrioScriptRunner:
    """``ports.ScriptRunner`` over real processes."""

    def __init__(self, *, shutdown_grace: float = 5.0, log_output: bool = False) -> None:
        self.shutdown_grace = shutdown_grace
        self._output = None if log_output else subprocess.DEVNULL
        self._nursery: trio.Nursery | None = None
        self._pending: list[tuple[tuple[str, ...], str | None, str | None]] = []
        self._notify_scopes: set[trio.CancelScope] = set()
        self._closed = False

    async def run(self, argv: Sequence[str], timeout: float | None, user: str | None,
                  group: str | None = None) -> int:
        """Run ``argv`` to completion; -1 if it outlives ``timeout`` (it is then killed)."""
        try:
            proc = await trio.lowlevel.open_process(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=self._output,
                stderr=self._output,
                start_new_session=True,
                close_fds=True,
                **run_as(user, group),
                **spawn_options(),
            )
        except OSError as exc:
            log.warning("cannot run %s: %s", argv[0] if argv else "<empty>", exc)
            return 127
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await proc.wait()
            if proc.returncode is None:
                log.warning("script %s timed out after %gs, killing it", argv[0], timeout)
                _kill_group(proc.pid)
                with trio.CancelScope(shield=True):
                    await proc.wait()
                return TIMEOUT_STATUS
            return _status(proc.returncode)
        finally:
            if proc.returncode is None:  # cancelled: do not leave it running or unreaped
                _kill_group(proc.pid)
                with trio.CancelScope(shield=True):
                    await proc.wait()

    def notify(self, argv: Sequence[str], user: str | None, group: str | None = None) -> None:
        """Start ``argv`` in the runner's nursery and return at once."""
        job = (tuple(argv), user, group)
        if self._nursery is None:
            if self._closed:
                log.warning("script runner stopped; not running %s", job[0][0])
            else:
                self._pending.append(job)
            return
        try:
            self._nursery.start_soon(self._notify_task, *job)
        except RuntimeError:  # the nursery has closed
            log.warning("script runner stopped; not running %s", job[0][0])

    async def _notify_task(self, argv: tuple[str, ...], user: str | None,
                           group: str | None) -> None:
        # Shielded from the runner's cancellation; run_forever sets the deadline instead.
        with trio.CancelScope(shield=True) as scope:
            if self._closed:
                scope.deadline = trio.current_time() + self.shutdown_grace
            self._notify_scopes.add(scope)
            try:
                status = await self.run(argv, None, user, group)
                log.debug("notify %s exited with %d", argv[0], status)
            finally:
                self._notify_scopes.discard(scope)
        if scope.cancelled_caught:
            log.warning("notify script %s still running at shutdown: killed", argv[0])

    async def run_forever(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the nursery of notify scripts until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                pending, self._pending = self._pending, []
                for job in pending:
                    nursery.start_soon(self._notify_task, *job)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._closed = True
                    deadline = trio.current_time() + self.shutdown_grace
                    for scope in self._notify_scopes:
                        scope.deadline = min(scope.deadline, deadline)
        finally:
            self._nursery = None
