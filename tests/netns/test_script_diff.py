"""``-t`` on scripts: pyalived's exit status equals keepalived 2.2.7's, case by case.

Each case is a small configuration whose scripts are real files laid out under
a fresh directory (modes, owners, links, world-writable and sticky
directories, a PATH of two directories), checked by both binaries in a
namespace that has the ``eth0`` the configurations name.  The cases are the
operator's: a track script not installed yet, one a deploy left writable by
everyone, a notify script with a typo, a MISC_CHECK whose script is missing,
a script user that does not exist, ``enable_script_security`` without a
``keepalived_script`` user, and these mixed with other mistakes (an unknown
keyword, a bad value, a missing interface) to pin the exit-status precedence.

Notify lines name their own user (``notify_master SCRIPT [USER [GROUP]]``): the
cases give users that do not exist, a second word that is not quoted with the
script (keepalived takes it for a user), root, extra words, and ``misc_path``,
whose words are all the command.

Left out, on purpose: scripts run by a user other than root.  keepalived
2.2.7's ``-t`` kills itself with SIGTERM as soon as it has looked at such a
script (it takes the check's process for a child whose parent went away), so
there is no status to compare; tests/unit/test_script_check.py covers them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.difftest import CheckNamespace, require_keepalived

pytestmark = [pytest.mark.netns, pytest.mark.interop]

SCRIPT = "#!/bin/sh\nexit 0\n"


def _layout(root: Path) -> None:
    """The files every case may name (D stands for ``root`` in the cases)."""
    def make(rel: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SCRIPT)
        os.chown(path, uid, gid)
        path.chmod(mode)

    root.chmod(0o755)
    for d, mode in (("open", 0o777), ("sticky", 0o1777), ("bin", 0o755)):
        (root / d).mkdir()
        (root / d).chmod(mode)
    make("ok.sh")
    make("plain.sh", 0o644)
    make("everyone.sh", 0o757)
    make("group.sh", 0o775, gid=65534)
    make("group_root.sh", 0o775)
    make("not_roots.sh", uid=65534)
    make("open/ok.sh")
    make("sticky/ok.sh")
    make("bin/tool.sh")
    make("bin/plain_tool.sh", 0o644)
    make("open/tool.sh")  # earlier on the PATH than bin/tool.sh in the "open first" cases
    (root / "open" / "to_ok.sh").symlink_to(root / "ok.sh")
    (root / "to_open.sh").symlink_to(root / "open" / "ok.sh")


INSTANCE = """vrrp_instance VI {{
    state BACKUP
    interface {iface}
    virtual_router_id 51
    priority 100
    virtual_ipaddress {{
        198.18.0.1/32
    }}
{body}}}
"""
TRACK = "    track_script {\n        chk\n    }\n"
SECURE = "global_defs {\n    enable_script_security\n    script_user root\n}\n"
SECURE_NO_USER = "global_defs {\n    enable_script_security\n}\n"


def vs(line: str, extra: str = "") -> str:
    return f'vrrp_script chk {{\n    script "{line}"\n{extra}}}\n'


def inst(body: str = TRACK, iface: str = "eth0") -> str:
    return INSTANCE.format(body=body, iface=iface)


def lvs(rs: str = "", vs_extra: str = "") -> str:
    return ("virtual_server 198.18.0.1 80 {\n    lb_algo rr\n    lb_kind NAT\n"
            f"    protocol TCP\n{vs_extra}    real_server 198.18.0.2 80 {{\n{rs}    }}\n}}\n")


def misc(path: str, extra: str = "") -> str:
    return f"        MISC_CHECK {{\n            misc_path {path}\n{extra}        }}\n"


CASES: dict[str, str] = {
    # vrrp_script: found, missing, not executable, on the PATH
    "track_ok": vs("D/ok.sh") + inst(),
    "track_missing": vs("D/absent.sh") + inst(),
    "track_missing_with_args": vs("D/absent.sh 'a b' c") + inst(),
    "track_plain_file": vs("D/plain.sh") + inst(),
    "track_ok_and_missing": vs("D/ok.sh") + vs("D/absent.sh").replace("chk", "gone")
    + inst(),
    "untracked_ok": vs("D/ok.sh") + inst(""),
    "untracked_missing": vs("D/absent.sh") + inst(""),
    "track_on_path": vs("tool.sh") + inst(),
    "track_on_path_not_executable": vs("plain_tool.sh") + inst(),
    "track_not_on_path": vs("absent-tool") + inst(),
    "track_quoted_program": vs("'D/ok.sh' x") + inst(),
    "track_directory": vs("D/bin") + inst(),
    # users
    "track_unknown_user": vs("D/ok.sh", "    user pyalived-no-such-user\n") + inst(),
    "track_unknown_group": vs("D/ok.sh", "    user root pyalived-no-such-group\n") + inst(),
    "global_unknown_user": "global_defs {\n    script_user pyalived-no-such-user\n}\n"
    + vs("D/ok.sh") + inst(),
    "secure_without_default_user": SECURE_NO_USER + vs("D/ok.sh") + inst(),
    "secure_notify_without_default_user": SECURE_NO_USER + inst("    notify D/ok.sh\n"),
    # enable_script_security: who can write the file or a directory above it
    "secure_ok": SECURE + vs("D/ok.sh") + inst(),
    "secure_plain_file": SECURE + vs("D/plain.sh") + inst(),
    "secure_everyone": SECURE + vs("D/everyone.sh") + inst(),
    "secure_group": SECURE + vs("D/group.sh") + inst(),
    "secure_group_root": SECURE + vs("D/group_root.sh") + inst(),
    "secure_not_roots": SECURE + vs("D/not_roots.sh") + inst(),
    "secure_open_dir": SECURE + vs("D/open/ok.sh") + inst(),
    "secure_sticky_dir": SECURE + vs("D/sticky/ok.sh") + inst(),
    "secure_link_in_open_dir": SECURE + vs("D/open/to_ok.sh") + inst(),
    "secure_link_into_open_dir": SECURE + vs("D/to_open.sh") + inst(),
    "secure_untracked_insecure": SECURE + vs("D/everyone.sh") + inst(""),
    "secure_missing": SECURE + vs("D/absent.sh") + inst(),
    "secure_path_open_first": SECURE + vs("tool.sh") + inst(),
    "insecure_without_security": vs("D/everyone.sh") + inst(),
    # notify scripts
    "notify_missing": inst("    notify_master \"D/absent.sh x\"\n"),
    "notify_missing_and_ok": inst("    notify_master D/absent.sh\n    notify_backup D/ok.sh\n"),
    "notify_secure_insecure": SECURE + inst("    notify_master D/everyone.sh\n"),
    "sync_group_notify_missing": inst("") + inst("").replace("VI {", "VJ {").replace(
        "51", "52") + "vrrp_sync_group G {\n    group {\n        VI\n        VJ\n    }\n"
    "    notify_master D/absent.sh\n}\n",
    "sync_group_notify_ok": inst("") + inst("").replace("VI {", "VJ {").replace(
        "51", "52") + "vrrp_sync_group G {\n    group {\n        VI\n        VJ\n    }\n"
    "    notify_master D/ok.sh\n}\n",
    # notify lines naming their user: SCRIPT [USER [GROUP]]
    "notify_unknown_user": inst("    notify_master D/ok.sh pyalived-no-such-user\n"),
    "notify_unquoted_argument_is_a_user": inst("    notify_master D/ok.sh arg1\n"),
    "notify_numeric_user": inst("    notify_backup D/ok.sh 0\n"),
    "notify_root_user": inst("    notify_master D/ok.sh root\n"),
    "notify_quoted_with_user": inst("    notify_master \"D/ok.sh a b\" root\n"),
    "notify_unknown_group": inst("    notify_fault D/ok.sh root pyalived-no-such-group\n"),
    "notify_root_group_extra_words": inst("    notify D/ok.sh root root extra\n"),
    "notify_missing_with_user": inst("    notify_stop D/absent.sh root\n"),
    "notify_unknown_user_and_ok": inst("    notify_master D/ok.sh pyalived-no-such-user\n"
                                       "    notify_backup D/ok.sh\n"),
    "notify_secure_with_root_user": SECURE_NO_USER + inst("    notify_master D/ok.sh root\n"),
    "sync_group_notify_unknown_user": inst("") + inst("").replace("VI {", "VJ {").replace(
        "51", "52") + "vrrp_sync_group G {\n    group {\n        VI\n        VJ\n    }\n"
    "    notify_master D/ok.sh pyalived-no-such-user\n}\n",
    "real_server_notify_unknown_user": lvs("        notify_up D/ok.sh pyalived-no-such-user\n"),
    "real_server_notify_root_user": lvs("        notify_down D/ok.sh root root\n"),
    "quorum_unknown_user": lvs(vs_extra="    quorum_down D/ok.sh pyalived-no-such-user\n"),
    "fifo_script_unknown_user": "global_defs {\n    notify_fifo D/fifo\n"
    "    notify_fifo_script D/ok.sh pyalived-no-such-user\n}\n" + inst(""),
    "misc_path_second_word_is_an_argument": lvs(misc("D/ok.sh pyalived-no-such-user")),
    # LVS
    "misc_missing": lvs(misc("D/absent.sh")),
    "misc_ok": lvs(misc("D/ok.sh")),
    "misc_secure_insecure": SECURE + lvs(misc("D/everyone.sh")),
    "misc_unknown_user": lvs(misc("D/ok.sh", "            user pyalived-no-such-user\n")),
    "real_server_notify_missing": lvs("        notify_up D/absent.sh\n"),
    "real_server_notify_ok": lvs("        notify_down D/ok.sh\n"),
    "quorum_missing": lvs(vs_extra="    quorum_up D/absent.sh\n"),
    # start-up scripts
    "startup_missing": "global_defs {\n    startup_script D/absent.sh\n}\n" + inst(""),
    "startup_ok": "global_defs {\n    startup_script D/ok.sh\n}\n" + inst(""),
    "startup_secure_insecure": "global_defs {\n    enable_script_security\n"
    "    script_user root\n    startup_script D/everyone.sh\n}\n" + inst(""),
    # precedence against other findings
    "unknown_keyword_and_violation": "global_defs {\n    pyalived_no_such_kw\n}\n"
    + vs("D/ok.sh") + inst(),
    "unknown_keyword_and_missing": "global_defs {\n    pyalived_no_such_kw\n}\n"
    + vs("D/absent.sh") + inst(),
    "bad_value_and_violation": vs("D/ok.sh", "    interval abc\n") + inst(),
    "missing_interface_and_violation": vs("D/ok.sh") + inst(iface="eth9"),
    "missing_interface_and_missing_script": vs("D/absent.sh") + inst(iface="eth9"),
}


@pytest.fixture(scope="module")
def scripts_dir() -> Iterator[Path]:
    require_keepalived()
    root = Path(tempfile.mkdtemp(prefix="pyalived-scriptdiff-", dir="/tmp"))
    try:
        _layout(root)
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def namespace() -> Iterator[CheckNamespace]:
    require_keepalived()
    with CheckNamespace() as ns:
        yield ns


def test_no_keepalived_script_user_here() -> None:
    """The cases above assume what keepalived does without that user."""
    with pytest.raises(KeyError):
        pwd.getpwnam("keepalived_script")


@pytest.mark.parametrize("name", sorted(CASES))
def test_exit_status_equals_keepalived(
    name: str, scripts_dir: Path, namespace: CheckNamespace, tmp_path: Path
) -> None:
    conf = tmp_path / f"{name}.conf"
    conf.write_text(CASES[name].replace("D/", f"{scripts_dir}/"))
    search_path = f"{scripts_dir}/open:{scripts_dir}/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    if "path" not in name:
        search_path = f"{scripts_dir}/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    ref = namespace.keepalived(conf, search_path=search_path)
    ours = namespace.pyalived(conf, search_path=search_path)
    assert ref.code in (0, 5, 6), ref.output  # a real verdict, not a crash
    assert ours.code == ref.code, f"keepalived:\n{ref.output}\npyalived:\n{ours.output}"
