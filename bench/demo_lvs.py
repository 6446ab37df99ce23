"""``make demo-lvs``: a pair of LVS directors at work, narrated, on a real IPVS kernel.

Theory of operation: run on the host, it boots the IPVS test VM
(``tests/kernel/run_vm.py``; this host's kernel has no IPVS) and re-runs
itself inside with ``--in-vm``.  Inside, it builds the routed network of the
kernel tests (``tests/kernel/test_lvs_e2e.py``) out of namespaces: a client
LAN (198.18.0.0/24) and a server LAN (198.19.0.0/24), two directors with a leg
on each, and three real servers whose default route is the inside gateway
198.19.0.254.  Both directors run the daemon (pyalived, or keepalived 2.2.7
with ``--impl keepalived``) with one keepalived.conf differing only in router
id and priority: a VRRP instance holding the VIP 198.18.0.100 and the inside
gateway, ``lvs_sync_daemon eth0 VI_LVS`` in global_defs, a wrr web service on
VIP:80 (weights 3, 2, 1; the real servers are ``busybox httpd`` processes
answering their own name) and an rr line-echo service on VIP:7000 (threads of
this process, each reply prefixed with the real server's name), every real
server under a TCP_CHECK.

The narration then walks an operator through what happens and prints the
evidence: the client's requests spread 30/20/10 over the real servers; rs2's
web server is killed (SIGKILL) and its checker takes it out of the table (the
daemon's log lines and ``ipvsadm -Ln``), then it is started again and comes
back; a long-lived TCP connection is opened to the echo service and the
master is cut off both LANs: the backup takes the VIP and the gateway (a
tcpdump capture on the client LAN gives the master's last advert and the
backup's first), and the connection either goes on (the connection table was synchronised to the
backup, ``ipvsadm -Lnc`` shows it there) or is reset (it was not), which the
narration says as it is.  Every namespace and process is removed at the end,
also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIP = "198.18.0.100"
INSIDE_VIP = "198.19.0.254"
CLIENT = "198.18.0.200"
WEB_PORT, ECHO_PORT = 80, 7000
# name, address, wrr weight on VIP:80
REAL_SERVERS = (("rs1", "198.19.0.21", 3), ("rs2", "198.19.0.22", 2), ("rs3", "198.19.0.23", 1))
DIRECTORS = (("d1", 150), ("d2", 100))
CHECK = """TCP_CHECK {
            connect_timeout 2
            retry 1
            delay_before_retry 1
        }"""


def director_config(router_id: str, priority: int) -> str:
    """The keepalived.conf of one director (the two differ in router id and priority)."""

    def service(port: int, algo: str, weights: bool) -> str:
        reals = "".join(f"""
    real_server {ip} {port} {{
        weight {weight if weights else 1}
        {CHECK}
    }}""" for _, ip, weight in REAL_SERVERS)
        return f"""
virtual_server {VIP} {port} {{
    delay_loop 2
    lb_algo {algo}
    lb_kind NAT
    protocol TCP{reals}
}}
"""

    return f"""global_defs {{
    router_id {router_id}
    lvs_sync_daemon eth0 VI_LVS
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
""" + service(WEB_PORT, "wrr", True) + service(ECHO_PORT, "rr", False)


def expected_split(weights: dict[str, int], requests: int) -> dict[str, int]:
    """What wrr gives ``requests`` new connections: shares in proportion to the weights
    (exact when ``requests`` is a multiple of the weights' sum)."""
    total = sum(weights.values())
    return {name: requests * w // total for name, w in weights.items() if w}


def lines_about(log: str, address: str) -> list[str]:
    """The log lines that name ``address`` (as an address, not a prefix of a longer one)."""
    out = []
    for line in log.splitlines():
        at = line.find(address)
        while at >= 0:
            after = line[at + len(address):at + len(address) + 1]
            if not after.isdigit():
                out.append(line.strip())
                break
            at = line.find(address, at + 1)
    return out


def excerpt(table: str, port: int) -> str:
    """The lines of ``ipvsadm -Ln`` output for the service on ``port``, indented."""
    out, keep = [], False
    for line in table.splitlines():
        if not line.startswith("  ->"):
            keep = line.split()[1:2] == [f"{VIP}:{port}"]
        if keep:
            out.append("    " + line)
    return "\n".join(out)


def say(text: str = "") -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------
# Inside the VM


class EchoServer:
    """A line-echo service of one real server: every line comes back as ``name: line``."""

    def __init__(self, ns: str, ip: str, name: str) -> None:
        from tests.kernel.netns import in_netns

        def listen() -> socket.socket:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, ECHO_PORT))
            s.listen()
            return s

        self.name = name
        self.sock = in_netns(ns, listen)
        self.sock.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            conn.settimeout(None)
            try:
                for line in lines:
                    conn.sendall(self.name.encode() + b": " + line)
            except OSError:
                pass

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


class WebServer:
    """``busybox httpd`` in a real server's namespace, answering its name on port 80."""

    def __init__(self, topo: Any, role: str, ip: str, workdir: Path) -> None:
        self.topo, self.role, self.ip = topo, role, ip
        self.home = workdir / f"www-{role}"
        self.home.mkdir(exist_ok=True)
        (self.home / "index.html").write_text(f"{role}\n")
        self.log = workdir / f"httpd-{role}.log"
        self.proc: Any = None

    def start(self) -> None:
        from pyalived.lab import Proc

        self.proc = Proc(f"httpd-{self.role}", self.topo.ns(self.role),
                         ["busybox", "httpd", "-f", "-p", f"{self.ip}:{WEB_PORT}",
                          "-h", str(self.home)], self.log)

    def kill(self) -> int:
        assert self.proc is not None
        pid: int = self.proc.pid
        self.proc.kill()
        self.proc.wait()
        return pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.running():
            self.proc.kill()
            self.proc.wait()


def fetch(client_ns: str, port: int = WEB_PORT) -> str:
    """One HTTP request to VIP:``port`` over a new connection: the name in the answer."""
    from tests.kernel.netns import in_netns

    def get() -> bytes:
        with socket.create_connection((VIP, port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: demo\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data

    try:
        data = in_netns(client_ns, get)
    except OSError as exc:
        return f"error ({exc.strerror or exc})"
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode().strip() if b" 200 " in head.split(b"\r\n")[0] else "error"


def in_vm(impl: str) -> int:
    from pyalived.lab import Capture, LabError, adverts, wait_for
    from tests.kernel.netns import in_netns, sh
    from tests.kernel.test_lvs_e2e import Topology, _run

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyalived-demo-lvs-") as d:
        workdir = Path(d)
        topo = Topology(workdir)
        webs: list[WebServer] = []
        echoes: list[EchoServer] = []
        capture: Capture | None = None
        try:
            say("Building the network out of namespaces inside the VM:")
            cbr, sbr = topo.bridge("cbr"), topo.bridge("sbr")
            topo.add("client")
            topo.attach("client", "eth0", cbr, CLIENT)
            say(f"  client    {CLIENT} on the client LAN 198.18.0.0/24")
            for i, (role, priority) in enumerate(DIRECTORS, start=1):
                ns = topo.add(role)
                topo.attach(role, "eth0", cbr, f"198.18.0.{10 + i}")
                topo.attach(role, "eth1", sbr, f"198.19.0.{10 + i}")
                sh(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
                say(f"  {role}        director, eth0 198.18.0.{10 + i}, eth1 198.19.0.{10 + i},"
                    f" VRRP priority {priority}, running {impl}")
            for role, ip, weight in REAL_SERVERS:
                topo.add(role)
                topo.attach(role, "eth0", sbr, ip)
                _run("ip", "-n", topo.ns(role), "route", "add", "default", "via", INSIDE_VIP,
                     "dev", "eth0", "onlink")
                web = WebServer(topo, role, ip, workdir)
                web.start()
                webs.append(web)
                echoes.append(EchoServer(topo.ns(role), ip, role))
                say(f"  {role}       real server {ip} (busybox httpd on :80, wrr weight {weight};"
                    f" line echo on :{ECHO_PORT}), default route via {INSIDE_VIP}")
            capture = Capture(cbr, workdir / "client-lan.pcap", iface="br0")
            (workdir / "d1.conf").write_text(director_config("d1", 150))
            say("\nBoth directors run the same keepalived.conf but for router_id and priority"
                f" (d1's, written to {workdir / 'd1.conf'}):")
            text = director_config("d1", 150)
            for line in text[:text.index(f"virtual_server {VIP} {ECHO_PORT}")].splitlines():
                say("    | " + line)
            say(f"    | virtual_server {VIP} {ECHO_PORT} {{ ... }}   (the same, lb_algo rr,"
                " every weight 1)")
            daemons = {role: topo.start_daemon(role, director_config(role, priority), impl=impl)
                       for role, priority in DIRECTORS}
            d1, d2, client = topo.ns("d1"), topo.ns("d2"), topo.ns("client")

            def addresses(ns: str) -> set[str]:
                out = sh(ns, "ip", "-o", "-4", "addr", "show")
                return {line.split()[3].split("/")[0] for line in out.splitlines()}

            def settle(what: str, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
                for role, proc in daemons.items():
                    if not proc.running():
                        raise LabError(f"the daemon on {role} exited\n{topo.logs()}")
                return wait_for(predicate, timeout, interval=0.2, what=what)

            def names_in(ns: str, port: int) -> set[str]:
                table = sh(ns, "ipvsadm", "-Ln")
                return {name for name, ip, _ in REAL_SERVERS
                        if f"{ip}:{port} " in excerpt(table, port)}

            everyone = {name for name, _, _ in REAL_SERVERS}
            say("\nWaiting for the election and for both directors to program IPVS"
                " (the daemons start slowly under emulation)...")
            settle("d1 master, both tables whole",
                   lambda: {VIP, INSIDE_VIP} <= addresses(d1) and VIP not in addresses(d2)
                   and names_in(d1, WEB_PORT) == everyone == names_in(d2, WEB_PORT)
                   and names_in(d1, ECHO_PORT) == everyone, timeout=240)
            say(f"d1 is MASTER: it holds the VIP {VIP} and the inside gateway {INSIDE_VIP};"
                " d2 is BACKUP. Both have the same IPVS table; d1's (ipvsadm -Ln):")
            say(excerpt(sh(d1, "ipvsadm", "-Ln"), WEB_PORT))

            weights = {name: w for name, _, w in REAL_SERVERS}
            n = 60
            say(f"\n1. The client makes {n} requests to http://{VIP}/, each on a new"
                " connection. wrr with weights 3, 2, 1 should give 30, 20 and 10:")
            got = [fetch(client) for _ in range(n)]
            say("    first twelve answers: " + " ".join(got[:12]))
            counts = Counter(got)
            say("    answers per real server: "
                + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
            if dict(counts) != expected_split(weights, n):
                say(f"    (expected {expected_split(weights, n)})")

            say("\n2. rs2's web server dies: its process is killed with SIGKILL.")
            log_mark = len(daemons["d1"].log_text())
            pid = webs[1].kill()
            killed = time.monotonic()
            say(f"    killed busybox httpd, pid {pid}, in rs2's namespace")
            settle("rs2 out of d1's table", lambda: "rs2" not in names_in(d1, WEB_PORT))
            say(f"    d1's TCP_CHECK took rs2 out of VIP:80 {time.monotonic() - killed:.1f} s"
                " later (delay_loop 2, one retry after 1 s). d1's log:")
            for line in lines_about(daemons["d1"].log_text()[log_mark:], REAL_SERVERS[1][1]):
                say("    | " + line)
            say("    d1's table now:")
            say(excerpt(sh(d1, "ipvsadm", "-Ln"), WEB_PORT))
            got = [fetch(client) for _ in range(12)]
            counts = Counter(got)
            say("    12 more requests: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                + " (the remaining weights are 3 and 1)")

            say("\n3. rs2's web server is started again.")
            log_mark = len(daemons["d1"].log_text())
            webs[1].start()
            started = time.monotonic()
            settle("rs2 back in d1's table", lambda: "rs2" in names_in(d1, WEB_PORT))
            say(f"    rs2 is back in VIP:80 {time.monotonic() - started:.1f} s later. d1's log:")
            for line in lines_about(daemons["d1"].log_text()[log_mark:], REAL_SERVERS[1][1]):
                say("    | " + line)
            got = [fetch(client) for _ in range(n)]
            say(f"    {n} requests: "
                + ", ".join(f"{k} {v}" for k, v in sorted(Counter(got).items())))

            say(f"\n4. The client opens one long-lived TCP connection to {VIP}:{ECHO_PORT}"
                " (a line echo) and talks on it every half second.")
            conn = in_netns(client, lambda: socket.create_connection((VIP, ECHO_PORT), 10))
            conn.settimeout(30)
            reader = conn.makefile("rb")

            def talk(i: int) -> str:
                conn.sendall(f"line {i}\n".encode())
                return reader.readline().decode().strip() or "(connection closed)"

            for i in range(1, 7):
                reply = talk(i)
                say(f"    sent 'line {i}', got '{reply}'")
                time.sleep(0.5)
            server = reply.split(":")[0]
            say(f"    The connection is served by {server}. The directors' connection tables"
                " (ipvsadm -Lnc):")
            for role, ns in (("d1", d1), ("d2", d2)):
                rows = [r for r in sh(ns, "ipvsadm", "-Lnc").splitlines()
                        if f":{ECHO_PORT} " in r and CLIENT in r]
                say(f"    {role}: " + ("; ".join(" ".join(r.split()) for r in rows)
                                       or "no entry for the client's connection"))

            say("\n5. The master d1 is cut off both LANs (its bridge ports go down).")
            topo.set_leg(cbr, "d1", "eth0", up=False)
            topo.set_leg(sbr, "d1", "eth1", up=False)
            cut, cut_wall = time.monotonic(), time.time()
            d2_mark = len(daemons["d2"].log_text())

            def exchange(i: int) -> bool:
                sent = time.monotonic()
                try:
                    reply = talk(i)
                except OSError as exc:
                    reply = f"error: {exc.strerror or exc}"
                say(f"    sent 'line {i}', got '{reply}' {time.monotonic() - sent:.1f} s later")
                return reply.startswith(server + ":")

            say("    The client sends its next line at once; while no director answers, its"
                " TCP stack retransmits it.")
            survived = exchange(7)
            settle("d2 holding the VIP and the gateway",
                   lambda: {VIP, INSIDE_VIP} <= addresses(d2), timeout=60)
            say(f"    d2 is MASTER (seen {time.monotonic() - cut:.1f} s after the cut) and holds"
                f" {VIP} and {INSIDE_VIP}. d2's log since the cut:")
            d2_log = daemons["d2"].log_text()
            for line in d2_log[d2_mark:].splitlines():
                if "VI_LVS" in line and "MASTER" in line:
                    say("    | " + line.strip())
            spells = sum(1 for line in d2_log[:d2_mark].splitlines()
                         if "VI_LVS" in line and ("-> MASTER" in line or "Entering MASTER" in line))
            if spells:
                say(f"    (Before the cut d2 had been MASTER {spells} time(s) for a moment: the"
                    " emulated VM, short of CPU, held d1's adverts back past d2's"
                    " Master_Down_Interval, and d1 took over again with its next one.)")
            events = capture.events()
            before = [e.time for e in adverts(events, src="198.18.0.11") if e.time <= cut_wall]
            first = adverts(events, src="198.18.0.12", after=cut_wall)
            if before and first:
                recent = [t for t in before if t > cut_wall - 10]
                gaps = [b - a for a, b in itertools.pairwise(recent)]
                say(f"    On the client LAN: d1's last advert {cut_wall - before[-1]:.2f} s before"
                    f" the cut (its largest gap in the 10 s before: "
                    f"{max(gaps, default=0):.2f} s; advert_int 1), d2's first"
                    f" {first[0].time - before[-1]:.2f} s after that one (Master_Down_Interval"
                    " 3 + (256 - 100)/256 = 3.61 s).")
            for i in range(8, 11):
                if not survived:
                    break
                time.sleep(0.5)
                survived = exchange(i)
            rows = [r for r in sh(d2, "ipvsadm", "-Lnc").splitlines()
                    if f":{ECHO_PORT} " in r and CLIENT in r]
            say("    d2's connection table: " + ("; ".join(" ".join(r.split()) for r in rows)
                                               or "no entry for the client's connection"))
            if survived:
                say("    The connection survived the failover: d1 had synchronised its"
                    " connection table to d2 (lvs_sync_daemon), so d2's IPVS knew where to send"
                    " the client's next segments.")
            else:
                say("    The connection did not survive: d2's IPVS had no entry for it (d1's"
                    " connection table had not been synchronised to d2), so d2's own TCP"
                    " stack answered the client's next segment with a reset. New connections"
                    " are served by d2:")
                got = [fetch(client) for _ in range(6)]
                say("    6 new requests: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(Counter(got).items())))
            reader.close()
            conn.close()
            say("\nCleaning up: stopping daemons and servers, deleting namespaces.")
        finally:
            for web in webs:
                web.stop()
            for echo in echoes:
                echo.stop()
            if capture is not None:
                capture.stop()
            topo.close()
    say(f"Done ({time.monotonic() - began:.0f} s inside the VM).")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--impl", choices=["pyalived", "keepalived"], default="pyalived",
                    help="daemon to run on the directors (default: pyalived)")
    ap.add_argument("--in-vm", action="store_true", help="run the demo here (inside the VM)")
    args = ap.parse_args(argv)
    if args.in_vm:
        from pyalived.lab import LabError

        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            return in_vm(args.impl)
        except LabError as exc:
            say(f"demo failed: {exc}")
            return 1
        except KeyboardInterrupt:
            return 130
    if os.geteuid() != 0:
        print("the demo needs root (it boots a VM with namespaces)", file=sys.stderr)
        return 2
    from tests.kernel import run_vm

    print("Booting the IPVS VM (software emulation: this takes a few minutes)...", flush=True)
    began = time.monotonic()
    rc = run_vm.run(f"python bench/demo_lvs.py --in-vm --impl {args.impl}",
                    timeout=1800)  # a hang guard: 734 s were seen on a loaded host
    print(f"make demo-lvs: {time.monotonic() - began:.0f} s in all, status {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
