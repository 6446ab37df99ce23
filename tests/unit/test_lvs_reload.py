"""Reloads of the LVS half, from the operator's side: exact times, fake IPVS table.

A reload keeps the health of every real server that stays in the
configuration, whatever else changed around it (``delay_loop``, ``retry``,
``connect_timeout``, weight, the checker type, checkers added or removed): a
dead real server never comes back into the table because of a reload, only
through a successful probe.  A changed interval takes effect for the wait in
progress (counted from the end of the last check, missed turns skipped), an
unchanged one keeps its exact time, so a reload never makes the checkers
probe at once.  The rig is ``test_lvs_service``'s: a fake prober answering
at once from a table the test edits, the real table manager on a fake kernel.
"""

from __future__ import annotations

import logging
import pickle
from ipaddress import ip_address
from pathlib import Path

import pytest
import trio
import trio.testing

from pyalived.checkers.compile import PackedLvs, pack
from pyalived.checkers.policy import ProbeResult
from pyalived.checkers.service import ReloadCounts
from pyalived.checkers.spec import CheckerSpec, RealServerSpec
from pyalived.config.model import Config
from pyalived.ipvs.model import (
    AddDest,
    DeleteService,
    Destination,
    DestKey,
    EditDest,
    Forwarding,
    Protocol,
    ServiceKey,
)

from .test_lvs_service import (
    VIP,
    A,
    B,
    C,
    FakeProber,
    Rig,
    at,
    config,
    plan_times,
    rs_block,
    running,
    vs_text,
)


def check(delay_loop: float = 10, retry: int = 2, timeout: float = 1,
          kind: str = "TCP_CHECK", extra: str = "") -> str:
    return (f"  {kind} {{\n   connect_timeout {timeout:g}\n   delay_loop {delay_loop:g}\n"
            f"   retry {retry}\n   delay_before_retry 1\n   warmup 0\n{extra}  }}")


def misc(retry: int = 0, extra: str = "") -> str:
    return (f"  MISC_CHECK {{\n   misc_path \"/bin/true\"\n   delay_loop 10\n"
            f"   retry {retry}\n   warmup 0\n{extra}  }}")


HTTP = check(kind="HTTP_GET", extra="   url {\n    path /\n   }\n")


@pytest.fixture(params=["parsed", "packed"])
def form(request: pytest.FixtureRequest) -> str:
    """How the service is handed each configuration: parsed, or packed and sent
    through a pipe as the supervisor hands it to the checker process."""
    return str(request.param)


def handed(conf: Config, form: str) -> Config | PackedLvs:
    if form == "parsed":
        return conf
    packed = pickle.loads(pickle.dumps(pack(conf), pickle.HIGHEST_PROTOCOL))
    assert isinstance(packed, PackedLvs)
    return packed


def nat(dest: DestKey, weight: int = 1) -> Destination:
    return Destination(dest, weight, Forwarding.NAT)


def after(times: list[float], t: float) -> list[float]:
    return [x for x in times if x > t]


async def test_reload_after_minutes_keeps_every_state_and_the_dead_stay_out(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
    form: str,
) -> None:
    rig = Rig()
    svc = rig.service(handed(config(tmp_path, vs_text(rs_block(A, check=check()),
                                                      rs_block(B, check=check()),
                                                      rs_block(C, check=check()))), form))
    async with running(svc):
        await trio.sleep_until(95)
        rig.prober.set(A, False)  # fails at 100, retries at 101 and 102: DOWN at 102
        await at(102.5, svc)
        assert rig.kernel.weights() == {B: 1, C: 1}
        done = len(rig.kernel.executed)
        await trio.sleep_until(125)
        # minutes later: every delay_loop 10 -> 4, A's retry and connect_timeout, B's weight
        new = vs_text(rs_block(A, check=check(4, retry=1, timeout=2)),
                      rs_block(B, "  weight 2", check=check(4)),
                      rs_block(C, check=check(4)))
        with caplog.at_level(logging.INFO, logger="pyalived.lvs"):
            counts = await svc.apply(handed(config(tmp_path, new), form))
        assert counts == ReloadCounts(kept=3, updated=3, started=0, stopped=0)
        assert "reload: real servers: 3 kept (3 with new settings), 0 started, 0 stopped" in (
            caplog.messages)
        assert rig.kernel.executed[done:] == [EditDest(VIP, nat(B, 2))]
        assert [(str(s.real_server), s.alive) for s in svc.real_servers()] == [
            ("198.18.0.2:80", False), ("198.18.0.3:80", True), ("198.18.0.4:80", True)]
        await trio.sleep_until(133)
        assert rig.kernel.weights() == {B: 2, C: 1}
        assert rig.kernel.executed[done:] == [EditDest(VIP, nat(B, 2))]  # A never came back
        rig.prober.set(A, True)
        await at(140.5, svc)
    # the next checks count from the end of the last one with the new delay_loop:
    # A ended at 122 -> 126; B and C at 120 -> 124 has passed at 125 -> 128
    assert after(rig.prober.times(A), 95) == [100, 101, 102, 112, 122, 126, 130, 134, 138]
    assert after(rig.prober.times(B), 115) == [120, 128, 132, 136, 140]
    assert after(rig.prober.times(C), 115) == [120, 128, 132, 136, 140]
    assert rig.kernel.executed[done + 1] == AddDest(VIP, nat(A))  # at 134, its success
    assert rig.notified() == [(102, "down 2"), (134, "up 2")]
    assert plan_times(rig) == [0, 102, 125, 134]


async def test_dead_server_whose_checker_changes_type_stays_out_until_it_passes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig()
    rig.prober.set(A, False)  # 0, 1, 2: DOWN at 2, then 12, 22
    svc = rig.service(config(tmp_path, vs_text(rs_block(A, check=check()), rs_block(B))))
    async with running(svc):
        await at(25, svc)
        assert rig.kernel.weights() == {B: 1}
        done = len(rig.kernel.executed)
        # TCP_CHECK -> HTTP_GET, and a MISC_CHECK added: both start DOWN
        counts = await svc.apply(config(tmp_path, vs_text(
            rs_block(A, check=HTTP + "\n" + misc()), rs_block(B))))
        assert counts == ReloadCounts(kept=2, updated=1, started=0, stopped=0)
        assert rig.kernel.executed[done:] == []
        await trio.sleep_until(40)
        rig.prober.set(A, True)
        await at(51, svc)
        assert rig.kernel.weights() == {B: 1}  # MISC_CHECK up at 45, HTTP_GET not yet
        await at(52.5, svc)
        assert rig.kernel.weights() == {A: 1, B: 1}
        assert rig.kernel.executed[done:] == [AddDest(VIP, nat(A))]
    # HTTP_GET keeps TCP_CHECK's turns (32, 42, 52: DOWN by failing, it needs two
    # successes); the added MISC_CHECK probes at once (25), then every 10 s
    assert after(rig.prober.times(A), 22) == [25, 32, 35, 42, 45, 52]
    assert rig.notified() == [(2, "down 2"), (52, "up 2")]


class KindProber(FakeProber):
    """``FakeProber`` whose ``by_kind[(checker kind, real server)]`` wins."""

    def __init__(self) -> None:
        super().__init__()
        self.by_kind: dict[tuple[str, DestKey], ProbeResult] = {}

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        result = await super().probe(spec, rs, step)
        return self.by_kind.get((spec.kind, DestKey(rs.ip, rs.port or 0)), result)


async def test_removing_the_failed_checker_does_not_revive_its_server(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig()
    rig.prober = KindProber()
    rig.prober.by_kind[("MISC_CHECK", A)] = ProbeResult(False, "exit 1")
    text = vs_text(rs_block(A, check=check() + "\n" + misc()), rs_block(B))
    svc = rig.service(config(tmp_path, text))
    async with running(svc):
        await at(5, svc)
        assert rig.kernel.weights() == {B: 1}  # MISC_CHECK failed at 0
        done = len(rig.kernel.executed)
        await trio.sleep_until(15)
        await svc.apply(config(tmp_path, vs_text(rs_block(A, check=check()), rs_block(B))))
        assert rig.kernel.executed[done:] == []  # TCP_CHECK is UP, but A stays dead
        await at(19.5, svc)
        assert rig.kernel.weights() == {B: 1}
        await at(20.5, svc)  # TCP_CHECK's next turn: its success brings A back
        assert rig.kernel.weights() == {A: 1, B: 1}
    assert rig.notified() == [(0, "down 2"), (20, "up 2")]


async def test_unchanged_reload_touches_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, form: str
) -> None:
    rig = Rig()
    text = vs_text(rs_block(A), rs_block(B), rs_block(C))
    svc = rig.service(handed(config(tmp_path, text), form))
    async with running(svc):
        await trio.sleep_until(5)
        rig.prober.set(B, False)
        await at(25, svc)
        done, plans = len(rig.kernel.executed), len(rig.plans)
        for t in (25, 26):  # the same text; then the same moved two lines down
            await trio.sleep_until(t)
            counts = await svc.apply(
                handed(config(tmp_path, text if t == 25 else "\n\n" + text), form))
            assert counts == ReloadCounts(kept=3, updated=0, started=0, stopped=0)
        await at(45, svc)
        assert rig.kernel.executed[done:] == []
    assert len(rig.plans) == plans + 1  # the moved text: its blocks are planned once more
    for dest in (A, C):
        assert rig.prober.times(dest) == [0, 10, 20, 30, 40]
    assert rig.prober.times(B) == [0, 10, 11, 12, 22, 32, 42]


async def test_changed_delay_loop_keeps_the_checks_spread(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig()
    slow = check(60)
    svc = rig.service(config(tmp_path, vs_text(rs_block(A, check=slow))))
    async with running(svc):
        # real servers added at 23 and 47 probe at once: three phases over the minute
        await trio.sleep_until(23)
        await svc.apply(config(tmp_path, vs_text(rs_block(A, check=slow),
                                                 rs_block(B, check=slow))))
        await trio.sleep_until(47)
        await svc.apply(config(tmp_path, vs_text(rs_block(A, check=slow),
                                                 rs_block(B, check=slow),
                                                 rs_block(C, check=slow))))
        await trio.sleep_until(125)
        fast = check(10)
        await svc.apply(config(tmp_path, vs_text(rs_block(A, check=fast),
                                                 rs_block(B, check=fast),
                                                 rs_block(C, check=fast))))
        await trio.sleep_until(145)
    # the next turn of each on the new 10 s grid of its own last check
    assert after(rig.prober.times(A), 100) == [120, 130, 140]
    assert after(rig.prober.times(B), 80) == [83, 133, 143]
    assert after(rig.prober.times(C), 100) == [107, 127, 137]


async def test_a_longer_delay_loop_moves_the_next_check_later(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig()
    svc = rig.service(config(tmp_path, vs_text(rs_block(A, check=check()))))
    async with running(svc):
        await trio.sleep_until(15)
        await svc.apply(config(tmp_path, vs_text(rs_block(A, check=check(30)))))
        await trio.sleep_until(75)
    assert rig.prober.times(A) == [0, 10, 40, 70]


async def test_a_retry_in_progress_takes_the_new_settings(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig()
    svc = rig.service(config(tmp_path, vs_text(rs_block(A, check=check()), rs_block(B))))
    async with running(svc):
        await trio.sleep_until(5)
        rig.prober.set(A, False)  # fails at 10; its first retry is due at 11
        await trio.sleep_until(10.5)
        await svc.apply(config(tmp_path, vs_text(rs_block(A, check=check(retry=1)),
                                                 rs_block(B))))
        await at(12, svc)
        assert rig.kernel.weights() == {B: 1}
    assert rig.prober.times(A) == [0, 10, 11]  # one retry left of the new one: DOWN at 11
    assert rig.notified() == [(11, "down 2")]


async def test_a_dynamic_weight_survives_a_reload(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    dynamic = misc(extra="   misc_dynamic\n")
    rig = Rig()
    svc = rig.service(config(tmp_path, vs_text(rs_block(A, "  weight 4", check=dynamic),
                                               rs_block(B))))
    async with running(svc):
        rig.prober.set(A, True, weight=9)
        await at(10.5, svc)
        assert rig.kernel.weights() == {A: 9, B: 1}
        await svc.apply(config(tmp_path, vs_text(rs_block(A, "  weight 5", check=dynamic),
                                                 rs_block(B, "  weight 3"))))
        assert rig.kernel.weights() == {A: 9, B: 3}


async def test_reload_adds_and_removes_virtual_servers(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    other = ServiceKey.inet("198.18.0.10", 80)
    second = ("virtual_server 198.18.0.10 80 {\n lb_algo rr\n lb_kind NAT\n"
              f" protocol TCP\n{rs_block(C)}}}\n")
    rig = Rig()
    svc = rig.service(config(tmp_path, vs_text(rs_block(A))))
    async with running(svc):
        await trio.sleep_until(5)
        counts = await svc.apply(config(tmp_path, vs_text(rs_block(A)) + second))
        assert counts == ReloadCounts(kept=1, updated=0, started=1, stopped=0)
        assert rig.kernel.weights(other) == {C: 1}
        assert {(s.virtual_server, str(s.real_server)) for s in svc.real_servers()} == {
            ("198.18.0.1:80", "198.18.0.2:80"), ("198.18.0.10:80", "198.18.0.4:80")}
        await trio.sleep_until(18)
        counts = await svc.apply(config(tmp_path, second))
        assert counts == ReloadCounts(kept=1, updated=0, started=0, stopped=1)
        assert list(rig.kernel.table) == [other]
        assert rig.kernel.executed[-1] == DeleteService(VIP)
        assert svc.quorum == {other: True}
        assert [s.virtual_server for s in svc.real_servers()] == ["198.18.0.10:80"]
        await trio.sleep_until(30)
    assert rig.prober.times(A) == [0, 10]
    assert rig.prober.times(C) == [5, 15, 25]


async def test_tcp_and_udp_services_on_one_address_are_checked_apart(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    tcp53 = ServiceKey.inet("198.18.0.1", 53, Protocol.TCP)
    udp53 = ServiceKey.inet("198.18.0.1", 53, Protocol.UDP)
    a53, b53 = DestKey(ip_address("198.18.0.2"), 53), DestKey(ip_address("198.18.0.3"), 53)

    def dns(protocol: str) -> str:
        return (f"virtual_server 198.18.0.1 53 {{\n lb_algo rr\n lb_kind NAT\n"
                f" protocol {protocol}\n{rs_block(a53)}{rs_block(b53)}}}\n")

    rig = Rig()
    svc = rig.service(config(tmp_path, dns("TCP") + dns("UDP")))
    async with running(svc):
        assert rig.kernel.weights(tcp53) == rig.kernel.weights(udp53) == {a53: 1, b53: 1}
        await trio.sleep_until(5)
        rig.prober.set(a53, False)
        await at(12.5, svc)
        assert rig.kernel.weights(tcp53) == rig.kernel.weights(udp53) == {b53: 1}
        # the metrics tell them apart
        assert sorted((s.virtual_server, str(s.real_server), s.alive)
                      for s in svc.real_servers()) == [
            ("198.18.0.1:53", "198.18.0.2:53", False), ("198.18.0.1:53", "198.18.0.3:53", True),
            ("198.18.0.1:53/udp", "198.18.0.2:53", False),
            ("198.18.0.1:53/udp", "198.18.0.3:53", True)]
        assert svc.quorum_by_block() == {"198.18.0.1:53": True, "198.18.0.1:53/udp": True}
        # the UDP service goes; the TCP one keeps its checkers and their state
        counts = await svc.apply(config(tmp_path, dns("TCP")))
        assert counts == ReloadCounts(kept=2, updated=0, started=0, stopped=2)
        assert list(rig.kernel.table) == [tcp53]
        assert rig.kernel.weights(tcp53) == {b53: 1}
        assert {s.virtual_server for s in svc.real_servers()} == {"198.18.0.1:53"}
        await trio.sleep_until(25)
    # each service checks its real servers: A twice per turn until the UDP block went
    assert rig.prober.times(a53) == [0, 0, 10, 10, 11, 11, 12, 12, 22]
    assert rig.notified() == [(12, "down 2"), (12, "down 2")]


async def test_a_changed_group_changes_its_virtual_server(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, form: str
) -> None:
    # The virtual_server block is the same text on the same lines; only the
    # group it expands moves one address: the services follow, the real
    # servers' state is kept.
    def text(second: str) -> str:
        return ("global_defs {\n enable_script_security\n script_user root\n}\n"
                f"virtual_server_group WEB {{\n 198.18.0.1 80\n {second} 80\n}}\n"
                "virtual_server group WEB {\n lb_algo rr\n lb_kind NAT\n protocol TCP\n"
                f"{rs_block(A)}{rs_block(B)}}}\n")

    def service(address: str) -> ServiceKey:
        return ServiceKey.inet(ip_address(address), 80, Protocol.TCP)

    rig = Rig()
    svc = rig.service(handed(config(tmp_path, text("198.18.0.8")), form))
    async with running(svc):
        await trio.sleep_until(5)
        rig.prober.set(B, False)
        await at(15, svc)
        assert set(rig.kernel.table) == {VIP, service("198.18.0.8")}
        counts = await svc.apply(handed(config(tmp_path, text("198.18.0.9")), form))
        assert counts == ReloadCounts(kept=2, updated=0, started=0, stopped=0)
        await at(16, svc)
        assert set(rig.kernel.table) == {VIP, service("198.18.0.9")}
        assert rig.kernel.weights(service("198.18.0.9")) == {A: 1}  # B stays out: DOWN
