"""Client-visible gap of a synced connection across an LVS director failover.

Theory of operation: the scenario is the kernel test
``tests/kernel/test_lvs_sync.py`` (synced case): two LVS-NAT directors with
``lvs_sync_daemon``, a client sending a line every 0.1 s through the VIP
over one TCP connection, the master cut off both LANs.  That test prints the
largest gap between two echoes seen by the client (the VRRP takeover plus
the client's TCP retransmission back-off), with the Master_Down_Interval
and the time from the cut to the VIPs seen on the backup.  This script boots
the IPVS test VM once, runs the synced case ``--runs`` times in it and
prints those lines and their median.  The emulated VM is slow and noisy:
compare the gap with the Master_Down_Interval printed beside it.

Usage: ``python bench/lvs_sync_gap.py [--runs N]`` (as root, on the host).
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"largest gap between echoes ([0-9.]+) s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ns = ap.parse_args(argv)
    pytest = shlex.join(["python", "-m", "pytest", "-q", "-s", "-m", "kernel", "-p",
                         "no:cacheprovider", "tests/kernel/test_lvs_sync.py", "-k", "synced"])
    command = f"for i in $(seq {ns.runs}); do {pytest} || exit 1; done"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "kernel" / "run_vm.py"), "--exec", command],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    lines = [line for line in done.stdout.splitlines() if LINE.search(line)]
    for line in lines:
        print(line.strip())
    gaps = [float(m.group(1)) for line in lines if (m := LINE.search(line))]
    if not gaps or done.returncode:
        print(done.stdout[-3000:], file=sys.stderr)
        return done.returncode or 1
    print(f"median largest gap over {len(gaps)} run(s): {statistics.median(gaps):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
