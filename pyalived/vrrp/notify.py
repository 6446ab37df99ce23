"""Which notify scripts a state change runs, with keepalived's arguments: pure.

Theory of operation: an instance, or a sync group once all its members
agree, that reaches a state runs up to two scripts, in this order: the
per-state one (``notify_master``, ``notify_backup``, ``notify_fault``,
``notify_stop``; INIT is the stop) without arguments, and the generic
``notify`` script as ``SCRIPT INSTANCE|GROUP NAME STATE [PRIORITY]``, where
STATE is MASTER, BACKUP, FAULT or STOP and only an instance passes its
priority.  Script lines are split as keepalived splits them
(``pyalived.scripts.split_command``).  ``notify_commands`` returns the
argv lists; the caller hands each to its ``ScriptRunner``.  ``notify_runs``
returns the same commands each with the user and group it runs as: the
``USER [GROUP]`` of its own line (``notify_master SCRIPT USER GROUP``), else
the caller's default (``script_user``).
"""

from __future__ import annotations

from typing import Literal

from pyalived.config.model import Notify, ScriptUser
from pyalived.scripts import split_command
from pyalived.vrrp.fsm import State

#: The STATE argument of the generic ``notify`` script.
NOTIFY_STATE = {
    State.MASTER: "MASTER",
    State.BACKUP: "BACKUP",
    State.FAULT: "FAULT",
    State.INIT: "STOP",
}


def state_script(notify: Notify, state: State) -> str | None:
    """The per-state notify script (notify_master, ...) for ``state``; INIT means stop."""
    return {
        State.MASTER: notify.master,
        State.BACKUP: notify.backup,
        State.FAULT: notify.fault,
        State.INIT: notify.stop,
    }[state]


def notify_commands(
    notify: Notify,
    state: State,
    kind: Literal["INSTANCE", "GROUP"],
    name: str,
    priority: int | None = None,
) -> list[list[str]]:
    """The argv of each script to run when ``kind`` ``name`` reaches ``state``, in order."""
    commands: list[list[str]] = []
    script = state_script(notify, state)
    if script:
        commands.append(split_command(script))
    if notify.generic:
        argv = [*split_command(notify.generic), kind, name, NOTIFY_STATE[state]]
        if priority is not None:
            argv.append(str(priority))
        commands.append(argv)
    return commands


def state_user(notify: Notify, state: State) -> ScriptUser | None:
    """The ``USER [GROUP]`` of the per-state notify line for ``state``, if it has one."""
    return {
        State.MASTER: notify.master_user,
        State.BACKUP: notify.backup_user,
        State.FAULT: notify.fault_user,
        State.INIT: notify.stop_user,
    }[state]


def notify_runs(
    notify: Notify,
    state: State,
    kind: Literal["INSTANCE", "GROUP"],
    name: str,
    priority: int | None,
    default: tuple[str | None, str | None],
) -> list[tuple[list[str], str | None, str | None]]:
    """``notify_commands``, each with the user and group it runs as: its line's own, else
    ``default`` (``script_user``, ``script_group``)."""
    users: list[ScriptUser | None] = []
    if state_script(notify, state):
        users.append(state_user(notify, state))
    if notify.generic:
        users.append(notify.generic_user)
    runs: list[tuple[list[str], str | None, str | None]] = []
    for argv, who in zip(notify_commands(notify, state, kind, name, priority), users,
                         strict=True):
        user, group = (who.user, who.group) if who is not None else default
        runs.append((argv, user, group))
    return runs
