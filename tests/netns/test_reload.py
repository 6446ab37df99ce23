"""SIGHUP reload and the dump signals on a two-router pyalived namespace LAN.

Each test starts r1 (priority 100, the master) and r2 (priority 90), waits
for r1 to hold the VIP, rewrites a config and sends SIGHUP, then judges from
the bridge capture and the namespaces' addresses that the reload disturbed
nothing it was not asked to change.  Waits are generous polls.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyalived.lab import (
    VIP,
    Lab,
    Node,
    VrrpSpec,
    adverts,
    daemon_argv,
    garps,
    render_config,
    wait_for,
)

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0
VIP2 = "198.18.0.101"
VIP3 = "198.18.0.102"
R1 = VrrpSpec(priority=100, garp_master_delay=0)
R2 = VrrpSpec(priority=90, garp_master_delay=0)
SECOND = VrrpSpec(priority=100, vrid=52, name="VI_2", vips=(f"{VIP3}/24",), garp_master_delay=0)


def start(lab: Lab, dump_dir: Path | None = None) -> tuple[Node, Node]:
    r1, r2 = lab.routers
    for node, spec in ((r1, R1), (r2, R2)):
        conf = lab.write_config(node, render_config(node.name, [spec]))
        if dump_dir is None:
            lab.start_daemon(node, conf)
        else:
            argv = [*daemon_argv("pyalived", conf, lab.workdir / node.name),
                    "--dump-dir", str(dump_dir)]
            node.daemon = lab.spawn(node, argv, f"{node.name}-pyalived")
    lab.wait_sole_holder(r1, timeout=SETTLE)
    time.sleep(1.5)  # past the start-up GARP bursts
    return r1, r2


def reload(lab: Lab, node: Node, *specs: VrrpSpec, text: str | None = None) -> float:
    lab.write_config(node, text if text is not None else render_config(node.name, list(specs)))
    since = time.time()
    assert node.daemon is not None
    node.daemon.signal(signal.SIGHUP)
    return since


def wait_log(node: Node, needle: str) -> None:
    assert node.daemon is not None
    daemon = node.daemon
    wait_for(lambda: needle in daemon.log_text(), SETTLE, what=f"{needle!r} in the log")


def test_adding_an_instance_leaves_the_first_undisturbed(make_lab: MakeLab) -> None:
    lab = make_lab(routers=2)
    cap = lab.capture()
    r1, r2 = start(lab)
    since = reload(lab, r1, R1, SECOND)
    lab.wait_sole_holder(r1, ip=VIP3, timeout=SETTLE)  # VI_2 alone on VRID 52
    time.sleep(2.0)
    events = cap.events()
    assert garps(events, ip=VIP, after=since) == []
    assert {e.priority for e in adverts(events, src=r1.ip, vrid=51, after=since)} == {100}
    assert adverts(events, src=r2.ip, after=since) == []
    assert VIP in lab.addresses(r1) and lab.holders() == [r1]
    assert r1.daemon is not None and "MASTER -> " not in r1.daemon.log_text()


def test_adding_a_vip_announces_only_it_and_the_backup_stays_quiet(make_lab: MakeLab) -> None:
    lab = make_lab(routers=2)
    cap = lab.capture()
    r1, r2 = start(lab)
    both = VrrpSpec(priority=100, garp_master_delay=0, vips=(f"{VIP}/24", f"{VIP2}/24"))
    # The backup learns the new address list first (its own reload: it sends nothing).
    since = reload(lab, r2, VrrpSpec(priority=90, garp_master_delay=0,
                                     vips=(f"{VIP}/24", f"{VIP2}/24")))
    wait_log(r2, "reload: VRRP instances")
    reload(lab, r1, both)
    wait_for(lambda: VIP2 in lab.addresses(r1), SETTLE, what="the new VIP on r1")
    time.sleep(2.0)
    events = cap.events()
    assert garps(events, ip=VIP, after=since) == []
    assert len(garps(events, ip=VIP2, after=since)) == 5
    assert adverts(events, src=r2.ip, after=since) == []
    assert lab.holders() == [r1] and lab.holders(VIP2) == [r1]


def test_an_invalid_config_keeps_everything_running(make_lab: MakeLab) -> None:
    lab = make_lab(routers=2)
    cap = lab.capture()
    r1, _r2 = start(lab)
    since = reload(lab, r1, text="vrrp_instance VI_1 {\n    no_such_keyword_here 1\n")
    wait_log(r1, "reload refused")
    time.sleep(1.5)
    events = cap.events()
    assert lab.holders() == [r1]
    assert {e.priority for e in adverts(events, src=r1.ip, after=since)} == {100}
    assert garps(events, after=since) == []


def test_a_removed_master_instance_hands_over_with_priority_zero(make_lab: MakeLab) -> None:
    lab = make_lab(routers=2)
    cap = lab.capture()
    r1, r2 = start(lab)
    since = reload(lab, r1, SECOND)
    lab.wait_sole_holder(r2, timeout=SETTLE)
    first_r2 = cap.wait_for(lambda ev: adverts(ev, src=r2.ip, vrid=51, after=since), SETTLE,
                            what="r2's first advert")[0]
    events = cap.events()
    # Until the reload (a reader process reads the file) takes effect r1 still
    # advertises as usual; then one priority-0 advert, and nothing more.
    sent = adverts(events, src=r1.ip, vrid=51, after=since)
    assert [e.priority for e in sent][-1:] == [0]
    assert {e.priority for e in sent[:-1]} <= {100}
    zero = sent[-1]
    assert first_r2.time - zero.time < 1.0  # Skew_Time (0.648 s), not Master_Down


def test_dump_signals_write_the_files(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab(routers=2)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    r1, _ = start(lab, dump_dir=dumps)
    assert r1.daemon is not None
    for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGRTMIN + 2):
        r1.daemon.signal(signum)
    names = ("pyalived.data", "pyalived.stats", "pyalived.json")
    wait_for(lambda: all((dumps / n).exists() for n in names), SETTLE, what="the dumps")
    assert "State                = MASTER" in (dumps / "pyalived.data").read_text()
    assert "Adverts" in (dumps / "pyalived.stats").read_text()
    (doc,) = json.loads((dumps / "pyalived.json").read_text())
    assert doc["data"]["state"] == "MASTER"
    assert doc["stats"]["adverts_sent"] > 0
