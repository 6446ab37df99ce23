"""Checker options bind_if and fwmark: parsed, inherited by SMTP hosts, set on the socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pyalived.checkers.compile import checker_specs
from pyalived.checkers.probes import set_socket_options
from pyalived.checkers.spec import HttpGet, SmtpCheck, TcpCheck
from pyalived.config import LoadResult, load, render


def run(tmp_path: Path, checkers: str, rs: str = "198.18.0.2 80") -> LoadResult:
    p = tmp_path / "keepalived.conf"
    p.write_text(f"""
virtual_server 198.18.0.1 80 {{
  lvs_sched rr
  lvs_method NAT
  protocol TCP
  real_server {rs} {{
{checkers}
  }}
}}
""")
    return load(str(p))


def test_the_options_reach_the_specs(tmp_path: Path) -> None:
    res = run(tmp_path, """
    TCP_CHECK {
      bind_if eth1
      fwmark 42
    }
    HTTP_GET {
      fwmark 0
      url {
        path /
      }
    }
    SMTP_CHECK {
      bind_if eth2
      host {
        connect_ip 198.18.0.3
        fwmark 7
      }
    }""")
    assert res.config is not None, render(res.diagnostics)
    tcp, http, smtp = checker_specs(res.config)[0].real_servers[0].checkers
    assert isinstance(tcp, TcpCheck) and (tcp.bind_if, tcp.fwmark) == ("eth1", 42)
    assert isinstance(http, HttpGet) and (http.bind_if, http.fwmark) == (None, None)
    assert isinstance(smtp, SmtpCheck) and (smtp.bind_if, smtp.fwmark) == ("eth2", 7)


@pytest.mark.parametrize(("line", "fragment"), [
    ("bind_if a/b", "'a/b' is not an interface name"),
    ("bind_if sixteen-letters-x", "is not an interface name"),
    ("fwmark -1", "fwmark"),
    ("fwmark 4294967296", "fwmark"),
])
def test_bad_values_refuse_the_configuration(tmp_path: Path, line: str, fragment: str) -> None:
    res = run(tmp_path, f"    TCP_CHECK {{\n      {line}\n    }}")
    assert res.config is None
    assert any(fragment in d.message and d.location.line == 8 for d in res.diagnostics), (
        render(res.diagnostics))


def test_a_link_local_target_needs_bind_if(tmp_path: Path) -> None:
    res = run(tmp_path, "    TCP_CHECK {\n      connect_ip fe80::1\n    }")
    assert res.config is None
    assert any("link-local address fe80::1 needs bind_if" in d.message for d in res.diagnostics)
    res = run(tmp_path, "    TCP_CHECK {\n      connect_ip fe80::1\n      bind_if eth0\n    }")
    assert res.config is not None, render(res.diagnostics)


def test_the_socket_gets_the_mark_and_the_device() -> None:
    with socket.socket() as s:
        set_socket_options(s, "lo", 42)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 42
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0") == b"lo"
    with socket.socket() as s, pytest.raises(OSError) as err:
        set_socket_options(s, "nosuchdev0", None)
    assert err.value.errno == 19  # ENODEV: the check fails, as keepalived's does
