"""IPVS statistics in the metrics: read at scrape time through the worker, cached for a second."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Collection
from ipaddress import IPv6Address
from pathlib import Path
from socket import AF_INET6

import pytest
import trio
import trio.testing

from pyalived.ipvs.genl import DestInfo, Stats
from pyalived.ipvs.model import DestKey, ServiceKey
from pyalived.ipvs.netlink import ServiceDump
from pyalived.metrics import Metrics, serve_metrics, service_labels
from pyalived.vrrp.counters import VrrpCounters

from .test_lvs_service import VIP, A, B, FakeKernel, Rig, config, rs_block, running, vs_text

FOREIGN = ServiceKey.inet("198.18.0.50", 80)


class StatsKernel(FakeKernel):
    """The fake table, with made-up statistics: service i gets conns=100+i, dest j 10+j."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[float, frozenset[ServiceKey] | None]] = []
        self.bump = 0

    def dump_detailed(
        self, keys: Collection[ServiceKey] | None = None
    ) -> dict[ServiceKey, ServiceDump]:
        self.reads.append((trio.current_time(), None if keys is None else frozenset(keys)))
        out = {}
        for i, (skey, entry) in enumerate(sorted(self.table.items(),
                                                 key=lambda kv: kv[0].sort_key())):
            if keys is not None and skey not in keys:
                continue
            dests = {
                dkey: DestInfo(d, active_conns=j + 1, inactive_conns=j + 2, persist_conns=0,
                               stats=Stats(10 + j + self.bump, 20, 30, 4000, 5000, 1, 2, 3, 4, 5))
                for j, (dkey, d) in enumerate(sorted(entry.dests.items(),
                                                     key=lambda kv: kv[0].sort_key()))
            }
            out[skey] = ServiceDump(entry.service,
                                    Stats(100 + i + self.bump, 200, 300, 2**40, 7, 6, 5, 4, 3, 2),
                                    dests)
        return out


def stats_rig() -> tuple[Rig, StatsKernel]:
    kernel = StatsKernel()
    return Rig(kernel), kernel


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_service_labels() -> None:
    assert service_labels(VIP) == ("198.18.0.1:80", "TCP")
    assert service_labels(ServiceKey.mark(7)) == ("7", "FWM")
    assert service_labels(ServiceKey.mark(7, AF_INET6)) == ("7", "FWM6")
    v6 = ServiceKey.inet(IPv6Address("2001:db8::1"), 53)
    assert service_labels(v6) == ("[2001:db8::1]:53", "TCP")


async def test_stats_are_read_for_owned_services_and_cached_for_a_second(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig, kernel = stats_rig()
    svc = rig.service(config(tmp_path, vs_text(rs_block(A), rs_block(B))))
    async with running(svc):
        # Someone else's service is in the kernel too; it is never read.
        kernel.table[FOREIGN] = kernel.table[VIP]
        await trio.sleep_until(5)
        await svc.refresh_ipvs_stats()
        await trio.sleep_until(5.5)
        await svc.refresh_ipvs_stats()  # served from the read at 5
        assert svc.ipvs_stats[VIP].stats.conns == 100  # VIP sorts before FOREIGN
        kernel.bump = 1000
        await trio.sleep_until(6)
        await svc.refresh_ipvs_stats()
        assert kernel.reads == [(5, frozenset({VIP})), (6, frozenset({VIP}))]
        assert svc.ipvs_stats[VIP].stats.conns == 1100
        assert {k: d.active_conns for k, d in svc.ipvs_stats[VIP].dests.items()} == {A: 1, B: 2}
        # Concurrent scrapes share one read.
        await trio.sleep_until(8)
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(svc.refresh_ipvs_stats)
        assert [t for t, _ in kernel.reads] == [5, 6, 8]


async def test_kernel_without_statistics_yields_no_series(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig()  # plain FakeKernel: no dump_detailed
    metrics = Metrics(VrrpCounters(), wall_clock=lambda: 1_700_000_000.0)
    svc = rig.service(config(tmp_path, vs_text(rs_block(A))))
    metrics.lvs = svc
    async with running(svc):
        await metrics.refresh()
        assert svc.ipvs_stats == {}
        body, _ = metrics.render()
        assert b"keepalived_lvs_vip_conn_total{" not in body


async def test_collector_series(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    rig, _ = stats_rig()
    metrics = Metrics(VrrpCounters(), wall_clock=lambda: 1_700_000_000.0)
    svc = rig.service(config(tmp_path, vs_text(rs_block(A), rs_block(B))))
    metrics.lvs = svc
    async with running(svc):
        await metrics.refresh()
        vip = {"service": "TCP 198.18.0.1:80", "addr": "198.18.0.1:80", "proto": "TCP"}
        ra = {"service": "TCP 198.18.0.1:80", "addr": str(A), "proto": "TCP"}
        rb = {"service": "TCP 198.18.0.1:80", "addr": str(B), "proto": "TCP"}
        assert _value(metrics, "keepalived_lvs_vip_conn_total", **vip) == 100
        assert _value(metrics, "keepalived_lvs_vip_in_packets_total", **vip) == 200
        assert _value(metrics, "keepalived_lvs_vip_out_packets_total", **vip) == 300
        assert _value(metrics, "keepalived_lvs_vip_in_bytes_total", **vip) == 2**40
        assert _value(metrics, "keepalived_lvs_vip_out_bytes_total", **vip) == 7
        assert _value(metrics, "pyalived_ipvs_vip_connections_per_second", **vip) == 6
        assert _value(metrics, "pyalived_ipvs_vip_out_bytes_per_second", **vip) == 2
        assert _value(metrics, "keepalived_lvs_rs_conn_total", **ra) == 10
        assert _value(metrics, "keepalived_lvs_rs_conn_total", **rb) == 11
        assert _value(metrics, "keepalived_lvs_rs_in_bytes_total", **rb) == 4000
        assert _value(metrics, "keepalived_lvs_rs_out_bytes_total", **rb) == 5000
        assert _value(metrics, "pyalived_ipvs_rs_in_packets_per_second", **rb) == 2
        assert _value(metrics, "pyalived_ipvs_rs_active_connections", **rb) == 2
        assert _value(metrics, "pyalived_ipvs_rs_inactive_connections", **rb) == 3
        assert _value(metrics, "pyalived_ipvs_rs_persistent_connections", **rb) == 0
        # A service released since the last read is not reported from the stale read.
        rig.prober.set(A, False)
        await svc.apply(config(tmp_path, vs_text(rs_block(A)).replace(
            "198.18.0.1 80", "198.18.0.1 8080")))
        assert VIP in svc.ipvs_stats and VIP not in svc.owned
        assert _value(metrics, "keepalived_lvs_vip_conn_total", **vip) is None
        body, _ = metrics.render()
        if shutil.which("promtool") is not None:
            proc = subprocess.run(["promtool", "check", "metrics"], input=body,
                                  capture_output=True, timeout=60)
            assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
            assert proc.stdout.strip() == b"" and proc.stderr.strip() == b"", proc.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (apt: prometheus) missing")
async def test_promtool_accepts_the_ipvs_series(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig, _ = stats_rig()
    metrics = Metrics(VrrpCounters(), wall_clock=lambda: 1_700_000_000.0)
    svc = rig.service(config(tmp_path, vs_text(rs_block(A), rs_block(B))))
    metrics.lvs = svc
    async with running(svc):
        await metrics.refresh()
        body, _ = metrics.render()
    assert b'keepalived_lvs_rs_conn_total{addr="198.18.0.3:80"' in body
    proc = subprocess.run(["promtool", "check", "metrics"], input=body,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.strip() == b"" and proc.stderr.strip() == b"", proc.stderr


async def _get(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_a_scrape_reads_the_statistics_first(tmp_path: Path) -> None:
    rig, kernel = stats_rig()
    metrics = Metrics(VrrpCounters(), wall_clock=lambda: 1_700_000_000.0)
    svc = rig.service(config(tmp_path, vs_text(rs_block(A))))
    metrics.lvs = svc
    with trio.fail_after(30):
        async with running(svc), trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_metrics, metrics, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            assert (await _get(port, b"GET / HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 200")
            assert kernel.reads == []  # only /metrics reads the kernel
            response = await _get(port, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert len(kernel.reads) == 1
            assert (b'keepalived_lvs_rs_conn_total{addr="198.18.0.2:80",proto="TCP",'
                    b'service="TCP 198.18.0.1:80"} 10.0') in response
            nursery.cancel_scope.cancel()


def test_dest_keys_in_labels() -> None:
    assert str(DestKey(IPv6Address("2001:db8::2"), 80)) == "[2001:db8::2]:80"
