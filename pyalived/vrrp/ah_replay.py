"""AH anti-replay state of one VRRP instance, as a small pure object.

Theory of operation: with ``auth_type AH`` every advert carries a sequence
number that its sender counts up (RFC 2402 §3.3.2).  An ``AhReplayGuard``
remembers the last number this instance accepted; an advert whose number is
not above it is a replay and is dropped as ``ah_replay``
(``packet.check_ah_sequence``).  Only an advert that passed every other check
(``packet.verify``) is offered to ``accept``, so a forged or mangled datagram
cannot move the number on.

The number is forgotten whenever the instance enters any state but BACKUP
(MASTER, FAULT, or INIT on a stop): it then no longer follows a master, and
the next master it hears -- possibly the old one, restarted and counting
from 1 again -- must be accepted.  While BACKUP the number is kept, also
across a reload.  The guard never reads a clock; the driver
(``pyalived.vrrp.instance``) tells it of accepted adverts and state changes.
"""

from __future__ import annotations

from pyalived.vrrp import packet
from pyalived.vrrp.fsm import State


class AhReplayGuard:
    """The last accepted AH sequence number, and when it is forgotten."""

    def __init__(self) -> None:
        self.last: int | None = None  # None: the next number is accepted, whatever it is

    def accept(self, received: packet.Received) -> None:
        """Remember ``received``'s sequence number, or raise ``PacketError("ah_replay")``.

        A datagram without AH passes and changes nothing.
        """
        self.last = packet.check_ah_sequence(self.last, received)

    def state_changed(self, new: State) -> None:
        """The instance entered ``new``: outside BACKUP, forget the last number."""
        if new is not State.BACKUP:
            self.last = None
