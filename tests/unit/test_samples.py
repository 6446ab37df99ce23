"""keepalived's own sample configs: all load, all diagnostics point at real lines."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyalived.config import LoadResult, Severity, load, render

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "keepalived-samples"
FILES = sorted(SAMPLES.iterdir()) if SAMPLES.is_dir() else []

pytestmark = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason=f"sample directory {SAMPLES} is absent"
)


def load_sample(name: str | Path, config_id: str | None = "high") -> LoadResult:
    return load(str(SAMPLES / name), config_id=config_id, interface_exists=lambda _n: True)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_sample_loads_with_real_locations(path: Path) -> None:
    res = load_sample(path)
    for d in res.diagnostics:
        assert os.path.isfile(d.location.file), str(d)
        n_lines = len(Path(d.location.file).read_text().splitlines())
        assert 1 <= d.location.line <= n_lines, str(d)
    assert (res.config is None) == any(d.severity is Severity.ERROR for d in res.diagnostics)
    assert res.exit_code in (0, 5, 6)


def test_vrrp_sample_values() -> None:
    res = load_sample("keepalived.conf.vrrp")
    assert res.config is not None, render(res.diagnostics)
    i = res.config.instance("VI_1")
    assert (i.interface, i.virtual_router_id, i.priority) == ("eth0", 51, 100)
    assert i.garp_master_delay == 10.0
    assert i.authentication is not None and i.authentication.password == b"1111"
    assert i.location.line == 13


def test_scripts_sample_values() -> None:
    res = load_sample("keepalived.conf.vrrp.scripts")
    assert res.config is not None, render(res.diagnostics)
    (g,) = res.config.vrrp_sync_groups
    assert g.group == ("VI_2", "VI_3")
    assert g.notify.master == "/usr/local/bin/vrrp.mast arg1 arg2"
    assert res.config.instance("VI_2").priority == 150
    assert res.exit_code == 6  # notify scripts without enable_script_security


def test_conditional_sample_selects_by_config_id() -> None:
    # the sample asks for VRRPv3, which this daemon refuses
    res = load_sample("keepalived.conf.conditional_conf", config_id="high")
    assert res.config is None
    assert [d.location.line for d in res.diagnostics if d.severity is Severity.ERROR] == [22]


def test_unsupported_blocks_are_warnings() -> None:
    res = load_sample("keepalived.conf.sample")
    assert res.config is not None
    assert any("virtual_server is not supported yet" in d.message for d in res.diagnostics)


# ---- exit codes against the reference: keepalived 2.2.7's -t -------------------

FIXTURES = Path(__file__).resolve().parent / "config_fixtures"
FIXTURE_FILES = sorted(FIXTURES.glob("*.conf"))
_ns_counter = itertools.count()


@pytest.fixture
def netns_with_eth0() -> Iterator[str]:
    """A namespace holding a veth pair eth0/eth1 (keepalived -t refuses lo)."""
    if shutil.which("keepalived") is None or os.geteuid() != 0:
        pytest.skip("needs root and the keepalived binary")
    name = f"pyacfg{os.getpid()}x{next(_ns_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
            check=True,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.mark.netns
@pytest.mark.interop
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[p.name for p in FIXTURE_FILES])
def test_exit_code_matches_keepalived(netns_with_eth0: str, path: Path) -> None:
    ref = subprocess.run(
        ["ip", "netns", "exec", netns_with_eth0, "keepalived", "-t", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ours = load(str(path), interface_exists=lambda n: n in ("eth0", "eth1"))
    assert ours.exit_code == ref.returncode, render(ours.diagnostics) + ref.stderr
