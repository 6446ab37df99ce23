"""IPVS against the real kernel: table parity with ipvsadm, adoption, release on stop."""

from __future__ import annotations

import errno
import signal
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from pyalived.ipvs import model as m
from pyalived.ipvs.model import (
    DestKey,
    Forwarding,
    Protocol,
    RealServerConfig,
    ServiceKey,
    VirtualServerConfig,
)
from pyalived.ipvs.netlink import IpvsTableManager, NetlinkIpvs
from tests.kernel.netns import in_netns, ipvsadm_table, netns, sh

pytestmark = pytest.mark.kernel

VIP = "198.18.1.1"
R1, R2, R3 = (IPv4Address(f"198.18.2.{i}") for i in (1, 2, 3))


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """Two fresh namespaces: one programmed by ipvsadm, one by pyalived."""
    with netns("a") as a, netns("b") as b:
        yield a, b


def manager(ns: str, **kw: bool) -> IpvsTableManager:
    return IpvsTableManager(lambda: in_netns(ns, NetlinkIpvs), **kw)


async def program(ns: str, configs: list[VirtualServerConfig]) -> IpvsTableManager:
    mgr = manager(ns)
    assert await mgr.start(m.plan(configs, {}).table) == []
    return mgr


def ipvsadm(ns: str, *lines: str) -> None:
    for line in lines:
        sh(ns, "ipvsadm", *line.split())


async def test_lvs_nat_parity(pair: tuple[str, str]) -> None:
    a, b = pair
    ipvsadm(
        a,
        f"-A -t {VIP}:80 -s rr",
        f"-a -t {VIP}:80 -r {R1}:80 -m -w 1",
        f"-a -t {VIP}:80 -r {R2}:80 -m -w 1",
    )
    vs = VirtualServerConfig(
        ServiceKey.inet(VIP, 80),
        scheduler="rr",
        forwarding=Forwarding.NAT,
        real_servers=(RealServerConfig(R1, 80), RealServerConfig(R2, 80)),
    )
    mgr = await program(b, [vs])
    assert ipvsadm_table(b) == ipvsadm_table(a)
    assert "Masq" in str(ipvsadm_table(b))
    # Reading the kernel table back gives exactly the planned table.
    assert await mgr.read_table() == m.plan([vs], {}).table
    await mgr.stop()
    assert ipvsadm_table(b) == {}


async def test_dr_wrr_persistence_and_ops_parity(pair: tuple[str, str]) -> None:
    a, b = pair
    ipvsadm(
        a,
        f"-A -t {VIP}:443 -s wrr -p 600 -M 255.255.255.0",
        f"-a -t {VIP}:443 -r {R1}:443 -g -w 3",
        f"-a -t {VIP}:443 -r {R2}:443 -g -w 1 -x 100 -y 10",
        f"-A -u {VIP}:53 -s rr -o",
        f"-a -u {VIP}:53 -r {R3}:53 -g -w 2",
    )
    https = VirtualServerConfig(
        ServiceKey.inet(VIP, 443),
        scheduler="wrr",
        forwarding=Forwarding.DR,
        persistence_timeout=600,
        persistence_granularity=24,
        real_servers=(
            RealServerConfig(R1, 443, weight=3),
            RealServerConfig(R2, 443, weight=1, u_threshold=100, l_threshold=10),
        ),
    )
    dns = VirtualServerConfig(
        ServiceKey.inet(VIP, 53, Protocol.UDP),
        scheduler="rr",
        forwarding=Forwarding.DR,
        ops=True,
        real_servers=(RealServerConfig(R3, 53, weight=2),),
    )
    mgr = await program(b, [https, dns])
    assert ipvsadm_table(b) == ipvsadm_table(a)
    # Editing in place: weight change and a failed server, then back.
    down = {https.key: {DestKey(R1, 443): False}}
    assert await mgr.update(m.plan([https, dns], down).table) == []
    ipvsadm(a, f"-d -t {VIP}:443 -r {R1}:443")
    assert ipvsadm_table(b) == ipvsadm_table(a)
    await mgr.stop()


async def test_fwmark_parity(pair: tuple[str, str]) -> None:
    a, b = pair
    ipvsadm(
        a,
        "-A -f 7 -s sh -b sh-port -p 300",
        f"-a -f 7 -r {R1}:0 -i -w 2",
        f"-a -f 7 -r {R2}:0 -i -w 0",
    )
    vs = VirtualServerConfig(
        ServiceKey.mark(7),
        scheduler="sh",
        sched_flags=m.SVC_F_SCHED2,
        forwarding=Forwarding.TUN,
        persistence_timeout=300,
        inhibit_on_failure=True,
        real_servers=(RealServerConfig(R1, weight=2), RealServerConfig(R2, weight=5)),
    )
    mgr = manager(b)
    assert await mgr.start(m.plan([vs], {vs.key: {DestKey(R2): False}}).table) == []
    assert ipvsadm_table(b) == ipvsadm_table(a)
    await mgr.stop()


def seed(ns: str) -> None:
    ipvsadm(
        ns,
        f"-A -t {VIP}:80 -s wlc",
        f"-a -t {VIP}:80 -r {R1}:80 -g -w 9",
        f"-a -t {VIP}:80 -r {R3}:80 -m -w 5",
        "-A -t 198.18.1.9:80 -s rr",
    )


NAT_CONF = f"""
virtual_server {VIP} 80 {{
  lvs_sched rr
  lvs_method NAT
  protocol TCP
  real_server {R1} 80 {{ weight 1 }}
  real_server {R2} 80 {{ weight 2 }}
}}
"""


@pytest.mark.interop
async def test_adopt_and_release_like_keepalived(pair: tuple[str, str], tmp_path: Path) -> None:
    a, b = pair
    seed(a)
    seed(b)
    conf = tmp_path / "ka.conf"
    conf.write_text(NAT_CONF)
    ka = subprocess.Popen(
        ["ip", "netns", "exec", a, "keepalived", "-n", "-l", "-D", "-C", "-f", str(conf),
         "-p", str(tmp_path / "k.pid"), "-c", str(tmp_path / "c.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        vs = VirtualServerConfig(
            ServiceKey.inet(VIP, 80),
            scheduler="rr",
            real_servers=(RealServerConfig(R1, 80), RealServerConfig(R2, 80, weight=2)),
        )
        mgr = await program(b, [vs])
        ours = ipvsadm_table(b)
        # Adopted and corrected; the foreign dest and foreign service are untouched.
        assert ours[f"TCP {VIP}:80 rr"] == {
            f"-> {R1}:80 Masq 1 0 0",
            f"-> {R2}:80 Masq 2 0 0",
            f"-> {R3}:80 Masq 5 0 0",
        }
        assert ours["TCP 198.18.1.9:80 rr"] == frozenset()
        deadline = time.monotonic() + 120
        while not any(f"{R2}:80" in line for d in ipvsadm_table(a).values() for line in d):
            assert ka.poll() is None and time.monotonic() < deadline, "keepalived did not start"
            time.sleep(0.5)
        ka.send_signal(signal.SIGTERM)
        assert ka.wait(timeout=60) == 0
        await mgr.stop()
        # keepalived deletes its configured services (with everything in them), nothing else.
        assert ipvsadm_table(b) == ipvsadm_table(a) == {"TCP 198.18.1.9:80 rr": frozenset()}
    finally:
        if ka.poll() is None:
            ka.kill()
            ka.wait()


async def test_kernel_errors_are_reported_per_operation(pair: tuple[str, str]) -> None:
    _, b = pair
    kernel = in_netns(b, NetlinkIpvs)
    try:
        key = ServiceKey.inet(VIP, 80)
        ops: list[m.Op] = [
            m.AddDest(key, m.Destination(DestKey(R1, 80))),  # no such service
            m.AddService(m.Service(key, "rr")),
            m.AddService(m.Service(key, "rr")),  # exists
            m.AddDest(key, m.Destination(DestKey(R1, 80))),
        ]
        failures = kernel.execute(ops)
        assert [(f.op, f.errno) for f in failures] == [
            (ops[0], errno.ESRCH),
            (ops[2], errno.EEXIST),
        ]
        assert kernel.dump() == m.apply_ops({}, [ops[1], ops[3]])
    finally:
        kernel.close()
