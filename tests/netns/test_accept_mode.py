"""Accept mode on the real daemon: nftables drop rules for no_accept VIPs.

An operator runs a director pair with ``vrrp_strict`` (so ``no_accept``): a
client on the LAN must not reach a VIP held by a master that does not own it,
while the master still hears its peer's adverts and elects correctly.  The
peer is keepalived 2.2.7.  Alongside, an instance with ``accept`` answers on
its VIP.  The rules are read back with ``nft -j list ruleset`` inside the
router's namespace (nft's own JSON, nothing parsed from its text output);
they are gone after SIGTERM, and after a SIGKILL (of the VRRP process, which
the parent restarts, or of the whole daemon) the new process replaces what
was left instead of adding a second copy.  A reload that switches
accept modes updates the sets in place: the table keeps its handle, and the
VIPs stay configured throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyalived.lab import KEEPALIVED, REPO_ROOT, Lab, Node, VrrpSpec, daemon_argv, wait_for

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft (nftables) is not installed"),
]

MakeLab = Callable[..., Lab]
SETTLE = 30.0
PORT = 8080
VIP1, VIP2 = "198.18.0.100", "198.18.0.101"

# A TCP service on every address of the router (IPv4 and IPv6), as a director's would be.
LISTENER = f"""
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", {PORT}))
s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(b"hello\\n")
    c.close()
"""

CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as c:
        sys.exit(0 if c.recv(16) == b"hello\\n" else 1)
except OSError:
    sys.exit(1)
"""


def strict_config(router_id: str, *specs: VrrpSpec, extra_global: str = "") -> str:
    head = f"global_defs {{\n    router_id {router_id}\n    vrrp_strict\n{extra_global}}}\n\n"
    return head + "\n".join(spec.render() for spec in specs)


def ruleset(lab: Lab, node: Node) -> list[dict[str, Any]]:
    out = lab.run(node, "nft", "-j", "list", "ruleset").stdout
    return [item for item in json.loads(out)["nftables"] if "metainfo" not in item]


def objects(rules: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [item[kind] for item in rules if kind in item]


def vips_in_set(lab: Lab, node: Node, family: str = "ip") -> set[str]:
    sets = [s for s in objects(ruleset(lab, node), "set")
            if s["family"] == family and s["table"] == "keepalived" and s["name"] == "vips"]
    assert len(sets) == 1, sets
    return set(sets[0].get("elem", []))


def tcp_ok(lab: Lab, client: Node, ip: str) -> bool:
    done = lab.run(client, sys.executable, "-c", CONNECT, ip, str(PORT), check=False)
    return done.returncode == 0


def reachable(lab: Lab, client: Node, ip: str) -> bool:
    """ICMP echo and a TCP exchange agree; a mixed answer fails the test."""
    ping, tcp = lab.ping(client, ip, count=2, wait=1.0), tcp_ok(lab, client, ip)
    assert ping == tcp, f"{ip}: ping {'answered' if ping else 'failed'}, " \
        f"TCP {'answered' if tcp else 'failed'}"
    return ping


def listen(lab: Lab, node: Node) -> None:
    lab.spawn(node, [sys.executable, "-c", LISTENER], f"{node.name}-listener-{PORT}")
    wait_for(lambda: f":{PORT} " in lab.run(node, "ss", "-ltn").stdout, 10.0,
             what="the TCP listener")


@pytest.mark.interop
@pytest.mark.skipif(shutil.which(KEEPALIVED) is None, reason="keepalived is not installed")
def test_no_accept_master_drops_vip_traffic_but_elects(make_lab: MakeLab) -> None:
    lab = make_lab(routers=2, clients=1)
    ours, peer = lab.routers
    client = lab.clients[0]
    listen(lab, ours)
    spec = VrrpSpec(priority=100, vips=(f"{VIP1}/24",))
    lab.start_daemon(peer, strict_config("r2", VrrpSpec(priority=150, vips=(f"{VIP1}/24",))),
                     "keepalived")
    lab.wait_sole_holder(peer, VIP1)
    lab.start_daemon(ours, strict_config("r1", spec))
    # The table is there from the start, empty while BACKUP; the peer's adverts still
    # arrive, so pyalived never takes over from the higher-priority keepalived.
    wait_for(lambda: any(t["name"] == "keepalived" for t in objects(ruleset(lab, ours), "table")),
             SETTLE, what="pyalived's nftables table")
    assert vips_in_set(lab, ours) == set()
    for _ in range(5):
        assert lab.holders(VIP1) == [peer]
        assert lab.ping(client, ours.ip)  # the router's own address is not blocked
        time.sleep(1.0)
    # The keepalived master goes away: pyalived takes over, holds the VIP, drops traffic to it.
    lab.stop_daemon(peer)
    lab.wait_sole_holder(ours, VIP1)
    assert vips_in_set(lab, ours) == {VIP1}
    assert not reachable(lab, client, VIP1)
    assert reachable(lab, client, ours.ip)
    # keepalived comes back with the higher priority: pyalived, MASTER behind its drop rules,
    # still hears the adverts and yields; the VIP leaves the set.
    lab.start_daemon(peer, strict_config("r2", VrrpSpec(priority=150, vips=(f"{VIP1}/24",))),
                     "keepalived")
    lab.wait_sole_holder(peer, VIP1)
    wait_for(lambda: vips_in_set(lab, ours) == set(), SETTLE, what="the VIP out of the set")
    # The operator stops pyalived: nothing of its firewall is left.
    assert ours.daemon is not None
    ours.daemon.terminate()
    assert ours.daemon.wait(20.0) == 0
    assert ruleset(lab, ours) == []


def two_instances(first_accepts: bool) -> str:
    """VI_1 (VIP1) and VI_2 (VIP2), VRRPv3 (where vrrp_strict allows ``accept``); one of
    them ``accept``, the other the strict default (no_accept)."""
    def spec(name: str, vrid: int, vip: str, accept: bool) -> VrrpSpec:
        return VrrpSpec(priority=100, name=name, vrid=vrid, vips=(f"{vip}/24",),
                        extra=("version 3", *(("accept",) if accept else ())))
    return strict_config("r1", spec("VI_1", 51, VIP1, first_accepts),
                         spec("VI_2", 52, VIP2, not first_accepts))


def table_handle(lab: Lab, node: Node) -> int:
    (table,) = [t for t in objects(ruleset(lab, node), "table") if t["name"] == "keepalived"]
    return int(table["handle"])


def test_accept_answers_no_accept_drops_and_reload_swaps_in_place(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1, clients=1)
    (ours,) = lab.routers
    client = lab.clients[0]
    listen(lab, ours)
    lab.start_daemon(ours, two_instances(first_accepts=True))
    lab.wait_sole_holder(ours, VIP1)
    lab.wait_sole_holder(ours, VIP2)
    wait_for(lambda: vips_in_set(lab, ours) == {VIP2}, SETTLE, what=f"{VIP2} in the set")
    assert reachable(lab, client, VIP1)
    assert not reachable(lab, client, VIP2)
    handle = table_handle(lab, ours)
    # The operator swaps the modes and reloads: the sets change in place, the VIPs stay.
    lab.write_config(ours, two_instances(first_accepts=False))
    assert ours.daemon is not None
    ours.daemon.signal(signal.SIGHUP)
    wait_for(lambda: vips_in_set(lab, ours) == {VIP1}, SETTLE, what=f"{VIP1} in the set")
    assert table_handle(lab, ours) == handle
    assert {VIP1, VIP2} <= lab.addresses(ours)
    assert not reachable(lab, client, VIP1)
    assert reachable(lab, client, VIP2)
    assert "0 restarted" in ours.daemon.log_text()  # applied in place


def start_with_vrrp_pid(lab: Lab, node: Node, config: str, vrrp_pid: Path) -> None:
    """pyalived as ``Lab.start_daemon`` runs it, also writing the VRRP child's pid."""
    argv = [*daemon_argv("pyalived", lab.write_config(node, config), lab.workdir / node.name),
            "-r", str(vrrp_pid)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    node.daemon = lab.spawn(node, argv, f"{node.name}-pyalived", env=env)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def table_handles(lab: Lab, node: Node) -> set[tuple[str, int]]:
    return {(t["family"], int(t["handle"])) for t in objects(ruleset(lab, node), "table")}


def count_copies(lab: Lab, node: Node) -> tuple[int, int, int]:
    """(tables, sets, rules) of pyalived's firewall in ``node``."""
    rules = ruleset(lab, node)
    return (len(objects(rules, "table")), len(objects(rules, "set")), len(objects(rules, "rule")))


def test_sigkill_leftovers_are_replaced_not_duplicated(make_lab: MakeLab) -> None:
    lab = make_lab(routers=1, clients=1)
    (ours,) = lab.routers
    client = lab.clients[0]
    # An IPv4 instance and an IPv6 one (its table also has the link-local chains).
    lab.ip(ours, "addr", "add", "fd00:198:18::11/64", "dev", "eth0", "nodad")
    lab.ip(client, "addr", "add", "fd00:198:18::201/64", "dev", "eth0", "nodad")
    config = strict_config("r1", VrrpSpec(priority=100, vips=(f"{VIP1}/24",)), VrrpSpec(
        priority=100, name="VI_6", vrid=61, vips=("fd00:198:18::100/64",)))
    vrrp_pid = lab.workdir / "r1.vrrp.pid"
    start_with_vrrp_pid(lab, ours, config, vrrp_pid)
    lab.wait_sole_holder(ours, VIP1)
    wait_for(lambda: vips_in_set(lab, ours) == {VIP1}
             and vips_in_set(lab, ours, "ip6") == {"fd00:198:18::100"}, SETTLE,
             what="both VIPs in their sets")
    first = count_copies(lab, ours)
    assert first == (2, 4, 2 + 8), ruleset(lab, ours)
    assert not lab.ping(client, VIP1, count=2, wait=1.0)
    # The VRRP process crashes; the parent starts a new one, which replaces the tables
    # (new handles) and fills them again once MASTER: still one copy.
    handles = table_handles(lab, ours)
    child = wait_for(lambda: read_pid(vrrp_pid), SETTLE, what="the VRRP child's pid")
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: read_pid(vrrp_pid) not in (None, child), SETTLE, what="a new VRRP child")
    wait_for(lambda: table_handles(lab, ours) != handles and vips_in_set(lab, ours) == {VIP1}
             and vips_in_set(lab, ours, "ip6") == {"fd00:198:18::100"}, SETTLE,
             what="the tables replaced and filled again")
    assert count_copies(lab, ours) == first
    assert not lab.ping(client, VIP1, count=2, wait=1.0)
    # A crash: nothing cleans up, the rules stay.
    lab.crash(ours)
    assert count_copies(lab, ours) == first
    # The restarted daemon replaces them: one copy, and the sets are refilled as MASTER.
    lab.start_daemon(ours, config)
    wait_for(lambda: vips_in_set(lab, ours) == {VIP1}
             and vips_in_set(lab, ours, "ip6") == {"fd00:198:18::100"}, SETTLE,
             what="both VIPs in their sets again")
    assert count_copies(lab, ours) == first
    listen(lab, ours)
    assert not reachable(lab, client, VIP1)
    assert not tcp_ok(lab, client, "fd00:198:18::100")
    assert tcp_ok(lab, client, "fd00:198:18::11")  # the router's own IPv6 address answers
    assert ours.daemon is not None
    ours.daemon.terminate()
    assert ours.daemon.wait(20.0) == 0
    assert ruleset(lab, ours) == []
