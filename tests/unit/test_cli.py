"""Command line: flags, config test, pid files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyalived import __version__
from pyalived.cli import main
from pyalived.pidfile import PidFileError, read_pid, remove_pid, running_pid, write_pid

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
vrrp_instance VI_1 {
    state BACKUP
    interface lo
    virtual_router_id 51
    priority 90
    advert_int 1
    virtual_ipaddress {
        198.18.0.100/24
    }
}
"""

BAD = """\
vrrp_instance VI_1 {
    state BACKUP
    interface lo
    virtual_router_id 300
    priority 90
}
"""


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "pyalived", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line mentions pyalived."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "pyalived-test-holder"]
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# ---- in-process flag handling --------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-v"]) == 0
    assert capsys.readouterr().out.strip() == f"pyalived {__version__}"


def test_help_lists_keepalived_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--use-file", "--dont-fork", "--log-console", "--log-detail", "--log-facility",
                 "--pid", "--vrrp_pid", "--checkers_pid", "--config-id", "--vrrp", "--check",
                 "--config-test", "--version"):
        assert flag in out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["-x"], "-x/--snmp"),
        (["--snmp"], "-x/--snmp"),
        (["-s", "ns1"], "-s/--namespace"),
        (["--namespace=ns1"], "-s/--namespace"),
        (["--all"], "--all"),
        (["-d"], "-d/--dump-conf"),
        (["-V"], "-V/--dont-release-vrrp"),
        (["-T"], "-T/--genhash"),
    ],
)
def test_unsupported_keepalived_flags_are_refused_by_name(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"option {named} is not supported" in err


def test_unknown_flag_and_bad_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bogus"]) == 1
    assert "--bogus" in capsys.readouterr().err
    assert main(["-S", "9"]) == 1
    assert "facility" in capsys.readouterr().err
    assert main(["-u", "999"]) == 1
    assert "umask" in capsys.readouterr().err


# ---- config test --------------------------------------------------------------------


def test_config_test_good_config_exits_zero(tmp_path: Path) -> None:
    conf = tmp_path / "good.conf"
    conf.write_text(GOOD)
    proc = run_cli("-t", "-f", str(conf))
    assert proc.returncode == 0, proc.stderr


def test_config_test_bad_config_prints_diagnostics(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(BAD)
    proc = run_cli("-t", "-f", str(conf))
    assert proc.returncode != 0
    assert f"{conf}:4: error:" in proc.stderr


def test_config_test_to_a_log_file(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(BAD)
    log = tmp_path / "check.log"
    proc = run_cli(f"--config-test={log}", "-f", str(conf))
    assert proc.returncode != 0
    assert f"{conf}:4: error:" in log.read_text()


def test_bad_config_is_refused_at_start(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(BAD)
    pid = tmp_path / "p.pid"
    proc = run_cli("-n", "-l", "-f", str(conf), "-p", str(pid))
    assert proc.returncode != 0
    assert f"{conf}:4: error:" in proc.stderr
    assert "refused" in proc.stderr
    assert not pid.exists()


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    proc = run_cli("-n", "-l", "-f", str(tmp_path / "nope.conf"), "-p", str(tmp_path / "p"))
    assert proc.returncode != 0
    assert "nope.conf" in proc.stderr


# ---- pid files ------------------------------------------------------------------------


def test_live_pid_file_refuses_a_second_start(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    conf = tmp_path / "good.conf"
    conf.write_text(GOOD)
    pid = tmp_path / "p.pid"
    pid.write_text(f"{sleeper.pid}\n")
    proc = run_cli("-n", "-l", "-f", str(conf), "-p", str(pid))
    assert proc.returncode == 1
    assert f"already running with pid {sleeper.pid}" in proc.stderr
    assert read_pid(pid) == sleeper.pid


def test_checker_only_daemon_idles_until_sigterm_and_cleans_its_pid_files(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "good.conf"
    conf.write_text(GOOD)
    pid = tmp_path / "p.pid"
    vpid = tmp_path / "v.pid"
    pid.write_text("999999999\n")  # stale: taken over
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyalived", "-C", "-n", "-l", "-f", str(conf), "-p", str(pid),
         "-r", str(vpid)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for _ in range(600):
            if read_pid(pid) == proc.pid:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        assert read_pid(pid) == proc.pid
        assert not vpid.exists()  # -C: no VRRP half
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not pid.exists()


def test_pidfile_helpers(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    path = tmp_path / "x.pid"
    assert running_pid(path) is None
    path.write_text("garbage")
    assert running_pid(path) is None
    path.write_text("999999999\n")
    write_pid(path)  # stale: taken over
    assert read_pid(path) == os.getpid()
    assert running_pid(path) is None  # ourselves
    remove_pid(path)
    assert not path.exists()
    path.write_text(f"{sleeper.pid}\n")
    assert running_pid(path) == sleeper.pid
    with pytest.raises(PidFileError, match="already running"):
        write_pid(path)
    remove_pid(path)  # not ours: left alone
    assert path.exists()


def test_pid_of_an_unrelated_process_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    path.write_text("1\n")  # init is alive but is not pyalived
    assert running_pid(path) is None
