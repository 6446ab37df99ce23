"""VRRPv3 over IPv6: configuration, neighbour advertisements and the instance driver.

The parser cases follow keepalived 2.2.7's ``keepalived -t`` (its messages are
quoted in each case); the neighbour advertisement fixture is a frame captured
from keepalived 2.2.7 (tests/interop/test_v3_ipv6_keepalived.py captures it
again and compares); the driver runs with fake ports under trio's MockClock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path

import pytest
import trio
import trio.testing

from pyalived.config import load as load_file
from pyalived.config.model import Config, VirtualIP, VrrpInstance
from pyalived.reload import instance_key
from pyalived.vrrp import packet
from pyalived.vrrp.fsm import State, master_down_interval_v3
from pyalived.vrrp.instance import Instance
from pyalived.vrrp.ndisc import build_na_frame, na_message
from pyalived.vrrp.runtime import VrrpPorts, run_vrrp
from pyalived.vrrp.vmac import vmac_mac
from tests.unit.fakes import (
    FakeAddressManager,
    FakeLinkWatcher,
    FakeScriptRunner,
    FakeSocketFactory,
    FakeVmacManager,
)

# ----------------------------------------------------------------------------- config

HEAD = "global_defs {\n    router_id t6\n}\n"


def load(tmp_path: Path, text: str) -> tuple[Config | None, list[str]]:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    res = load_file(str(conf), interface_exists=lambda name: True)
    return res.config, [f"{d.location.line}: {d.message}" for d in res.diagnostics]


def instance(body: str, name: str = "A", head: str = HEAD) -> str:
    start = f"vrrp_instance {name} {{\n    interface eth0\n    virtual_router_id 5\n"
    return head + start + body + "}\n"


def test_an_ipv6_instance_is_version_3_with_its_addresses(tmp_path: Path) -> None:
    config, diags = load(tmp_path, instance(
        "    virtual_ipaddress {\n        fd00:198:18::5/64\n        fd00:198:18::6\n    }\n"
        "    virtual_ipaddress_excluded {\n        198.18.0.5/32\n        fd00:198:18::7\n    }\n"
    ))  # fmt: skip
    assert config is not None, diags
    (inst,) = config.vrrp_instances
    assert inst.family == 6 and inst.version == 3
    assert [v.address for v in inst.virtual_ipaddress] == [
        IPv6Interface("fd00:198:18::5/64"), IPv6Interface("fd00:198:18::6/128")
    ]
    # the excluded addresses may be of both families (keepalived -t: silent)
    assert [v.address for v in inst.virtual_ipaddress_excluded] == [
        IPv4Interface("198.18.0.5/32"), IPv6Interface("fd00:198:18::7/128")
    ]
    assert config.global_defs.vrrp_mcast_group6 == IPv6Address("ff02::12")
    assert diags == []


def test_version_2_is_switched_to_3_with_keepalived_s_warning(tmp_path: Path) -> None:
    # keepalived -t (with vrrp_strict): "(A) cannot use IPv6 with VRRP version 2;
    # setting version 3"
    config, diags = load(tmp_path, instance(
        "    version 2\n    advert_int 1.5\n"
        "    virtual_ipaddress {\n        fd00:198:18::5\n    }\n",
        head=HEAD + "global_defs {\n    vrrp_version 2\n}\n",
    ))  # fmt: skip
    assert config is not None
    (inst,) = config.vrrp_instances
    assert inst.version == 3
    assert inst.advert_int == 1.5  # a VRRPv3 interval, not rounded to whole seconds
    assert any("(A) cannot use IPv6 with VRRP version 2; setting version 3" in d for d in diags)
    assert not any("whole seconds" in d for d in diags)


def test_virtual_ipaddress_holds_one_family(tmp_path: Path) -> None:
    # keepalived -t: "(B): address family must match VRRP instance [198.18.0.6/32] - ignoring"
    config, diags = load(tmp_path, instance(
        "    virtual_ipaddress {\n        fd00:198:18::6/64\n        198.18.0.6/32\n    }\n",
        name="B",
    ))  # fmt: skip
    assert config is not None
    (inst,) = config.vrrp_instances
    assert [v.ip for v in inst.virtual_ipaddress] == [IPv6Address("fd00:198:18::6")]
    assert any(
        d.startswith("9: ") and "address family must match VRRP instance [198.18.0.6/32]" in d
        for d in diags
    ), diags


def test_an_ipv4_instance_refuses_an_ipv6_vip_likewise(tmp_path: Path) -> None:
    config, diags = load(tmp_path, instance(
        "    virtual_ipaddress {\n        198.18.0.6/32\n        fd00:198:18::6\n    }\n"
    ))  # fmt: skip
    assert config is not None
    (inst,) = config.vrrp_instances
    assert inst.family == 4 and inst.version == 2
    assert [v.ip for v in inst.virtual_ipaddress] == [IPv4Address("198.18.0.6")]
    assert any("address family must match VRRP instance [fd00:198:18::6/128]" in d for d in diags)


def test_unicast_addresses_of_the_other_family_are_errors(tmp_path: Path) -> None:
    # keepalived -t: "Configuration error: VRRP instance[C] and unicast peer
    # address[198.18.0.9] MUST be of the same family !!! Skipping..."
    config, diags = load(tmp_path, instance(
        "    unicast_src_ip fe80::1\n"
        "    unicast_peer {\n        fe80::2\n        198.18.0.9\n    }\n"
        "    virtual_ipaddress {\n        fd00:198:18::7\n    }\n",
        name="C",
    ))  # fmt: skip
    (line,) = [d for d in diags if "MUST be of the same family" in d]
    assert line.startswith("10: ") and "unicast peer address[198.18.0.9]" in line
    assert config is None  # an error: the configuration is refused, as -t exits non-zero


def test_ipv6_unicast_addresses(tmp_path: Path) -> None:
    config, diags = load(tmp_path, instance(
        "    unicast_src_ip fe80::1\n    unicast_peer {\n        fe80::2\n    }\n"
        "    virtual_ipaddress {\n        fd00:198:18::7\n    }\n"
    ))  # fmt: skip
    assert config is not None, diags
    (inst,) = config.vrrp_instances
    assert inst.unicast_src_ip == IPv6Address("fe80::1")
    assert inst.unicast_peer == (IPv6Address("fe80::2"),)


def test_global_ipv6_keywords(tmp_path: Path) -> None:
    head = "global_defs {\n    vrrp_mcast_group6 ff02::1:12\n    vrrp_gna_interval 0.01\n}\n"
    config, diags = load(tmp_path, instance(
        "    virtual_ipaddress {\n        fd00:198:18::7\n    }\n", head=head
    ))  # fmt: skip
    assert config is not None, diags
    assert config.global_defs.vrrp_mcast_group6 == IPv6Address("ff02::1:12")
    assert config.global_defs.vrrp_gna_interval == 0.01
    _bad, diags = load(tmp_path, "global_defs {\n    vrrp_mcast_group6 fd00:198:18::1\n}\n")
    assert any("is not multicast" in d for d in diags)


def test_use_vmac_on_an_ipv6_instance(tmp_path: Path) -> None:
    config, diags = load(tmp_path, instance(
        "    use_vmac\n    virtual_ipaddress {\n        fd00:198:18::7\n    }\n"
    ))  # fmt: skip
    assert config is not None, diags
    assert not [d for d in diags if "vmac" in d]
    (inst,) = config.vrrp_instances
    assert (inst.use_vmac, inst.effective_vmac_name) == (True, "vrrp.5")


@pytest.mark.parametrize(("first", "names"), [
    ("V4", {"V4": "vrrp.5", "V6": "vrrp6.5"}),
    # keepalived: the IPv6 instance, first, keeps vrrp.5; the IPv4 one finds the
    # name taken when it creates its VMAC, and gets another (pyalived.vrrp.vmac).
    ("V6", {"V6": "vrrp.5", "V4": "vrrp.5"}),
])
def test_default_vmac_names_of_a_dual_stack_vrid(tmp_path: Path, first: str,
                                                   names: dict[str, str]) -> None:
    blocks = {
        "V4": instance("    use_vmac\n    virtual_ipaddress {\n        198.18.0.5\n    }\n",
                       name="V4", head=""),
        "V6": instance("    use_vmac\n    virtual_ipaddress {\n        fd00:198:18::5\n    }\n",
                       name="V6", head=""),
    }
    second = "V6" if first == "V4" else "V4"
    config, diags = load(tmp_path, HEAD + blocks[first] + blocks[second])
    assert config is not None, diags
    assert {i.name: i.effective_vmac_name for i in config.vrrp_instances} == names
    named = blocks["V6"].replace("use_vmac", "use_vmac v6mac")
    config, diags = load(tmp_path, HEAD + blocks["V4"] + named)
    assert config is not None, diags
    assert [i.effective_vmac_name for i in config.vrrp_instances] == ["vrrp.5", "v6mac"]


def test_an_ipv6_vip_has_no_broadcast(tmp_path: Path) -> None:
    _config, diags = load(tmp_path, instance(
        "    virtual_ipaddress {\n        fd00:198:18::7 brd fd00:198:18::ff\n    }\n"
    ))  # fmt: skip
    assert any("has no broadcast" in d for d in diags)


# ----------------------------------------------------------------------------- NA frames

MAC = bytes.fromhex("feb916105e00")
TARGET = IPv6Address("fd00:198:18::100")

# An unsolicited NA as keepalived 2.2.7 sent it for fd00:198:18::100 from an eth0
# with MAC fe:b9:16:10:5e:00 and IPv6 forwarding off (captured on the lab bridge).
NA_FRAME = bytes.fromhex(
    "333300000001" "feb916105e00" "86dd"  # Ethernet: all-nodes MAC, ours, IPv6
    "60000000" "0020" "3a" "ff"  # version 6, tclass 0, flow 0; 32 bytes; ICMPv6; hop 255
    "fd000198001800000000000000000100"  # source: the VIP itself
    "ff020000000000000000000000000001"  # destination: all nodes
    "88" "00" "e473" "20000000"  # NA, code 0, checksum, flags: Override only
    "fd000198001800000000000000000100"  # target
    "02" "01" "feb916105e00"  # option: target link-layer address
)  # fmt: skip


def test_na_frame_is_keepalived_s() -> None:
    frame = build_na_frame(MAC, TARGET, router=False)
    assert frame.hex() == NA_FRAME.hex()
    assert len(frame) == 86


def test_na_router_flag_and_checksum() -> None:
    routed = na_message(TARGET, TARGET, MAC, router=True)
    plain = na_message(TARGET, TARGET, MAC, router=False)
    assert routed[4] == 0xA0 and plain[4] == 0x20  # R|O, O; never S
    # The ICMPv6 checksum verifies over the RFC 8200 §8.1 pseudo-header.
    for message in (routed, plain):
        pseudo = TARGET.packed + IPv6Address("ff02::1").packed
        pseudo += len(message).to_bytes(4, "big") + bytes(3) + b"\x3a"
        assert packet.internet_checksum(pseudo + message) == 0
    with pytest.raises(ValueError):
        na_message(TARGET, TARGET, b"\x00" * 5, router=False)


def test_ipv6_vmac() -> None:
    assert vmac_mac(51, 6) == "00:00:5e:00:02:33"  # RFC 5798 §7.3
    assert vmac_mac(51, 4) == "00:00:5e:00:01:33"


# ----------------------------------------------------------------------------- driver

OUR_LL = IPv6Address("fe80::11")
PEER_LL = IPv6Address("fe80::12")
GROUP6 = IPv6Address("ff02::12")
VIP6 = VirtualIP(IPv6Interface("fd00:198:18::100/64"))
VIP4_EXCLUDED = VirtualIP(IPv4Interface("198.18.0.100/32"))
MASTER_DOWN = master_down_interval_v3(100, 90)  # RFC 5798 §6.1, priority 90, 1 s


def conf6(**changes: object) -> VrrpInstance:
    base = VrrpInstance(
        name="V6", interface="eth0", virtual_router_id=52, priority=90, version=3,
        virtual_ipaddress=(VIP6,), garp_master_delay=5.0, garp_master_repeat=3,
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


class Rig6:
    def __init__(self) -> None:
        self.sockets = FakeSocketFactory(link_locals={"eth0": OUR_LL})
        self.addresses = FakeAddressManager()
        self.counters = None
        self.ports = VrrpPorts(
            sockets=self.sockets,
            addresses=self.addresses,
            vmac=FakeVmacManager(),
            links=FakeLinkWatcher(up=("eth0",)),
            scripts=FakeScriptRunner(),
            primary_ip=lambda ifname: IPv4Address("198.18.0.11"),
            sockets6=self.sockets,
        )


@asynccontextmanager
async def running(rig: Rig6, config: Config) -> AsyncIterator[tuple[list[Instance], float]]:
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        instances = await nursery.start(run_vrrp, config, rig.ports)
        yield instances, start
        nursery.cancel_scope.cancel()


async def test_ipv6_master_adverts_from_link_local_and_sends_nas_on_takeover(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig6()
    config = Config(vrrp_instances=(conf6(virtual_ipaddress_excluded=(VIP4_EXCLUDED,)),))
    async with running(rig, config) as ((inst,), start):
        assert inst.state is State.BACKUP
        assert rig.sockets.advert == {}  # no IPv4 socket for an IPv6 instance
        await trio.sleep(MASTER_DOWN - 0.001)
        assert inst.state is State.BACKUP
        await trio.sleep(0.001 + 5.5)
        assert inst.state is State.MASTER
        sent = rig.sockets.advert6["eth0"].sent
        assert [s.time - start for s in sent] == pytest.approx(
            [MASTER_DOWN + k for k in range(6)], abs=1e-9
        )
        assert {(s.src, s.dst) for s in sent} == {(OUR_LL, GROUP6)}
        first = packet.decode_v3(sent[0].message, src=OUR_LL, dst=GROUP6, ttl=255)
        assert first.advert == packet.AdvertV3(52, 90, 100, (VIP6.ip,))
        garp = rig.sockets.garp["eth0"]
        # Unsolicited NAs for the IPv6 VIP at takeover and garp_master_delay later;
        # gratuitous ARP for the excluded IPv4 address alongside.
        assert [(n.ips, n.count) for n in garp.sent_na] == [((VIP6.ip,), 3)] * 2
        assert [n.time - start for n in garp.sent_na] == pytest.approx(
            [MASTER_DOWN, MASTER_DOWN + 5.0], abs=1e-9
        )
        assert [g.ips for g in garp.sent] == [(VIP4_EXCLUDED.ip,)] * 2
        assert [g.time for g in garp.sent] == [n.time for n in garp.sent_na]
        assert ("eth0", "fd00:198:18::100/64") in rig.addresses.present
    last = packet.decode_v3(
        rig.sockets.advert6["eth0"].sent[-1].message, src=OUR_LL, dst=GROUP6, ttl=255
    )
    assert last.advert.priority == 0
    assert rig.addresses.present == set()
    assert rig.sockets.advert6["eth0"].closed


async def test_ipv6_backup_follows_a_higher_priority_master(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig6()
    async with running(rig, Config(vrrp_instances=(conf6(),))) as ((inst,), _start):
        sock = rig.sockets.advert6["eth0"]
        advert = packet.AdvertV3(52, 200, 100, (VIP6.ip,))
        for _ in range(10):
            sock.inject(packet.encode_v3(advert, PEER_LL, GROUP6), PEER_LL, GROUP6)
            await trio.sleep(1.0)
        assert inst.state is State.BACKUP
        assert sock.sent == [] and rig.sockets.garp["eth0"].sent_na == []
        # A hop limit other than 255 is dropped (RFC 5798 §7.1): the master seems gone.
        for _ in range(5):
            sock.inject(packet.encode_v3(advert, PEER_LL, GROUP6), PEER_LL, GROUP6, 254)
            await trio.sleep(1.0)
        assert inst.state is State.MASTER


async def test_ipv6_equal_priority_tie_breaks_on_the_link_local_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig6()
    async with running(rig, Config(vrrp_instances=(conf6(),))) as ((inst,), _start):
        sock = rig.sockets.advert6["eth0"]
        await trio.sleep(MASTER_DOWN + 0.1)
        assert inst.state is State.MASTER
        # fe80::12 > fe80::11: the peer wins an equal-priority election (RFC 5798 §6.4.3).
        sock.inject(packet.encode_v3(packet.AdvertV3(52, 90, 100, (VIP6.ip,)), PEER_LL, GROUP6),
                    PEER_LL, GROUP6)
        await trio.sleep(0.01)
        assert inst.state is State.BACKUP


def test_one_vrid_per_interface_and_family(tmp_path: Path) -> None:
    two = instance("    virtual_ipaddress {\n        198.18.0.5\n    }\n", name="V4") + instance(
        "    virtual_ipaddress {\n        fd00:198:18::5\n    }\n", name="V6", head=""
    )
    config, diags = load(tmp_path, two)
    assert config is not None, diags
    v4, v6 = config.vrrp_instances
    assert instance_key(v4) != instance_key(v6)  # a reload tells them apart
    clash = two + instance("    virtual_ipaddress {\n        fd00:198:18::6\n    }\n",
                           name="W6", head="")
    config, diags = load(tmp_path, clash)
    assert config is None
    assert any("uses virtual_router_id 5 on eth0, like V6" in d for d in diags)


async def test_ipv4_and_ipv6_instances_of_one_vrid_side_by_side(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig6()
    v4 = conf6(name="V4", version=2, virtual_ipaddress=(VIP4_EXCLUDED,))
    async with running(rig, Config(vrrp_instances=(v4, conf6()))) as ((i4, i6), _start):
        # A higher-priority IPv6 master keeps the IPv6 instance BACKUP only.
        sock6 = rig.sockets.advert6["eth0"]
        advert = packet.AdvertV3(52, 200, 100, (VIP6.ip,))
        for _ in range(6):
            sock6.inject(packet.encode_v3(advert, PEER_LL, GROUP6), PEER_LL, GROUP6)
            await trio.sleep(1.0)
        assert (i4.state, i6.state) == (State.MASTER, State.BACKUP)
        sent4 = rig.sockets.advert[("eth0", packet.VRRP_PROTO)].sent
        assert {packet.parse_datagram(s.datagram).advert.vrid for s in sent4} == {52}
        assert sock6.sent == []


async def test_gna_interval_spaces_the_neighbour_advertisements(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig6()
    vip2 = VirtualIP(IPv6Interface("fd00:198:18::101/64"))
    conf = conf6(virtual_ipaddress=(VIP6, vip2), gna_interval=0.1, garp_master_repeat=2)
    async with running(rig, Config(vrrp_instances=(conf,))) as ((inst,), start):
        await trio.sleep(MASTER_DOWN + 0.5)
        assert inst.state is State.MASTER
        garp = rig.sockets.garp["eth0"]
        assert [(n.ips, n.count) for n in garp.sent_na] == [
            ((VIP6.ip,), 1), ((VIP6.ip,), 1), ((vip2.ip,), 1), ((vip2.ip,), 1)
        ]
        assert [n.time - start for n in garp.sent_na] == pytest.approx(
            [MASTER_DOWN + k * 0.1 for k in range(4)], abs=1e-9
        )
        # The adverts keep their own times meanwhile.
        sent = rig.sockets.advert6["eth0"].sent
        assert [s.time - start for s in sent] == pytest.approx([MASTER_DOWN], abs=1e-9)


def test_gna_interval_defaults_from_global_defs(tmp_path: Path) -> None:
    head = "global_defs {\n    vrrp_gna_interval 0.05\n}\n"
    second = instance(
        "    gna_interval 0.2\n    virtual_ipaddress {\n        fd00:198:18::8\n    }\n",
        name="B", head="",
    ).replace("virtual_router_id 5", "virtual_router_id 6")
    config, diags = load(tmp_path, instance(
        "    virtual_ipaddress {\n        fd00:198:18::7\n    }\n", head=head
    ) + second)
    assert config is not None, diags
    assert [i.gna_interval for i in config.vrrp_instances] == [0.05, 0.2]
