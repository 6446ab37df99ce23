"""global_defs mail and FIFO keywords, and each instance's and group's smtp_alert default."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyalived.config import load
from pyalived.config.model import NotifyFifo, SmtpServer
from tests.unit.fakes import EveryScriptRuns

INSTANCE = ("vrrp_instance VI_1 {{\n interface lo\n virtual_router_id 51\n"
            " virtual_ipaddress {{\n  198.18.0.1\n }}\n{body}}}\n")
GROUP = "vrrp_sync_group G1 {{\n group {{\n  VI_1\n }}\n{body}}}\n"


def load_text(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "keepalived.conf"
    path.write_text(text)
    return load(str(path), interface_exists=lambda name: True, scripts=EveryScriptRuns())


def test_mail_and_fifo_keywords(tmp_path: Path) -> None:
    res = load_text(tmp_path, """global_defs {
  router_id lb1
  notification_email {
    ops@example.org
    noc@example.org dba@example.org
  }
  notification_email_from keepalived@lb1.example.org
  smtp_server 198.18.0.25 2525
  smtp_helo_name lb1.example.org
  smtp_connect_timeout 7
  smtp_alert_vrrp
  notify_fifo /run/k.fifo
  notify_fifo_script "/usr/local/bin/reader --all" keepalived_script
  vrrp_notify_fifo /run/v.fifo root root
  lvs_notify_fifo_script /usr/local/bin/lvs
  lvs_notify_fifo /run/l.fifo
  enable_script_security
}
""" + INSTANCE.format(body=""))
    assert res.config is not None, res.diagnostics
    assert [str(d) for d in res.diagnostics] == []
    g = res.config.global_defs
    assert g.notification_email == ("ops@example.org", "noc@example.org", "dba@example.org")
    assert g.notification_email_from == "keepalived@lb1.example.org"
    assert g.smtp_server == SmtpServer("198.18.0.25", 2525)
    assert (g.smtp_helo_name, g.smtp_connect_timeout) == ("lb1.example.org", 7.0)
    assert (g.smtp_alert, g.smtp_alert_vrrp, g.smtp_alert_checker) == (None, True, None)
    assert g.notify_fifo == NotifyFifo("/run/k.fifo", script="/usr/local/bin/reader --all",
                                       script_user="keepalived_script")
    assert g.vrrp_notify_fifo == NotifyFifo("/run/v.fifo", "root", "root")
    # The script line may come before its FIFO's.
    assert g.lvs_notify_fifo == NotifyFifo("/run/l.fifo", script="/usr/local/bin/lvs")
    assert res.config.vrrp_instances[0].smtp_alert is True  # from smtp_alert_vrrp


def test_defaults(tmp_path: Path) -> None:
    res = load_text(tmp_path, INSTANCE.format(body=""))
    assert res.config is not None
    g = res.config.global_defs
    assert (g.smtp_server, g.notification_email, g.smtp_connect_timeout) == (None, (), 30.0)
    assert g.notify_fifo is None and not res.config.vrrp_instances[0].smtp_alert


@pytest.mark.parametrize(("globals_", "inst", "group", "expected"), [
    ("smtp_alert", "", "", (True, True)),
    ("smtp_alert\n smtp_alert_vrrp false", "", "", (False, False)),
    ("smtp_alert false\n smtp_alert_vrrp", "", "", (True, True)),
    ("smtp_alert", " smtp_alert off\n", "", (False, True)),
    ("", " smtp_alert\n", " smtp_alert\n", (True, True)),
    ("smtp_alert_checker", "", "", (False, False)),
])
def test_smtp_alert_defaults_as_keepalived(
    tmp_path: Path, globals_: str, inst: str, group: str, expected: tuple[bool, bool]
) -> None:
    # global_defs last: an instance or group takes the default wherever the block is.
    res = load_text(tmp_path, INSTANCE.format(body=inst) + GROUP.format(body=group)
                    + f"global_defs {{\n {globals_}\n}}\n")
    assert res.config is not None, res.diagnostics
    assert (res.config.vrrp_instances[0].smtp_alert,
            res.config.vrrp_sync_groups[0].smtp_alert) == expected


@pytest.mark.parametrize(("line", "fragment", "error"), [
    ("smtp_server 198.18.0.25 70000", "outside [1, 65535]", True),
    ("smtp_server 198.18.0.25 25 extra", "needs HOST [PORT]", True),
    ("smtp_server bad/host", "not an address or host name", True),
    ("smtp_connect_timeout 4295", "outside", True),
    ("smtp_connect_timeout 1.5", "not a whole number", True),
    ("smtp_connect_timeout 0", "greater than 0; using 1", False),
    ("smtp_alert maybe", "not true/false", True),
    ("notification_email {\n  <root>\n }", "not a mail address", True),
    ("notify_fifo relative/path", "not an absolute path", True),
    ("vrrp_notify_fifo /a b c d", "needs PATH [USER [GROUP]]", True),
    ("no_email_faults", "not supported yet", False),
])
def test_bad_values_name_their_line(
    tmp_path: Path, line: str, fragment: str, error: bool
) -> None:
    res = load_text(tmp_path, "global_defs {\n " + line + "\n}\n" + INSTANCE.format(body=""))
    (d,) = [d for d in res.diagnostics if "enable_script_security" not in str(d)]
    at = ":3:" if line.startswith("notification_email") else ":2:"
    assert fragment in str(d) and at in str(d), str(d)
    assert (res.config is None) is error


def test_a_local_mailbox_is_an_address(tmp_path: Path) -> None:
    res = load_text(tmp_path, "global_defs {\n notification_email {\n  acassen\n }\n}\n"
                    + INSTANCE.format(body=""))
    assert res.config is not None and res.config.global_defs.notification_email == ("acassen",)


def test_smtp_server_takes_a_host_name_and_ipv6(tmp_path: Path) -> None:
    for text, server in (("mail.example.org", SmtpServer("mail.example.org")),
                         ("fd00:198:18::25 587", SmtpServer("fd00:198:18::25", 587))):
        res = load_text(tmp_path, f"global_defs {{\n smtp_server {text}\n}}\n"
                        + INSTANCE.format(body=""))
        assert res.config is not None and res.config.global_defs.smtp_server == server


def test_connect_timeout_zero_becomes_one(tmp_path: Path) -> None:
    res = load_text(tmp_path, "global_defs {\n smtp_connect_timeout 0\n}\n"
                    + INSTANCE.format(body=""))
    assert res.config is not None and res.config.global_defs.smtp_connect_timeout == 1.0
