"""Sync groups: the pure coordinator driving real state machines, no trio."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from pyalived.vrrp.fsm import (
    Action,
    AddVips,
    MachineConfig,
    RemoveVips,
    SendAdvert,
    State,
    StateChanged,
    VrrpMachine,
)
from pyalived.vrrp.sync import ForcedTransition, SyncGroup

PEER = IPv4Address("198.18.0.12")
MD_100 = 3 + 156 / 256


class Group:
    """A sync group and its members, wired the way the trio driver wires them."""

    def __init__(self, *names: str) -> None:
        self.sync = SyncGroup("G", names)
        self.machines = {
            n: VrrpMachine(
                MachineConfig(
                    name=n,
                    vrid=51 + i,
                    priority=100,
                    advert_int=1.0,
                    primary_ip=IPv4Address("198.18.0.11"),
                ),
                sync=self.sync,
            )
            for i, n in enumerate(names)
        }
        self.actions: dict[str, list[Action]] = {n: [] for n in names}
        self.forced: list[ForcedTransition] = []

    def feed(self, now: float, name: str, actions: list[Action]) -> None:
        """Record ``name``'s actions and apply the group's forced transitions."""
        self.actions[name] += actions
        for action in actions:
            if isinstance(action, StateChanged):
                for forced in self.sync.state_changed(name, action):
                    self.forced.append(forced)
                    m = self.machines[forced.member]
                    self.feed(now, forced.member, m.force_state(now, forced.state, forced.reason))

    def start(self, now: float) -> None:
        for name, m in self.machines.items():
            self.feed(now, name, m.start(now))

    def timers(self, now: float) -> None:
        for name, m in self.machines.items():
            t = m.get_timer()
            if t is not None and t <= now:
                self.feed(now, name, m.timer_expired(now))

    def states(self) -> dict[str, State]:
        return {n: m.state for n, m in self.machines.items()}


def test_member_waits_until_every_member_wants_master() -> None:
    # keepalived 2.2.7: VI_1 hears nobody, VI_2 hears a master; VI_1 logs its
    # Master_Down expiry but stays BACKUP until VI_2's master stops.
    g = Group("VI_1", "VI_2")
    g.start(0.0)
    vi1, vi2 = g.machines["VI_1"], g.machines["VI_2"]
    for t in (0.5, 1.5, 2.5, 3.5):
        g.feed(t, "VI_2", vi2.advert_received(t, PEER, 110))
    g.timers(MD_100)
    assert g.states() == {"VI_1": State.BACKUP, "VI_2": State.BACKUP}
    assert vi1.wants_master
    assert vi1.get_timer() is None
    assert not g.sync.may_become_master("VI_1")
    g.feed(8.0, "VI_2", vi2.advert_received(8.0, PEER, 0))
    assert vi2.get_timer() == 8.0 + 156 / 256
    g.timers(8.0 + 156 / 256)
    assert g.states() == {"VI_1": State.MASTER, "VI_2": State.MASTER}
    assert g.forced == [ForcedTransition("VI_1", State.MASTER, "sync group G: VI_2 is MASTER")]
    assert g.actions["VI_1"][-4:-1] == g.actions["VI_2"][-4:-1]  # advert, VIPs, GARP
    assert not vi1.wants_master


def test_an_advert_withdraws_the_wish() -> None:
    g = Group("VI_1", "VI_2")
    g.start(0.0)
    g.timers(MD_100)  # both expire together: the second takes the first along
    assert g.states() == {"VI_1": State.MASTER, "VI_2": State.MASTER}
    g2 = Group("VI_1", "VI_2")
    g2.start(0.0)
    vi1, vi2 = g2.machines["VI_1"], g2.machines["VI_2"]
    g2.feed(MD_100, "VI_1", vi1.timer_expired(MD_100))
    assert vi1.wants_master
    g2.feed(3.7, "VI_1", vi1.advert_received(3.7, PEER, 150))
    assert not vi1.wants_master
    g2.feed(3.7, "VI_2", vi2.timer_expired(3.7))
    assert g2.states() == {"VI_1": State.BACKUP, "VI_2": State.BACKUP}
    assert vi2.wants_master


def test_one_fault_takes_the_group_to_fault_and_back() -> None:
    g = Group("VI_1", "VI_2")
    g.start(0.0)
    g.timers(MD_100)
    g.feed(5.0, "VI_1", g.machines["VI_1"].set_fault(5.0, True, "chk failed"))
    assert g.states() == {"VI_1": State.FAULT, "VI_2": State.FAULT}
    # The MASTER forced into FAULT also sends a priority-0 advert (as keepalived).
    assert g.actions["VI_2"][-3:] == [
        SendAdvert(0),
        RemoveVips(),
        StateChanged(State.MASTER, State.FAULT, "sync group G: VI_1 is FAULT"),
    ]
    g.feed(9.0, "VI_1", g.machines["VI_1"].set_fault(9.0, False, "chk ok"))
    assert g.states() == {"VI_1": State.BACKUP, "VI_2": State.BACKUP}
    assert g.machines["VI_2"].get_timer() == 9.0 + MD_100
    g.timers(9.0 + MD_100)
    assert g.states() == {"VI_1": State.MASTER, "VI_2": State.MASTER}


def test_group_leaves_fault_only_when_every_own_fault_has_cleared() -> None:
    g = Group("VI_1", "VI_2", "VI_3")
    g.start(0.0)
    g.feed(1.0, "VI_1", g.machines["VI_1"].set_fault(1.0, True, "eth0 down"))
    g.feed(1.5, "VI_2", g.machines["VI_2"].set_fault(1.5, True, "eth1 down"))
    assert set(g.states().values()) == {State.FAULT}
    g.feed(2.0, "VI_1", g.machines["VI_1"].set_fault(2.0, False, "eth0 up"))
    assert set(g.states().values()) == {State.FAULT}
    assert not g.sync.may_leave_fault("VI_1")
    g.feed(3.0, "VI_2", g.machines["VI_2"].set_fault(3.0, False, "eth1 up"))
    assert set(g.states().values()) == {State.BACKUP}
    assert all(m.get_timer() == 3.0 + MD_100 for m in g.machines.values())


def test_one_backup_takes_the_masters_back_to_backup() -> None:
    g = Group("VI_1", "VI_2")
    g.start(0.0)
    g.timers(MD_100)
    g.feed(5.0, "VI_2", g.machines["VI_2"].advert_received(5.0, PEER, 200))
    assert g.states() == {"VI_1": State.BACKUP, "VI_2": State.BACKUP}
    assert g.actions["VI_1"][-2:] == [
        RemoveVips(),
        StateChanged(State.MASTER, State.BACKUP, "sync group G: VI_2 is BACKUP"),
    ]
    # VI_1 hears nobody, but VI_2 hears the master: the group stays BACKUP.
    for t in (6.0, 7.0, 8.0):
        g.feed(t, "VI_2", g.machines["VI_2"].advert_received(t, PEER, 200))
    g.timers(5.0 + MD_100)
    assert g.machines["VI_1"].wants_master
    assert g.states() == {"VI_1": State.BACKUP, "VI_2": State.BACKUP}


def test_forced_changes_do_not_cascade() -> None:
    sync = SyncGroup("G", ["A", "B", "C"])
    for m in "ABC":
        sync.state_changed(m, StateChanged(State.INIT, State.BACKUP, "startup"))
    forced = sync.state_changed("A", StateChanged(State.BACKUP, State.MASTER, "timer"))
    assert forced == [
        ForcedTransition("B", State.MASTER, "sync group G: A is MASTER"),
        ForcedTransition("C", State.MASTER, "sync group G: A is MASTER"),
    ]
    # B reports first: C, not yet seen as MASTER, is named again (force_state
    # on a machine already in that state does nothing); then all is quiet.
    assert [
        f.member for f in sync.state_changed("B", StateChanged(State.BACKUP, State.MASTER, "sync"))
    ] == ["C"]
    assert sync.state_changed("C", StateChanged(State.BACKUP, State.MASTER, "sync")) == []
    assert sync.state_of("C") is State.MASTER


def test_forcing_through_machines_terminates_and_is_idempotent() -> None:
    g = Group("A", "B", "C", "D")
    g.start(0.0)
    g.timers(MD_100)
    assert set(g.states().values()) == {State.MASTER}
    assert sum(isinstance(a, AddVips) for acts in g.actions.values() for a in acts) == 4
    g.feed(5.0, "C", g.machines["C"].set_fault(5.0, True, "eth0 down"))
    assert set(g.states().values()) == {State.FAULT}
    assert sum(isinstance(a, RemoveVips) for acts in g.actions.values() for a in acts) == 4


def test_stop_forces_nothing_and_stopped_members_are_left_alone() -> None:
    sync = SyncGroup("G", ["A", "B"])
    sync.state_changed("A", StateChanged(State.INIT, State.BACKUP, "startup"))
    assert sync.state_changed("A", StateChanged(State.BACKUP, State.INIT, "shutdown")) == []
    # B has not started yet (INIT): it starts on its own.
    assert sync.state_changed("A", StateChanged(State.INIT, State.BACKUP, "x")) == []


def test_start_of_the_owner_waits_for_its_group() -> None:
    sync = SyncGroup("G", ["owner", "other"])
    owner = VrrpMachine(
        MachineConfig(
            name="owner",
            vrid=1,
            priority=255,
            advert_int=1.0,
            primary_ip=IPv4Address("198.18.0.11"),
            initial_state=State.MASTER,
        ),
        sync=sync,
    )
    actions = owner.start(0.0)
    assert owner.state is State.BACKUP
    assert AddVips() not in actions


def test_duplicate_members_are_rejected() -> None:
    with pytest.raises(ValueError):
        SyncGroup("G", ["A", "A"])
