"""A SIGKILLed checker child leaves the IPVS table alone, and its successor takes it over.

The operator's scenario, on the real IPVS kernel: a director runs the daemon
with an LVS-NAT virtual service (wrr) over three real servers, two checked by
HTTP_GET and one by TCP_CHECK, each with its own weight, and the table is
programmed.  The checker child -- found through the ``-c`` pid file -- is
SIGKILLed (the OOM killer's choice: it is the big one).  It cannot release
anything, and the parent starts a new one, which must take the table over as
it finds it: from the kill until the new child has checked every real server
and the checker's bound (delay_loop x (retry + 1) + connect_timeout) has
passed once more, ``ipvsadm -Ln`` is read every ``POLL_INTERVAL`` and must
show the same service with every real server at its weight each time (no
flush, nobody missing or added, no weight changed).  A table emptied and
refilled between two readings would still show in the service's connection
counter, which a re-created service restarts from zero.  Then the new child
must still do its work: traffic through the VIP is balanced as before, a real
server whose listener stops leaves the table within the checker's bound and
comes back when it starts again, and stopping the daemon removes the service
it adopted.

The network is ``test_lvs_e2e``'s (client and server LANs, the director
between them, real servers as HTTP servers in threads of the test process),
plus a third real server.  Health checks ask for ``HEALTH``, the client for
``/``, so the real servers' request logs tell the new child's checks apart.
``PYALIVED_E2E_IMPL=keepalived`` runs the same scenario against keepalived,
whose parent restarts its checker child too.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyalived.lab import Proc, daemon_argv
from pyalived.pidfile import read_pid
from tests.kernel.netns import in_netns
from tests.kernel.test_lvs_e2e import (
    CHECKER_BOUND,
    CONNECT_TIMEOUT,
    DELAY_BEFORE_RETRY,
    DELAY_LOOP,
    IMPL,
    POLL_MARGIN,
    RETRY,
    RS1,
    RS2,
    SETTLE_TIMEOUT,
    STARTUP_TIMEOUT,
    VIP,
    Daemon,
    ForkedDaemon,
    NamedServer,
    Topology,
    _build,
    _run,
    connections,
    fetch_many,
    settle,
)

pytestmark = pytest.mark.kernel

RS3 = "198.19.0.23"
HEALTH = "/health"
SERVICE = f"TCP {VIP}:80"
WEIGHTS = {RS1: 1, RS2: 2, RS3: 3}
NAMES = {RS1: "rs1", RS2: "rs2", RS3: "rs3"}
HTTP_CHECKED = (RS1, RS3)  # RS2 has a TCP_CHECK
POLL_INTERVAL = 0.02
# After the new child appears the table is watched at least this long: any
# real server it wrongly started as down would have left the table by then.
QUIET = CHECKER_BOUND + POLL_MARGIN
CHECKS_SEEN = 2  # HTTP checks by the new child on each HTTP_GET real server
MAX_POLL_GAP = 1.5  # a blind spot longer than this makes the watch meaningless

Table = dict[str, frozenset[tuple[str, str, int]]]


def expected(*without: str) -> Table:
    return {
        f"{SERVICE} wrr": frozenset(
            (f"{ip}:80", "Masq", weight) for ip, weight in WEIGHTS.items() if ip not in without
        )
    }


def _timing() -> str:
    return "".join(
        f"\n            {line}"
        for line in (
            f"connect_timeout {CONNECT_TIMEOUT}",
            f"retry {RETRY}",
            f"delay_before_retry {DELAY_BEFORE_RETRY}",
        )
    )


def _check(ip: str) -> str:
    if ip in HTTP_CHECKED:
        url = f"url {{\n{' ' * 16}path {HEALTH}\n{' ' * 16}status_code 200\n{' ' * 12}}}"
        return f"HTTP_GET {{\n            {url}{_timing()}\n        }}"
    return f"TCP_CHECK {{{_timing()}\n        }}"


def config() -> str:
    servers = "".join(
        f"""
    real_server {ip} 80 {{
        weight {weight}
        {_check(ip)}
    }}"""
        for ip, weight in WEIGHTS.items()
    )
    return f"""
global_defs {{
    router_id d1
}}

virtual_server {VIP} 80 {{
    delay_loop {DELAY_LOOP}
    lb_algo wrr
    lb_kind NAT
    protocol TCP{servers}
}}
"""


def table(ns: str) -> Table:
    """``ipvsadm -Ln`` in ``ns`` as {service line: {(address:port, forwarding, weight)}}.

    ipvsadm runs straight from a thread inside the namespace (it inherits the
    thread's namespace), which costs one exec less than ``ip netns exec``.
    """
    done = in_netns(ns, lambda: subprocess.run(["ipvsadm", "-Ln"], capture_output=True,
                                               text=True))  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"ipvsadm -Ln in {ns}: {done.stderr.strip()}")
    out: dict[str, set[tuple[str, str, int]]] = {}
    current: set[tuple[str, str, int]] | None = None
    for line in done.stdout.splitlines()[3:]:
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "->":
            assert current is not None, done.stdout
            current.add((fields[1], fields[2], int(fields[3])))
        else:
            current = out.setdefault(" ".join(fields), set())
    return {k: frozenset(v) for k, v in out.items()}


def show(t: Table) -> str:
    if not t:
        return "(empty)"
    return "; ".join(
        f"{svc}: " + ", ".join(f"{a} w{w}" for a, _, w in sorted(dests)) if dests else f"{svc}: -"
        for svc, dests in sorted(t.items())
    )


def parent_of(pid: int) -> int | None:
    """The parent of live process ``pid``; None once it is gone (or a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("State", "").split()[:1] == ["Z"]:
        return None
    return int(fields["PPid"])


def checks_since(server: NamedServer, since: float) -> list[float]:
    return [t for t, path, code in server.requests if path == HEALTH and code == 200 and t > since]


def start_director(topo: Topology) -> tuple[Daemon, Path, Path]:
    """The daemon on d1 with every pid file: (process, checker pid file, VRRP pid file)."""
    conf = topo.workdir / "d1.conf"
    conf.write_text(config())
    base = topo.workdir / f"d1-{IMPL}"
    argv = daemon_argv(IMPL, conf, base)
    checker_pid, vrrp_pid = Path(f"{base}.check.pid"), Path(f"{base}.vrrp.pid")
    log = topo.workdir / f"d1-{IMPL}.log"
    proc: Daemon
    if IMPL == "pyalived":
        assert argv[1:3] == ["-m", "pyalived"], argv
        argv += ["-r", str(vrrp_pid), "-c", str(checker_pid)]
        proc = ForkedDaemon(f"d1-{IMPL}", topo.ns("d1"), argv[3:], log)
    else:
        assert str(checker_pid) in argv and str(vrrp_pid) in argv, argv
        proc = Proc(f"d1-{IMPL}", topo.ns("d1"), argv, log, cwd=topo.workdir)
    topo.procs.append(proc)
    return proc, checker_pid, vrrp_pid


def wrr_round(client: str, *without: str) -> Counter[str | None]:
    """One wrr cycle of requests through the VIP: each real server answers ``weight`` times."""
    return Counter(fetch_many(client, sum(w for ip, w in WEIGHTS.items() if ip not in without)))


def cycle(*without: str) -> Counter[str | None]:
    return Counter({NAMES[ip]: w for ip, w in WEIGHTS.items() if ip not in without})


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pyalived-e2e-") as d:
        yield Path(d)


def test_e2e_killed_checker_child_leaves_the_table(workdir: Path) -> None:
    topo = _build(workdir, directors=1)
    try:
        d1, client = topo.ns("d1"), topo.ns("client")
        topo.add("rs3")
        topo.attach("rs3", "eth0", topo.ns("sbr"), RS3)
        _run("ip", "-n", topo.ns("rs3"), "route", "add", "default", "via", "198.19.0.11",
             "dev", "eth0", "onlink")  # fmt: skip
        servers = {ip: topo.serve(NAMES[ip], ip, 80, NAMES[ip]).start() for ip in WEIGHTS}
        _run("ip", "-n", d1, "addr", "add", f"{VIP}/32", "dev", "eth0")
        proc, checker_pid, vrrp_pid = start_director(topo)

        def checker_child() -> int | None:
            pid = read_pid(checker_pid)
            return pid if pid is not None and parent_of(pid) == proc.pid else None

        settle(topo, "the table programmed and the checker child's pid file written",
               lambda: table(d1) == expected() and checker_child(),
               timeout=STARTUP_TIMEOUT)  # fmt: skip
        assert wrr_round(client) == cycle()
        # The kernel's estimator sums the counters every two seconds.
        settle(topo, "the connections counted", lambda: connections(d1, SERVICE) >= 6)
        conns_before = connections(d1, SERVICE)
        # keepalived starts no VRRP child without a vrrp_instance; pyalived always does.
        vrrp_child = read_pid(vrrp_pid)
        if IMPL == "pyalived":
            assert vrrp_child is not None and parent_of(vrrp_child) == proc.pid

        old = checker_child()
        assert old is not None
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()

        # Watch the table from the kill until the new child has checked every
        # HTTP real server CHECKS_SEEN times and QUIET seconds have passed.
        # (seconds since the kill, the -c pid file's pid, the table)
        timeline: list[tuple[float, int | None, Table]] = []
        new: int | None = None
        new_seen = checked = end = 0.0
        while True:
            now = time.monotonic()
            pid = read_pid(checker_pid)
            timeline.append((now - killed, pid, table(d1)))
            if new is None and pid is not None and pid != old and parent_of(pid) == proc.pid:
                new, new_seen = pid, now
            if new is not None and not checked and all(len(checks_since(servers[ip], new_seen))
                                                       >= CHECKS_SEEN for ip in HTTP_CHECKED):
                checked = now
                end = max(new_seen + QUIET, checked + 1.0)
            if checked and now >= end:
                break
            if now - killed > SETTLE_TIMEOUT:
                break
            time.sleep(POLL_INTERVAL)

        changes = [timeline[0]] + [b for a, b in itertools.pairwise(timeline) if a[1:] != b[1:]]
        story = "\n".join(f"  +{t:6.3f} s  -c pid {p}  {show(tb)}" for t, p, tb in changes)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(timeline)]
        print(f"killed checker child {old}; new child {new} seen {new_seen - killed:.3f} s later, "
              f"{CHECKS_SEEN} HTTP checks each by {checked - killed:.3f} s; watched "
              f"{timeline[-1][0]:.3f} s, {len(timeline)} ipvsadm -Ln readings, gap median "
              f"{sorted(gaps)[len(gaps) // 2]:.3f} s max {max(gaps):.3f} s\n"
              f"pid file and table changes:\n{story}")  # fmt: skip
        bad = [(t, tb) for t, _, tb in timeline if tb != expected()]
        assert not bad, (
            f"the table changed after the checker child was killed ({len(bad)} of "
            f"{len(timeline)} readings):\n{story}\n{topo.logs()}"
        )
        assert new is not None, f"no new checker child within {SETTLE_TIMEOUT} s\n{topo.logs()}"
        assert checked, f"the new checker child did not check\n{story}\n{topo.logs()}"
        assert max(gaps) < MAX_POLL_GAP, gaps
        assert proc.running(), topo.logs()
        if vrrp_child is not None:  # the VRRP half never noticed
            assert read_pid(vrrp_pid) == vrrp_child and parent_of(vrrp_child) == proc.pid
        if IMPL == "pyalived":
            assert f"checker child (pid {old}) died (killed by SIGKILL)" in proc.log_text()
        # Emptied and refilled between two readings, the service would have
        # started counting again from zero.
        assert connections(d1, SERVICE) >= conns_before

        # The service still balances, and the new child still reconciles.
        assert wrr_round(client) == cycle()
        servers[RS2].stop()
        stopped = time.monotonic()
        try:
            settle(topo, "rs2 out of the table", lambda: table(d1) == expected(RS2),
                   timeout=CHECKER_BOUND * 4)  # fmt: skip
            elapsed = time.monotonic() - stopped
            print(f"rs2 removed {elapsed:.2f} s after it stopped (bound {CHECKER_BOUND} s)")
            assert elapsed <= CHECKER_BOUND + POLL_MARGIN, elapsed
            assert wrr_round(client, RS2) == cycle(RS2)
        finally:
            servers[RS2].start()
        settle(topo, "rs2 back in the table", lambda: table(d1) == expected())
        assert wrr_round(client) == cycle()

        # The new child owns what it adopted: stopping the daemon removes it.
        assert proc.stop(30.0) == 0, topo.logs()
        assert table(d1) == {}, topo.logs()
    finally:
        topo.close()
