"""Hostile configurations against the real daemon: the director never goes down.

The operator's scenario: a director pair runs, r1 (priority 100) holding the
VIP and r2 (priority 90) backing it up.  Someone appends garbage to r1's
keepalived.conf -- a thousand braces, an include of /dev/zero or of a FIFO, a
variable bomb, ten megabytes of braces, random text -- and sends SIGHUP.
Each reload must be refused with a ``file:line`` error while r1 keeps the VIP
and keeps advertising at priority 100, so that r2 never hears a reason to
take over; after all of it a repaired file still reloads, and SIGTERM still
hands over at once.  A separate scenario runs an instance with 300 VIPs as
MASTER next to keepalived 2.2.7: both cut the advert at 255 addresses, so
they agree on every election.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from pyalived.lab import (
    VIP,
    Capture,
    Lab,
    Node,
    VrrpSpec,
    adverts,
    render_config,
    wait_for,
)
from tests.unit.test_config_limits import config_text

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0
R1 = VrrpSpec(priority=100, garp_master_delay=0)
R2 = VrrpSpec(priority=90, garp_master_delay=0)
DONE = ("reload refused: keeping the running configuration", "reload: ")


def reloads_done(node: Node) -> int:
    assert node.daemon is not None
    text = node.daemon.log_text()
    return sum(text.count(needle) for needle in DONE)


def sighup(lab: Lab, node: Node, text: str) -> str:
    """Write ``text`` as ``node``'s config, SIGHUP it, wait for the verdict; the new log."""
    assert node.daemon is not None
    daemon = node.daemon
    before = len(daemon.log_text())
    done = reloads_done(node)
    lab.write_config(node, text)
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: reloads_done(node) > done, SETTLE, what="the reload's verdict")
    return daemon.log_text()[before:]


def assert_undisturbed(lab: Lab, cap: Capture, r1: Node, r2: Node, since: float) -> None:
    assert r1.daemon is not None and r1.daemon.running
    assert lab.holders() == [r1]
    events = cap.events()
    assert {e.priority for e in adverts(events, src=r1.ip, after=since)} <= {100}
    assert adverts(events, src=r2.ip, after=since) == []


@pytest.fixture
def pair(make_lab: MakeLab) -> Iterator[tuple[Lab, Capture, Node, Node]]:
    lab = make_lab(routers=2)
    cap = lab.capture()
    r1, r2 = lab.routers
    lab.start_daemon(r1, render_config("r1", [R1]))
    lab.start_daemon(r2, render_config("r2", [R2]))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    time.sleep(1.5)  # past the start-up GARPs
    yield lab, cap, r1, r2


def test_garbage_appended_to_a_running_config_is_refused_and_nothing_moves(
    pair: tuple[Lab, Capture, Node, Node], tmp_path: Path
) -> None:
    lab, cap, r1, r2 = pair
    good = render_config("r1", [R1])
    fifo = tmp_path / "include.fifo"
    os.mkfifo(fifo)
    bomb = "$A=" + "x" * 1000 + "\n" + "".join(
        f"${chr(66 + i)}=" + f"${{{chr(65 + i)}}}" * 10 + "\n" for i in range(8)) + "$I\n"
    fan = tmp_path / "fan"
    fan.mkdir()
    for i in range(30):
        (fan / f"f{i}.inc").write_text(
            f"include f{i + 1}.inc\ninclude f{i + 1}.inc\n" if i < 29 else "# leaf\n")
    suffixes = {
        "a thousand braces": ("{" * 1000 + "\n", "nested deeper than 32 levels"),
        "include /dev/zero": ("include /dev/zero\n", "/dev/zero is not a regular file"),
        "include of a FIFO": (f"include {fifo}\n", "is not a regular file"),
        "variable bomb": (bomb, "longer than 65536 characters"),
        "a billion-step ~SEQ": ("~SEQ(N, 1, 1000000000) x_$N\n", "~SEQ makes 1000000000 lines"),
        "nested ~SEQs": ("~SEQ(A, 3) ~SEQ(B, 2000000) x\n", "~SEQ makes 2000000 lines"),
        "a variable that uses itself": ("$L=${L}\nx ${L}\n", "variables substituted"),
        "10 MB of open braces": ("{\n" * 5_000_000, "nested deeper than 32 levels"),
        "10 MB of closing braces": ("}" * 10_000_000, "line longer than 65536"),
        "fanned-out includes": (f"include {fan}/f0.inc\n", "configuration files opened"),
    }
    since = time.time()
    for what, (suffix, needle) in suffixes.items():
        log = sighup(lab, r1, good + suffix)
        assert "reload refused" in log, what
        assert re.search(rf"/\S+:\d+: error: .*{re.escape(needle)}", log), (what, log[-2000:])
        assert "Traceback" not in log, what
        assert_undisturbed(lab, cap, r1, r2, since)
    # Nobody wrote to the FIFO: the reload did not wait for a writer.
    # The file is repaired (a second VIP added): the next reload applies it.
    fixed = VrrpSpec(priority=100, garp_master_delay=0, vips=(f"{VIP}/24", "198.18.0.101/24"))
    log = sighup(lab, r1, render_config("r1", [fixed]))
    assert "reload: " in log
    wait_for(lambda: "198.18.0.101" in lab.addresses(r1), SETTLE, what="the added VIP")
    # SIGTERM is handled at once: r1 hands over with a priority-0 advert.
    assert r1.daemon is not None
    stop = time.time()
    r1.daemon.terminate()
    assert r1.daemon.wait(10) == 0
    lab.wait_sole_holder(r2, timeout=SETTLE)
    cap.wait_for(lambda ev: bool(adverts(ev, src=r1.ip, after=stop)), SETTLE,
                 what="r1's last advert in the capture")  # (the capture is read from a file)
    assert [e.priority for e in adverts(cap.events(), src=r1.ip, after=stop)] == [0]


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(garbage=config_text())
def test_random_garbage_on_sighup_never_disturbs_the_master(
    pair: tuple[Lab, Capture, Node, Node], garbage: str
) -> None:
    lab, cap, r1, r2 = pair
    since = time.time()
    log = sighup(lab, r1, render_config("r1", [R1]) + "\n" + garbage)
    assert "Traceback" not in log
    time.sleep(1.2)  # at least one more advert after the verdict
    assert_undisturbed(lab, cap, r1, r2, since)


def test_an_include_fifo_cannot_hold_up_sigterm(make_lab: MakeLab, tmp_path: Path) -> None:
    """The reload that named a FIFO is over before anyone opens its other end."""
    lab = make_lab(routers=1)
    (r1,) = lab.routers
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    lab.start_daemon(r1, render_config("r1", [R1]))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    log = sighup(lab, r1, render_config("r1", [R1]) + f"include {fifo}\n")
    assert "is not a regular file" in log
    assert r1.daemon is not None
    r1.daemon.terminate()
    assert r1.daemon.wait(10) == 0
    assert VIP not in lab.addresses(r1)


def vips(n: int) -> tuple[str, ...]:
    return tuple(f"198.18.{1 + i // 250}.{1 + i % 250}/32" for i in range(n))


def test_300_vips_as_master_next_to_keepalived(make_lab: MakeLab) -> None:
    """Both daemons advertise the first 255 addresses and configure all 300."""
    lab = make_lab(routers=2)
    cap = lab.capture()
    r1, r2 = lab.routers
    many = vips(300)
    first, last = many[0].split("/")[0], many[-1].split("/")[0]
    lab.start_daemon(r1, render_config("r1", [VrrpSpec(priority=100, vips=many)]))
    lab.start_daemon(r2, render_config("r2", [VrrpSpec(priority=90, vips=many)]),
                     impl="keepalived")
    lab.wait_sole_holder(r1, ip=last, timeout=SETTLE)
    ips = {v.split("/")[0] for v in many}
    wait_for(lambda: ips <= lab.addresses(r1), SETTLE, what="all 300 VIPs on r1")
    time.sleep(5)  # well past Master_Down_Interval: keepalived took r1's adverts
    assert r1.daemon is not None and r1.daemon.running
    assert lab.holders(first) == [r1] and lab.holders(last) == [r1]
    events = cap.events()
    ours = adverts(events, src=r1.ip)
    assert ours and all(len(e.kind.addresses) == 255 for e in ours)  # type: ignore[union-attr]
    assert ours[-1].kind.addresses[-1] == many[254].split("/")[0]  # type: ignore[union-attr]
    assert all(e.priority == 100 for e in ours)
    # keepalived takes over when r1 stops, with the same 255-address advert.
    stop = time.time()
    r1.daemon.terminate()
    assert r1.daemon.wait(10) == 0
    lab.wait_sole_holder(r2, ip=last, timeout=SETTLE)
    theirs = cap.wait_for(lambda ev: adverts(ev, src=r2.ip, after=stop), SETTLE,
                          what="keepalived's adverts")
    assert len(theirs[0].kind.addresses) == 255  # type: ignore[union-attr]
    assert not ips & lab.addresses(r1)
