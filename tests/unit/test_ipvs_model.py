"""Pure tests of the IPVS table model: keys, planning with quorum, diff/apply."""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from socket import AF_INET, AF_INET6

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from pyalived.ipvs import genl
from pyalived.ipvs import model as m
from pyalived.ipvs.model import (
    Destination,
    DestKey,
    Forwarding,
    Protocol,
    RealServerConfig,
    Service,
    ServiceKey,
    SorryServerConfig,
    VirtualServerConfig,
)
from pyalived.ipvs.netlink import IpvsTableManager, IpvsUnavailable, NetlinkIpvs, OpFailure

VIP = ServiceKey.inet("198.18.1.1", 80)
R1 = IPv4Address("198.18.2.1")
R2 = IPv4Address("198.18.2.2")
R3 = IPv4Address("198.18.2.3")
SORRY = IPv4Address("198.18.2.100")


def vs(**kw: object) -> VirtualServerConfig:
    base: dict[str, object] = {
        "key": VIP,
        "scheduler": "rr",
        "real_servers": (
            RealServerConfig(R1, 80, weight=1),
            RealServerConfig(R2, 80, weight=2),
        ),
    }
    base.update(kw)
    return VirtualServerConfig(**base)  # type: ignore[arg-type]


def dests(entry: m.ServiceEntry) -> dict[str, int]:
    return {str(k): d.weight for k, d in entry.dests.items()}


# ---- keys and records ----------------------------------------------------------------


def test_service_key_validation() -> None:
    assert str(VIP) == "TCP 198.18.1.1:80"
    assert str(ServiceKey.mark(7)) == "FWM 7"
    assert ServiceKey.inet("2001:db8::1", 443, Protocol.UDP).family == AF_INET6
    with pytest.raises(ValueError):
        ServiceKey(AF_INET, 6, None, 80)
    with pytest.raises(ValueError):
        ServiceKey(AF_INET6, 6, IPv4Address("198.18.1.1"), 80)
    with pytest.raises(ValueError):
        ServiceKey(AF_INET, 0, None, 0, fwmark=0)
    with pytest.raises(ValueError):
        Service(VIP, scheduler="bogus")
    with pytest.raises(ValueError):
        Service(VIP, netmask=33)


def test_service_attributes_from_config() -> None:
    s = vs(persistence_timeout=300, persistence_granularity=24, ops=True).service()
    assert s.flags == m.SVC_F_PERSISTENT | m.SVC_F_ONEPACKET
    assert (s.timeout, s.netmask, s.scheduler) == (300, 24, "rr")
    plain = VirtualServerConfig(VIP).service()
    assert (plain.scheduler, plain.flags, plain.timeout, plain.netmask) == ("wlc", 0, 0, 32)
    v6 = VirtualServerConfig(ServiceKey.mark(1, AF_INET6), persistence_timeout=60).service()
    assert v6.netmask == 128


# ---- planning -------------------------------------------------------------------------


def test_all_alive_by_default_and_forwarding_inherited() -> None:
    cfg = vs(
        forwarding=Forwarding.DR,
        real_servers=(
            RealServerConfig(R1, 80),
            RealServerConfig(R2, 80, forwarding=Forwarding.TUN, u_threshold=9, l_threshold=3),
        ),
    )
    p = m.plan([cfg], {})
    e = p.table[VIP]
    assert e.dests[DestKey(R1, 80)].forwarding is Forwarding.DR
    assert e.dests[DestKey(R2, 80)] == Destination(DestKey(R2, 80), 1, Forwarding.TUN, 9, 3)
    assert p.quorum == {VIP: True} and p.changes == ()


def test_failed_server_removed_or_inhibited() -> None:
    down = {VIP: {DestKey(R1, 80): False}}
    assert dests(m.plan([vs()], down).table[VIP]) == {"198.18.2.2:80": 2}
    p = m.plan([vs(inhibit_on_failure=True)], down)
    assert dests(p.table[VIP]) == {"198.18.2.1:80": 0, "198.18.2.2:80": 2}
    rs = (RealServerConfig(R1, 80, inhibit_on_failure=True), RealServerConfig(R2, 80))
    p = m.plan([vs(real_servers=rs)], down)
    assert dests(p.table[VIP]) == {"198.18.2.1:80": 0, "198.18.2.2:80": 1}


def test_alpha_starts_down_unless_unchecked() -> None:
    rs = (RealServerConfig(R1, 80), RealServerConfig(R2, 80, checked=False))
    p = m.plan([vs(alpha=True, real_servers=rs)], {})
    assert dests(p.table[VIP]) == {"198.18.2.2:80": 1}
    p = m.plan([vs(alpha=True, real_servers=rs)], {VIP: {DestKey(R1, 80): True}})
    assert dests(p.table[VIP]) == {"198.18.2.1:80": 1, "198.18.2.2:80": 1}


def test_quorum_hysteresis_and_sorry_server() -> None:
    # weights 1, 2, 3; quorum 4 +- 1: lost below 3, regained at 5 or more.
    cfg = vs(
        quorum=4,
        hysteresis=1,
        sorry_server=SorryServerConfig(SORRY, 8080),
        real_servers=(
            RealServerConfig(R1, 80, weight=1),
            RealServerConfig(R2, 80, weight=2),
            RealServerConfig(R3, 80, weight=3),
        ),
    )

    def step(alive: set[IPv4Address], q: dict[ServiceKey, bool]) -> m.Plan:
        verdict = {DestKey(a, 80): a in alive for a in (R1, R2, R3)}
        return m.plan([cfg], {VIP: verdict}, q)

    p = step({R1, R2, R3}, {})
    assert p.quorum[VIP] and p.changes == ()
    p = step({R3}, p.quorum)  # weight 3 = quorum - hysteresis: still up
    assert p.quorum[VIP] and dests(p.table[VIP]) == {"198.18.2.3:80": 3}
    p = step({R2}, p.quorum)  # weight 2 < 3: lost, sorry server replaces live ones
    assert p.changes == (m.QuorumChange(VIP, False, 2),)
    assert dests(p.table[VIP]) == {"198.18.2.100:8080": 1}
    p = step({R1, R3}, p.quorum)  # weight 4 < 5: still down
    assert not p.quorum[VIP] and p.changes == ()
    p = step({R2, R3}, p.quorum)  # weight 5: regained, sorry server removed
    assert p.changes == (m.QuorumChange(VIP, True, 5),)
    assert dests(p.table[VIP]) == {"198.18.2.2:80": 2, "198.18.2.3:80": 3}


def test_sorry_server_inhibit_and_no_sorry_server() -> None:
    cfg = vs(sorry_server=SorryServerConfig(SORRY), sorry_server_inhibit=True)
    assert dests(m.plan([cfg], {}).table[VIP])["198.18.2.100:0"] == 0
    all_down = {VIP: {DestKey(R1, 80): False, DestKey(R2, 80): False}}
    p = m.plan([cfg], all_down)
    assert dests(p.table[VIP]) == {"198.18.2.100:0": 1}
    # Without a sorry server, losing quorum leaves the live servers in place.
    one_down = {VIP: {DestKey(R2, 80): False}}
    p = m.plan([vs(quorum=2)], one_down)
    assert p.changes == (m.QuorumChange(VIP, False, 1),)
    assert dests(p.table[VIP]) == {"198.18.2.1:80": 1}


# ---- diff / apply --------------------------------------------------------------------


def test_diff_orders_and_skips_dests_of_deleted_services() -> None:
    a_svc = Service(VIP, "rr")
    gone = Service(ServiceKey.inet("198.18.1.2", 80), "rr")
    cur = m.make_table(
        [
            (a_svc, [Destination(DestKey(R1, 80)), Destination(DestKey(R2, 80))]),
            (gone, [Destination(DestKey(R1, 80))]),
        ]
    )
    new_svc = Service(ServiceKey.mark(5), "wrr")
    want = m.make_table(
        [
            (
                Service(VIP, "wrr"),
                [Destination(DestKey(R1, 80), weight=4), Destination(DestKey(R3))],
            ),
            (new_svc, [Destination(DestKey(R3), forwarding=Forwarding.DR)]),
        ]
    )
    ops = m.diff(cur, want)
    assert ops == [
        m.DeleteDest(VIP, DestKey(R2, 80)),
        m.DeleteService(gone.key),
        m.AddService(new_svc),  # fwmark services sort first
        m.EditService(Service(VIP, "wrr")),
        m.AddDest(new_svc.key, Destination(DestKey(R3), forwarding=Forwarding.DR)),
        m.EditDest(VIP, Destination(DestKey(R1, 80), weight=4)),
        m.AddDest(VIP, Destination(DestKey(R3))),
    ]
    assert m.apply_ops(cur, ops) == want
    assert m.diff(want, want) == []


def test_apply_ops_rejects_what_the_kernel_rejects() -> None:
    t = m.make_table([(Service(VIP), [])])
    with pytest.raises(m.OpError):
        m.apply_ops(t, [m.AddService(Service(VIP))])
    with pytest.raises(m.OpError):
        m.apply_ops(t, [m.DeleteDest(VIP, DestKey(R1))])
    with pytest.raises(m.OpError):
        m.apply_ops({}, [m.AddDest(VIP, Destination(DestKey(R1)))])


def test_restrict_keeps_only_owned_entries() -> None:
    kernel = m.make_table(
        [
            (Service(VIP, "wlc"), [Destination(DestKey(R1, 80)), Destination(DestKey(SORRY))]),
            (Service(ServiceKey.inet("198.18.1.9", 80)), []),
        ]
    )
    owned = m.make_table([(Service(VIP, "rr"), [Destination(DestKey(R1, 80), weight=3)])])
    assert m.restrict(kernel, owned) == m.make_table(
        [(Service(VIP, "wlc"), [Destination(DestKey(R1, 80))])]
    )


addr4 = st.integers(0, 255).map(lambda i: IPv4Address(f"198.18.3.{i}"))
addr6 = st.integers(0, 255).map(lambda i: IPv6Address(f"2001:db8::{i:x}"))
svc_keys = st.one_of(
    st.builds(
        lambda a, p, pr: ServiceKey.inet(a, p, pr),
        addr4,
        st.integers(0, 3),
        st.sampled_from(Protocol),
    ),
    st.builds(lambda a, p: ServiceKey.inet(a, p), addr6, st.integers(0, 3)),
    st.builds(
        lambda f, fam: ServiceKey.mark(f, fam),
        st.integers(1, 4),
        st.sampled_from([AF_INET, AF_INET6]),
    ),
)
dest_recs = st.builds(
    lambda a, p, w, f, u: Destination(DestKey(a, p), w, f, u, 0),
    st.one_of(addr4, addr6),
    st.integers(0, 2),
    st.integers(0, 3),
    st.sampled_from(Forwarding),
    st.integers(0, 1),
)


@st.composite
def tables(draw: st.DrawFn) -> dict[ServiceKey, m.ServiceEntry]:
    out = {}
    for key in draw(st.lists(svc_keys, max_size=5, unique=True)):
        svc = Service(
            key,
            draw(st.sampled_from(["rr", "wrr", "sh"])),
            draw(st.sampled_from([0, m.SVC_F_PERSISTENT, m.SVC_F_ONEPACKET | m.SVC_F_SCHED2])),
            draw(st.integers(0, 2)),
        )
        ds = draw(st.lists(dest_recs, max_size=4, unique_by=lambda d: d.key))
        out[key] = m.ServiceEntry(svc, {d.key: d for d in ds})
    return out


@settings(max_examples=300, deadline=None)
@given(tables(), tables())
def test_applying_diff_yields_target(a: dict[ServiceKey, m.ServiceEntry], b: m.Table) -> None:
    ops = m.diff(a, b)
    assert m.apply_ops(a, ops) == b
    assert m.diff(b, b) == []
    # No operation is wasted: every op changes something in a fresh table.
    assert len(ops) <= len(a) + sum(len(e.dests) for e in a.values()) + len(b) + sum(
        len(e.dests) for e in b.values()
    )


# ---- codec (checked against pyroute2's decoder) -----------------------------------------


@given(tables())
@settings(max_examples=100, deadline=None)
def test_codec_round_trips_through_pyroute2(t: m.Table) -> None:
    for key, entry in t.items():
        for op in (m.AddService(entry.service), m.EditService(entry.service)):
            reply = next(genl.split(genl.encode_op(0x20, op, 7)))
            assert (reply.seq, reply.type) == (7, 0x20)
            assert genl.decode_service(reply) == entry.service
        for d in entry.dests.values():
            reply = next(genl.split(genl.encode_op(0x20, m.AddDest(key, d), 8)))
            assert genl.decode_dest(reply) == d
            assert genl.decode_service_key(reply) == key


# ---- the manager, against a fake kernel ------------------------------------------------


class FakeKernel:
    """An in-memory IPVS table with the kernel's EEXIST/ENOENT behaviour."""

    def __init__(self, table: m.Table) -> None:
        self.table = dict(table)
        self.log: list[m.Op] = []
        self.closed = False

    def dump(self) -> dict[ServiceKey, m.ServiceEntry]:
        return dict(self.table)

    def execute(self, ops: Sequence[m.Op]) -> list[OpFailure]:
        failures = []
        for op in ops:
            self.log.append(op)
            try:
                self.table = m.apply_ops(self.table, [op])
            except m.OpError:
                failures.append(OpFailure(op, errno.EEXIST))
        return failures

    def close(self) -> None:
        self.closed = True


def lvs_nat() -> dict[ServiceKey, m.ServiceEntry]:
    return m.make_table(
        [(Service(VIP, "rr"), [Destination(DestKey(R1, 80)), Destination(DestKey(R2, 80))])]
    )


async def test_manager_adopts_corrects_and_releases_only_its_own() -> None:
    foreign = ServiceKey.inet("198.18.1.9", 80)
    fake = FakeKernel(
        m.make_table(
            [
                (Service(VIP, "wlc"), [Destination(DestKey(R1, 80), 9, Forwarding.DR)]),
                (Service(foreign, "rr"), [Destination(DestKey(R3))]),
            ]
        )
    )
    mgr = IpvsTableManager(lambda: fake)
    assert await mgr.start(lvs_nat()) == []
    assert fake.table[VIP] == lvs_nat()[VIP]
    assert fake.log == [
        m.EditService(Service(VIP, "rr")),
        m.EditDest(VIP, Destination(DestKey(R1, 80))),
        m.AddDest(VIP, Destination(DestKey(R2, 80))),
    ]
    # A destination someone else adds to our service is left alone by updates.
    fake.table = m.apply_ops(fake.table, [m.AddDest(VIP, Destination(DestKey(SORRY)))])
    fake.log.clear()
    smaller = m.make_table([(Service(VIP, "rr"), [Destination(DestKey(R2, 80))])])
    assert await mgr.update(smaller) == []
    assert fake.log == [m.DeleteDest(VIP, DestKey(R1, 80))]
    assert set(fake.table[VIP].dests) == {DestKey(R2, 80), DestKey(SORRY)}
    await mgr.stop()
    assert list(fake.table) == [foreign] and fake.closed


async def test_manager_resyncs_when_entries_change_behind_its_back() -> None:
    fake = FakeKernel({})
    mgr = IpvsTableManager(lambda: fake, release_on_stop=False)
    await mgr.start(lvs_nat())
    fake.table = {}  # e.g. ipvsadm -C
    assert await mgr.update(m.make_table([(Service(VIP, "wrr"), [])])) == []
    assert fake.table == m.make_table([(Service(VIP, "wrr"), [])])
    await mgr.stop()
    assert fake.table == m.make_table([(Service(VIP, "wrr"), [])])


async def test_manager_run_releases_on_cancel() -> None:
    fake = FakeKernel({})
    mgr = IpvsTableManager(lambda: fake)
    async with trio.open_nursery() as nursery:
        await nursery.start(mgr.run, lvs_nat())
        assert fake.table == lvs_nat()
        nursery.cancel_scope.cancel()
    assert fake.table == {} and fake.closed


def _host_has_ipvs() -> bool:
    try:
        NetlinkIpvs(load_module=False).close()
    except IpvsUnavailable:
        return False
    return True


@pytest.mark.skipif(_host_has_ipvs(), reason="this kernel has IPVS")
async def test_missing_ipvs_is_one_clear_error_and_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(IpvsUnavailable, match="generic netlink family 'IPVS' not found"):
        NetlinkIpvs()
    mgr = IpvsTableManager()
    with caplog.at_level(logging.ERROR, logger="pyalived.ipvs.netlink"):
        assert await mgr.start(lvs_nat()) == []
        assert await mgr.update(lvs_nat()) == []
        assert await mgr.read_table() == {}
        assert await mgr.stop() == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "IPVS" in errors[0].getMessage()
    assert mgr.unavailable is not None


def test_apply_except_keeps_what_the_kernel_refused_out_of_the_table() -> None:
    svc = Service(ServiceKey.inet(IPv4Address("198.18.0.1"), 80, Protocol.TCP))
    a = Destination(DestKey(IPv4Address("198.18.0.2"), 80))
    b = Destination(DestKey(IPv4Address("198.18.0.3"), 80))
    ops: list[m.Op] = [m.AddService(svc), m.AddDest(svc.key, a), m.AddDest(svc.key, b)]
    refused = [ops[2]]
    assert m.apply_except({}, ops, refused) == {svc.key: m.ServiceEntry(svc, {a.key: a})}
    # an equal operation is not the refused one: only identity counts
    assert m.apply_except({}, ops, [m.AddDest(svc.key, b)]) == m.apply_ops({}, ops)


def test_union_has_both_tables_and_the_second_wins() -> None:
    key = ServiceKey.inet(IPv4Address("198.18.0.1"), 80, Protocol.TCP)
    a = DestKey(IPv4Address("198.18.0.2"), 80)
    b = DestKey(IPv4Address("198.18.0.3"), 80)
    left = {key: m.ServiceEntry(Service(key), {a: Destination(a, 1)})}
    right = {key: m.ServiceEntry(Service(key), {a: Destination(a, 5), b: Destination(b, 2)})}
    assert m.union(left, right)[key].dests == {a: Destination(a, 5), b: Destination(b, 2)}
    assert m.union(left, {}) == left
