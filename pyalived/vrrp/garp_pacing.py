"""Spacing of gratuitous ARPs and unsolicited neighbour advertisements per interface.

Theory of operation: keepalived lets an operator slow down the gratuitous
ARPs (``vrrp_garp_interval``) and unsolicited NAs (``vrrp_gna_interval``)
sent on an interface, for switches that cannot take a flood of them: two
frames of one kind never leave the same interface closer together than the
interval, whichever instance sends them.  A ``garp_group`` block gives a set
of interfaces (``interface`` or ``interfaces``) intervals of their own, and
its interfaces then share one pace: the limit applies to the switch they are
linked to as a whole.  An interface in no group keeps the instance's
interval (``garp_interval`` / ``gna_interval``, whose defaults are the
global ones).

``GarpPacer`` is pure: it keeps, for each pacing key (a group, or an
interface on its own) and each kind (ARP or NA), the earliest time the next
frame may leave, and ``reserve`` hands out the send times of a burst of
``n`` frames from ``now``: the first at ``now`` or when the key is free
again, the others one interval apart.  The driver (``pyalived.vrrp.instance``)
sends the frames due at once and wakes for the others.  One pacer is shared
by every instance of the VRRP half (``pyalived.vrrp.runtime``).
"""

from __future__ import annotations

from collections.abc import Iterable

from pyalived.config.model import GarpGroup


class GarpPacer:
    """The next free send time per (pacing key, kind); see the module docstring."""

    def __init__(self, groups: Iterable[GarpGroup] = ()) -> None:
        self._groups: dict[str, tuple[int, GarpGroup]] = {}
        self._next: dict[tuple[str, bool], float] = {}
        self.set_groups(groups)

    def set_groups(self, groups: Iterable[GarpGroup]) -> None:
        """The ``garp_group`` blocks of the configuration (again on reload)."""
        self._groups = {}
        for n, group in enumerate(groups):
            for ifname in group.interfaces:
                self._groups.setdefault(ifname, (n, group))

    def pace(self, ifname: str, *, arp: bool, own: float) -> tuple[str, float]:
        """The pacing key of ``ifname`` and its interval for ARP (``arp``) or NA frames;
        ``own`` is the instance's interval, used when no group names the interface."""
        entry = self._groups.get(ifname)
        if entry is None:
            return f"if:{ifname}", own
        n, group = entry
        return f"group:{n}", group.garp_interval if arp else group.gna_interval

    def reserve(self, key: str, *, arp: bool, interval: float, n: int,
                now: float) -> list[float]:
        """Send times of ``n`` frames of one kind on ``key`` from ``now`` on."""
        if n <= 0:
            return []
        if interval <= 0:
            return [now] * n
        first = max(now, self._next.get((key, arp), now))
        times = [first + k * interval for k in range(n)]
        self._next[(key, arp)] = times[-1] + interval
        return times
