"""Finding and vetting scripts at load (pyalived.config.script_check), on real files.

Every case builds real files, directories, modes and owners under a tmp dir (the
tests run as root; uid/gid 65534 stand for an ordinary user).  What each
verdict must be was learnt from keepalived 2.2.7's ``-t`` on the same layouts
(tests/netns/test_script_diff.py compares the two binaries on them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyalived.config import Category, LoadResult, Severity, load, render
from pyalived.config.lexer import sources_unchanged
from pyalived.config.script_check import (
    ROOT,
    RunAs,
    ScriptHost,
    SystemScripts,
    find_script,
    insecurity,
    resolve_user,
    scripts_unchanged,
)
from tests.unit.fakes import EveryScriptRuns

NOBODY = 65534
SCRIPT = "#!/bin/sh\nexit 0\n"


def make(path: Path, mode: int = 0o755, uid: int = 0, gid: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SCRIPT)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return str(path)


def nobody() -> RunAs:
    who = resolve_user("nobody", None)
    assert isinstance(who, RunAs)
    return who


# ---- finding the program ---------------------------------------------------------------


def test_an_absolute_path_must_exist_but_need_not_be_executable(tmp_path: Path) -> None:
    ok = make(tmp_path / "ok.sh")
    plain = make(tmp_path / "plain.sh", 0o644)
    assert find_script(ok, ROOT, "") == ok
    assert find_script(plain, ROOT, "") == plain  # keepalived does not look at the x bit
    assert find_script(str(tmp_path / "nope.sh"), ROOT, "") is None
    assert find_script(f"{tmp_path}/nope/../ok.sh", ROOT, "") is None  # no such directory


def test_a_bare_name_is_the_first_executable_one_on_the_path(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    make(first / "plain.sh", 0o644)  # not executable: skipped, as execvp skips it
    (first / "dir.sh").mkdir()  # a directory: skipped
    make(second / "plain.sh")
    make(second / "dir.sh")
    path = f"{first}:{second}"
    assert find_script("plain.sh", ROOT, path) == str(second / "plain.sh")
    assert find_script("dir.sh", ROOT, path) == str(second / "dir.sh")
    assert find_script("plain.sh", ROOT, str(first)) is None
    assert find_script("absent.sh", ROOT, path) is None


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A root-owned 0755 directory right under /tmp, so that any user may reach it."""
    path = Path(tempfile.mkdtemp(prefix="pyalived-scripts-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path)


def test_the_script_user_must_be_able_to_reach_the_file(open_dir: Path) -> None:
    hidden = open_dir / "private"
    script = make(hidden / "check.sh")
    hidden.chmod(0o700)
    assert find_script(script, ROOT, "") == script
    assert find_script(script, nobody(), "") is None  # no search permission on private/
    hidden.chmod(0o711)
    assert find_script(script, nobody(), "") == script


def test_links_are_followed_to_the_real_file(tmp_path: Path) -> None:
    real = make(tmp_path / "real" / "check.sh")
    link = tmp_path / "link.sh"
    link.symlink_to(real)
    assert find_script(str(link), ROOT, "") == real
    (tmp_path / "dangling.sh").symlink_to(tmp_path / "gone.sh")
    assert find_script(str(tmp_path / "dangling.sh"), ROOT, "") is None


def test_users_and_groups_resolve_or_say_why() -> None:
    who = resolve_user("nobody", None)
    assert isinstance(who, RunAs) and who.uid == NOBODY
    assert resolve_user("pyalived-no-such-user", None) == (
        "user 'pyalived-no-such-user' does not exist")
    assert resolve_user("root", "pyalived-no-such-group") == (
        "group 'pyalived-no-such-group' does not exist")


# ---- enable_script_security: who may write the file or a directory above it ------------


@pytest.fixture
def safe_dir(tmp_path: Path) -> Path:
    """A root-owned 0755 directory: /tmp above it is sticky, so only what the test adds
    below can make a script unsafe."""
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize(
    ("mode", "uid", "gid", "unsafe"),
    [
        (0o755, 0, 0, None),
        (0o775, 0, 0, None),  # group root may write
        (0o775, 0, NOBODY, "is writable by group 65534"),
        (0o757, 0, 0, "is writable by others"),
        (0o755, NOBODY, 0, "is not owned by root"),
        (0o644, 0, 0, None),
    ],
)
def test_a_script_file_is_safe_only_if_root_alone_can_change_it(
    safe_dir: Path, mode: int, uid: int, gid: int, unsafe: str | None
) -> None:
    script = make(safe_dir / "check.sh", mode, uid, gid)
    found = insecurity(script)
    assert found == (None if unsafe is None else f"{script} {unsafe}")


def test_every_directory_above_counts_except_sticky_ones(safe_dir: Path) -> None:
    script = make(safe_dir / "d" / "check.sh")
    (safe_dir / "d").chmod(0o777)
    assert insecurity(script) == f"{safe_dir}/d is writable by others"
    (safe_dir / "d").chmod(0o1777)  # like /tmp: others cannot replace root's file
    assert insecurity(script) is None
    (safe_dir / "d").chmod(0o755)
    os.chown(safe_dir / "d", NOBODY, 0)
    assert insecurity(script) == f"{safe_dir}/d is not owned by root"


def test_the_real_path_is_judged_not_the_link(safe_dir: Path) -> None:
    open_dir = safe_dir / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    safe = make(safe_dir / "safe.sh")
    exposed = make(open_dir / "exposed.sh")
    (open_dir / "to_safe.sh").symlink_to(safe)
    (safe_dir / "to_exposed.sh").symlink_to(exposed)
    found = SystemScripts("")
    real = found.find(str(open_dir / "to_safe.sh"), ROOT)
    assert real == safe and insecurity(real) is None
    real = found.find(str(safe_dir / "to_exposed.sh"), ROOT)
    assert real == exposed and insecurity(real) == f"{open_dir} is writable by others"


def test_a_directory_is_never_a_safe_script(safe_dir: Path) -> None:
    assert insecurity(str(safe_dir)) == f"{safe_dir} is a directory"


# ---- whole configurations: what is disabled, what is reported, the exit status ----------


class WithoutDefaultUser(SystemScripts):
    """This host, as if no ``keepalived_script`` user existed (whatever the truth)."""

    def user_exists(self, name: str) -> bool:
        return False


class WithDefaultUser(SystemScripts):
    """This host, with ``keepalived_script`` standing for the user nobody."""

    def user_exists(self, name: str) -> bool:
        return True

    def resolve_user(self, user: str, group: str | None) -> RunAs | str:
        return super().resolve_user("nobody" if user == "keepalived_script" else user, group)


INSTANCE = """vrrp_instance VI {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority 100
    virtual_ipaddress {{
        198.18.0.1/32
    }}
{body}}}
"""
TRACK = "    track_script {\n        chk\n    }\n"


def vrrp_script(line: str, extra: str = "") -> str:
    return f"vrrp_script chk {{\n    script \"{line}\"\n{extra}}}\n"


def run(tmp_path: Path, text: str, host: ScriptHost | None = None) -> LoadResult:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    return load(str(conf), interface_exists=lambda name: name == "eth0",
                scripts=host or WithoutDefaultUser(""))


def lines(res: LoadResult) -> list[tuple[int, Severity, str]]:
    return [(d.location.line, d.severity, d.message) for d in res.diagnostics]


def test_a_missing_track_script_is_disabled_and_the_instance_ignores_it(
    tmp_path: Path,
) -> None:
    res = run(tmp_path, vrrp_script(f"{tmp_path}/absent.sh arg") + INSTANCE.format(body=TRACK))
    assert lines(res) == [
        (1, Severity.WARNING, f"vrrp_script chk: '{tmp_path}/absent.sh' not found or not"
                              " accessible to user root; disabled"),
        (13, Severity.WARNING, "track_script chk: that vrrp_script is disabled; ignored"),
    ]
    assert res.exit_code == 5  # not 6: a script that never runs is no security matter
    assert res.config is not None  # the rest runs
    assert res.config.vrrp_scripts == () and res.config.vrrp_instances[0].track_script == ()


def test_one_script_that_runs_makes_it_a_security_matter(tmp_path: Path) -> None:
    ok = make(tmp_path / "ok.sh")
    text = (vrrp_script(ok) + vrrp_script(f"{tmp_path}/absent.sh").replace("chk", "gone")
            + INSTANCE.format(body=TRACK))
    res = run(tmp_path, text)
    assert res.exit_code == 6
    (violation,) = [d for d in res.diagnostics if d.category is Category.SCRIPT_SECURITY]
    assert violation.location.line == 1
    assert res.config is not None and [s.name for s in res.config.vrrp_scripts] == ["chk"]
    # also when nothing tracks it, as keepalived counts it
    assert run(tmp_path, vrrp_script(ok) + INSTANCE.format(body="")).exit_code == 6


def test_a_missing_notify_script_is_a_notice_and_does_not_run(tmp_path: Path) -> None:
    body = f"    notify_master \"{tmp_path}/absent.sh master\"\n"
    res = run(tmp_path, INSTANCE.format(body=body))
    ((line, severity, message),) = lines(res)
    assert (line, severity) == (9, Severity.NOTICE) and "it will not run" in message
    assert res.exit_code == 0
    assert res.config is not None and res.config.vrrp_instances[0].notify.master is None
    ok = make(tmp_path / "ok.sh")
    res = run(tmp_path, INSTANCE.format(body=body + f"    notify_backup {ok}\n"))
    assert res.exit_code == 6
    assert res.config is not None and res.config.vrrp_instances[0].notify.backup == ok


def test_a_misc_check_whose_script_is_missing_is_dropped(tmp_path: Path) -> None:
    ok = make(tmp_path / "ok.sh")
    text = ("virtual_server 198.18.0.1 80 {\n    lb_algo rr\n    lb_kind NAT\n"
            "    protocol TCP\n    real_server 198.18.0.2 80 {\n"
            f"        MISC_CHECK {{\n            misc_path {tmp_path}/absent.sh\n        }}\n"
            "        TCP_CHECK {\n        }\n    }\n}\n")
    res = run(tmp_path, text)
    ((line, severity, message),) = lines(res)
    assert (line, severity) == (7, Severity.NOTICE) and "checker dropped" in message
    assert res.exit_code == 0
    assert res.config is not None
    (rs,) = res.config.virtual_servers[0].real_servers
    assert [c.type.value for c in rs.checkers] == ["TCP_CHECK"]
    res = run(tmp_path, text.replace(f"{tmp_path}/absent.sh", ok))
    assert res.exit_code == 6


def test_a_user_that_does_not_resolve_removes_the_script_with_a_warning(
    tmp_path: Path,
) -> None:
    ok = make(tmp_path / "ok.sh")
    res = run(tmp_path, vrrp_script(ok, "    user pyalived-no-such-user\n")
              + INSTANCE.format(body=TRACK))
    assert res.exit_code == 5
    assert "user 'pyalived-no-such-user' does not exist; disabled" in lines(res)[0][2]
    res = run(tmp_path, "global_defs {\n    script_user pyalived-no-such-user\n}\n"
              + vrrp_script(ok) + INSTANCE.format(body=TRACK))
    assert res.exit_code == 5
    assert res.config is not None and res.config.vrrp_scripts == ()
    text = ("virtual_server 198.18.0.1 80 {\n    lb_algo rr\n    lb_kind NAT\n"
            "    protocol TCP\n    real_server 198.18.0.2 80 {\n"
            f"        MISC_CHECK {{\n            misc_path {ok}\n"
            "            user pyalived-no-such-user\n        }\n    }\n}\n")
    res = run(tmp_path, text)
    assert [(line, sev) for line, sev, _ in lines(res)] == [(7, Severity.WARNING)]
    assert res.exit_code == 5


def test_under_script_security_root_is_never_the_default_user(
    tmp_path: Path, open_dir: Path
) -> None:
    ok = make(open_dir / "ok.sh")
    secure = "global_defs {\n    enable_script_security\n}\n"
    text = secure + vrrp_script(ok) + INSTANCE.format(body=TRACK + f"    notify {ok}\n")
    res = run(tmp_path, text)
    assert res.exit_code == 5
    assert res.config is not None and res.config.vrrp_scripts == ()
    assert res.config.vrrp_instances[0].notify.generic is None
    assert all("enable_script_security forbids running scripts as root" in m
               for _, _, m in lines(res)[:1])
    # with a keepalived_script user, that user runs them
    res = run(tmp_path, text, WithDefaultUser(""))
    assert res.exit_code == 0, lines(res)
    assert res.config is not None and res.config.global_defs.script_user == "keepalived_script"
    # script_user root says root is wanted
    res = run(tmp_path, text.replace("security\n", "security\n    script_user root\n"))
    assert res.exit_code == 0 and res.config is not None
    assert res.config.global_defs.script_user == "root"
    # without script security, root is the default
    res = run(tmp_path, vrrp_script(ok) + INSTANCE.format(body=TRACK))
    assert res.exit_code == 6 and res.config is not None
    assert res.config.global_defs.script_user is None


def test_insecure_scripts_are_disabled_only_under_script_security(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    exposed = make(tmp_path / "exposed.sh", 0o757)
    secure = "global_defs {\n    enable_script_security\n    script_user root\n}\n"
    body = TRACK + f"    notify_master {exposed}\n"
    res = run(tmp_path, secure + vrrp_script(exposed) + INSTANCE.format(body=body))
    assert [(line, sev) for line, sev, _ in lines(res)] == [
        (5, Severity.WARNING), (19, Severity.NOTICE), (17, Severity.WARNING)]
    assert f"{exposed} is writable by others" in lines(res)[0][2]
    assert res.exit_code == 5
    assert res.config is not None and res.config.vrrp_instances[0].notify.master is None
    res = run(tmp_path, vrrp_script(exposed) + INSTANCE.format(body=body))
    assert res.exit_code == 6
    (violation,) = res.diagnostics
    assert violation.message.endswith("(and some of them are insecure)")


def test_start_up_and_fifo_scripts_are_vetted_too(tmp_path: Path) -> None:
    ok = make(tmp_path / "ok.sh")
    text = (f"global_defs {{\n    startup_script {tmp_path}/absent.sh\n"
            f"    notify_fifo {tmp_path}/fifo\n    notify_fifo_script {tmp_path}/absent.sh\n}}\n"
            + INSTANCE.format(body=""))
    res = run(tmp_path, text)
    assert [sev for _, sev, _ in lines(res)] == [Severity.NOTICE, Severity.NOTICE]
    assert res.exit_code == 0
    assert res.config is not None
    g = res.config.global_defs
    assert g.startup_script is None and g.notify_fifo is not None and g.notify_fifo.script is None
    res = run(tmp_path, text.replace(f"startup_script {tmp_path}/absent.sh",
                                     f"startup_script {ok}"))
    assert res.exit_code == 6


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ("", 6),
        ("global_defs {\n    pyalived_no_such_keyword\n}\n", 6),  # violation beats warnings
        ("include /nonexistent/pyalived-test.conf\n", 4),  # pyalived refuses; keepalived 6
    ],
)
def test_exit_status_precedence(tmp_path: Path, extra: str, code: int) -> None:
    ok = make(tmp_path / "ok.sh")
    assert run(tmp_path, extra + vrrp_script(ok) + INSTANCE.format(body=TRACK)).exit_code == code
    # a missing interface beats the violation, as with keepalived
    text = extra + vrrp_script(ok) + INSTANCE.format(body=TRACK).replace("eth0", "eth9")
    assert run(tmp_path, text).exit_code == (4 if code == 4 else 5)


# ---- reload: the same files, but the scripts changed -----------------------------------


def test_a_reload_sees_a_script_installed_or_changed_since_the_load(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    check = tmp_path / "check.sh"
    text = vrrp_script(f"{check} --now") + INSTANCE.format(body=TRACK)
    res = run(tmp_path, text, SystemScripts("/usr/bin:/bin"))
    assert res.config is not None and res.config.vrrp_scripts == ()
    assert [s.kind for s in res.sources] == ["file", "scripts"]
    assert sources_unchanged(res.sources, other=scripts_unchanged)
    make(check)  # installed after the load
    assert not sources_unchanged(res.sources, other=scripts_unchanged)
    res = run(tmp_path, text, SystemScripts("/usr/bin:/bin"))
    assert res.config is not None and [s.name for s in res.config.vrrp_scripts] == ["chk"]
    assert sources_unchanged(res.sources, other=scripts_unchanged)
    check.chmod(0o757)  # a mode change can disable it under enable_script_security
    assert not sources_unchanged(res.sources, other=scripts_unchanged)


def test_only_this_host_s_findings_are_kept_for_a_reload(tmp_path: Path) -> None:
    res = run(tmp_path, vrrp_script("/bin/true") + INSTANCE.format(body=TRACK),
              EveryScriptRuns())
    assert [s.kind for s in res.sources] == ["file"]


def test_a_dropped_script_is_a_notice_in_the_summary(tmp_path: Path) -> None:
    res = run(tmp_path, INSTANCE.format(body=f"    notify_fault {tmp_path}/absent.sh\n"))
    text = render(res.diagnostics)
    assert text.splitlines()[-1] == "configuration OK, with notices"
    assert ": notice: notify_fault " in text.splitlines()[0]
