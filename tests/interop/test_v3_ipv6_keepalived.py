"""VRRPv3 over IPv6 (RFC 5798 §5.1.2): pyalived and keepalived 2.2.7 in one group.

Two routers on a namespace bridge (``pyalived.lab.Lab``), each with its
link-local address and a ULA address (fd00:198:18::/64), run VRID 52 with the
IPv6 VIP fd00:198:18::100 -- an IPv6 instance, hence VRRPv3 to ff02::12 in
both daemons without any ``version`` line -- one pyalived and one
keepalived, in both role assignments.  tcpdump on the bridge records VRRP
and ICMPv6 throughout.  Each case checks:

* the election: the higher priority holds the VIP (on exactly one router),
  and still does after more than the backup's Master_Down_Interval;
* failover: the master is killed (SIGKILL, no priority-0 advert) and the
  backup takes the VIP within its Master_Down_Interval (RFC 5798 §6.1) plus
  polling slack, and not before 3 intervals minus one;
* on the wire, pyalived's adverts: from its link-local address to ff02::12,
  hop limit 255, traffic class 0xc0, VRRPv3 with a valid checksum and the
  VIP, exactly what ``packet.encode_v3`` gives; and pyalived's unsolicited
  neighbour advertisements for the VIP when it takes over, byte for byte
  ``ndisc.build_na_frame`` with its MAC -- the frame keepalived sends, which
  is checked as well from keepalived's own takeover;
* the VIP pyalived adds is usable at once (not tentative: IFA_F_NODAD), and
  is gone from it after a graceful stop;
* neither log reports a refused advert.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import time
from ipaddress import IPv6Address
from pathlib import Path
from typing import cast

import pytest

from pyalived.lab import KEEPALIVED, Impl, Lab, Node, Proc, VrrpSpec, render_config, wait_for
from pyalived.vrrp.fsm import master_down_interval_v3
from pyalived.vrrp.ndisc import build_na_frame
from pyalived.vrrp.packet import VRRP_MCAST_GROUP6, AdvertV3, decode_v3, encode_v3
from tests.netns.test_v3_wire import add_ipv6

pytestmark = [
    pytest.mark.interop,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        shutil.which(KEEPALIVED) is None or shutil.which("tcpdump") is None,
        reason="needs keepalived and tcpdump",
    ),
]

SETTLE = 30.0
SLACK = 0.6  # seconds: polling the VIP with `ip addr` and process scheduling
VRID = 52
VIP6 = IPv6Address("fd00:198:18::100")
REFUSED = re.compile(r"\b(bad|invalid|dropped)\b", re.IGNORECASE)
OURS = cast(Impl, os.environ.get("PYALIVED_TEST_IMPL", "pyalived"))


def addresses6(lab: Lab, node: Node) -> dict[IPv6Address, str]:
    """The global IPv6 addresses of ``node``'s eth0, with their ``ip`` flags."""
    out = lab.ip(node, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
    found = {}
    for line in out.splitlines():
        words = line.split()
        found[IPv6Address(words[3].split("/")[0])] = " ".join(words[4:])
    return found


def holders(lab: Lab) -> list[Node]:
    return [r for r in lab.routers if VIP6 in addresses6(lab, r)]


def refused_lines(node: Node) -> list[str]:
    assert node.daemon is not None
    return [line for line in node.daemon.log_text().splitlines() if REFUSED.search(line)]


def spec(priority: int) -> VrrpSpec:
    return VrrpSpec(priority=priority, vrid=VRID, vips=(f"{VIP6}/64",), garp_master_delay=2)


def capture(lab: Lab) -> tuple[Proc, Path]:
    pcap = lab.workdir / "v6.pcap"
    proc = lab.spawn(
        lab.bridge_ns,
        ["tcpdump", "-i", "br0", "-nn", "-U", "-Z", "root", "-s", "2048", "-w", str(pcap),
         "ip6 proto 112 or icmp6"],
        "tcpdump",
    )  # fmt: skip
    wait_for(lambda: "listening on" in proc.log_text(), 15.0, what="tcpdump to start")
    return proc, pcap


def read_stamped(pcap: Path) -> list[tuple[float, bytes]]:
    """(time, frame) of each record of a classic little-endian pcap file; a torn
    last record is ignored."""
    data = pcap.read_bytes() if pcap.exists() else b""
    records, at = [], 24
    while at + 16 <= len(data):
        sec, usec, incl = struct.unpack_from("<III", data, at)
        if at + 16 + incl > len(data):
            break
        records.append((sec + usec / 1e6, data[at + 16 : at + 16 + incl]))
        at += 16 + incl
    return records


def read_frames(pcap: Path) -> list[bytes]:
    return [frame for _, frame in read_stamped(pcap)]


def adverts_from(frames: list[bytes], mac: bytes) -> list[bytes]:
    return [f for f in frames if f[6:12] == mac and f[12:14] == b"\x86\xdd" and f[20] == 112]


def nas_from(frames: list[bytes], mac: bytes) -> list[bytes]:
    return [
        f for f in frames
        if f[6:12] == mac and f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 136
        and f[62:78] == VIP6.packed
    ]  # fmt: skip


def check_adverts(frames: list[bytes], link_local: IPv6Address, priority: int) -> None:
    """pyalived's IPv6 adverts as RFC 5798 §5.1.2 and keepalived send them."""
    assert frames, "no adverts"
    for f in frames:
        ip6 = f[14:54]
        tclass = (int.from_bytes(ip6[0:4], "big") >> 20) & 0xFF
        src, dst, hop = IPv6Address(ip6[8:24]), IPv6Address(ip6[24:40]), ip6[7]
        assert (src, dst, hop, tclass) == (link_local, VRRP_MCAST_GROUP6, 255, 0xC0)
        message = f[54 : 54 + int.from_bytes(ip6[4:6], "big")]
        received = decode_v3(message, src=src, dst=dst, ttl=hop)
        assert received.advert.addresses == (VIP6,)
        assert received.advert.max_advert_int == 100
        assert received.advert.priority in (priority, 0)
        want = AdvertV3(VRID, received.advert.priority, 100, (VIP6,))
        assert encode_v3(want, src, dst).hex() == message.hex()


@pytest.mark.parametrize("master_impl", ["pyalived", "keepalived"])
def test_ipv6_group_elects_and_fails_over(lab: Lab, master_impl: str) -> None:
    r1, r2 = lab.routers  # r1 the master (priority 150), r2 the backup (100)
    impls: dict[str, Impl] = {
        "r1": OURS if master_impl == "pyalived" else "keepalived",
        "r2": "keepalived" if master_impl == "pyalived" else OURS,
    }
    ours = r1 if master_impl == "pyalived" else r2
    link_local = {r.name: add_ipv6(lab, r) for r in lab.routers}
    macs = {r.name: bytes.fromhex(lab.mac(r).replace(":", "")) for r in lab.routers}
    tcpdump, pcap = capture(lab)

    lab.start_daemon(r1, render_config("r1", [spec(150)]), impls["r1"])
    lab.start_daemon(r2, render_config("r2", [spec(100)]), impls["r2"])
    wait_for(lambda: holders(lab) == [r1], SETTLE, what="the IPv6 VIP on r1 only")
    time.sleep(master_down_interval_v3(100, 100) + 1.0)
    assert holders(lab) == [r1]

    down = master_down_interval_v3(100, 100)
    killed = lab.crash(r1)
    killed_wall = time.time() - (time.monotonic() - killed)
    wait_for(lambda: VIP6 in addresses6(lab, r2), SETTLE, interval=0.005, what="VIP on r2")
    took = time.monotonic() - killed
    assert down - 1.0 - SLACK < took < down + SLACK, (took, down)
    # (the killed master's VIP stays in its namespace: nothing cleaned up after SIGKILL)
    if ours is r2:
        # usable at once: no duplicate address detection
        assert "tentative" not in addresses6(lab, r2)[VIP6]

    def na_times(after: float = 0.0) -> list[float]:
        mac = macs[ours.name]
        return [t for t, f in read_stamped(pcap) if t > after and nas_from([f], mac)]

    # pyalived's second NA burst, garp_master_delay (2 s) after the first
    wait_for(lambda: len(na_times(killed_wall if ours is r2 else 0.0)) >= 10, 10.0,
             what="two NA bursts from pyalived")
    time.sleep(0.5)
    tcpdump.stop()
    frames = read_frames(pcap)
    times = na_times()
    bursts = [t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 0.5]
    assert bursts[-1] - bursts[-2] == pytest.approx(2.0, abs=0.1), times
    assert len([t for t in times if t >= bursts[-1]]) == 5, times  # garp_master_repeat

    # pyalived's adverts (as master, or as the backup's takeover)
    check_adverts(adverts_from(frames, macs[ours.name]), link_local[ours.name],
                  150 if ours is r1 else 100)
    # Unsolicited NAs for the VIP from each router that took over: the same frame
    # from pyalived and keepalived (R flag off: no IPv6 forwarding in the lab).
    for router in (r1, r2):
        nas = nas_from(frames, macs[router.name])
        assert len(nas) >= 5, (router, len(nas))  # a burst of garp_master_repeat
        want = build_na_frame(macs[router.name], VIP6, router=False)
        assert {f[:86].hex() for f in nas} == {want.hex()}, router

    assert refused_lines(r2) == []
    assert refused_lines(r1) == []
    lab.stop_daemon(r2)  # graceful: the VIP goes
    assert VIP6 not in addresses6(lab, r2)
