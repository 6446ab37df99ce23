"""track_file and track_process through the VRRP runtime, with fake ports and exact times."""

from __future__ import annotations

from dataclasses import replace

import trio
import trio.testing

from pyalived import dump
from pyalived.config.model import Config, TrackFile, TrackProcess, TrackRef
from pyalived.vrrp import packet
from pyalived.vrrp.fsm import State
from pyalived.vrrp.inotify import Change
from pyalived.vrrp.proc_events import PROC_EVENT_EXEC, PROC_EVENT_EXIT, ProcEvent
from pyalived.vrrp.track_process import ProcInfo
from tests.unit.test_instance import Rig, instance_conf
from tests.unit.test_reload import reload, runtime
from tests.unit.test_track_file import FakeWatch
from tests.unit.test_track_process import FakeSource

MASTER_DOWN_90 = 3 + (256 - 90) / 256


class TrackRig(Rig):
    """The instance rig, plus a fake file system and a fake process table."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes | None] = {"/run/drain": b"1\n"}
        self.watches: dict[str, FakeWatch] = {}
        self.procs: dict[int, ProcInfo] = {7: ProcInfo("nginx")}
        self.source = FakeSource()
        self.ports.file_watch = self._watch
        self.ports.file_read = self.files.get
        self.ports.process_source = lambda: self.source
        self.ports.process_scan = lambda cmdline: dict(self.procs)
        self.ports.process_read = lambda pid, cmdline: self.procs.get(pid)

    def _watch(self, path: str) -> FakeWatch:
        self.watches[path] = FakeWatch()
        return self.watches[path]

    def write(self, path: str, data: bytes | None) -> None:
        self.files[path] = data
        self.watches[path].tx.send_nowait(Change.NOW)

    def priorities_after(self, start: float, t: float) -> list[int]:
        return [packet.parse_datagram(s.datagram).advert.priority for s in self.sent()
                if s.time - start >= t]


def config(file_weight: int | None = None, **defs: object) -> Config:
    inst = instance_conf(
        track_file=(TrackRef("drain", file_weight),),
        track_process=(TrackRef("web"),),
    )
    return Config(
        vrrp_instances=(inst,),
        track_files=(TrackFile("drain", "/run/drain", weight=-10),),
        track_processes=(replace(TrackProcess("web", "nginx", weight=20), **defs),),  # type: ignore[arg-type]
    )


async def test_values_apply_before_start_and_changes_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = TrackRig()
    async with runtime(rig, config()) as (rt, start):
        (inst,) = rt.instances
        # 90 - 10 (file holds 1) + 20 (nginx runs): the first advert says 100.
        await trio.sleep(MASTER_DOWN_90 + 0.5)
        assert inst.state is State.MASTER
        assert rig.priorities() == [100]
        rig.write("/run/drain", b"3\n")  # at 4.15: 90 - 30 + 20
        await trio.sleep(1.0)
        assert rig.priorities()[-1] == 80
        del rig.procs[7]
        rig.source.tx.send_nowait([ProcEvent(PROC_EVENT_EXIT, 7)])
        await trio.sleep(1.0)
        assert rig.priorities()[-1] == 60
        text = dump.format_data(rt.instances, trio.current_time())
        assert "Tracked file         = drain (3)" in text
        assert "Tracked process      = web (not running)" in text
        rig.procs[8] = ProcInfo("nginx")
        rig.source.tx.send_nowait([ProcEvent(PROC_EVENT_EXEC, 8)])
        rig.write("/run/drain", None)  # deleted: 0
        await trio.sleep(1.0)
        assert inst.state is State.MASTER
        # Each change is on the next advert (RFC 3768 §6.4.3: adverts every
        # advert_int), nothing is sent in between.
        sent = [(s.time - start, packet.parse_datagram(s.datagram).advert.priority)
                for s in rig.sent()]
        assert sent == [(MASTER_DOWN_90 + k, p) for k, p in enumerate((100, 80, 60, 110))]


async def test_reload_keeps_values_and_the_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = TrackRig()
    async with runtime(rig, config()) as (rt, start):
        (inst,) = rt.instances
        await trio.sleep(MASTER_DOWN_90 + 1.5)
        watch = rig.watches["/run/drain"]
        # A reference's weight changes: in place, the file is not watched afresh.
        await reload(rt, config(file_weight=-30))
        assert rt.instances == [inst] and rig.watches["/run/drain"] is watch
        t = trio.current_time() - start
        await trio.sleep(1.0)
        assert rig.priorities_after(start, t) == [80]  # 90 - 30 + 20, at the next advert
        # The process definition changes (quorum 2): scanned again, now down.
        await reload(rt, config(file_weight=-30, quorum=2))
        t = trio.current_time() - start
        await trio.sleep(1.0)
        assert rig.priorities_after(start, t) == [60]
        # Dropping the file reference stops its watcher.
        await reload(rt, replace(config(quorum=2), vrrp_instances=(
            replace(config().vrrp_instances[0], track_file=()),)))
        t = trio.current_time() - start
        await trio.sleep(1.0)
        assert watch.closed
        assert rig.priorities_after(start, t) == [90]
        assert inst.state is State.MASTER
        assert 0 not in rig.priorities()
