"""Notify lines that name their own user: ``notify_master SCRIPT [USER [GROUP]]``.

What each case must give was learnt from keepalived 2.2.7 (``-t`` and a running
daemon whose notify script wrote ``id -u``): the words after the script are the
user and group, even when the script is not quoted; a user or group that does not
resolve drops the line quietly (``-t`` exits 0); a script run as another user
still makes ``enable_script_security`` a matter (exit 6); ``misc_path`` keeps all
its words as the command.  Scripts are real files under a tmp dir; users are this
host's (``nobody``/``nogroup``, ``daemon``), looked up, not assumed.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyalived.config import Category, LoadResult, Severity, load
from pyalived.config.model import Notify, ScriptUser
from pyalived.config.script_check import SystemScripts
from pyalived.scripts import TrioScriptRunner
from pyalived.vrrp.fsm import State
from pyalived.vrrp.notify import notify_runs
from tests.unit.fakes import EveryScriptRuns
from tests.unit.test_script_check import INSTANCE

NOGROUP = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name



@pytest.fixture
def scripts() -> Iterator[Path]:
    """A root-owned 0755 directory under /tmp (any user may reach it) with ok.sh."""
    path = Path(tempfile.mkdtemp(prefix="pyalived-notify-user-", dir="/tmp"))
    try:
        path.chmod(0o755)
        (path / "ok.sh").write_text("#!/bin/sh\nexit 0\n")
        (path / "ok.sh").chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path)


def run(tmp_path: Path, text: str) -> LoadResult:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    # no keepalived_script user on this host: root is the default script user
    return load(str(conf), interface_exists=lambda name: name == "eth0",
                scripts=SystemScripts(""))


def notices(res: LoadResult) -> list[tuple[int, Severity, str]]:
    return [(d.location.line, d.severity, d.message) for d in res.diagnostics
            if d.category is not Category.SCRIPT_SECURITY]


# ---- parsing ------------------------------------------------------------------------


def test_the_words_after_the_script_are_user_and_group(tmp_path: Path) -> None:
    body = ("    notify_master /x.sh nobody\n"
            "    notify_backup \"/x.sh backup 'a b'\" nobody nogroup\n"
            "    notify_fault /x.sh arg1\n"  # not an argument: a user called arg1
            "    notify_stop /x.sh\n"
            "    notify /x.sh root root extra words\n")
    conf = tmp_path / "k.conf"
    conf.write_text(INSTANCE.format(body=body))
    res = load(str(conf), interface_exists=lambda name: True, scripts=EveryScriptRuns())
    assert res.config is not None
    n = res.config.vrrp_instances[0].notify
    assert (n.master, n.master_user) == ("/x.sh", ScriptUser("nobody"))
    assert (n.backup, n.backup_user) == ("/x.sh backup 'a b'", ScriptUser("nobody", "nogroup"))
    assert (n.fault, n.fault_user) == ("/x.sh", ScriptUser("arg1"))
    assert (n.stop, n.stop_user) == ("/x.sh", None)
    assert (n.generic, n.generic_user) == ("/x.sh", ScriptUser("root", "root"))
    extra = [d for d in res.diagnostics if "extra words" in d.message]
    assert [(d.location.line, d.severity) for d in extra] == [(13, Severity.NOTICE)]
    assert "extra words" in extra[0].message and "extra words" in str(extra[0])


def test_sync_group_real_server_and_quorum_lines_take_a_user_too(tmp_path: Path) -> None:
    text = (INSTANCE.format(body="") + INSTANCE.format(body="").replace("VI {", "VJ {")
            .replace("51", "52")
            + "vrrp_sync_group G {\n    group {\n        VI\n        VJ\n    }\n"
            "    notify_master /g.sh daemon\n}\n"
            "virtual_server 198.18.0.1 80 {\n    lb_algo rr\n    lb_kind NAT\n"
            "    protocol TCP\n    quorum_up /q.sh nobody nogroup\n    quorum_down /q.sh\n"
            "    real_server 198.18.0.2 80 {\n        notify_up \"/u.sh up\" daemon\n"
            "        notify_down /d.sh nobody\n        TCP_CHECK {\n        }\n    }\n}\n")
    conf = tmp_path / "k.conf"
    conf.write_text(text)
    res = load(str(conf), interface_exists=lambda name: True, scripts=EveryScriptRuns())
    assert res.config is not None
    g = res.config.vrrp_sync_groups[0]
    assert (g.notify.master, g.notify.master_user) == ("/g.sh", ScriptUser("daemon"))
    vs = res.config.virtual_servers[0]
    assert (vs.quorum_up, vs.quorum_up_user) == ("/q.sh", ScriptUser("nobody", "nogroup"))
    assert (vs.quorum_down, vs.quorum_down_user) == ("/q.sh", None)
    rs = vs.real_servers[0]
    assert (rs.notify_up, rs.notify_up_user) == ("/u.sh up", ScriptUser("daemon"))
    assert (rs.notify_down, rs.notify_down_user) == ("/d.sh", ScriptUser("nobody"))


def test_misc_path_keeps_all_its_words_as_the_command(tmp_path: Path) -> None:
    text = ("virtual_server 198.18.0.1 80 {\n    lb_algo rr\n    lb_kind NAT\n"
            "    protocol TCP\n    real_server 198.18.0.2 80 {\n"
            "        MISC_CHECK {\n            misc_path /m.sh nobody\n        }\n    }\n}\n")
    conf = tmp_path / "k.conf"
    conf.write_text(text)
    res = load(str(conf), interface_exists=lambda name: True, scripts=EveryScriptRuns())
    assert res.config is not None
    (checker,) = res.config.virtual_servers[0].real_servers[0].checkers
    # "nobody" stays in the command; the checker runs as the default script user
    assert (checker.misc_path, checker.user) == ("/m.sh nobody", "keepalived_script")


# ---- vetting at load ----------------------------------------------------------------


def test_an_unknown_user_or_group_drops_the_line_quietly(
    tmp_path: Path, scripts: Path
) -> None:
    ok = scripts / "ok.sh"
    for words in ("pyalived-no-such-user", "root pyalived-no-such-group", "0"):
        res = run(tmp_path, INSTANCE.format(body=f"    notify_master {ok} {words}\n"))
        ((line, severity, message),) = notices(res)
        assert (line, severity) == (9, Severity.NOTICE), message
        assert "does not exist; it will not run" in message
        assert res.exit_code == 0  # no script runs: no security matter either
        assert res.config is not None
        n = res.config.vrrp_instances[0].notify
        assert (n.master, n.master_user) == (None, None)


def test_the_same_script_at_another_user_has_its_own_fate(
    tmp_path: Path, scripts: Path
) -> None:
    ok = scripts / "ok.sh"
    body = f"    notify_master {ok} pyalived-no-such-user\n    notify_backup {ok}\n"
    res = run(tmp_path, INSTANCE.format(body=body))
    assert res.exit_code == 6 and res.config is not None
    n = res.config.vrrp_instances[0].notify
    assert (n.master, n.backup, n.backup_user) == (None, str(ok), None)


def test_a_script_run_by_another_user_is_still_a_security_matter(
    tmp_path: Path, scripts: Path
) -> None:
    ok = scripts / "ok.sh"
    res = run(tmp_path, INSTANCE.format(body=f"    notify_master {ok} nobody {NOGROUP}\n"))
    assert res.exit_code == 6 and notices(res) == []
    assert res.config is not None
    assert res.config.vrrp_instances[0].notify.master_user == ScriptUser("nobody", NOGROUP)
    secure = "global_defs {\n    enable_script_security\n}\n"  # no default user: fine here
    res = run(tmp_path, secure + INSTANCE.format(body=f"    notify_master {ok} nobody\n"))
    assert res.exit_code == 0, notices(res)
    assert res.config is not None
    assert res.config.vrrp_instances[0].notify.master == str(ok)


def test_a_script_the_user_cannot_reach_does_not_run(tmp_path: Path, scripts: Path) -> None:
    hidden = scripts / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "ok.sh").write_text("#!/bin/sh\nexit 0\n")
    (hidden / "ok.sh").chmod(0o755)
    res = run(tmp_path, INSTANCE.format(body=f"    notify_master {hidden}/ok.sh nobody\n"))
    ((_, severity, message),) = notices(res)
    assert severity is Severity.NOTICE and "not accessible to user nobody" in message
    assert res.exit_code == 0
    res = run(tmp_path, INSTANCE.format(body=f"    notify_master {hidden}/ok.sh root\n"))
    assert res.exit_code == 6


def test_real_server_and_fifo_lines_with_an_unknown_user(tmp_path: Path, scripts: Path) -> None:
    ok = scripts / "ok.sh"
    text = (f"global_defs {{\n    notify_fifo {tmp_path}/fifo\n"
            f"    notify_fifo_script {ok} pyalived-no-such-user\n}}\n"
            "virtual_server 198.18.0.1 80 {\n    lb_algo rr\n    lb_kind NAT\n"
            f"    protocol TCP\n    quorum_up {ok} pyalived-no-such-user\n"
            f"    real_server 198.18.0.2 80 {{\n        notify_up {ok} pyalived-no-such-user\n"
            "        TCP_CHECK {\n        }\n    }\n}\n")
    res = run(tmp_path, text)
    assert [sev for _, sev, _ in notices(res)] == [Severity.NOTICE] * 3
    assert res.exit_code == 0
    assert res.config is not None
    vs = res.config.virtual_servers[0]
    assert vs.quorum_up is None and vs.real_servers[0].notify_up is None
    assert res.config.global_defs.notify_fifo is not None
    assert res.config.global_defs.notify_fifo.script is None


# ---- who runs them --------------------------------------------------------------------


def test_notify_runs_use_the_line_user_else_the_default() -> None:
    n = Notify(master="/m.sh a", generic="/g.sh", master_user=ScriptUser("nobody"),
               backup="/b.sh", generic_user=ScriptUser("daemon", "adm"))
    default = ("keepalived_script", None)
    assert notify_runs(n, State.MASTER, "INSTANCE", "VI", 100, default) == [
        (["/m.sh", "a"], "nobody", None),
        (["/g.sh", "INSTANCE", "VI", "MASTER", "100"], "daemon", "adm"),
    ]
    assert notify_runs(n, State.BACKUP, "GROUP", "G", None, default) == [
        (["/b.sh"], "keepalived_script", None),
        (["/g.sh", "GROUP", "G", "BACKUP"], "daemon", "adm"),
    ]
    assert notify_runs(Notify(stop="/s.sh"), State.INIT, "INSTANCE", "VI", 0,
                       (None, None)) == [(["/s.sh"], None, None)]


async def test_the_runner_switches_to_the_line_user_and_group(scripts: Path) -> None:
    """The real runner, as root, runs a script as nobody:nogroup (what a notify line with
    a user gets) and the script sees those ids."""
    (scripts / "out").mkdir()
    (scripts / "out").chmod(0o777)
    out = scripts / "out" / "ids"
    runner = TrioScriptRunner()
    status = await runner.run(["/bin/sh", "-c", f"echo $(id -u) $(id -g) > {out}"], 10.0,
                              "nobody", NOGROUP)
    assert status == 0
    entry = pwd.getpwnam("nobody")
    assert out.read_text().split() == [str(entry.pw_uid), str(grp.getgrnam(NOGROUP).gr_gid)]
    assert os.stat(out).st_uid == entry.pw_uid
