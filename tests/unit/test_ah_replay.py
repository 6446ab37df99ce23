"""AH anti-replay state of one instance: which sequence numbers pass, and when the last is
forgotten, without trio."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from pyalived.vrrp import packet
from pyalived.vrrp.ah_replay import AhReplayGuard
from pyalived.vrrp.fsm import State

PEER = IPv4Address("198.18.0.12")
ADVERT = packet.Advert(
    vrid=51, priority=100, advert_int=1, addresses=(IPv4Address("198.18.0.100"),), auth_type=2
)


def with_ah(seq: int) -> packet.Received:
    return packet.Received(PEER, packet.VRRP_MCAST_GROUP, 255, ADVERT, ah_spi=int(PEER), ah_seq=seq)


WITHOUT_AH = packet.Received(PEER, packet.VRRP_MCAST_GROUP, 255, ADVERT)


def guard_at(seq: int) -> AhReplayGuard:
    guard = AhReplayGuard()
    guard.accept(with_ah(seq))
    return guard


def test_a_fresh_guard_accepts_any_number_and_remembers_it() -> None:
    guard = AhReplayGuard()
    assert guard.last is None
    guard.accept(with_ah(7))
    assert guard.last == 7


@pytest.mark.parametrize("seq", [7, 6, 1, 0])
def test_a_number_not_above_the_last_is_a_replay_and_changes_nothing(seq: int) -> None:
    guard = guard_at(7)
    with pytest.raises(packet.PacketError) as caught:
        guard.accept(with_ah(seq))
    assert caught.value.reason == "ah_replay"
    assert guard.last == 7


def test_each_higher_number_is_accepted_in_turn() -> None:
    guard = guard_at(7)
    for seq in (8, 10, 0xFFFFFFFF):
        guard.accept(with_ah(seq))
        assert guard.last == seq


def test_a_datagram_without_ah_passes_and_keeps_the_last_number() -> None:
    guard = guard_at(7)
    guard.accept(WITHOUT_AH)
    assert guard.last == 7
    fresh = AhReplayGuard()
    fresh.accept(WITHOUT_AH)
    assert fresh.last is None


def test_backup_keeps_the_last_number() -> None:
    guard = guard_at(7)
    guard.state_changed(State.BACKUP)
    assert guard.last == 7
    with pytest.raises(packet.PacketError):
        guard.accept(with_ah(1))


@pytest.mark.parametrize("state", [State.MASTER, State.FAULT, State.INIT])
def test_any_other_state_forgets_it_so_a_restarted_master_counting_from_1_passes(
    state: State,
) -> None:
    guard = guard_at(7)
    guard.state_changed(state)
    assert guard.last is None
    guard.accept(with_ah(1))
    assert guard.last == 1
