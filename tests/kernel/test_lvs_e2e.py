"""End to end LVS-NAT on the real IPVS kernel: a client, directors and real servers.

Theory of operation: each test builds a small routed network out of network
namespaces inside the test VM.  Two bridges (each in a namespace of its own)
make a client-side LAN (198.18.0.0/24) and a server-side LAN (198.19.0.0/24);
a director namespace has one leg on each and forwards between them, the real
servers' default route points back at the director (as LVS-NAT requires: the
replies must cross the director to be translated back to the VIP).  The real
servers are small HTTP servers run as threads of the test process, their
listening sockets opened inside the real server namespaces
(``netns.in_netns``); each answers every request with its own name, so the
client -- sockets opened in the client namespace the same way -- sees which
real server IPVS picked.  Stopping a real server closes its listening socket:
the health checker's TCP connect is then refused, just as for a stopped
daemon.  The director runs the daemon under test (pyalived by default,
keepalived 2.2.7 with ``PYALIVED_E2E_IMPL=keepalived`` as the reference) with
a keepalived.conf, and ``ipvsadm -Ln`` shows what it programmed.

Every namespace carries a prefix made of the process id and a counter, and is
deleted (after killing whatever still runs in it) when the test ends, passed
or failed.
"""

from __future__ import annotations

import http.server
import importlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NoReturn

import pytest

from pyalived.lab import REPO_ROOT, LabError, Proc, daemon_argv, namespace_pids, wait_for
from tests.kernel.netns import enter_netns, in_netns, ipvsadm_table, sh

pytestmark = pytest.mark.kernel

Impl = Literal["pyalived", "keepalived"]
IMPL: Impl = "keepalived" if os.environ.get("PYALIVED_E2E_IMPL") == "keepalived" else "pyalived"

VIP = "198.18.0.100"  # the service address, client side
INSIDE_VIP = "198.19.0.254"  # the real servers' gateway held by a director pair
CLIENT = "198.18.0.200"
RS1, RS2, SORRY = "198.19.0.21", "198.19.0.22", "198.19.0.30"
NAMES = {RS1: "rs1", RS2: "rs2", SORRY: "sorry"}

# Checker timing of the single-director configuration (TCP_CHECK on every real server).
DELAY_LOOP = 1
RETRY = 2
DELAY_BEFORE_RETRY = 1
CONNECT_TIMEOUT = 2
# A failed real server must leave the table within delay_loop * (retry + 1) +
# connect_timeout; the margin covers the table polling interval and the
# emulated VM's scheduling jitter.
CHECKER_BOUND = DELAY_LOOP * (RETRY + 1) + CONNECT_TIMEOUT
POLL_MARGIN = 1.5

# Daemon start-up in the emulated VM (Python imports alone take seconds).
STARTUP_TIMEOUT = 120.0
SETTLE_TIMEOUT = 60.0

_counter = itertools.count()


def _run(*argv: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


# ---------------------------------------------------------------------------
# The daemon under test

# What pyalived's command line imports, eagerly or on the way to running.
_DAEMON_MODULES = (
    "trio",
    "pyalived.cli",
    "pyalived.config",
    "pyalived.daemon",
    "pyalived.dump",
    "pyalived.checkers.service",
    "pyalived.metrics",
    "pyalived.reload",
    "pyalived.sdnotify",
    "pyalived.ipvs.netlink",
    "pyalived.vrrp.net",
    "pyalived.vrrp.netlink",
    "pyalived.scripts",
    "pyalived.vrrp.wakeup",
)


class ForkedDaemon:
    """pyalived's command line, run in a forked child of the test process inside a namespace.

    In the emulated VM a fresh interpreter needs minutes to import pyalived's
    dependencies; a child forked from the test process, which has imported
    them once, starts at once.  The child runs ``pyalived.cli.main`` with the
    same arguments as ``python -m pyalived`` and never returns into pytest.
    """

    def __init__(self, name: str, ns: str, argv: list[str], log_path: Path) -> None:
        for module in _DAEMON_MODULES:
            try:
                importlib.import_module(module)
            except ImportError:  # a lazily imported module may move; the child imports it then
                pass
        self.name = name
        self.log_path = log_path
        self.returncode: int | None = None
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            self._child(ns, argv, log_fd)
        os.close(log_fd)
        self.pid = pid

    @staticmethod
    def _child(ns: str, argv: list[str], log_fd: int) -> NoReturn:
        code = 70
        try:
            enter_netns(ns)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            # Inherited descriptors must go: a copy of a real server's
            # listening socket would keep it accepting after the test closed it.
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            sys.stdin = open(0, closefd=False)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            from pyalived.cli import main

            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def running(self) -> bool:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode is None

    def stop(self, timeout: float = 10.0) -> int | None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if self.running():
                os.kill(self.pid, sig)
            deadline = time.monotonic() + wait
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.05)
        return self.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


Daemon = Proc | ForkedDaemon


def _returncode(proc: Daemon) -> int | None:
    return proc.returncode if isinstance(proc, ForkedDaemon) else proc.popen.returncode


# ---------------------------------------------------------------------------
# Topology


class Topology:
    """Namespaces, bridges and veth legs; ``close`` removes all of it."""

    def __init__(self, workdir: Path) -> None:
        self.prefix = f"pye{os.getpid()}x{next(_counter)}-"
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.procs: list[Daemon] = []
        self.servers: list[NamedServer] = []

    def ns(self, role: str) -> str:
        return self.prefix + role

    def add(self, role: str) -> str:
        name = self.ns(role)
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def bridge(self, role: str) -> str:
        br = self.add(role)
        _run("ip", "-n", br, "link", "add", "br0", "type", "bridge",
             "forward_delay", "0", "stp_state", "0")  # fmt: skip
        _run("ip", "-n", br, "link", "set", "br0", "up")
        return br

    def attach(self, role: str, ifname: str, bridge: str, address: str) -> None:
        """Give namespace ``role`` an interface ``ifname`` on ``bridge`` with ``address``/24."""
        node, leg = self.ns(role), self.leg(role, ifname)
        _run("ip", "-n", bridge, "link", "add", leg, "type", "veth",
             "peer", "name", ifname, "netns", node)  # fmt: skip
        _run("ip", "-n", bridge, "link", "set", leg, "master", "br0", "up")
        _run("ip", "-n", node, "link", "set", ifname, "up")
        _run("ip", "-n", node, "addr", "add", f"{address}/24", "dev", ifname)

    @staticmethod
    def leg(role: str, ifname: str) -> str:
        return f"{role}-{ifname}"[:15]

    def set_leg(self, bridge: str, role: str, ifname: str, up: bool) -> None:
        _run("ip", "-n", bridge, "link", "set", self.leg(role, ifname), "up" if up else "down")

    def serve(self, role: str, ip: str, port: int, name: str) -> NamedServer:
        server = NamedServer(self.ns(role), ip, port, name)
        self.servers.append(server)
        return server

    def start_daemon(self, role: str, config: str, impl: Impl = IMPL) -> Daemon:
        conf = self.workdir / f"{role}.conf"
        conf.write_text(config)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        tag = f"{role}-{impl}-{next(_counter)}"
        argv = daemon_argv(impl, conf, self.workdir / tag)
        log = self.workdir / f"{tag}.log"
        proc: Daemon
        if impl == "pyalived":
            assert argv[1:3] == ["-m", "pyalived"], argv
            proc = ForkedDaemon(tag, self.ns(role), argv[3:], log)
        else:
            proc = Proc(tag, self.ns(role), argv, log, env=env, cwd=self.workdir)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_text()[-3000:]}" for p in self.procs)

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for proc in self.procs:
            try:
                proc.stop(15.0)
            except Exception:  # teardown must go on
                pass
        for name in reversed(self.namespaces):
            for pid in namespace_pids(name):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.namespaces.clear()


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pyalived-e2e-") as d:
        yield Path(d)


@contextmanager
def built(prefix: str, directors: int) -> Iterator[Topology]:
    """A topology in its own scratch directory, torn down however the test ends."""
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        topo = _build(Path(d), directors=directors)
        try:
            yield topo
        finally:
            topo.close()


def _build(workdir: Path, directors: int) -> Topology:
    topo = Topology(workdir)
    try:
        cbr, sbr = topo.bridge("cbr"), topo.bridge("sbr")
        topo.add("client")
        topo.attach("client", "eth0", cbr, CLIENT)
        for i in range(1, directors + 1):
            d = topo.add(f"d{i}")
            topo.attach(f"d{i}", "eth0", cbr, f"198.18.0.{10 + i}")
            topo.attach(f"d{i}", "eth1", sbr, f"198.19.0.{10 + i}")
            sh(d, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        gateway = "198.19.0.11" if directors == 1 else INSIDE_VIP
        for role, ip in (("rs1", RS1), ("rs2", RS2), ("sorry", SORRY)):
            topo.add(role)
            topo.attach(role, "eth0", sbr, ip)
            # With a director pair the gateway exists only on the master:
            # "onlink" lets the route be added before any director holds it.
            _run("ip", "-n", topo.ns(role), "route", "add", "default", "via", gateway,
                 "dev", "eth0", "onlink")  # fmt: skip
    except BaseException:
        topo.close()
        raise
    return topo


# ---------------------------------------------------------------------------
# Real servers and the client


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _Server)
        body = f"{server.name}\n".encode()
        code = 404 if self.path in server.failing else 200
        server.requests.append((time.monotonic(), self.path, code))
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    name = ""
    failing: frozenset[str] = frozenset()  # paths answered with 404
    requests: list[tuple[float, str, int]]  # (time, path, status) of every request


class NamedServer:
    """An HTTP server answering its name, listening inside a namespace; restartable.

    ``requests`` logs every request; paths in ``failing`` get a 404.
    """

    def __init__(self, ns: str, ip: str, port: int, name: str) -> None:
        self.ns, self.ip, self.port, self.name = ns, ip, port, name
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[tuple[float, str, int]] = []

    def fail(self, *paths: str) -> None:
        assert self._server is not None
        self._server.failing = frozenset(paths)

    def start(self) -> NamedServer:
        assert self._server is None
        server = in_netns(self.ns, lambda: _Server((self.ip, self.port), _Handler))
        server.name = self.name
        server.requests = self.requests
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)  # fmt: skip
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(10)
        self._server = self._thread = None


def fetch(ns: str, ip: str = VIP, port: int = 80, timeout: float = 5.0) -> str | None:
    """One GET over a fresh connection from namespace ``ns``: the answering server's name."""

    def get() -> bytes:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: lvs\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data

    try:
        data = in_netns(ns, get)
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        return None
    return body.decode().strip()


def fetch_many(ns: str, count: int, port: int = 80) -> list[str | None]:
    return [fetch(ns, port=port) for _ in range(count)]


def destinations(ns: str, service: str) -> dict[str, int]:
    """Destinations of ``service`` ("TCP VIP:PORT") in ``ipvsadm -Ln``: address -> weight."""
    for line, dests in ipvsadm_table(ns).items():
        if line.startswith(service + " "):
            return {d.split()[1].rsplit(":", 1)[0]: int(d.split()[3]) for d in dests}
    return {}


def dest_rows(ns: str, service: str) -> set[tuple[str, str, int]]:
    """(address:port, forwarding, weight) of each destination of ``service`` ("TCP VIP:80 rr")."""
    return {
        (d.split()[1], d.split()[2], int(d.split()[3]))
        for d in ipvsadm_table(ns).get(service, frozenset())
    }


def connections(ns: str, service: str) -> int:
    """Connections scheduled so far by ``service`` ("TCP VIP:80"), from ``ipvsadm -Ln --stats``."""
    for line in sh(ns, "ipvsadm", "-Ln", "--stats").splitlines():
        fields = line.split()
        if " ".join(fields[:2]) == service:
            return int(fields[2])
    return 0


def settle(topo: Topology, what: str, predicate: Callable[[], Any],
           timeout: float = SETTLE_TIMEOUT) -> Any:  # fmt: skip
    for proc in topo.procs:
        if not proc.running():
            raise AssertionError(f"{proc.name} exited ({_returncode(proc)})\n{topo.logs()}")
    try:
        return wait_for(predicate, timeout, interval=0.2, what=what)
    except LabError as exc:
        raise AssertionError(f"{exc}\n{topo.logs()}") from None


# ---------------------------------------------------------------------------
# Configurations


def _timing(indent: str) -> str:
    lines = (
        f"connect_timeout {CONNECT_TIMEOUT}",
        f"retry {RETRY}",
        f"delay_before_retry {DELAY_BEFORE_RETRY}",
    )
    return "".join(f"\n{indent}{line}" for line in lines)


def _tcp_check() -> str:
    # One keyword a line: neither parser takes several keywords on one line.
    return f"TCP_CHECK {{{_timing(' ' * 12)}\n        }}"


def _http_check() -> str:
    url = "url {\n                path /\n                status_code 200\n            }"
    return f"HTTP_GET {{\n            {url}{_timing(' ' * 12)}\n        }}"


def single_director_config() -> str:
    """rr on VIP:80, wrr 3:1 on VIP:8080, quorum 2 with a sorry server on VIP:81."""
    return f"""
global_defs {{
    router_id d1
}}

virtual_server {VIP} 80 {{
    delay_loop {DELAY_LOOP}
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server {RS1} 80 {{
        weight 1
        {_tcp_check()}
    }}
    real_server {RS2} 80 {{
        weight 1
        {_tcp_check()}
    }}
}}

virtual_server {VIP} 8080 {{
    delay_loop {DELAY_LOOP}
    lb_algo wrr
    lb_kind NAT
    protocol TCP
    real_server {RS1} 80 {{
        weight 3
        {_tcp_check()}
    }}
    real_server {RS2} 80 {{
        weight 1
        {_tcp_check()}
    }}
}}

virtual_server {VIP} 81 {{
    delay_loop {DELAY_LOOP}
    lb_algo rr
    lb_kind NAT
    protocol TCP
    quorum 2
    sorry_server {SORRY} 80
    real_server {RS1} 80 {{
        weight 1
        {_http_check()}
    }}
    real_server {RS2} 8081 {{
        weight 1
        {_http_check()}
    }}
}}
"""


def pair_config(router_id: str, priority: int) -> str:
    """One VRRP instance holding the client-side VIP and the inside gateway, plus rr on VIP:80."""
    return f"""
global_defs {{
    router_id {router_id}
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

virtual_server {VIP} 80 {{
    delay_loop {DELAY_LOOP}
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server {RS1} 80 {{
        weight 1
        {_tcp_check()}
    }}
    real_server {RS2} 80 {{
        weight 1
        {_tcp_check()}
    }}
}}
"""


# ---------------------------------------------------------------------------
# One director: rr, wrr, checker removal and return, quorum and sorry server


@pytest.fixture(scope="module")
def director() -> Iterator[Topology]:
    with tempfile.TemporaryDirectory(prefix="pyalived-e2e-") as d:
        topo = _build(Path(d), directors=1)
        try:
            rs1 = topo.serve("rs1", RS1, 80, "rs1").start()
            topo.serve("rs2", RS2, 80, "rs2").start()
            topo.serve("sorry", SORRY, 80, "sorry").start()
            topo.serve("rs2", RS2, 8081, "rs2-8081")  # not started: quorum of VIP:81 unmet
            del rs1
            _run("ip", "-n", topo.ns("d1"), "addr", "add", f"{VIP}/32", "dev", "eth0")
            topo.start_daemon("d1", single_director_config())
            settle(topo, "both real servers in VIP:80 and the sorry server in VIP:81",
                   lambda: destinations(topo.ns("d1"), f"TCP {VIP}:80") == {RS1: 1, RS2: 1}
                   and SORRY in destinations(topo.ns("d1"), f"TCP {VIP}:81"),
                   timeout=STARTUP_TIMEOUT)  # fmt: skip
            yield topo
        finally:
            topo.close()


def test_e2e_nat_table(director: Topology) -> None:
    d1 = director.ns("d1")
    assert dest_rows(d1, f"TCP {VIP}:80 rr") == {(f"{RS1}:80", "Masq", 1), (f"{RS2}:80", "Masq", 1)}
    assert dest_rows(d1, f"TCP {VIP}:8080 wrr") == {
        (f"{RS1}:80", "Masq", 3),
        (f"{RS2}:80", "Masq", 1),
    }
    assert dest_rows(d1, f"TCP {VIP}:81 rr") == {(f"{SORRY}:80", "Masq", 1)}


def test_e2e_rr_alternates(director: Topology) -> None:
    got = fetch_many(director.ns("client"), 10)
    assert None not in got, got
    assert Counter(got) == {"rs1": 5, "rs2": 5}, got
    assert all(a != b for a, b in itertools.pairwise(got)), got


def test_e2e_wrr_splits_30_10(director: Topology) -> None:
    got = fetch_many(director.ns("client"), 40, port=8080)
    assert Counter(got) == {"rs1": 30, "rs2": 10}, got


def test_e2e_checker_removes_and_restores(director: Topology) -> None:
    d1, client = director.ns("d1"), director.ns("client")
    rs2 = next(s for s in director.servers if s.name == "rs2")
    rs2.stop()
    stopped = time.monotonic()
    try:
        settle(director, "rs2 out of VIP:80",
               lambda: RS2 not in destinations(d1, f"TCP {VIP}:80"),
               timeout=CHECKER_BOUND * 4)  # fmt: skip
        elapsed = time.monotonic() - stopped
        print(f"rs2 removed {elapsed:.2f} s after it stopped (bound {CHECKER_BOUND} s)")
        assert elapsed <= CHECKER_BOUND + POLL_MARGIN, elapsed
        got = fetch_many(client, 8)
        assert got == ["rs1"] * 8, got
    finally:
        rs2.start()
    settle(
        director,
        "rs2 back in VIP:80",
        lambda: destinations(d1, f"TCP {VIP}:80") == {RS1: 1, RS2: 1},
    )
    got = fetch_many(client, 10)
    assert Counter(got) == {"rs1": 5, "rs2": 5}, got


def test_e2e_quorum_lost_serves_sorry(director: Topology) -> None:
    d1, client = director.ns("d1"), director.ns("client")
    # One of two real servers up with quorum 2: only the sorry server serves.
    assert set(destinations(d1, f"TCP {VIP}:81")) == {SORRY}
    assert fetch_many(client, 4, port=81) == ["sorry"] * 4
    # The second one starts: quorum is met again and the sorry server goes.
    extra = next(s for s in director.servers if s.name == "rs2-8081")
    extra.start()
    try:
        settle(
            director,
            "quorum of VIP:81 met",
            lambda: set(destinations(d1, f"TCP {VIP}:81")) == {RS1, RS2},
        )
        got = fetch_many(client, 4, port=81)
        assert Counter(got) == {"rs1": 2, "rs2-8081": 2}, got
    finally:
        extra.stop()
    settle(
        director,
        "sorry server back in VIP:81",
        lambda: set(destinations(d1, f"TCP {VIP}:81")) == {SORRY},
    )
    assert fetch(client, port=81) == "sorry"


# ---------------------------------------------------------------------------
# A director pair: VRRP and virtual_server in one configuration


@pytest.fixture
def pair(workdir: Path) -> Iterator[Topology]:
    topo = _build(workdir, directors=2)
    try:
        yield topo
    finally:
        topo.close()


def _addresses(ns: str) -> set[str]:
    out = sh(ns, "ip", "-o", "-4", "addr", "show")
    return {line.split()[3].split("/")[0] for line in out.splitlines()}


def test_e2e_director_pair_failover(pair: Topology) -> None:
    d1, d2, client = pair.ns("d1"), pair.ns("d2"), pair.ns("client")
    pair.serve("rs1", RS1, 80, "rs1").start()
    pair.serve("rs2", RS2, 80, "rs2").start()
    pair.start_daemon("d1", pair_config("d1", 150))
    pair.start_daemon("d2", pair_config("d2", 100))

    def holders() -> set[str]:
        return {role for role, ns in (("d1", d1), ("d2", d2)) if {VIP, INSIDE_VIP} & _addresses(ns)}

    settle(pair, "d1 master with both VIPs, both directors programmed",
           lambda: holders() == {"d1"} and {VIP, INSIDE_VIP} <= _addresses(d1)
           and destinations(d1, f"TCP {VIP}:80") == {RS1: 1, RS2: 1}
           and destinations(d2, f"TCP {VIP}:80") == {RS1: 1, RS2: 1},
           timeout=STARTUP_TIMEOUT)  # fmt: skip
    got = settle(pair, "the service through d1", lambda: _all_served(client))
    assert Counter(got) == {"rs1": 2, "rs2": 2}, got

    # The master is cut off both LANs: the backup takes the VIPs and the service.
    pair.set_leg(pair.ns("cbr"), "d1", "eth0", False)
    pair.set_leg(pair.ns("sbr"), "d1", "eth1", False)
    settle(pair, "d2 holding both VIPs",
           lambda: {VIP, INSIDE_VIP} <= _addresses(d2))  # fmt: skip
    got = settle(pair, "the service through d2", lambda: _all_served(client))
    assert Counter(got) == {"rs1": 2, "rs2": 2}, got
    # The connections went through d2's IPVS table (its counters are summed
    # by the kernel's estimator every few seconds, hence the wait).
    settle(pair, "connections counted by d2", lambda: connections(d2, f"TCP {VIP}:80") >= 4)


# misc_dynamic: (real server, configured weight, the script's exit status).
MISC_SERVERS = (("198.19.0.41", 1, 12), ("198.19.0.42", 7, 12), ("198.19.0.43", 7, 0),
                ("198.19.0.44", 7, 2), ("198.19.0.45", 7, 1))  # fmt: skip


def misc_dynamic_config() -> str:
    servers = "".join(
        f"""
    real_server {ip} 80 {{
        weight {weight}
        MISC_CHECK {{
            misc_path "/bin/sh -c 'exit {status}'"
            misc_dynamic
        }}
    }}"""
        for ip, weight, status in MISC_SERVERS
    )
    return f"""
virtual_server {VIP} 80 {{
    delay_loop {DELAY_LOOP}
    lb_algo wrr
    lb_kind NAT
    protocol TCP{servers}
}}
"""


@pytest.mark.interop
def test_misc_dynamic_weights_agree_with_keepalived(workdir: Path) -> None:
    """Exit status s in 2..255 sets the weight to s - 2, 0 keeps it, 1 fails: both daemons."""
    topo = Topology(workdir)
    try:
        for impl in ("keepalived", "pyalived"):
            topo.add(impl)
            topo.start_daemon(impl, misc_dynamic_config(), impl=impl)
        # keepalived 2.2.7's behaviour, read off its table (its man page says
        # both "exit status 10 sets the weight to 10" and "two less than the
        # exit status"); the server whose script exits 1 is never added.
        expected = {"198.19.0.41": 10, "198.19.0.42": 10, "198.19.0.43": 7, "198.19.0.44": 0}
        tables = {}
        for impl in ("keepalived", "pyalived"):
            ns = topo.ns(impl)

            def weights(ns: str = ns) -> dict[str, int]:
                return destinations(ns, f"TCP {VIP}:80")

            settle(topo, f"{impl}: the misc_dynamic weights",
                   lambda: weights() == expected, timeout=STARTUP_TIMEOUT)  # fmt: skip
            tables[impl] = weights()
        assert tables["pyalived"] == tables["keepalived"] == expected
    finally:
        topo.close()


def _http_get(*paths: str) -> str:
    urls = "".join(
        f"""
            url {{
                path {path}
                status_code 200
            }}"""
        for path in paths
    )
    return f"""HTTP_GET {{{urls}
            connect_timeout 2
            retry 1
            delay_before_retry 1
        }}"""


def http_urls_config() -> str:
    return f"""
virtual_server {VIP} 80 {{
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP
    real_server 127.0.0.1 8080 {{
        weight 1
        {_http_get("/a", "/b", "/c")}
    }}
    real_server 127.0.0.1 8081 {{
        weight 1
        {_http_get("/x")}
    }}
}}
"""


Requests = list[tuple[float, str, int]]


def _since_last_404(requests: Requests) -> Requests:
    codes = [code for _, _, code in requests]
    return requests[max(i for i, code in enumerate(codes) if code == 404) + 1:]


def _url_pattern(requests: Requests) -> tuple[str, list[str]]:
    """The three paths before the first 404, and from it on: the failing run, then six more."""
    codes = [code for _, _, code in requests]
    first = codes.index(404)
    before = "".join(path[1:] for _, path, _ in requests[first - 3:first])
    after = _since_last_404(requests)
    failing = {f"{path} {code}" for _, path, code in requests[first:len(requests) - len(after)]}
    return before, sorted(failing) + [f"{path} {code}" for _, path, code in after[:6]]


@pytest.mark.interop
def test_http_urls_checked_in_turn_like_keepalived(workdir: Path) -> None:
    """One URL per delay_loop; a failing URL is checked until it passes, then a
    pass over every URL (/a, /b, /c; or /x twice) brings the real server back:
    keepalived and pyalived alike, on the wire and in the IPVS table."""
    impls: tuple[Impl, Impl] = ("keepalived", "pyalived")
    topo = Topology(workdir)
    try:
        three: dict[str, NamedServer] = {}  # /a /b /c on port 8080
        one: dict[str, NamedServer] = {}  # /x on port 8081
        for impl in impls:
            topo.add(impl)
            three[impl] = topo.serve(impl, "127.0.0.1", 8080, impl).start()
            one[impl] = topo.serve(impl, "127.0.0.1", 8081, impl).start()
            topo.start_daemon(impl, http_urls_config(), impl=impl)

        def count(server: NamedServer, code: int | None = None) -> int:
            return sum(1 for _, _, c in server.requests if code is None or c == code)

        def in_table(impl: str) -> bool:  # the /x real server
            table = ipvsadm_table(topo.ns(impl))
            return any("127.0.0.1:8081 " in line for dests in table.values() for line in dests)

        for impl in impls:
            settle(topo, f"{impl}: six checks and /x in the table",
                   lambda impl=impl: count(three[impl]) >= 6 and in_table(impl),
                   timeout=STARTUP_TIMEOUT)  # fmt: skip
            three[impl].fail("/b")
            one[impl].fail("/x")
        for impl in impls:
            # /b fails, its retry fails (down), then it is checked twice more
            settle(topo, f"{impl}: /b and /x failing", lambda impl=impl: (
                count(three[impl], 404) >= 4 and not in_table(impl)))  # fmt: skip
            three[impl].fail()
            one[impl].fail()
        # Each director's table is watched by a thread of its own, so a slow
        # ipvsadm on one (the VM is emulated) does not delay seeing the other's.
        # The real server was still out at some moment of the last read that
        # missed it (which began at ``absent``), and back by the end of the
        # first read that showed it: it came back within (absent, end].
        back: dict[str, tuple[float, float]] = {}

        def watch(impl: str) -> None:
            deadline = time.monotonic() + SETTLE_TIMEOUT
            absent = time.monotonic()
            while time.monotonic() < deadline:
                start = time.monotonic()
                if in_table(impl):
                    back[impl] = (absent, time.monotonic())
                    return
                absent = start
                time.sleep(0.02)

        watchers = [threading.Thread(target=watch, args=(impl,)) for impl in impls]
        for w in watchers:
            w.start()
        for w in watchers:
            w.join()
        assert len(back) == len(impls), (back, topo.logs())
        for impl in impls:
            settle(topo, f"{impl}: six checks after the last 404",
                   lambda impl=impl: len(_since_last_404(three[impl].requests)) >= 6)  # fmt: skip
        patterns = {impl: _url_pattern(three[impl].requests) for impl in impls}
        # Before the failure: one URL per check, in turn (the 404 came on /b).
        assert {before for before, _ in patterns.values()} == {"bca"}, patterns
        expected = ["/b 404", "/b 200", "/a 200", "/b 200", "/c 200", "/a 200", "/b 200"]
        assert patterns["keepalived"][1] == patterns["pyalived"][1] == expected, patterns
        # The single URL came back into the table with its second success: no
        # more than two before the last read that missed it began, two by the
        # end of the read that saw it.
        # pyalived comes back with its second success, always.  keepalived 2.2.7
        # comes back with its second or third, depending on where in its check
        # cycle the failure stopped, and in the emulated VM under load was seen
        # to take five: its own bound is not this test's business, only that it
        # needs two.
        most = {"pyalived": 2, "keepalived": None}
        for impl in impls:
            since = [t for t, _, _ in _since_last_404(one[impl].requests)]
            absent, end = back[impl]
            before_start, before_end = sum(t < absent for t in since), sum(t < end for t in since)
            bound = most[impl]
            assert (bound is None or before_start <= bound) and before_end >= 2, (
                impl, before_start, before_end, since, back[impl])
    finally:
        topo.close()


def _all_served(client: str) -> list[str] | None:
    got = fetch_many(client, 4)
    return None if None in got else [g for g in got if g is not None]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, *sys.argv[1:]]))
