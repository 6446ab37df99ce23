"""Accept mode: the firewall settings, the nftables batches, the firewall service, the driver."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface, ip_address
from pathlib import Path

import pytest
import trio
import trio.testing

from pyalived.config import LoadResult, load
from pyalived.config.model import Config, VirtualIP, VrrpInstance
from pyalived.reload import plan_reload
from pyalived.vrrp.firewall import (
    RETRY_INTERVAL,
    Blocked,
    FirewallSettings,
    VipFirewall,
    blocked,
    firewall_settings,
    plan,
    table_commands,
)
from pyalived.vrrp.fsm import State
from pyalived.vrrp.runtime import VrrpRuntime, run_vrrp
from tests.unit.fakes import FakeNft
from tests.unit.test_instance import MASTER_DOWN_90, PEER, Rig, advert_from

# ---- configuration ----------------------------------------------------------------------------

INSTANCE = ("vrrp_instance {name} {{\n interface eth0\n virtual_router_id {vrid}\n"
            " priority {prio}\n{body} virtual_ipaddress {{\n  198.18.0.{vrid}\n }}\n}}\n")


def load_text(tmp_path: Path, text: str) -> LoadResult:
    p = tmp_path / "keepalived.conf"
    p.write_text(text)
    return load(str(p), config_id="me", interface_exists={"eth0"}.__contains__)


def test_firewall_settings_need_a_no_accept_vip(tmp_path: Path) -> None:
    text = ("global_defs {\n vrrp_strict\n nftables lb\n}\n" + INSTANCE.format(
        name="VI_1", vrid=51, prio=100, body=" virtual_ipaddress_excluded {\n"
        "  fd00:198:18::9\n }\n"))
    res = load_text(tmp_path, text)
    assert res.config is not None
    assert firewall_settings(res.config) == FirewallSettings("lb", families=frozenset({4, 6}))
    accepting = replace(res.config, vrrp_instances=tuple(
        replace(i, accept=True) for i in res.config.vrrp_instances))
    assert firewall_settings(accepting).families == frozenset()


# ---- the batches ------------------------------------------------------------------------------

V4 = Blocked(IPv4Address("198.18.0.100"))
V4B = Blocked(IPv4Address("198.18.0.101"))
V6 = Blocked(ip_address("fd00:198:18::100"))
LL = Blocked(ip_address("fe80::100"), "eth0")
BOTH = FirewallSettings(families=frozenset({4, 6}))


def test_blocked_elements_pair_link_local_vips_with_their_interface() -> None:
    vips = [VirtualIP(IPv4Interface("198.18.0.100/24")),
            VirtualIP(IPv6Interface("fe80::100/64")),
            VirtualIP(IPv6Interface("fe80::101/64"), dev="eth1"),
            VirtualIP(IPv6Interface("fd00:198:18::100/64"))]
    assert blocked(vips, "vrrp.51") == {
        V4, V6, Blocked(ip_address("fe80::100"), "vrrp.51"), Blocked(ip_address("fe80::101"),
                                                                      "eth1")}


def test_table_layout_is_keepalived_s() -> None:
    cmds = table_commands(FirewallSettings(priority=-5, counters=True), 4, [V4])
    chains = [c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})]
    assert [(c["name"], c["hook"], c["prio"], c["policy"]) for c in chains] == \
        [("out", "output", -5, "accept"), ("in", "input", -5, "accept")]
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    assert [(r["chain"], r["expr"][0]["match"]["left"]["payload"]["field"],
             r["expr"][0]["match"]["right"], list(r["expr"][1]), list(r["expr"][2]))
            for r in rules] == [("out", "saddr", "@vips", ["counter"], ["drop"]),
                                ("in", "daddr", "@vips", ["counter"], ["drop"])]
    assert cmds[-1] == {"add": {"element": {"family": "ip", "table": "keepalived",
                                            "name": "vips", "elem": ["198.18.0.100"]}}}
    six = table_commands(FirewallSettings(), 6, [V6, LL])
    sets = [c["add"]["set"]["name"] for c in six if "set" in c.get("add", {})]
    assert sets == ["vips", "neighbor-discovery", "vips_link_local"]
    assert {"add": {"element": {"family": "ip6", "table": "keepalived", "name":
                                "vips_link_local", "elem": [{"concat": ["fe80::100", "eth0"]}]}}} \
        in six
    assert len([c for c in six if "rule" in c.get("add", {})]) == 8


def test_plan_replaces_tables_first_then_only_touches_elements() -> None:
    first = plan(None, {}, BOTH, {4: frozenset({V4})})
    # Leftovers are dropped (add + delete is valid whether or not the table exists).
    assert first[:4] == [
        {"add": {"table": {"family": "ip", "name": "keepalived"}}},
        {"delete": {"table": {"family": "ip", "name": "keepalived"}}},
        {"add": {"table": {"family": "ip6", "name": "keepalived"}}},
        {"delete": {"table": {"family": "ip6", "name": "keepalived"}}},
    ]
    applied = {4: frozenset({V4}), 6: frozenset()}
    assert plan(BOTH, applied, BOTH, {4: frozenset({V4})}) == []
    assert plan(BOTH, applied, BOTH, {4: frozenset({V4B}), 6: frozenset({V6})}) == [
        {"delete": {"element": {"family": "ip", "table": "keepalived", "name": "vips",
                                "elem": ["198.18.0.100"]}}},
        {"add": {"element": {"family": "ip", "table": "keepalived", "name": "vips",
                             "elem": ["198.18.0.101"]}}},
        {"add": {"element": {"family": "ip6", "table": "keepalived", "name": "vips",
                             "elem": ["fd00:198:18::100"]}}},
    ]
    renamed = replace(BOTH, table="lb")
    moved = plan(BOTH, applied, renamed, {4: frozenset({V4})})
    dropped = {(c["delete"]["table"]["family"], c["delete"]["table"]["name"])
               for c in moved if "table" in c.get("delete", {})}
    assert dropped == {("ip", "keepalived"), ("ip6", "keepalived"), ("ip", "lb"), ("ip6", "lb")}
    assert {"add": {"element": {"family": "ip", "table": "lb", "name": "vips",
                                "elem": ["198.18.0.100"]}}} in moved


# ---- the service ------------------------------------------------------------------------------


async def test_firewall_replaces_leftovers_and_keeps_one_copy() -> None:
    nft = FakeNft()
    await nft.run(table_commands(BOTH, 4, [V4B]))  # a killed daemon's table
    fw = VipFirewall(nft, BOTH)
    await fw.configure(BOTH)
    assert nft.elements() == set() and nft.tables[("ip", "keepalived")]["rules"] == 2
    await fw.block("VI_1", frozenset({V4}))
    await fw.block("VI_2", frozenset({V4, V6}))
    assert nft.elements() == {"198.18.0.100"}
    assert nft.elements("ip6") == {"fd00:198:18::100"}
    await fw.unblock("VI_1")
    assert nft.elements() == {"198.18.0.100"}  # VI_2 still blocks it
    await fw.unblock("VI_2", frozenset({V4}))
    assert nft.elements() == set() and nft.elements("ip6") == {"fd00:198:18::100"}
    assert len(nft.tables) == 2
    await fw.close()
    assert nft.tables == {}


async def test_a_failed_batch_is_retried_every_second(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    nft = FakeNft()
    fw = VipFirewall(nft, BOTH)
    async with trio.open_nursery() as nursery:
        await nursery.start(fw.run)
        await fw.configure(BOTH)
        start = trio.current_time()
        nft.fail = 2
        await fw.block("VI_1", frozenset({V4}))
        assert not fw.in_sync and nft.tables[("ip", "keepalived")]["sets"]["vips"] == set()
        await trio.sleep(10)
        assert fw.in_sync and nft.elements() == {"198.18.0.100"}
        times = [t - start for t, _ in nft.batches[1:]]
        assert times == [0, RETRY_INTERVAL, 2 * RETRY_INTERVAL]
        # One error line for the two failures a second apart, one line once it works.
        lines = [r.getMessage() for r in caplog.records if "nftables" in r.getMessage()]
        assert [line.split(":")[1].strip() for line in lines[-2:]] == [
            "setting the VIP drop rules failed (retrying every 1s)",
            "the VIP drop rules are set"]
        assert len([line for line in lines if "failed" in line]) == 1
        nursery.cancel_scope.cancel()


async def test_a_config_without_no_accept_never_touches_nftables() -> None:
    nft = FakeNft()
    fw = VipFirewall(nft, FirewallSettings())
    await fw.configure(FirewallSettings())
    await fw.close()
    assert nft.batches == []


# ---- the driver -------------------------------------------------------------------------------


def strict_instance(**changes: object) -> VrrpInstance:
    from tests.unit.test_instance import instance_conf
    return instance_conf(**{"accept": False, **changes})


async def test_master_blocks_before_adding_and_unblocks_after_removing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    nft = FakeNft()
    rig.ports.nft = nft
    config = Config(vrrp_instances=(strict_instance(),))
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        (inst,) = await nursery.start(run_vrrp, config, rig.ports, rig.counters)
        assert nft.elements() == set()
        await trio.sleep(MASTER_DOWN_90 + 0.5)
        assert inst.state is State.MASTER and nft.elements() == {"198.18.0.100"}
        block_time = nft.batches[-1][0]
        add = [c for c in rig.addresses.calls if c.op == "add"]
        assert block_time - start == MASTER_DOWN_90 and add[0].time == block_time
        assert [c.op for c in rig.addresses.calls][-1] == "add"
        # A higher priority peer: back to BACKUP; the address goes, then the element.
        rig.inject(advert_from(PEER, 150))
        await trio.sleep(0.1)
        assert inst.state is State.BACKUP and nft.elements() == set()
        nursery.cancel_scope.cancel()
    assert nft.tables == {}  # the stop deleted the tables


async def test_accepting_instance_is_never_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    nft = FakeNft()
    rig.ports.nft = nft
    config = Config(vrrp_instances=(strict_instance(accept=True),))
    async with trio.open_nursery() as nursery:
        (inst,) = await nursery.start(run_vrrp, config, rig.ports, rig.counters)
        await trio.sleep(MASTER_DOWN_90 + 0.5)
        assert inst.state is State.MASTER and ("eth0", "198.18.0.100/24") in rig.addresses.present
        nursery.cancel_scope.cancel()
    assert nft.batches == []


async def test_reload_moves_the_table_and_switches_accept_in_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    nft = FakeNft()
    rig.ports.nft = nft
    old = Config(vrrp_instances=(strict_instance(),))
    async with trio.open_nursery() as nursery:
        runtime = await nursery.start(VrrpRuntime(old, rig.ports, rig.counters).run)
        (inst,) = runtime.instances
        await trio.sleep(MASTER_DOWN_90 + 0.5)
        assert inst.state is State.MASTER and nft.elements() == {"198.18.0.100"}
        # nftables lb: the table moves, with the element, in one batch.
        moved = replace(old, global_defs=replace(old.global_defs, nftables="lb"))
        before = len(nft.batches)
        await runtime.apply(moved, plan_reload(old, moved))
        assert set(nft.tables) == {("ip", "lb")} and nft.elements(table="lb") == {"198.18.0.100"}
        assert len(nft.batches) == before + 1
        # accept: no instance needs the firewall any more, so the table goes; the VIP
        # stays, the instance stays MASTER.
        accepting = replace(moved, vrrp_instances=(strict_instance(accept=True),))
        await runtime.apply(accepting, plan_reload(moved, accepting))
        assert runtime.instances == [inst] and inst.state is State.MASTER
        assert nft.tables == {}
        assert ("eth0", "198.18.0.100/24") in rig.addresses.present
        assert [c.op for c in rig.addresses.calls] == ["remove", "add"]  # start-up, takeover
        # and back to no_accept: blocked again, still without touching the address.
        await runtime.apply(moved, plan_reload(accepting, moved))
        assert nft.elements(table="lb") == {"198.18.0.100"}
        assert [c.op for c in rig.addresses.calls] == ["remove", "add"]
        nursery.cancel_scope.cancel()
    assert nft.tables == {}


async def test_the_data_dump_shows_the_accept_mode(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from pyalived import dump

    rig = Rig()
    config = Config(vrrp_instances=(
        strict_instance(), strict_instance(name="VI_2", virtual_router_id=52, accept=True)))
    async with trio.open_nursery() as nursery:
        runtime = await nursery.start(VrrpRuntime(config, rig.ports, rig.counters).run)
        text = dump.format_data(runtime.instances, trio.current_time())
        nursery.cancel_scope.cancel()
    vi1, vi2 = (next(b for b in text.split("\n\n") if f"VRRP instance {n}" in b)
                for n in ("VI_1", "VI_2"))
    assert "Accept               = no" in vi1 and "Accept               = yes" in vi2
