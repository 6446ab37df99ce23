"""The supervisor's plumbing: message framing, merged metrics, each half's config."""

from __future__ import annotations

import socket
import struct
from ipaddress import ip_address

import pytest
import trio

from pyalived.config.model import Config, VirtualServer
from pyalived.ipc import Link, LinkClosed
from pyalived.metrics import Metrics
from pyalived.supervisor import CHECKERS, VRRP, SupervisorMetrics, half_config
from pyalived.vrrp.counters import VrrpCounters
from tests.unit.test_instance import instance_conf


async def test_messages_of_any_size_cross_intact_and_in_order() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    big = b"x" * (20 * 1024 * 1024)  # the metrics text of a very large director
    left, right = Link(a), Link(b)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send, ("metrics", 1, big, "text/plain"))
        assert await right.receive() == ("metrics", 1, big, "text/plain")
    await left.send(("notify", {"READY": 1}))
    await left.send(("notify", {"WATCHDOG": 1}))
    assert await right.receive() == ("notify", {"READY": 1})
    assert await right.receive() == ("notify", {"WATCHDOG": 1})
    await left.aclose()
    assert await right.receive() is None  # the other process is gone


async def test_a_frame_cut_short_or_absurd_is_an_error() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(struct.pack("!Q", 100) + b"short")
    a.close()
    with pytest.raises(LinkClosed):
        await Link(b).receive()
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    c.sendall(struct.pack("!Q", 1 << 40))
    with pytest.raises(LinkClosed):
        await Link(d).receive()
    c.close()


async def test_read_ahead_bytes_survive_a_new_wrapper() -> None:
    """Between two trio runs the supervisor wraps the same socket anew."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender = Link(a)
    await sender.send("first")
    await sender.send("second")
    first = Link(b)
    assert await first.receive() == "first"
    second = Link(b, first.detach())
    assert await second.receive() == "second"


class FakeSupervisor:
    def __init__(self, bodies: list[bytes]) -> None:
        self.bodies = bodies
        self.asked: list[str] = []

    async def children_metrics(self, accept: str) -> list[bytes]:
        self.asked.append(accept)
        return self.bodies


def child_text(parts: frozenset[str], accept: str) -> bytes:
    return Metrics(VrrpCounters(), parts=parts).render(accept)[0]


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
async def test_the_parent_serves_every_family_once_in_the_asked_format(accept: str) -> None:
    children = [child_text(frozenset({"vrrp"}), accept), child_text(frozenset({"lvs"}), accept)]
    fake = FakeSupervisor(children)
    merged = SupervisorMetrics(fake)  # type: ignore[arg-type]
    await merged.refresh(accept)
    body, content_type = merged.render(accept)
    whole, whole_type = Metrics(VrrpCounters()).render(accept)
    assert content_type == whole_type and fake.asked == [accept]
    families = [line.split()[2] for line in body.decode().splitlines()
                if line.startswith("# TYPE ")]
    assert len(families) == len(set(families))
    assert sorted(families) == sorted(
        line.split()[2] for line in whole.decode().splitlines() if line.startswith("# TYPE "))
    if "openmetrics" in accept:
        assert body.count(b"# EOF\n") == 1 and body.endswith(b"# EOF\n")


def test_each_half_gets_only_its_part_of_the_config() -> None:
    vs = VirtualServer.__new__(VirtualServer)  # the VRRP half never looks inside
    config = Config(vrrp_instances=(instance_conf(),), virtual_servers=(vs,))
    assert half_config(VRRP, config).virtual_servers == ()
    assert half_config(VRRP, config).vrrp_instances == config.vrrp_instances
    assert half_config(CHECKERS, config).vrrp_instances == ()
    assert half_config(CHECKERS, config).virtual_servers == (vs,)


def test_the_checker_half_gets_the_track_files_its_file_checks_name() -> None:
    from pyalived.config.model import FileCheck, RealServer, TrackFile

    rs = RealServer(ip_address("198.18.0.2"), 80, file_checks=(FileCheck("drain"),))
    vs = VirtualServer(ip_address("198.18.0.1"), 80, real_servers=(rs,))
    files = (TrackFile("drain", "/run/drain"), TrackFile("vrrp_only", "/run/x"))
    config = Config(virtual_servers=(vs,), track_files=files)
    assert half_config(CHECKERS, config).track_files == files[:1]
    assert half_config(VRRP, config).track_files == files
