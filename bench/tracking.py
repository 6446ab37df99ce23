"""Tracking benchmark: from a track file written, or a tracked process started or killed,
to the new priority on the wire.

Theory of operation: one pyalived router on a namespace lab, MASTER alone on
the LAN, VRRPv3 with ``advert_int`` 0.01 s, so that every priority change is
on the wire within 10 ms of the daemon's decision.  It tracks a file
(weight -10) and a process (weight 20, a copy of ``sleep`` under a name unique
to the run).  Each round writes the file with the shell (``echo N > FILE``:
truncate, write, close), then kills the process and starts it again, and
takes the first advert carrying the expected priority from the capture on
the bridge.  The delay is that advert's kernel timestamp minus the time just
before the action (both on this host's clock), so it includes the advert
spacing (at most 10 ms, 5 ms on average).

Printed: median, 90th percentile and maximum over ``--rounds`` rounds, for
the file written, the process killed and the process started, and whether
the daemon used the process-events connector or fell back to scanning /proc.
``--without-connector`` starts the daemon without CAP_SYS_ADMIN (``capsh``),
so that inside the lab's namespace it cannot reach the connector and scans
/proc every 0.5 s: the fallback's figures.
Needs root, iproute2 and tcpdump.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyalived.lab import Capture, Lab, Node, VrrpSpec, daemon_argv, render_config

BASE = 100
FILE_WEIGHT = -10
PROC_WEIGHT = 20
ADVERT_INT = 0.01
TIMEOUT = 10.0


def v3_adverts(pcap: bytes) -> list[tuple[float, str, int]]:
    """(time, source, priority) of the IPv4 VRRPv3 adverts of a pcap file (the lab's
    capture parser reads VRRPv2 only)."""
    out: list[tuple[float, str, int]] = []
    offset = 24
    while offset + 16 <= len(pcap):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", pcap, offset)
        frame = pcap[offset + 16: offset + 16 + incl]
        offset += 16 + incl
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        body = ip[(ip[0] & 0x0F) * 4:]
        if ip[9] == 112 and body[0] == 0x31:
            out.append((sec + usec / 1e6, socket.inet_ntoa(ip[12:16]), body[2]))
    return out


def wire_time(cap: Capture, node: Node, priority: int, after: float) -> float:
    """The capture time of ``node``'s first advert with ``priority`` after ``after``."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for t, src, prio in v3_adverts(cap.path.read_bytes() if cap.path.exists() else b""):
            if t > after and src == node.ip and prio == priority:
                return t
        time.sleep(0.05)
    raise TimeoutError(f"no advert with priority {priority}")


def summary(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return {"median_ms": round(statistics.median(ms), 1), "p90_ms": round(p90, 1),
            "max_ms": round(ms[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--without-connector", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyalived-bench-tracking-"))
    name = f"pyabench{secrets.token_hex(3)}"
    binary = work / name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
    state = work / "drain"
    state.write_text("0\n")
    service = subprocess.Popen([str(binary), "3600"])
    results: dict[str, list[float]] = {"file_written": [], "process_killed": [],
                                       "process_started": []}
    try:
        with Lab(routers=1, workdir=work / "lab") as lab:
            (r1,) = lab.routers
            cap = lab.capture()
            head = (f'track_file drain {{\n    file "{state}"\n    weight {FILE_WEIGHT}\n}}\n'
                    f"vrrp_track_process svc {{\n    process {name}\n"
                    f"    weight {PROC_WEIGHT}\n}}\n")
            spec = VrrpSpec(priority=BASE, state="MASTER", advert_int=ADVERT_INT,
                            extra=("version 3", "track_file {", "    drain", "}",
                                   "track_process {", "    svc", "}"))
            text = head + render_config("r1", [spec])
            if args.without_connector:
                conf = lab.write_config(r1, text)
                env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
                r1.daemon = lab.spawn(r1, ["capsh", "--drop=cap_sys_admin", "--", "-c",
                                           'exec "$0" "$@"',
                                           *daemon_argv("pyalived", conf, work / "r1")],
                                      "r1", env=env)
            else:
                lab.start_daemon(r1, text)
            up = BASE + PROC_WEIGHT
            try:
                wire_time(cap, r1, up, 0.0)
            except Exception:
                assert r1.daemon is not None
                print(r1.daemon.log_text()[-3000:], file=sys.stderr)
                raise
            time.sleep(1.0)
            for n in range(args.rounds):
                value = 1 + n % 3
                t0 = time.time()
                subprocess.run(["sh", "-c", f"echo {value} > '{state}'"], check=True)
                results["file_written"].append(
                    wire_time(cap, r1, up + FILE_WEIGHT * value, t0) - t0)
                subprocess.run(["sh", "-c", f"echo 0 > '{state}'"], check=True)
                wire_time(cap, r1, up, time.time())
                time.sleep(0.2)
                t0 = time.time()
                service.kill()
                service.wait()
                results["process_killed"].append(wire_time(cap, r1, BASE, t0) - t0)
                time.sleep(0.2)
                t0 = time.time()
                service = subprocess.Popen([str(binary), "3600"])
                results["process_started"].append(wire_time(cap, r1, up, t0) - t0)
                time.sleep(0.2)
            assert r1.daemon is not None
            log = r1.daemon.log_text()
            mode = ("connector" if "connector opened" in log or "connector unavailable" not in log
                    else "/proc polling")
            lab.stop_daemon(r1)
    finally:
        service.kill()
        service.wait()
        shutil.rmtree(work, ignore_errors=True)
    report = {k: summary(v) for k, v in results.items()}
    report["process_events"] = mode  # type: ignore[assignment]
    report["rounds"] = args.rounds  # type: ignore[assignment]
    report["advert_int_ms"] = ADVERT_INT * 1000  # type: ignore[assignment]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
