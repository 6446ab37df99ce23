"""A VMAC left behind by a daemon that died without cleaning up, with the real binary.

A SIGKILL (or a crash, or a power cut) leaves the VMAC -- a private-mode
macvlan of eth0 with MAC 00:00:5e:00:01:VRID -- in place, possibly under a
name the configuration no longer uses (killed during a reload that renamed
it), possibly down (killed in the middle of that rename), still carrying the
VIPs of the previous run.  The kernel refuses to bring up a second macvlan
with that MAC on eth0, so a daemon that insists on making its own never
starts again.  Each test builds such a scene by hand (or by SIGKILLing a
real daemon), starts ``python -m pyalived`` and judges from the namespace's
links and addresses, the bridge capture (adverts must leave from the
virtual MAC) and the daemon's log and exit status.

keepalived 2.2.7, run on the same scenes, adopts a leftover under its own
name (ignoring the configured one), leaves a down leftover down (the
instance stays in FAULT) and leaves addresses it does not configure on it;
these tests hold pyalived to the stricter behaviour of ``pyalived.vrrp.vmac``,
so they run pyalived only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from pyalived.lab import VIP, Lab, LabError, Node, VrrpSpec, adverts, render_config, wait_for

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0
VRID = 51
VMAC = f"00:00:5e:00:01:{VRID:02x}"
STALE = "198.18.0.99"  # a VIP of an older configuration


def config(node: Node, vmac_name: str, priority: int = 100, state: str = "MASTER") -> str:
    use = "use_vmac" if vmac_name == f"vrrp.{VRID}" else f"use_vmac {vmac_name}"
    spec = VrrpSpec(priority=priority, vrid=VRID, state=state, extra=(use,))
    return render_config(node.name, [spec])


def leave_vmac(lab: Lab, node: Node, name: str, *, up: bool = True,
               mode: str = "private") -> None:
    """The VMAC a SIGKILLed daemon leaves: the VIP and a stale address still on it."""
    lab.ip(node, "link", "add", name, "link", "eth0", "address", VMAC,
           "type", "macvlan", "mode", mode)
    for address in (VIP, STALE):
        lab.ip(node, "addr", "add", f"{address}/24", "dev", name)
    if up:
        lab.ip(node, "link", "set", name, "up")


def links(lab: Lab, node: Node) -> dict[str, str]:
    """Interface name -> its `ip -d -o link` line."""
    out = lab.ip(node, "-d", "-o", "link", "show")
    return {line.split(":")[1].strip().split("@")[0]: line for line in out.splitlines()}


def addresses_on(lab: Lab, node: Node, dev: str) -> set[str] | None:
    """The IPv4 addresses on ``dev``; None if there is no such interface."""
    try:
        out = lab.ip(node, "-o", "-4", "addr", "show", "dev", dev)
    except LabError:
        return None
    return {line.split()[3].split("/")[0] for line in out.splitlines()}


def assert_master_on_vmac(lab: Lab, node: Node, dev: str, since: float) -> None:
    """The VIP (and nothing else) on ``dev``, a private-mode VMAC, adverts from the virtual MAC."""
    # The leftover's own copy of the VIP is there from the start (and is taken
    # off while the VMAC is prepared): wait for the VIP on a VMAC that is up.
    wait_for(lambda: addresses_on(lab, node, dev) == {VIP} and ",UP," in links(lab, node)[dev],
             SETTLE, what=f"{VIP} on {dev}, up")
    line = links(lab, node)[dev]
    assert f"link/ether {VMAC}" in line and "macvlan mode private" in line and ",UP," in line
    cap = lab.captures[0]
    seen = cap.wait_for(lambda ev: [e for e in adverts(ev, src=node.ip, after=since)
                                    if e.priority], SETTLE, what=f"adverts from {node}")
    assert {e.src_mac for e in seen} == {VMAC}


def stop_and_check_gone(lab: Lab, node: Node, dev: str) -> str:
    """SIGTERM: a clean exit, and no VMAC left; return the daemon's log."""
    assert node.daemon is not None
    assert node.daemon.stop(timeout=SETTLE) == 0
    left = links(lab, node)
    assert dev not in left
    assert not [line for line in left.values() if f"link/ether {VMAC}" in line]
    log = node.daemon.log_text()
    assert "Traceback" not in log
    return log


@pytest.mark.parametrize(("up", "mode"), [(True, "private"), (False, "bridge")],
                         ids=["up", "down-bridge-mode"])
def test_leftover_under_the_old_name_is_adopted_and_renamed(
    make_lab: MakeLab, up: bool, mode: str,
) -> None:
    """The operator's report: killed during a reload that renamed vrrp.51 to vmac51."""
    lab = make_lab(routers=1)
    (r1,) = lab.routers
    leave_vmac(lab, r1, "vrrp.51", up=up, mode=mode)
    lab.capture()
    started = time.time()
    lab.start_daemon(r1, config(r1, "vmac51"), "pyalived")
    assert_master_on_vmac(lab, r1, "vmac51", started)
    assert "vrrp.51" not in links(lab, r1)
    assert STALE not in lab.addresses(r1)
    log = stop_and_check_gone(lab, r1, "vmac51")
    assert "adopted leftover VMAC vrrp.51" in log and "renamed to vmac51" in log
    assert f"removed stale addresses {VIP}/24, {STALE}/24" in log


def test_backup_adopting_a_leftover_holds_no_stale_vip(make_lab: MakeLab) -> None:
    """A BACKUP must not keep answering for a VIP its previous run left on the VMAC."""
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    lab.capture()
    lab.start_daemon(r2, config(r2, "vrrp.51", priority=200), "pyalived")
    lab.wait_sole_holder(r2, timeout=SETTLE)
    leave_vmac(lab, r1, "vrrp.51")
    lab.start_daemon(r1, config(r1, "vrrp.51", priority=100, state="BACKUP"), "pyalived")
    assert r1.daemon is not None
    wait_for(lambda: "BACKUP" in r1.daemon.log_text() if r1.daemon else False, SETTLE,
             what="r1 in BACKUP")
    wait_for(lambda: addresses_on(lab, r1, "vrrp.51") == set(), SETTLE,
             what="no address left on r1's vrrp.51")
    for _ in range(4):  # and it stays so while r2 is master
        time.sleep(0.5)
        assert addresses_on(lab, r1, "vrrp.51") == set()
        assert lab.holders(VIP) == [r2] and lab.holders(STALE) == []
    assert ",UP," in links(lab, r1)["vrrp.51"]
    # r2 stops: r1 takes over on the adopted VMAC
    took_over = time.time()
    assert lab.stop_daemon(r2) == 0
    assert_master_on_vmac(lab, r1, "vrrp.51", took_over)
    assert STALE not in lab.addresses(r1)
    log = stop_and_check_gone(lab, r1, "vrrp.51")
    assert "adopted leftover VMAC vrrp.51" in log


@pytest.mark.parametrize("new_name", ["vrrp.51", "vmac51"])
def test_restart_after_sigkill(make_lab: MakeLab, new_name: str) -> None:
    """A real daemon SIGKILLed as MASTER, restarted with the same or a renamed VMAC."""
    lab = make_lab(routers=1)
    (r1,) = lab.routers
    lab.capture()
    lab.start_daemon(r1, config(r1, "vrrp.51"), "pyalived")
    wait_for(lambda: addresses_on(lab, r1, "vrrp.51") == {VIP}, SETTLE, what="first run MASTER")
    lab.crash(r1)
    assert addresses_on(lab, r1, "vrrp.51") == {VIP}  # nothing was cleaned up
    restarted = time.time()
    lab.start_daemon(r1, config(r1, new_name), "pyalived")
    assert_master_on_vmac(lab, r1, new_name, restarted)
    if new_name != "vrrp.51":
        assert "vrrp.51" not in links(lab, r1)
    log = stop_and_check_gone(lab, r1, new_name)
    assert "adopted leftover VMAC vrrp.51" in log


def test_foreign_interface_under_the_vmac_name_is_left_alone(make_lab: MakeLab) -> None:
    """As keepalived 2.2.7: the VMAC gets the name vrrp.VRID and the interface is untouched."""
    lab = make_lab(routers=1)
    (r1,) = lab.routers
    lab.ip(r1, "link", "add", "vmac51", "type", "veth", "peer", "name", "vmac51p")
    lab.ip(r1, "addr", "add", f"{STALE}/24", "dev", "vmac51")
    lab.capture()
    started = time.time()
    lab.start_daemon(r1, config(r1, "vmac51"), "pyalived")
    assert_master_on_vmac(lab, r1, "vrrp.51", started)
    log = stop_and_check_gone(lab, r1, "vrrp.51")
    assert "vmac51@vmac51p" in lab.ip(r1, "-o", "link", "show", "vmac51")
    assert addresses_on(lab, r1, "vmac51") == {STALE}
    assert "[ERROR pyalived.vrrp.vmac] interface vmac51 is a veth with MAC" in log
    assert "not the VMAC of VRID 51 on eth0; left alone, creating the VMAC as vrrp.51" in log
