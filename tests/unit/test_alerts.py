"""State changes reach the notify FIFOs and the mailer: the VRRP runtime with fake ports."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import trio
import trio.testing

from pyalived.alerts import VrrpAlerts
from pyalived.config.model import (
    Config,
    GlobalDefs,
    NotifyFifo,
    SmtpServer,
    TrackInterface,
    VrrpSyncGroup,
)
from pyalived.mail import MailSettings
from pyalived.reload import plan_reload
from pyalived.vrrp.fsm import State
from pyalived.vrrp.runtime import VrrpRuntime
from tests.unit.test_instance import MASTER_DOWN_90, Rig, instance_conf


class Reader:
    """A read end kept open on a FIFO, so that what is written stays buffered."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    def lines(self) -> list[str]:
        out = b""
        try:
            while chunk := os.read(self.fd, 65536):
                out += chunk
        except BlockingIOError:
            pass
        return out.decode().splitlines()

    def close(self) -> None:
        os.close(self.fd)


class Sink:
    """A fake SMTP delivery: records (time, message)."""

    def __init__(self) -> None:
        self.mails: list[tuple[float, bytes]] = []

    async def __call__(self, settings: MailSettings, data: bytes) -> None:
        self.mails.append((trio.current_time(), data))

    def subjects(self) -> list[str]:
        return [d.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for _, d in self.mails]


def globals_for(tmp_path: Path, **changes: object) -> GlobalDefs:
    g = GlobalDefs(
        router_id="lb1",
        notification_email=("ops@example.org",),
        smtp_server=SmtpServer("198.18.0.25"),
        notify_fifo=NotifyFifo(str(tmp_path / "all")),
        vrrp_notify_fifo=NotifyFifo(str(tmp_path / "vrrp")),
    )
    return dataclasses.replace(g, **changes)  # type: ignore[arg-type]


async def test_failover_writes_fifo_lines_and_mails_at_the_transition(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig(links_up=("eth0", "eth1"))
    a = instance_conf(smtp_alert=True, track_interface=(TrackInterface("eth1"),))
    b = instance_conf(name="VI_2", virtual_router_id=52)  # no smtp_alert: FIFO only
    group = VrrpSyncGroup("G1", ("VI_1", "VI_2"), smtp_alert=True)
    config = Config(globals_for(tmp_path), vrrp_instances=(a, b), vrrp_sync_groups=(group,))
    sink = Sink()
    alerts = VrrpAlerts(config, rig.scripts, deliver=sink, hostname="vm")
    rig.ports.alerts = alerts
    async with trio.open_nursery() as outer:
        await outer.start(alerts.run)  # outlives the runtime, as in the daemon
        readers = {name: Reader(tmp_path / name) for name in ("all", "vrrp")}
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            rt = await nursery.start(VrrpRuntime(config, rig.ports, rig.counters).run)
            await trio.sleep(MASTER_DOWN_90 + 0.5)
            assert {i.state for i in rt.instances} == {State.MASTER}
            rig.links.set("eth1", False)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    assert sink.subjects() == [
        "[lb1] VRRP Instance VI_1 - Entering BACKUP state",
        "[lb1] VRRP Group G1 - Entering BACKUP state",
        "[lb1] VRRP Instance VI_1 - Entering MASTER state",
        "[lb1] VRRP Group G1 - Entering MASTER state",
        "[lb1] VRRP Instance VI_1 - Entering FAULT state",
        "[lb1] VRRP Group G1 - Entering FAULT state",
    ]
    # Sent as the transition happened: nothing waits for the mail.
    times = [t - start for t, _ in sink.mails]
    assert times[2] == times[3] == MASTER_DOWN_90
    for reader in readers.values():
        lines = reader.lines()
        assert len(lines) == 12
        # Per state: both members (in either order, they move at the same instant),
        # then the group once they agree.
        for n, state in enumerate(("BACKUP", "MASTER", "FAULT", "STOP")):
            members, group_line = lines[3 * n:3 * n + 2], lines[3 * n + 2]
            assert sorted(members) == [f'INSTANCE "VI_1" {state} 90',
                                       f'INSTANCE "VI_2" {state} 90']
            assert group_line == f'GROUP "G1" {state} 0'
        reader.close()


async def test_reload_turns_mail_off_in_place_and_moves_the_fifo(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    config = Config(globals_for(tmp_path), vrrp_instances=(instance_conf(smtp_alert=True),))
    sink = Sink()
    alerts = VrrpAlerts(config, rig.scripts, deliver=sink, hostname="vm")
    rig.ports.alerts = alerts
    async with trio.open_nursery() as outer:
        await outer.start(alerts.run)
        old_fifo = Reader(tmp_path / "vrrp")
        async with trio.open_nursery() as nursery:
            rt = await nursery.start(VrrpRuntime(config, rig.ports, rig.counters).run)
            new = Config(
                globals_for(tmp_path, vrrp_notify_fifo=NotifyFifo(str(tmp_path / "moved"))),
                vrrp_instances=(instance_conf(smtp_alert=False),),
            )
            plan = plan_reload(config, new)
            assert [u.restart for u in plan.in_place] == [False]  # smtp_alert: in place
            await rt.apply(new, plan)
            await trio.testing.wait_all_tasks_blocked()
            moved = Reader(tmp_path / "moved")
            await trio.sleep(MASTER_DOWN_90 + 0.5)
            assert rt.instances[0].state is State.MASTER
            nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    assert sink.subjects() == ["[lb1] VRRP Instance VI_1 - Entering BACKUP state"]
    assert old_fifo.lines() == ['INSTANCE "VI_1" BACKUP 90']  # closed on reload
    assert moved.lines() == ['INSTANCE "VI_1" MASTER 90', 'INSTANCE "VI_1" STOP 90']
    old_fifo.close()
    moved.close()


def test_a_sync_group_s_smtp_alert_changes_in_place() -> None:
    a = instance_conf()
    b = instance_conf(name="VI_2", virtual_router_id=52)
    old = Config(vrrp_instances=(a, b), vrrp_sync_groups=(VrrpSyncGroup("G1", ("VI_1", "VI_2")),))
    new = dataclasses.replace(old, vrrp_sync_groups=(
        VrrpSyncGroup("G1", ("VI_1", "VI_2"), smtp_alert=True),))
    plan = plan_reload(old, new)
    assert plan.restarted == () and plan.empty
