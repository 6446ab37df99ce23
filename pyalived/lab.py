"""Throwaway network-namespace labs for the demo, the benchmark and the tests.

Theory of operation: a ``Lab`` is one simulated Ethernet LAN.  A *bridge
namespace* holds the bridge ``br0``; every router or client is a namespace of
its own whose ``eth0`` is one end of a veth pair, the other end (its *leg*)
being enslaved to ``br0``.  The pair is created from inside the bridge
namespace, so no interface ever appears in the host's namespace, and every
name carries a prefix made of the creating process id, a per-process counter
and a random token: parallel or leftover labs never collide.  Addresses come
only from 198.18.0.0/15 (RFC 2544's benchmarking range) and exist only inside
the lab's namespaces.  ``Lab`` is a context manager: leaving it, normally or
through an exception, stops every process started through it, kills anything
else still running in its namespaces and deletes the namespaces (which
destroys their interfaces).  ``sweep_stale_labs`` removes the namespaces of
labs whose creating process died without cleaning up.

Failures are injected the way real ones look to a router: ``cut`` sets the
router's leg down on the bridge (its ``eth0`` loses carrier and the LAN stops
hearing it), ``set_link`` flips any interface inside a namespace, and
``Proc.terminate``/``Proc.kill`` send SIGTERM/SIGKILL to a daemon.

Observation happens on the bridge: ``Capture`` runs ``tcpdump -w`` on ``br0``
(packet-buffered, so the file can be read while the capture runs) and
``parse_pcap`` turns the file into ``Event`` records -- kernel timestamp,
source MAC and IP, destination, and a kind: ``AdvertKind`` for a VRRPv2
advertisement (plain, or behind an IPsec AH header as RFC 2338 §5.3.6.3
authentication produces), ``GarpKind`` for a gratuitous ARP (an ARP whose
sender and target protocol addresses are equal, RFC 3768 §6.4.1), ``ArpKind``
for any other ARP request or reply.  The parser
is written here, independently of the daemon's codec, so that tests do not
judge the daemon with its own code.

``VrrpSpec``/``render_config`` write keepalived.conf text, understood both by
keepalived 2.2.7 and by pyalived, and ``Lab.start_daemon`` runs either
implementation in a router namespace with its own pid files and log.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, TypeVar

T = TypeVar("T")

Impl = Literal["pyalived", "keepalived"]

LAB_NAME_PREFIX = "pal"
BRIDGE = "br0"
LAN_PREFIX = "198.18.0"
LAN_PREFIXLEN = 24
VIP = "198.18.0.100"
KEEPALIVED = "/usr/sbin/keepalived"
REPO_ROOT = Path(__file__).resolve().parent.parent

_counter = itertools.count(1)

# ICMP echo request/reply over a raw socket (RFC 792); exit status 0 on a reply.
_PING_SCRIPT = """
import os, select, socket, struct, sys, time
dst, wait = sys.argv[1], float(sys.argv[2])
ident = os.getpid() & 0xFFFF
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
body = struct.pack('!HH', ident, 1) + b'pyalived-lab'
pkt = struct.pack('!BBH', 8, 0, 0) + body
pkt = struct.pack('!BBH', 8, 0, csum(pkt)) + body
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.sendto(pkt, (dst, 0))
end = time.monotonic() + wait
while (left := end - time.monotonic()) > 0:
    if not select.select([s], [], [], left)[0]:
        break
    data, addr = s.recvfrom(2048)
    icmp = data[(data[0] & 15) * 4:]
    if addr[0] == dst and icmp[0] == 0 and struct.unpack('!H', icmp[4:6])[0] == ident:
        sys.exit(0)
sys.exit(1)
"""


class LabError(RuntimeError):
    """A lab command failed or a wait timed out."""


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; raise ``LabError`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def namespace_pids(ns: str) -> list[int]:
    """Process ids running in namespace ``ns`` (empty if it does not exist)."""
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _kill_namespace_processes(ns: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = namespace_pids(ns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3.0
        while namespace_pids(ns) and time.monotonic() < deadline:
            time.sleep(0.05)


def _delete_namespace(ns: str) -> None:
    _kill_namespace_processes(ns)
    _run(["ip", "netns", "delete", ns], check=False)


def list_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sweep_stale_labs() -> list[str]:
    """Delete lab namespaces whose creating process no longer exists; return their names."""
    removed = []
    for ns in list_namespaces():
        if not ns.startswith(LAB_NAME_PREFIX):
            continue
        owner = ns[len(LAB_NAME_PREFIX) :].split("-", 1)[0]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        _delete_namespace(ns)
        removed.append(ns)
    return removed


# ---------------------------------------------------------------------------
# Processes


class Proc:
    """A process started in a namespace, its output going to a log file."""

    def __init__(self, name: str, ns: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.ns = ns
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")
        self.started_at = time.time()
        # ``ip netns exec`` enters the namespace and execs: the pid is the program's.
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            self.popen.send_signal(sig)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def wait(self, timeout: float = 10.0) -> int:
        try:
            code = self.popen.wait(timeout)
        finally:
            if not self._log.closed and self.popen.poll() is not None:
                self._log.close()
        return code

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        self.terminate()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            try:
                return self.wait(5.0)
            except subprocess.TimeoutExpired:
                return None

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


# ---------------------------------------------------------------------------
# Capture parsing


@dataclass(frozen=True)
class AdvertKind:
    """A VRRPv2 advertisement (RFC 3768 §5.1)."""

    vrid: int
    priority: int
    auth_type: int
    advert_int: int
    addresses: tuple[str, ...]
    auth_data: bytes = b""
    ah: bool = False  # carried behind an IPsec AH header


@dataclass(frozen=True)
class GarpKind:
    """A gratuitous ARP announcing ``ip``."""

    ip: str
    op: int = 1


@dataclass(frozen=True)
class ArpKind:
    """Any other ARP packet (RFC 826): a request or a reply."""

    op: int  # 1 request, 2 reply
    sender_mac: str
    sender_ip: str
    target_ip: str


@dataclass(frozen=True)
class Event:
    time: float
    src_mac: str
    dst_mac: str
    src: str
    dst: str
    kind: AdvertKind | GarpKind | ArpKind

    @property
    def is_advert(self) -> bool:
        return isinstance(self.kind, AdvertKind)

    @property
    def is_garp(self) -> bool:
        return isinstance(self.kind, GarpKind)

    @property
    def priority(self) -> int | None:
        return self.kind.priority if isinstance(self.kind, AdvertKind) else None


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def _parse_frame(ts: float, frame: bytes) -> Event | None:
    if len(frame) < 14:
        return None
    dst_mac, src_mac = _mac(frame[0:6]), _mac(frame[6:12])
    (ethertype,) = struct.unpack("!H", frame[12:14])
    payload = frame[14:]
    if ethertype == 0x0806 and len(payload) >= 28:
        op = struct.unpack("!H", payload[6:8])[0]
        sender_ip, target_ip = payload[14:18], payload[24:28]
        if sender_ip != target_ip:
            arp = ArpKind(op, _mac(payload[8:14]), _ip(sender_ip), _ip(target_ip))
            return Event(ts, src_mac, dst_mac, arp.sender_ip, arp.target_ip, arp)
        ip = _ip(sender_ip)
        return Event(ts, src_mac, dst_mac, ip, ip, GarpKind(ip, op))
    if ethertype != 0x0800 or len(payload) < 20:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto = payload[9]
    src, dst = _ip(payload[12:16]), _ip(payload[16:20])
    body = payload[ihl:]
    ah = False
    if proto == 51:
        if len(body) < 2 or body[0] != 112:
            return None
        body = body[(body[1] + 2) * 4 :]
        ah = True
    elif proto != 112:
        return None
    if len(body) < 8 or body[0] >> 4 != 2:
        return None
    count = body[3]
    addrs = tuple(_ip(body[8 + 4 * i : 12 + 4 * i]) for i in range(count))
    auth_data = body[8 + 4 * count : 16 + 4 * count]
    kind = AdvertKind(body[1], body[2], body[4], body[5], addrs, auth_data, ah)
    return Event(ts, src_mac, dst_mac, src, dst, kind)


def parse_pcap(data: bytes) -> list[Event]:
    """VRRP adverts and gratuitous ARPs of a pcap (Ethernet) file; a torn last record is ignored."""
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("not a pcap file")
    nanos = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    (linktype,) = struct.unpack(endian + "I", data[20:24])
    if linktype != 1:
        raise ValueError(f"unsupported link type {linktype}")
    events = []
    offset = 24
    rec = struct.Struct(endian + "IIII")
    while offset + 16 <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, offset)
        offset += 16
        if offset + incl > len(data):
            break
        ts = sec + frac / (1e9 if nanos else 1e6)
        event = _parse_frame(ts, data[offset : offset + incl])
        offset += incl
        if event is not None:
            events.append(event)
    return events


class Capture:
    """tcpdump on the lab bridge, readable while it runs."""

    def __init__(self, ns: str, path: Path, iface: str = BRIDGE) -> None:
        self.path = path
        self.ns = ns
        self._stderr = path.with_suffix(".log")
        self._err: IO[bytes] = open(self._stderr, "wb")
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-nn", "-U", "-Z", "root",
             "-s", "2048", "-w", str(path), "ip proto 112 or ip proto 51 or arp"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err,
        )
        try:
            wait_for(self._listening, 15.0, what="tcpdump to start")
        except BaseException:
            self.stop()
            raise

    def _listening(self) -> bool:
        if self.popen.poll() is not None:
            raise LabError(f"tcpdump exited: {self._stderr.read_text(errors='replace')}")
        return "listening on" in self._stderr.read_text(errors="replace")

    def events(self) -> list[Event]:
        try:
            return parse_pcap(self.path.read_bytes())
        except FileNotFoundError:
            return []

    def wait_for(
        self, predicate: Callable[[list[Event]], T | None], timeout: float, what: str = "packets"
    ) -> T:
        """Poll the capture until ``predicate(events)`` is truthy; return its value."""
        return wait_for(lambda: predicate(self.events()), timeout, what=what, interval=0.1)

    def stop(self) -> list[Event]:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if not self._err.closed:
            self._err.close()
        return self.events()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def adverts(events: Iterable[Event], src: str | None = None, vrid: int | None = None,
            after: float = 0.0) -> list[Event]:
    """The adverts among ``events``, optionally from ``src``/for ``vrid``/later than ``after``."""
    return [
        e for e in events
        if isinstance(e.kind, AdvertKind) and e.time > after
        and (src is None or e.src == src) and (vrid is None or e.kind.vrid == vrid)
    ]


def arp_replies(events: Iterable[Event], ip: str | None = None) -> list[Event]:
    """ARP replies, optionally only those answering for ``ip``."""
    return [
        e for e in events
        if isinstance(e.kind, ArpKind) and e.kind.op == 2
        and (ip is None or e.kind.sender_ip == ip)
    ]


def garps(events: Iterable[Event], ip: str | None = None, after: float = 0.0) -> list[Event]:
    return [
        e for e in events
        if isinstance(e.kind, GarpKind) and e.time > after and (ip is None or e.kind.ip == ip)
    ]


# ---------------------------------------------------------------------------
# Configuration text


@dataclass(frozen=True)
class VrrpSpec:
    """One vrrp_instance, rendered in keepalived.conf syntax."""

    priority: int
    vrid: int = 51
    name: str = "VI_1"
    interface: str = "eth0"
    state: str = "BACKUP"
    advert_int: float = 1
    vips: tuple[str, ...] = (f"{VIP}/{LAN_PREFIXLEN}",)
    nopreempt: bool = False
    auth_type: str | None = None  # "PASS" or "AH"
    auth_pass: str = ""
    use_vmac: bool = False
    unicast_src_ip: str | None = None
    unicast_peers: tuple[str, ...] = ()
    track_interfaces: tuple[str, ...] = ()
    garp_master_delay: float | None = None
    extra: tuple[str, ...] = ()

    def render(self) -> str:
        lines = [f"vrrp_instance {self.name} {{"]
        body = [
            f"state {self.state}",
            f"interface {self.interface}",
            f"virtual_router_id {self.vrid}",
            f"priority {self.priority}",
            f"advert_int {self.advert_int:g}",
        ]
        if self.nopreempt:
            body.append("nopreempt")
        if self.use_vmac:
            body.append("use_vmac")
        if self.garp_master_delay is not None:
            body.append(f"garp_master_delay {self.garp_master_delay:g}")
        if self.auth_type:
            body += ["authentication {", f"    auth_type {self.auth_type}",
                     f"    auth_pass {self.auth_pass}", "}"]
        if self.unicast_src_ip:
            body.append(f"unicast_src_ip {self.unicast_src_ip}")
        if self.unicast_peers:
            body += ["unicast_peer {", *(f"    {p}" for p in self.unicast_peers), "}"]
        if self.track_interfaces:
            body += ["track_interface {", *(f"    {i}" for i in self.track_interfaces), "}"]
        body += ["virtual_ipaddress {", *(f"    {v}" for v in self.vips), "}"]
        body += list(self.extra)
        lines += [f"    {line}" for line in body]
        lines.append("}")
        return "\n".join(lines) + "\n"


def render_config(router_id: str, instances: Sequence[VrrpSpec]) -> str:
    head = f"global_defs {{\n    router_id {router_id}\n}}\n\n"
    return head + "\n".join(spec.render() for spec in instances)


# ---------------------------------------------------------------------------
# The lab


@dataclass
class Node:
    """A router or client namespace on the lab LAN."""

    name: str  # short role name: r1, r2, c1
    ns: str  # namespace name
    leg: str  # its veth end on the bridge, inside the bridge namespace
    ip: str  # primary address on eth0
    mac: str = ""
    daemon: Proc | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.name


def daemon_argv(impl: Impl, conf: Path, pidbase: Path) -> list[str]:
    """Command line of a VRRP daemon run in the foreground, logging to the console."""
    if impl == "keepalived":
        return [KEEPALIVED, "-n", "-l", "-D", "-f", str(conf), "-p", f"{pidbase}.pid",
                "-r", f"{pidbase}.vrrp.pid", "-c", f"{pidbase}.check.pid"]
    return [sys.executable, "-m", "pyalived", "-n", "-l", "-D", "-f", str(conf),
            "-p", f"{pidbase}.pid"]


class Lab:
    """A bridge plus ``routers`` router namespaces and ``clients`` client namespaces."""

    def __init__(self, routers: int = 2, clients: int = 0, *, workdir: Path | None = None,
                 keep_workdir: bool | None = None) -> None:
        if not 1 <= routers <= 80 or not 0 <= clients <= 40:
            raise ValueError("between 1 and 80 routers and at most 40 clients")
        self.prefix = f"{LAB_NAME_PREFIX}{os.getpid()}-{next(_counter)}{secrets.token_hex(2)}-"
        self.bridge_ns = self.prefix + "br"
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="pyalived-lab-")) if workdir is None \
            else workdir
        self.keep_workdir = (not self._own_workdir) if keep_workdir is None else keep_workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.routers = [Node(f"r{i}", f"{self.prefix}r{i}", f"leg-r{i}", f"{LAN_PREFIX}.{10 + i}")
                        for i in range(1, routers + 1)]
        self.clients = [Node(f"c{i}", f"{self.prefix}c{i}", f"leg-c{i}", f"{LAN_PREFIX}.{200 + i}")
                        for i in range(1, clients + 1)]
        self.procs: list[Proc] = []
        self.captures: list[Capture] = []
        self._namespaces: list[str] = []

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _add_ns(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _build(self) -> None:
        self._add_ns(self.bridge_ns)
        br = self.bridge_ns
        _run(["ip", "-n", br, "link", "add", BRIDGE, "type", "bridge",
              "forward_delay", "0", "stp_state", "0"])
        _run(["ip", "-n", br, "link", "set", BRIDGE, "up"])
        for node in self.routers + self.clients:
            self._add_ns(node.ns)
            _run(["ip", "-n", br, "link", "add", node.leg, "type", "veth",
                  "peer", "name", "eth0", "netns", node.ns])
            _run(["ip", "-n", br, "link", "set", node.leg, "master", BRIDGE, "up"])
            _run(["ip", "-n", node.ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", node.ns, "addr", "add", f"{node.ip}/{LAN_PREFIXLEN}", "dev", "eth0"])
            node.mac = self.mac(node, "eth0")

    def close(self) -> None:
        """Stop everything and delete every namespace; safe to call twice."""
        for cap in self.captures:
            try:
                cap.stop()
            except Exception:  # teardown must go on
                pass
        for proc in self.procs:
            try:
                proc.stop(5.0)
            except Exception:  # teardown must go on
                pass
        for ns in reversed(self._namespaces):
            _delete_namespace(ns)
        self._namespaces.clear()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- commands ----------------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        return self.routers + self.clients

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def run(self, node: Node | str, *argv: str, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside a namespace."""
        ns = node.ns if isinstance(node, Node) else node
        return _run(["ip", "netns", "exec", ns, *argv], check=check)

    def ip(self, node: Node | str, *args: str) -> str:
        ns = node.ns if isinstance(node, Node) else node
        return _run(["ip", "-n", ns, *args]).stdout

    def mac(self, node: Node, ifname: str = "eth0") -> str:
        out = self.ip(node, "-o", "link", "show", ifname)
        return out.split("link/ether", 1)[1].split()[0]

    def addresses(self, node: Node) -> set[str]:
        """Every IPv4 address configured in the namespace (without prefix length)."""
        out = self.ip(node, "-o", "-4", "addr", "show")
        return {line.split()[3].split("/")[0] for line in out.splitlines() if " inet " in line}

    def holders(self, ip: str = VIP) -> list[Node]:
        """Routers on which ``ip`` is configured."""
        return [r for r in self.routers if ip in self.addresses(r)]

    def wait_sole_holder(self, node: Node, ip: str = VIP, timeout: float = 30.0) -> Node:
        """Wait until ``ip`` is configured on ``node`` and on no other router."""
        return wait_for(lambda: node if self.holders(ip) == [node] else None, timeout,
                        what=f"{ip} on {node} only")

    def neighbours(self, node: Node) -> dict[str, str]:
        """The IPv4 neighbour table of a namespace: ip -> lladdr."""
        out = self.ip(node, "-4", "neigh", "show")
        table = {}
        for line in out.splitlines():
            parts = line.split()
            if "lladdr" in parts:
                table[parts[0]] = parts[parts.index("lladdr") + 1]
        return table

    def ping(self, node: Node, ip: str, count: int = 1, wait: float = 2.0) -> bool:
        """ICMP echo from ``node`` to ``ip``; true if any of ``count`` requests is answered.

        A few lines of Python on a raw socket, so the lab needs no ping binary.
        """
        for _ in range(count):
            proc = self.run(node, sys.executable, "-c", _PING_SCRIPT, ip, f"{wait:g}",
                            check=False)
            if proc.returncode == 0:
                return True
        return False

    def cut(self, node: Node) -> None:
        """Take ``node`` off the LAN: its leg on the bridge goes down."""
        _run(["ip", "-n", self.bridge_ns, "link", "set", node.leg, "down"])

    def reconnect(self, node: Node) -> None:
        _run(["ip", "-n", self.bridge_ns, "link", "set", node.leg, "up"])

    def block_vrrp(self, blocked: bool = True) -> None:
        """Stop (or resume) forwarding VRRP and AH between the bridge's legs.

        Unlike ``cut`` the links stay up, so every router keeps running but
        hears no other router: each becomes master on its own.
        """
        br = self.bridge_ns
        if blocked:
            script = (
                "table bridge lab {\n chain labfwd {\n"
                "  type filter hook forward priority 0; policy accept;\n"
                "  ip protocol { 112, 51 } drop\n }\n}\n"
            )
            subprocess.run(["ip", "netns", "exec", br, "nft", "-f", "-"], input=script,
                           text=True, capture_output=True, check=True)
        else:
            _run(["ip", "netns", "exec", br, "nft", "delete", "table", "bridge", "lab"],
                 check=False)

    def crash(self, node: Node) -> float:
        """SIGKILL every process in ``node``'s namespace at once: nothing gets to clean up.

        Every process is stopped (SIGSTOP) before any is killed: a daemon's
        children that get a signal when their parent dies (keepalived's and
        pyalived's do) would otherwise stop gracefully, with a priority-0 advert.
        Returns when they were killed (``time.monotonic()``), before the daemon
        is reaped, which may take a while.
        """
        pids = namespace_pids(node.ns)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        killed = time.monotonic()
        if node.daemon is not None:
            node.daemon.wait(10.0)
        return killed

    def set_link(self, node: Node, ifname: str, up: bool) -> None:
        _run(["ip", "-n", node.ns, "link", "set", ifname, "up" if up else "down"])

    def add_dummy(self, node: Node, ifname: str) -> None:
        """An extra up interface inside ``node``, e.g. to be tracked.

        It is one end of a veth pair whose other end (``ifname`` + "p") stays
        in the same namespace: the kernel here has no dummy driver.
        """
        _run(["ip", "-n", node.ns, "link", "add", ifname, "type", "veth",
              "peer", "name", f"{ifname}p"])
        _run(["ip", "-n", node.ns, "link", "set", f"{ifname}p", "up"])
        _run(["ip", "-n", node.ns, "link", "set", ifname, "up"])

    # -- processes and capture --------------------------------------------

    def spawn(self, node: Node | str, argv: Sequence[str], name: str,
              env: dict[str, str] | None = None) -> Proc:
        ns = node.ns if isinstance(node, Node) else node
        proc = Proc(name, ns, argv, self.workdir / f"{name}.log", env=env, cwd=self.workdir)
        self.procs.append(proc)
        return proc

    def write_config(self, node: Node, text: str, name: str | None = None) -> Path:
        path = self.workdir / f"{name or node.name}.conf"
        path.write_text(text)
        return path

    def start_daemon(self, node: Node, config: str | Path, impl: Impl = "pyalived",
                     tag: str | None = None) -> Proc:
        """Run a VRRP daemon in ``node``; ``config`` is the text or a path to it."""
        conf = config if isinstance(config, Path) else self.write_config(node, config)
        tag = tag or f"{node.name}-{impl}-{next(_counter)}"
        env = dict(os.environ)
        if impl == "pyalived":
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
            env["PYTHONUNBUFFERED"] = "1"
        proc = self.spawn(node, daemon_argv(impl, conf, self.workdir / tag), tag, env=env)
        node.daemon = proc
        return proc

    def stop_daemon(self, node: Node, timeout: float = 10.0) -> int | None:
        if node.daemon is None:
            return None
        code = node.daemon.stop(timeout)
        # keepalived's children, if any are left over, must go too.
        _kill_namespace_processes(node.ns)
        return code

    def rss_kib(self, node: Node) -> int:
        """Total resident memory of every process in ``node``'s namespace, in KiB."""
        total = 0
        for pid in namespace_pids(node.ns):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    def capture(self, name: str = "lan") -> Capture:
        cap = Capture(self.bridge_ns, self.workdir / f"{name}-{next(_counter)}.pcap")
        self.captures.append(cap)
        return cap

    def router_by_ip(self, ip: str) -> Node | None:
        for node in self.routers:
            if node.ip == ip:
                return node
        return None

    def __iter__(self) -> Iterator[Node]:
        return iter(self.routers)
