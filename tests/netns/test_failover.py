"""Election and failover between real VRRP routers on a namespace LAN.

Each test builds a bridge with two or three router namespaces, runs one
daemon per router (pyalived; keepalived with PYALIVED_TEST_IMPL=keepalived)
and judges the outcome from two places only: the addresses configured in
each namespace (the virtual IP must be on exactly one router) and the
adverts and gratuitous ARPs captured on the bridge.  Waits are generous
polls, never timing budgets; the only timings asserted are protocol
intervals read from the capture's kernel timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from pyalived.lab import (
    VIP,
    Capture,
    Impl,
    Lab,
    Node,
    VrrpSpec,
    adverts,
    garps,
    render_config,
    wait_for,
)

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0  # generous upper bound for any election to finish


def start_group(lab: Lab, impl: Impl, priorities: Sequence[int], **spec: Any) -> None:
    for node, prio in zip(lab.routers, priorities, strict=True):
        config = render_config(node.name, [VrrpSpec(priority=prio, **spec)])
        lab.start_daemon(node, config, impl)


def first_advert_from(cap: Capture, node: Node, after: float = 0.0,
                      timeout: float = SETTLE) -> float:
    return cap.wait_for(
        lambda ev: [e.time for e in adverts(ev, src=node.ip, after=after) if e.priority],
        timeout, what=f"an advert from {node}")[0]


def only_advertiser(cap: Capture, after: float) -> set[str]:
    return {e.src for e in adverts(cap.events(), after=after) if e.priority}


def quiet_period(seconds: float) -> float:
    """Let the LAN run for a while; return the capture time where the window began."""
    start = time.time()
    time.sleep(seconds)
    return start


@pytest.mark.parametrize("priorities, winner", [((100, 90), 0), ((90, 110, 80), 1)])
def test_election_by_priority(make_lab: MakeLab, impl: Impl,
                              priorities: tuple[int, ...], winner: int) -> None:
    lab = make_lab(routers=len(priorities))
    cap = lab.capture()
    start_group(lab, impl, priorities)
    master = lab.routers[winner]
    lab.wait_sole_holder(master, timeout=SETTLE)
    since = quiet_period(2.5)
    assert only_advertiser(cap, since) == {master.ip}
    assert {e.priority for e in adverts(cap.events(), src=master.ip, after=since)} == {
        priorities[winner]}
    assert lab.holders() == [master]


def test_priority_tie_goes_to_higher_primary_address(make_lab: MakeLab, impl: Impl) -> None:
    """RFC 3768 §6.4.3: a master hearing an equal priority from a higher address yields."""
    lab = make_lab(routers=2)
    _r1, r2 = lab.routers
    cap = lab.capture()
    lab.block_vrrp()  # both routers elect themselves first, in isolation
    start_group(lab, impl, (100, 100))
    wait_for(lambda: len(lab.holders()) == 2, SETTLE, what="two isolated masters")
    lab.block_vrrp(False)
    lab.wait_sole_holder(r2, timeout=SETTLE)
    since = quiet_period(2.5)
    assert only_advertiser(cap, since) == {r2.ip}


@pytest.mark.parametrize("routers", [2, 3])
def test_failover_when_master_is_cut_off_and_preempt_back(make_lab: MakeLab, impl: Impl,
                                                          routers: int) -> None:
    lab = make_lab(routers=routers)
    r1, r2 = lab.routers[:2]
    cap = lab.capture()
    start_group(lab, impl, (100, 90, 80)[:routers])
    lab.wait_sole_holder(r1, timeout=SETTLE)

    lab.cut(r1)
    cut_at = time.time()
    lab.wait_sole_holder(r2, timeout=SETTLE)  # the 90 router, never the 80 one
    took_over = first_advert_from(cap, r2, after=cut_at)
    last_r1 = adverts(cap.events(), src=r1.ip)[-1].time
    # RFC 3768 §6.4.2: the backup waited a whole Master_Down_Interval (3 * 1 s + skew).
    assert took_over - last_r1 > 3.0
    assert garps(cap.events(), ip=VIP, after=took_over - 0.001)  # §6.4.1 announcement

    lab.reconnect(r1)
    back_at = time.time()
    lab.wait_sole_holder(r1, timeout=SETTLE)  # preemption by the higher priority
    first_advert_from(cap, r1, after=back_at)
    since = quiet_period(2.5)
    assert only_advertiser(cap, since) == {r1.ip}


def test_graceful_stop_sends_priority_zero(make_lab: MakeLab, impl: Impl) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    cap = lab.capture()
    start_group(lab, impl, (100, 90))
    lab.wait_sole_holder(r1, timeout=SETTLE)

    lab.stop_daemon(r1)
    zero = cap.wait_for(
        lambda ev: [e for e in adverts(ev, src=r1.ip) if e.priority == 0], SETTLE,
        what="a priority-0 advert")[0]
    took_over = first_advert_from(cap, r2, after=zero.time)
    # RFC 3768 §6.4.2: on priority 0 the backup waits Skew_Time, not Master_Down_Interval.
    assert took_over - zero.time < 2.0
    lab.wait_sole_holder(r2, timeout=SETTLE)

    # The higher priority router returns and preempts (§6.4.2, Preempt_Mode true).
    lab.start_daemon(r1, render_config("r1", [VrrpSpec(priority=100)]), impl)
    lab.wait_sole_holder(r1, timeout=SETTLE)


def test_sigkill_master(make_lab: MakeLab, impl: Impl) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    cap = lab.capture()
    start_group(lab, impl, (100, 90))
    lab.wait_sole_holder(r1, timeout=SETTLE)

    lab.crash(r1)
    crashed_at = time.time()
    wait_for(lambda: VIP in lab.addresses(r2), SETTLE, what="VIP on r2")
    took_over = first_advert_from(cap, r2, after=crashed_at)
    # Nothing said goodbye: no priority-0 advert, the backup timed the master out.
    assert not [e for e in adverts(cap.events(), src=r1.ip) if e.priority == 0]
    assert took_over - adverts(cap.events(), src=r1.ip)[-1].time > 3.0
    since = quiet_period(2.5)
    assert only_advertiser(cap, since) == {r2.ip}


def test_nopreempt_keeps_current_master(make_lab: MakeLab, impl: Impl) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    cap = lab.capture()
    lab.start_daemon(r2, render_config("r2", [VrrpSpec(priority=90, nopreempt=True)]), impl)
    lab.wait_sole_holder(r2, timeout=SETTLE)
    lab.start_daemon(r1, render_config("r1", [VrrpSpec(priority=100, nopreempt=True)]), impl)
    # Longer than a Master_Down_Interval: r1 would have preempted by now if it were going to.
    since = quiet_period(6.0)
    assert only_advertiser(cap, since) == {r2.ip}
    assert lab.holders() == [r2]
    # r1 is a working backup all the same: it takes over when r2 leaves.
    lab.stop_daemon(r2)
    lab.wait_sole_holder(r1, timeout=SETTLE)


def test_fault_when_tracked_interface_goes_down(make_lab: MakeLab, impl: Impl) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    for node in lab.routers:
        lab.add_dummy(node, "trk0")
    cap = lab.capture()
    start_group(lab, impl, (100, 90), track_interfaces=("trk0",))
    lab.wait_sole_holder(r1, timeout=SETTLE)

    lab.set_link(r1, "trk0", up=False)
    down_at = time.time()
    lab.wait_sole_holder(r2, timeout=SETTLE)  # VIP gone from r1, present on r2
    first_advert_from(cap, r2, after=down_at)
    since = quiet_period(2.5)
    assert only_advertiser(cap, since) == {r2.ip}  # a FAULT router stays silent
    assert VIP not in lab.addresses(r1)

    lab.set_link(r1, "trk0", up=True)
    lab.wait_sole_holder(r1, timeout=SETTLE)
