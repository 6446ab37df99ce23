"""Reporting peers whose adverts announce other addresses than ours, once per change.

Theory of operation: RFC 3768 §7.1 lets a receiver check that the addresses
an advert announces (its count, §5.3.5, and list, §5.3.9) are the ones
configured locally; keepalived 2.2.7 drops an advert that fails and logs that
at its default level on every such advert.  pyalived drops them too and counts
them (``addr_count_mismatch``, ``addr_list_mismatch``); this module decides
what to *log*: one WARNING when a source starts announcing a list that differs
from ours, another when it announces a different differing list (the peer was
reconfigured, or we were), and one INFO when its adverts match again.  Repeats
of a known mismatch are quiet, so the log shows each change once instead of a
line a second.

``PeerAddressWatch`` is pure: ``observe`` takes one advert's outcome (its
source, the addresses it announced, our addresses and the reason ``verify``
gave, ``None`` if it passed) and returns the ``Note`` to log, if any; the
caller logs it.  ``packet.verify`` checks authentication first, then the
address count and list, then the advert interval, so an advert dropped for a
reason in ``CHECKED_AFTER_ADDRESSES`` (or accepted) did announce our
addresses, and one dropped for any earlier reason (a bad password, ...) tells
nothing: it neither warns nor clears a warning.

Memory is bounded: per instance it keeps, for at most ``MAX_SOURCES`` source
addresses, the last differing list seen (and the local list it was compared
with), dropping the least recently heard source first.  A flood of spoofed
sources therefore cannot grow it; a source that was forgotten warns again
when it comes back, which is still far less than keepalived's line per advert.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

#: ``PacketError`` reasons meaning the advert announced other addresses than ours.
MISMATCH_REASONS = frozenset({"addr_count_mismatch", "addr_list_mismatch"})
#: Reasons ``verify``/``check_ah_sequence`` give only after the addresses matched.
CHECKED_AFTER_ADDRESSES = frozenset({"advert_int_mismatch", "ah_replay"})
#: Sources remembered per instance.
MAX_SOURCES = 32

# The addresses announced (sorted, duplicates kept) and ours (sorted).
_Key = tuple[tuple[IPv4Address, ...], tuple[IPv4Address, ...]]


@dataclass(frozen=True)
class Note:
    """A line to log: ``level`` is ``logging.WARNING`` or ``logging.INFO``."""

    level: int
    message: str


def _listing(addresses: Iterable[IPv4Address]) -> str:
    return ", ".join(map(str, addresses)) or "none"


class PeerAddressWatch:
    """The last differing address list of each recently heard source of one instance."""

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self._max = max_sources
        self._seen: collections.OrderedDict[IPv4Address, _Key] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def observe(
        self,
        src: IPv4Address,
        announced: Iterable[IPv4Address],
        local: Iterable[IPv4Address],
        reason: str | None,
    ) -> Note | None:
        """Account for one advert from ``src``; the note to log, if any.

        ``reason`` is the ``PacketError.reason`` the advert was dropped for,
        or ``None`` if it was accepted.
        """
        if reason in MISMATCH_REASONS:
            return self._mismatch(src, tuple(announced), tuple(sorted(local)), reason)
        if reason is None or reason in CHECKED_AFTER_ADDRESSES:
            return self._matched(src)
        return None

    def _mismatch(
        self,
        src: IPv4Address,
        announced: tuple[IPv4Address, ...],
        local: tuple[IPv4Address, ...],
        reason: str,
    ) -> Note | None:
        key = (tuple(sorted(announced)), local)
        known = self._seen.get(src)
        self._seen[src] = key
        self._seen.move_to_end(src)
        if known == key:
            return None
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        what = "address count" if reason == "addr_count_mismatch" else "address list"
        return Note(
            logging.WARNING,
            f"{what} mismatch: {src} announces [{_listing(announced)}], "
            f"configured here [{_listing(local)}]",
        )

    def _matched(self, src: IPv4Address) -> Note | None:
        if self._seen.pop(src, None) is None:
            return None
        return Note(logging.INFO, f"addresses announced by {src} match the configured ones again")
