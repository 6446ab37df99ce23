"""keepalived's own sample configs: all load, all diagnostics point at real lines."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyalived.checkers.compile import checker_specs, ipvs_configs, services_by_name
from pyalived.checkers.spec import HttpGet, MiscCheck, SslGet, TcpCheck
from pyalived.config import LoadResult, Severity, load, render
from pyalived.config.model import CheckerType, Config, LvsMethod, LvsProtocol, VirtualServer
from pyalived.ipvs.model import ServiceKey
from tests.unit.fakes import EveryScriptRuns

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "keepalived-samples"
FILES = sorted(SAMPLES.iterdir()) if SAMPLES.is_dir() else []

pytestmark = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason=f"sample directory {SAMPLES} is absent"
)


def load_sample(name: str | Path, config_id: str | None = "high") -> LoadResult:
    return load(str(SAMPLES / name), config_id=config_id, interface_exists=lambda _n: True,
                scripts=EveryScriptRuns())


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_sample_loads_with_real_locations(path: Path) -> None:
    res = load_sample(path)
    for d in res.diagnostics:
        assert os.path.isfile(d.location.file), str(d)
        n_lines = len(Path(d.location.file).read_text().splitlines())
        assert 1 <= d.location.line <= n_lines, str(d)
    # Every sample runs (with its interfaces present): what pyalived does not support
    # is warned about, never a reason to refuse the file.
    errors = [str(d) for d in res.diagnostics if d.severity is Severity.ERROR]
    assert res.config is not None and not errors, errors
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
    # the sample asks for VRRPv3 (line 22) with a 12 s interval
    res = load_sample("keepalived.conf.conditional_conf", config_id="high")
    assert res.config is not None, render(res.diagnostics)
    (i,) = res.config.vrrp_instances
    assert (i.version, i.priority, i.advert_int) == (3, 170, 12.0)
    assert not [d for d in res.diagnostics if d.severity is Severity.ERROR]


def _only_vs(name: str) -> tuple[Config, VirtualServer]:
    res = load_sample(name)
    assert res.config is not None, render(res.diagnostics)
    (vs,) = res.config.virtual_servers
    return res.config, vs


def test_lvs_sample_values() -> None:
    cfg, vs = _only_vs("keepalived.conf.sample")
    assert (vs.name, vs.location.line) == ("10.10.10.2:1358", 26)
    assert (vs.lvs_sched, vs.lvs_method, vs.protocol) == ("rr", LvsMethod.NAT, LvsProtocol.TCP)
    assert (vs.options.delay_loop, vs.persistence_timeout) == (6.0, 50)
    assert vs.sorry_server is not None and str(vs.sorry_server.address) == "192.168.200.200"
    (rs,) = vs.real_servers
    (http,) = rs.checkers
    assert http.type is CheckerType.HTTP_GET
    assert http.urls[0].digest == "640205b7b0fc66c1ea91c463fac6334d"
    (spec,) = checker_specs(cfg)
    (chk,) = spec.real_servers[0].checkers
    assert isinstance(chk, HttpGet) and chk.connect_timeout == 3.0 and chk.effective_retry == 3
    assert chk.timing.delay_loop == 6.0


def test_fwmark_sample() -> None:
    cfg, vs = _only_vs("keepalived.conf.fwmark")
    assert vs.fwmark == 1 and vs.persistence_timeout == 900
    assert [(str(r.address), r.port) for r in vs.real_servers] == [
        ("192.168.201.100", None),
        ("192.168.201.101", None),
    ]
    (v,) = ipvs_configs(cfg)
    assert v.key == ServiceKey.mark(1) and v.real_servers[0].port == 0
    tcp = checker_specs(cfg)[0].real_servers[0].checkers[0]
    assert isinstance(tcp, TcpCheck) and tcp.connect_port == 80


def test_quorum_sample() -> None:
    cfg, vs = _only_vs("keepalived.conf.quorum")
    assert (vs.quorum, vs.hysteresis, vs.alpha, vs.omega) == (7, 2, True, True)
    assert vs.quorum_up == "/usr/local/sbin/quorum-up.sh"
    assert vs.quorum_down == "/usr/local/sbin/quorum-down.sh"
    (v,) = ipvs_configs(cfg)
    assert (v.quorum, v.hysteresis, v.alpha, v.scheduler) == (7, 2, True, "wrr")
    assert checker_specs(cfg)[0].omega


def test_virtual_server_group_sample() -> None:
    cfg, vs = _only_vs("keepalived.conf.virtual_server_group")
    assert vs.group == "VSG_1"
    g = cfg.virtual_server_group("VSG_1")
    assert len(g.entries) == 6
    keys = services_by_name(cfg)["group VSG_1"]
    assert len(keys) == 3 + 8 + 2  # three addresses, 192.168.200.3-10, two fwmarks
    assert ServiceKey.inet("192.168.200.7", 80) in keys and ServiceKey.mark(2) in keys
    assert len(ipvs_configs(cfg)) == len(keys)


def test_ssl_get_samples() -> None:
    cfg, _vs = _only_vs("keepalived.conf.HTTP_GET.port")
    (ssl,) = checker_specs(cfg)[0].real_servers[0].checkers
    assert isinstance(ssl, SslGet) and ssl.connect_port == 444
    res = load_sample("keepalived.conf.SSL_GET")
    assert res.config is not None
    kinds = [type(c) for s in checker_specs(res.config) for c in s.real_servers[0].checkers]
    assert kinds == [SslGet, HttpGet]
    assert [u.path for u in res.config.virtual_servers[0].real_servers[0].checkers[0].urls] == [
        "/",
        "/mrtg/",
    ]


def test_misc_check_sample() -> None:
    cfg, _vs = _only_vs("keepalived.conf.misc_check")
    (misc,) = checker_specs(cfg)[0].real_servers[0].checkers
    assert isinstance(misc, MiscCheck) and misc.misc_path == "/usr/local/bin/script.sh"
    assert load_sample("keepalived.conf.misc_check").exit_code == 6  # no script security


def test_inhibit_sample() -> None:
    cfg, vs = _only_vs("keepalived.conf.inhibit")
    assert vs.real_servers[0].inhibit_on_failure is True
    assert ipvs_configs(cfg)[0].real_servers[0].inhibit_on_failure is True


def test_status_code_sample() -> None:
    cfg, vs = _only_vs("keepalived.conf.status_code")
    u1, u2 = vs.real_servers[0].checkers[0].urls
    assert u1.status_code == ((200, 299), (400, 499), (503, 503), (505, 505))
    assert u2.status_code == ((200, 200),) and u2.digest == "9b3a0c85a887a256d6939da88aabd8cd"
    (ssl,) = checker_specs(cfg)[0].real_servers[0].checkers
    assert isinstance(ssl, SslGet)
    assert ssl.urls[0].status_ok(404) and not ssl.urls[0].status_ok(502)


@pytest.mark.parametrize(
    ("name", "kind", "count"),
    [
        ("keepalived.conf.SMTP_CHECK", CheckerType.SMTP_CHECK, 7),
        ("keepalived.conf.UDP_CHECK", CheckerType.UDP_CHECK, 1),
        ("keepalived.conf.PING_CHECK", CheckerType.PING_CHECK, 1),
    ],
)
def test_new_checker_samples_load(name: str, kind: CheckerType, count: int) -> None:
    res = load_sample(name)
    assert res.config is not None
    assert not any("not supported" in d.message for d in res.diagnostics), res.diagnostics
    checkers = [c for vs in res.config.virtual_servers for rs in vs.real_servers
                for c in rs.checkers]
    assert [c.type for c in checkers] == [kind] * count


def test_smtp_sample_checks_each_host_and_not_the_real_server_itself() -> None:
    res = load_sample("keepalived.conf.SMTP_CHECK")
    assert res.config is not None
    (_, multi, extended) = res.config.virtual_servers[0].real_servers
    assert [str(c.connect_ip) for c in multi.checkers] == [
        "172.16.1.11", "192.168.155.10", "64.233.167.99"]
    assert [(c.connect_port, str(c.bindto)) for c in extended.checkers] == [
        (25, "172.16.1.2"), (25, "192.168.155.2"), (587, "None")]
    assert {c.helo_name for c in multi.checkers + extended.checkers} == {"foo.bar.com"}


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


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_sample_through_the_command_line(path: Path) -> None:
    """``pyalived -t`` on every sample: keepalived's exit codes, file:line lines, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "pyalived", "-t", "-f", str(path), "-i", "high"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode in (0, 5, 6), output
    lines = output.splitlines()
    assert lines, "no summary line"
    for line in lines[:-1]:
        assert re.match(r"^\S+:\d+: (error|warning|notice): ", line), line
    assert lines[-1].startswith(
        ("configuration OK", "configuration accepted", "configuration refused")
    )
