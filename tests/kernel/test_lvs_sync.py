"""lvs_sync_daemon on the real IPVS kernel: a client's connection survives a director failover.

Theory of operation: the director pair of ``test_lvs_e2e`` (a client LAN, a
server LAN, two LVS-NAT directors sharing the client-side VIP and the real
servers' gateway through one VRRP instance), with line-echo servers on the
real servers.  Each echo server first says its name, then echoes every line.
The client opens one TCP connection through the VIP and keeps sending a
numbered line every ``TICK`` seconds, recording when each echo comes back.
Then the master is cut off both LANs, as a real failure would, and the
backup takes over.

With ``lvs_sync_daemon`` the backup's kernel has received the connection
(and the persistence template) from the master's sync daemon before the
failover (``ipvsadm -Lnc`` on the backup shows it), so after the takeover the
same socket keeps exchanging lines, the real server never sees a second
handshake, and a new connection from the same client lands on the same real
server (``persistence_timeout``).  The control run, without
``lvs_sync_daemon``, shows why: the backup has no entry, and the connection
is reset (or dead) after the takeover.  The synced run also reads the kernel's
daemons in each state (backup on the backup, master on the master, master
on the new master, backup on the cut-off one in FAULT, none after a stop) and
restarts a ``kill -9``-ed director over the daemon it left behind.

The largest gap between two echoes across the failover is printed (run with
``-s`` to see it).
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pyalived.lab import LabError, namespace_pids, wait_for
from tests.kernel.netns import in_netns, sh
from tests.kernel.test_lvs_e2e import (
    CLIENT,
    INSIDE_VIP,
    RS1,
    RS2,
    STARTUP_TIMEOUT,
    VIP,
    Topology,
    built,
    settle,
)

pytestmark = pytest.mark.kernel

PORT = 7000
TICK = 0.1  # seconds between the client's lines
MASTER_DOWN = 3 * 1 + (256 - 100) / 256  # the backup's Master_Down_Interval (advert_int 1)
HANG_GUARD = 60.0  # the most a step may take in the emulated VM (a hang guard, not a budget)


def pair_config(router_id: str, priority: int, sync: bool, extra: str = "") -> str:
    syncd = f"\n    lvs_sync_daemon eth1 VI_LVS{extra}" if sync else ""
    return f"""
global_defs {{
    router_id {router_id}{syncd}
}}

vrrp_instance VI_LVS {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int 1
    virtual_ipaddress {{
        {VIP}/24 dev eth0
        {INSIDE_VIP}/24 dev eth1
    }}
}}

virtual_server {VIP} {PORT} {{
    delay_loop 2
    lb_algo rr
    lb_kind NAT
    protocol TCP
    persistence_timeout 600
    real_server {RS1} {PORT} {{
        weight 1
        TCP_CHECK {{
            connect_timeout 2
        }}
    }}
    real_server {RS2} {PORT} {{
        weight 1
        TCP_CHECK {{
            connect_timeout 2
        }}
    }}
}}
"""


class EchoServer:
    """Says its name, then echoes lines; counts the connections accepted from the client."""

    def __init__(self, ns: str, ip: str, name: str) -> None:
        self.name = name
        self.client_accepts = 0
        self._sock = in_netns(ns, lambda: socket.create_server((ip, PORT), backlog=16))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if peer[0] == CLIENT:
                self.client_accepts += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(f"{self.name}\n".encode())
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)


class LineClient:
    """One connection through the VIP, a numbered line every TICK, each echo's arrival time."""

    def __init__(self, ns: str) -> None:
        self.sock = in_netns(ns, lambda: socket.create_connection((VIP, PORT), timeout=10))
        self.local_port = self.sock.getsockname()[1]
        self.server = self._line()
        self.echoes: list[float] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _line(self) -> str:
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionResetError("closed by the peer")
            data += chunk
        return data.decode().strip()

    def _run(self) -> None:
        n = 0
        self.sock.settimeout(HANG_GUARD)
        try:
            while not self._stop.is_set():
                n += 1
                self.sock.sendall(f"{n}\n".encode())
                if self._line() != str(n):
                    raise AssertionError(f"echo of line {n} garbled")
                self.echoes.append(time.monotonic())
                self._stop.wait(TICK)
        except BaseException as exc:  # recorded for the test to look at
            self.error = exc

    def largest_gap(self) -> float:
        return max((b - a for a, b in itertools.pairwise(self.echoes)), default=0.0)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(HANG_GUARD)


def connection_entries(ns: str) -> list[list[str]]:
    """``ipvsadm -Lnc`` rows: [proto, expire, state, source, virtual, destination]."""
    rows = sh(ns, "ipvsadm", "-Lnc").splitlines()[2:]
    return [row.split() for row in rows if row.strip()]


def daemons(ns: str) -> list[str]:
    return [line.strip() for line in sh(ns, "ipvsadm", "-L", "--daemon").splitlines()
            if line.strip()]


def addresses(ns: str) -> set[str]:
    out = sh(ns, "ip", "-o", "-4", "addr", "show")
    return {line.split()[3].split("/")[0] for line in out.splitlines()}


def until(topo: Topology, what: str, predicate: Callable[[], object],
          timeout: float = HANG_GUARD) -> None:
    """``settle`` for when some daemon of the topology has stopped on purpose."""
    try:
        wait_for(predicate, timeout, interval=0.2, what=what)
    except LabError as exc:
        raise AssertionError(f"{exc}\n{topo.logs()}") from None


@pytest.fixture
def pair() -> Iterator[Topology]:
    with built("pyalived-sync-", directors=2) as topo:
        yield topo


@pytest.mark.parametrize("sync", [True, False], ids=["synced", "control"])
def test_a_connection_survives_the_failover_only_with_lvs_sync_daemon(
    pair: Topology, sync: bool
) -> None:
    d1, d2, client = pair.ns("d1"), pair.ns("d2"), pair.ns("client")
    servers = {ip: EchoServer(pair.ns(name), ip, name)
               for ip, name in ((RS1, "rs1"), (RS2, "rs2"))}
    line_client: LineClient | None = None
    try:
        pair.start_daemon("d1", pair_config("d1", 150, sync))
        pair.start_daemon("d2", pair_config("d2", 100, sync))
        settle(pair, "d1 master with both VIPs, both directors programmed",
               lambda: {VIP, INSIDE_VIP} <= addresses(d1)
               and not {VIP, INSIDE_VIP} & addresses(d2)
               and sh(d1, "ipvsadm", "-Ln").count("Masq") == 2
               and sh(d2, "ipvsadm", "-Ln").count("Masq") == 2,
               timeout=STARTUP_TIMEOUT)  # fmt: skip
        if sync:
            # keepalived 2.2.7's states: master daemon on the master, backup on the backup
            settle(pair, "the sync daemons of each state",
                   lambda: daemons(d1) == ["master sync daemon (mcast=eth1, syncid=51, "
                                           "maxlen=1472, group=224.0.0.81, port=8848, ttl=1)"]
                   and daemons(d2) == ["backup sync daemon (mcast=eth1, syncid=51, "
                                       "maxlen=1472, group=224.0.0.81, port=8848, ttl=1)"])
        else:
            assert daemons(d1) == daemons(d2) == []

        line_client = LineClient(client)
        sticky = line_client.server
        sticky_ip = RS1 if sticky == "rs1" else RS2
        conn = ["TCP", f"{CLIENT}:{line_client.local_port}", f"{VIP}:{PORT}",
                f"{sticky_ip}:{PORT}"]
        template = ["TCP", f"{CLIENT}:0", f"{VIP}:{PORT}", f"{sticky_ip}:{PORT}"]

        def on_d2() -> tuple[bool, bool]:
            rows = [[r[0], *r[3:]] for r in connection_entries(d2)]
            return conn in rows, template in rows

        settle(pair, "lines echoed through d1", lambda: len(line_client.echoes) >= 20)
        if sync:
            settle(pair, "the connection and its persistence template synced to d2",
                   lambda: on_d2() == (True, True))
        else:
            time.sleep(3)  # the sync daemon sends its buffer at least every 2 s
            assert on_d2() == (False, False), connection_entries(d2)

        # The master fails: cut off both LANs.
        pair.set_leg(pair.ns("cbr"), "d1", "eth0", False)
        pair.set_leg(pair.ns("sbr"), "d1", "eth1", False)
        cut = time.monotonic()
        settle(pair, "d2 holding both VIPs", lambda: {VIP, INSIDE_VIP} <= addresses(d2))
        took_over = time.monotonic()
        if not sync:
            settle(pair, "the connection broken (reset, or no echo for 20 s)",
                   lambda: line_client.error is not None
                   or time.monotonic() - max(line_client.echoes[-1], took_over) > 20,
                   timeout=HANG_GUARD)  # fmt: skip
            assert line_client.echoes[-1] < took_over, "echoed through d2 without sync"
            return

        settle(pair, "d2's daemon now a master one",
               lambda: daemons(d2) == ["master sync daemon (mcast=eth1, syncid=51, "
                                       "maxlen=1472, group=224.0.0.81, port=8848, ttl=1)"])
        before = len(line_client.echoes)
        settle(pair, "the same connection still echoing through d2",
               lambda: line_client.error is not None
               or len(line_client.echoes) >= before + 10,
               timeout=HANG_GUARD)  # fmt: skip
        assert line_client.error is None, repr(line_client.error)
        assert len([t for t in line_client.echoes if t > took_over]) >= 10
        # no new handshake: the real server accepted the client once, on this socket
        assert servers[sticky_ip].client_accepts == 1
        assert sum(s.client_accepts for s in servers.values()) == 1
        gap = line_client.largest_gap()
        print(f"\nlvs_sync_daemon failover: largest gap between echoes {gap:.3f} s "
              f"(Master_Down_Interval {MASTER_DOWN:.3f} s, cut to takeover seen "
              f"{took_over - cut:.3f} s)")
        # persistence_timeout: a new connection from the client sticks to the same server
        second = LineClient(client)
        try:
            assert second.server == sticky
        finally:
            second.close()

        # A stop leaves no daemon (keepalived 2.2.7: none after SIGTERM).
        d2_proc = pair.procs[1]
        assert d2_proc.stop(30.0) == 0
        assert daemons(d2) == []

        # d1, cut off (no carrier), went to FAULT: a backup daemon, as keepalived 2.2.7.
        # Killed -9 whole, it leaves that daemon in the kernel; restarted with another
        # maxlen it replaces it (keepalived fails to start its own over it).
        until(pair, "the cut-off d1 in FAULT with a backup daemon",
              lambda: daemons(d1) == ["backup sync daemon (mcast=eth1, syncid=51, "
                                      "maxlen=1472, group=224.0.0.81, port=8848, ttl=1)"])
        pids = namespace_pids(d1)
        for sig in (signal.SIGSTOP, signal.SIGKILL):  # stopped first: no graceful exit
            for pid in pids:
                os.kill(pid, sig)
        pair.procs[0].stop(5.0)
        assert len(daemons(d1)) == 1
        pair.start_daemon("d1", pair_config("d1", 150, sync, " maxlen 1400"))
        until(pair, "the restarted d1 with one backup daemon of its new settings",
              lambda: daemons(d1) == ["backup sync daemon (mcast=eth1, syncid=51, "
                                      "maxlen=1400, group=224.0.0.81, port=8848, ttl=1)"],
              timeout=STARTUP_TIMEOUT)  # fmt: skip
    finally:
        if line_client is not None:
            line_client.close()
        for server in servers.values():
            server.close()
