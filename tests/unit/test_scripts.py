"""TrioScriptRunner with real processes: exit codes, timeouts, users, notify.

These tests start small ``sh`` scripts; they need root only for the user
switch test.  Each checks behaviour (statuses, files the scripts leave,
processes gone), never how long something took.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from pyalived.scripts import TrioScriptRunner, split_command


def test_split_command() -> None:
    assert split_command("/bin/check") == ["/bin/check"]
    assert split_command("  /bin/check   a\tb  ") == ["/bin/check", "a", "b"]
    assert split_command("/s 'a b' \"c d\" g'h i'j") == ["/s", "a b", "c d", "gh ij"]
    assert split_command("/s '' x") == ["/s", "", "x"]
    assert split_command("/s \"it's\" 'say \"hi\"'") == ["/s", "it's", 'say "hi"']
    assert split_command("/s a\\b") == ["/s", "a\\b"]
    assert split_command("/s 'unterminated x") == ["/s", "unterminated x"]
    assert split_command("") == []


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


async def wait_path(path: Path, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not path.exists() or not path.read_text().strip():
            await trio.sleep(0.01)


def alive(pid: int) -> bool:
    """True while ``pid`` exists at all, zombies included."""
    return Path(f"/proc/{pid}").exists()


@pytest.fixture
async def runner() -> AsyncIterator[TrioScriptRunner]:
    r = TrioScriptRunner(shutdown_grace=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run_forever)
        yield r
        nursery.cancel_scope.cancel()


async def test_exit_statuses(runner: TrioScriptRunner) -> None:
    assert await runner.run(["/bin/true"], None, None) == 0
    assert await runner.run(sh("exit 3"), 5.0, None) == 3
    assert await runner.run(sh("kill -9 $$"), 5.0, None) == 137
    assert await runner.run(["/nonexistent/script"], 5.0, None) == 127


async def test_timeout_kills_whole_group(runner: TrioScriptRunner, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    status = await runner.run(sh(f"sleep 60 & echo $$ $! > {pids}; wait"), 0.5, None)
    assert status == -1
    leader, child = map(int, pids.read_text().split())
    with trio.fail_after(10):  # the background child is reparented, then reaped by init
        while alive(child):
            await trio.sleep(0.01)
    assert not alive(leader)  # reaped: not even a zombie


async def test_cancelled_run_kills_and_reaps(runner: TrioScriptRunner, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run, sh(f"echo $$ > {pid_file}; exec sleep 60"), None, None)
        await wait_path(pid_file)
        nursery.cancel_scope.cancel()
    assert not alive(int(pid_file.read_text()))


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_runs_as_user(runner: TrioScriptRunner) -> None:
    nobody = pwd.getpwnam("nobody")
    check = f'[ "$(id -u)" = {nobody.pw_uid} ] && [ "$(id -g)" = {nobody.pw_gid} ]'
    groups = ' '.join(str(g) for g in os.getgrouplist("nobody", nobody.pw_gid))
    check += f' && [ "$(id -G)" = "{groups}" ]'
    assert await runner.run(sh(check), 5.0, "nobody") == 0
    assert await runner.run(sh(check), 5.0, None) != 0  # root stays root
    assert await runner.run(sh("true"), 5.0, "no-such-user-here") == 127


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_runs_as_user_and_group(runner: TrioScriptRunner) -> None:
    """``user USER GROUP`` / ``script_user USER GROUP``: the group given, not the user's."""
    nobody, daemon = pwd.getpwnam("nobody"), grp.getgrnam("daemon")
    assert nobody.pw_gid != daemon.gr_gid
    check = f'[ "$(id -u)" = {nobody.pw_uid} ] && [ "$(id -g)" = {daemon.gr_gid} ]'
    assert await runner.run(sh(check), 5.0, "nobody", "daemon") == 0
    assert await runner.run(sh(check), 5.0, "nobody") != 0
    # root in another group is a switch too
    assert await runner.run(sh(f'[ "$(id -g)" = {daemon.gr_gid} ]'), 5.0, "root", "daemon") == 0
    assert await runner.run(sh("true"), 5.0, "nobody", "no-such-group-here") == 127


async def test_notify_runs_in_background_and_is_reaped(runner: TrioScriptRunner,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    runner.notify(["/bin/sh", "-c", f'echo "$0 $1 $$" > {out}', "VI_1", "MASTER"], None)
    await wait_path(out)
    name, state, pid = out.read_text().split()
    assert (name, state) == ("VI_1", "MASTER")
    with trio.fail_after(10):
        while alive(int(pid)):
            await trio.sleep(0.01)


async def test_notify_before_start_and_at_shutdown(tmp_path: Path) -> None:
    early, late, slow = tmp_path / "early", tmp_path / "late", tmp_path / "slow"
    r = TrioScriptRunner(shutdown_grace=10.0)
    r.notify(sh(f"echo ok > {early}"), None)  # queued until the runner starts
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run_forever)
        await wait_path(early)
        r.notify(sh(f"sleep 0.3; echo ok > {late}"), None)
        nursery.cancel_scope.cancel()
        # notified while shutting down: still runs within the grace period
        r.notify(sh(f"sleep 0.3; echo ok > {slow}"), None)
    assert late.read_text() == "ok\n"
    assert slow.read_text() == "ok\n"
    r.notify(sh("true"), None)  # after shutdown: dropped with a warning, no error


async def test_shutdown_grace_then_kill(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    r = TrioScriptRunner(shutdown_grace=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run_forever)
        r.notify(sh(f"echo $$ > {pid_file}; exec sleep 60"), None)
        await wait_path(pid_file)
        nursery.cancel_scope.cancel()
    assert not alive(int(pid_file.read_text()))
