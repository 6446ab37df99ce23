"""Failover timing in the trio driver: adverts count from their arrival, timers wake exactly.

Under trio's MockClock with fake ports: a socket that reports arrival times
(``TimedAdvertSocket``) makes the backup's Master_Down timer run from the
advert's arrival, not from when the instance handled it; every deadline the
instance waits for is posted to the ``Wakeup`` port.  The pure
``DeadlineBook`` and the kernel-stamp arithmetic of ``pyalived.vrrp.net`` are
tested directly, and ``TimerfdWakeup`` once against the real kernel.
"""

from __future__ import annotations

import math
import socket
import struct
from collections.abc import Callable, Hashable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface

import trio
import trio.testing

from pyalived.config.model import Config, VirtualIP, VrrpInstance
from pyalived.vrrp import packet
from pyalived.vrrp.counters import VrrpCounters
from pyalived.vrrp.fsm import State
from pyalived.vrrp.instance import Instance
from pyalived.vrrp.net import MAX_RX_AGE, SO_TIMESTAMPNS, arrival_age
from pyalived.vrrp.ports import TimedAdvertSocket
from pyalived.vrrp.runtime import VrrpPorts, run_vrrp
from pyalived.vrrp.wakeup import DeadlineBook, TimerfdWakeup
from tests.unit.fakes import (
    FakeAddressManager,
    FakeAdvertSocket,
    FakeLinkWatcher,
    FakeScriptRunner,
    FakeSocketFactory,
    FakeVmacManager,
)

PRIMARY = IPv4Address("198.18.0.11")
PEER = IPv4Address("198.18.0.12")
GROUP = IPv4Address("224.0.0.18")
VIP = VirtualIP(IPv4Interface("198.18.0.100/24"))
MASTER_DOWN_90 = 3 + (256 - 90) / 256  # RFC 3768 §6.1
SKEW_90 = (256 - 90) / 256


class TimedFakeSocket(FakeAdvertSocket):
    """A fake advert socket whose datagrams carry an arrival time."""

    def __init__(self, ifname: str = "eth0", proto: int = 112) -> None:
        super().__init__(ifname, proto)
        self._timed_tx, self._timed_rx = trio.open_memory_channel[tuple[bytes, float]](math.inf)

    async def receive_timed(self) -> tuple[bytes, float]:
        return await self._timed_rx.receive()

    def inject_at(self, datagram: bytes, at: float) -> None:
        self._timed_tx.send_nowait((datagram, at))


class TimedFactory(FakeSocketFactory):
    def open_advert(self, ifname: str, proto: int) -> TimedFakeSocket:
        sock = TimedFakeSocket(ifname, proto)
        self.advert[(ifname, proto)] = sock
        return sock


class RecordingWakeup:
    def __init__(self, fallback: float = 0.0) -> None:
        self.fallback = fallback
        self.calls: list[tuple[Hashable, float | None]] = []

    def wake_at(self, owner: Hashable, deadline: float | None) -> None:
        self.calls.append((owner, deadline))

    def pending(self) -> dict[Hashable, float]:
        latest: dict[Hashable, float | None] = {}
        for owner, deadline in self.calls:
            latest[owner] = deadline
        return {o: d for o, d in latest.items() if d is not None}


def owned_by(owner: Hashable, inst: Instance) -> bool:
    return getattr(owner, "__self__", None) is inst


def advert_from(src: IPv4Address, priority: int) -> bytes:
    advert = packet.Advert(vrid=51, priority=priority, advert_int=1, addresses=(VIP.ip,))
    return packet.build_datagram(src, GROUP, advert)


def conf() -> Config:
    inst = VrrpInstance(
        name="VI_1",
        interface="eth0",
        virtual_router_id=51,
        priority=90,
        advert_int=1.0,
        virtual_ipaddress=(VIP,),
    )
    return Config(vrrp_instances=(replace(inst),))


def ports(factory: FakeSocketFactory, wakeup: RecordingWakeup | None = None) -> VrrpPorts:
    return VrrpPorts(
        sockets=factory,
        addresses=FakeAddressManager(),
        vmac=FakeVmacManager(),
        links=FakeLinkWatcher(),
        scripts=FakeScriptRunner(),
        primary_ip=lambda ifname: PRIMARY,
        wakeup=wakeup,
    )


def first_advert_time(factory: FakeSocketFactory) -> float:
    return factory.advert[("eth0", packet.VRRP_PROTO)].sent[0].time


def test_fake_satisfies_the_timed_protocol() -> None:
    assert isinstance(TimedFakeSocket(), TimedAdvertSocket)
    assert not isinstance(FakeAdvertSocket(), TimedAdvertSocket)


async def test_master_down_runs_from_the_adverts_arrival(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = TimedFactory()
    async with trio.open_nursery() as nursery:
        (inst,) = await nursery.start(run_vrrp, conf(), ports(factory), VrrpCounters())
        sock = factory.advert[("eth0", packet.VRRP_PROTO)]
        assert isinstance(sock, TimedFakeSocket)
        await trio.sleep(1.0)
        arrived = trio.current_time() - 0.004  # it waited 4 ms before being read
        sock.inject_at(advert_from(PEER, 100), arrived)
        await trio.sleep(MASTER_DOWN_90 + 0.5)
        assert inst.state is State.MASTER
        assert first_advert_time(factory) == arrived + MASTER_DOWN_90
        nursery.cancel_scope.cancel()


async def test_priority_zero_skew_runs_from_arrival(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = TimedFactory()
    async with trio.open_nursery() as nursery:
        (inst,) = await nursery.start(run_vrrp, conf(), ports(factory), VrrpCounters())
        sock = factory.advert[("eth0", packet.VRRP_PROTO)]
        assert isinstance(sock, TimedFakeSocket)
        await trio.sleep(1.0)
        sock.inject_at(advert_from(PEER, 100), trio.current_time())
        await trio.sleep(1.0)
        arrived = trio.current_time() - 0.002
        sock.inject_at(advert_from(PEER, 0), arrived)
        await trio.sleep(SKEW_90 + 0.1)
        assert inst.state is State.MASTER
        assert first_advert_time(factory) == arrived + SKEW_90
        nursery.cancel_scope.cancel()


async def test_an_advert_never_counts_from_before_the_machine_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = TimedFactory()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        (inst,) = await nursery.start(run_vrrp, conf(), ports(factory), VrrpCounters())
        sock = factory.advert[("eth0", packet.VRRP_PROTO)]
        assert isinstance(sock, TimedFakeSocket)
        # A stamp from long before the start (a stepped wall clock): as of the start.
        sock.inject_at(advert_from(PEER, 100), start - 100.0)
        await trio.sleep(MASTER_DOWN_90 + 0.5)
        assert inst.state is State.MASTER
        assert first_advert_time(factory) == start + MASTER_DOWN_90
        nursery.cancel_scope.cancel()


async def test_untimed_socket_counts_from_the_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = FakeSocketFactory()
    async with trio.open_nursery() as nursery:
        (inst,) = await nursery.start(run_vrrp, conf(), ports(factory), VrrpCounters())
        await trio.sleep(1.0)
        read = trio.current_time()
        factory.advert[("eth0", packet.VRRP_PROTO)].inject(advert_from(PEER, 100))
        await trio.sleep(MASTER_DOWN_90 + 0.5)
        assert inst.state is State.MASTER
        assert first_advert_time(factory) == read + MASTER_DOWN_90
        nursery.cancel_scope.cancel()


async def test_deadlines_are_posted_to_the_wakeup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = TimedFactory()
    wakeup = RecordingWakeup()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        instances: list[Instance] = await nursery.start(
            run_vrrp, conf(), ports(factory, wakeup), VrrpCounters()
        )
        (inst,) = instances
        await trio.sleep(MASTER_DOWN_90 + 1.5)
        assert inst.state is State.MASTER
        nursery.cancel_scope.cancel()
    deadlines = [d for owner, d in wakeup.calls if owned_by(owner, inst)]
    # Master_Down, then the Adver_Timer ticks; the stop withdraws the last one.
    assert deadlines[0] == start + MASTER_DOWN_90
    assert start + MASTER_DOWN_90 + 1.0 in deadlines
    assert start + MASTER_DOWN_90 + 2.0 in deadlines
    assert deadlines[-1] is None


def test_deadline_book_gives_the_earliest_pending() -> None:
    book = DeadlineBook()
    assert book.next(0.0) is None
    book.set("a", 5.0)
    book.set("b", 3.0)
    assert book.next(0.0) == 3.0
    book.set("b", 7.0)  # superseded: a's 5.0 is now the earliest
    assert book.next(0.0) == 5.0
    book.set("a", None)  # withdrawn
    assert book.next(0.0) == 7.0
    assert book.next(7.0) is None  # due at 7.0: done
    assert len(book) == 0
    book.set("c", math.inf)  # no timer
    assert book.next(0.0) is None


def test_deadline_book_drops_past_deadlines_and_keeps_owners_apart() -> None:
    book = DeadlineBook()
    book.set("a", 1.0)
    book.set("b", 2.0)
    book.set("a", 1.0)  # unchanged: no duplicate
    assert book.next(1.5) == 2.0
    assert len(book) == 1
    book.set("a", 4.0)
    assert book.next(2.0) == 4.0
    assert book.next(4.5) is None


def _stamp(sec: int, nsec: int) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, SO_TIMESTAMPNS, struct.pack("@qq", sec, nsec))]


def test_arrival_age_from_the_kernel_stamp() -> None:
    assert math.isclose(arrival_age(_stamp(1000, 250_000_000), 1000.252), 0.002, abs_tol=1e-9)
    assert arrival_age([], 1000.0) == 0.0  # no stamp: arrived now
    assert arrival_age(_stamp(1000, 0), 999.0) == 0.0  # wall clock stepped back
    assert arrival_age(_stamp(1000, 0), 2000.0) == MAX_RX_AGE  # stepped forward
    other = [(socket.IPPROTO_IP, 8, b"\0" * 16)]
    assert arrival_age(other, 1000.0) == 0.0


async def test_timerfd_wakeup_fires_and_rearms() -> None:
    """Against the real kernel and clock: posted deadlines fire the timerfd, which re-arms."""
    wakeup = TimerfdWakeup()
    called: list[float] = []

    def owner() -> None:
        called.append(trio.current_time())

    async def until(pred: Callable[[], bool]) -> None:
        with trio.fail_after(10):
            while not pred():
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        wakeup.wake_at("early", trio.current_time() + 0.05)  # before run: kept
        await nursery.start(wakeup.run)
        assert wakeup.fallback > 0
        await until(lambda: wakeup.expirations >= 1)
        deadline = trio.current_time() + 0.05
        wakeup.wake_at(owner, deadline)
        assert wakeup.armed_for == deadline
        await until(lambda: bool(called))
        assert called[0] >= deadline  # called once due, never before
        assert wakeup.expirations >= 2
        wakeup.wake_at("b", trio.current_time() + 0.05)
        wakeup.wake_at("b", None)  # withdrawn: at most a spurious wake
        later = trio.current_time() + 10.0
        wakeup.wake_at("c", later)
        await until(lambda: wakeup.armed_for == later)
        assert called == called[:1]
        nursery.cancel_scope.cancel()
    assert wakeup.armed_for is None
    assert wakeup.fallback == 0.0


async def test_the_wakeups_call_ends_the_wait_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a wake-up port the instance waits for its call, the trio deadline is the fallback."""
    factory = TimedFactory()
    wakeup = RecordingWakeup(fallback=0.5)

    async def call_when_due() -> None:
        while True:
            await trio.sleep(0.001)
            for owner, deadline in wakeup.pending().items():
                if deadline <= trio.current_time():
                    wakeup.wake_at(owner, None)
                    assert callable(owner)
                    owner()

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        (inst,) = await nursery.start(run_vrrp, conf(), ports(factory, wakeup), VrrpCounters())
        caller = trio.CancelScope()

        async def caller_task() -> None:
            with caller:
                await call_when_due()

        nursery.start_soon(caller_task)
        await trio.sleep(MASTER_DOWN_90 + 0.1)
        assert inst.state is State.MASTER
        # woken by the call (polled every ms), not by the fallback half a second later
        assert first_advert_time(factory) < start + MASTER_DOWN_90 + 0.01
        assert first_advert_time(factory) >= start + MASTER_DOWN_90
        caller.cancel()
        # without calls, the next Adver_Timer tick comes at the fallback
        sock = factory.advert[("eth0", packet.VRRP_PROTO)]
        count = len(sock.sent)
        await trio.sleep(1.6)
        assert len(sock.sent) == count + 1
        assert math.isclose(sock.sent[-1].time - sock.sent[-2].time, 1.0 + 0.5)
        nursery.cancel_scope.cancel()


def test_deadline_book_pops_due_owners() -> None:
    book = DeadlineBook()
    book.set("a", 1.0)
    book.set("b", 2.0)
    book.set("c", 3.0)
    book.set("c", None)
    assert book.pop_due(2.0) == ["a", "b"]
    assert book.pop_due(5.0) == []
