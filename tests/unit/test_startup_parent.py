"""The parent's start-up helpers: its settings from the reader, pid paths, scripts.

The scripts are real ``/bin/sh`` processes with short timeouts; the signal
mask test blocks SIGTERM in this process first, as the daemon's parent does.
"""

from __future__ import annotations

import pickle
import signal
import time
from pathlib import Path

from pyalived.config import load
from pyalived.config.model import ParentScript
from pyalived.config.reader import CHECKERS, PARENT, VRRP, pickle_halves
from pyalived.startup import (
    ParentSettings,
    namespace_pid_files,
    run_parent_script,
)


def test_the_reader_hands_the_parent_its_settings(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text(
        "net_namespace blue\nglobal_defs {\n    enable_script_security\n"
        "    script_user nobody\n    startup_script /bin/true\n    shutdown_script /bin/false\n"
        "    shutdown_script_timeout 7\n}\n"
    )
    result = load(str(conf), interface_exists=lambda name: True)
    assert result.config is not None, result.diagnostics
    halves = pickle_halves(result.config, [VRRP, CHECKERS])
    settings = pickle.loads(halves[PARENT])
    assert isinstance(settings, ParentSettings)
    assert settings.net_namespace == "blue" and settings.script_user == "nobody"
    assert settings.startup_script is not None and settings.shutdown_script is not None
    assert (settings.startup_script.command, settings.startup_script.timeout) == (
        "/bin/true", 10.0)
    assert settings.shutdown_script.timeout == 7.0


def test_pid_files_in_a_namespace_go_to_its_directory() -> None:
    assert namespace_pid_files("blue", None, None, None) == (
        "/run/pyalived/blue/pyalived.pid", "/run/pyalived/blue/vrrp.pid",
        "/run/pyalived/blue/checkers.pid")
    assert namespace_pid_files("blue", "/tmp/p.pid", None, "/tmp/c.pid") == (
        "/tmp/p.pid", "/run/pyalived/blue/vrrp.pid", "/tmp/c.pid")


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "s.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_a_script_s_status_is_returned(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ok = ParentScript(f"{_script(tmp_path, f'echo $1 > {out}; exit 0')} 'a b'", timeout=5)
    assert run_parent_script("startup script", ok, ParentSettings()) == 0
    assert out.read_text() == "a b\n"
    bad = ParentScript(_script(tmp_path, "exit 3"), timeout=5)
    assert run_parent_script("shutdown script", bad, ParentSettings()) == 3
    missing = ParentScript(str(tmp_path / "nothing-here"), timeout=5)
    assert run_parent_script("startup script", missing, ParentSettings()) is None


def test_a_script_past_its_timeout_gets_sigterm_even_from_a_parent_blocking_it(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    body = f"trap 'echo term >> {out}; exit 3' TERM\nsleep 30 &\nwait\n"
    script = ParentScript(_script(tmp_path, body), timeout=1)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        begin = time.monotonic()
        assert run_parent_script("startup script", script, ParentSettings()) is None
        took = time.monotonic() - begin
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert out.read_text() == "term\n"
    assert took >= 1.0


def test_a_script_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    body = f"trap '' TERM\nsleep 1.5\necho survived > {out}\n"
    script = ParentScript(_script(tmp_path, body), timeout=0.2)
    assert run_parent_script("startup script", script, ParentSettings()) is None
    time.sleep(1.6)
    assert not out.exists()  # SIGKILL took the whole group, its sleep included


def test_an_unknown_user_does_not_run_the_script(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = ParentScript(_script(tmp_path, f"touch {out}"), timeout=5,
                          user="no-such-user-here")
    assert run_parent_script("startup script", script, ParentSettings()) is None
    assert not out.exists()
