"""The table model's incremental paths: a diff of named services, a cheap apply.

``diff(current, desired, keys)`` must be exactly the part of the whole diff
that concerns ``keys``; ``apply_ops`` must leave its input alone, share the
entries it did not touch and (``lenient``) skip what does not fit; the
manager's ``update(desired, changed)`` compares only the services named.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyalived.ipvs import model as m
from pyalived.ipvs.model import Destination, DestKey, Service, ServiceKey
from pyalived.ipvs.netlink import IpvsTableManager

from .test_ipvs_model import R1, R2, R3, VIP, FakeKernel, lvs_nat, svc_keys, tables


def service_of(op: m.Op) -> ServiceKey:
    if isinstance(op, m.AddService | m.EditService):
        return op.service.key
    if isinstance(op, m.DeleteService):
        return op.key
    return op.service


@settings(max_examples=200, deadline=None)
@given(tables(), tables(), st.lists(svc_keys, max_size=4))
def test_diff_of_named_services_is_that_part_of_the_whole_diff(
    a: m.Table, b: m.Table, named: list[ServiceKey]
) -> None:
    keys = set(named) | set(list(a)[:2]) | set(list(b)[1:3])
    whole = m.diff(a, b)
    assert m.diff(a, b, keys) == [op for op in whole if service_of(op) in keys]
    assert m.diff(a, b, set(a) | set(b)) == whole


@settings(max_examples=200, deadline=None)
@given(tables(), tables())
def test_apply_shares_what_it_does_not_touch(a: m.Table, b: m.Table) -> None:
    before = {k: (e, dict(e.dests)) for k, e in a.items()}
    ops = m.diff(a, b)
    out = m.apply_ops(a, ops)
    assert out == b
    assert {k: (e, dict(e.dests)) for k, e in a.items()} == before  # input unchanged
    touched = {service_of(op) for op in ops}
    for key, entry in out.items():
        if key not in touched:
            assert entry is a[key]


def test_lenient_apply_skips_what_does_not_fit() -> None:
    table = lvs_nat()
    ops: list[m.Op] = [
        m.AddDest(VIP, Destination(DestKey(R1, 80), 5)),  # exists: skipped
        m.EditDest(VIP, Destination(DestKey(R3, 80), 5)),  # missing: skipped
        m.EditDest(VIP, Destination(DestKey(R2, 80), 7)),
        m.DeleteService(ServiceKey.inet("198.18.1.9", 80)),  # missing: skipped
    ]
    out = m.apply_ops(table, ops, lenient=True)
    assert {k: d.weight for k, d in out[VIP].dests.items()} == {
        DestKey(R1, 80): 1, DestKey(R2, 80): 7}
    try:
        m.apply_ops(table, ops)
    except m.OpError:
        pass
    else:
        raise AssertionError("a strict apply must refuse what does not fit")


async def test_manager_compares_only_the_services_named() -> None:
    other = ServiceKey.inet("198.18.1.2", 80)
    desired = {**lvs_nat(), **m.make_table([(Service(other, "rr"), [])])}
    fake = FakeKernel({})
    mgr = IpvsTableManager(lambda: fake)
    await mgr.start(desired)
    fake.log.clear()
    moved = {**desired, VIP: m.ServiceEntry(Service(VIP, "wrr"), desired[VIP].dests),
             other: m.ServiceEntry(Service(other, "wrr"))}
    assert await mgr.update(moved, [other]) == []
    assert fake.log == [m.EditService(Service(other, "wrr"))]  # VIP not compared
    assert await mgr.update(moved, []) == []
    assert await mgr.update(moved) == []  # a whole comparison finds VIP
    assert fake.log[1:] == [m.EditService(Service(VIP, "wrr"))]
    await mgr.stop()
