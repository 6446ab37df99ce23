"""virtual_routes, virtual_rules and the static blocks with the real binary, on a
namespace LAN, next to keepalived 2.2.7.

Each test builds a lab, starts daemons, and judges from the routing tables and
rule lists of the namespaces (``ip route show table all``, ``ip rule``, read as
an operator reads them) what is on each host after each step of the operator's
story: a router taking over and handing back the VIP, a daemon stopped, a
daemon SIGKILLed and started again (as MASTER, and as a BACKUP that must not
keep yesterday's routes), a reload that adds and drops routes under a MASTER
that must keep its VIP the whole time.  Routes and rules live only in the
lab's namespaces, which the lab deletes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from pyalived.lab import (
    REPO_ROOT,
    VIP,
    Impl,
    Lab,
    Node,
    VrrpSpec,
    adverts,
    daemon_argv,
    render_config,
    wait_for,
)
from pyalived.pidfile import read_pid

pytestmark = pytest.mark.netns

MakeLab = Callable[..., Lab]
SETTLE = 30.0

VIRTUAL = (
    "virtual_routes {",
    "    198.18.7.0/24 via 198.18.0.1 table 100",
    f"    src {VIP} 198.18.8.0/24 dev eth0",
    "    blackhole 198.18.9.0/24",
    "    unreachable fd00:198:18:9::/64",
    "}",
    "virtual_rules {",
    f"    from {VIP} table 100 preference 100",
    "    to fd00:198:18:7::/64 table 100 preference 101",
    "}",
)
VIRTUAL_ROUTES = {
    "198.18.7.0/24 via 198.18.0.1 dev eth0 table 100 proto keepalived",
    f"198.18.8.0/24 dev eth0 proto keepalived src {VIP}",
    "blackhole 198.18.9.0/24 proto keepalived",
    "unreachable fd00:198:18:9::/64 dev lo proto keepalived metric 1024 pref medium",
}
VIRTUAL_RULES = {
    f"100: from {VIP} lookup 100 proto keepalived",
    "101: from all to fd00:198:18:7::/64 lookup 100 proto keepalived",
}

STATICS = """
static_ipaddress {
    198.18.5.5/32 dev eth0
    fd00:198:18::5/128 dev eth0
}
static_routes {
    198.18.6.0/24 via 198.18.0.1 dev eth0
    fd00:198:18:6::/64 dev eth0
}
static_rules {
    from 198.18.5.5 table 200 preference 200
}
"""
STATIC_ROUTES = {
    "198.18.6.0/24 via 198.18.0.1 dev eth0 proto keepalived",
    "fd00:198:18:6::/64 dev eth0 proto keepalived metric 1024 pref medium",
}
STATIC_RULES = {"200: from 198.18.5.5 lookup 200 proto keepalived"}
STATIC_ADDRESSES = {"198.18.5.5/32", "fd00:198:18::5/128"}


@dataclass(frozen=True)
class Host:
    """What a namespace holds of ours: the routes and rules tagged proto keepalived,
    and its addresses."""

    routes: frozenset[str]
    rules: frozenset[str]
    addresses: frozenset[str]

    def virtual(self) -> tuple[set[str], set[str]]:
        return set(self.routes - STATIC_ROUTES), set(self.rules - STATIC_RULES)


def host(lab: Lab, node: Node) -> Host:
    routes: set[str] = set()
    rules: set[str] = set()
    for family in ("-4", "-6"):
        out = lab.ip(node, family, "route", "show", "table", "all")
        routes |= {" ".join(line.split()) for line in out.splitlines() if "keepalived" in line}
        out = lab.ip(node, family, "rule", "show")
        rules |= {" ".join(line.split()) for line in out.splitlines() if "keepalived" in line}
    out = lab.ip(node, "-o", "addr", "show", "dev", "eth0")
    addresses = {line.split()[3] for line in out.splitlines()}
    return Host(frozenset(routes), frozenset(rules), frozenset(addresses))


def config(node: Node, priority: int, *, state: str = "BACKUP", statics: bool = False,
           extra: tuple[str, ...] = VIRTUAL) -> str:
    spec = VrrpSpec(priority=priority, state=state, extra=extra)
    return render_config(node.name, [spec]) + (STATICS if statics else "")


def holds_virtual(lab: Lab, node: Node, routes: set[str] = VIRTUAL_ROUTES,
                  rules: set[str] = VIRTUAL_RULES) -> bool:
    return host(lab, node).virtual() == (routes, rules) and f"{VIP}/24" in host(lab, node).addresses


def holds_nothing(lab: Lab, node: Node) -> bool:
    h = host(lab, node)
    return h.virtual() == (set(), set()) and f"{VIP}/24" not in h.addresses


def wait_host(lab: Lab, node: Node, predicate: Callable[[Lab, Node], bool], what: str) -> None:
    try:
        wait_for(lambda: predicate(lab, node), SETTLE, what=f"{what} on {node}")
    except Exception:
        print(f"{node} holds {host(lab, node)}")
        raise


def test_virtual_routes_and_rules_move_with_the_vip_next_to_keepalived(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    lab.start_daemon(r1, config(r1, 100))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    wait_host(lab, r1, holds_virtual, "the virtual routes and rules")
    assert holds_nothing(lab, r2)
    # The repaired higher-priority router, keepalived, comes back and preempts: the
    # routes and rules leave pyalived with the VIP and keepalived makes the same ones.
    lab.start_daemon(r2, config(r2, 150), impl="keepalived")
    lab.wait_sole_holder(r2, timeout=SETTLE)
    wait_host(lab, r1, holds_nothing, "no VIP, route or rule")
    wait_host(lab, r2, holds_virtual, "keepalived's routes and rules")
    # keepalived is stopped for maintenance: pyalived takes everything back.
    lab.stop_daemon(r2)
    lab.wait_sole_holder(r1, timeout=SETTLE)
    wait_host(lab, r1, holds_virtual, "the virtual routes and rules again")
    assert holds_nothing(lab, r2)
    # pyalived stops: nothing of it stays behind.
    assert lab.stop_daemon(r1) == 0
    assert holds_nothing(lab, r1)
    assert "failed" not in (r1.daemon.log_text() if r1.daemon else "")


@pytest.mark.parametrize("impl", ["pyalived", "keepalived"])
def test_statics_are_there_from_start_to_stop_whatever_the_vrrp_state(
    make_lab: MakeLab, impl: Impl,
) -> None:
    """keepalived 2.2.7 sets the static blocks up at start, leaves them through every
    state and removes them on stop: pyalived must do the same (the test runs both)."""
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    lab.start_daemon(r2, config(r2, 150))  # the master: r1 stays BACKUP
    lab.wait_sole_holder(r2, timeout=SETTLE)
    lab.start_daemon(r1, config(r1, 100, statics=True), impl=impl)

    def statics_up(lab: Lab, node: Node) -> bool:
        h = host(lab, node)
        return (STATIC_ROUTES <= h.routes and STATIC_RULES <= h.rules
                and STATIC_ADDRESSES <= h.addresses)

    wait_host(lab, r1, statics_up, "the static addresses, routes and rules")
    time.sleep(4.0)  # longer than Master_Down_Interval: r1 is settled as BACKUP
    assert holds_nothing(lab, r1) and statics_up(lab, r1)
    # r2 goes away: r1 becomes MASTER; the statics stay as they are
    lab.stop_daemon(r2)
    wait_host(lab, r1, holds_virtual, "the virtual routes and rules")
    assert statics_up(lab, r1)
    lab.stop_daemon(r1)
    h = host(lab, r1)
    assert h.routes == frozenset() and h.rules == frozenset()
    assert not h.addresses & (STATIC_ADDRESSES | {f"{VIP}/24"})


def test_after_a_sigkill_a_restart_adopts_as_master_and_cleans_up_as_backup(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    lab.start_daemon(r1, config(r1, 150, statics=True))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    wait_host(lab, r1, holds_virtual, "the virtual routes and rules")
    before = host(lab, r1)
    # A crash: every route, rule and address stays in the kernel.
    lab.crash(r1)
    assert host(lab, r1) == before
    # Restarted as it was, alone on the LAN: it starts as BACKUP (which clears what
    # the dead daemon left, as keepalived does), becomes MASTER and holds exactly what
    # it held before: the statics it found, once, and the virtual ones again.
    daemon = lab.start_daemon(r1, config(r1, 150, statics=True))
    wait_for(lambda: "BACKUP -> MASTER" in daemon.log_text(), SETTLE, what="MASTER again")
    wait_host(lab, r1, holds_virtual, "the virtual routes and rules")
    assert host(lab, r1) == before
    assert "failed" not in daemon.log_text()
    # Crashed again while a peer takes over; brought back by the operator as a
    # lower-priority backup: nothing of the dead master's may stay on it.
    lab.start_daemon(r2, config(r2, 100))
    time.sleep(2.0)
    lab.crash(r1)
    wait_host(lab, r2, holds_virtual, "the VIP, routes and rules on the new master")
    stale = host(lab, r1)  # the kernel keeps what the dead daemon had set up
    assert stale.virtual() == (VIRTUAL_ROUTES, VIRTUAL_RULES) and f"{VIP}/24" in stale.addresses
    lab.start_daemon(r1, config(r1, 50, statics=True))
    wait_host(lab, r1, holds_nothing, "no stale VIP, route or rule")
    time.sleep(4.0)  # r1 settles as BACKUP; nothing comes back
    h = host(lab, r1)
    assert h.virtual() == (set(), set()) and f"{VIP}/24" not in h.addresses
    assert STATIC_ROUTES <= h.routes and STATIC_RULES <= h.rules  # statics: r1's own
    assert holds_virtual(lab, r2)


def test_a_reload_changes_the_routes_under_a_master_that_keeps_its_vip(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    cap = lab.capture()
    lab.start_daemon(r1, config(r1, 150, statics=True))
    lab.start_daemon(r2, config(r2, 100))
    lab.wait_sole_holder(r1, timeout=SETTLE)
    wait_host(lab, r1, holds_virtual, "the virtual routes and rules")
    time.sleep(1.5)
    # Watch the VIP on r1 through the reload, every 10 ms.
    gaps: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if f"{VIP}/24" not in host(lab, r1).addresses:
                gaps.append(time.monotonic())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # The operator drops the blackhole and the IPv6 rule, adds a route and a rule,
        # and moves the static route to another gateway.
        changed = tuple(line for line in VIRTUAL if "blackhole" not in line
                        and "fd00:198:18:7::" not in line)
        changed = (changed[0], "    198.18.10.0/24 via 198.18.0.1 metric 7", *changed[1:-1],
                   "    fwmark 7 table 100 preference 102", "}")
        text = config(r1, 150, statics=True, extra=changed).replace(
            "198.18.6.0/24 via 198.18.0.1", "198.18.6.0/24 via 198.18.0.2")
        lab.write_config(r1, text)
        since = time.time()
        assert r1.daemon is not None
        r1.daemon.signal(signal.SIGHUP)
        new_routes = (VIRTUAL_ROUTES - {"blackhole 198.18.9.0/24 proto keepalived"}) | {
            "198.18.10.0/24 via 198.18.0.1 dev eth0 proto keepalived metric 7"}
        new_rules = (VIRTUAL_RULES - {
            "101: from all to fd00:198:18:7::/64 lookup 100 proto keepalived"}) | {
            "102: from all fwmark 0x7 lookup 100 proto keepalived"}
        static_routes = {
            "198.18.6.0/24 via 198.18.0.2 dev eth0 proto keepalived",
            "fd00:198:18:6::/64 dev eth0 proto keepalived metric 1024 pref medium"}

        def reloaded(lab: Lab, node: Node) -> bool:
            h = host(lab, node)
            return (h.routes == new_routes | static_routes
                    and h.rules == new_rules | STATIC_RULES)

        wait_host(lab, r1, reloaded, "the reloaded routes and rules")
        time.sleep(1.5)
        assert reloaded(lab, r1)
    finally:
        done.set()
        watcher.join()
    assert gaps == []  # the VIP never left
    events = cap.stop()
    after = [e for e in adverts(events) if e.time >= since]
    assert after and all(e.priority == 150 for e in after)  # no stop advert, no flap
    assert all(e.src == r1.ip for e in after)
    assert holds_nothing(lab, r2)


def test_a_vrrp_child_killed_under_dont_respawn_leaves_nothing_behind(
    make_lab: MakeLab,
) -> None:
    """With ``-R`` a dead VRRP child stops the daemon; the parent, which never ran the
    child's netlink work, removes what it had set up: rules, routes, VIP, statics."""
    lab = make_lab(routers=1)
    (r1,) = lab.routers
    conf = lab.write_config(r1, config(r1, 150, statics=True))
    vrrp_pid = lab.workdir / "r1.vrrp.pid"
    argv = [*daemon_argv("pyalived", conf, lab.workdir / "r1"), "-R", "-r", str(vrrp_pid)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    daemon = r1.daemon = lab.spawn(r1, argv, "r1-pyalived", env=env)
    wait_host(lab, r1, holds_virtual, "the virtual routes and rules")
    assert STATIC_ROUTES <= host(lab, r1).routes
    child = wait_for(lambda: read_pid(vrrp_pid), SETTLE, what="the VRRP child's pid")
    os.kill(child, signal.SIGKILL)
    assert daemon.wait(SETTLE) == 1
    h = host(lab, r1)
    assert h.routes == frozenset() and h.rules == frozenset()
    assert not h.addresses & (STATIC_ADDRESSES | {f"{VIP}/24"})
