"""The rest of the IPVS settings on the real kernel, checked with ipvsadm.

Theory of operation: the routed topology of ``test_lvs_e2e`` with one
director.  One daemon run, configured with ``lvs_flush``,
``lvs_flush_on_stop`` and ``lvs_timeouts``, serves three services: TCP
VIP:80 whose real servers are tunnelled by GUE (with checksums) and GRE,
one of them weighted by a FILE_CHECK; UDP VIP:5060 with the ``sip``
persistence engine; TCP VIP:8080 to rs1 through an ipip tunnel, which real
traffic from the client crosses (rs1 decapsulates on ``tunl0`` and answers
for the VIP).  ``ipvsadm -Ln --tun-info``, ``ipvsadm -L --timeout`` and the
table must show every setting; a foreign service made before the start is
flushed, an operator's writes to the track file move rs1's weight, and
stopping the daemon empties the whole table, a service added by someone
else included.  Then the SET commands a reload sends when a tunnel or the
engine changes are sent directly and must edit the entries in place.  A fourth service,
with ``ha_suspend``, is on an address the director does not hold: the
checker of its dead real server must not run (it stays in the table with
its weight) until the address arrives.  ``PYALIVED_E2E_IMPL=keepalived``
runs the same test against keepalived 2.2.7, which validates it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from pyalived.ipvs import model as m
from pyalived.ipvs.netlink import NetlinkIpvs
from tests.kernel.netns import in_netns, sh
from tests.kernel.test_lvs_e2e import (
    IMPL,
    RS1,
    RS2,
    STARTUP_TIMEOUT,
    VIP,
    Topology,
    _run,
    built,
    destinations,
    fetch_many,
    settle,
)

pytestmark = pytest.mark.kernel

FOREIGN = "198.18.0.250:9"
VIP2 = "198.18.0.101"  # the ha_suspend service's address, not on the director at first


def _config(load: Path) -> str:
    return f"""
global_defs {{
    router_id d1
    lvs_flush
    lvs_flush_on_stop
    lvs_timeouts tcp 7200 tcpfin 60 udp 45
}}

track_file load {{
    file {load}
    weight 10
}}

virtual_server {VIP} 80 {{
    lb_algo rr
    lb_kind TUN
    protocol TCP
    real_server {RS1} 80 {{
        weight 1
        lvs_method TUN type gue port 6080 csum
        FILE_CHECK {{
            track_file load
        }}
    }}
    real_server {RS2} 80 {{
        weight 1
        lvs_method TUN type gre
    }}
}}

virtual_server {VIP} 5060 {{
    lb_algo rr
    lb_kind DR
    protocol UDP
    persistence_timeout 60
    persistence_engine sip
    real_server {RS1} 5060 {{
        weight 1
    }}
}}

virtual_server {VIP} 8080 {{
    lb_algo rr
    lb_kind TUN
    protocol TCP
    real_server {RS1} 8080 {{
        weight 1
    }}
}}

virtual_server {VIP2} 80 {{
    lb_algo rr
    lb_kind NAT
    protocol TCP
    ha_suspend
    real_server {RS2} 81 {{
        weight 1
        TCP_CHECK {{
            connect_timeout 1
            retry 0
            delay_before_retry 1
            delay_loop 1
            warmup 0
        }}
    }}
}}
"""


def _tun_rows(ns: str, service: str) -> dict[str, tuple[str, int]]:
    """``ipvsadm -Ln --tun-info`` rows of ``service``: address -> (tunnel info, weight)."""
    rows: dict[str, tuple[str, int]] = {}
    current = None
    for line in sh(ns, "ipvsadm", "-Ln", "--tun-info").splitlines()[3:]:
        f = line.split()
        if not line.startswith("  ->"):
            current = " ".join(f[:2])
        elif current == service:
            rows[f[1].rsplit(":", 1)[0]] = (f[3], int(f[4]))
    return rows


def _service_lines(ns: str) -> list[str]:
    return [" ".join(line.split()) for line in sh(ns, "ipvsadm", "-Ln").splitlines()[3:]
            if not line.startswith("  ->")]


@pytest.fixture
def topo() -> Iterator[Topology]:
    with built("pyalived-lvsmisc-", directors=1) as t:
        yield t


def _ipip_real_server(topo: Topology) -> None:
    """rs1 takes ipip packets for the VIP on tunl0 and answers from the VIP."""
    rs1, d1 = topo.ns("rs1"), topo.ns("d1")
    _run("ip", "-n", rs1, "link", "set", "tunl0", "up")
    _run("ip", "-n", rs1, "addr", "add", f"{VIP}/32", "dev", "tunl0")
    for key in ("all", "default", "tunl0", "eth0"):
        sh(rs1, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
    # the answers come back through the director, from an address it holds itself
    for key in ("all", "eth1"):
        sh(d1, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
        sh(d1, "sysctl", "-qw", f"net.ipv4.conf.{key}.accept_local=1")
    topo.serve("rs1", VIP, 8080, "rs1-tunnelled").start()


def test_tunnels_engine_timeouts_flushes_and_file_check(topo: Topology) -> None:
    d1 = topo.ns("d1")
    _ipip_real_server(topo)
    _run("ip", "-n", d1, "addr", "add", f"{VIP}/32", "dev", "eth0")
    sh(d1, "ipvsadm", "-A", "-t", FOREIGN, "-s", "rr")  # someone else's, before the start
    load = topo.workdir / "load"
    load.write_text("3\n")
    daemon = topo.start_daemon("d1", _config(load))
    svc80 = f"TCP {VIP}:80"
    settle(topo, "both tunnelled real servers in VIP:80",
           lambda: _tun_rows(d1, svc80) == {RS1: ("gue:6080:+c", 31), RS2: ("gre:-c", 1)},
           timeout=STARTUP_TIMEOUT)
    lines = _service_lines(d1)
    assert not any(FOREIGN in line for line in lines), lines  # lvs_flush
    assert f"UDP {VIP}:5060 rr persistent 60 pe sip" in lines, lines
    assert sh(d1, "ipvsadm", "-L", "--timeout").strip() == "Timeout (tcp tcpfin udp): 7200 60 45"
    assert _tun_rows(d1, f"TCP {VIP}:8080") == {RS1: ("ipip", 1)}
    # ha_suspend: nothing listens on rs2:81, but with VIP2 on no interface its checker
    # rests, so rs2 stays in (checked below again, seconds of delay_loop 1 later)
    suspended = f"TCP {VIP2}:80"
    assert destinations(d1, suspended) == {RS2: 1}

    # real traffic: the client reaches rs1 through the ipip tunnel
    got = fetch_many(topo.ns("client"), 3, port=8080)
    assert got == ["rs1-tunnelled"] * 3, got

    # an operator lowers rs1's weight, minutes into the service
    load.write_text("0\n")
    settle(topo, "rs1 at its own weight", lambda: destinations(d1, svc80).get(RS1) == 1)
    load.write_text("-1\n")  # 1 - 10: in the table with weight 0
    settle(topo, "rs1 at weight 0", lambda: destinations(d1, svc80).get(RS1) == 0)

    assert destinations(d1, suspended) == {RS2: 1}  # still unchecked
    _run("ip", "-n", d1, "addr", "add", f"{VIP2}/32", "dev", "eth0")  # it became MASTER
    arrived = time.monotonic()
    settle(topo, "rs2:81 out once checked", lambda: destinations(d1, suspended) == {})
    print(f"{IMPL}: rs2:81 out {time.monotonic() - arrived:.2f} s after VIP2 arrived")

    # stopping flushes the whole table, a service added meanwhile by someone else too
    sh(d1, "ipvsadm", "-A", "-t", FOREIGN, "-s", "rr")
    daemon.stop(30.0)
    assert _service_lines(d1) == [], sh(d1, "ipvsadm", "-Ln")
    if IMPL == "pyalived":
        _edits_in_place(d1)


def _edits_in_place(ns: str) -> None:
    """What a reload changing a tunnel or the engine sends: SET commands (no delete
    and add), which the kernel applies to the existing entries."""
    key = m.ServiceKey.inet(VIP, 80)
    dest = m.DestKey(ip_address(RS2), 80)
    gre = m.Destination(dest, 1, m.Forwarding.TUN, 0, 0, m.TUN_TYPE_GRE)
    gue = m.Destination(dest, 1, m.Forwarding.TUN, 0, 0, m.TUN_TYPE_GUE, 7070,
                        m.TUN_F_REMCSUM)
    sip = m.Service(key, "rr", m.SVC_F_PERSISTENT, 60, 32, "sip")
    kernel = in_netns(ns, NetlinkIpvs)
    try:
        assert kernel.execute([m.AddService(sip), m.AddDest(key, gre)]) == []
        before = kernel.dump()
        assert before[key].dests[dest] == gre
        changed = {key: m.ServiceEntry(m.Service(key, "rr", m.SVC_F_PERSISTENT, 60, 32),
                                       {dest: gue})}
        ops = m.diff(before, changed)
        assert [type(op) for op in ops] == [m.EditService, m.EditDest]
        assert kernel.execute(ops) == []
        assert kernel.dump() == changed
        assert f"TCP {VIP}:80 rr persistent 60" in _service_lines(ns)
        rows = _tun_rows(ns, f"TCP {VIP}:80")
        assert list(rows) == [RS2] and rows[RS2][0].startswith("gue:7070:"), rows
        kernel.flush()
    finally:
        kernel.close()
