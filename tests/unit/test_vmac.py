"""Leftover VMACs: the decisions of pyalived.vrrp.vmac against a fake kernel.

``FakeLinkOps`` enforces the kernel rules that made a leftover VMAC fatal
(one up macvlan per MAC and parent, unique names, no rename while up), so
each test is a scene a killed daemon can leave behind, and checks what is
adopted, renamed, deleted or left alone, the resulting state (private mode,
up, sysctls, no stale address) and the log.
"""

from __future__ import annotations

import errno
import logging
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface

import pytest
import trio
import trio.testing

from pyalived.config.model import Config
from pyalived.vrrp.fsm import State
from pyalived.vrrp.vmac import (
    LinkInfo,
    plan_vmac,
    prepare_vmac,
    remove_vmac,
    vmac_mac,
)
from tests.unit.fakes import FakeLinkOps, FakeVmacManager
from tests.unit.test_instance import VIP, Rig, instance_conf, running
from tests.unit.test_vrrp_ipv6 import OUR_LL, VIP6, Rig6, conf6
from tests.unit.test_vrrp_ipv6 import running as running6

MAC51 = "00:00:5e:00:01:33"
MAC52 = "00:00:5e:00:01:34"

FRESH_SYSCTLS = {
    "ipv6/conf/{vmac}/addr_gen_mode": "1",
    "ipv6/conf/{vmac}/disable_ipv6": "1",
    "ipv4/conf/{vmac}/arp_ignore": "1",
    "ipv4/conf/{vmac}/accept_local": "1",
    "ipv4/conf/{vmac}/promote_secondaries": "1",
    "ipv4/conf/eth0/arp_ignore": "1",
    "ipv4/conf/eth0/arp_filter": "1",
}


def host() -> FakeLinkOps:
    ops = FakeLinkOps()
    ops.add("lo", up=True)
    ops.add("eth0", kind="veth", mac="02:00:00:00:00:0b", up=True)
    return ops


def leftover(ops: FakeLinkOps, name: str = "vrrp.51", *, up: bool = True,
             mode: str = "private", addresses: tuple[str, ...] = (), parent: str = "eth0",
             mac: str = MAC51, fixed_mode: bool = False) -> int:
    """A VMAC exactly as a SIGKILLed daemon leaves it."""
    return ops.add(name, kind="macvlan", parent=parent, mac=mac, mode=mode, up=up,
                   addresses=addresses, fixed_mode=fixed_mode)


def assert_ready(ops: FakeLinkOps, name: str, mac: str = MAC51) -> None:
    """The state a freshly created VMAC is in: private macvlan on eth0, up, sysctls set."""
    link = ops.get(name)
    assert (link.kind, link.parent, link.mac, link.mode, link.up) == (
        "macvlan", ops.index("eth0"), mac, "private", True)
    assert link.addresses == []
    for path, value in FRESH_SYSCTLS.items():
        assert ops.sysctls.get(path.format(vmac=name)) == value, path


def warnings(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pyalived.vrrp.vmac" and r.levelno == level]


def test_fresh_vmac_is_created_without_a_word(caplog: pytest.LogCaptureFixture) -> None:
    ops = host()
    with caplog.at_level(logging.INFO):
        assert prepare_vmac(ops, "eth0", "vrrp.51", 51) == "vrrp.51"
    assert_ready(ops, "vrrp.51")
    assert ops.ops[0] == ("add_macvlan", "vrrp.51", ops.index("eth0"), MAC51)
    assert [r for r in caplog.records if r.name == "pyalived.vrrp.vmac"] == []


def test_leftover_under_the_configured_name_is_adopted_and_stripped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ops = host()
    index = leftover(ops, addresses=("198.18.0.100/24", "198.18.0.99/24"))
    assert prepare_vmac(ops, "eth0", "vrrp.51", 51) == "vrrp.51"
    assert ops.index("vrrp.51") == index  # the same interface, not a new one
    assert_ready(ops, "vrrp.51")
    assert not any(op[0] in ("add_macvlan", "delete") for op in ops.ops)
    logged = warnings(caplog)
    assert logged[0] == f"adopted leftover VMAC vrrp.51 (a macvlan on eth0 with MAC {MAC51})"
    assert logged[1] == ("removed stale addresses 198.18.0.100/24, 198.18.0.99/24 "
                         "from leftover VMAC vrrp.51")


@pytest.mark.parametrize("up", [True, False], ids=["was-up", "was-down"])
def test_leftover_under_an_old_name_is_renamed(up: bool,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """The operator's case: killed during a reload that renamed the VMAC."""
    ops = host()
    index = leftover(ops, "vrrp.51", up=up, addresses=("198.18.0.99/24",))
    assert prepare_vmac(ops, "eth0", "vmac51", 51) == "vmac51"
    assert ops.index("vmac51") == index
    assert "vrrp.51" not in ops.names()
    assert_ready(ops, "vmac51")
    # taken down before the rename (the fake kernel refuses to rename a running link)
    renamed = ops.ops.index(("rename", "vrrp.51", "vmac51"))
    assert (("set_up", "vrrp.51", False) in ops.ops[:renamed]) is up
    assert warnings(caplog)[0] == (f"adopted leftover VMAC vrrp.51 (a macvlan on eth0 with MAC "
                                   f"{MAC51}), renamed to vmac51")


def test_leftover_in_another_mode_is_switched_to_private(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ops = host()
    leftover(ops, mode="bridge")
    prepare_vmac(ops, "eth0", "vrrp.51", 51)
    assert_ready(ops, "vrrp.51")
    assert "leftover VMAC vrrp.51 was in macvlan mode bridge: set to private" in warnings(caplog)


def test_leftover_whose_mode_cannot_change_is_replaced() -> None:
    ops = host()
    old = leftover(ops, mode="passthru", fixed_mode=True)
    prepare_vmac(ops, "eth0", "vrrp.51", 51)
    assert_ready(ops, "vrrp.51")
    assert ops.index("vrrp.51") != old


def test_duplicate_leftovers_one_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    """Killed between creating the new name and deleting the old one: two VMACs, one MAC."""
    ops = host()
    leftover(ops, "vrrp.51", up=True)
    kept = leftover(ops, "vmac51", up=False)
    assert prepare_vmac(ops, "eth0", "vmac51", 51) == "vmac51"
    assert ops.index("vmac51") == kept
    assert "vrrp.51" not in ops.names()
    assert_ready(ops, "vmac51")
    assert f"deleting leftover VMAC vrrp.51 (a macvlan on eth0 with MAC {MAC51})" \
        in warnings(caplog)


def test_another_vrids_vmac_under_the_name_is_replaced() -> None:
    """The VRID was renumbered but the VMAC name kept: the old VMAC is ours too."""
    ops = host()
    old = leftover(ops, "vrrp_vip", mac=MAC51, addresses=("198.18.0.99/24",))
    assert prepare_vmac(ops, "eth0", "vrrp_vip", 52) == "vrrp_vip"
    assert ops.index("vrrp_vip") != old
    assert_ready(ops, "vrrp_vip", mac=MAC52)


@pytest.mark.parametrize(
    ("configured", "taken", "expected"),
    [
        ("vmac51", ("vmac51",), "vrrp.51"),
        ("vrrp.51", ("vrrp.51",), "vrrp1.51"),
        ("vmac51", ("vmac51", "vrrp.51", "vrrp1.51"), "vrrp2.51"),
    ],
)
def test_foreign_interface_under_the_name_is_left_alone(
    configured: str, taken: tuple[str, ...], expected: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """As keepalived 2.2.7: never touch it, create the VMAC under vrrp.VRID / vrrpN.VRID."""
    ops = host()
    for name in taken:
        ops.add(name, kind="veth", mac="02:00:00:00:00:99", up=True,
                addresses=("198.18.0.99/24",))
    assert prepare_vmac(ops, "eth0", configured, 51) == expected
    assert_ready(ops, expected)
    for name in taken:
        foreign = ops.get(name)
        assert (foreign.kind, foreign.up, foreign.addresses) == (
            "veth", True, [IPv4Interface("198.18.0.99/24")])
    assert not any(op[0] == "delete" for op in ops.ops)
    assert warnings(caplog, logging.ERROR) == [
        f"interface {configured} is a veth with MAC 02:00:00:00:00:99, not the VMAC of "
        f"VRID 51 on eth0; left alone, creating the VMAC as {expected} instead"]


def test_macvlan_with_a_non_vrrp_mac_is_foreign(caplog: pytest.LogCaptureFixture) -> None:
    ops = host()
    leftover(ops, "vrrp.51", mac="02:00:5e:00:01:33")
    assert prepare_vmac(ops, "eth0", "vrrp.51", 51) == "vrrp1.51"
    assert ops.get("vrrp.51").mac == "02:00:5e:00:01:33"
    assert warnings(caplog, logging.ERROR)


def test_same_vrid_vmac_of_another_interface_is_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two instances, one VRID, two interfaces, both with the default name vrrp.51."""
    ops = host()
    ops.add("eth1", kind="veth", mac="02:00:00:00:01:0b", up=True)
    other = leftover(ops, "vrrp.51", parent="eth1", addresses=("198.18.1.100/24",))
    assert prepare_vmac(ops, "eth0", "vrrp.51", 51) == "vrrp1.51"
    assert ops.index("vrrp.51") == other
    assert ops.get("vrrp.51").addresses == [IPv4Interface("198.18.1.100/24")]
    assert_ready(ops, "vrrp1.51")
    # another VRRP daemon's or instance's VMAC: worth a warning, not an error
    assert warnings(caplog, logging.ERROR) == []
    assert warnings(caplog) == [
        f"interface vrrp.51 is a macvlan on eth1 with MAC {MAC51}, not the VMAC of VRID 51 "
        "on eth0; left alone, creating the VMAC as vrrp1.51 instead"]


def test_leftover_kept_under_its_own_name_when_the_configured_one_is_foreign() -> None:
    ops = host()
    ops.add("vmac51", kind="veth", mac="02:00:00:00:00:99")
    index = leftover(ops, "vrrp.51", addresses=("198.18.0.100/24",))
    assert prepare_vmac(ops, "eth0", "vmac51", 51) == "vrrp.51"
    assert ops.index("vrrp.51") == index
    assert_ready(ops, "vrrp.51")
    assert ops.get("vmac51").kind == "veth"


def test_missing_parent() -> None:
    with pytest.raises(OSError) as raised:
        prepare_vmac(host(), "eth9", "vrrp.51", 51)
    assert raised.value.errno == errno.ENODEV


def test_prepare_twice_is_idempotent() -> None:
    ops = host()
    prepare_vmac(ops, "eth0", "vrrp.51", 51)
    index = ops.index("vrrp.51")
    prepare_vmac(ops, "eth0", "vrrp.51", 51)
    assert ops.index("vrrp.51") == index
    assert_ready(ops, "vrrp.51")


def test_plan_prefers_the_configured_name_then_a_running_one() -> None:
    base = LinkInfo(2, "eth0", "veth", None, "02:00:00:00:00:0b", None, True)
    a = LinkInfo(3, "old-a", "macvlan", 2, MAC51, "private", False)
    b = LinkInfo(4, "old-b", "macvlan", 2, MAC51, "private", True)
    plan = plan_vmac([base, a, b], "eth0", "vmac51", 51)
    assert (plan.adopt, plan.remove, plan.name, plan.rename) == (b, (a,), "vmac51", True)
    c = LinkInfo(5, "vmac51", "macvlan", 2, MAC51, "bridge", False)
    plan = plan_vmac([base, a, b, c], "eth0", "vmac51", 51)
    assert (plan.adopt, plan.remove, plan.rename) == (c, (a, b), False)
    # a macvlan whose lower device is in another namespace has no parent here
    elsewhere = LinkInfo(6, "vrrp.51", "macvlan", None, MAC51, "private", True)
    plan = plan_vmac([base, elsewhere], "eth0", "vrrp.51", 51)
    assert (plan.adopt, plan.blocked_by, plan.name) == (None, elsewhere, "vrrp1.51")


def test_vmac_mac() -> None:
    assert vmac_mac(51) == MAC51
    with pytest.raises(ValueError):
        vmac_mac(0)


def test_remove_deletes_only_a_vmac(caplog: pytest.LogCaptureFixture) -> None:
    ops = host()
    leftover(ops, "vrrp.51")
    remove_vmac(ops, "vrrp.51")
    assert "vrrp.51" not in ops.names()
    remove_vmac(ops, "vrrp.51")  # already gone: fine
    ops.add("vmac51", kind="veth", mac="02:00:00:00:00:99")
    remove_vmac(ops, "vmac51")
    assert "vmac51" in ops.names()
    assert warnings(caplog, logging.ERROR) == [
        "not deleting vmac51: it is a veth with MAC 02:00:00:00:00:99, not a VMAC"]


async def test_instance_uses_the_name_the_vmac_got(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A foreign link held the configured name: VIPs, adverts, GARPs and the stop follow."""
    rig = Rig()
    rig.vmac = rig.ports.vmac = FakeVmacManager({"vmac51": "vrrp1.51"})
    conf = instance_conf(use_vmac=True, vmac_name="vmac51")
    async with running(rig, Config(vrrp_instances=(conf,))):
        assert rig.vmac.present == {"vrrp1.51": ("eth0", 51)}
        await trio.sleep(4)
        assert rig.sent("vrrp1.51")
        assert rig.sockets.garp["vrrp1.51"].sent[0].ips == (VIP.ip,)
        assert ("vrrp1.51", str(VIP.address)) in rig.addresses.present
    assert rig.vmac.present == {}
    assert [c[1:] for c in rig.vmac.calls] == [("create", "vmac51"), ("delete", "vrrp1.51")]


# ---------------------------------------------------------------- IPv6 (RFC 5798 §7.3)

MAC6_52 = "00:00:5e:00:02:34"
PARENT_LL = "fe80::ff:fe00:b"


def host6() -> FakeLinkOps:
    """A host whose eth0 has its link-local address (and an IPv4 one)."""
    ops = FakeLinkOps()
    ops.add("lo", up=True)
    ops.add("eth0", kind="veth", mac="02:00:00:00:00:0b", up=True,
            addresses=("198.18.0.11/24", f"{PARENT_LL}/64", "fd00:198:18::11/64"))
    return ops


def assert_ready6(ops: FakeLinkOps, name: str, *, alone: bool = True) -> None:
    """An IPv6 VMAC as keepalived 2.2.7 makes one: up, IPv6 on, no address of its own
    (addr_gen_mode 1), the parent's link-local deprecated, no IPv4 sysctls."""
    link = ops.get(name)
    assert (link.kind, link.parent, link.mac, link.mode, link.up) == (
        "macvlan", ops.index("eth0"), MAC6_52, "private", True)
    assert [str(a) for a in link.addresses] == [f"{PARENT_LL}/64"]
    assert link.deprecated == {IPv6Address(PARENT_LL)}
    parent = "/eth0/" if alone else "/none/"  # an IPv4 VMAC sets the parent's
    assert {k: v for k, v in ops.sysctls.items() if f"/{name}/" in k or parent in k} == {
        f"ipv6/conf/{name}/addr_gen_mode": "1", f"ipv6/conf/{name}/disable_ipv6": "0"}


def test_fresh_ipv6_vmac_carries_the_parent_s_link_local() -> None:
    ops = host6()
    assert prepare_vmac(ops, "eth0", "vrrp.52", 52, family=6) == "vrrp.52"
    assert ops.ops[0] == ("add_macvlan", "vrrp.52", ops.index("eth0"), MAC6_52)
    assert_ready6(ops, "vrrp.52")
    # The sysctls come before the link goes up, else the kernel would give it
    # an address of its own from the virtual MAC.
    assert ops.ops.index(("set_up", "vrrp.52", True)) < ops.ops.index(
        ("add_link_local", "vrrp.52", PARENT_LL))


def test_ipv6_vmac_waits_for_the_parent_s_link_local() -> None:
    """Right after the parent came up its link-local address is still tentative:
    the attempt fails (and is retried by the caller) and the next one finishes."""
    ops = host6()
    eth0 = ops.get("eth0")
    eth0.addresses = [a for a in eth0.addresses if not (a.version == 6 and a.ip.is_link_local)]
    with pytest.raises(OSError) as failed:
        prepare_vmac(ops, "eth0", "vrrp.52", 52, family=6)
    assert failed.value.errno == errno.EADDRNOTAVAIL
    eth0.addresses.append(IPv6Interface(f"{PARENT_LL}/64"))
    assert prepare_vmac(ops, "eth0", "vrrp.52", 52, family=6) == "vrrp.52"
    assert_ready6(ops, "vrrp.52")


def test_ipv6_leftover_keeps_no_vip_and_takes_the_parent_s_current_link_local(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ops = host6()
    index = leftover(ops, "vrrp.52", mac=MAC6_52, addresses=(
        "fd00:198:18::100/64", "fe80::dead/64", "198.18.0.100/24"))
    assert prepare_vmac(ops, "eth0", "vrrp.52", 52, family=6) == "vrrp.52"
    assert ops.index("vrrp.52") == index
    assert_ready6(ops, "vrrp.52")
    assert ("removed stale addresses fd00:198:18::100/64, 198.18.0.100/24 "
            "from leftover VMAC vrrp.52") in warnings(caplog)


def test_ipv4_and_ipv6_vmacs_of_one_vrid_live_side_by_side(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both instances of a dual-stack VRID asked for vrrp.52: the second one
    neither adopts nor deletes the first one's VMAC, it takes another name."""
    ops = host6()
    assert prepare_vmac(ops, "eth0", "vrrp.52", 52, family=6) == "vrrp.52"
    with caplog.at_level(logging.INFO):
        got = prepare_vmac(ops, "eth0", "vrrp.52", 52, family=4, claimed={"vrrp.52"})
    assert got == "vrrp1.52"
    assert_ready6(ops, "vrrp.52", alone=False)
    assert ops.get("vrrp1.52").mac == MAC52 and ops.get("vrrp1.52").up
    assert not any(op[0] == "delete" for op in ops.ops)
    assert warnings(caplog) == []
    # Unclaimed (the previous run's IPv6 instance of this VRID is gone), the
    # same interface is a leftover under the name, and is replaced.
    ops = host6()
    prepare_vmac(ops, "eth0", "vrrp.52", 52, family=6)
    assert prepare_vmac(ops, "eth0", "vrrp.52", 52, family=4) == "vrrp.52"
    assert ops.get("vrrp.52").mac == MAC52


async def test_ipv6_instance_sends_receives_and_announces_on_its_vmac(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As keepalived: the VMAC is made for IPv6, the adverts leave by it from the
    parent's link-local address, and the VIP and its NAs are on it."""
    rig = Rig6()
    conf = conf6(use_vmac=True, priority=100)
    async with running6(rig, Config(vrrp_instances=(conf,))) as ((inst,), _start):
        assert rig.ports.vmac.present == {"vrrp.52": ("eth0", 52)}  # type: ignore[attr-defined]
        assert rig.ports.vmac.families == {"vrrp.52": 6}  # type: ignore[attr-defined]
        await trio.sleep(4)
        assert inst.state is State.MASTER
        sent = rig.sockets.advert6["vrrp.52"].sent
        assert sent and {s.src for s in sent} == {OUR_LL}
        assert rig.sockets.garp["vrrp.52"].sent_na[0].ips == (VIP6.ip,)
        assert ("vrrp.52", str(VIP6.address)) in rig.addresses.present
        assert "eth0" not in rig.sockets.advert6
    assert [c[1:] for c in rig.ports.vmac.calls] == [  # type: ignore[attr-defined]
        ("create", "vrrp.52"), ("delete", "vrrp.52")]
