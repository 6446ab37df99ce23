"""State, statistics and JSON dumps: the pure formatting, and the daemon's signals."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from pyalived import dump
from pyalived.config.model import Config, InitialState, TrackScriptRef, VrrpScript
from pyalived.daemon import DaemonOptions, run_daemon
from pyalived.vrrp.runtime import VrrpPorts, VrrpRuntime
from tests.unit.test_instance import Rig, instance_conf

CHK = VrrpScript(name="chk", script="/bin/chk", weight=-20)


def config() -> Config:
    master = instance_conf(priority=255, state=InitialState.MASTER)
    backup = instance_conf(name="VI_2", virtual_router_id=52, priority=100,
                           track_script=(TrackScriptRef("chk"),))
    return Config(vrrp_scripts=(CHK,), vrrp_instances=(master, backup))


@asynccontextmanager
async def runtime(rig: Rig) -> AsyncIterator[VrrpRuntime]:
    async with trio.open_nursery() as nursery:
        rt = VrrpRuntime(config(), rig.ports, rig.counters)
        await nursery.start(rt.run)
        yield rt
        nursery.cancel_scope.cancel()


def test_signals_are_keepalived_s() -> None:
    assert dump.SIGDATA == signal.SIGUSR1
    assert dump.SIGSTATS == signal.SIGUSR2
    assert int(dump.SIGJSON) == 36  # `keepalived --signum=JSON` on Linux


async def test_data_dump_shows_state_priorities_vips_timers_tracking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    rig.scripts.results["/bin/chk"] = 1
    async with runtime(rig) as rt:
        await trio.sleep(0.25)
        text = dump.format_data(rt.instances, trio.current_time())
    blocks = text.split("\n\n")
    vi1 = next(b for b in blocks if "VRRP instance VI_1" in b)
    vi2 = next(b for b in blocks if "VRRP instance VI_2" in b)
    assert "State                = MASTER" in vi1
    assert "Effective priority   = 255" in vi1
    assert "Next timer in        = 0.750 s" in vi1  # the next advert
    assert "198.18.0.100/24 dev eth0" in vi1
    assert "State                = BACKUP" in vi2
    assert "Base priority        = 100" in vi2
    assert "Effective priority   = 80" in vi2
    assert "Tracked script       = chk (failing)" in vi2
    assert "Tracked interfaces   = eth0" in vi2


async def test_stats_and_json_dumps_count_per_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    async with runtime(rig) as rt:
        await trio.sleep(2.5)
        now = trio.current_time()
        stats = dump.format_stats(rt.instances, rig.counters)
        doc = json.loads(dump.format_json(rt.instances, rig.counters, now))
    assert "VRRP instance VI_1" in stats
    assert "Sent               = 3" in stats  # adverts at 0, 1, 2
    assert [d["data"]["name"] for d in doc] == ["VI_1", "VI_2"]
    assert doc[0]["data"]["state"] == "MASTER"
    assert doc[0]["stats"]["adverts_sent"] == 3
    assert doc[0]["stats"]["became"]["MASTER"] == 1
    assert doc[1]["data"]["vips"] == ["198.18.0.100/24 dev eth0"]


def test_write_atomically_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "pyalived.data"
    target.write_text("old")
    dump.write_atomically(target, "new\n")
    assert target.read_text() == "new\n"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["pyalived.data"]


async def test_daemon_writes_the_dumps_on_its_signals(tmp_path: Path) -> None:
    rig = Rig()

    @asynccontextmanager
    async def fake_ports(conf: Config) -> AsyncIterator[VrrpPorts]:
        yield rig.ports

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_daemon(
                config(), DaemonOptions(dump_dir=str(tmp_path)), ports=fake_ports,
                counters=rig.counters, task_status=task_status,
            )
        )
        for signum in (dump.SIGDATA, dump.SIGSTATS, dump.SIGJSON):
            os.kill(os.getpid(), signum)
        with trio.fail_after(10):
            names = ("pyalived.data", "pyalived.stats", "pyalived.json")
            while not all((tmp_path / n).exists() for n in names):
                await trio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
    assert "VRRP instance VI_1" in (tmp_path / "pyalived.data").read_text()
    assert "Adverts" in (tmp_path / "pyalived.stats").read_text()
    assert json.loads((tmp_path / "pyalived.json").read_text())[0]["data"]["vrid"] == 51
