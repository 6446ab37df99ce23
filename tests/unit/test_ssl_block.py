"""The top-level SSL block: parsed, its files checked, handed to SSL_GET's probes."""

from __future__ import annotations

from pathlib import Path

from pyalived.checkers.tls import TlsClient, cached_context, client_context
from pyalived.config import LoadResult, load, render
from pyalived.config.lvs_parse import tls_client
from tests.tlsfiles import TlsFiles, make_tls_files

VS = """
virtual_server 198.18.0.1 443 {
  lvs_sched rr
  lvs_method NAT
  protocol TCP
  real_server 198.18.0.2 443 {
    SSL_GET {
      url {
        path /
      }
    }
  }
}
"""


def run(tmp_path: Path, ssl: str) -> LoadResult:
    p = tmp_path / "keepalived.conf"
    p.write_text(ssl + VS)
    return load(str(p))


def block(f: TlsFiles, key: Path | None = None, password: str | None = "s3cret") -> str:
    lines = [f"  certificate {f.client_cert}", f"  key {key or f.client_key}", f"  ca {f.ca}"]
    if password is not None:
        lines.insert(0, f"  password {password}")
    return "SSL {\n" + "\n".join(lines) + "\n}\n"


def test_the_block_reaches_the_probes_settings(tmp_path: Path) -> None:
    f = make_tls_files(tmp_path / "tls", "s3cret")
    res = run(tmp_path, block(f))
    assert res.config is not None and res.config.ssl is not None, render(res.diagnostics)
    assert not res.diagnostics, render(res.diagnostics)
    settings = tls_client(res.config.ssl)
    assert settings == TlsClient(str(f.client_cert), str(f.client_key), "s3cret", str(f.ca))
    ctx = client_context(settings)
    assert not ctx.check_hostname and ctx.verify_mode.name == "CERT_NONE"  # as keepalived
    assert tls_client(None) == TlsClient()


def test_files_that_cannot_be_used_refuse_the_configuration(tmp_path: Path) -> None:
    f = make_tls_files(tmp_path / "tls", "s3cret")
    for text, why in [
        (block(f, password="wrong"), "or a wrong password"),
        (block(f, key=f.other_key, password=None), "KEY_VALUES_MISMATCH"),
        (block(f).replace(str(f.ca), str(tmp_path / "missing.pem")), "cannot load CA file"),
        (block(f).replace(str(f.client_cert), str(tmp_path / "nope.pem")),
         "no such file or directory"),
    ]:
        res = run(tmp_path, text)
        assert res.config is None
        assert [(d.location.line, why in d.message) for d in res.diagnostics] == [(1, True)], (
            render(res.diagnostics))


def test_a_key_alone_is_warned_and_a_second_block_replaces_the_first(tmp_path: Path) -> None:
    f = make_tls_files(tmp_path / "tls")
    res = run(tmp_path, f"SSL {{\n key {f.client_key}\n}}\n" + block(f, password=None))
    assert res.config is not None and res.config.ssl is not None
    assert res.config.ssl.certificate == str(f.client_cert)
    assert [d.location.line for d in res.diagnostics] == [1, 4]
    assert "key without certificate" in res.diagnostics[0].message
    assert "replaces it" in res.diagnostics[1].message


def test_a_renewed_certificate_is_picked_up_without_a_reload(tmp_path: Path) -> None:
    f = make_tls_files(tmp_path / "tls")
    settings = TlsClient(str(f.client_cert), str(f.client_key))
    first = cached_context(settings)
    assert cached_context(settings) is first
    renewed = make_tls_files(tmp_path / "renewed")
    f.client_cert.write_bytes(renewed.client_cert.read_bytes() + b"\n")
    f.client_key.write_bytes(renewed.client_key.read_bytes())
    assert cached_context(settings) is not first
