"""VRRPv2 state machine (RFC 3768 §6.4) with keepalived's extensions.

CONTRACT STUB: the public names and signatures below are fixed; the bodies
are to be implemented.  The I/O layer (``pyalived.vrrp.instance``) depends on
exactly this interface.

Theory of operation: a ``VrrpMachine`` is a pure object.  It never reads a
clock or touches a socket.  Every event method takes ``now`` (seconds, the
caller's monotonic clock) and returns a list of actions for the caller to
execute, in order.  ``get_timer()`` says when the machine next wants
``timer_expired(now)`` to be called (None: no timer).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address


class State(enum.IntEnum):
    # Values are those of the keepalived Prometheus exporter.
    INIT = 0
    BACKUP = 1
    MASTER = 2
    FAULT = 3


@dataclass(frozen=True)
class MachineConfig:
    name: str
    vrid: int
    priority: int  # configured base priority, 1..255 (255: address owner)
    advert_int: float  # seconds
    primary_ip: IPv4Address  # this router's own address on the LAN (tie-break, RFC 3768 §6.4.3)
    initial_state: State = State.BACKUP  # BACKUP or MASTER, from the config's `state`
    preempt: bool = True  # False: keepalived's nopreempt
    preempt_delay: float = 0.0
    garp_master_delay: float = 5.0  # second GARP burst after becoming MASTER; 0: none
    garp_master_refresh: float = 0.0  # periodic GARP while MASTER; 0: off


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


class VrrpMachine:
    def __init__(self, config: MachineConfig) -> None:
        raise NotImplementedError

    @property
    def state(self) -> State:
        raise NotImplementedError

    @property
    def effective_priority(self) -> int:
        raise NotImplementedError

    def start(self, now: float) -> list[Action]:
        """Startup event (RFC 3768 §6.4.1)."""
        raise NotImplementedError

    def advert_received(self, now: float, src: IPv4Address, priority: int) -> list[Action]:
        """A validated advert for this VRID (all §7.1 checks already passed)."""
        raise NotImplementedError

    def timer_expired(self, now: float) -> list[Action]:
        """Call when now >= get_timer(); handles every timer that is due."""
        raise NotImplementedError

    def set_fault(self, now: float, faulty: bool, reason: str) -> list[Action]:
        """Tracked interface or track_script verdict: enter or leave FAULT."""
        raise NotImplementedError

    def set_priority(self, now: float, priority: int, reason: str) -> list[Action]:
        """New effective priority (1..254) from track weights."""
        raise NotImplementedError

    def force_state(self, now: float, state: State, reason: str) -> list[Action]:
        """Sync-group: move to ``state`` because a group member did."""
        raise NotImplementedError

    def shutdown(self, now: float) -> list[Action]:
        """Graceful stop: a MASTER sends a priority-0 advert and drops its VIPs."""
        raise NotImplementedError

    def get_timer(self) -> float | None:
        raise NotImplementedError
