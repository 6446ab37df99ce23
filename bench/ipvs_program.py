"""Benchmark: program 1,000 services x 10 destinations, pyalived vs ``ipvsadm -R``.

Theory of operation: run on the host, it boots the IPVS test VM once
(``tests/kernel/run_vm.py``) and re-runs itself inside with ``--in-vm``.
Inside, each contender programs the same table into its own fresh network
namespace (IPVS tables are per namespace): ``ipvsadm -R`` from a generated
restore file, and ``NetlinkIpvs.execute`` on the ops ``diff({}, table)``.
Only ratios inside one boot are meaningful (the guest is emulated).  Our time
is broken down into encoding (pure Python), the ``sendmsg`` calls (the
kernel executes the batched requests inside them) and receiving/decoding the
replies; a run of requests the kernel rejects at once (deleting destinations
of a missing service) estimates the syscall and netlink overhead without
IPVS work.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyalived.ipvs import genl  # noqa: E402
from pyalived.ipvs import model as m  # noqa: E402
from pyalived.ipvs.netlink import NetlinkIpvs  # noqa: E402
from tests.kernel.netns import in_netns, netns, sh  # noqa: E402


def build(n_services: int, n_dests: int) -> dict[m.ServiceKey, m.ServiceEntry]:
    entries = []
    for i in range(n_services):
        vip = IPv4Address("198.18.0.0") + 256 + i
        svc = m.Service(m.ServiceKey.inet(vip, 80), "wrr")
        dests = [
            m.Destination(m.DestKey(IPv4Address("198.19.0.0") + i * n_dests + j, 80), j + 1)
            for j in range(n_dests)
        ]
        entries.append((svc, dests))
    return m.make_table(entries)


def restore_file(table: m.Table) -> str:
    lines = []
    for key, e in table.items():
        lines.append(f"-A -t {key.address}:{key.port} -s {e.service.scheduler}")
        for d in e.dests.values():
            lines.append(f"-a -t {key.address}:{key.port} -r {d.key} -m -w {d.weight}")
    return "\n".join(lines) + "\n"


class TimedKernel(NetlinkIpvs):
    """NetlinkIpvs with its socket calls timed."""

    send_s = 0.0
    recv_s = 0.0

    def _send_batch(self, data: bytes, by_seq: dict[int, m.Op], last_seq: int) -> list:  # type: ignore[type-arg]
        sock = self._sock
        real_send, real_recv = sock.send, self._recv
        t0 = time.perf_counter()
        real_send(data)
        self.send_s += time.perf_counter() - t0
        failures = []
        while True:
            t0 = time.perf_counter()
            replies = real_recv()
            self.recv_s += time.perf_counter() - t0
            for r in replies:
                if r.type != genl.NLMSG_ERROR or r.seq not in by_seq:
                    continue
                if r.error:
                    failures.append(r)
                if r.seq == last_seq:
                    return failures


def in_vm(n_services: int, n_dests: int) -> int:
    table = build(n_services, n_dests)
    ops = m.diff({}, table)
    print(f"table: {n_services} services x {n_dests} destinations = {len(ops)} operations")

    with netns("bench") as ns:
        text = restore_file(table)
        t0 = time.perf_counter()
        subprocess.run(
            ["ip", "netns", "exec", ns, "ipvsadm", "-R"], input=text, text=True, check=True
        )
        t_ipvsadm = time.perf_counter() - t0
        assert sh(ns, "ipvsadm", "-Ln").count("->") == n_services * n_dests + 1

    with netns("bench") as ns:
        kernel = in_netns(ns, TimedKernel)
        t0 = time.perf_counter()
        for i, op in enumerate(ops):
            genl.encode_op(kernel.family_id, op, i)
        t_encode = time.perf_counter() - t0
        t0 = time.perf_counter()
        failures = kernel.execute(ops)
        t_ours = time.perf_counter() - t0
        assert not failures
        t_send, t_recv = kernel.send_s, kernel.recv_s
        # Requests the kernel rejects before touching any IPVS state.
        missing = m.ServiceKey.inet("198.18.255.254", 1)
        junk: list[m.Op] = [m.DeleteDest(missing, m.DestKey(IPv4Address("198.19.255.1")))] * len(
            ops
        )
        kernel.send_s = 0.0
        t0 = time.perf_counter()
        kernel.execute(junk)
        t_null = time.perf_counter() - t0
        t_null_send = kernel.send_s
        t0 = time.perf_counter()
        dumped = kernel.dump()
        t_dump = time.perf_counter() - t0
        assert dumped == table
        kernel.close()

    print(f"ipvsadm -R:             {t_ipvsadm:8.3f} s")
    print(f"pyalived NetlinkIpvs:   {t_ours:8.3f} s   ratio {t_ours / t_ipvsadm:.2f}x")
    print(f"  encoding (Python):    {t_encode:8.3f} s")
    print(f"  sendmsg (kernel work):{t_send:8.3f} s")
    print(f"  recv + decode:        {t_recv:8.3f} s")
    print(f"  rejected-ops run:     {t_null:8.3f} s (sendmsg {t_null_send:.3f} s)")
    print(f"  kernel IPVS work est: {max(t_send - t_null_send, 0):8.3f} s")
    print(f"read back (dump):       {t_dump:8.3f} s")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description="IPVS programming benchmark")
    ap.add_argument("--in-vm", action="store_true", help="run the measurement here")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--dests", type=int, default=10)
    ns = ap.parse_args()
    if ns.in_vm:
        return in_vm(ns.services, ns.dests)
    sys.path.insert(0, str(ROOT / "tests" / "kernel"))
    from tests.kernel import run_vm

    cmd = f"python bench/ipvs_program.py --in-vm --services {ns.services} --dests {ns.dests}"
    return run_vm.run(cmd, timeout=900)


if __name__ == "__main__":
    sys.exit(main())
