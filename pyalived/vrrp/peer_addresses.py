"""Peers whose adverts announce other addresses than ours: counted, not dropped, logged
once per change.

Theory of operation: RFC 3768 §7.1 (and RFC 5798 §7.1) let a receiver check
that the addresses an advert announces (its count, §5.3.5, and list,
§5.3.9) are the ones configured locally; a receiver that checks "MUST drop"
an advert that fails, unless it comes from the address owner.  keepalived
2.2.7 checks and drops, whatever the priority.  That turns any rolling
configuration change into a split brain: a master reloaded with one more
VIP is no longer heard by a backup that still has the old list, which
becomes MASTER too until it is reloaded in turn.  pyalived therefore lets an
advert whose *only* fault is its address list count for the election
(``pyalived.vrrp.instance``: authentication and the advert interval are
still checked), counts it in the ``pyalived_vrrp_peer_address_mismatches``
metric and warns once per change, so the drift is visible without costing
a VIP.  ``vrrp_strict`` gives keepalived's behaviour back: such adverts are
dropped (and counted as dropped, ``addr_count_mismatch`` or
``addr_list_mismatch``).  ``skip_check_adv_addr`` (default: the global
``vrrp_skip_check_adv_addr``) keeps keepalived's meaning: the addresses of
an advert from the master heard last are not checked at all.

This module decides what to *log*: one WARNING when a source starts
announcing a list that differs from ours, another when it announces a
different differing list (the peer was reconfigured, or we were), and one
INFO when its adverts match again.  Repeats of a known mismatch are quiet,
so the log shows each change once instead of a line a second.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

#: ``PacketError`` reasons meaning the advert announced other addresses than ours.
MISMATCH_REASONS = frozenset({"addr_count_mismatch", "addr_list_mismatch"})
#: Reasons ``verify``/``check_ah_sequence`` give only after the addresses matched.
CHECKED_AFTER_ADDRESSES = frozenset({"advert_int_mismatch", "ah_replay"})
#: Sources remembered per instance.
MAX_SOURCES = 32

IPAddress = IPv4Address | IPv6Address

# The addresses announced (sorted, duplicates kept) and ours (sorted).
_Key = tuple[tuple[IPAddress, ...], tuple[IPAddress, ...]]


@dataclass(frozen=True)
class Note:
    """A line to log: ``level`` is ``logging.WARNING`` or ``logging.INFO``."""

    level: int
    message: str


def _listing(addresses: Iterable[IPAddress]) -> str:
    return ", ".join(map(str, addresses)) or "none"


class PeerAddressWatch:
    """The last differing address list of each recently heard source of one instance."""

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self._max = max_sources
        self._seen: collections.OrderedDict[IPAddress, _Key] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def observe(
        self,
        src: IPAddress,
        announced: Iterable[IPAddress],
        local: Iterable[IPAddress],
        reason: str | None,
        counted: bool = False,
    ) -> Note | None:
        """Account for one advert from ``src``; the note to log, if any.

        ``reason`` is the ``PacketError.reason`` the advert was dropped for, or,
        if ``counted`` (it counted for the election), how its addresses
        differed; ``None`` if they did not.
        """
        if reason in MISMATCH_REASONS:
            return self._mismatch(src, tuple(announced), tuple(sorted(local)), reason, counted)
        if reason is None or reason in CHECKED_AFTER_ADDRESSES:
            return self._matched(src)
        return None

    def _mismatch(
        self,
        src: IPAddress,
        announced: tuple[IPAddress, ...],
        local: tuple[IPAddress, ...],
        reason: str,
        counted: bool,
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
        outcome = ("its adverts still count for the election" if counted else
                   "its adverts are dropped")
        return Note(
            logging.WARNING,
            f"{what} mismatch: {src} announces [{_listing(announced)}], "
            f"configured here [{_listing(local)}]; {outcome}",
        )

    def _matched(self, src: IPAddress) -> Note | None:
        if self._seen.pop(src, None) is None:
            return None
        return Note(logging.INFO, f"addresses announced by {src} match the configured ones again")
