"""The systemd unit and its EnvironmentFile: systemd's own linter, and what they promise.

``systemd-analyze verify`` loads unit files offline, so it runs in a container
without a running systemd.  It insists that ExecStart's binary exists, so the
unit is verified from a copy pointing at this checkout's entry point.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyalived.cli import build_parser
from pyalived.limits import NOFILE_CEILING

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "pyalived.service"
DEFAULTS = REPO / "systemd" / "pyalived.default"
INSTALLED_BINARY = "/usr/local/sbin/pyalived"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze (apt: systemd) missing")


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (systemd keys may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, val = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(val.strip())
    return settings


def local_copy(tmp_path: Path, text: str | None = None) -> Path:
    entry = Path(sys.executable).parent / "pyalived"
    if not entry.exists():
        pytest.skip("the pyalived entry point is not installed in this environment")
    copy = tmp_path / "pyalived.service"
    copy.write_text((text or UNIT.read_text()).replace(INSTALLED_BINARY, str(entry)))
    return copy


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=120, cwd=unit.parent)


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    result = verify(local_copy(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr


@needs_systemd_analyze
def test_verify_catches_mistakes(tmp_path: Path) -> None:
    """The linter really looks at our file (so a clean result means something)."""
    broken = UNIT.read_text().replace("KillMode=mixed", "KilMode=mixed")
    result = verify(local_copy(tmp_path, broken))
    assert "KilMode" in result.stderr


def test_service_promises() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Service.Type"] == ["notify"]
    assert s["Service.NotifyAccess"] == ["main"]
    assert s["Service.EnvironmentFile"] == ["-/etc/default/pyalived"]
    assert s["Service.ExecStart"] == [f"{INSTALLED_BINARY} --dont-fork $DAEMON_ARGS"]
    assert s["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Service.KillMode"] == ["mixed"]
    assert s["Service.Restart"] == ["on-failure"]
    assert s["Service.WatchdogSec"] == ["10s"]
    # An explicit descriptor budget, well above the soft default of 1024 and
    # within what pyalived raises its own soft limit to.
    (nofile,) = s["Service.LimitNOFILE"]
    soft, _, hard = nofile.partition(":")
    assert 4096 <= int(soft) <= int(hard or soft) <= NOFILE_CEILING
    caps = s["Service.CapabilityBoundingSet"][0].split()
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW"} <= set(caps)
    families = s["Service.RestrictAddressFamilies"][0].split()
    # netlink (addresses, links), packet (GARP), inet (VRRP raw sockets, metrics),
    # unix (sd_notify, syslog)
    assert {"AF_NETLINK", "AF_PACKET", "AF_INET", "AF_UNIX"} <= set(families)
    assert s["Unit.Conflicts"] == ["keepalived.service"]
    assert s["Install.WantedBy"] == ["multi-user.target"]


def test_defaults_file_and_documented_flags_are_accepted() -> None:
    text = DEFAULTS.read_text()
    out = subprocess.run(["sh", "-c", '. "$1"; printf %s "$DAEMON_ARGS"', "sh", str(DEFAULTS)],
                         capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout == ""
    parser = build_parser()
    examples = [line.lstrip("#").strip().split("  ")[0] for line in text.splitlines()
                if line.lstrip("#").strip().startswith("-")]
    assert examples
    for example in examples:
        parser.parse_args(["--dont-fork", *shlex.split(example)])
