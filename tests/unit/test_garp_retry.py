"""Gratuitous ARPs survive a shortage of file descriptors: opened early, retried, logged once.

The instance runs on fake ports under trio's autojump clock; the GARP socket
factory below fails like a process out of descriptors (OSError EMFILE) a
given number of times, when opening the socket or when sending.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing

from pyalived.config.model import Config
from pyalived.vrrp.instance import GARP_RETRY_INTERVAL, GARP_RETRY_LIMIT
from tests.unit.fakes import FakeGarpSocket, FakeSocketFactory
from tests.unit.test_instance import (
    MASTER_DOWN_90,
    PEER,
    VIP,
    Rig,
    advert_from,
    instance_conf,
    running,
)


class ShortOfDescriptors(FakeSocketFactory):
    """The first ``open_failures`` opens and ``send_failures`` bursts fail with ``error``."""

    def __init__(self, open_failures: int = 0, send_failures: int = 0,
                 error: int = errno.EMFILE) -> None:
        super().__init__()
        self.open_failures = open_failures
        self.send_failures = send_failures
        self.error = error
        self.opens: list[float] = []  # when open_garp was called
        self.failed_sends: list[float] = []

    def open_garp(self, ifname: str) -> FakeGarpSocket:
        self.opens.append(trio.current_time())
        if self.open_failures:
            self.open_failures -= 1
            raise OSError(self.error, os.strerror(self.error))
        sock = FlakyGarpSocket(self, ifname)
        self.garp[ifname] = sock
        return sock


class FlakyGarpSocket(FakeGarpSocket):
    def __init__(self, factory: ShortOfDescriptors, ifname: str) -> None:
        super().__init__(ifname)
        self.factory = factory

    def send_garp(self, ips: Sequence[IPv4Address], count: int) -> None:
        if self.factory.send_failures:
            self.factory.send_failures -= 1
            self.factory.failed_sends.append(trio.current_time())
            raise OSError(self.factory.error, os.strerror(self.factory.error))
        super().send_garp(ips, count)


def rig_with(factory: ShortOfDescriptors) -> Rig:
    rig = Rig()
    rig.sockets = rig.ports.sockets = factory
    return rig


CONFIG = Config(vrrp_instances=(instance_conf(),))


async def test_the_garp_socket_is_open_before_the_first_failover(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = ShortOfDescriptors()
    async with running(rig_with(factory), CONFIG) as (_, (inst,), start):
        assert inst.state.name == "BACKUP"
        assert factory.opens == [start]  # at start-up, not when a failover needs it
        await trio.sleep(MASTER_DOWN_90 + 0.1)
        assert inst.state.name == "MASTER"
        assert factory.opens == [start]  # no new descriptor for the failover


async def test_a_burst_failing_for_lack_of_resources_is_retried_and_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pyalived.vrrp")
    factory = ShortOfDescriptors(send_failures=3)
    rig = rig_with(factory)
    async with running(rig, CONFIG) as (_, _instances, start):
        await trio.sleep(MASTER_DOWN_90 + 6.0)
        sent = [(g.time - start, g.ips, g.count) for g in factory.garp["eth0"].sent]
        failed = [t - start for t in factory.failed_sends]
        adverts = [s.time - start for s in rig.sent()]
    md = MASTER_DOWN_90
    assert failed == [md, md + GARP_RETRY_INTERVAL, md + 2 * GARP_RETRY_INTERVAL]
    assert sent == [
        (md + 3 * GARP_RETRY_INTERVAL, (VIP.ip,), 5),  # the first burst, at its 4th attempt
        (md + 5.0, (VIP.ip,), 5),  # the second, garp_master_delay after the takeover
    ]
    assert adverts[:6] == [md + k for k in range(6)]  # retries do not disturb the adverts
    assert rig.counters.tx_errors["VI_1"] == 3
    assert rig.counters.garps_sent["VI_1"] == 10
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in errors] == [
        "(VI_1) sending gratuitous ARP on eth0 failed: [Errno 24] Too many open files "
        f"(internal error; retrying every {GARP_RETRY_INTERVAL:g} s)"
    ]
    assert errors[0].exc_info is None
    assert "(VI_1) gratuitous ARP on eth0 sent at attempt 4" in caplog.messages


async def test_a_socket_that_cannot_be_opened_is_opened_by_a_retry(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    factory = ShortOfDescriptors(open_failures=2)
    async with running(rig_with(factory), CONFIG) as (_, _instances, start):
        await trio.sleep(MASTER_DOWN_90 + 1.0)
        sent = [g.time - start for g in factory.garp["eth0"].sent]
    md = MASTER_DOWN_90
    # at start-up (failed, warned), at the takeover (failed), then the retry
    assert [t - start for t in factory.opens] == [0.0, md, md + GARP_RETRY_INTERVAL]
    assert sent == [md + GARP_RETRY_INTERVAL]
    assert "(VI_1) cannot open the gratuitous ARP socket on eth0 yet: " \
        "[Errno 24] Too many open files" in caplog.messages


async def test_other_errors_are_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    factory = ShortOfDescriptors(send_failures=1, error=errno.ENETDOWN)
    async with running(rig_with(factory), CONFIG) as (_, _instances, start):
        await trio.sleep(MASTER_DOWN_90 + 6.0)
        sent = [g.time - start for g in factory.garp["eth0"].sent]
    assert [t - start for t in factory.failed_sends] == [MASTER_DOWN_90]
    assert sent == [MASTER_DOWN_90 + 5.0]  # only the second burst


async def test_retries_end_with_mastership_or_after_the_limit(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    factory = ShortOfDescriptors(send_failures=10_000)
    rig = rig_with(factory)
    async with running(rig, CONFIG) as (_, (inst,), start):
        await trio.sleep(MASTER_DOWN_90 + 20.0)
        md = MASTER_DOWN_90
        # two bursts (takeover, garp_master_delay later), each tried GARP_RETRY_LIMIT times
        first = [t - start for t in factory.failed_sends if t - start < md + 5.0]
        assert first == [md + k * GARP_RETRY_INTERVAL for k in range(10)]
        assert len(factory.failed_sends) == 2 * GARP_RETRY_LIMIT
        assert len([m for m in caplog.messages if "giving up" in m]) == 2
        # a new takeover, then a higher priority peer: retries stop with mastership
        inst.force_state(inst.state.BACKUP, "test")
        await trio.sleep(MASTER_DOWN_90 + 0.75)  # between two retries
        assert inst.state.name == "MASTER"
        tried = len(factory.failed_sends)
        for _ in range(10):  # the peer goes on advertising
            rig.inject(advert_from(PEER, 200))
            await trio.sleep(0.01)
            assert inst.state.name == "BACKUP"
            await trio.sleep(0.99)
        assert len(factory.failed_sends) == tried
