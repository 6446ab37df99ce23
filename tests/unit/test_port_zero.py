"""``real_server IP 0``: keepalived's way to write a real server without a port.

Checked against keepalived 2.2.7: ``-t`` accepts port 0 for a fwmark service
and for an ``IP PORT`` one; its checker child (``-d`` dump) shows the real
server of an ``IP PORT`` service with the service's port, and a fwmark
service's with port 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyalived.checkers.compile import checker_specs, dest_key, ipvs_configs, service_keys
from pyalived.checkers.probes import _target
from pyalived.checkers.spec import TcpCheck
from pyalived.config import LoadResult, Severity, load, render
from pyalived.ipvs.model import DestKey

HEAD = "virtual_server {vs} {{\n lb_algo rr\n lb_kind {kind}\n{proto}"
RS = " real_server 198.18.0.2{port} {{\n  TCP_CHECK {{\n{check}  }}\n }}\n"


def conf(vs: str, port: str, check: str = "", kind: str = "NAT") -> str:
    proto = " protocol TCP\n" if not vs.startswith("fwmark") else ""
    return HEAD.format(vs=vs, kind=kind, proto=proto) + RS.format(port=port, check=check) + "}\n"


def run(tmp_path: Path, text: str) -> LoadResult:
    p = tmp_path / "keepalived.conf"
    p.write_text(text)
    return load(str(p), interface_exists={"eth0"}.__contains__)


def warnings(res: LoadResult) -> list[str]:
    return [d.message for d in res.diagnostics if d.severity is Severity.WARNING]


@pytest.mark.parametrize("port", [" 0", ""])
def test_port_zero_of_an_ip_port_service_is_the_service_port(tmp_path: Path, port: str) -> None:
    res = run(tmp_path, conf("198.18.0.1 8080", port))
    assert res.config is not None, render(res.diagnostics)
    assert res.exit_code == 0, render(res.diagnostics)
    (vs,) = res.config.virtual_servers
    assert vs.real_servers[0].port == 8080
    (ipvs,) = ipvs_configs(res.config)
    assert ipvs.real_servers[0].port == 8080
    (spec,) = checker_specs(res.config)
    rs = spec.real_servers[0]
    (check,) = rs.checkers
    assert isinstance(check, TcpCheck)
    assert _target(check, rs)[1] == 8080  # TCP_CHECK without connect_port: the service port
    (key,) = service_keys(vs, {})
    assert dest_key(rs, key) == DestKey(rs.ip, 8080)


def test_port_zero_of_a_fwmark_service(tmp_path: Path) -> None:
    res = run(tmp_path, conf("fwmark 7", " 0", "   connect_port 25\n", kind="DR"))
    assert res.config is not None and res.exit_code == 0, render(res.diagnostics)
    assert not any("port is ignored" in w for w in warnings(res))  # 0 is no port: no warning
    (vs,) = res.config.virtual_servers
    assert vs.real_servers[0].port is None
    (ipvs,) = ipvs_configs(res.config)
    assert ipvs.real_servers[0].port == 0
    (spec,) = checker_specs(res.config)
    rs = spec.real_servers[0]
    (check,) = rs.checkers
    assert isinstance(check, TcpCheck) and _target(check, rs)[1] == 25


def test_a_fwmark_real_server_with_a_port_still_warns(tmp_path: Path) -> None:
    res = run(tmp_path, conf("fwmark 7", " 80", "   connect_port 25\n", kind="DR"))
    assert any("port is ignored for fwmark services" in w for w in warnings(res))


@pytest.mark.parametrize(("port", "needle"), [(" 65536", "port 65536 is outside [0, 65535]"),
                                              (" -1", "port -1 is outside [0, 65535]"),
                                              (" x", "'x' is not a port number")])
def test_bad_real_server_ports_are_errors(tmp_path: Path, port: str, needle: str) -> None:
    res = run(tmp_path, conf("198.18.0.1 80", port))
    assert res.config is None
    assert any(needle in d.message and d.location.line == 5 for d in res.diagnostics), (
        render(res.diagnostics)
    )
