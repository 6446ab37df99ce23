"""VRRP state machine: VRRPv2 (RFC 3768 §6.4) and VRRPv3 (RFC 5798 §6.4, as
updated by RFC 9568), with keepalived's extensions.

Theory of operation: a ``VrrpMachine`` is a pure object.  It never reads a
clock or touches a socket.  Every event method takes ``now`` (seconds, the
caller's monotonic clock) and returns a list of actions for the caller to
execute, in order.  ``get_timer()`` says when the machine next wants
``timer_expired(now)`` to be called (None: no timer); ``timer_expired``
handles every timer that is due at ``now``.  A machine that belongs to a
sync group is given a ``SyncGate`` (``pyalived.vrrp.sync.SyncGroup``) that
it consults before becoming MASTER on its own or leaving FAULT.

The three states of RFC 3768 §6.4, plus FAULT (keepalived: a tracked
interface or a weight-0 track_script is down), drawn from the RFC's text::

                 +---------------+
       +-------->|  Initialize   |<--------------+
       |         +---------------+               |
       |          |             |                |  Shutdown (§6.4.2, §6.4.3)
       |   Startup|      Startup|                |
       |  prio 255|     prio<255|                |
       |          V             V                |
     +---------------+  Master_Down   +---------------+
     |    Master     |<---------------|    Backup     |
     |  (§6.4.3)     |  timer expired |   (§6.4.2)    |
     |               |--------------->|               |
     +---------------+ higher-priority+---------------+
            |   ^      advert, or equal     |   ^
            |   |      from a higher addr   |   |
      fault |   |                     fault |   | fault cleared:
            V   |                           V   | fresh Master_Down timer
     +---------------------------------------------+
     |  Fault (keepalived): no adverts, no VIPs    |
     +---------------------------------------------+

Transition table (event -> actions, in order):

=========  ===========================  =============================================
state      event                        result
=========  ===========================  =============================================
INIT       start, owner + state MASTER  SendAdvert, AddVips, SendGarp, -> MASTER
INIT       start, otherwise             -> BACKUP, Master_Down = 3*adv + Skew
BACKUP     advert prio 0                Master_Down = Skew_Time (§6.4.2)
BACKUP     advert prio >= ours          Master_Down restarted (§6.4.2)
BACKUP     advert prio < ours           preempt: discarded (the timer then fires);
                                        nopreempt: Master_Down restarted (§6.4.2);
                                        preempt_delay: restarted until the delay
                                        (counted from the first such advert) ends
BACKUP     Master_Down expires          SendAdvert, AddVips, SendGarp, -> MASTER
MASTER     Adver_Timer expires          SendAdvert (§6.4.3)
MASTER     advert prio 0                SendAdvert, Adver_Timer restarted (§6.4.3)
MASTER     advert prio > ours, or equal RemoveVips, -> BACKUP (§6.4.3)
           and higher source address
MASTER     advert prio < ours, or equal SendAdvert, SendGarp(LOWER_PRIO), Adver_Timer
           and lower source address     restarted; second LOWER_PRIO burst later
any        fault                        (MASTER: SendAdvert(0), RemoveVips), -> FAULT
FAULT      fault cleared                -> BACKUP with a fresh Master_Down timer
any        shutdown                     (MASTER: SendAdvert(0), RemoveVips), -> INIT
=========  ===========================  =============================================

Timers: Master_Down_Interval = 3 * Advertisement_Interval + Skew_Time and
Skew_Time = (256 - Priority) / 256, with this router's effective priority
(§6.1); Adver_Timer = Advertisement_Interval.  Equal priorities are broken
by comparing the primary addresses as unsigned 32-bit integers (§6.4.3).

VRRPv3 (``MachineConfig.version == 3``, RFC 5798 §6.1): the interval is in
centiseconds, Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256
and Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time, where
Master_Adver_Interval is our own interval at startup and as MASTER, and a
Backup takes it from the adverts it accepts (§6.4.2: priority 0 excepted,
and not from a lower-priority advert it discards to preempt) and from the
higher-priority advert that makes a Master step down (§6.4.3).  keepalived
2.2.7 computes these in integer microseconds, Skew_Time as
``(256 - priority) * centiseconds * 625 // 16`` (625/16 = 10000/256,
truncated), and so do we (``skew_time_v3``), so both daemons' timers agree
to the microsecond.  An advert announcing an interval of 0 leaves
Master_Adver_Interval unchanged (a zero Master_Down_Interval would make the
Backup take over between two adverts).

keepalived 2.2.7 behaviour this module reproduces (observed by running it
in network namespaces and capturing the LAN):

* ``state MASTER`` with a priority below 255 starts exactly like ``state
  BACKUP``: it logs BACKUP, listens and becomes MASTER only when the full
  Master_Down_Interval expires without adverts (3.609 s for priority 100).
  Its only other effect is that keepalived clears ``nopreempt`` and
  ``preempt_delay`` for such an instance ("will not work with initial state
  MASTER"); so do we.
* Priority 255 with ``state MASTER`` (the parser should also map a missing
  ``state`` with priority 255 to MASTER, as keepalived does) becomes MASTER
  at once (§6.4.1).  Priority 255 with an explicit ``state BACKUP`` waits
  for Master_Down like any backup.
* A backup with a higher priority than the master does not take over at
  once: it discards the master's lower-priority adverts and becomes MASTER
  when its Master_Down timer expires (RFC 3768 §6.4.2).
* ``preempt_delay``: the first lower-priority advert a backup hears starts
  the delay; until it ends, lower-priority adverts restart Master_Down as
  with nopreempt, afterwards they are discarded.  An advert of equal or
  higher priority cancels the delay.  Alone at startup there is no delay.
* A master hearing a lower-priority master answers at once with an advert
  and a GARP burst (``garp_lower_prio_repeat``, default
  ``garp_master_repeat``), restarts its Adver_Timer, and sends a second
  burst ``garp_lower_prio_delay`` later (default ``garp_master_delay``).
* A master entering FAULT sends a priority-0 advert and drops its VIPs (the
  backup takes over Skew_Time later); keepalived actually puts two
  identical priority-0 adverts on the wire 2 ms apart, we send one.
  Leaving FAULT gives BACKUP with a fresh Master_Down timer, so a
  higher-priority router preempts Master_Down_Interval later; this holds
  for the address owner too (it does not become MASTER at once here).
* Stopping: a master sends a priority-0 advert and removes its VIPs; every
  instance reports the stop (``State.INIT``, "STOP" for notify scripts).
* Starting anything but MASTER (BACKUP, or FAULT) removes the VIPs a
  previous run may have left on the host; ``start_cleanup`` says so after
  ``start``, whose own actions (and the table above) are left as they are.
* Sync groups: a member whose Master_Down timer expires becomes MASTER only
  if every other member is MASTER or also wants to be; otherwise it waits
  as BACKUP.  The last one to want MASTER takes the whole group along.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol


class State(enum.IntEnum):
    # Values are those of the keepalived Prometheus exporter.
    INIT = 0
    BACKUP = 1
    MASTER = 2
    FAULT = 3


OWNER_PRIORITY = 255  # the IP address owner (RFC 3768 §5.3.4)
STOP_PRIORITY = 0  # "stop participating" (RFC 3768 §5.3.4)


@dataclass(frozen=True)
class MachineConfig:
    name: str
    vrid: int
    priority: int  # configured base priority, 1..255 (255: address owner)
    advert_int: float  # seconds
    # this router's own address on the LAN (tie-break, RFC 3768 §6.4.3, RFC 5798 §6.4.3):
    # of the instance's family
    primary_ip: IPv4Address | IPv6Address
    initial_state: State = State.BACKUP  # BACKUP or MASTER, from the config's `state`
    preempt: bool = True  # False: keepalived's nopreempt
    preempt_delay: float = 0.0
    garp_master_delay: float = 5.0  # second GARP burst after becoming MASTER; 0: none
    garp_master_refresh: float = 0.0  # periodic GARP while MASTER; 0: off
    # Second LOWER_PRIO burst after answering a lower-priority master; None:
    # garp_master_delay (keepalived's default); 0: none.
    garp_lower_prio_delay: float | None = None
    version: int = 2  # 3: VRRPv3 timers (RFC 5798 §6.1); advert_int a whole number of centiseconds


# ---- actions -------------------------------------------------------------


@dataclass(frozen=True)
class SendAdvert:
    priority: int  # 0 on graceful stop (RFC 3768 §6.4.3)


@dataclass(frozen=True)
class AddVips:
    pass


@dataclass(frozen=True)
class RemoveVips:
    pass


class GarpKind(enum.Enum):
    MASTER = "master"  # garp_master_repeat frames (on becoming MASTER, and after garp_master_delay)
    REFRESH = "refresh"  # garp_master_refresh_repeat frames
    LOWER_PRIO = "lower_prio"  # answer to a lower-priority master (split-brain recovery)


@dataclass(frozen=True)
class SendGarp:
    kind: GarpKind


@dataclass(frozen=True)
class StateChanged:
    old: State
    new: State
    reason: str


Action = SendAdvert | AddVips | RemoveVips | SendGarp | StateChanged


class SyncGate(Protocol):
    """What a sync-group member asks its group (``pyalived.vrrp.sync.SyncGroup``)."""

    def update(self, member: str, *, wants_master: bool, faulty: bool) -> None:
        """Record the member's own wishes: Master_Down expired, or a fault of its own."""
        ...

    def may_become_master(self, member: str) -> bool:
        """True when every other member is MASTER or wants to become MASTER."""
        ...

    def may_leave_fault(self, member: str) -> bool:
        """True when no other member has a fault of its own."""
        ...


def skew_time(priority: int) -> float:
    """Skew_Time = ((256 - Priority) / 256) seconds (RFC 3768 §6.1)."""
    return (256 - priority) / 256


def master_down_interval(advert_int: float, priority: int) -> float:
    """Master_Down_Interval = 3 * Advertisement_Interval + Skew_Time (RFC 3768 §6.1)."""
    return 3 * advert_int + skew_time(priority)


def advert_centis(advert_int: float) -> int:
    """A VRRPv3 interval in seconds as centiseconds (RFC 5798 §5.2.7)."""
    return round(advert_int * 100)


def skew_time_v3(priority: int, master_adver_cs: int) -> float:
    """Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256 (RFC 5798 §6.1), in
    seconds, truncated to the microsecond as keepalived 2.2.7 computes it."""
    return ((256 - priority) * master_adver_cs * 625 // 16) / 1_000_000


def master_down_interval_v3(master_adver_cs: int, priority: int) -> float:
    """Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time (RFC 5798 §6.1)."""
    skew_us = (256 - priority) * master_adver_cs * 625 // 16
    return (3 * master_adver_cs * 10_000 + skew_us) / 1_000_000


def start_cleanup(state: State, start_actions: Sequence[Action]) -> list[Action]:
    """What to do after ``start()`` about VIPs a previous run may have left on the host.

    ``state`` is the machine's state after ``start()`` returned ``start_actions``.
    As keepalived does, an instance that does not start as MASTER (BACKUP, or
    FAULT) removes its VIPs, so that a restarted daemon never answers for an
    address it does not hold; unless the start itself already adds or removes
    them.
    """
    if state is State.MASTER:
        return []
    if any(isinstance(a, AddVips | RemoveVips) for a in start_actions):
        return []
    return [RemoveVips()]


class VrrpMachine:
    def __init__(self, config: MachineConfig, sync: SyncGate | None = None) -> None:
        if not 1 <= config.priority <= OWNER_PRIORITY:
            raise ValueError(f"priority {config.priority} is outside 1..255")
        if config.advert_int <= 0:
            raise ValueError(f"advert_int {config.advert_int} must be positive")
        self.config = config
        self._sync = sync
        self._owner = config.priority == OWNER_PRIORITY
        # keepalived clears nopreempt and preempt_delay for `state MASTER`.
        initial_master = config.initial_state is State.MASTER
        self._preempt = config.preempt or initial_master
        self._preempt_delay = 0.0 if initial_master else max(0.0, config.preempt_delay)
        lower = config.garp_lower_prio_delay
        self._garp_lower_delay = config.garp_master_delay if lower is None else lower
        self._state = State.INIT
        self._priority = config.priority
        self._started = False
        self._stopped = False
        self._faulty = False  # a fault of our own (set_fault), not one forced by the group
        self._wants_master = False  # sync group: Master_Down expired, waiting for the group
        # Timers (absolute times, None: not running).
        self._master_down_at: float | None = None
        self._down_reason = "master down timer expired"
        self._preempt_until: float | None = None
        self._adver_at: float | None = None
        self._garp_delay_at: float | None = None
        self._garp_refresh_at: float | None = None
        self._garp_lower_at: float | None = None
        # VRRPv3 Master_Adver_Interval in centiseconds (RFC 5798 §6.1); unused by v2.
        self._master_adver_cs = advert_centis(config.advert_int)

    # -- queries --

    @property
    def state(self) -> State:
        return self._state

    @property
    def effective_priority(self) -> int:
        return self._priority

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def faulty(self) -> bool:
        """A fault of this instance's own (not one forced on it by its sync group)."""
        return self._faulty

    @property
    def wants_master(self) -> bool:
        """Sync group member whose Master_Down expired while the group was not ready."""
        return self._wants_master

    @property
    def master_down_interval(self) -> float:
        if self.config.version == 3:
            return master_down_interval_v3(self._master_adver_cs, self._priority)
        return master_down_interval(self.config.advert_int, self._priority)

    @property
    def skew_time(self) -> float:
        if self.config.version == 3:
            return skew_time_v3(self._priority, self._master_adver_cs)
        return skew_time(self._priority)

    @property
    def master_adver_interval(self) -> float:
        """Master_Adver_Interval in seconds: VRRPv3's learned one (RFC 5798 §6.4.2),
        the configured interval for VRRPv2."""
        if self.config.version == 3:
            return self._master_adver_cs / 100
        return self.config.advert_int

    def get_timer(self) -> float | None:
        timers = [
            t
            for t in (
                self._master_down_at,
                self._adver_at,
                self._garp_delay_at,
                self._garp_refresh_at,
                self._garp_lower_at,
            )
            if t is not None
        ]
        return min(timers) if timers else None

    # -- events --

    def start(self, now: float) -> list[Action]:
        """Startup event (RFC 3768 §6.4.1)."""
        if self._started or self._stopped:
            return []
        self._started = True
        self._master_adver_cs = advert_centis(self.config.advert_int)
        if self._faulty:
            return self._enter_fault(now, "fault at startup")
        if self._owner and self.config.initial_state is State.MASTER:
            if self._may_become_master():
                return self._become_master(now, "address owner (priority 255) at startup")
            return self._enter_backup(now, "startup, waiting for the sync group")
        return self._enter_backup(now, "startup")

    def advert_received(
        self,
        now: float,
        src: IPv4Address | IPv6Address,
        priority: int,
        max_advert_int: int | None = None,
    ) -> list[Action]:
        """A validated advert for this VRID (all §7.1 checks already passed).

        ``max_advert_int`` is a VRRPv3 advert's interval in centiseconds (RFC 5798
        §5.2.7), which a Backup adopts (§6.4.2); VRRPv2 adverts have none.
        """
        if self._state is State.BACKUP:
            self._backup_rx(now, src, priority, max_advert_int)
            return []
        if self._state is State.MASTER:
            return self._master_rx(now, src, priority, max_advert_int)
        return []  # INIT and FAULT ignore adverts

    def timer_expired(self, now: float) -> list[Action]:
        """Call when now >= get_timer(); handles every timer that is due."""
        actions: list[Action] = []
        if self._state is State.BACKUP:
            if self._master_down_at is not None and self._master_down_at <= now:
                self._master_down_at = None
                if self._may_become_master():
                    actions += self._become_master(now, self._down_reason)
                else:
                    self._set_wants_master(True)
        if self._state is not State.MASTER:
            return actions
        if self._adver_at is not None and self._adver_at <= now:
            actions.append(SendAdvert(self._priority))  # §6.4.3
            self._adver_at = now + self.config.advert_int
        if self._garp_delay_at is not None and self._garp_delay_at <= now:
            actions.append(SendGarp(GarpKind.MASTER))
            self._garp_delay_at = None
        if self._garp_lower_at is not None and self._garp_lower_at <= now:
            actions.append(SendGarp(GarpKind.LOWER_PRIO))
            self._garp_lower_at = None
        if self._garp_refresh_at is not None and self._garp_refresh_at <= now:
            actions.append(SendGarp(GarpKind.REFRESH))
            self._garp_refresh_at = now + self.config.garp_master_refresh
        return actions

    def set_fault(self, now: float, faulty: bool, reason: str) -> list[Action]:
        """Tracked interface or track_script verdict: enter or leave FAULT."""
        if faulty == self._faulty:
            return []
        self._faulty = faulty
        self._report()
        if not self._started or self._stopped:
            return []
        if faulty:
            return self._enter_fault(now, reason)
        if self._state is not State.FAULT:
            return []
        if self._sync is not None and not self._sync.may_leave_fault(self.name):
            return []  # another member still has a fault of its own
        return self._leave_fault(now, reason)

    def set_priority(self, now: float, priority: int, reason: str) -> list[Action]:
        """New effective priority (1..254) from track weights.

        The address owner keeps 255 whatever its weights say.  A master's next
        advert carries the new priority; a backup keeps its running timer, and
        whether it preempts follows from the priorities of the adverts it hears.
        """
        if self._owner:
            return []
        self._priority = min(max(priority, 1), OWNER_PRIORITY - 1)
        return []

    def force_state(self, now: float, state: State, reason: str) -> list[Action]:
        """Sync-group: move to ``state`` because a group member did."""
        if not self._started or self._stopped or state is self._state:
            return []
        if state is State.FAULT:
            return self._enter_fault(now, reason)
        if self._state is State.FAULT and self._faulty:
            return []  # our own fault keeps us here
        if state is State.BACKUP:
            if self._state is State.MASTER:
                return [RemoveVips(), *self._enter_backup(now, reason)]
            return self._enter_backup(now, reason)
        if state is State.MASTER:
            return self._become_master(now, reason)
        return []  # INIT: only shutdown() stops a machine

    def reconfigure(self, now: float, config: MachineConfig) -> list[Action]:
        """Configuration reload: take new settings, keeping state and running timers.

        The new advert_int, preempt and GARP settings apply from the next time
        each timer is armed; nothing is sent now.  Priority changes come through
        ``set_priority`` (tracking owns the effective priority).  Becoming or
        ceasing to be the address owner needs a new machine, not this.
        """
        if (config.priority == OWNER_PRIORITY) != self._owner:
            raise ValueError("address ownership cannot change in place")
        if config.advert_int <= 0:
            raise ValueError(f"advert_int {config.advert_int} must be positive")
        self.config = config
        if self._state is not State.BACKUP:  # a Backup keeps the interval it learned
            self._master_adver_cs = advert_centis(config.advert_int)
        initial_master = config.initial_state is State.MASTER
        self._preempt = config.preempt or initial_master
        self._preempt_delay = 0.0 if initial_master else max(0.0, config.preempt_delay)
        lower = config.garp_lower_prio_delay
        self._garp_lower_delay = config.garp_master_delay if lower is None else lower
        if config.garp_master_refresh <= 0:
            self._garp_refresh_at = None
        elif self._state is State.MASTER and self._garp_refresh_at is None:
            self._garp_refresh_at = now + config.garp_master_refresh
        return []

    def shutdown(self, now: float) -> list[Action]:
        """Graceful stop: a MASTER sends a priority-0 advert and drops its VIPs."""
        if not self._started or self._stopped:
            self._stopped = True
            return []
        self._stopped = True
        old = self._state
        actions: list[Action] = []
        if old is State.MASTER:
            actions += [SendAdvert(STOP_PRIORITY), RemoveVips()]  # §6.4.3
        self._clear_timers()
        self._state = State.INIT
        self._set_wants_master(False)
        actions.append(StateChanged(old, State.INIT, "shutdown"))
        return actions

    # -- internals --

    def _learn_interval(self, max_advert_int: int | None) -> None:
        """VRRPv3: Master_Adver_Interval from an accepted advert (RFC 5798 §6.4.2)."""
        if self.config.version == 3 and max_advert_int:
            self._master_adver_cs = max_advert_int

    def _backup_rx(
        self, now: float, src: IPv4Address | IPv6Address, priority: int, max_advert_int: int | None
    ) -> None:
        """RFC 3768 §6.4.2 / RFC 5798 §6.4.2, with keepalived's preempt_delay."""
        if priority == STOP_PRIORITY:
            self._restart_down(now + self.skew_time, f"priority 0 advert from {src}")
            return
        if priority >= self._priority or not self._preempt:
            self._preempt_until = None  # an equal or higher master cancels preempt_delay
            self._learn_interval(max_advert_int)
            self._restart_down(now + self.master_down_interval, "master down timer expired")
            return
        # A lower-priority master and we may preempt.
        if self._preempt_delay > 0:
            if self._preempt_until is None:
                self._preempt_until = now + self._preempt_delay
            if now < self._preempt_until:
                self._learn_interval(max_advert_int)
                self._restart_down(now + self.master_down_interval, "master down timer expired")
                return
        # Discarded: Master_Down keeps running and we take over when it fires.
        self._down_reason = (
            f"preempting lower priority master {src} (prio {priority} < {self._priority})"
        )

    def _master_rx(
        self, now: float, src: IPv4Address | IPv6Address, priority: int, max_advert_int: int | None
    ) -> list[Action]:
        """RFC 3768 §6.4.3 / RFC 5798 §6.4.3, with keepalived's answer to a
        lower-priority master."""
        if priority == STOP_PRIORITY:
            self._adver_at = now + self.config.advert_int
            return [SendAdvert(self._priority)]
        if priority > self._priority:
            reason = f"higher priority advert from {src} (prio {priority})"
            self._learn_interval(max_advert_int)
            return [RemoveVips(), *self._enter_backup(now, reason)]
        if priority == self._priority and int(src) > int(self.config.primary_ip):
            reason = f"equal priority advert from higher address {src} (prio {priority})"
            self._learn_interval(max_advert_int)
            return [RemoveVips(), *self._enter_backup(now, reason)]
        # A lower-priority (or equal, lower-address) master: force a new election.
        self._adver_at = now + self.config.advert_int
        if self._garp_lower_delay > 0:
            self._garp_lower_at = now + self._garp_lower_delay
        return [SendAdvert(self._priority), SendGarp(GarpKind.LOWER_PRIO)]

    def _restart_down(self, at: float, reason: str) -> None:
        self._master_down_at = at
        self._down_reason = reason
        self._set_wants_master(False)

    def _may_become_master(self) -> bool:
        if self._sync is None:
            return True
        self._set_wants_master(True)
        return self._sync.may_become_master(self.name)

    def _become_master(self, now: float, reason: str) -> list[Action]:
        old = self._state
        self._clear_timers()
        self._state = State.MASTER
        self._set_wants_master(False)
        self._master_adver_cs = advert_centis(self.config.advert_int)  # RFC 5798 §6.4.1
        self._adver_at = now + self.config.advert_int
        if self.config.garp_master_delay > 0:
            self._garp_delay_at = now + self.config.garp_master_delay
        if self.config.garp_master_refresh > 0:
            self._garp_refresh_at = now + self.config.garp_master_refresh
        return [
            SendAdvert(self._priority),
            AddVips(),
            SendGarp(GarpKind.MASTER),
            StateChanged(old, State.MASTER, reason),
        ]

    def _enter_backup(self, now: float, reason: str) -> list[Action]:
        old = self._state
        self._clear_timers()
        self._state = State.BACKUP
        self._restart_down(now + self.master_down_interval, "master down timer expired")
        return [StateChanged(old, State.BACKUP, reason)]

    def _enter_fault(self, now: float, reason: str) -> list[Action]:
        old = self._state
        if old is State.FAULT:
            return []
        actions: list[Action] = []
        if old is State.MASTER:
            actions += [SendAdvert(STOP_PRIORITY), RemoveVips()]
        self._clear_timers()
        self._state = State.FAULT
        self._set_wants_master(False)
        actions.append(StateChanged(old, State.FAULT, reason))
        return actions

    def _leave_fault(self, now: float, reason: str) -> list[Action]:
        # Even the address owner goes BACKUP and waits for Master_Down here.
        self._master_adver_cs = advert_centis(self.config.advert_int)
        return self._enter_backup(now, reason)

    def _clear_timers(self) -> None:
        self._master_down_at = None
        self._preempt_until = None
        self._adver_at = None
        self._garp_delay_at = None
        self._garp_refresh_at = None
        self._garp_lower_at = None
        self._down_reason = "master down timer expired"

    def _set_wants_master(self, wants: bool) -> None:
        if wants != self._wants_master:
            self._wants_master = wants
            self._report()

    def _report(self) -> None:
        if self._sync is not None:
            self._sync.update(self.name, wants_master=self._wants_master, faulty=self._faulty)
