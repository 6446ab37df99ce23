"""Prometheus metrics: collector over live state, failover histogram, HTTP server, lint."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path

import prometheus_client
import pytest
import trio

from pyalived.cli import DEFAULT_METRICS_LISTEN, UsageError, build_parser
from pyalived.config.model import VirtualIP, VrrpInstance
from pyalived.metrics import (
    DEFAULT_LISTEN,
    PROBE_BUCKETS,
    Metrics,
    ProbeDurations,
    handle_request,
    parse_listen,
    serve_metrics,
)
from pyalived.vrrp.counters import VrrpCounters
from pyalived.vrrp.fsm import State, StateChanged
from pyalived.vrrp.instance import StateListener
from pyalived.vrrp.tracking import InstanceTracking, Tracked


@dataclass
class FakeInstance:
    conf: VrrpInstance
    state: State = State.BACKUP
    tracking: InstanceTracking = field(default_factory=lambda: InstanceTracking(100))
    state_listeners: list[StateListener] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.conf.name


def conf(name: str = "VI_1", vrid: int = 51, vips: tuple[str, ...] = ("198.18.0.100/24",),
         **kw: object) -> VrrpInstance:
    return VrrpInstance(
        name=name, interface="eth0", virtual_router_id=vrid,
        virtual_ipaddress=tuple(VirtualIP(IPv4Interface(v)) for v in vips),
        **kw,  # type: ignore[arg-type]
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(*instances: FakeInstance) -> tuple[Metrics, VrrpCounters, Clock]:
    counters = VrrpCounters()
    clock = Clock()
    metrics = Metrics(counters, clock=clock, wall_clock=lambda: 1_700_000_000.0)
    metrics.attach(list(instances))
    return metrics, counters, clock


def value(metrics: Metrics, metric: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


L1 = {"iname": "VI_1", "intf": "eth0", "vrid": "51"}


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9165") == ("127.0.0.1", 9165)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen("none") is None
    assert parse_listen(DEFAULT_LISTEN) == ("127.0.0.1", 9165)
    for bad in ("9165", "localhost:9165", "1.2.3.4:0", "1.2.3.4:70000", "1.2.3.4:x", "[zz]:1"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_command_line_flag() -> None:
    parser = build_parser()
    assert DEFAULT_METRICS_LISTEN == DEFAULT_LISTEN
    assert parser.parse_args([]).metrics_listen == ("127.0.0.1", 9165)
    assert parser.parse_args(["--metrics-listen", "none"]).metrics_listen is None
    assert parser.parse_args(["--metrics-listen", "198.18.0.1:80"]).metrics_listen == (
        "198.18.0.1", 80)
    with pytest.raises(UsageError):
        parser.parse_args(["--metrics-listen", "nowhere"])


def test_state_per_virtual_address_read_at_scrape_time() -> None:
    inst = FakeInstance(conf(vips=("198.18.0.100/24", "198.18.0.101/32")))
    metrics, _, _ = make(inst)
    for ip in ("198.18.0.100/24", "198.18.0.101/32"):
        assert value(metrics, "keepalived_vrrp_state", **L1, ip_address=ip) == 1
    inst.state = State.MASTER
    assert value(metrics, "keepalived_vrrp_state", **L1, ip_address="198.18.0.100/24") == 2
    inst.state = State.FAULT
    assert value(metrics, "keepalived_vrrp_state", **L1, ip_address="198.18.0.101/32") == 3
    assert value(metrics, "keepalived_up") == 1


def test_vip_on_another_device_is_labelled_with_it() -> None:
    c = conf(vips=())
    c = VrrpInstance(**{**c.__dict__, "virtual_ipaddress": (
        VirtualIP(IPv4Interface("198.18.1.1/24"), dev="eth1"),)})
    metrics, _, _ = make(FakeInstance(c))
    assert value(metrics, "keepalived_vrrp_state", iname="VI_1", intf="eth1", vrid="51",
                 ip_address="198.18.1.1/24") == 1


def test_counters_follow_keepalived_exporter_names() -> None:
    inst = FakeInstance(conf())
    metrics, counters, _ = make(inst)
    counters.adverts_received["VI_1"] = 7
    counters.adverts_sent["VI_1"] = 3
    counters.transitions[("VI_1", "MASTER")] = 2
    counters.priority_zero_received["VI_1"] = 1
    counters.priority_zero_sent["VI_1"] = 4
    for reason, n in (("addr_count_mismatch", 1), ("addr_list_mismatch", 2),
                      ("auth_failure", 3), ("ah_replay", 1), ("auth_type_mismatch", 5),
                      ("advert_int_mismatch", 6)):
        counters.rx_error(reason, "VI_1")
        counters.instance_rx_errors[("VI_1", reason)] = n
    counters.rx_error("bad_ttl")
    counters.rx_error("bad_ttl")
    counters.rx_error("unknown_vrid")
    expected = {
        "keepalived_advertisements_received_total": 7,
        "keepalived_advertisements_sent_total": 3,
        "keepalived_become_master_total": 2,
        "keepalived_release_master_total": 2,  # not MASTER now: both were released
        "keepalived_priority_zero_received_total": 1,
        "keepalived_priority_zero_sent_total": 4,
        "keepalived_address_list_errors_total": 3,
        "keepalived_authentication_failure_total": 4,
        "keepalived_authentication_mismatch_total": 5,
        "keepalived_authentication_invalid_total": 0,
        "keepalived_advertisements_interval_errors_total": 6,
        "keepalived_ip_ttl_errors_total": 0,  # dropped before the VRID was known
        "keepalived_packet_length_errors_total": 0,
        "keepalived_invalid_type_received_total": 0,
        "keepalived_gratuitous_arp_delay_total": 5.0,
    }
    for name, want in expected.items():
        assert value(metrics, name, **L1) == want, name
    inst.state = State.MASTER
    assert value(metrics, "keepalived_release_master_total", **L1) == 1
    assert value(metrics, "pyalived_vrrp_packets_dropped_total", reason="bad_ttl") == 2
    assert value(metrics, "pyalived_vrrp_packets_dropped_total", reason="unknown_vrid") == 1
    assert value(metrics, "pyalived_vrrp_packets_dropped_total", reason="bad_checksum") == 0
    assert value(metrics, "pyalived_vrrp_instance_packets_dropped_total", **L1,
                 reason="auth_type_mismatch") == 5
    assert value(metrics, "pyalived_vrrp_transitions_total", **L1, state="MASTER") == 2
    assert value(metrics, "pyalived_vrrp_transitions_total", **L1, state="FAULT") == 0


def test_script_status() -> None:
    tracking = InstanceTracking(100, scripts=[Tracked("chk_up", 0), Tracked("chk_down", -20),
                                              Tracked("chk_new", 0)])
    tracking.update_script("chk_up", True)
    tracking.update_script("chk_down", False)
    metrics, _, _ = make(FakeInstance(conf(), tracking=tracking))
    assert value(metrics, "keepalived_script_status", name="chk_up") == 1
    assert value(metrics, "keepalived_script_status", name="chk_down") == 0
    assert value(metrics, "keepalived_script_status", name="chk_new") is None  # no result yet


def test_failover_duration_from_last_advert_heard_to_becoming_master() -> None:
    inst = FakeInstance(conf())
    metrics, counters, clock = make(inst)
    assert inst.state_listeners == [metrics.state_changed]
    counters.last_advert_received["VI_1"] = 96.35
    clock.now = 100.0
    for listener in inst.state_listeners:
        listener(inst, StateChanged(State.BACKUP, State.MASTER, "master down"))  # type: ignore[arg-type]
    assert value(metrics, "pyalived_failover_duration_seconds_count", **L1) == 1
    assert value(metrics, "pyalived_failover_duration_seconds_sum", **L1) == pytest.approx(3.65)
    assert value(metrics, "pyalived_failover_duration_seconds_bucket", **L1, le="3.0") == 0
    assert value(metrics, "pyalived_failover_duration_seconds_bucket", **L1, le="4.0") == 1


def test_no_failover_without_a_previous_master() -> None:
    inst = FakeInstance(conf())
    metrics, counters, _ = make(inst)
    metrics.state_changed(inst, StateChanged(State.BACKUP, State.MASTER, "alone"))
    counters.last_advert_received["VI_1"] = 50.0
    metrics.state_changed(inst, StateChanged(State.INIT, State.MASTER, "start"))
    metrics.state_changed(inst, StateChanged(State.FAULT, State.MASTER, "recovered"))
    assert value(metrics, "pyalived_failover_duration_seconds_count", **L1) is None


def test_reload_gauges() -> None:
    metrics, _, _ = make()
    assert value(metrics, "pyalived_reload_success") == 1
    assert value(metrics, "pyalived_reload_timestamp_seconds") == 1_700_000_000.0
    metrics._wall_clock = lambda: 1_700_000_100.0
    metrics.reloaded(False)
    assert value(metrics, "pyalived_reload_success") == 0
    assert value(metrics, "pyalived_reload_timestamp_seconds") == 1_700_000_000.0
    metrics.reloaded(True)
    assert value(metrics, "pyalived_reload_success") == 1
    assert value(metrics, "pyalived_reload_timestamp_seconds") == 1_700_000_100.0


def test_private_registries() -> None:
    a, _, _ = make(FakeInstance(conf()))
    b, _, _ = make(FakeInstance(conf(name="VI_2")))
    assert value(a, "keepalived_vrrp_state", **L1, ip_address="198.18.0.100/24") == 1
    assert value(b, "keepalived_vrrp_state", **L1, ip_address="198.18.0.100/24") is None
    assert prometheus_client.REGISTRY.get_sample_value("keepalived_up") is None


def _busy_metrics() -> Metrics:
    tracking = InstanceTracking(100, scripts=[Tracked("chk", 0)])
    tracking.update_script("chk", True)
    inst = FakeInstance(conf(), state=State.MASTER, tracking=tracking)
    other = FakeInstance(conf(name="VI_2", vrid=52, vips=("198.18.0.102/24",)))
    metrics, counters, _ = make(inst, other)
    counters.adverts_sent["VI_1"] = 10
    counters.transitions[("VI_1", "MASTER")] = 1
    counters.rx_error("bad_ttl")
    counters.rx_error("auth_failure", "VI_2")
    counters.last_advert_received["VI_1"] = 99.0
    metrics.state_changed(inst, StateChanged(State.BACKUP, State.MASTER, "x"))
    return metrics


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (apt: prometheus) missing")
def test_promtool_accepts_the_exposition(tmp_path: Path) -> None:
    body, content_type = _busy_metrics().render()
    assert content_type.startswith("text/plain")
    proc = subprocess.run(["promtool", "check", "metrics"], input=body,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.strip() == b"" and proc.stderr.strip() == b"", proc.stderr


def test_openmetrics_on_request() -> None:
    body, content_type = _busy_metrics().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


# ---- HTTP ----------------------------------------------------------------------


def test_handle_request() -> None:
    metrics = _busy_metrics()
    ok = handle_request(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*")
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"keepalived_vrrp_state{" in body
    assert handle_request(metrics, b"HEAD /metrics HTTP/1.1").endswith(b"\r\n\r\n")
    assert handle_request(metrics, b"GET /metrics?x=1 HTTP/1.1").startswith(b"HTTP/1.0 200")
    assert handle_request(metrics, b"GET /nope HTTP/1.1").startswith(b"HTTP/1.0 404")
    assert handle_request(metrics, b"POST /metrics HTTP/1.1").startswith(b"HTTP/1.0 405")
    assert handle_request(metrics, b"garbage").startswith(b"HTTP/1.0 400")


async def _fetch(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_server_on_loopback() -> None:
    metrics = _busy_metrics()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_metrics, metrics, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            response = await _fetch(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            assert response.startswith(b"HTTP/1.0 200 OK")
            assert b'keepalived_vrrp_state{iname="VI_1"' in response
            # Live: a change shows in the next scrape.
            metrics.counters.adverts_sent["VI_1"] = 11
            response = await _fetch(port, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert (b'keepalived_advertisements_sent_total{iname="VI_1",intf="eth0",vrid="51"}'
                    b" 11.0") in response
            huge = b"GET /metrics HTTP/1.0\r\n" + b"X: " + b"a" * 10000 + b"\r\n\r\n"
            assert (await _fetch(port, huge)).startswith(b"HTTP/1.0 431")
            # A client that connects and says nothing does not block others.
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            async with idle:
                response = await _fetch(port, b"GET / HTTP/1.0\r\n\r\n")
                assert response.startswith(b"HTTP/1.0 200")
            nursery.cancel_scope.cancel()


async def test_port_in_use_is_reported() -> None:
    metrics = _busy_metrics()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_metrics, metrics, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(OSError):
            await nursery.start(serve_metrics, metrics, "127.0.0.1", port)
        nursery.cancel_scope.cancel()


def test_probe_durations_render_like_a_prometheus_client_histogram() -> None:
    ours = prometheus_client.CollectorRegistry()
    durations = ProbeDurations(PROBE_BUCKETS)
    ours.register(durations)
    theirs = prometheus_client.CollectorRegistry()
    reference = prometheus_client.Histogram(
        "pyalived_checker_probe_seconds",
        "Duration of health-checker probes, by checker type",
        labelnames=["checker"],
        buckets=PROBE_BUCKETS,
        registry=theirs,
    )
    # on a bound (le is inclusive), between bounds, above all of them, zero, and
    # a clock step backwards (clamped to 0, as the checkers' hook always did)
    samples = [("TCP_CHECK", 0.001), ("TCP_CHECK", 0.0011), ("TCP_CHECK", 31.0),
               ("TCP_CHECK", 0.0), ("HTTP_GET", 1.0), ("HTTP_GET", 0.3), ("TCP_CHECK", -0.5)]
    for checker, seconds in samples:
        durations.observe(checker, seconds)
        reference.labels(checker).observe(max(0.0, seconds))

    def lines(registry: prometheus_client.CollectorRegistry) -> list[str]:
        text = prometheus_client.generate_latest(registry).decode()
        return sorted(line for line in text.splitlines() if "_created" not in line)

    assert lines(ours) == lines(theirs)
    bucket = 'pyalived_checker_probe_seconds_bucket{checker="TCP_CHECK",le="0.001"}'
    assert f"{bucket} 3.0" in lines(ours)
