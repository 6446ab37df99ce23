"""Accept mode and the nftables keywords in the configuration, as keepalived 2.2.7 reads them."""

from __future__ import annotations

from pathlib import Path

from pyalived.config import LoadResult, load
from pyalived.config.model import VrrpInstance

# ---- configuration ----------------------------------------------------------------------------

INSTANCE = ("vrrp_instance {name} {{\n interface eth0\n virtual_router_id {vrid}\n"
            " priority {prio}\n{body} virtual_ipaddress {{\n  198.18.0.{vrid}\n }}\n}}\n")


def load_text(tmp_path: Path, text: str) -> LoadResult:
    p = tmp_path / "keepalived.conf"
    p.write_text(text)
    return load(str(p), config_id="me", interface_exists={"eth0"}.__contains__)


def instances(tmp_path: Path, global_defs: str, *bodies: tuple[str, int, str]) \
        -> tuple[dict[str, VrrpInstance], list[str]]:
    text = f"global_defs {{\n{global_defs}}}\n" + "".join(
        INSTANCE.format(name=f"VI_{i}", vrid=10 + i, prio=prio, body=body)
        for i, (body, prio, _) in enumerate(bodies))
    res = load_text(tmp_path, text)
    assert res.config is not None
    return ({i.name: i for i in res.config.vrrp_instances},
            [f"{d.location.line}: {d.message}" for d in res.diagnostics])


def test_accept_mode_defaults_follow_keepalived(tmp_path: Path) -> None:
    plain, diags = instances(tmp_path, "", ("", 100, ""), (" no_accept\n", 100, ""),
                             (" accept\n", 100, ""), (" no_accept\n", 255, ""))
    assert [plain[f"VI_{i}"].accept for i in range(4)] == [True, False, True, True]
    assert diags == []
    strict, diags = instances(tmp_path, " vrrp_strict\n", ("", 100, ""),
                              (" accept\n version 3\n", 100, ""), (" accept\n", 100, ""),
                              ("", 255, ""))
    # vrrp_strict: no_accept by default; accept only in VRRPv3; the owner always accepts.
    assert [strict[f"VI_{i}"].accept for i in range(4)] == [False, True, False, True]
    assert diags == ["22: vrrp_instance VI_2: accept mode for VRRP version 2 does not comply"
                     " with RFC 3768 under vrrp_strict; using no_accept"]


def test_nftables_keywords(tmp_path: Path) -> None:
    res = load_text(tmp_path, "global_defs {\n nftables\n}\n")
    assert res.config is not None and res.diagnostics == ()
    g = res.config.global_defs
    assert (g.nftables, g.nftables_priority, g.nftables_counters, g.nftables_ifindex) == \
        ("keepalived", -1, False, False)
    res = load_text(tmp_path, "global_defs {\n nftables lb1\n nftables_priority -5\n"
                    " nftables_counters\n nftables_ifindex\n}\n")
    assert res.config is not None and res.diagnostics == ()
    g = res.config.global_defs
    assert (g.nftables, g.nftables_priority, g.nftables_counters, g.nftables_ifindex) == \
        ("lb1", -5, True, True)


def test_bad_nftables_values_refuse_the_config(tmp_path: Path) -> None:
    res = load_text(tmp_path, "global_defs {\n nftables_priority 5000000000\n"
                    f" nftables {'t' * 256}\n}}\n")
    assert res.config is None
    assert [(d.location.line, d.severity.name) for d in res.diagnostics] == \
        [(2, "ERROR"), (3, "ERROR")]
    assert "longer than 255" in res.diagnostics[1].message


def test_iptables_keywords_warn_that_nftables_is_used(tmp_path: Path) -> None:
    res = load_text(tmp_path, "global_defs {\n vrrp_iptables IN OUT\n vrrp_ipsets\n}\n")
    assert res.config is not None
    assert [(d.location.line, d.severity.name) for d in res.diagnostics] == \
        [(2, "WARNING"), (3, "WARNING")]
    assert "using nftables instead" in res.diagnostics[0].message
