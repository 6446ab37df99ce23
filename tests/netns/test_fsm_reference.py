"""keepalived 2.2.7 observations that ``pyalived.vrrp.fsm`` reproduces, as executable checks.

These always run the reference daemon (keepalived), whatever the
implementation under test: they document the behaviour the pure state
machine was modelled on, so a keepalived upgrade that changes it shows up
here.  Judged from the bridge capture; thresholds separate behaviours
(e.g. "at once" vs "after a Master_Down_Interval of 3.6 s"), they are not
performance budgets.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest

from pyalived.lab import VIP, Lab, VrrpSpec, adverts, garps, render_config

pytestmark = [pytest.mark.netns, pytest.mark.interop]

MakeLab = Callable[..., Lab]
SETTLE = 30.0


def first_advert_after(lab: Lab, since: float, src: str) -> float:
    cap = lab.captures[-1]
    return cap.wait_for(
        lambda ev: [e.time for e in adverts(ev, src=src, after=since) if e.priority],
        SETTLE,
        what=f"an advert from {src}",
    )[0]


@pytest.mark.parametrize(
    ("priority", "state", "at_once"),
    [(100, "MASTER", False), (255, "MASTER", True), (255, "BACKUP", False)],
)
def test_startup_listens_first_unless_owner_with_state_master(
    make_lab: MakeLab, priority: int, state: str, at_once: bool
) -> None:
    lab = make_lab(routers=1)
    (r1,) = lab.routers
    lab.capture()
    started = time.time()
    config = render_config("r1", [VrrpSpec(priority=priority, state=state)])
    lab.start_daemon(r1, config, "keepalived")
    first = first_advert_after(lab, started, r1.ip)
    if at_once:
        assert first - started < 3.0
    else:
        assert first - started > 3.0  # a whole Master_Down_Interval of listening


def deafen(lab: Lab, src: str) -> None:
    """Drop VRRP sent by ``src`` on the bridge: the others no longer hear it."""
    script = (
        "table bridge fsmref {\n chain fwd_filter {\n"
        "  type filter hook forward priority 0; policy accept;\n"
        f"  ip saddr {src} ip protocol 112 drop\n }}\n}}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", lab.bridge_ns, "nft", "-f", "-"],
        input=script,
        text=True,
        capture_output=True,
        check=True,
    )


def test_master_answers_a_lower_priority_master_with_advert_and_garps(make_lab: MakeLab) -> None:
    # r2 (90) cannot hear r1 (100) and stays MASTER; r1 hears every advert of
    # r2 and answers each one at once with an advert and a GARP burst.
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    cap = lab.capture()
    deafen(lab, r1.ip)
    for node, prio in ((r1, 100), (r2, 90)):
        spec = VrrpSpec(priority=prio, garp_master_delay=0)  # no delayed GARP bursts
        lab.start_daemon(node, render_config(node.name, [spec]), "keepalived")
    became_master = first_advert_after(lab, 0.0, r1.ip)
    r1_mac = lab.mac(r1)
    answers = cap.wait_for(
        lambda ev: [e for e in garps(ev, ip=VIP, after=became_master + 0.5) if e.src_mac == r1_mac],
        SETTLE,
        what="r1's answer to the lower-priority master",
    )
    events = cap.events()
    r2_adverts = [e.time for e in adverts(events, src=r2.ip) if e.priority]
    r1_adverts = [e.time for e in adverts(events, src=r1.ip) if e.priority]
    heard = max(t for t in r2_adverts if t <= answers[0].time)
    answer = min(t for t in r1_adverts if t >= heard)
    # Advert and GARPs follow the lower-priority advert at once, not on r1's 1 s cadence.
    assert answer - heard < 0.1
    assert answers[0].time - answer < 0.1


def test_master_entering_fault_sends_priority_zero(make_lab: MakeLab) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    for node in lab.routers:
        lab.add_dummy(node, "trk0")
    cap = lab.capture()
    for node, prio in ((r1, 100), (r2, 90)):
        spec = VrrpSpec(priority=prio, track_interfaces=("trk0",))
        lab.start_daemon(node, render_config(node.name, [spec]), "keepalived")
    lab.wait_sole_holder(r1, timeout=SETTLE)
    down = time.time()
    lab.set_link(r1, "trk0", up=False)
    zero = cap.wait_for(
        lambda ev: [e for e in adverts(ev, src=r1.ip, after=down) if e.priority == 0],
        SETTLE,
        what="r1's priority-0 advert",
    )[0]
    took_over = first_advert_after(lab, zero.time, r2.ip)
    assert took_over - zero.time < 2.0  # Skew_Time, not Master_Down_Interval
    lab.wait_sole_holder(r2, timeout=SETTLE)
