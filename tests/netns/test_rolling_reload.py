"""A rolling configuration change never splits the brain.

Operators change a director pair one director at a time: the master is
reloaded with one more VIP, the backup some seconds later.  In between, the
backup hears adverts announcing a list it does not have.  keepalived 2.2.7
drops them (RFC 3768 §7.1 address check) and takes over: both routers hold
the first VIP until the backup is reloaded.  pyalived lets an advert whose
only fault is its address list count for the election, warns once and counts
it (``pyalived_vrrp_peer_address_mismatches``).

Each test watches the whole change on the bridge capture (no advert from the
backup, ever) and polls both namespaces every 100 ms (no VIP ever on two
routers).  The backup is pyalived; the master is pyalived, then keepalived
2.2.7 (whose own rolling change must not move pyalived either).  With
``vrrp_strict`` pyalived drops such adverts as keepalived does: the last
test shows the split brain it then gets, which is what the default avoids.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from pyalived.lab import KEEPALIVED, Lab, Node, VrrpSpec, adverts, render_config, wait_for

pytestmark = [pytest.mark.netns]

MakeLab = Callable[..., Lab]
VIP1, VIP2 = "198.18.0.100", "198.18.0.101"
BETWEEN = 10.0  # seconds between the two reloads
SETTLE = 30.0


def config(name: str, priority: int, vips: tuple[str, ...], extra: tuple[str, ...] = (),
           strict: bool = False) -> str:
    text = render_config(name, [VrrpSpec(priority=priority, vips=tuple(f"{v}/24" for v in vips),
                                         extra=extra)])
    if strict:
        text = text.replace("    router_id", "    vrrp_strict\n    router_id", 1)
    return text


@contextmanager
def watch_holders(lab: Lab, ips: tuple[str, ...]) -> Iterator[list[tuple[float, str, int]]]:
    """Poll every 100 ms: each (time, VIP, number of routers holding it) seen above one."""
    doubled: list[tuple[float, str, int]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for ip in ips:
                n = len(lab.holders(ip))
                if n > 1:
                    doubled.append((time.time(), ip, n))
            done.wait(0.1)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield doubled
    finally:
        done.set()
        thread.join()


def reload(lab: Lab, node: Node, text: str) -> None:
    lab.write_config(node, text)
    assert node.daemon is not None
    node.daemon.signal(signal.SIGHUP)


def rolling_change(lab: Lab, master: Node, backup: Node, master_config: Callable[
        [tuple[str, ...]], str], backup_config: Callable[[tuple[str, ...]], str]) -> None:
    """Reload the master with VIP2 added, the backup BETWEEN seconds later."""
    reload(lab, master, master_config((VIP1, VIP2)))
    wait_for(lambda: VIP2 in lab.addresses(master), SETTLE, what=f"{VIP2} on {master}")
    time.sleep(BETWEEN)
    reload(lab, backup, backup_config((VIP1, VIP2)))
    time.sleep(5.0)


def test_pyalived_pair_reloaded_one_after_the_other(make_lab: MakeLab) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    cap = lab.capture()
    lab.start_daemon(r1, config("r1", 100, (VIP1,)))
    lab.wait_sole_holder(r1, VIP1, timeout=SETTLE)
    backup = lab.start_daemon(r2, config("r2", 90, (VIP1,)))
    time.sleep(5.0)
    started = time.time()
    with watch_holders(lab, (VIP1, VIP2)) as doubled:
        rolling_change(lab, r1, r2, lambda v: config("r1", 100, v),
                       lambda v: config("r2", 90, v))
    assert doubled == []
    assert [e for e in adverts(cap.events(), src=r2.ip) if e.time >= started - 5.0] == []
    assert lab.holders(VIP1) == [r1] and lab.holders(VIP2) == [r1]
    log = backup.log_text()
    warnings = [line for line in log.splitlines() if "address count mismatch" in line]
    assert len(warnings) == 1, warnings
    assert "its adverts still count for the election" in warnings[0]
    assert "match the configured ones again" in log  # once the backup has the new list


@pytest.mark.interop
@pytest.mark.skipif(shutil.which(KEEPALIVED) is None, reason="keepalived is not installed")
def test_keepalived_master_reloaded_first_does_not_move_the_pyalived_backup(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    cap = lab.capture()
    lab.start_daemon(r1, config("r1", 100, (VIP1,)), "keepalived")
    lab.wait_sole_holder(r1, VIP1, timeout=SETTLE)
    lab.start_daemon(r2, config("r2", 90, (VIP1,)))
    time.sleep(5.0)
    started = time.time()
    with watch_holders(lab, (VIP1, VIP2)) as doubled:
        rolling_change(lab, r1, r2, lambda v: config("r1", 100, v),
                       lambda v: config("r2", 90, v))
    assert doubled == []
    assert [e for e in adverts(cap.events(), src=r2.ip) if e.time >= started - 5.0] == []
    assert lab.holders(VIP2) == [r1]


def test_vrrp_strict_drops_them_as_keepalived_does(make_lab: MakeLab) -> None:
    # The behaviour the default avoids: with vrrp_strict the backup drops the
    # master's adverts while the lists differ, and takes over.
    lab = make_lab(routers=2)
    r1, r2 = lab.routers
    lab.start_daemon(r1, config("r1", 100, (VIP1,)))
    lab.wait_sole_holder(r1, VIP1, timeout=SETTLE)
    backup = lab.start_daemon(r2, config("r2", 90, (VIP1,), strict=True))
    time.sleep(5.0)
    with watch_holders(lab, (VIP1,)) as doubled:
        reload(lab, r1, config("r1", 100, (VIP1, VIP2)))
        wait_for(lambda: r2 in lab.holders(VIP1), SETTLE, what=f"{VIP1} taken over by {r2}")
        time.sleep(3.0)  # the split brain lasts: r1 hears r2 as a lower priority
    assert doubled, "the VIP was never on both routers"
    assert lab.holders(VIP1) == [r1, r2]
    assert "its adverts are dropped" in backup.log_text()
