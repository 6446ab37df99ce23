"""Virtual MAC, authentication and unicast peers between real routers.

Same lab as test_failover: a bridge, router namespaces running the daemon
under test, a capture on the bridge.  VMAC is judged from the wire (the
advert's source MAC is 00:00:5e:00:01:VRID, RFC 3768 §7.3) and from a client
namespace's neighbour table and pings; authentication from the auth fields of
the captured adverts and from who ends up master; unicast from the adverts'
destination addresses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from pyalived.lab import (
    VIP,
    AdvertKind,
    ArpKind,
    Capture,
    Impl,
    Lab,
    VrrpSpec,
    adverts,
    arp_replies,
    garps,
    render_config,
    wait_for,
)

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0
VRID = 51
VMAC = f"00:00:5e:00:01:{VRID:02x}"


def start_pair(lab: Lab, impl: Impl, spec1: dict[str, Any], spec2: dict[str, Any]) -> None:
    r1, r2 = lab.routers[:2]
    lab.start_daemon(r1, render_config("r1", [VrrpSpec(priority=100, vrid=VRID, **spec1)]), impl)
    lab.start_daemon(r2, render_config("r2", [VrrpSpec(priority=90, vrid=VRID, **spec2)]), impl)


def fail_over_by_cut(lab: Lab, cap: Capture) -> float:
    """Cut r1 off; wait for r2 to hold the VIP alone and advertise; return that advert's time."""
    r1, r2 = lab.routers[:2]
    lab.wait_sole_holder(r1, timeout=SETTLE)
    lab.cut(r1)
    cut_at = time.time()
    lab.wait_sole_holder(r2, timeout=SETTLE)
    first: float = cap.wait_for(
        lambda ev: [e.time for e in adverts(ev, src=r2.ip, after=cut_at) if e.priority],
        SETTLE, what="r2 advertising")[0]
    return first


def test_vmac_on_the_wire_and_in_the_client_arp_cache(make_lab: MakeLab, impl: Impl) -> None:
    lab = make_lab(routers=2, clients=1)
    r1, r2 = lab.routers
    (client,) = lab.clients
    cap = lab.capture()
    start_pair(lab, impl, {"use_vmac": True}, {"use_vmac": True})
    lab.wait_sole_holder(r1, timeout=SETTLE)

    first = cap.wait_for(lambda ev: adverts(ev, src=r1.ip), SETTLE, what="r1 adverts")[0]
    assert first.src_mac == VMAC
    assert wait_for(lambda: lab.ping(client, VIP), SETTLE, interval=0.5, what="ping VIP")

    took_over = fail_over_by_cut(lab, cap)
    new_adverts = adverts(cap.events(), src=r2.ip, after=took_over - 0.001)
    assert {e.src_mac for e in new_adverts} == {VMAC}
    announced = cap.wait_for(lambda ev: garps(ev, ip=VIP, after=took_over - 0.001), SETTLE,
                             what="r2's gratuitous ARPs")
    assert {e.src_mac for e in announced} == {VMAC}
    # The client's existing entry now points at the VMAC (refreshed by the GARP; the
    # router's eth0 address never replaced it).
    wait_for(lambda: lab.neighbours(client).get(VIP) == VMAC, SETTLE, what="client ARP entry")
    assert wait_for(lambda: lab.ping(client, VIP), SETTLE, interval=0.5, what="ping VIP again")
    # Whoever was master, the VIP was only ever announced at the virtual MAC.
    replies = arp_replies(cap.events(), ip=VIP)
    assert replies
    assert {e.kind.sender_mac for e in replies if isinstance(e.kind, ArpKind)} == {VMAC}


@pytest.mark.parametrize("auth_type", ["PASS", "AH"])
def test_authentication_between_two_routers(make_lab: MakeLab, impl: Impl,
                                            auth_type: str) -> None:
    lab = make_lab(routers=2)
    r1 = lab.routers[0]
    cap = lab.capture()
    auth = {"auth_type": auth_type, "auth_pass": "s3cret"}
    start_pair(lab, impl, auth, auth)
    lab.wait_sole_holder(r1, timeout=SETTLE)

    seen = cap.wait_for(lambda ev: adverts(ev, src=r1.ip), SETTLE, what="r1 adverts")
    for event in seen:
        kind = event.kind
        assert isinstance(kind, AdvertKind)
        assert kind.ah is (auth_type == "AH")
        if auth_type == "PASS":
            assert kind.auth_type == 1
            assert kind.auth_data == b"s3cret\0\0"
        else:
            assert kind.auth_type == 2

    fail_over_by_cut(lab, cap)
    lab.reconnect(r1)
    lab.wait_sole_holder(r1, timeout=SETTLE)


def test_password_mismatch_is_ignored(make_lab: MakeLab, impl: Impl) -> None:
    """Adverts failing authentication are dropped (RFC 3768 §7.1): both sides stay master."""
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    cap = lab.capture()
    start_pair(lab, impl, {"auth_type": "PASS", "auth_pass": "alpha"},
               {"auth_type": "PASS", "auth_pass": "bravo"})
    wait_for(lambda: len(lab.holders()) == 2, SETTLE, what="both routers master")
    since = time.time()
    for _ in range(8):  # two Master_Down_Intervals: nobody ever yields
        time.sleep(0.5)
        assert len(lab.holders()) == 2
    sources = {e.src for e in adverts(cap.events(), after=since) if e.priority}
    if impl == "keepalived":
        # keepalived 2.2.7's master pushes its own advert timer back on every packet it
        # receives, even one it rejects, so the lower priority side falls silent while
        # still holding the VIP.  RFC 3768 §6.4.3 wants both to keep advertising.
        assert r1.ip in sources
    else:
        assert sources == {r1.ip, r2.ip}


def test_unicast_peers(make_lab: MakeLab, impl: Impl) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    cap = lab.capture()
    start_pair(lab, impl,
               {"unicast_src_ip": r1.ip, "unicast_peers": (r2.ip,)},
               {"unicast_src_ip": r2.ip, "unicast_peers": (r1.ip,)})
    lab.wait_sole_holder(r1, timeout=SETTLE)
    from_r1 = cap.wait_for(lambda ev: adverts(ev, src=r1.ip), SETTLE, what="r1 adverts")
    assert {e.dst for e in from_r1} == {r2.ip}

    took_over = fail_over_by_cut(lab, cap)
    from_r2 = adverts(cap.events(), src=r2.ip, after=took_over - 0.001)
    assert {e.dst for e in from_r2} == {r1.ip}
    lab.reconnect(r1)
    lab.wait_sole_holder(r1, timeout=SETTLE)
    assert not [e for e in adverts(cap.events()) if e.dst == "224.0.0.18"]
