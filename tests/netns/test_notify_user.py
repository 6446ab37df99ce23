"""Notify scripts that name their user run as that user, on the real daemon.

The operator's pair: hooks that must not run as root say so on their own line
(``notify_master "SCRIPT ARGS" nobody``, ``notify_backup ... nobody GROUP``,
``notify ... daemon``), while ``notify_stop`` names no user and so runs as the
default (root: this host has no ``keepalived_script`` user).  Each script
appends ``id -u``/``id -g`` to a file of its router and event; r1 (priority 100) and r2
(50) start, r2's hooks record BACKUP.  Then the operator edits r2's
``notify_master`` to run as ``daemon`` and reloads it (SIGHUP: no restart), and
takes r1 down for maintenance: r2 becomes MASTER and its hook runs as
``daemon``.  Finally r2 stops, and its ``notify_stop`` runs as root.

On the LVS side, a real server's host leaves the LAN and comes back: its
``notify_down``/``notify_up`` and the virtual server's ``quorum_down`` run as
the users their lines name, ``quorum_up`` (no user) as root.

The scripts live in a root-owned 0755 directory under /tmp (a user other than
root must be able to reach them; pytest's tmp dir is private), with a sticky,
world-writable directory for the output; both are removed, pass or fail.
"""

from __future__ import annotations

import grp
import pwd
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyalived.lab import Lab, VrrpSpec, render_config, wait_for

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0
NOBODY = pwd.getpwnam("nobody")
DAEMON = pwd.getpwnam("daemon")
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_name


@pytest.fixture
def hooks() -> Iterator[Path]:
    """A directory any user can reach, holding hook.sh and a sticky ``out`` directory."""
    root = Path(tempfile.mkdtemp(prefix="pyalived-notify-user-", dir="/tmp"))
    try:
        root.chmod(0o755)
        (root / "out").mkdir()
        (root / "out").chmod(0o1777)
        script = root / "hook.sh"
        script.write_text(f'#!/bin/sh\necho "$(id -u) $(id -g)" >> {root}/out/$1.$2\n')
        script.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root)


def config(name: str, priority: int, hooks: Path, master_user: str) -> str:
    hook = hooks / "hook.sh"
    extra = (
        f'notify_master "{hook} {name} master" {master_user}',
        f'notify_backup "{hook} {name} backup" nobody {NOGROUP}',
        f'notify "{hook} {name} generic" daemon',  # then INSTANCE VI_1 STATE PRIORITY
        f'notify_stop "{hook} {name} stop"',
    )
    return render_config(name, [VrrpSpec(priority=priority, extra=extra)])


def events(hooks: Path, name: str) -> dict[str, list[tuple[int, int]]]:
    """What ``name``'s hooks recorded: event -> the (uid, gid) of each run."""
    found: dict[str, list[tuple[int, int]]] = {}
    for path in (hooks / "out").glob(f"{name}.*"):
        runs = (line.split() for line in path.read_text().splitlines())
        found[path.name.split(".", 1)[1]] = [(int(w[0]), int(w[1])) for w in runs]
    return found


def test_notify_lines_run_as_their_user_across_a_reload(
    make_lab: MakeLab, hooks: Path
) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    lab.start_daemon(r1, config("r1", 100, hooks, "nobody"))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    d2 = lab.start_daemon(r2, config("r2", 50, hooks, "nobody"))
    backup = [(NOBODY.pw_uid, grp.getgrnam(NOGROUP).gr_gid)]
    generic = (DAEMON.pw_uid, DAEMON.pw_gid)
    wait_for(lambda: events(hooks, "r2") == {"backup": backup, "generic": [generic]},
             SETTLE, what="r2's notify_backup and notify")
    wait_for(lambda: "master" in events(hooks, "r1"), SETTLE, what="r1's notify_master")
    assert events(hooks, "r1")["master"] == [(NOBODY.pw_uid, NOBODY.pw_gid)]

    # The operator moves r2's master hook to the daemon user and reloads r2.
    lab.write_config(r2, config("r2", 50, hooks, "daemon"))
    d2.signal(signal.SIGHUP)
    wait_for(lambda: "reload: applied by every child" in d2.log_text(), SETTLE,
             what="r2's reload")

    lab.stop_daemon(r1)  # maintenance on r1: r2 takes over
    lab.wait_sole_holder(r2, timeout=SETTLE)
    wait_for(lambda: "master" in events(hooks, "r2"), SETTLE, what="r2's notify_master")
    assert events(hooks, "r2")["master"] == [(DAEMON.pw_uid, DAEMON.pw_gid)]

    assert lab.stop_daemon(r2) == 0
    wait_for(lambda: "stop" in events(hooks, "r2"), SETTLE, what="r2's notify_stop")
    assert events(hooks, "r2") == {"backup": backup, "master": [generic],
                                   "generic": [generic] * 3, "stop": [(0, 0)]}
    log = d2.log_text()
    assert "Traceback" not in log and "exited with 0" in log and "exited with 2" not in log


def lvs_config(client_ip: str, hooks: Path) -> str:
    hook = hooks / "hook.sh"
    return f"""global_defs {{
    router_id r1
}}

virtual_server 198.18.0.100 80 {{
    lb_algo rr
    lb_kind NAT
    protocol TCP
    quorum_up "{hook} vs quorum_up"
    quorum_down "{hook} vs quorum_down" daemon {NOGROUP}
    real_server {client_ip} 80 {{
        notify_up "{hook} rs up" daemon
        notify_down "{hook} rs down" nobody
        PING_CHECK {{
            connect_timeout 1
            retry 1
            delay_before_retry 1
            delay_loop 1
            warmup 0
        }}
    }}
}}
"""


def test_real_server_and_quorum_hooks_run_as_their_user(
    make_lab: MakeLab, hooks: Path
) -> None:
    """A real server's host leaves the LAN and comes back: its notify_down runs as
    nobody, notify_up as daemon, quorum_down as daemon:nogroup, and quorum_up (no
    user on its line, no script_user) as root."""
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    daemon = lab.start_daemon(router, lvs_config(client.ip, hooks))
    wait_for(lambda: "LVS started" in daemon.log_text(), SETTLE, what="the checkers")
    lab.cut(client)  # the host is gone from the LAN (its switch port is down)
    wait_for(lambda: "down" in events(hooks, "rs") and "quorum_down" in events(hooks, "vs"),
             SETTLE, what="notify_down and quorum_down")
    lab.reconnect(client)
    wait_for(lambda: "up" in events(hooks, "rs") and "quorum_up" in events(hooks, "vs"),
             SETTLE, what="notify_up and quorum_up")
    rs, vs = events(hooks, "rs"), events(hooks, "vs")
    assert rs == {"down": [(NOBODY.pw_uid, NOBODY.pw_gid)],
                  "up": [(DAEMON.pw_uid, DAEMON.pw_gid)]}
    assert vs["quorum_down"] == [(DAEMON.pw_uid, grp.getgrnam(NOGROUP).gr_gid)]
    assert set(vs["quorum_up"]) == {(0, 0)}
    assert lab.stop_daemon(router) == 0
    assert "Traceback" not in daemon.log_text()


def test_misc_check_runs_as_its_user_else_the_script_user(
    make_lab: MakeLab, hooks: Path
) -> None:
    """An operator sets ``script_user daemon`` so that health scripts never run as
    root: a MISC_CHECK without ``user`` then runs as daemon, one with ``user
    nobody`` as nobody; both keep the real server up."""
    hook = hooks / "hook.sh"
    lab = make_lab(routers=1, clients=1)
    (router,), (client,) = lab.routers, lab.clients
    text = f"""global_defs {{
    router_id r1
    script_user daemon
}}

virtual_server 198.18.0.100 80 {{
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server {client.ip} 80 {{
        MISC_CHECK {{
            misc_path "{hook} rs default"
            delay_loop 1
        }}
        MISC_CHECK {{
            misc_path "{hook} rs own"
            user nobody
            delay_loop 1
        }}
    }}
}}
"""
    daemon = lab.start_daemon(router, text)
    wait_for(lambda: {"default", "own"} <= set(events(hooks, "rs")), SETTLE,
             what="both MISC_CHECK scripts")
    rs = events(hooks, "rs")
    assert set(rs["default"]) == {(DAEMON.pw_uid, DAEMON.pw_gid)}
    assert set(rs["own"]) == {(NOBODY.pw_uid, NOBODY.pw_gid)}
    assert lab.stop_daemon(router) == 0
    assert "Traceback" not in daemon.log_text()
