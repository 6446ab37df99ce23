"""Prometheus metrics: a collector over the live daemon, served over HTTP by trio.

Theory of operation: nothing is copied into metric objects as things
happen.  ``Metrics`` owns a private ``CollectorRegistry`` (never the
process-global one) holding ``VrrpCollector``, which reads the daemon's own
state at scrape time: the ``VrrpCounters`` the VRRP driver increments and
each instance's current state and tracking.  The only pushed values are the
failover-duration histogram, observed by a state listener when an instance
goes from BACKUP to MASTER, and the reload gauges, set by whoever reloads.

Names and labels follow the keepalived exporter most dashboards use
(mehdy/keepalived-exporter): ``keepalived_vrrp_state{iname,intf,vrid,
ip_address}`` with 0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT, one series per
virtual address; per-instance counters labelled ``{iname,intf,vrid}``
(advertisements, master transitions, the RFC 3768 §7.1 receive-error
classes, priority-0 adverts); ``keepalived_script_status{name}`` (1 GOOD,
0 BAD) and ``keepalived_up``.  Errors found before the VRID is known (TTL,
length, type, checksum: the structural checks of §7.1) cannot be charged to
an instance, so keepalived's per-instance TTL/length/type counters only count
what reached the instance; the complete picture is
``pyalived_vrrp_packets_dropped_total{reason}``, one series per drop reason.
``pyalived_failover_duration_seconds`` measures, on the node taking over,
the time from the last advert heard from the old master to its own first
advert as MASTER; the driver executes that advert and the state change in
one uninterrupted batch, so the listener's clock reading is that moment.

The LVS half (``Metrics.lvs``, a ``pyalived.checkers.service.LvsService``) is read the same
way: ``pyalived_real_server_up`` and ``pyalived_real_server_weight`` per
real server as the checkers see it (the weight a ``misc_dynamic`` check
set), ``pyalived_lvs_quorum_up`` per virtual server, ``pyalived_ipvs_dest_weight``
per destination of the IPVS entries pyalived owns, and ``pyalived_ipvs_available``
(0 when the kernel has no IPVS).  keepalived exporters publish no health-checker
series, hence the ``pyalived_`` names.  The kernel's traffic statistics of
the owned services and of every real server in them use the names of
gen2brain/keepalived_exporter: ``keepalived_lvs_vip_{conn,in_packets,
out_packets,in_bytes,out_bytes}`` and ``keepalived_lvs_rs_...`` (counters, so
exposed with ``_total``), labelled ``service`` (e.g. ``TCP 198.18.0.1:80``,
``FWM 7``), ``addr`` (the virtual service's ``IP:PORT`` or mark, or the real
server's ``IP:PORT``) and ``proto``; the kernel's rate estimates and the
real servers' active/inactive/persistent connection counts are gauges
``pyalived_ipvs_{vip,rs}_*``.  Those are read from the kernel at scrape time:
the HTTP server awaits ``Metrics.refresh`` (the dump runs in the IPVS worker
thread, one read serves every scrape for a second) before rendering.
``pyalived_checker_probe_seconds`` is a histogram of probe durations by
checker type, fed by the checker scheduler's ``on_probe_done`` hook.

The HTTP side (``serve_metrics``) is a deliberately small HTTP/1.0 server
on trio: one request per connection, GET or HEAD of ``/metrics``, bounded
request size.  Rendering happens on the event loop itself, so the collector
reads the counters without locks or threads; only the IPVS statistics need
I/O, done beforehand by ``Metrics.refresh``.

The port must not be a way to starve the daemon (its file descriptors above
all, which the checkers, gratuitous ARPs and netlink need too), so every
cost of a client is bounded:

* At most ``MAX_CONNECTIONS`` connections are served at once.  One accepted
  beyond that is refused on the spot -- a best-effort ``503`` and closed, in
  the accept loop itself, without a task -- never queued, so the server
  holds at most ``MAX_CONNECTIONS + 1`` descriptors besides its listeners,
  however many clients connect.
* A client has ``REQUEST_HEAD_TIMEOUT`` seconds from the accept to send its
  whole request head (at most ``MAX_REQUEST`` bytes), and every connection
  is closed ``CONNECTION_TIMEOUT`` seconds after the accept, whatever it is
  doing (a slow reader of the response included).  Idle and "slowloris"
  connections thus free their slot within seconds, and a scrape retried
  after that succeeds even while they keep coming.
* ``accept`` failing for lack of resources (EMFILE, ENFILE, ENOBUFS,
  ENOMEM: something else exhausted them) pauses the accept loop for
  ``ACCEPT_RETRY_DELAY`` and is logged through a ``LogThrottle`` without a
  traceback, as are refusals: at most one line per ``LOG_INTERVAL``.

``HttpStats`` counts what happened (open, refused, timed-out connections,
accept errors); ``HttpCollector`` exports it as ``pyalived_metrics_http_*``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from socket import AF_INET6
from typing import Protocol

import trio
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pyalived import __version__
from pyalived.checkers.spec import CheckerSpec
from pyalived.config.model import VrrpInstance
from pyalived.ipvs.genl import Stats
from pyalived.ipvs.model import Protocol as IpvsProtocol
from pyalived.ipvs.model import ServiceKey, Table
from pyalived.ipvs.netlink import ServiceDump
from pyalived.limits import LogThrottle, is_resource_exhaustion
from pyalived.vrrp.fsm import State, StateChanged
from pyalived.vrrp.packet import DROP_REASONS
from pyalived.vrrp.tracking import InstanceTracking

log = logging.getLogger("pyalived.metrics")

DEFAULT_LISTEN = "127.0.0.1:9165"
METRICS_PATH = "/metrics"
MAX_REQUEST = 8192  # bytes of request head accepted
#: Connections served at once; one more is refused (503, closed), never queued.
MAX_CONNECTIONS = 16
#: Seconds from the accept to the end of the request head (idle and slow clients go).
REQUEST_HEAD_TIMEOUT = 3.0
#: Seconds a connection may last in all: request head, IPVS refresh, response.
CONNECTION_TIMEOUT = 10.0
REFRESH_TIMEOUT = 5.0  # seconds a scrape waits for fresh IPVS statistics
#: Seconds the accept loop pauses after ``accept`` failed for lack of resources.
ACCEPT_RETRY_DELAY = 0.5
#: Seconds between two log lines about refusals, or about accept errors.
LOG_INTERVAL = 10.0

#: Drop reasons of the driver besides the codec's.
DRIVER_DROP_REASONS = ("unknown_vrid", "queue_full")

#: keepalived exporter counter -> the drop reasons it sums.
_INSTANCE_ERRORS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("keepalived_packet_length_errors", "Received adverts with a bad length",
     ("truncated", "bad_length")),
    ("keepalived_advertisements_interval_errors",
     "Received adverts whose interval differs from the local one", ("advert_int_mismatch",)),
    ("keepalived_ip_ttl_errors", "Received adverts with a TTL other than 255", ("bad_ttl",)),
    ("keepalived_invalid_type_received", "Received VRRP packets of a type other than advert",
     ("bad_type",)),
    ("keepalived_address_list_errors",
     "Received adverts whose addresses differ from the local ones",
     ("addr_count_mismatch", "addr_list_mismatch")),
    ("keepalived_authentication_invalid", "Received adverts with an unknown authentication type",
     ()),
    ("keepalived_authentication_mismatch",
     "Received adverts whose authentication type differs from the local one",
     ("auth_type_mismatch",)),
    ("keepalived_authentication_failure", "Received adverts failing authentication",
     ("auth_failure", "ah_replay")),
)

PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

FAILOVER_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0)

_VRRP_LABELS = ["iname", "intf", "vrid"]


class InstanceView(Protocol):
    """What the collector reads of a VRRP instance (``pyalived.vrrp.instance.Instance``)."""

    conf: VrrpInstance
    tracking: InstanceTracking

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> State: ...


class CountersView(Protocol):
    """What the collector reads of ``pyalived.vrrp.counters.VrrpCounters``."""

    @property
    def rx_errors(self) -> dict[str, int]: ...
    @property
    def instance_rx_errors(self) -> dict[tuple[str, str], int]: ...
    @property
    def address_mismatches(self) -> dict[tuple[str, str], int]: ...
    @property
    def adverts_received(self) -> dict[str, int]: ...
    @property
    def adverts_sent(self) -> dict[str, int]: ...
    @property
    def garps_sent(self) -> dict[str, int]: ...
    @property
    def transitions(self) -> dict[tuple[str, str], int]: ...
    @property
    def tx_errors(self) -> dict[str, int]: ...
    @property
    def priority_zero_received(self) -> dict[str, int]: ...
    @property
    def priority_zero_sent(self) -> dict[str, int]: ...
    @property
    def last_advert_received(self) -> dict[str, float]: ...


class RealServerView(Protocol):
    """What the collector reads of one real server
    (``pyalived.checkers.service.RealServerState``)."""

    virtual_server: str
    alive: bool
    weight: int

    @property
    def real_server(self) -> object: ...  # str() gives "IP:PORT"


class LvsView(Protocol):
    """What the collector reads of the LVS half (``pyalived.checkers.service.LvsService``)."""

    def real_servers(self) -> Sequence[RealServerView]: ...
    def quorum_by_block(self) -> Mapping[str, bool]: ...
    @property
    def owned(self) -> Table: ...
    @property
    def ipvs_unavailable(self) -> str | None: ...
    @property
    def ipvs_stats(self) -> Mapping[ServiceKey, ServiceDump]: ...
    async def refresh_ipvs_stats(self) -> None: ...


def parse_listen(value: str) -> tuple[str, int] | None:
    """``ADDR:PORT`` or ``[V6ADDR]:PORT`` -> (host, port); ``none`` -> None."""
    text = value.strip()
    if text.lower() in ("none", "off", ""):
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected ADDR:PORT or 'none', got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"expected an IP address in {value!r}") from None
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid port in {value!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid port in {value!r}")
    return host, port


def _labels(inst: InstanceView) -> list[str]:
    return [inst.name, inst.conf.interface, str(inst.conf.virtual_router_id)]


class VrrpCollector(Collector):
    """Reads counters and instances at scrape time."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def collect(self) -> Iterable[Metric]:
        owner = self._owner
        counters = owner.counters
        instances = owner.instances

        state = GaugeMetricFamily(
            "keepalived_vrrp_state",
            "VRRP state per virtual address: 0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT",
            labels=["iname", "intf", "vrid", "ip_address"],
        )
        for inst in instances:
            for vip in inst.conf.virtual_ipaddress:
                state.add_metric(
                    [inst.name, vip.dev or inst.conf.interface,
                     str(inst.conf.virtual_router_id), str(vip.address)],
                    int(inst.state),
                )
        yield state

        def per_instance(name: str, doc: str, value: Callable[[InstanceView], float]
                         ) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=_VRRP_LABELS)
            for inst in instances:
                family.add_metric(_labels(inst), value(inst))
            return family

        yield per_instance("keepalived_advertisements_received",
                           "Valid adverts received",
                           lambda i: counters.adverts_received.get(i.name, 0))
        yield per_instance("keepalived_advertisements_sent", "Adverts sent",
                           lambda i: counters.adverts_sent.get(i.name, 0))
        yield per_instance("keepalived_become_master", "Transitions to MASTER",
                           lambda i: counters.transitions.get((i.name, "MASTER"), 0))
        # MASTER can only be left, so every entry but a current one was released.
        yield per_instance(
            "keepalived_release_master", "Transitions out of MASTER",
            lambda i: counters.transitions.get((i.name, "MASTER"), 0)
            - (1 if i.state is State.MASTER else 0))
        def errors(reasons: tuple[str, ...]) -> Callable[[InstanceView], float]:
            # keepalived counts every advert whose addresses differ: those pyalived lets
            # through for the election too
            return lambda i: sum(counters.instance_rx_errors.get((i.name, r), 0)
                                 + counters.address_mismatches.get((i.name, r), 0)
                                 for r in reasons)

        for name, doc, reasons in _INSTANCE_ERRORS:
            yield per_instance(name, doc, errors(reasons))
        yield per_instance("keepalived_priority_zero_received",
                           "Priority-0 adverts received (a master stepping down)",
                           lambda i: counters.priority_zero_received.get(i.name, 0))
        yield per_instance("keepalived_priority_zero_sent",
                           "Priority-0 adverts sent",
                           lambda i: counters.priority_zero_sent.get(i.name, 0))
        yield per_instance("keepalived_gratuitous_arp_delay",
                           "Configured garp_master_delay in seconds (as keepalived exporters "
                           "report it)",
                           lambda i: i.conf.garp_master_delay)

        scripts: dict[str, bool | None] = {}
        for inst in instances:
            for name in inst.tracking.script_names:
                ok = inst.tracking.script_ok(name)
                if scripts.get(name) is None:
                    scripts[name] = ok
        status = GaugeMetricFamily("keepalived_script_status",
                                   "Tracked script result: 1 GOOD, 0 BAD", labels=["name"])
        for name, ok in sorted(scripts.items()):
            if ok is not None:
                status.add_metric([name], 1 if ok else 0)
        yield status

        # pyalived's own
        dropped = CounterMetricFamily(
            "pyalived_vrrp_packets_dropped",
            "Received VRRP datagrams dropped, by reason", labels=["reason"])
        for reason in (*DROP_REASONS, *DRIVER_DROP_REASONS):
            dropped.add_metric([reason], counters.rx_errors.get(reason, 0))
        for reason, count in sorted(counters.rx_errors.items()):
            if reason not in DROP_REASONS and reason not in DRIVER_DROP_REASONS:
                dropped.add_metric([reason], count)
        yield dropped
        inst_dropped = CounterMetricFamily(
            "pyalived_vrrp_instance_packets_dropped",
            "Adverts for an instance's VRID dropped by its checks, by reason",
            labels=[*_VRRP_LABELS, "reason"])
        by_name = {inst.name: inst for inst in instances}
        for (iname, reason), count in sorted(counters.instance_rx_errors.items()):
            owner_inst = by_name.get(iname)
            if owner_inst is not None:
                inst_dropped.add_metric([*_labels(owner_inst), reason], count)
        yield inst_dropped
        mismatched = CounterMetricFamily(
            "pyalived_vrrp_peer_address_mismatches",
            "Adverts announcing other addresses than the instance's that still counted for"
            " the election (without vrrp_strict), by reason",
            labels=[*_VRRP_LABELS, "reason"])
        for (iname, reason), count in sorted(counters.address_mismatches.items()):
            owner_inst = by_name.get(iname)
            if owner_inst is not None:
                mismatched.add_metric([*_labels(owner_inst), reason], count)
        yield mismatched
        yield per_instance("pyalived_vrrp_garps_sent", "Gratuitous ARP frames sent",
                           lambda i: counters.garps_sent.get(i.name, 0))
        yield per_instance("pyalived_vrrp_send_errors", "Adverts or GARPs that failed to send",
                           lambda i: counters.tx_errors.get(i.name, 0))
        transitions = CounterMetricFamily(
            "pyalived_vrrp_transitions", "State transitions, by new state",
            labels=[*_VRRP_LABELS, "state"])
        for inst in instances:
            for st in State:
                transitions.add_metric([*_labels(inst), st.name],
                                       counters.transitions.get((inst.name, st.name), 0))
        yield transitions


class DaemonCollector(Collector):
    """What belongs to the daemon as a whole: liveness, version, the last reload."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def collect(self) -> Iterable[Metric]:
        owner = self._owner
        up = GaugeMetricFamily("keepalived_up", "Whether the daemon is running (always 1)")
        up.add_metric([], 1)
        yield up
        info = GaugeMetricFamily("pyalived_build_info", "pyalived version (value 1)",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        reload_ts = GaugeMetricFamily(
            "pyalived_reload_timestamp_seconds",
            "Unix time the configuration was last applied (start or reload)")
        reload_ts.add_metric([], owner.reload_timestamp)
        yield reload_ts
        reload_ok = GaugeMetricFamily(
            "pyalived_reload_success", "Whether the last configuration load succeeded (1) or not")
        reload_ok.add_metric([], 1 if owner.reload_success else 0)
        yield reload_ok


class ProbeDurations(Collector):
    """``pyalived_checker_probe_seconds``: probe durations by checker type.

    prometheus_client's ``Histogram`` takes a lock and walks its buckets in
    Python on every observation, which at thousands of probes a second costs
    a good part of a probe.  Here an observation is a bisection and two
    additions (scrapes render on the event loop, so no lock is needed), and
    the counts are turned into the usual cumulative histogram when scraped.
    """

    NAME = "pyalived_checker_probe_seconds"

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = tuple(sorted(buckets))
        self._le = [repr(float(b)) for b in self._bounds] + ["+Inf"]  # "0.001", "1.0"
        self._counts: dict[str, list[int]] = {}  # per bucket, not cumulative; last: above all
        self._sums: dict[str, float] = {}

    def observe(self, checker: str, seconds: float) -> None:
        counts = self._counts.get(checker)
        if counts is None:
            counts = self._counts[checker] = [0] * len(self._le)
            self._sums[checker] = 0.0
        seconds = max(0.0, seconds)
        counts[bisect_left(self._bounds, seconds)] += 1  # le: the bound is inclusive
        self._sums[checker] += seconds

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for checker in sorted(self._counts):
            cumulative = list(accumulate(self._counts[checker]))
            family.add_metric(
                [checker], list(zip(self._le, cumulative, strict=True)), self._sums[checker]
            )
        return [family]

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            self.NAME, "Duration of health-checker probes, by checker type", labels=["checker"]
        )


class LvsCollector(Collector):
    """Reads the health checkers' view and the owned IPVS entries at scrape time."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def collect(self) -> Iterable[Metric]:
        lvs = self._owner.lvs
        if lvs is None:
            return
        labels = ["virtual_server", "real_server"]
        up = GaugeMetricFamily("pyalived_real_server_up",
                               "Real server health from its checkers: 1 alive, 0 down",
                               labels=labels)
        weight = GaugeMetricFamily("pyalived_real_server_weight",
                                   "Real server weight as its checkers set it (misc_dynamic)",
                                   labels=labels)
        for rs in lvs.real_servers():
            key = [rs.virtual_server, str(rs.real_server)]
            up.add_metric(key, 1 if rs.alive else 0)
            weight.add_metric(key, rs.weight)
        yield up
        yield weight
        quorum = GaugeMetricFamily("pyalived_lvs_quorum_up",
                                   "Whether a virtual server has its quorum (1) or not (0)",
                                   labels=["virtual_server"])
        for name, ok in sorted(lvs.quorum_by_block().items()):
            quorum.add_metric([name], 1 if ok else 0)
        yield quorum
        dests = GaugeMetricFamily("pyalived_ipvs_dest_weight",
                                  "Weight of each destination of the IPVS services pyalived owns",
                                  labels=["service", "dest"])
        for skey, entry in sorted(lvs.owned.items(), key=lambda kv: kv[0].sort_key()):
            for dkey, dest in sorted(entry.dests.items(), key=lambda kv: kv[0].sort_key()):
                dests.add_metric([str(skey), str(dkey)], dest.weight)
        yield dests
        avail = GaugeMetricFamily("pyalived_ipvs_available",
                                  "Whether the kernel's IPVS table is in use (0: no IPVS)")
        avail.add_metric([], 0 if lvs.ipvs_unavailable else 1)
        yield avail
        yield from _ipvs_stats(lvs.ipvs_stats, lvs.owned)


#: (kernel statistic, name part, help text) of the counters, as keepalived_exporter names them.
_STAT_COUNTERS = (
    ("conns", "conn", "connections scheduled"),
    ("inpkts", "in_packets", "incoming packets"),
    ("outpkts", "out_packets", "outgoing packets"),
    ("inbytes", "in_bytes", "incoming bytes"),
    ("outbytes", "out_bytes", "outgoing bytes"),
)
#: (kernel statistic, name part, help text) of the kernel's rate estimates.
_STAT_RATES = (
    ("cps", "connections_per_second", "connections per second"),
    ("inpps", "in_packets_per_second", "incoming packets per second"),
    ("outpps", "out_packets_per_second", "outgoing packets per second"),
    ("inbps", "in_bytes_per_second", "incoming bytes per second"),
    ("outbps", "out_bytes_per_second", "outgoing bytes per second"),
)
_IPVS_LABELS = ["service", "addr", "proto"]


def service_labels(key: ServiceKey) -> tuple[str, str]:
    """(addr, proto) labels of a service: ``IP:PORT`` and TCP/UDP/SCTP, or the mark and FWM."""
    if key.fwmark:
        return str(key.fwmark), "FWM" if key.family != AF_INET6 else "FWM6"
    host = f"[{key.address}]" if key.family == AF_INET6 else str(key.address)
    return f"{host}:{key.port}", IpvsProtocol(key.protocol).name


def _ipvs_stats(dumps: Mapping[ServiceKey, ServiceDump], owned: Table) -> Iterator[Metric]:
    """Kernel statistics of the owned services and of every destination in them."""
    vip_counters = [
        (field, CounterMetricFamily(f"keepalived_lvs_vip_{part}",
                                    f"IPVS virtual service: {text}", labels=_IPVS_LABELS))
        for field, part, text in _STAT_COUNTERS
    ]
    rs_counters = [
        (field, CounterMetricFamily(f"keepalived_lvs_rs_{part}",
                                    f"IPVS real server: {text}", labels=_IPVS_LABELS))
        for field, part, text in _STAT_COUNTERS
    ]
    vip_rates = [
        (field, GaugeMetricFamily(f"pyalived_ipvs_vip_{part}",
                                  f"IPVS virtual service: {text} (kernel estimate)",
                                  labels=_IPVS_LABELS))
        for field, part, text in _STAT_RATES
    ]
    rs_rates = [
        (field, GaugeMetricFamily(f"pyalived_ipvs_rs_{part}",
                                  f"IPVS real server: {text} (kernel estimate)",
                                  labels=_IPVS_LABELS))
        for field, part, text in _STAT_RATES
    ]
    active = GaugeMetricFamily("pyalived_ipvs_rs_active_connections",
                               "IPVS real server: active connections", labels=_IPVS_LABELS)
    inactive = GaugeMetricFamily("pyalived_ipvs_rs_inactive_connections",
                                 "IPVS real server: inactive connections", labels=_IPVS_LABELS)
    persistent = GaugeMetricFamily("pyalived_ipvs_rs_persistent_connections",
                                   "IPVS real server: persistence templates",
                                   labels=_IPVS_LABELS)

    def add(families: list[tuple[str, CounterMetricFamily]] | list[tuple[str, GaugeMetricFamily]],
            labels: list[str], stats: Stats) -> None:
        for field, family in families:
            family.add_metric(labels, getattr(stats, field))

    for skey in sorted(dumps, key=ServiceKey.sort_key):
        if skey not in owned:
            continue  # released since the last read
        dump = dumps[skey]
        name = str(skey)
        addr, proto = service_labels(skey)
        add(vip_counters, [name, addr, proto], dump.stats)
        add(vip_rates, [name, addr, proto], dump.stats)
        for dkey in sorted(dump.dests, key=lambda k: k.sort_key()):
            info = dump.dests[dkey]
            labels = [name, str(dkey), proto]
            add(rs_counters, labels, info.stats)
            add(rs_rates, labels, info.stats)
            active.add_metric(labels, info.active_conns)
            inactive.add_metric(labels, info.inactive_conns)
            persistent.add_metric(labels, info.persist_conns)
    for _, counter in (*vip_counters, *rs_counters):
        yield counter
    for _, gauge in (*vip_rates, *rs_rates):
        yield gauge
    yield active
    yield inactive
    yield persistent


@dataclass
class HttpStats:
    """What the metrics server saw, kept by ``serve_metrics``."""

    open: int = 0  # connections being served now
    refused: int = 0  # refused at the MAX_CONNECTIONS bound
    timed_out: int = 0  # closed at REQUEST_HEAD_TIMEOUT or CONNECTION_TIMEOUT
    accept_errors: int = 0  # accept failed for lack of resources (EMFILE, ...)


class HttpCollector(Collector):
    """The metrics server's own health (``HttpStats``)."""

    def __init__(self, stats: HttpStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats
        open_ = GaugeMetricFamily("pyalived_metrics_http_connections",
                                  "Connections the metrics server is serving")
        open_.add_metric([], stats.open)
        yield open_
        for name, doc, value in (
            ("pyalived_metrics_http_refused",
             f"Connections refused because {MAX_CONNECTIONS} were being served", stats.refused),
            ("pyalived_metrics_http_timeouts",
             "Connections closed at the request-head or connection deadline", stats.timed_out),
            ("pyalived_metrics_http_accept_errors",
             "Failed accepts for lack of resources (file descriptors, memory)",
             stats.accept_errors),
        ):
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], value)
            yield counter


#: The families a process can serve: ``daemon`` (liveness, version, reload),
#: ``vrrp``, ``lvs`` (checkers and IPVS) and ``http`` (the metrics server itself).
#: One process serves them all, or each half serves its own and the supervisor
#: the rest (``pyalived.supervisor``); either way every series appears once.
ALL_PARTS = frozenset({"daemon", "vrrp", "lvs", "http"})


class Metrics:
    """The daemon's metrics: a private registry, the collectors and the pushed values."""

    def __init__(
        self,
        counters: CountersView,
        *,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
        parts: frozenset[str] = ALL_PARTS,
    ) -> None:
        self.counters = counters
        self.instances: Sequence[InstanceView] = ()
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._wall_clock = wall_clock
        self.reload_timestamp = wall_clock()
        self.reload_success = True
        if "daemon" in parts:
            self.registry.register(DaemonCollector(self))
        self.failover = Histogram(
            "pyalived_failover_duration_seconds",
            "From the last advert heard from the old master to this node's first advert "
            "as MASTER",
            labelnames=_VRRP_LABELS,
            buckets=FAILOVER_BUCKETS,
            registry=self.registry if "vrrp" in parts else None,
        )
        if "vrrp" in parts:
            self.registry.register(VrrpCollector(self))
        self.lvs: LvsView | None = None
        self.probe_seconds = ProbeDurations(PROBE_BUCKETS)
        if "lvs" in parts:
            self.registry.register(self.probe_seconds)
            self.registry.register(LvsCollector(self))
        self.http = HttpStats()
        if "http" in parts:
            self.registry.register(HttpCollector(self.http))

    def observe_probe(self, spec: CheckerSpec, seconds: float, ok: bool) -> None:
        """Checker hook (``ProbeDoneObserver``): one probe took ``seconds``."""
        self.probe_seconds.observe(spec.kind, seconds)

    def attach(self, instances: Sequence[InstanceView]) -> None:
        """Report on ``instances`` from now on (call once VRRP has built them)."""
        self.instances = tuple(instances)
        for inst in self.instances:
            listeners = getattr(inst, "state_listeners", None)
            if listeners is not None:
                listeners.append(self.state_changed)

    def state_changed(self, inst: InstanceView, change: StateChanged) -> None:
        """State listener: observe a failover when a backup takes over."""
        if change.old is not State.BACKUP or change.new is not State.MASTER:
            return
        heard = self.counters.last_advert_received.get(inst.name)
        if heard is None:
            return
        self.failover.labels(*_labels(inst)).observe(max(0.0, self._clock() - heard))

    def reloaded(self, success: bool) -> None:
        """Record a configuration reload (for the reload code to call)."""
        self.reload_success = success
        if success:
            self.reload_timestamp = self._wall_clock()

    async def refresh(self, accept: str = "") -> None:
        """Bring scrape-time data that needs I/O up to date (the IPVS statistics).

        ``accept`` is the scrape's Accept header (the format ``render`` will use).

        Awaited by the HTTP server before it renders; waits at most
        ``REFRESH_TIMEOUT`` for the IPVS worker, else the last read is shown.
        """
        lvs = self.lvs
        if lvs is not None:
            with trio.move_on_after(REFRESH_TIMEOUT):
                await lvs.refresh_ipvs_stats()

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header: (body, content type)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


# ---- HTTP --------------------------------------------------------------------


def _response(status: str, content_type: str, body: bytes, *, head: bool = False) -> bytes:
    header = (
        f"HTTP/1.0 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return header if head else header + body


def handle_request(metrics: Metrics, request: bytes) -> bytes:
    """One raw HTTP request head -> one raw response (pure; the server's core)."""
    try:
        head = request.decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        method, target, _version = request_line.split(" ", 2)
    except ValueError:
        return _response("400 Bad Request", "text/plain", b"bad request\n")
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", "text/plain", b"method not allowed\n")
    path = target.split("?", 1)[0]
    if path == METRICS_PATH:
        body, content_type = metrics.render(headers.get("accept", ""))
        return _response("200 OK", content_type, body, head=method == "HEAD")
    if path == "/":
        body = b'<html><body><a href="/metrics">metrics</a></body></html>\n'
        return _response("200 OK", "text/html", body, head=method == "HEAD")
    return _response("404 Not Found", "text/plain", b"not found\n", head=method == "HEAD")


def _accept(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "accept":
            return value.strip()
    return ""


def _is_metrics_request(head: bytes) -> bool:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    return len(parts) == 3 and parts[0] in (b"GET", b"HEAD") and (
        parts[1].split(b"?", 1)[0] == METRICS_PATH.encode())


_REFUSED = _response("503 Service Unavailable", "text/plain", b"too many connections\n")


async def _serve_connection(metrics: Metrics, stream: trio.abc.Stream, stats: HttpStats) -> None:
    """One request and its response, within ``REQUEST_HEAD_TIMEOUT``/``CONNECTION_TIMEOUT``."""
    with trio.move_on_after(CONNECTION_TIMEOUT) as whole:
        buf = b""
        with trio.move_on_after(REQUEST_HEAD_TIMEOUT) as head:
            while b"\r\n\r\n" not in buf and len(buf) <= MAX_REQUEST:
                data = await stream.receive_some(4096)
                if not data:
                    break
                buf += data
        if head.cancelled_caught:
            stats.timed_out += 1
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end > MAX_REQUEST:
            if len(buf) <= MAX_REQUEST:
                return  # the client went away
            response = _response("431 Request Header Fields Too Large", "text/plain",
                                 b"request too large\n")
        else:
            if _is_metrics_request(buf[:end]):
                await metrics.refresh(_accept(buf[:end]))
            response = handle_request(metrics, buf[:end])
        await stream.send_all(response)
    if whole.cancelled_caught:
        stats.timed_out += 1


def _refuse(stream: trio.SocketStream) -> None:
    """Best-effort 503 without waiting (a fresh socket's send buffer is empty), then close."""
    sock = stream.socket
    try:
        os.write(sock.fileno(), _REFUSED)
    except OSError:
        pass
    sock.close()


async def serve_metrics(
    metrics: Metrics,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``metrics`` on http://host:port/metrics until cancelled.

    Reports the listeners as started (``port`` 0 picks a free port).  See
    the module docstring for the bounds on connections and their time.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    stats = metrics.http
    refusals = LogThrottle(log, LOG_INTERVAL, trio.current_time)
    accept_errors = LogThrottle(log, LOG_INTERVAL, trio.current_time)

    async def handler(stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await _serve_connection(metrics, stream, stats)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("metrics connection: %s", exc)
        finally:
            stats.open -= 1

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if not is_resource_exhaustion(exc):
                        raise
                    stats.accept_errors += 1
                    accept_errors.log(
                        logging.ERROR,
                        "metrics: accept failed: %s (internal error); pausing %g s",
                        os.strerror(exc.errno or 0), ACCEPT_RETRY_DELAY)
                    await trio.sleep(ACCEPT_RETRY_DELAY)
                    continue
                if stats.open >= MAX_CONNECTIONS:
                    stats.refused += 1
                    _refuse(stream)
                    refusals.log(logging.WARNING,
                                 "metrics: connection refused, %d already open (the limit)",
                                 MAX_CONNECTIONS)
                    continue  # (accept is a checkpoint: a flood does not starve other tasks)
                stats.open += 1
                nursery.start_soon(handler, stream)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, nursery)
        task_status.started(listeners)
