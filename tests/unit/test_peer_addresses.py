"""A peer's differing address list is logged once per change, not once per advert."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing

from pyalived.config.model import Config
from pyalived.vrrp import packet
from pyalived.vrrp.peer_addresses import MAX_SOURCES, Note, PeerAddressWatch
from tests.unit.test_instance import PEER, VIP, Rig, advert_from, instance_conf, running

A = IPv4Address("198.18.0.100")
B = IPv4Address("198.18.0.101")
C = IPv4Address("198.18.0.102")
LOCAL = frozenset({A, B})
SRC = IPv4Address("198.18.0.12")
OTHER = IPv4Address("198.18.0.13")


def levels(notes: list[Note | None]) -> list[int | None]:
    return [n.level if n else None for n in notes]


# --------------------------------------------------------------------------- the watch


def test_one_warning_per_change_of_the_peer_list() -> None:
    watch = PeerAddressWatch()
    notes = [watch.observe(SRC, (A, C), LOCAL, "addr_list_mismatch") for _ in range(5)]
    assert levels(notes) == [logging.WARNING, None, None, None, None]
    first = notes[0]
    assert first is not None
    assert str(SRC) in first.message and "198.18.0.100, 198.18.0.102" in first.message
    assert "198.18.0.100, 198.18.0.101" in first.message

    # The peer is reconfigured: another list, another warning, then quiet again.
    notes = [watch.observe(SRC, (A,), LOCAL, "addr_count_mismatch") for _ in range(3)]
    assert levels(notes) == [logging.WARNING, None, None]
    assert notes[0] is not None and "address count mismatch" in notes[0].message


def test_order_alone_is_no_change() -> None:
    watch = PeerAddressWatch()
    assert watch.observe(SRC, (A, C), LOCAL, "addr_list_mismatch") is not None
    assert watch.observe(SRC, (C, A), LOCAL, "addr_list_mismatch") is None


def test_matching_again_is_noted_once_and_a_new_mismatch_warns() -> None:
    watch = PeerAddressWatch()
    watch.observe(SRC, (A, C), LOCAL, "addr_list_mismatch")
    back = watch.observe(SRC, (A, B), LOCAL, None)
    assert back is not None and back.level == logging.INFO and str(SRC) in back.message
    assert watch.observe(SRC, (A, B), LOCAL, None) is None
    assert len(watch) == 0
    assert watch.observe(SRC, (A, C), LOCAL, "addr_list_mismatch") is not None


def test_a_source_that_always_matched_is_never_noted() -> None:
    watch = PeerAddressWatch()
    assert watch.observe(SRC, (A, B), LOCAL, None) is None
    assert watch.observe(SRC, (A, B), LOCAL, "advert_int_mismatch") is None


def test_a_change_of_the_local_list_warns_again() -> None:
    watch = PeerAddressWatch()
    watch.observe(SRC, (A, C), LOCAL, "addr_list_mismatch")
    note = watch.observe(SRC, (A, C), frozenset({A, IPv4Address("198.18.0.103")}),
                         "addr_list_mismatch")
    assert note is not None and note.level == logging.WARNING


def test_sources_are_tracked_separately() -> None:
    watch = PeerAddressWatch()
    assert watch.observe(SRC, (A, C), LOCAL, "addr_list_mismatch") is not None
    assert watch.observe(OTHER, (A, C), LOCAL, "addr_list_mismatch") is not None
    assert watch.observe(SRC, (A, C), LOCAL, "addr_list_mismatch") is None
    assert watch.observe(OTHER, (A, C), LOCAL, "addr_list_mismatch") is None


@pytest.mark.parametrize("reason", ["auth_failure", "auth_type_mismatch", "bad_checksum"])
def test_unauthenticated_or_unchecked_adverts_neither_warn_nor_clear(reason: str) -> None:
    watch = PeerAddressWatch()
    watch.observe(SRC, (A, C), LOCAL, "addr_list_mismatch")
    assert watch.observe(SRC, (A, B), LOCAL, reason) is None
    assert watch.observe(SRC, (B,), LOCAL, reason) is None
    assert len(watch) == 1
    assert watch.observe(SRC, (A, C), LOCAL, "addr_list_mismatch") is None


def test_memory_is_bounded_under_a_flood_of_sources() -> None:
    watch = PeerAddressWatch()
    for n in range(10_000):
        watch.observe(IPv4Address(0xC6120000 + n), (C,), LOCAL, "addr_count_mismatch")
        assert len(watch) <= MAX_SOURCES
    assert len(watch) == MAX_SOURCES


def test_the_least_recently_heard_source_is_forgotten_first() -> None:
    watch = PeerAddressWatch(max_sources=2)
    watch.observe(SRC, (C,), LOCAL, "addr_count_mismatch")
    watch.observe(OTHER, (C,), LOCAL, "addr_count_mismatch")
    watch.observe(SRC, (C,), LOCAL, "addr_count_mismatch")  # heard again: most recent
    third = IPv4Address("198.18.0.14")
    assert watch.observe(third, (C,), LOCAL, "addr_count_mismatch") is not None
    assert watch.observe(SRC, (C,), LOCAL, "addr_count_mismatch") is None  # kept
    assert watch.observe(OTHER, (C,), LOCAL, "addr_count_mismatch") is not None  # evicted


def test_max_sources_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PeerAddressWatch(max_sources=0)


def reason_of(announced: tuple[IPv4Address, ...], advert_int: int = 1) -> str | None:
    """What the real codec says of an advert announcing ``announced``."""
    d = packet.build_datagram(SRC, packet.VRRP_MCAST_GROUP,
                              packet.Advert(51, 100, advert_int, announced))
    try:
        packet.verify(packet.parse_datagram(d), packet.Expectation(51, 1, LOCAL, None), d)
    except packet.PacketError as exc:
        return exc.reason
    return None


def test_the_reasons_verify_gives_are_classified_as_assumed() -> None:
    # verify checks the addresses before the advert interval: an advert dropped for
    # its interval announced our addresses, and clears a warning.
    watch = PeerAddressWatch()
    assert reason_of((A, C)) == "addr_list_mismatch"
    assert watch.observe(SRC, (A, C), LOCAL, reason_of((A, C))) is not None
    assert reason_of((A, B, C)) == "addr_count_mismatch"
    assert watch.observe(SRC, (A, B, C), LOCAL, reason_of((A, B, C))) is not None
    assert reason_of((A, B), advert_int=2) == "advert_int_mismatch"
    note = watch.observe(SRC, (A, B), LOCAL, reason_of((A, B), advert_int=2))
    assert note is not None and note.level == logging.INFO


# --------------------------------------------------------------------------- the instance


class Records(logging.Handler):
    """Keeps every record it is given."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def vrrp_log() -> Iterator[Records]:
    logger = logging.getLogger("pyalived.vrrp")
    handler = Records()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


async def test_instance_warns_once_per_change_and_still_counts_the_adverts(
    autojump_clock: trio.testing.MockClock, vrrp_log: Records
) -> None:
    # A higher-priority peer announcing another list is still the master: the
    # backup hears it (no takeover), warns once per change and counts it.
    rig = Rig()
    config = Config(vrrp_instances=(instance_conf(),))  # priority 90, VIP 198.18.0.100
    async with running(rig, config) as (_nursery, instances, _start):
        for _ in range(5):  # the peer announces one address too many
            rig.inject(advert_from(PEER, 100, addresses=(VIP.ip, C)))
            await trio.sleep(1)
        assert len(vrrp_log.at(logging.WARNING)) == 1
        for _ in range(3):  # the peer's list changes: same count, other address
            rig.inject(advert_from(PEER, 100, addresses=(C,)))
            await trio.sleep(1)
        warnings = vrrp_log.at(logging.WARNING)
        assert len(warnings) == 2
        assert warnings[0].startswith("(VI_1) address count mismatch: 198.18.0.12 announces")
        assert ("[198.18.0.100, 198.18.0.102], configured here [198.18.0.100]; its adverts"
                " still count for the election") in warnings[0]
        assert warnings[1].startswith("(VI_1) address list mismatch: 198.18.0.12 announces")
        assert "[198.18.0.102], configured here [198.18.0.100]" in warnings[1]
        mismatches = rig.counters.address_mismatches
        assert mismatches[("VI_1", "addr_count_mismatch")] == 5
        assert mismatches[("VI_1", "addr_list_mismatch")] == 3
        assert not rig.counters.instance_rx_errors  # nothing dropped
        assert rig.counters.adverts_received["VI_1"] == 8
        assert instances[0].machine.state.name == "BACKUP"
        await trio.sleep(3.5)  # more than Master_Down_Interval after the last one
        assert instances[0].machine.state.name == "MASTER"  # silence, not the lists

        rig.inject(advert_from(PEER, 100))  # the lists match again
        await trio.sleep(0.5)
        assert rig.counters.adverts_received["VI_1"] == 9
        infos = [m for m in vrrp_log.at(logging.INFO) if "match" in m]
        assert infos == [
            "(VI_1) addresses announced by 198.18.0.12 match the configured ones again"
        ]
        assert len(vrrp_log.at(logging.WARNING)) == 2


async def test_vrrp_strict_drops_them_as_keepalived_does(
    autojump_clock: trio.testing.MockClock, vrrp_log: Records
) -> None:
    rig = Rig()
    config = Config(vrrp_instances=(instance_conf(strict_mode=True),))
    async with running(rig, config) as (_nursery, instances, _start):
        for _ in range(5):
            rig.inject(advert_from(PEER, 100, addresses=(VIP.ip, C)))
            await trio.sleep(1)
        assert rig.counters.instance_rx_errors[("VI_1", "addr_count_mismatch")] == 5
        assert not rig.counters.address_mismatches
        assert rig.counters.adverts_received["VI_1"] == 0
        assert instances[0].machine.state.name == "MASTER"  # it never heard its peer
        (warning,) = vrrp_log.at(logging.WARNING)
        assert warning.endswith("its adverts are dropped")


async def test_skip_check_adv_addr_checks_only_a_new_master(
    autojump_clock: trio.testing.MockClock, vrrp_log: Records
) -> None:
    # keepalived's skip_check_adv_addr: adverts from the master heard last are
    # not checked; the first advert of another master is.
    rig = Rig()
    config = Config(vrrp_instances=(instance_conf(skip_check_adv_addr=True),))
    async with running(rig, config):
        for _ in range(4):
            rig.inject(advert_from(PEER, 100, addresses=(VIP.ip, C)))
            await trio.sleep(1)
        assert rig.counters.address_mismatches[("VI_1", "addr_count_mismatch")] == 1
        assert len(vrrp_log.at(logging.WARNING)) == 1
        rig.inject(advert_from(OTHER, 110, addresses=(C,)))  # a new master
        await trio.sleep(1)
        assert rig.counters.address_mismatches[("VI_1", "addr_list_mismatch")] == 1
        assert rig.counters.adverts_received["VI_1"] == 5
