"""What the parent does before the daemon's work starts and after it ends.

Theory of operation: keepalived 2.2.7's parent, before it starts its
children, enters the network namespace of a top-level ``net_namespace NAME``
(``/run/netns/NAME``, which it never creates: a missing one stops it) and
runs ``startup_script``; once its children have stopped (VIPs removed,
priority-0 adverts sent) it runs ``shutdown_script``.  Each script runs to
completion, and is killed when it outlives its timeout
(``startup_script_timeout`` / ``shutdown_script_timeout``, 1 to 1000 s,
default 10 s); whatever its outcome, the daemon goes on starting (or
stopping), and the outcome is logged.  pyalived's parent does the same, in
this order (``pyalived.cli``): read the configuration, enter the namespace,
write the pid file, run the startup script, start the children
(``pyalived.supervisor``), and after they stopped run the shutdown script.

The parent never holds a parsed configuration (``pyalived.supervisor``): the
reader process hands it ``ParentSettings``, pickled next to each half's
configuration (``pyalived.config.reader.pickle_halves``).  They are read at
start only, as keepalived reads them (it refuses to change the namespace on
a reload, and pyalived's ``global_defs`` take effect at restart).

Pid files: with ``net_namespace NAME`` keepalived puts its pid files in
``/run/keepalived/NAME/`` (``keepalived.pid``, ``vrrp.pid``,
``checkers.pid``), so that daemons in several namespaces never share one.
pyalived does the same in ``/run/pyalived/NAME/`` (``pyalived.pid``,
``vrrp.pid``, ``checkers.pid``) for each pid file not given on the command
line, and removes the directory when it stops.

The scripts run synchronously in the parent, outside any event loop (no
child exists yet, or none is left), in a session of their own: at the
timeout the whole process group gets SIGTERM, as keepalived sends it, then
SIGKILL if it is still there a second later.  The parent keeps its stop
signals blocked (its event loop takes them), so each script starts with an
empty signal mask.
"""

from __future__ import annotations

import grp
import logging
import os
import signal
import subprocess
from dataclasses import dataclass

from pyalived.config.model import Config, ParentScript
from pyalived.scripts import run_as, split_command

log = logging.getLogger("pyalived.startup")

#: Seconds a script killed at its timeout gets to exit after SIGTERM, before SIGKILL.
KILL_GRACE = 1.0
PID_DIR = "/run/pyalived"


@dataclass(frozen=True)
class ParentSettings:
    """The part of ``global_defs`` (and the top level) that the parent acts on."""

    startup_script: ParentScript | None = None
    shutdown_script: ParentScript | None = None
    net_namespace: str | None = None
    script_user: str | None = None
    script_group: str | None = None


def parent_settings(config: Config) -> ParentSettings:
    g = config.global_defs
    return ParentSettings(g.startup_script, g.shutdown_script, g.net_namespace,
                          g.script_user, g.script_group)


def enter_namespace(name: str) -> None:
    """Move this process (before it starts any thread or child) into /run/netns/NAME."""
    from pyalived.vrrp.netlink import enter_netns

    try:
        enter_netns(name)
    except OSError as exc:
        raise OSError(f"cannot enter network namespace {name} (/run/netns/{name}): "
                      f"{exc.strerror or exc}") from None


def namespace_pid_files(name: str, pid: str | None, vrrp: str | None,
                        checkers: str | None) -> tuple[str, str, str]:
    """The pid files of a daemon in namespace ``name``: those given (not None), else
    ``/run/pyalived/NAME/{pyalived,vrrp,checkers}.pid``."""
    base = os.path.join(PID_DIR, name)
    return (pid or os.path.join(base, "pyalived.pid"), vrrp or os.path.join(base, "vrrp.pid"),
            checkers or os.path.join(base, "checkers.pid"))


def make_pid_dir(name: str) -> str:
    path = os.path.join(PID_DIR, name)
    os.makedirs(path, mode=0o755, exist_ok=True)
    return path


def remove_pid_dir(name: str) -> None:
    """Remove ``/run/pyalived/NAME`` (and ``/run/pyalived``) if nothing else is left there."""
    for path in (os.path.join(PID_DIR, name), PID_DIR):
        try:
            os.rmdir(path)
        except OSError:
            return


def run_parent_script(what: str, script: ParentScript, settings: ParentSettings) -> int | None:
    """Run ``startup_script`` or ``shutdown_script`` (``what``) to completion, killed at its
    timeout; log the outcome.  The exit status, or None if it could not run or timed out."""
    argv = split_command(script.command)
    user = script.user or settings.script_user
    group = script.group or (settings.script_group if script.user is None else None)
    try:
        identity = run_as(user)
        if group is not None:
            identity["group"] = grp.getgrnam(group).gr_gid
    except (OSError, KeyError) as exc:
        log.error("%s %s not run: %s", what, script.command, exc)
        return None
    log.info("running %s %s", what, script.command)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True,
                                close_fds=True, preexec_fn=_unblock_signals, **identity)
    except OSError as exc:
        log.error("%s %s failed to start: %s", what, script.command, exc)
        return None
    try:
        status = proc.wait(timeout=script.timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s %s timed out after %g s; killing it", what, script.command,
                    script.timeout)
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # what it left in its group
        return None
    if status == 0:
        log.info("%s %s succeeded", what, script.command)
    else:
        shown = f"signal {-status}" if status < 0 else f"status {status}"
        log.warning("%s %s failed (%s)", what, script.command, shown)
    return status


def _unblock_signals() -> None:
    """In the script's process: the parent holds its stop signals blocked (they are
    taken by its event loop), and a blocked mask survives exec; the script must be
    able to get the SIGTERM of its timeout."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
