"""Deprecated spellings and sanity warnings, as keepalived 2.2.7's ``-t`` makes them.

Each case was run through ``keepalived -t``: where keepalived counts the
message (exit 5), pyalived warns (exit 5); where keepalived reads a deprecated
spelling without a word under ``-t`` (exit 0), pyalived prints a notice and
still exits 0.  In both cases the value is applied.
"""

from __future__ import annotations

from ipaddress import IPv6Network
from pathlib import Path

import pytest

from pyalived.config import LoadResult, Severity, load, render

VS = """virtual_server 198.18.1.1 80 {{
    delay_loop 5
    lb_algo rr
    lb_kind NAT
    protocol TCP
{vs}
    real_server 198.18.0.5 80 {{
{rs}
    }}
}}
"""

INSTANCE = """vrrp_instance VI_1 {{
    interface eth0
    virtual_router_id 51
    priority 100
{body}
    virtual_ipaddress {{
        198.18.0.100/24
    }}
}}
"""


def run(tmp_path: Path, text: str) -> LoadResult:
    p = tmp_path / "keepalived.conf"
    p.write_text(text)
    return load(str(p), interface_exists={"eth0"}.__contains__)


def kinds(res: LoadResult) -> list[tuple[Severity, int, str]]:
    return [(d.severity, d.location.line, d.message) for d in res.diagnostics]


def test_nb_get_retry_is_read_in_http_get_with_a_warning(tmp_path: Path) -> None:
    rs = "        HTTP_GET {\n            url {\n                path /\n            }\n" \
         "            nb_get_retry 7\n        }"
    res = run(tmp_path, VS.format(vs="", rs=rs))
    assert kinds(res) == [(Severity.WARNING, 12, "nb_get_retry is deprecated; write retry instead")]
    assert res.exit_code == 5 and res.config is not None
    (checker,) = res.config.virtual_servers[0].real_servers[0].checkers
    assert checker.options.retry == 7


@pytest.mark.parametrize(("where", "line"), [("vs", 6), ("rs", 8), ("tcp", 9)])
def test_nb_get_retry_elsewhere_is_unknown_as_in_keepalived(
    tmp_path: Path, where: str, line: int
) -> None:
    # keepalived 2.2.7: "Unknown keyword 'nb_get_retry'" and the value is not used
    vs = "    nb_get_retry 7" if where == "vs" else ""
    rs = {
        "vs": "        TCP_CHECK {\n        }",
        "rs": "        nb_get_retry 7\n        TCP_CHECK {\n        }",
        "tcp": "        TCP_CHECK {\n            nb_get_retry 7\n        }",
    }[where]
    res = run(tmp_path, VS.format(vs=vs, rs=rs))
    assert [(s, n) for s, n, _ in kinds(res)] == [(Severity.WARNING, line)]
    assert "unknown keyword nb_get_retry" in res.diagnostics[0].message
    assert res.config is not None
    (checker,) = res.config.virtual_servers[0].real_servers[0].checkers
    assert checker.options.retry != 7


@pytest.mark.parametrize(
    "body",
    ["    unicast_src_ip 198.18.0.1", "    old_unicast_checksum", "    unicast_peer {\n    }"],
)
def test_unicast_keyword_without_a_peer_is_warned(tmp_path: Path, body: str) -> None:
    res = run(tmp_path, INSTANCE.format(body=body))
    (d,) = res.diagnostics
    assert d.severity is Severity.WARNING and d.location.line == 5
    assert "without any unicast_peer; the instance advertises by multicast" in d.message
    assert res.exit_code == 5 and res.config is not None
    assert res.config.vrrp_instances[0].unicast_peer == ()


def test_unicast_src_ip_with_a_peer_is_fine(tmp_path: Path) -> None:
    body = "    unicast_src_ip 198.18.0.1\n    unicast_peer {\n        198.18.0.2\n    }"
    res = run(tmp_path, INSTANCE.format(body=body))
    assert res.diagnostics == () and res.exit_code == 0


def test_route_gw_is_a_deprecated_via(tmp_path: Path) -> None:
    res = run(tmp_path, "static_routes {\n    198.18.5.0/24 gw 198.18.0.2 dev eth0\n}\n")
    assert kinds(res) == [(Severity.WARNING, 2, "route option gw is deprecated; write via instead")]
    assert res.exit_code == 5 and res.config is not None
    assert str(res.config.static_routes[0].via) == "198.18.0.2"


def test_default6_is_read_with_a_notice_and_exit_0(tmp_path: Path) -> None:
    res = run(tmp_path, "static_routes {\n    default6 via fd00:198:18::2 dev eth0\n}\n")
    assert [(s, n) for s, n, _ in kinds(res)] == [(Severity.NOTICE, 2)]
    assert res.exit_code == 0 and res.config is not None
    assert res.config.static_routes[0].dst == IPv6Network("::/0")
    assert render(res.diagnostics).endswith("configuration OK, with notices\n")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("vrrp_track_file TF {\n    file /tmp/x\n}\n", "vrrp_track_file is deprecated"),
        ("global_defs {\n    vrrp_rlimit_rtime 5000\n}\n", "write vrrp_rlimit_rttime"),
        ("global_defs {\n    checker_rlimit_rtime 5000\n}\n", "write checker_rlimit_rttime"),
    ],
)
def test_deprecations_keepalived_does_not_count_are_notices(
    tmp_path: Path, text: str, fragment: str
) -> None:
    res = run(tmp_path, text)
    (d,) = res.diagnostics
    assert d.severity is Severity.NOTICE and fragment in d.message
    assert res.exit_code == 0 and res.config is not None


def test_rlimit_rtime_still_applies(tmp_path: Path) -> None:
    res = run(tmp_path, "global_defs {\n    vrrp_rlimit_rtime 5000\n}\n")
    assert res.config is not None and res.config.global_defs.vrrp_rlimit_rttime == 5000


def test_smtp_check_host_block_is_a_notice(tmp_path: Path) -> None:
    rs = "        SMTP_CHECK {\n            host {\n                connect_ip 198.18.0.6\n" \
         "            }\n        }"
    res = run(tmp_path, VS.format(vs="", rs=rs))
    assert [(s, n) for s, n, _ in kinds(res)] == [(Severity.NOTICE, 9)]
    assert res.exit_code == 0 and res.config is not None


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("global_defs {\n    lvs_process_name lvs\n}\n", 2),
        ("global_defs {\n    vrrp_vmac_garp_intvl 5\n}\n", 2),
        (INSTANCE.format(body="    vmac_garp_intvl 5"), 5),
    ],
)
def test_old_spellings_of_keywords_not_supported_say_so(
    tmp_path: Path, text: str, line: int
) -> None:
    res = run(tmp_path, text)
    (d,) = res.diagnostics
    assert (d.severity, d.location.line) == (Severity.WARNING, line)
    assert "is not supported yet" in d.message


# ---- sanity warnings found by the differential test (tests/netns/test_config_differential.py)


def test_strict_mode_clears_what_it_does_not_allow(tmp_path: Path) -> None:
    body = ("    preempt_delay 10\n    garp_lower_prio_repeat 2\n    garp_lower_prio_delay 3\n"
            "    use_vmac\n    vmac_xmit_base\n    unicast_peer {\n        198.18.0.2\n    }")
    res = run(tmp_path, "global_defs {\n    vrrp_strict\n}\n" + INSTANCE.format(body=body))
    assert [m for _, _, m in kinds(res)] == [
        f"vrrp_instance VI_1: vrrp_strict does not allow {key}; cleared"
        for key in ("preempt_delay", "garp_lower_prio_repeat", "garp_lower_prio_delay",
                    "vmac_xmit_base")
    ]
    assert res.exit_code == 5 and res.config is not None
    (inst,) = res.config.vrrp_instances
    assert (inst.preempt_delay, inst.garp_lower_prio_repeat, inst.garp_lower_prio_delay) == (
        0.0, 0, 0.0)
    assert not inst.vmac_xmit_base and inst.use_vmac
    # unicast under vrrp_strict: keepalived 2.2.7 accepts it, so does pyalived
    assert [str(p) for p in inst.unicast_peer] == ["198.18.0.2"]


def test_strict_mode_keeps_the_global_lower_priority_garps(tmp_path: Path) -> None:
    # keepalived 2.2.7 -t: no warning, exit 0
    head = "global_defs {\n    vrrp_strict\n    vrrp_garp_lower_prio_repeat 2\n}\n"
    res = run(tmp_path, head + INSTANCE.format(body=""))
    assert res.diagnostics == () and res.config is not None
    assert res.config.vrrp_instances[0].garp_lower_prio_repeat == 2


def test_preempt_delay_with_nopreempt_is_cleared(tmp_path: Path) -> None:
    res = run(tmp_path, INSTANCE.format(body="    nopreempt\n    preempt_delay 30"))
    assert kinds(res) == [(Severity.WARNING, 6,
                           "vrrp_instance VI_1: preempt_delay means nothing with nopreempt;"
                           " cleared")]
    assert res.config is not None and res.config.vrrp_instances[0].preempt_delay == 0.0


def test_tracking_the_own_interface_is_ignored(tmp_path: Path) -> None:
    body = "    track_interface {\n        eth0 weight -10\n        eth1\n    }"
    p = tmp_path / "keepalived.conf"
    p.write_text(INSTANCE.format(body=body))
    res = load(str(p), interface_exists={"eth0", "eth1"}.__contains__)
    assert kinds(res) == [(Severity.WARNING, 6, "vrrp_instance VI_1: track_interface eth0 is the"
                           " instance's own interface; ignored")]
    assert res.config is not None
    assert [t.name for t in res.config.vrrp_instances[0].track_interface] == ["eth1"]


@pytest.mark.parametrize(("kind", "severity"), [("NAT", Severity.NOTICE), ("DR", Severity.WARNING),
                                                ("TUN", Severity.WARNING)])
def test_a_port_on_a_fwmark_real_server(tmp_path: Path, kind: str, severity: Severity) -> None:
    # keepalived 2.2.7 -t warns ("has port specified - clearing") for DR and TUN only
    text = VS.format(vs="", rs="        TCP_CHECK {\n        }").replace(
        "198.18.1.1 80", "fwmark 7").replace("lb_kind NAT", f"lb_kind {kind}").replace(
        "    protocol TCP\n", "")
    res = run(tmp_path, text)
    assert [(s, n) for s, n, _ in kinds(res)] == [(severity, 6)]
    assert res.exit_code == (0 if kind == "NAT" else 5)


def test_a_group_of_fwmarks_needs_no_protocol(tmp_path: Path) -> None:
    text = "virtual_server_group G {\n    fwmark 9\n}\n" + VS.format(vs="", rs="").replace(
        "198.18.1.1 80", "group G").replace("    protocol TCP\n", "").replace(
        "198.18.0.5 80", "198.18.0.5 0")
    res = run(tmp_path, text)
    assert res.diagnostics == () and res.exit_code == 0


@pytest.mark.parametrize(("state", "prio", "warned"), [
    ("MASTER", 100, True), ("BACKUP", 100, False), ("MASTER", 255, False)])
def test_state_master_with_ah_starts_as_backup(
    tmp_path: Path, state: str, prio: int, warned: bool
) -> None:
    body = (f"    state {state}\n    authentication {{\n        auth_type AH\n"
            "        auth_pass secret\n    }")
    res = run(tmp_path, INSTANCE.format(body=body).replace("priority 100", f"priority {prio}"))
    assert res.config is not None
    assert res.exit_code == (5 if warned else 0), render(res.diagnostics)
    if warned:
        assert "state MASTER does not go with AH authentication" in res.diagnostics[0].message
        assert res.config.vrrp_instances[0].state.name == "BACKUP"


def test_a_definition_further_down_is_too_late_for_a_track_reference(tmp_path: Path) -> None:
    # keepalived 2.2.7 -t: "(VI_1) track script chk not found, ignoring...", and it runs so
    later = "vrrp_script chk {\n    script /bin/true\n}\ntrack_file tf {\n    file /tmp/tf\n}\n"
    body = "    track_script {\n        chk\n    }\n    track_file {\n        tf\n    }"
    group = "vrrp_sync_group G {\n    group {\n        VI_1\n    }\n    track_script {\n" \
            "        chk\n    }\n}\n"
    # script_user root: under enable_script_security keepalived never picks root itself
    secure = "global_defs {\n    enable_script_security\n    script_user root\n}\n"
    res = run(tmp_path, secure + INSTANCE.format(body=body) + group + later)
    late = [(n, m) for s, n, m in kinds(res) if "further down" in m]
    assert late == [
        (10, "(VI_1) track_script chk is defined further down the file, too late for this"
             " block (as in keepalived); ignored"),
        (13, "(VI_1) track_file tf is defined further down the file, too late for this"
             " block (as in keepalived); ignored"),
        (24, "(G) track_script chk is defined further down the file, too late for this"
             " block (as in keepalived); ignored"),
    ]
    assert res.config is not None
    (inst,) = res.config.vrrp_instances
    assert inst.track_script == () and inst.track_file == ()
    assert res.config.vrrp_sync_groups[0].track_script == ()
    # defined first: tracked, no word
    res = run(tmp_path, secure + later + INSTANCE.format(body=body))
    assert res.diagnostics == () and res.config is not None
    assert [r.name for r in res.config.vrrp_instances[0].track_script] == ["chk"]


def test_a_track_script_defined_nowhere_is_still_refused(tmp_path: Path) -> None:
    res = run(tmp_path, INSTANCE.format(body="    track_script {\n        nope\n    }"))
    assert res.config is None and "no vrrp_script of that name" in render(res.diagnostics)


def test_unicast_with_a_vmac_sends_by_the_base_interface(tmp_path: Path) -> None:
    body = "    use_vmac\n    unicast_peer {\n        198.18.0.2\n    }"
    res = run(tmp_path, INSTANCE.format(body=body))
    assert [m for _, _, m in kinds(res)] == [
        "vrrp_instance VI_1: unicast with use_vmac needs vmac_xmit_base; set"]
    assert res.config is not None and res.config.vrrp_instances[0].vmac_xmit_base
    res = run(tmp_path, INSTANCE.format(body="    vmac_xmit_base"))
    assert [m for _, _, m in kinds(res)] == [
        "vrrp_instance VI_1: vmac_xmit_base means nothing without use_vmac"]


SYNC = """vrrp_script chk {{
    script /bin/true
    weight 10
}}
vrrp_instance VI_1 {{
    interface eth0
    virtual_router_id 51
    priority {prio}
    track_script {{
        chk
    }}
    track_interface {{
        eth1 weight 5
    }}
    virtual_ipaddress {{
        198.18.0.100/24
    }}
}}
{group}"""


def test_a_sync_group_member_loses_the_weights_of_its_own_tracking(tmp_path: Path) -> None:
    # keepalived 2.2.7 -t: "ignoring eth1 tracked interface weight due to SYNC group",
    # "ignoring tracked script chk with weights due to SYNC group"
    group = "vrrp_sync_group G {\n    group {\n        VI_1\n    }\n}\n"
    p = tmp_path / "keepalived.conf"
    p.write_text("global_defs {\n    enable_script_security\n    script_user root\n}\n"
                 + SYNC.format(prio=100, group=group))
    res = load(str(p), interface_exists={"eth0", "eth1"}.__contains__)
    assert res.config is not None
    (inst,) = res.config.vrrp_instances
    assert inst.track_script == ()
    assert [(t.name, t.weight) for t in inst.track_interface] == [("eth1", 0)]
    assert sum("since the instance is in a sync group" in d.message
               for d in res.diagnostics) == 2


def test_the_address_owner_ignores_weighted_tracking(tmp_path: Path) -> None:
    p = tmp_path / "keepalived.conf"
    p.write_text("global_defs {\n    enable_script_security\n    script_user root\n}\n"
                 + SYNC.format(prio=255, group=""))
    res = load(str(p), interface_exists={"eth0", "eth1"}.__contains__)
    assert res.config is not None
    (inst,) = res.config.vrrp_instances
    assert inst.track_script == () and inst.track_interface == ()
    assert [d.location.line for d in res.diagnostics] == [14, 17]


def test_an_interface_tracked_by_a_group_and_its_member(tmp_path: Path) -> None:
    group = ("vrrp_sync_group G {\n    group {\n        VI_1\n    }\n    track_interface {\n"
             "        eth0\n    }\n}\n")
    p = tmp_path / "keepalived.conf"
    p.write_text(SYNC.format(prio=100, group=group).replace("    track_script {\n        chk\n"
                                                             "    }\n", ""))
    res = load(str(p), interface_exists={"eth0", "eth1"}.__contains__)
    assert any(d.location.line == 21 and "(VI_1) track_interface eth0 is tracked by the"
               " instance (or is its interface) and by sync group G" in d.message
               for d in res.diagnostics), render(res.diagnostics)
