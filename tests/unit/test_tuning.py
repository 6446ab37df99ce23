"""keepalived's child process settings: parsing with keepalived's diagnostics, and the
per-half ``Tuning`` (the kernel side is tests/netns/test_tuning.py)."""

from __future__ import annotations

import os
from pathlib import Path

from pyalived.config import load
from pyalived.config.model import GlobalDefs
from pyalived.tuning import Tuning, describe, spawn_options


def parse(tmp_path: Path, body: str) -> tuple[GlobalDefs | None, list[str]]:
    conf = tmp_path / "keepalived.conf"
    conf.write_text("global_defs {\n" + body + "}\n")
    res = load(str(conf), interface_exists=lambda name: True)
    gd = res.config.global_defs if res.config is not None else None
    return gd, [f"{d.location.line}: {d.message}" for d in res.diagnostics]


def test_every_setting_of_both_children(tmp_path: Path) -> None:
    gd, diags = parse(tmp_path, (
        " vrrp_priority -5\n checker_priority 10\n vrrp_rt_priority 50\n"
        " checker_rt_priority 20\n vrrp_rlimit_rttime 20000\n checker_rlimit_rtime 30000\n"
        " vrrp_no_swap\n checker_no_swap\n vrrp_cpu_affinity 0\n checker_cpu_affinity 0\n"))
    assert gd is not None
    assert diags == ["7: checker_rlimit_rtime is deprecated; write checker_rlimit_rttime"]
    assert Tuning.of(gd, "vrrp") == Tuning(-5, 50, 20000, True, (0,))
    assert Tuning.of(gd, "checker") == Tuning(10, 20, 30000, True, (0,))
    assert describe(Tuning.of(gd, "vrrp")) == (
        "nice -5, real-time priority 50, RLIMIT_RTTIME 20000 us, memory locked, CPUs 0")


def test_bad_values_are_warned_about_as_keepalived_does(tmp_path: Path) -> None:
    """keepalived 2.2.7 warns (exit code 5) and ignores, or clamps, never refuses."""
    cpus = os.cpu_count() or 1
    gd, diags = parse(tmp_path, (
        " vrrp_priority 30\n checker_priority x\n vrrp_rt_priority 0\n"
        f" checker_rt_priority 100\n vrrp_cpu_affinity 0 {cpus} y\n vrrp_rlimit_rttime 0\n"))
    assert gd is not None
    assert diags == [
        "2: vrrp_priority 30 is outside [-20, 19]; ignored",
        "3: checker_priority: 'x' is not a whole number; ignored",
        "4: vrrp_rt_priority 0 is outside [1, 99]; using 1",
        "5: checker_rt_priority 100 is outside [1, 99]; using 99",
        f"6: vrrp_cpu_affinity: CPU {cpus} is outside [0, {cpus - 1}]; ignored",
        "6: vrrp_cpu_affinity: 'y' is not a CPU number; ignored",
        "7: vrrp_rlimit_rttime 0 is not a positive number; ignored",
    ]
    assert Tuning.of(gd, "vrrp") == Tuning(0, 1, None, False, (0,))
    assert Tuning.of(gd, "checker") == Tuning(0, 99)


def test_untuned_by_default(tmp_path: Path) -> None:
    gd, diags = parse(tmp_path, "")
    assert gd is not None and diags == []
    assert Tuning.of(gd, "vrrp") == Tuning.of(gd, "checker") == Tuning()
    assert spawn_options() == {}  # scripts spawn as usual in an untuned process
