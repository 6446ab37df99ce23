"""A peer announcing other addresses is logged once per change, at the default level.

pyalived (priority 100, VIPs .100 and .101) runs without ``-D``, so only its
default level (INFO and above) reaches its log.  Its peer is keepalived 2.2.7
(priority 150) configured with another address list.  pyalived lets the
peer's adverts count for the election (their only fault is the address list),
so it stays BACKUP and never holds a VIP.  Its own adverts are kept from the peer by a filter on the
bridge: keepalived 2.2.7 restarts its advert timer on every datagram it reads
for the VRID, valid or not, so while pyalived advertised at the same interval
the peer would fall silent.  keepalived itself logs a mismatch on every advert; the
test checks that pyalived's log shows exactly one warning for it however many
adverts arrive, another one when the peer is reloaded (SIGHUP) with a third
list, and a single note once a reload makes the lists match, after which
pyalived accepts the peer's adverts and yields to it.

The peer's adverts and their address lists are read from a capture on the
bridge, so the number of adverts behind each warning is known.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable

import pytest

from pyalived.lab import (
    KEEPALIVED,
    REPO_ROOT,
    Capture,
    Lab,
    Node,
    Proc,
    VrrpSpec,
    adverts,
    daemon_argv,
    render_config,
    wait_for,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which(KEEPALIVED) is None, reason="keepalived is not installed"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft (nftables) is not installed"),
]

MakeLab = Callable[..., Lab]
SETTLE = 30.0
OURS = ("198.18.0.100", "198.18.0.101")
WARNING = re.compile(r"\(VI_1\) address (?:list|count) mismatch: 198\.18\.0\.12 announces")
MATCH_AGAIN = "(VI_1) addresses announced by 198.18.0.12 match the configured ones again"


def peer_config(vips: tuple[str, ...]) -> str:
    return render_config("r2", [VrrpSpec(priority=150, vips=tuple(f"{v}/24" for v in vips))])


def start_quiet_pyalived(lab: Lab, node: Node, config: str) -> Proc:
    """pyalived as ``Lab.start_daemon`` runs it, but at the default log level (no -D)."""
    conf = lab.write_config(node, config)
    argv = [arg for arg in daemon_argv("pyalived", conf, lab.workdir / node.name) if arg != "-D"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    proc = lab.spawn(node, argv, f"{node.name}-pyalived", env=env)
    node.daemon = proc
    return proc


def wait_adverts(cap: Capture, peer: Node, vips: tuple[str, ...], count: int) -> None:
    """Until the capture holds ``count`` adverts of ``peer`` announcing ``vips``."""
    cap.wait_for(
        lambda ev: len([e for e in adverts(ev, src=peer.ip)
                        if getattr(e.kind, "addresses", None) == vips]) >= count,
        SETTLE, what=f"{count} adverts of {peer} announcing {vips}")


def silence_towards_peers(lab: Lab, node: Node) -> None:
    """The bridge stops forwarding ``node``'s VRRP datagrams (it still sees the others')."""
    script = (
        "table bridge labquiet {\n chain labquiet {\n"
        "  type filter hook forward priority 0; policy accept;\n"
        f"  ip saddr {node.ip} ip protocol 112 drop\n }}\n}}\n"
    )
    subprocess.run(["ip", "netns", "exec", lab.bridge_ns, "nft", "-f", "-"], input=script,
                   text=True, capture_output=True, check=True)


def reload_peer(lab: Lab, peer: Node, vips: tuple[str, ...]) -> None:
    lab.write_config(peer, peer_config(vips))
    assert peer.daemon is not None
    peer.daemon.signal(signal.SIGHUP)


def test_one_warning_per_change_of_the_peer_list(make_lab: MakeLab) -> None:
    lab = make_lab(routers=2)
    ours, peer = lab.routers
    silence_towards_peers(lab, ours)
    cap = lab.capture()
    first, second, matching = ("198.18.0.100", "198.18.0.102"), \
        ("198.18.0.100", "198.18.0.101", "198.18.0.103"), OURS
    lab.start_daemon(peer, peer_config(first), "keepalived")
    proc = start_quiet_pyalived(lab, ours, render_config("r1", [VrrpSpec(
        priority=100, vips=tuple(f"{v}/24" for v in OURS))]))

    def warnings() -> list[str]:
        return [line for line in proc.log_text().splitlines() if WARNING.search(line)]

    # A list of the same length with another address: one warning, however many adverts.
    wait_adverts(cap, peer, first, 6)
    wait_for(lambda: len(warnings()) >= 1, SETTLE, what="the first warning")
    wait_adverts(cap, peer, first, 9)
    assert len(warnings()) == 1, warnings()
    assert ("announces [198.18.0.100, 198.18.0.102], "
            "configured here [198.18.0.100, 198.18.0.101]; its adverts still count for the "
            "election") in warnings()[0]
    assert lab.holders(OURS[0]) == [peer] and lab.holders(OURS[1]) == []

    # The peer is reloaded with three addresses: one more warning.
    reload_peer(lab, peer, second)
    wait_adverts(cap, peer, second, 4)
    wait_for(lambda: len(warnings()) >= 2, SETTLE, what="the second warning")
    wait_adverts(cap, peer, second, 6)
    assert len(warnings()) == 2, warnings()
    assert "address count mismatch" in warnings()[1]
    assert "announces [198.18.0.100, 198.18.0.101, 198.18.0.103]" in warnings()[1]

    # The lists match again: noted once, and pyalived hears its peer again.
    reload_peer(lab, peer, matching)
    wait_adverts(cap, peer, matching, 1)
    lab.wait_sole_holder(peer, timeout=SETTLE)
    wait_adverts(cap, peer, matching, 3)
    log = proc.log_text()
    assert log.count(MATCH_AGAIN) == 1
    assert len(warnings()) == 2
    # The default level: none of the per-advert debug lines.
    assert "dropped advert" not in log
