"""track_script / track_interface evaluation and their runners."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from pyalived.config.model import VrrpScript
from pyalived.vrrp.tracking import (
    InstanceTracking,
    ScriptHealth,
    Tracked,
    Verdict,
    run_link_dispatch,
    run_script_tracker,
)
from tests.unit.fakes import FakeLinkWatcher, FakeScriptRunner

# ---- ScriptHealth --------------------------------------------------------------


def test_first_result_decides_at_once() -> None:
    h = ScriptHealth(rise=3, fall=3)
    assert h.ok is None
    assert h.record(False) is True
    assert h.ok is False
    h2 = ScriptHealth(rise=3, fall=3)
    assert h2.record(True) is True
    assert h2.ok is True


def test_rise_and_fall_need_consecutive_results() -> None:
    h = ScriptHealth(rise=2, fall=3)
    h.record(True)
    assert [h.record(False), h.record(False)] == [False, False]
    assert h.record(True) is False  # resets the failure run
    assert [h.record(False), h.record(False), h.record(False)] == [False, False, True]
    assert h.ok is False
    assert h.record(True) is False
    assert h.record(True) is True
    assert h.ok is True


# ---- InstanceTracking ---------------------------------------------------------------


def test_weight_zero_failure_is_fault() -> None:
    t = InstanceTracking(100, [Tracked("chk", 0)], [Tracked("eth0", 0)])
    assert t.verdict() == Verdict(False, 100, "")
    t.update_script("chk", False)
    v = t.verdict()
    assert v.faulty and "chk" in v.reason
    t.update_script("chk", True)
    t.update_link("eth0", False)
    v = t.verdict()
    assert v.faulty and "eth0" in v.reason


def test_positive_weight_adds_when_ok_negative_subtracts_when_failing() -> None:
    t = InstanceTracking(100, [Tracked("up", 20), Tracked("down", -30)])
    assert t.verdict().priority == 100  # nothing reported yet
    t.update_script("up", True)
    assert t.verdict().priority == 120
    t.update_script("down", True)
    assert t.verdict().priority == 120
    t.update_script("down", False)
    assert t.verdict() == Verdict(False, 90, "script up ok +20, script down failing -30")
    t.update_script("up", False)
    assert t.verdict().priority == 70


def test_interface_weights() -> None:
    t = InstanceTracking(100, (), [Tracked("a", 10), Tracked("b", -50)])
    assert t.verdict().priority == 110
    t.update_link("b", False)
    assert t.verdict().priority == 60
    t.update_link("a", False)
    assert t.verdict().priority == 50


def test_priority_is_clamped_and_owner_keeps_255() -> None:
    t = InstanceTracking(250, [Tracked("s", 50)])
    t.update_script("s", True)
    assert t.verdict().priority == 254
    t = InstanceTracking(10, [Tracked("s", -50)])
    t.update_script("s", False)
    assert t.verdict().priority == 1
    t = InstanceTracking(255, [Tracked("s", -50)])
    t.update_script("s", False)
    assert t.verdict().priority == 255


def test_unknown_items_are_ignored() -> None:
    t = InstanceTracking(100, [Tracked("s", 0)])
    t.update_script("other", False)
    t.update_link("eth9", False)
    assert t.verdict() == Verdict(False, 100, "")


# ---- runners -----------------------------------------------------------------------


async def test_script_tracker_runs_every_interval_and_reports_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results = iter([0, 0, 1, 1, 0, 0, 0])
    runner = FakeScriptRunner(results={"/bin/check": lambda: next(results, 0)})
    changes: list[tuple[float, str, bool]] = []
    script = VrrpScript("chk", "/bin/check --quick", interval=2.0, rise=2, fall=2)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(
            run_script_tracker,
            script,
            runner,
            [lambda name, ok: changes.append((trio.current_time() - start, name, ok))],
        )
        await trio.sleep(13)
        nursery.cancel_scope.cancel()
    assert [r.time - start for r in runner.runs] == [0, 2, 4, 6, 8, 10, 12]
    assert runner.runs[0].argv == ("/bin/check", "--quick")
    assert runner.runs[0].timeout == 2.0  # timeout defaults to the interval
    # first result decides; fall=2 failures at t=4,6; rise=2 successes at t=8,10
    assert changes == [(0, "chk", True), (6, "chk", False), (10, "chk", True)]


async def test_script_timeout_counts_as_failure(autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeScriptRunner(durations={"/bin/slow": 5.0})
    changes: list[tuple[float, bool]] = []
    script = VrrpScript("slow", "/bin/slow", interval=3.0, timeout=1.0, user="nobody")
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(
            run_script_tracker,
            script,
            runner,
            [lambda name, ok: changes.append((trio.current_time() - start, ok))],
        )
        await trio.sleep(4)
        nursery.cancel_scope.cancel()
    assert changes == [(1.0, False)]
    assert [r.time - start for r in runner.runs] == [0, 3]
    assert runner.runs[0].user == "nobody"


async def test_overrunning_script_restarts_at_once(autojump_clock: trio.testing.MockClock) -> None:
    runner = FakeScriptRunner(durations={"/bin/slow": 1.5})
    script = VrrpScript("slow", "/bin/slow", interval=1.0, timeout=10.0)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(run_script_tracker, script, runner, [])
        await trio.sleep(4)
        nursery.cancel_scope.cancel()
    assert [r.time - start for r in runner.runs] == [0, 1.5, 3.0]


async def test_link_dispatch_forwards_changes_of_tracked_interfaces() -> None:
    watcher = FakeLinkWatcher(up=("eth0", "eth1"))
    seen: list[tuple[str, bool]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            run_link_dispatch, watcher, {"eth0": [lambda n, up: seen.append((n, up))]}
        )
        await trio.testing.wait_all_tasks_blocked()
        watcher.set("eth1", False)  # not tracked
        watcher.set("eth0", False)
        watcher.set("eth0", False)  # no change: not repeated
        watcher.set("eth0", True)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert seen == [("eth0", False), ("eth0", True)]


@pytest.mark.parametrize(("own", "expected"), [
    ((None, None), ("nobody", "daemon")),  # global_defs' script_user nobody daemon
    (("www-data", None), ("www-data", None)),  # its own user, in that user's group
    (("www-data", "adm"), ("www-data", "adm")),
])
async def test_script_runs_as_its_user_and_group(
    autojump_clock: trio.testing.MockClock, own: tuple[str | None, str | None],
    expected: tuple[str, str | None],
) -> None:
    runner = FakeScriptRunner()
    script = VrrpScript("chk", "/bin/check", interval=1.0, user=own[0], group=own[1])
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_script_tracker, script, runner, [],
                                    default_user="nobody", default_group="daemon"))
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert (runner.runs[0].user, runner.runs[0].group) == expected
