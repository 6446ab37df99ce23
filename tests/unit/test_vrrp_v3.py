"""VRRPv3 (RFC 5798) over IPv4: configuration, timers, reception and sending.

The diagnostics are those of ``keepalived -t`` (2.2.7) on the same lines, in
pyalived's words; the timers are keepalived's integer-microsecond ones.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import trio
import trio.testing

from pyalived.config import Severity
from pyalived.config.model import AuthType, Config, OldUnicastChecksum
from pyalived.vrrp import packet
from pyalived.vrrp.compile import advert_for_v3, v3_checksum
from pyalived.vrrp.counters import VrrpCounters
from pyalived.vrrp.demux import Demux, peek_vrid
from pyalived.vrrp.fsm import (
    MachineConfig,
    State,
    VrrpMachine,
    master_down_interval_v3,
    skew_time_v3,
)
from pyalived.vrrp.v3_checksum import ChecksumMode
from tests.unit.test_instance import (
    GROUP,
    PEER,
    PRIMARY,
    VIP,
    Rig,
    instance_conf,
    running,
    state,
)
from tests.unit.test_parser import messages, only_config, run

# ---------------------------------------------------------------- configuration


def v3_inst(body: str, head: str = "global_defs {\n vrrp_version 3\n}\n") -> str:
    return (
        head
        + "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 51\n"
        + body
        + " virtual_ipaddress {\n  198.18.0.100\n }\n}\n"
    )


@pytest.mark.parametrize(
    ("value", "want", "diag"),
    [
        # keepalived -t: "number '0.001' outside range [0.010000, 255.000000]" and
        # "Advert interval (0.001) not valid! ... ignoring": the default stays.
        ("0.001", 1.0, (Severity.WARNING, "outside [0.01, 255]")),
        ("0.005", 1.0, (Severity.WARNING, "outside [0.01, 255]")),
        # "VRRPv3 advertisement interval 0.123000s must be in units of 10ms - rounding"
        ("0.123", 0.12, (Severity.WARNING, "centiseconds; using 0.12")),
        ("0.125", 0.13, (Severity.WARNING, "centiseconds; using 0.13")),  # half up
        ("0.015", 0.02, (Severity.WARNING, "centiseconds; using 0.02")),
        # "VRRPv3 advertisement interval 41.00s is out of range. Must be less than
        # 40.96s. Setting to 40.95s"
        ("41", 40.95, (Severity.WARNING, "less than 40.96 s")),
        ("40.96", 40.95, (Severity.WARNING, "less than 40.96 s")),
        ("255", 40.95, (Severity.WARNING, "less than 40.96 s")),
        ("40.95", 40.95, None),  # no diagnostic
        ("0.57", 0.57, None),
        ("0.1", 0.1, None),
        ("1.5", 1.5, None),
        ("0.01", 0.01, None),
    ],
)
def test_v3_advert_int(tmp_path: Path, value: str, want: float, diag: tuple[Severity, str] | None
                       ) -> None:
    res = run(tmp_path, v3_inst(f" advert_int {value}\n"))
    (i,) = only_config(res).vrrp_instances
    assert i.version == 3 and i.advert_int == want
    got = [(sev, msg) for sev, line, msg in messages(res) if line == 7]
    if diag is None:
        assert got == []
    else:
        assert len(got) == 1 and got[0][0] is diag[0] and diag[1] in got[0][1], got


def test_v2_fraction_still_rounds_to_whole_seconds(tmp_path: Path) -> None:
    # keepalived: "VRRPv2 advertisement interval 1.500000s must be an integer. rounding"
    res = run(tmp_path, v3_inst(" advert_int 1.5\n", head=""))
    (i,) = only_config(res).vrrp_instances
    assert (i.version, i.advert_int) == (2, 2.0)
    assert any("whole seconds; using 2" in m for _, _, m in messages(res))


def test_instance_version_overrides_global_whatever_the_order(tmp_path: Path) -> None:
    # `version` after advert_int: the interval is read as VRRPv3 all the same
    res = run(tmp_path, v3_inst(" advert_int 0.25\n version 3\n", head=""))
    (i,) = only_config(res).vrrp_instances
    assert (i.version, i.advert_int) == (3, 0.25)
    res = run(tmp_path, v3_inst(" version 2\n"))
    (i,) = only_config(res).vrrp_instances
    assert i.version == 2
    assert only_config(res).global_defs.vrrp_version == 3


def test_authentication_under_v3_is_ignored_with_a_warning(tmp_path: Path) -> None:
    # keepalived: "(VI_1) VRRP version 3 does not support authentication. Ignoring."
    res = run(tmp_path, v3_inst(" authentication {\n  auth_type PASS\n  auth_pass x\n }\n"))
    (i,) = only_config(res).vrrp_instances
    assert i.authentication is None
    assert any(sev is Severity.WARNING and "does not support authentication" in m
               for sev, _, m in messages(res))


@pytest.mark.parametrize(
    ("line", "want", "warned"),
    [
        ("", OldUnicastChecksum.AUTO, False),
        (" old_unicast_checksum\n", OldUnicastChecksum.ALWAYS, False),
        (" old_unicast_checksum never\n", OldUnicastChecksum.NEVER, False),
        # keepalived: "Unknown old_unicast_chksum mode bogus - ignoring"
        (" old_unicast_checksum bogus\n", OldUnicastChecksum.AUTO, True),
    ],
)
def test_old_unicast_checksum(tmp_path: Path, line: str, want: OldUnicastChecksum,
                              warned: bool) -> None:
    res = run(tmp_path, v3_inst(line + " unicast_peer {\n  198.18.0.12\n }\n"))
    (i,) = only_config(res).vrrp_instances
    assert i.old_unicast_checksum is want
    assert any("old_unicast_checksum mode bogus" in m for _, _, m in messages(res)) == warned
    mode = {OldUnicastChecksum.AUTO: packet.V3Checksum.RFC_OR_OLD,
            OldUnicastChecksum.ALWAYS: packet.V3Checksum.OLD,
            OldUnicastChecksum.NEVER: packet.V3Checksum.RFC}[want]
    assert v3_checksum(i) is mode
    assert v3_checksum(replace(i, unicast_peer=())) is packet.V3Checksum.RFC  # multicast


# ---------------------------------------------------------------- timers


@pytest.mark.parametrize(
    ("priority", "centis", "skew", "down"),
    [
        (100, 100, 0.609375, 3.609375),  # as VRRPv2 at 1 s
        (200, 100, 0.21875, 3.21875),
        (254, 100, 0.007812, 3.007812),  # 2 * 100 * 625 // 16 = 7812.5 -> 7812 us
        (100, 10, 0.060937, 0.360937),
        (1, 10, 0.099609, 0.399609),  # 255 * 10 * 625 // 16 = 99609.375 -> 99609 us
        (150, 50, 0.207031, 1.707031),  # 106 * 50 * 625 // 16 = 207031.25 -> 207031 us
        (100, 4095, 24.953906, 122.85 + 24.953906),
    ],
)
def test_v3_skew_and_master_down_in_microseconds(priority: int, centis: int, skew: float,
                                                 down: float) -> None:
    assert skew_time_v3(priority, centis) == pytest.approx(skew, abs=1e-9)
    assert master_down_interval_v3(centis, priority) == pytest.approx(down, abs=1e-9)


def v3_machine(priority: int = 100, advert_int: float = 1.0, **kw: object) -> VrrpMachine:
    return VrrpMachine(MachineConfig(name="VI_1", vrid=51, priority=priority,
                                     advert_int=advert_int, primary_ip=PRIMARY, version=3,
                                     **kw))  # type: ignore[arg-type]


def test_v3_backup_learns_the_masters_interval() -> None:
    m = v3_machine(priority=100, advert_int=1.0)
    m.start(0.0)
    assert m.get_timer() == 3.609375
    m.advert_received(1.0, PEER, 200, max_advert_int=50)  # §6.4.2: adopt 0.5 s
    assert m.master_adver_interval == 0.5
    assert m.get_timer() == 1.0 + 1.804687  # 156 * 50 * 625 // 16 = 304687 us
    # priority 0: Skew_Time with the learned interval
    m.advert_received(2.0, PEER, 0, max_advert_int=50)
    assert m.get_timer() == 2.0 + 0.304687
    # a lower-priority advert we discard to preempt teaches nothing
    m.advert_received(2.1, PEER, 50, max_advert_int=300)
    assert m.master_adver_interval == 0.5
    m.timer_expired(2.0 + 0.304687)
    assert m.state is State.MASTER
    assert m.master_adver_interval == 1.0  # our own as MASTER
    assert m.get_timer() == 2.0 + 0.304687 + 1.0


def test_v3_master_steps_down_with_the_new_masters_interval() -> None:
    m = v3_machine(priority=255, advert_int=1.0, initial_state=State.MASTER)
    m.start(0.0)
    assert m.state is State.MASTER
    m2 = v3_machine(priority=100, advert_int=2.0, initial_state=State.MASTER)
    m2.start(0.0)
    m2.timer_expired(master_down_interval_v3(200, 100))
    assert m2.state is State.MASTER
    m2.advert_received(10.0, PEER, 150, max_advert_int=25)
    assert m2.state.name == "BACKUP"
    assert m2.get_timer() == 10.0 + master_down_interval_v3(25, 100)


def test_v2_machine_ignores_max_advert_int() -> None:
    m = VrrpMachine(MachineConfig(name="VI_1", vrid=51, priority=100, advert_int=1.0,
                                  primary_ip=PRIMARY))
    m.start(0.0)
    m.advert_received(1.0, PEER, 200, max_advert_int=50)
    assert m.get_timer() == 1.0 + 3 + 156 / 256


# ---------------------------------------------------------------- checksum mode


def received(old: bool) -> packet.ReceivedV3:
    advert = packet.AdvertV3(vrid=51, priority=100, max_advert_int=100, addresses=(VIP.ip,))
    return packet.ReceivedV3(src=PEER, dst=PRIMARY, ttl=255, advert=advert, old_checksum=old)


def test_checksum_mode_switches_to_old_once_and_sticks() -> None:
    mode = ChecksumMode(packet.V3Checksum.RFC_OR_OLD)
    assert mode.observe(received(False)) is False
    assert mode.mode is packet.V3Checksum.RFC_OR_OLD
    assert mode.observe(received(True)) is True
    assert mode.mode.value == "old"
    assert mode.observe(received(True)) is False
    for fixed in (packet.V3Checksum.RFC, packet.V3Checksum.OLD):
        other = ChecksumMode(fixed)
        assert other.observe(received(True)) is False and other.mode is fixed


# ---------------------------------------------------------------- demux


def v3_datagram(src: IPv4Address, dst: IPv4Address, priority: int, vrid: int = 51,
                centis: int = 100, checksum: packet.V3Checksum = packet.V3Checksum.RFC,
                addresses: tuple[IPv4Address, ...] | None = None) -> bytes:
    advert = packet.AdvertV3(vrid=vrid, priority=priority, max_advert_int=centis,
                             addresses=(VIP.ip,) if addresses is None else addresses)
    return packet.build_datagram_v3(src, dst, advert, checksum=checksum)


def v2_datagram(vrid: int) -> bytes:
    advert = packet.Advert(vrid=vrid, priority=100, advert_int=1, addresses=(VIP.ip,))
    return packet.build_datagram(PEER, GROUP, advert)


def test_peek_vrid() -> None:
    assert peek_vrid(v3_datagram(PEER, GROUP, 100, vrid=7)) == (3, 7)
    assert peek_vrid(v2_datagram(9)) == (2, 9)
    ah = packet.build_datagram(PEER, GROUP, packet.Advert(9, 100, 1, (VIP.ip,)),
                               auth=AuthType.AH, auth_key=b"k")
    assert peek_vrid(ah) == (2, 9)
    assert peek_vrid(b"\x45" + bytes(10)) is None


def test_demux_parses_each_vrid_with_its_instances_version() -> None:
    from pyalived.vrrp.demux import V3Route
    from pyalived.vrrp.socket_pool import SocketPool
    from tests.unit.fakes import FakeSocketFactory

    counters = VrrpCounters()
    demux = Demux(SocketPool(FakeSocketFactory()), counters)
    got: list[tuple[int, object]] = []
    demux.register("eth0", 112, 51, lambda r, d, t: got.append((51, r)),
                   V3Route(ChecksumMode(packet.V3Checksum.RFC)))
    demux.register("eth0", 112, 52, lambda r, d, t: got.append((52, r)))
    key = ("eth0", 112)
    demux.dispatch(key, v3_datagram(PEER, GROUP, 100, vrid=51), 1.0)
    demux.dispatch(key, v2_datagram(52), 1.0)
    assert [(v, type(r).__name__) for v, r in got] == [(51, "ReceivedV3"), (52, "Received")]
    # the other version for either VRID: bad_version, nothing delivered
    demux.dispatch(key, v2_datagram(51), 1.0)
    demux.dispatch(key, v3_datagram(PEER, GROUP, 100, vrid=52), 1.0)
    # a v3 advert for nobody: parsed as v3 (valid), then unknown_vrid
    demux.dispatch(key, v3_datagram(PEER, GROUP, 100, vrid=99), 1.0)
    assert len(got) == 2
    assert counters.rx_errors["bad_version"] == 2
    assert counters.rx_errors["unknown_vrid"] == 1


# ---------------------------------------------------------------- the instance driver


def v3_conf(**changes: object) -> Config:
    return Config(vrrp_instances=(instance_conf(version=3, **changes),))


async def test_v3_backup_alone_becomes_master_and_advertises_centiseconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    async with running(rig, v3_conf(advert_int=0.25)) as (_, (inst,), start):
        down = master_down_interval_v3(25, 90)  # 0.75 + 166 * 25 * 625 // 16 us
        assert down == 0.912109
        await trio.sleep(down - 0.000001)
        assert state(inst) is State.BACKUP and rig.sent() == []
        await trio.sleep(0.000001 + 0.9)
        assert state(inst) is State.MASTER
        sent = rig.sent()
        assert [s.time - start for s in sent] == pytest.approx(
            [down + k * 0.25 for k in range(4)], abs=1e-9)
        first = packet.parse_datagram_v3(sent[0].datagram)
        assert first.advert == advert_for_v3(inst.conf, 90)
        assert first.advert.max_advert_int == 25 and first.dst == GROUP


async def test_v3_backup_learns_interval_from_adverts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    async with running(rig, v3_conf(advert_int=1.0)) as (_, (inst,), _start):
        for _ in range(3):  # a priority-200 master at 0.5 s
            rig.inject(v3_datagram(PEER, GROUP, 200, centis=50))
            await trio.sleep(0.5)
        assert state(inst) is State.BACKUP
        assert inst.machine.master_adver_interval == 0.5
        assert rig.counters.adverts_received["VI_1"] == 3
        last = trio.current_time() - 0.5
        # silence: master down with the learned interval, 1.5 + 0.324218 s
        await trio.sleep(master_down_interval_v3(50, 90) - 0.5 - 0.000001)
        assert state(inst) is State.BACKUP
        await trio.sleep(0.000002)
        assert state(inst) is State.MASTER
        assert rig.sent()[0].time == pytest.approx(last + master_down_interval_v3(50, 90),
                                                   abs=1e-9)
        # a v2 advert for this VRID is refused
        rig.inject(packet.build_datagram(PEER, GROUP, packet.Advert(51, 200, 1, (VIP.ip,))))
        await trio.sleep(0.01)
        assert state(inst) is State.MASTER
        assert rig.counters.rx_errors["bad_version"] == 1


async def test_v3_unicast_switches_to_the_old_checksum(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyalived.vrrp")
    rig = Rig()
    async with running(rig, v3_conf(unicast_peer=(PEER,), priority=250)) as (_, (inst,), _s):
        await trio.sleep(4.0)
        assert state(inst) is State.MASTER
        rfc = rig.sent()[-1]
        packet.parse_datagram_v3(rfc.datagram, checksum=packet.V3Checksum.RFC)
        # a lower-priority peer with the old checksum: accepted, and we switch
        for _ in range(2):
            rig.inject(v3_datagram(PEER, PRIMARY, 100, checksum=packet.V3Checksum.OLD))
            await trio.sleep(0.01)
        assert rig.counters.rx_errors.get("bad_checksum", 0) == 0
        assert rig.counters.adverts_received["VI_1"] == 2
        await trio.sleep(1.0)
        old = rig.sent()[-1]
        assert old.dst == PEER
        packet.parse_datagram_v3(old.datagram, checksum=packet.V3Checksum.OLD)
        with pytest.raises(packet.PacketError):
            packet.parse_datagram_v3(old.datagram, checksum=packet.V3Checksum.RFC)
        # from now on the RFC form is refused, as keepalived does
        rig.inject(v3_datagram(PEER, PRIMARY, 100))
        await trio.sleep(0.01)
        assert rig.counters.rx_errors["bad_checksum"] == 1
    switched = [r for r in caplog.records if "checksum to old version" in r.getMessage()]
    assert len(switched) == 1


@pytest.mark.parametrize("strict", [False, True], ids=["default", "vrrp_strict"])
async def test_v3_advert_with_another_address_list(
    autojump_clock: trio.testing.MockClock, strict: bool
) -> None:
    # As in VRRPv2: it still counts for the election, unless vrrp_strict drops it.
    rig = Rig()
    other = (VIP.ip, IPv4Address("198.18.0.101"))
    async with running(rig, v3_conf(strict_mode=strict)) as (_, (inst,), _start):
        for _ in range(6):
            rig.inject(v3_datagram(PEER, GROUP, 200, addresses=other))
            await trio.sleep(1)
        if strict:
            assert state(inst) is State.MASTER
            assert rig.counters.instance_rx_errors[("VI_1", "addr_count_mismatch")] == 6
        else:
            assert state(inst) is State.BACKUP
            assert rig.counters.address_mismatches[("VI_1", "addr_count_mismatch")] == 6
            assert rig.counters.adverts_received["VI_1"] == 6
