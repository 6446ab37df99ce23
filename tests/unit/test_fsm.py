"""The pure VRRP state machine: every state x event, exact timer values, GARP schedule.

Times are plain floats; Master_Down_Interval values are exact binary
fractions (e.g. priority 90: 3 + 166/256 = 3.6484375), so equality is exact.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyalived.vrrp.fsm import (
    Action,
    AddVips,
    GarpKind,
    MachineConfig,
    RemoveVips,
    SendAdvert,
    SendGarp,
    State,
    StateChanged,
    VrrpMachine,
    master_down_interval,
    skew_time,
    start_cleanup,
)

OURS = IPv4Address("198.18.0.11")
HIGHER_IP = IPv4Address("198.18.0.12")
LOWER_IP = IPv4Address("198.18.0.10")
MD_100 = 3 + 156 / 256  # 3.609375
MD_90 = 3 + 166 / 256  # 3.6484375

BECOME_MASTER = [SendAdvert(100), AddVips(), SendGarp(GarpKind.MASTER)]


def machine(**changes: Any) -> VrrpMachine:
    fields: dict[str, Any] = {
        "name": "VI_1",
        "vrid": 51,
        "priority": 100,
        "advert_int": 1.0,
        "primary_ip": OURS,
    }
    fields.update(changes)
    return VrrpMachine(MachineConfig(**fields))


def backup(**changes: Any) -> VrrpMachine:
    m = machine(**changes)
    m.start(0.0)
    assert m.state is State.BACKUP
    return m


def master(**changes: Any) -> VrrpMachine:
    """A machine that became MASTER at its Master_Down expiry after starting at 0."""
    m = backup(**changes)
    t = m.get_timer()
    assert t is not None
    m.timer_expired(t)
    assert m.state is State.MASTER
    return m


def faulted(**changes: Any) -> VrrpMachine:
    m = backup(**changes)
    m.set_fault(1.0, True, "interface eth0 down")
    assert m.state is State.FAULT
    return m


def run_timers(m: VrrpMachine, until: float) -> list[tuple[float, Action]]:
    """Step through the machine's timers up to ``until``, collecting the actions."""
    seen: list[tuple[float, Action]] = []
    while (t := m.get_timer()) is not None and t <= until:
        seen += [(t, a) for a in m.timer_expired(t)]
    return seen


def changes(actions: list[Action]) -> list[tuple[State, State]]:
    return [(a.old, a.new) for a in actions if isinstance(a, StateChanged)]


# ---- formulas (RFC 3768 §6.1) ----------------------------------------------------


def test_master_down_interval_and_skew() -> None:
    assert skew_time(90) == 166 / 256
    assert master_down_interval(1.0, 90) == 3.6484375
    assert master_down_interval(2.0, 255) == 6 + 1 / 256


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        machine(priority=0)
    with pytest.raises(ValueError):
        machine(advert_int=0)


# ---- INIT --------------------------------------------------------------------------


def test_start_enters_backup_with_master_down_timer() -> None:
    m = machine()
    assert m.state is State.INIT
    assert m.get_timer() is None
    assert m.start(10.0) == [StateChanged(State.INIT, State.BACKUP, "startup")]
    assert m.get_timer() == 10.0 + MD_100


def test_priority_90_backup_becomes_master_at_exactly_3_6484375() -> None:
    m = machine(priority=90)
    m.start(0.0)
    assert m.get_timer() == 3.6484375
    assert m.timer_expired(3.6484374) == []
    assert m.state is State.BACKUP
    actions = m.timer_expired(3.6484375)
    assert actions == [
        SendAdvert(90),
        AddVips(),
        SendGarp(GarpKind.MASTER),
        StateChanged(State.BACKUP, State.MASTER, "master down timer expired"),
    ]
    assert m.get_timer() == 4.6484375  # Adver_Timer = Advertisement_Interval


def test_state_master_below_255_starts_like_backup() -> None:
    # keepalived 2.2.7: `state MASTER` priority 100 logs BACKUP and waits 3.609 s.
    m = machine(initial_state=State.MASTER)
    assert m.start(0.0) == [StateChanged(State.INIT, State.BACKUP, "startup")]
    assert m.get_timer() == MD_100


def test_owner_with_state_master_becomes_master_at_once() -> None:
    m = machine(priority=255, initial_state=State.MASTER)
    actions = m.start(5.0)
    assert actions[:3] == [SendAdvert(255), AddVips(), SendGarp(GarpKind.MASTER)]
    assert changes(actions) == [(State.INIT, State.MASTER)]
    assert m.get_timer() == 6.0


def test_owner_with_state_backup_waits_for_master_down() -> None:
    m = machine(priority=255, initial_state=State.BACKUP)
    m.start(0.0)
    assert m.state is State.BACKUP
    assert m.get_timer() == 3 + 1 / 256


def test_events_before_start_do_nothing() -> None:
    m = machine()
    assert m.advert_received(0.0, HIGHER_IP, 200) == []
    assert m.timer_expired(100.0) == []
    assert m.force_state(0.0, State.MASTER, "sync") == []
    assert m.set_priority(0.0, 80, "script down") == []
    assert m.set_fault(0.0, True, "eth0 down") == []
    assert m.state is State.INIT
    assert m.effective_priority == 80
    # A fault known before startup: start goes straight to FAULT.
    assert changes(m.start(1.0)) == [(State.INIT, State.FAULT)]
    assert m.get_timer() is None


def test_start_twice_and_start_after_shutdown_do_nothing() -> None:
    m = machine()
    m.start(0.0)
    assert m.start(1.0) == []
    assert m.get_timer() == MD_100
    m2 = machine()
    assert m2.shutdown(0.0) == []
    assert m2.start(1.0) == []
    assert m2.state is State.INIT


# ---- BACKUP (RFC 3768 §6.4.2) --------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "priority"),
    [(HIGHER_IP, 150), (HIGHER_IP, 100), (LOWER_IP, 100)],
    ids=["higher", "equal-higher-ip", "equal-lower-ip"],
)
def test_backup_higher_or_equal_advert_restarts_master_down(
    src: IPv4Address, priority: int
) -> None:
    m = backup()
    assert m.advert_received(2.0, src, priority) == []
    assert m.state is State.BACKUP
    assert m.get_timer() == 2.0 + MD_100


def test_backup_lower_advert_is_discarded_and_we_preempt_at_master_down() -> None:
    m = backup(priority=120)
    md = 3 + 136 / 256
    m.advert_received(1.0, LOWER_IP, 110)
    m.advert_received(2.0, LOWER_IP, 110)
    assert m.get_timer() == md  # still the startup deadline
    actions = m.timer_expired(md)
    assert actions[-1] == StateChanged(
        State.BACKUP, State.MASTER, "preempting lower priority master 198.18.0.10 (prio 110 < 120)"
    )


def test_backup_nopreempt_lower_advert_restarts_master_down() -> None:
    m = backup(priority=120, preempt=False)
    for t in range(1, 20):
        m.advert_received(float(t), LOWER_IP, 110)
        assert m.timer_expired(float(t)) == []
    assert m.state is State.BACKUP
    assert m.get_timer() == 19 + 3 + 136 / 256


def test_backup_priority_zero_sets_skew_time() -> None:
    m = backup(priority=90)
    m.advert_received(1.0, HIGHER_IP, 100)
    assert m.advert_received(2.0, HIGHER_IP, 0) == []
    assert m.get_timer() == 2.0 + 166 / 256  # §6.4.2: Master_Down_Timer = Skew_Time
    actions = m.timer_expired(2.0 + 166 / 256)
    assert actions[-1] == StateChanged(
        State.BACKUP, State.MASTER, "priority 0 advert from 198.18.0.12"
    )


def test_backup_timer_is_restarted_by_later_adverts_after_priority_zero() -> None:
    m = backup()
    m.advert_received(2.0, HIGHER_IP, 0)
    m.advert_received(2.1, HIGHER_IP, 150)
    assert m.get_timer() == 2.1 + MD_100


def test_backup_fault_and_recovery() -> None:
    m = backup()
    assert m.set_fault(1.0, True, "interface eth0 down") == [
        StateChanged(State.BACKUP, State.FAULT, "interface eth0 down")
    ]
    assert m.get_timer() is None
    assert m.faulty
    assert m.set_fault(5.0, False, "interface eth0 up") == [
        StateChanged(State.FAULT, State.BACKUP, "interface eth0 up")
    ]
    assert m.get_timer() == 5.0 + MD_100


def test_backup_priority_change_changes_skew_and_preemption() -> None:
    m = backup(priority=100)
    assert m.set_priority(1.0, 120, "script up") == []
    assert m.effective_priority == 120
    assert m.get_timer() == MD_100  # the running timer is kept
    m.advert_received(2.0, HIGHER_IP, 110)  # now lower than us: discarded
    assert m.get_timer() == MD_100
    assert changes(m.timer_expired(MD_100)) == [(State.BACKUP, State.MASTER)]
    assert m.timer_expired(MD_100 + 1) == [SendAdvert(120)]


def test_backup_priority_drop_uses_new_skew_on_next_advert() -> None:
    m = backup(priority=100)
    m.set_priority(1.0, 90, "script down")
    m.advert_received(2.0, HIGHER_IP, 95)
    assert m.get_timer() == 2.0 + MD_90


def test_priority_is_clamped_to_1_254() -> None:
    m = backup()
    m.set_priority(0.0, 300, "weights")
    assert m.effective_priority == 254
    m.set_priority(0.0, -20, "weights")
    assert m.effective_priority == 1


def test_backup_force_state() -> None:
    m = backup()
    assert m.force_state(1.0, State.BACKUP, "sync") == []
    actions = m.force_state(1.0, State.MASTER, "sync group G: VI_2 is MASTER")
    assert actions == [*BECOME_MASTER, StateChanged(State.BACKUP, State.MASTER, actions[-1].reason)]  # type: ignore[union-attr]
    m2 = backup()
    assert m2.force_state(1.0, State.FAULT, "sync") == [
        StateChanged(State.BACKUP, State.FAULT, "sync")
    ]
    assert m2.force_state(1.0, State.INIT, "sync") == []


def test_backup_shutdown() -> None:
    m = backup()
    assert m.shutdown(1.0) == [StateChanged(State.BACKUP, State.INIT, "shutdown")]
    assert m.get_timer() is None
    assert m.advert_received(2.0, HIGHER_IP, 0) == []
    assert m.timer_expired(10.0) == []
    assert m.shutdown(2.0) == []


# ---- MASTER (RFC 3768 §6.4.3) --------------------------------------------------------


def test_master_sends_advert_every_interval() -> None:
    m = master()
    t0 = MD_100
    for k in range(1, 4):
        assert m.get_timer() == t0 + k
        assert m.timer_expired(t0 + k) == [SendAdvert(100)]


@pytest.mark.parametrize(
    ("src", "priority", "reason"),
    [
        (HIGHER_IP, 150, "higher priority advert from 198.18.0.12 (prio 150)"),
        (HIGHER_IP, 100, "equal priority advert from higher address 198.18.0.12 (prio 100)"),
    ],
    ids=["higher", "equal-higher-ip"],
)
def test_master_yields_to_higher_priority_or_higher_address(
    src: IPv4Address, priority: int, reason: str
) -> None:
    m = master()
    assert m.advert_received(5.0, src, priority) == [
        RemoveVips(),
        StateChanged(State.MASTER, State.BACKUP, reason),
    ]
    assert m.get_timer() == 5.0 + MD_100


def test_tie_break_compares_addresses_as_unsigned_integers() -> None:
    # As strings "198.18.0.200" > "198.18.1.1"; as 32-bit numbers it is lower.
    m = master(primary_ip=IPv4Address("198.18.0.200"))
    assert changes(m.advert_received(5.0, IPv4Address("198.18.1.1"), 100)) == [
        (State.MASTER, State.BACKUP)
    ]
    m2 = master(primary_ip=IPv4Address("198.18.1.1"))
    assert m2.advert_received(5.0, IPv4Address("198.18.0.200"), 100) == [
        SendAdvert(100),
        SendGarp(GarpKind.LOWER_PRIO),
    ]


@pytest.mark.parametrize(
    ("src", "priority"), [(HIGHER_IP, 50), (LOWER_IP, 100)], ids=["lower", "equal-lower-ip"]
)
def test_master_answers_a_lower_master_at_once(src: IPv4Address, priority: int) -> None:
    m = master()
    assert m.advert_received(5.5, src, priority) == [
        SendAdvert(100),
        SendGarp(GarpKind.LOWER_PRIO),
    ]
    assert m.state is State.MASTER
    # The Adver_Timer restarts, the second lower-prio burst follows garp_master_delay.
    assert run_timers(m, 10.5) == [
        (6.5, SendAdvert(100)),
        (7.5, SendAdvert(100)),
        (8.5, SendAdvert(100)),
        (MD_100 + 5, SendGarp(GarpKind.MASTER)),  # from becoming MASTER
        (9.5, SendAdvert(100)),
        (10.5, SendAdvert(100)),
        (10.5, SendGarp(GarpKind.LOWER_PRIO)),
    ]


def test_garp_lower_prio_delay_is_configurable() -> None:
    m = master(garp_lower_prio_delay=2.0, garp_master_delay=0.0)
    m.advert_received(5.5, LOWER_IP, 50)
    assert m.get_timer() == 6.5
    m.timer_expired(6.5)
    assert m.timer_expired(7.5) == [SendAdvert(100), SendGarp(GarpKind.LOWER_PRIO)]
    m2 = master(garp_lower_prio_delay=0.0, garp_master_delay=0.0)
    m2.advert_received(5.5, LOWER_IP, 50)
    for t in (6.5, 7.5, 8.5, 9.5, 10.5):
        assert m2.timer_expired(t) == [SendAdvert(100)]


def test_master_priority_zero_advert_is_answered_at_once() -> None:
    m = master()
    assert m.advert_received(5.25, HIGHER_IP, 0) == [SendAdvert(100)]
    assert m.get_timer() == 6.25  # §6.4.3: Adver_Timer reset


def test_master_fault_sends_priority_zero_and_drops_vips() -> None:
    m = master()
    assert m.set_fault(5.0, True, "interface eth0 down") == [
        SendAdvert(0),
        RemoveVips(),
        StateChanged(State.MASTER, State.FAULT, "interface eth0 down"),
    ]
    assert m.get_timer() is None


def test_master_priority_change_is_advertised() -> None:
    m = master()
    assert m.set_priority(4.0, 70, "chk_nginx failed") == []
    assert m.state is State.MASTER
    assert m.timer_expired(MD_100 + 1) == [SendAdvert(70)]
    # A backup at 80 now wins the election.
    assert changes(m.advert_received(5.0, HIGHER_IP, 80)) == [(State.MASTER, State.BACKUP)]
    assert m.get_timer() == 5.0 + 3 + 186 / 256


def test_master_force_state() -> None:
    m = master()
    assert m.force_state(5.0, State.MASTER, "sync") == []
    assert m.force_state(5.0, State.BACKUP, "sync group G: VI_2 is BACKUP") == [
        RemoveVips(),
        StateChanged(State.MASTER, State.BACKUP, "sync group G: VI_2 is BACKUP"),
    ]
    assert m.get_timer() == 5.0 + MD_100
    m2 = master()
    assert m2.force_state(5.0, State.FAULT, "sync") == [
        SendAdvert(0),
        RemoveVips(),
        StateChanged(State.MASTER, State.FAULT, "sync"),
    ]


def test_master_shutdown() -> None:
    m = master()
    assert m.shutdown(7.0) == [
        SendAdvert(0),
        RemoveVips(),
        StateChanged(State.MASTER, State.INIT, "shutdown"),
    ]
    assert m.state is State.INIT
    assert m.get_timer() is None
    assert m.timer_expired(100.0) == []
    assert m.advert_received(8.0, HIGHER_IP, 100) == []
    assert m.set_fault(8.0, True, "x") == []
    assert m.force_state(8.0, State.MASTER, "x") == []


# ---- FAULT ---------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [0, 50, 100, 200])
def test_fault_ignores_adverts(priority: int) -> None:
    m = faulted()
    assert m.advert_received(2.0, HIGHER_IP, priority) == []
    assert m.get_timer() is None
    assert m.timer_expired(50.0) == []
    assert m.state is State.FAULT


def test_fault_repeated_verdicts_do_nothing() -> None:
    m = faulted()
    assert m.set_fault(2.0, True, "again") == []
    m2 = backup()
    assert m2.set_fault(2.0, False, "not faulty anyway") == []


def test_fault_clear_uses_the_current_priority() -> None:
    m = faulted()
    m.set_priority(2.0, 90, "weights")
    assert changes(m.set_fault(3.0, False, "interface eth0 up")) == [(State.FAULT, State.BACKUP)]
    assert m.get_timer() == 3.0 + MD_90


def test_fault_force_state() -> None:
    m = faulted()  # our own fault: the group cannot take us out of it
    assert m.force_state(2.0, State.BACKUP, "sync") == []
    assert m.force_state(2.0, State.MASTER, "sync") == []
    assert m.force_state(2.0, State.FAULT, "sync") == []
    m2 = backup()
    m2.force_state(1.0, State.FAULT, "sync group G: VI_2 is FAULT")
    assert not m2.faulty
    assert m2.force_state(2.0, State.BACKUP, "sync group G: VI_2 is BACKUP") == [
        StateChanged(State.FAULT, State.BACKUP, "sync group G: VI_2 is BACKUP")
    ]
    assert m2.get_timer() == 2.0 + MD_100
    m3 = backup()
    m3.force_state(1.0, State.FAULT, "sync")
    assert m3.force_state(2.0, State.MASTER, "sync")[:3] == BECOME_MASTER


def test_fault_shutdown() -> None:
    m = faulted()
    assert m.shutdown(3.0) == [StateChanged(State.FAULT, State.INIT, "shutdown")]


def test_owner_leaving_fault_waits_for_master_down() -> None:
    # keepalived 2.2.7: an owner whose track_script recovers logs BACKUP first.
    m = machine(priority=255, initial_state=State.MASTER)
    m.start(0.0)
    m.set_fault(1.0, True, "chk failed")
    assert changes(m.set_fault(2.0, False, "chk ok")) == [(State.FAULT, State.BACKUP)]
    assert m.get_timer() == 2.0 + 3 + 1 / 256


# ---- owner -------------------------------------------------------------------------------


def test_owner_keeps_255_whatever_the_weights() -> None:
    m = machine(priority=255, initial_state=State.MASTER)
    m.start(0.0)
    assert m.set_priority(1.0, 200, "chk failed") == []
    assert m.effective_priority == 255
    assert m.timer_expired(1.0) == [SendAdvert(255)]


# ---- preempt / nopreempt / preempt_delay -----------------------------------------------


def lower_master_adverts(m: VrrpMachine, times: list[float], priority: int = 110) -> State:
    """Feed a lower-priority master's adverts, running due timers in between."""
    for t in times:
        timer = m.get_timer()
        while timer is not None and timer <= t and m.state is State.BACKUP:
            m.timer_expired(timer)
            timer = m.get_timer()
        m.advert_received(t, LOWER_IP, priority)
    return m.state


def test_preempt_delay_counts_from_the_first_lower_advert() -> None:
    # The keepalived observation: priority 120 with preempt_delay 2 joins a
    # priority-110 master whose adverts arrive at 0.1, 1.1, 2.1, ...; the
    # advert at 1.1 still restarts Master_Down, the one at 2.1 (delay over)
    # is discarded, so we take over at 1.1 + 3 + 136/256.
    m = backup(priority=120, preempt_delay=2.0)
    md = 3 + 136 / 256
    lower_master_adverts(m, [0.1, 1.1, 2.1, 3.1, 4.1])
    assert m.state is State.BACKUP
    assert m.get_timer() == 1.1 + md
    assert changes(m.timer_expired(1.1 + md)) == [(State.BACKUP, State.MASTER)]


def test_preempt_delay_without_a_master_does_not_delay() -> None:
    m = backup(priority=120, preempt_delay=2.0)
    assert m.get_timer() == 3 + 136 / 256


def test_higher_advert_cancels_preempt_delay() -> None:
    m = backup(priority=120, preempt_delay=2.0)
    m.advert_received(0.5, LOWER_IP, 110)  # delay runs until 2.5
    m.advert_received(1.0, HIGHER_IP, 200)  # cancelled
    m.advert_received(2.6, LOWER_IP, 110)  # restarts the delay: until 4.6
    m.advert_received(3.6, LOWER_IP, 110)
    assert m.get_timer() == 3.6 + 3 + 136 / 256


def test_nopreempt_lower_priority_master_stays() -> None:
    m = backup(priority=120, preempt=False)
    assert lower_master_adverts(m, [0.5 + k for k in range(30)]) is State.BACKUP


def test_state_master_clears_nopreempt_and_preempt_delay() -> None:
    # keepalived: "nopreempt/preempt delay will not work with initial state MASTER - clearing".
    m = backup(priority=120, preempt=False, initial_state=State.MASTER)
    m.advert_received(1.0, LOWER_IP, 110)
    assert m.get_timer() == 3 + 136 / 256
    m2 = backup(priority=120, preempt_delay=10.0, initial_state=State.MASTER)
    m2.advert_received(1.0, LOWER_IP, 110)
    assert m2.get_timer() == 3 + 136 / 256


def test_preempt_delay_restarts_after_leaving_backup() -> None:
    m = backup(priority=120, preempt_delay=2.0)
    m.advert_received(0.5, LOWER_IP, 110)  # delay until 2.5
    m.set_fault(1.0, True, "eth0 down")
    m.set_fault(10.0, False, "eth0 up")
    m.advert_received(10.5, LOWER_IP, 110)  # a new delay, until 12.5
    m.advert_received(11.5, LOWER_IP, 110)
    assert m.get_timer() == 11.5 + 3 + 136 / 256


# ---- GARP schedule -------------------------------------------------------------------------


def test_garp_schedule_after_becoming_master() -> None:
    m = master(garp_master_delay=5.0, garp_master_refresh=60.0)
    t0 = MD_100
    seen: list[tuple[float, Action]] = []
    while (t := m.get_timer()) is not None and t <= t0 + 130:
        seen += [(t - t0, a) for a in m.timer_expired(t) if isinstance(a, SendGarp)]
    assert seen == [
        (5.0, SendGarp(GarpKind.MASTER)),
        (60.0, SendGarp(GarpKind.REFRESH)),
        (120.0, SendGarp(GarpKind.REFRESH)),
    ]


def test_garp_second_burst_comes_with_the_advert_due_at_the_same_time() -> None:
    m = master(garp_master_delay=2.0)
    assert m.timer_expired(MD_100 + 1) == [SendAdvert(100)]
    assert m.timer_expired(MD_100 + 2) == [SendAdvert(100), SendGarp(GarpKind.MASTER)]


def test_no_second_garp_when_delay_is_zero() -> None:
    m = master(garp_master_delay=0.0)
    for k in range(1, 10):
        assert m.timer_expired(MD_100 + k) == [SendAdvert(100)]


def test_leaving_master_cancels_pending_garps() -> None:
    m = master(garp_master_delay=5.0, garp_master_refresh=10.0)
    m.advert_received(MD_100 + 0.5, HIGHER_IP, 200)
    assert m.get_timer() == MD_100 + 0.5 + MD_100
    m.advert_received(MD_100 + 1.5, HIGHER_IP, 200)
    assert m.timer_expired(MD_100 + 5) == []


def test_timer_expired_late_handles_everything_due() -> None:
    m = master(garp_master_delay=1.0)
    # Called late, at a time when both the advert and the GARP are overdue.
    assert m.timer_expired(MD_100 + 1.5) == [SendAdvert(100), SendGarp(GarpKind.MASTER)]
    assert m.get_timer() == MD_100 + 2.5


# ---- stale VIPs at start ----------------------------------------------------------------


def test_start_cleanup_a_backup_removes_leftover_vips() -> None:
    m = machine()
    actions = m.start(0.0)
    assert actions == [StateChanged(State.INIT, State.BACKUP, "startup")]
    assert start_cleanup(m.state, actions) == [RemoveVips()]


def test_start_cleanup_a_faulty_start_removes_leftover_vips() -> None:
    m = machine()
    m.set_fault(0.0, True, "interface eth0 down")
    actions = m.start(0.0)
    assert m.state is State.FAULT
    assert start_cleanup(m.state, actions) == [RemoveVips()]


def test_start_cleanup_the_owner_starting_as_master_keeps_its_vips() -> None:
    m = machine(priority=255, initial_state=State.MASTER)
    actions = m.start(0.0)
    assert actions[:3] == [SendAdvert(255), AddVips(), SendGarp(GarpKind.MASTER)]
    assert start_cleanup(m.state, actions) == []


@pytest.mark.parametrize(
    ("state", "actions", "cleanup"),
    [
        (State.BACKUP, [], [RemoveVips()]),
        (State.FAULT, [], [RemoveVips()]),
        (State.MASTER, [], []),
        (State.BACKUP, [AddVips()], []),
        (State.BACKUP, [SendAdvert(0), RemoveVips()], []),
        (State.FAULT, [RemoveVips()], []),
        (State.BACKUP, [SendAdvert(100), SendGarp(GarpKind.MASTER)], [RemoveVips()]),
    ],
)
def test_start_cleanup_rule(state: State, actions: list[Action], cleanup: list[Action]) -> None:
    assert start_cleanup(state, actions) == cleanup


# ---- simulated LAN (hypothesis) ----------------------------------------------------------


@dataclass
class Router:
    machine: VrrpMachine
    start_at: float
    ip: IPv4Address
    started: bool = False
    log: list[tuple[float, State]] = field(default_factory=list)


WIRE_DELAY = 1 / 1024  # seconds from send to receive on the simulated LAN


class Lan:
    """A lossless LAN delivering every advert to every other router WIRE_DELAY later."""

    def __init__(self, routers: list[Router]) -> None:
        self.routers = routers
        self.in_flight: list[tuple[float, int, Router, Router, int]] = []
        self.seq = 0

    def _run(self, now: float, router: Router, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, StateChanged):
                router.log.append((now, action.new))
            elif isinstance(action, SendAdvert):
                for other in self.routers:
                    if other is not router:
                        self.seq += 1
                        item = (now + WIRE_DELAY, self.seq, router, other, action.priority)
                        heapq.heappush(self.in_flight, item)

    def run_until(self, end: float) -> None:
        while True:
            candidates: list[tuple[float, int]] = []
            for i, r in enumerate(self.routers):
                if not r.started:
                    candidates.append((r.start_at, i))
                elif (t := r.machine.get_timer()) is not None:
                    candidates.append((t, i))
            if self.in_flight:
                candidates.append((self.in_flight[0][0], -1))
            if not candidates:
                return
            now, i = min(candidates)
            if now > end:
                return
            if i == -1:
                _, _, sender, to, priority = heapq.heappop(self.in_flight)
                if to.started and to in self.routers:
                    self._run(now, to, to.machine.advert_received(now, sender.ip, priority))
                continue
            r = self.routers[i]
            if not r.started:
                r.started = True
                self._run(now, r, r.machine.start(now))
            else:
                self._run(now, r, r.machine.timer_expired(now))

    def shutdown(self, router: Router, now: float) -> None:
        self._run(now, router, router.machine.shutdown(now))
        self.routers.remove(router)


router_specs = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=254),  # priority
        st.floats(min_value=0, max_value=10, allow_nan=False),  # start time
        st.sampled_from([State.BACKUP, State.MASTER]),
    ),
    min_size=1,
    max_size=4,
)


def build_lan(specs: list[tuple[int, float, State]], advert_int: float) -> Lan:
    routers = []
    for n, (priority, start_at, initial) in enumerate(specs):
        ip = IPv4Address(int(IPv4Address("198.18.0.1")) + n * 37 % 200)
        config = MachineConfig(
            name=f"r{n}",
            vrid=51,
            priority=priority,
            advert_int=advert_int,
            primary_ip=ip,
            initial_state=initial,
        )
        routers.append(Router(VrrpMachine(config), start_at, ip))
    return Lan(routers)


def top_priority(routers: list[Router]) -> int:
    return max(r.machine.effective_priority for r in routers)


@settings(max_examples=150, deadline=None)
@given(router_specs, st.sampled_from([1.0, 3.0]))
def test_lan_converges_to_exactly_one_master_of_top_priority(
    specs: list[tuple[int, float, State]], advert_int: float
) -> None:
    # Among equal top priorities any one may end up MASTER: a backup never
    # preempts an equal master (§6.4.2); the address tie-break only settles
    # two simultaneous masters (§6.4.3).
    lan = build_lan(specs, advert_int)
    lan.run_until(10 + 5 * advert_int)
    masters = [r for r in lan.routers if r.machine.state is State.MASTER]
    assert len(masters) == 1
    assert masters[0].machine.effective_priority == top_priority(lan.routers)
    assert all(r.machine.state is State.BACKUP for r in lan.routers if r not in masters)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=254), min_size=2, max_size=4),
    st.sampled_from([State.BACKUP, State.MASTER]),
)
def test_lan_started_together_elects_the_highest_priority_then_address(
    priorities: list[int], initial: State
) -> None:
    lan = build_lan([(p, 0.0, initial) for p in priorities], 1.0)
    lan.run_until(10.0)
    masters = [r for r in lan.routers if r.machine.state is State.MASTER]
    # Equal priorities expire at the same instant: both become MASTER and
    # the tie-break on the primary address (as a 32-bit number) decides.
    want = max(lan.routers, key=lambda r: (r.machine.effective_priority, int(r.ip)))
    assert masters == [want]


@settings(max_examples=100, deadline=None)
@given(router_specs.filter(lambda s: len(s) >= 2))
def test_lan_fails_over_to_the_next_best_after_skew_time(
    specs: list[tuple[int, float, State]],
) -> None:
    lan = build_lan(specs, 1.0)
    lan.run_until(20.0)
    (old,) = [r for r in lan.routers if r.machine.state is State.MASTER]
    lan.shutdown(old, 20.25)
    lan.run_until(30.0)
    masters = [r for r in lan.routers if r.machine.state is State.MASTER]
    assert len(masters) == 1
    new = masters[0]
    top = top_priority(lan.routers)
    assert new.machine.effective_priority == top
    # Taken over Skew_Time after the priority-0 advert (RFC 3768 §6.4.2).
    assert new.log[-1] == (20.25 + WIRE_DELAY + skew_time(top), State.MASTER)
