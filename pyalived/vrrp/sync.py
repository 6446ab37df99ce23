"""VRRP sync groups (keepalived's ``vrrp_sync_group``) as a pure coordinator.

Theory of operation: a ``SyncGroup`` knows, for each member instance, its
last reported state, whether its Master_Down timer has expired ("wants
MASTER") and whether it has a fault of its own.  It plays two roles:

* It is the ``SyncGate`` handed to each member's ``VrrpMachine``: a member
  whose Master_Down timer expires asks ``may_become_master`` and becomes
  MASTER only if every other member is MASTER or wants to be; otherwise it
  waits as BACKUP (keepalived prefers BACKUP to thrashing).  A member whose
  own fault clears asks ``may_leave_fault`` and stays in FAULT while another
  member still has a fault of its own.
* Given a ``StateChanged`` from one member, ``state_changed`` returns the
  transitions the others must be forced into (the caller passes each to
  that member's ``VrrpMachine.force_state``): one member MASTER -> all
  MASTER, one BACKUP -> all BACKUP, one FAULT -> all FAULT.  A stop (INIT)
  forces nothing.  The changes the forced members then report find the
  group in step, so forcing never loops; while forced changes are still in
  flight a member may be named twice, which is harmless because
  ``force_state`` to the state a machine is already in does nothing.

These are keepalived 2.2.7's observed semantics: with two members of which
one hears a master and the other hears nobody, the second logs its
Master_Down expiry but stays BACKUP; when the first one's master stops, it
becomes MASTER and the group follows at once.  A fault on one member takes
every member to FAULT (a MASTER member sends a priority-0 advert); when the
fault clears, all members go BACKUP with fresh Master_Down timers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyalived.vrrp.fsm import State, StateChanged


@dataclass(frozen=True)
class ForcedTransition:
    member: str  # instance name
    state: State
    reason: str


@dataclass
class _Member:
    state: State = State.INIT
    wants_master: bool = False
    faulty: bool = False


class SyncGroup:
    def __init__(self, name: str, members: Sequence[str]) -> None:
        if len(set(members)) != len(members):
            raise ValueError(f"sync group {name}: duplicate members")
        self.name = name
        self.members: tuple[str, ...] = tuple(members)
        self._m: dict[str, _Member] = {m: _Member() for m in members}

    def state_of(self, member: str) -> State:
        return self._m[member].state

    # -- the SyncGate protocol --

    def update(self, member: str, *, wants_master: bool, faulty: bool) -> None:
        m = self._m[member]
        m.wants_master = wants_master
        m.faulty = faulty

    def may_become_master(self, member: str) -> bool:
        return all(
            m.state is State.MASTER or (m.wants_master and not m.faulty)
            for name, m in self._m.items()
            if name != member
        )

    def may_leave_fault(self, member: str) -> bool:
        return not any(m.faulty for name, m in self._m.items() if name != member)

    # -- following a member --

    def state_changed(self, member: str, change: StateChanged) -> list[ForcedTransition]:
        """Record ``member``'s change; return the transitions the others must follow."""
        self._m[member].state = change.new
        if change.new is State.INIT:
            return []
        reason = f"sync group {self.name}: {member} is {change.new.name}"
        return [
            ForcedTransition(name, change.new, reason)
            for name, m in self._m.items()
            if name != member and m.state is not change.new and m.state is not State.INIT
        ]
