"""``use_vmac`` on an IPv6 instance: pyalived and keepalived 2.2.7 in one group.

Two routers on a namespace bridge, each with ``use_vmac``, run VRID 52 with
the IPv6 VIP fd00:198:18::100 (so VRRPv3 over IPv6), one pyalived and one
keepalived, in both role assignments, with tcpdump on the bridge.  Each case
checks:

* pyalived's VMAC is what keepalived makes (RFC 5798 §7.3): a private
  macvlan ``vrrp.52`` on eth0 with MAC 00:00:5e:00:02:34, no address of its
  own (addr_gen_mode 1: none derived from the virtual MAC), the parent's
  link-local address without DAD and deprecated, and the VIP usable at once;
* the election agrees both ways (the VIP on the master's VMAC only), and the
  backup takes over when the master is killed;
* on the wire, every advert leaves from the virtual MAC to 33:33:00:00:00:12,
  from the router's own link-local address, hop limit 255, and is what
  ``packet.encode_v3`` gives; every unsolicited neighbour advertisement for
  the VIP comes from the virtual MAC and announces it -- the same frame from
  pyalived and keepalived;
* a graceful stop deletes pyalived's VMAC, and neither log reports a refused
  advert.
"""

from __future__ import annotations

import time
from dataclasses import replace
from ipaddress import IPv6Address

import pytest

from pyalived.lab import Impl, Lab, Node, render_config, wait_for
from pyalived.vrrp.fsm import master_down_interval_v3
from pyalived.vrrp.ndisc import build_na_frame
from pyalived.vrrp.vmac import vmac_mac
from tests.interop.test_v3_ipv6_keepalived import (
    OURS,
    SETTLE,
    SLACK,
    VIP6,
    VRID,
    capture,
    check_adverts,
    read_frames,
    refused_lines,
    spec,
)
from tests.netns.test_v3_wire import add_ipv6

pytestmark = [pytest.mark.interop, pytest.mark.netns]

VMAC = "vrrp.52"
VMAC_MAC = bytes.fromhex(vmac_mac(VRID, 6).replace(":", ""))


def vip_on_vmac(lab: Lab, node: Node) -> bool:
    out = lab.run(node, "ip", "-6", "-o", "addr", "show", "dev", VMAC, check=False).stdout
    return str(VIP6) in out


def holders(lab: Lab) -> list[Node]:
    return [r for r in lab.routers if vip_on_vmac(lab, r)]


def vmac_addresses(lab: Lab, node: Node) -> dict[str, str]:
    """The IPv6 addresses of the VMAC with their ``ip`` flags."""
    out = lab.ip(node, "-6", "-o", "addr", "show", "dev", VMAC)
    return {line.split()[3]: " ".join(line.split()[4:]) for line in out.splitlines()}


def frames_from(frames: list[bytes], src: IPv6Address, next_header: int) -> list[bytes]:
    return [f for f in frames if f[12:14] == b"\x86\xdd" and f[20] == next_header
            and IPv6Address(f[22:38]) == src]


def nas_for_vip(frames: list[bytes]) -> list[bytes]:
    return [f for f in frames if f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 136
            and f[62:78] == VIP6.packed]


@pytest.mark.parametrize("master_impl", ["pyalived", "keepalived"])
def test_ipv6_vmac_group_elects_and_fails_over(lab: Lab, master_impl: str) -> None:
    r1, r2 = lab.routers  # r1 the master (priority 150), r2 the backup (100)
    impls: dict[str, Impl] = {
        "r1": OURS if master_impl == "pyalived" else "keepalived",
        "r2": "keepalived" if master_impl == "pyalived" else OURS,
    }
    ours = r1 if master_impl == "pyalived" else r2
    link_local = {r.name: add_ipv6(lab, r) for r in lab.routers}
    tcpdump, pcap = capture(lab)
    vmac_spec = {r.name: replace(spec(p), use_vmac=True) for r, p in ((r1, 150), (r2, 100))}

    lab.start_daemon(r1, render_config("r1", [vmac_spec["r1"]]), impls["r1"])
    lab.start_daemon(r2, render_config("r2", [vmac_spec["r2"]]), impls["r2"])
    wait_for(lambda: holders(lab) == [r1], SETTLE, what="the IPv6 VIP on r1's VMAC only")

    # pyalived's VMAC, as keepalived makes it
    link = lab.ip(ours, "-d", "link", "show", "dev", VMAC)
    assert f"link/ether {vmac_mac(VRID, 6)}" in link and "macvlan mode private" in link, link
    assert lab.run(ours, "cat", f"/proc/sys/net/ipv6/conf/{VMAC}/addr_gen_mode"
                   ).stdout.strip() == "1"
    found = vmac_addresses(lab, ours)
    local = {a: flags for a, flags in found.items() if a.startswith("fe80:")}
    assert list(local) == [f"{link_local[ours.name]}/64"], found
    assert "nodad" in local[f"{link_local[ours.name]}/64"]
    assert "deprecated" in local[f"{link_local[ours.name]}/64"]
    if ours is r1:
        assert "nodad" in found[f"{VIP6}/64"] and "tentative" not in found[f"{VIP6}/64"]

    time.sleep(master_down_interval_v3(100, 100) + 1.0)
    assert holders(lab) == [r1]
    down = master_down_interval_v3(100, 100)
    before = len(nas_for_vip(read_frames(pcap)))
    killed = lab.crash(r1)
    wait_for(lambda: vip_on_vmac(lab, r2), SETTLE, interval=0.005, what="the VIP on r2's VMAC")
    took = time.monotonic() - killed
    assert down - 1.0 - SLACK < took < down + SLACK, (took, down)
    if ours is r2:
        assert "tentative" not in vmac_addresses(lab, r2)[f"{VIP6}/64"]
    wait_for(lambda: len(nas_for_vip(read_frames(pcap))) >= before + 5, 10.0,
             what="a burst of NAs from the new master")
    time.sleep(0.5)
    tcpdump.stop()
    frames = read_frames(pcap)

    for router, priority in ((r1, 150), (r2, 100)):
        adverts = frames_from(frames, link_local[router.name], 112)
        assert adverts, router
        # from the virtual MAC to the VRRP group's multicast MAC, hop limit 255
        assert {(f[6:12], f[0:6]) for f in adverts} == {
            (VMAC_MAC, bytes.fromhex("333300000012"))}, router
        check_adverts(adverts, link_local[router.name], priority)
    nas = nas_for_vip(frames)
    # Each master's NAs: from the VIP, from the virtual MAC, announcing it; the
    # same frame from both daemons (R flag off: no IPv6 forwarding in the lab).
    assert {f[:86].hex() for f in nas} == {build_na_frame(VMAC_MAC, VIP6, router=False).hex()}

    assert refused_lines(r1) == [] and refused_lines(r2) == []
    if ours is r2:
        lab.stop_daemon(r2)  # graceful: the VIP and the VMAC go
        assert VMAC not in lab.ip(r2, "-o", "link", "show")
