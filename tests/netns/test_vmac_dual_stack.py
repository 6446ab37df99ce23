"""A dual-stack VRID with ``use_vmac``: two VMACs side by side, and after a SIGKILL.

A director runs VRID 52 twice on eth0, for IPv4 (198.18.0.100) and for
IPv6 (fd00:198:18::100), both with ``use_vmac`` and no name: keepalived 2.2.7
makes ``vrrp.52`` (00:00:5e:00:01:34) for the IPv4 one and ``vrrp6.52``
(00:00:5e:00:02:34) for the IPv6 one if the IPv4 block comes first, and
``vrrp.52`` for the IPv6 one and ``vrrp1.52`` for the IPv4 one otherwise, and
so must pyalived -- neither instance may take the other's VMAC for a
leftover and delete it.  The daemon is then
killed (SIGKILL: both VMACs stay, with their VIPs) and started again: both
VMACs are adopted, the very same interfaces, and each VIP is back on its own.
A graceful stop deletes both.  Judged from the namespace's links and addresses
and the daemon's log.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pyalived.lab import VIP, Lab, LabError, Node, VrrpSpec, render_config, wait_for
from pyalived.vrrp.vmac import vmac_mac
from tests.netns.test_v3_wire import add_ipv6

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0
VRID = 52
VIP6 = "fd00:198:18::100"
V4 = VrrpSpec(priority=100, vrid=VRID, state="MASTER", name="V4", use_vmac=True)
V6 = VrrpSpec(priority=100, vrid=VRID, state="MASTER", name="V6", use_vmac=True,
              vips=(f"{VIP6}/64",))
ORDERS = {
    # keepalived's names for each order of the two blocks in keepalived.conf
    "v4-first": ((V4, V6), {"vrrp.52": (vmac_mac(VRID, 4), VIP),
                            "vrrp6.52": (vmac_mac(VRID, 6), VIP6)}),
    "v6-first": ((V6, V4), {"vrrp.52": (vmac_mac(VRID, 6), VIP6),
                            "vrrp1.52": (vmac_mac(VRID, 4), VIP)}),
}


def vmacs(lab: Lab, node: Node) -> dict[str, tuple[int, str, set[str]]]:
    """VMAC name -> (ifindex, MAC, its global addresses)."""
    found = {}
    for line in lab.ip(node, "-o", "link", "show").splitlines():
        index, name = line.split(":")[0], line.split(":")[1].strip().split("@")[0]
        if "link/ether 00:00:5e:00:0" not in line:
            continue
        mac = line.split("link/ether ")[1].split()[0]
        try:
            out = lab.ip(node, "-o", "addr", "show", "dev", name, "scope", "global")
        except LabError:
            continue
        addresses = {w.split()[3].split("/")[0] for w in out.splitlines()}
        found[name] = (int(index), mac, addresses)
    return found


def both_masters(lab: Lab, node: Node, want: dict[str, tuple[str, str]]
                 ) -> dict[str, tuple[int, str, set[str]]]:
    def ready() -> dict[str, tuple[int, str, set[str]]] | None:
        now = vmacs(lab, node)
        shape = {name: (mac, addresses) for name, (_i, mac, addresses) in now.items()}
        return now if shape == {n: (m, {a}) for n, (m, a) in want.items()} else None

    return wait_for(ready, SETTLE, what="each VIP on its own VMAC")


@pytest.mark.parametrize("order", list(ORDERS))
def test_dual_stack_vmacs_survive_each_other_and_a_sigkill(make_lab: MakeLab,
                                                           order: str) -> None:
    specs, want = ORDERS[order]
    lab = make_lab(routers=1)
    (r1,) = lab.routers
    add_ipv6(lab, r1)
    config = render_config(r1.name, specs)
    lab.start_daemon(r1, config, "pyalived")
    first = both_masters(lab, r1, want)
    assert r1.daemon is not None
    assert "deleting" not in r1.daemon.log_text()

    lab.crash(r1)
    assert vmacs(lab, r1) == first  # nothing was cleaned up
    lab.start_daemon(r1, config, "pyalived")
    wait_for(lambda: all(f"({i}) BACKUP -> MASTER" in r1.daemon.log_text()  # type: ignore[union-attr]
                         for i in ("V4", "V6")), SETTLE, what="both instances MASTER again")
    again = both_masters(lab, r1, want)
    assert {n: i for n, (i, _m, _a) in again.items()} == {
        n: i for n, (i, _m, _a) in first.items()}  # adopted, not made anew
    log = r1.daemon.log_text()
    assert all(f"adopted leftover VMAC {name} " in log for name in want)
    assert "deleting" not in log and "Traceback" not in log
    assert r1.daemon.stop(timeout=SETTLE) == 0
    assert vmacs(lab, r1) == {}
