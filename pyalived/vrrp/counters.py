"""The VRRP half's counters.

Theory of operation: one ``VrrpCounters`` per VRRP half, created by whoever
runs it (the daemon, the supervisor for the families it serves, or a test)
and handed to the runtime.  The receivers (``pyalived.vrrp.demux``) and the
instance drivers (``pyalived.vrrp.instance``) increment it as things happen;
nothing here computes anything.  The metrics exporter (``pyalived.metrics``)
and the statistics dumps (``pyalived.dump``) read it when asked, so counting
costs one dictionary update and no export work.  Counters keyed by instance
use the instance's name, as the exported labels do.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass
class VrrpCounters:
    """Counters read by the metrics exporter."""

    rx_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    instance_rx_errors: collections.Counter[tuple[str, str]] = field(
        default_factory=collections.Counter
    )
    adverts_received: collections.Counter[str] = field(default_factory=collections.Counter)
    # (instance, reason): adverts whose addresses differ, let through for the election
    address_mismatches: collections.Counter[tuple[str, str]] = field(
        default_factory=collections.Counter
    )
    adverts_sent: collections.Counter[str] = field(default_factory=collections.Counter)
    garps_sent: collections.Counter[str] = field(default_factory=collections.Counter)
    transitions: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    tx_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    priority_zero_received: collections.Counter[str] = field(default_factory=collections.Counter)
    priority_zero_sent: collections.Counter[str] = field(default_factory=collections.Counter)
    # trio time of each instance's last accepted advert (failover duration metric)
    last_advert_received: dict[str, float] = field(default_factory=dict)

    def rx_error(self, reason: str, instance: str | None = None) -> None:
        self.rx_errors[reason] += 1
        if instance is not None:
            self.instance_rx_errors[(instance, reason)] += 1
