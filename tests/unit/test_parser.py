"""Parser tests: every supported keyword lands in the model; every error is caught."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from pyalived.config import Diagnostic, LoadResult, Severity, load, render
from pyalived.config.diagnostics import Category
from pyalived.config.model import AuthType, Config, InitialState, ScriptUser, TrackInterface
from tests.unit.fakes import EveryScriptRuns

IFACES = {"eth0", "eth1", "eth2"}

FULL = """\
global_defs {
  router_id R1
  vrrp_version 2
  vrrp_mcast_group4 224.0.0.19
  vrrp_garp_master_delay 7
  vrrp_garp_master_repeat 3
  vrrp_garp_master_refresh 60
  vrrp_garp_master_refresh_repeat 2
  vrrp_garp_interval 0.001
  vrrp_garp_lower_prio_delay 9
  vrrp_garp_lower_prio_repeat 4
  script_user nobody nogroup
  enable_script_security
}
vrrp_script chk {
  script "/bin/check arg"
  interval 2
  timeout 3
  weight -20
  rise 2
  fall 4
  user root wheel
}
vrrp_instance VI_1 {
  state MASTER
  interface eth0
  virtual_router_id 51
  priority 255
  advert_int 2
  ! nopreempt in VI_2: keepalived clears a preempt_delay with nopreempt, with a warning
  preempt_delay 30
  authentication {
    auth_type PASS
    auth_pass secret
  }
  virtual_ipaddress {
    198.18.0.100/24 dev eth1 label eth1:vip scope link brd 198.18.0.255
    198.18.0.101
  }
  virtual_ipaddress_excluded {
    198.18.1.1/32
  }
  unicast_src_ip 198.18.0.11
  unicast_peer {
    198.18.0.12
    198.18.0.13
  }
  use_vmac vrrp51
  vmac_xmit_base
  garp_master_delay 1
  garp_master_refresh 10
  track_interface {
    eth1
    eth2 weight -10
  }
  track_script {
    chk weight 5
  }
  notify_master "/bin/echo master"
  notify_backup "/bin/echo backup now" daemon adm
  notify_fault /bin/fault
  notify_stop /bin/stop
  notify /bin/notify
  smtp_alert
  dont_track_primary
  mcast_src_ip 198.18.0.11
}
vrrp_instance VI_2 {
  interface eth1
  virtual_router_id 52
  nopreempt
  virtual_ipaddress {
    198.18.0.200
  }
}
vrrp_sync_group G {
  group {
    VI_1
    VI_2
  }
  notify_master /bin/gm
  track_script {
    chk
  }
  track_interface {
    eth2 weight 3
  }
  smtp_alert
}
"""


def run(
    tmp_path: Path, text: str, ifaces: set[str] = IFACES, config_id: str | None = "me"
) -> LoadResult:
    p = tmp_path / "keepalived.conf"
    p.write_text(text)
    return load(str(p), config_id=config_id, interface_exists=ifaces.__contains__,
                scripts=EveryScriptRuns())


def only_config(res: LoadResult) -> Config:
    assert res.config is not None, render(res.diagnostics)
    return res.config


def messages(res: LoadResult) -> list[tuple[Severity, int, str]]:
    return [(d.severity, d.location.line, d.message) for d in res.diagnostics]


def test_every_supported_keyword_lands_in_the_model(tmp_path: Path) -> None:
    res = run(tmp_path, FULL)
    # VI_1 is in a sync group: keepalived 2.2.7 drops the weights of its own tracking
    assert [(d.location.line, d.message) for d in res.diagnostics] == [
        (86, "(VI_1) track_interface eth2 is tracked by the instance (or is its interface) and"
             " by sync group G: remove one"),
        (57, "(VI_1) ignoring tracked script chk with weight 5 since the instance is in a"
             " sync group"),
        (54, "(VI_1) ignoring the weight of tracked interface eth2 since the instance is in a"
             " sync group; down means FAULT"),
    ]
    assert res.exit_code == 5
    cfg = only_config(res)
    g = cfg.global_defs
    assert g.router_id == "R1" and g.vrrp_version == 2
    assert g.vrrp_mcast_group4 == IPv4Address("224.0.0.19")
    assert (g.vrrp_garp_master_delay, g.vrrp_garp_master_repeat) == (7.0, 3)
    assert (g.vrrp_garp_master_refresh, g.vrrp_garp_master_refresh_repeat) == (60.0, 2)
    assert g.vrrp_garp_interval == 0.001
    assert (g.vrrp_garp_lower_prio_delay, g.vrrp_garp_lower_prio_repeat) == (9.0, 4)
    assert (g.script_user, g.script_group) == ("nobody", "nogroup")
    assert g.enable_script_security and not g.vrrp_strict
    assert g.location.line == 1

    s = cfg.script("chk")
    assert s.script == "/bin/check arg"
    assert (s.interval, s.timeout, s.weight, s.rise, s.fall) == (2.0, 3.0, -20, 2, 4)
    assert (s.user, s.group) == ("root", "wheel")

    i = cfg.instance("VI_1")
    assert i.location.line == 24
    assert i.state is InitialState.MASTER and i.interface == "eth0"
    assert (i.virtual_router_id, i.priority, i.advert_int) == (51, 255, 2.0)
    assert not i.nopreempt and i.preempt_delay == 30.0
    assert i.authentication is not None
    assert i.authentication.type is AuthType.PASS and i.authentication.password == b"secret"
    v0, v1 = i.virtual_ipaddress
    assert v0.address == IPv4Interface("198.18.0.100/24")
    assert (v0.dev, v0.label, v0.scope) == ("eth1", "eth1:vip", "link")
    assert v0.brd == IPv4Address("198.18.0.255") and v0.location.line == 37
    assert v1.address == IPv4Interface("198.18.0.101/32") and v1.dev is None
    assert i.virtual_ipaddress_excluded[0].address == IPv4Interface("198.18.1.1/32")
    assert i.unicast_src_ip == IPv4Address("198.18.0.11")
    assert i.unicast_peer == (IPv4Address("198.18.0.12"), IPv4Address("198.18.0.13"))
    assert i.use_vmac and i.effective_vmac_name == "vrrp51" and i.vmac_xmit_base
    # instance values win; the rest come from global_defs
    assert (i.garp_master_delay, i.garp_master_refresh) == (1.0, 10.0)
    assert (i.garp_master_repeat, i.garp_master_refresh_repeat) == (3, 2)
    assert (i.garp_lower_prio_delay, i.garp_lower_prio_repeat) == (9.0, 4)
    assert [(t.name, t.weight) for t in i.track_interface] == [("eth1", 0), ("eth2", 0)]
    assert i.track_script == ()
    assert i.notify.master == "/bin/echo master"
    assert i.notify.backup == "/bin/echo backup now"
    assert i.notify.backup_user == ScriptUser("daemon", "adm")
    assert i.notify.master_user is None
    assert (i.notify.fault, i.notify.stop, i.notify.generic) == (
        "/bin/fault",
        "/bin/stop",
        "/bin/notify",
    )
    assert i.smtp_alert and i.dont_track_primary
    assert i.mcast_src_ip == IPv4Address("198.18.0.11")

    i2 = cfg.instance("VI_2")
    assert i2.state is InitialState.BACKUP and i2.priority == 100 and i2.advert_int == 1.0
    assert i2.nopreempt and i2.authentication is None and not i2.use_vmac
    assert (i2.garp_master_delay, i2.garp_master_repeat) == (7.0, 3)

    (grp,) = cfg.vrrp_sync_groups
    assert grp.name == "G" and grp.group == ("VI_1", "VI_2")
    assert grp.notify.master == "/bin/gm"
    assert [t.name for t in grp.track_script] == ["chk"]
    assert grp.track_interface == (TrackInterface("eth2", 3, grp.track_interface[0].location),)
    assert grp.smtp_alert


def test_keepalived_defaults(tmp_path: Path) -> None:
    cfg = only_config(
        run(
            tmp_path,
            "vrrp_instance V {\n interface eth0\n virtual_router_id 1\n"
            " virtual_ipaddress {\n  198.18.0.1\n }\n}\n",
        )
    )
    i = cfg.instance("V")
    assert (i.garp_master_delay, i.garp_master_repeat) == (5.0, 5)
    assert (i.garp_master_refresh, i.garp_master_refresh_repeat) == (0.0, 1)
    assert cfg.global_defs.vrrp_mcast_group4 == IPv4Address("224.0.0.18")


def test_braces_in_keepalived_layouts(tmp_path: Path) -> None:
    text = (
        "vrrp_instance V\n{\n interface eth0\n virtual_router_id 9\n"
        " virtual_ipaddress { 198.18.0.1\n 198.18.0.2 }\n"
        " track_interface { eth1 weight 10 }\n}\n"
    )
    res = run(tmp_path, text)
    assert res.diagnostics == ()
    i = only_config(res).instance("V")
    assert [str(v.ip) for v in i.virtual_ipaddress] == ["198.18.0.1", "198.18.0.2"]
    assert [(t.name, t.weight) for t in i.track_interface] == [("eth1", 10)]


INSTANCE = "vrrp_instance VI_1 {{\n interface eth0\n virtual_router_id 51\n{body}}}\n"
VIP = " virtual_ipaddress {\n  198.18.0.1\n }\n"


def inst(body: str) -> str:
    return INSTANCE.format(body=VIP + body)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (INSTANCE.format(body=VIP).replace("51", "0"), 3, "virtual_router_id 0 is outside"),
        (INSTANCE.format(body=VIP).replace("51", "256"), 3, "virtual_router_id 256"),
        (INSTANCE.format(body=VIP).replace("51", "5x"), 3, "not a whole number"),
        (inst(" priority 0\n"), 7, "priority 0 is outside [1, 255]"),
        (inst(" priority 256\n"), 7, "priority 256"),
        (inst(" advert_int abc\n"), 7, "not a number"),
        (inst(" state SLAVE\n"), 7, "MASTER or BACKUP"),
        (inst(" virtual_ipaddress {\n  198.18.0.300\n }\n"), 8, "not an address"),
        (inst(" virtual_ipaddress {\n  198.18.0.3 dev\n }\n"), 8, "needs a value"),
        (inst(" virtual_ipaddress {\n  198.18.0.3 frob x\n }\n"), 8, "unknown address option"),
        (inst(" unicast_src_ip nope\n"), 7, "not an IP address"),
        (inst(" authentication {\n  auth_type MD5\n  auth_pass x\n }\n"), 8, "PASS or AH"),
        (inst(" authentication {\n  auth_type PASS\n }\n"), 7, "needs auth_pass"),
        (inst(" track_script {\n  nosuch\n }\n"), 8, "no vrrp_script of that name"),
        (inst(" track_interface {\n  eth1 weight 300\n }\n"), 8, "weight 300"),
        (inst(" version 4\n"), 7, "outside"),
        ("global_defs {\n vrrp_version 4\n}\n" + inst(""), 2, "outside"),
        ("global_defs {\n vrrp_mcast_group4 198.18.0.1\n}\n" + inst(""), 2, "not multicast"),
        ("vrrp_instance VI_1 {\n virtual_router_id 5\n" + VIP + "}\n", 1, "has no interface"),
        ("vrrp_instance VI_1 {\n interface eth0\n" + VIP + "}\n", 1, "no virtual_router_id"),
        ("vrrp_instance {\n interface eth0\n}\n", 1, "needs a name"),
        ("vrrp_script s {\n interval 1\n}\n", 1, "has no script"),
        (inst("") + inst(" priority 5\n").replace("51", "52"), 8, "already defined"),
        (inst("") + inst("").replace("VI_1", "VI_2"), 8, "like VI_1"),
        (inst("") + "vrrp_sync_group G {\n group {\n  VI_1\n  VI_9\n }\n}\n", 8, "VI_9"),
        (inst("") + "}\n", 8, "'}' without a matching '{'"),
        (inst("").rstrip("}\n") + "\n", 1, "never closed"),
        ("{\n}\n" + inst(""), 1, "without a keyword"),
    ],
)
def test_errors_refuse_the_config(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    res = run(tmp_path, text)
    assert res.config is None
    errors = [d for d in res.diagnostics if d.severity is Severity.ERROR]
    assert any(d.location.line == line and fragment in d.message for d in errors), render(
        res.diagnostics
    )
    assert res.exit_code == 5


def test_missing_interface(tmp_path: Path) -> None:
    res = run(tmp_path, inst(" track_interface {\n  eth7\n }\n"), ifaces={"eth1"})
    assert res.config is None
    got = {(d.location.line, d.category) for d in res.diagnostics}
    assert got == {(2, Category.MISSING_INTERFACE), (8, Category.MISSING_INTERFACE)}
    assert res.exit_code == 5  # keepalived 2.2.7 -t says 5 too


def test_missing_file_exit_4(tmp_path: Path) -> None:
    res = load(str(tmp_path / "nope.conf"), interface_exists=IFACES.__contains__)
    assert res.config is None and res.exit_code == 4
    (d,) = res.diagnostics
    assert d.category is Category.MISSING_FILE


def test_missing_include_exit_4(tmp_path: Path) -> None:
    res = run(tmp_path, "include gone.conf\n" + inst(""))
    assert res.config is None and res.exit_code == 4


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("global_defs {\n no_email_faults\n}\n" + inst(""), 2, "not supported yet"),
        ("global_defs {\n frobnicate 1\n}\n" + inst(""), 2, "unknown keyword frobnicate"),
        (inst("") + "bogus_block {\n a\n}\n", 8, "unknown keyword bogus_block"),
        (inst(" virtual_routes {\n  198.18.3.0/24 via 198.18.0.1 mtu 1400\n }\n"), 8,
         "route option mtu is not supported yet; ignored"),
        (inst(" foo 1\n"), 7, "unknown keyword foo in vrrp_instance VI_1"),
        (inst(" advert_int 1.5\n"), 7, "whole seconds; using 2"),
        (inst(" authentication {\n auth_type PASS\n auth_pass 123456789\n }\n"), 9, "truncated"),
        (inst(" virtual_ipaddress {\n  fd00:198:18::1\n }\n"), 8, "address family must match"),
        (INSTANCE.format(body=""), 1, "no virtual_ipaddress"),
        (inst("") + "vrrp_sync_group G {\n VI_1\n}\n", 8, "names no instance"),
        (inst("") + "vrrp_sync_group G {\n group {\n  VI_1\n }\n}\n", 8, "only one instance"),
    ],
)
def test_warnings_keep_the_config(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    res = run(tmp_path, text)
    assert res.config is not None, render(res.diagnostics)
    assert all(d.severity is Severity.WARNING for d in res.diagnostics)
    assert any(d.location.line == line and fragment in d.message for d in res.diagnostics), render(
        res.diagnostics
    )
    assert res.exit_code == 5


def test_auth_pass_truncated_to_8_octets(tmp_path: Path) -> None:
    res = run(tmp_path, inst(" authentication {\n auth_type AH\n auth_pass 123456789\n }\n"))
    auth = only_config(res).instance("VI_1").authentication
    assert auth is not None and auth.type is AuthType.AH and auth.password == b"12345678"


def test_script_security_exit_6(tmp_path: Path) -> None:
    res = run(tmp_path, inst(" notify_master /bin/true\n"))
    assert res.config is not None
    (d,) = res.diagnostics
    assert d.category is Category.SCRIPT_SECURITY and d.location.line == 7
    assert res.exit_code == 6


def test_script_security_wins_over_errors_like_keepalived(tmp_path: Path) -> None:
    res = run(tmp_path, inst(" notify_master /bin/true\n").replace("51", "0"))
    assert res.config is None and res.exit_code == 6


def test_missing_interface_wins_over_script_security(tmp_path: Path) -> None:
    res = run(tmp_path, inst(" notify_master /bin/true\n"), ifaces=set())
    assert res.exit_code == 5


def test_vrrp_strict_drops_auth_and_master(tmp_path: Path) -> None:
    text = "global_defs {\n vrrp_strict\n}\n" + inst(
        " state MASTER\n authentication {\n auth_type PASS\n auth_pass x\n }\n"
    )
    res = run(tmp_path, text)
    i = only_config(res).instance("VI_1")
    assert i.authentication is None and i.state is InitialState.BACKUP
    assert len(res.diagnostics) == 2 and res.exit_code == 5


def test_conditional_config_id(tmp_path: Path) -> None:
    text = inst("@high priority 170\n@low priority 85\n")
    assert only_config(run(tmp_path, text, config_id="high")).instance("VI_1").priority == 170
    assert only_config(run(tmp_path, text, config_id="low")).instance("VI_1").priority == 85


def test_variables_in_config(tmp_path: Path) -> None:
    text = "$IF=eth1\n$VIPS=virtual_ipaddress { \\\n 198.18.0.9 \\\n}\n" + INSTANCE.format(
        body=" $VIPS\n"
    ).replace("eth0", "$IF")
    i = only_config(run(tmp_path, text)).instance("VI_1")
    assert i.interface == "eth1" and str(i.virtual_ipaddress[0].ip) == "198.18.0.9"


def test_diagnostic_str_and_render(tmp_path: Path) -> None:
    res = run(tmp_path, inst(" foo\n priority 0\n"))
    path = str(tmp_path / "keepalived.conf")
    strs = [str(d) for d in res.diagnostics]
    assert f"{path}:7: warning: unknown keyword foo in vrrp_instance VI_1" in strs
    assert f"{path}:8: error: priority 0 is outside [1, 255]" in strs
    out = render(res.diagnostics)
    assert out.splitlines()[-1] == "configuration refused: 1 error(s), 1 warning(s)"
    assert render(()) == "configuration OK\n"


def test_result_types_are_frozen(tmp_path: Path) -> None:
    res = run(tmp_path, inst(""))
    with pytest.raises(AttributeError):
        res.exit_code = 1  # type: ignore[misc]
    d = Diagnostic(Severity.ERROR, res.config.instance("VI_1").location, "m")  # type: ignore[union-attr]
    with pytest.raises(AttributeError):
        d.message = "x"  # type: ignore[misc]


def test_owner_without_state_line_starts_master(tmp_path: Path) -> None:
    owner = only_config(run(tmp_path, inst(" priority 255\n"))).instance("VI_1")
    assert owner.state is InitialState.MASTER
    plain = only_config(run(tmp_path, inst(" priority 254\n"))).instance("VI_1")
    assert plain.state is InitialState.BACKUP
