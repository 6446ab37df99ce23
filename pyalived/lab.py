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
(packet-buffered, so the file can be read while the capture runs; a
``PcapFollower`` parses only the records added since it last looked, so that
polling costs the benchmarks little CPU) and ``parse_pcap`` turns the file
into ``Event`` records -- kernel timestamp,
source MAC and IP, destination, and a kind: ``AdvertKind`` for a VRRP
advertisement, ``GarpKind`` for a gratuitous ARP (an ARP whose sender and
target protocol addresses are equal, RFC 3768 §6.4.1), ``ArpKind`` for any
other ARP request or reply, ``NaKind`` for an ICMPv6 Neighbor Advertisement
(RFC 4861 §4.4; the unsolicited ones a new IPv6 master sends, RFC 5798
§6.4.2, are the IPv6 gratuitous ARPs).  Adverts are VRRPv2 over IPv4 (plain,
or behind an IPsec AH header as RFC 2338 §5.3.6.3 authentication produces;
``version`` 2, the interval in whole seconds in ``advert_int``) and VRRPv3
over IPv4 or over IPv6 (Ethernet type 0x86dd, next header 112 in the fixed
IPv6 header; ``version`` 3, Max Adver Int in centiseconds in
``max_advert_int``).  ``AdvertKind.checksum_ok`` says whether the VRRP
checksum verifies: VRRPv2's covers the VRRP message alone (RFC 3768 §5.3.8),
VRRPv3's a pseudo-header first (RFC 5798 §5.2.8: IPv4 source, destination,
zero, protocol, length; IPv6 the RFC 8200 §8.1 one) -- the IPv6 header has
no checksum of its own.  Only the IPv4 header's length fields are trusted
to cut the VRRP message; for IPv6 the payload length is.  The parser is
written here, independently of the daemon's codec, so that tests do not
judge the daemon with its own code (the unit tests feed it frames built by
that codec, which cross-checks both).

``VrrpSpec``/``render_config`` write keepalived.conf text, understood both by
keepalived 2.2.7 and by pyalived, and ``Lab.start_daemon`` runs either
implementation in a router namespace with its own pid files and log.
"""

from __future__ import annotations

import ipaddress
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

# What ``Capture`` records: VRRP over IPv4 (plain or AH) and IPv6, ARP, and ICMPv6
# Neighbor Advertisements (type 136; ``ip6[40]`` is the ICMPv6 type when no extension
# header comes first, as in every NA a VRRP router sends).
CAPTURE_FILTER = ("ip proto 112 or ip proto 51 or arp or ip6 proto 112"
                  " or (icmp6 and ip6[40] == 136)")

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
    """A VRRP advertisement: VRRPv2 (RFC 3768 §5.1) or VRRPv3 (RFC 5798 §5.1).

    For VRRPv3 ``auth_type``, ``advert_int`` and ``auth_data`` are zero/empty
    (the protocol has no authentication and counts its interval in
    centiseconds, ``max_advert_int``); ``interval`` is the interval in seconds
    for either version.
    """

    vrid: int
    priority: int
    auth_type: int
    advert_int: int
    addresses: tuple[str, ...]
    auth_data: bytes = b""
    ah: bool = False  # carried behind an IPsec AH header
    version: int = 2
    max_advert_int: int = 0  # VRRPv3: centiseconds (12 bits)
    # Whether the VRRP checksum verifies (v3: with its pseudo-header); not compared.
    checksum_ok: bool = field(default=True, compare=False)

    @property
    def interval(self) -> float:
        """The advertised interval in seconds."""
        return self.max_advert_int / 100 if self.version == 3 else float(self.advert_int)


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
class NaKind:
    """An ICMPv6 Neighbor Advertisement (RFC 4861 §4.4) for ``target``."""

    target: str
    router: bool
    solicited: bool
    override: bool
    lladdr: str = ""  # the Target Link-Layer Address option, if any
    hop_limit: int = 255

    @property
    def unsolicited(self) -> bool:
        return not self.solicited


@dataclass(frozen=True)
class Event:
    time: float
    src_mac: str
    dst_mac: str
    src: str
    dst: str
    kind: AdvertKind | GarpKind | ArpKind | NaKind

    @property
    def is_advert(self) -> bool:
        return isinstance(self.kind, AdvertKind)

    @property
    def is_garp(self) -> bool:
        return isinstance(self.kind, GarpKind)

    @property
    def is_na(self) -> bool:
        return isinstance(self.kind, NaKind)

    @property
    def priority(self) -> int | None:
        return self.kind.priority if isinstance(self.kind, AdvertKind) else None


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def _ip6(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))


def _csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``: 0 when it verifies."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _advert_v3(body: bytes, alen: int, pseudo: bytes) -> AdvertKind | None:
    """A VRRPv3 message with ``alen``-byte addresses; ``pseudo`` is its checksum
    pseudo-header without the length (IPv4: src, dst, 0, 112 -- the 16-bit length
    follows; IPv6: src, dst -- the 32-bit length and next header follow)."""
    if len(body) < 8:
        return None
    count = body[3]
    size = 8 + alen * count
    if len(body) < size:
        return None
    message = body[:size]
    if alen == 4:
        header = pseudo + struct.pack("!H", size)
        addrs = tuple(_ip(message[8 + 4 * i : 12 + 4 * i]) for i in range(count))
    else:
        header = pseudo + struct.pack("!I3xB", size, 112)
        addrs = tuple(_ip6(message[8 + 16 * i : 24 + 16 * i]) for i in range(count))
    (rsvd_int,) = struct.unpack("!H", message[4:6])
    return AdvertKind(message[1], message[2], 0, 0, addrs, b"", False, 3, rsvd_int & 0x0FFF,
                      _csum(header + message) == 0)


def _parse_ipv6(ts: float, src_mac: str, dst_mac: str, payload: bytes) -> Event | None:
    """VRRPv3 (next header 112) or an ICMPv6 Neighbor Advertisement (58, type 136) in
    an IPv6 packet without extension headers."""
    if len(payload) < 40 or payload[0] >> 4 != 6:
        return None
    (plen,) = struct.unpack("!H", payload[4:6])
    nxt, hop = payload[6], payload[7]
    src, dst = payload[8:24], payload[24:40]
    body = payload[40 : 40 + plen]
    if nxt == 112:
        if not body or body[0] >> 4 != 3:
            return None
        kind = _advert_v3(body, 16, src + dst)
        return None if kind is None else Event(ts, src_mac, dst_mac, _ip6(src), _ip6(dst), kind)
    if nxt != 58 or len(body) < 24 or body[0] != 136:
        return None
    (flags,) = struct.unpack("!I", body[4:8])
    lladdr = ""
    at = 24
    while at + 2 <= len(body) and body[at + 1]:
        opt_len = body[at + 1] * 8
        if body[at] == 2 and opt_len >= 8 and at + 8 <= len(body):
            lladdr = _mac(body[at + 2 : at + 8])
        at += opt_len
    na = NaKind(_ip6(body[8:24]), bool(flags & 0x80000000), bool(flags & 0x40000000),
                bool(flags & 0x20000000), lladdr, hop)
    return Event(ts, src_mac, dst_mac, _ip6(src), _ip6(dst), na)


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
    if ethertype == 0x86DD:
        return _parse_ipv6(ts, src_mac, dst_mac, payload)
    if ethertype != 0x0800 or len(payload) < 20:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto = payload[9]
    src, dst = _ip(payload[12:16]), _ip(payload[16:20])
    (total,) = struct.unpack("!H", payload[2:4])
    body = payload[ihl:]
    ah = False
    if proto == 51:
        if len(body) < 2 or body[0] != 112:
            return None
        body = body[(body[1] + 2) * 4 :]
        ah = True
    elif proto != 112:
        return None
    if len(body) >= 1 and body[0] >> 4 == 3 and not ah:
        # Cut at the IPv4 total length: an Ethernet frame may carry padding.
        kind3 = _advert_v3(payload[ihl:total], 4, payload[12:20] + bytes([0, 112]))
        return None if kind3 is None else Event(ts, src_mac, dst_mac, src, dst, kind3)
    if len(body) < 8 or body[0] >> 4 != 2:
        return None
    count = body[3]
    addrs = tuple(_ip(body[8 + 4 * i : 12 + 4 * i]) for i in range(count))
    auth_data = body[8 + 4 * count : 16 + 4 * count]
    message = body[: 16 + 4 * count]
    kind = AdvertKind(body[1], body[2], body[4], body[5], addrs, auth_data, ah,
                      checksum_ok=len(message) == 16 + 4 * count and _csum(message) == 0)
    return Event(ts, src_mac, dst_mac, src, dst, kind)


def _pcap_format(data: bytes) -> tuple[str, bool]:
    """Byte order and timestamp resolution (True: nanoseconds) of a pcap file header."""
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
    return endian, nanos


def _parse_records(data: bytes, offset: int, endian: str, nanos: bool
                   ) -> tuple[list[Event], int]:
    """The events of the complete records from ``offset`` on, and where the first
    incomplete one (or the end) starts."""
    events = []
    rec = struct.Struct(endian + "IIII")
    while offset + 16 <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, offset)
        if offset + 16 + incl > len(data):
            break
        offset += 16
        ts = sec + frac / (1e9 if nanos else 1e6)
        event = _parse_frame(ts, data[offset : offset + incl])
        offset += incl
        if event is not None:
            events.append(event)
    return events, offset


def parse_pcap(data: bytes) -> list[Event]:
    """VRRP adverts, ARPs and neighbour advertisements of a pcap (Ethernet) file; a torn
    last record is ignored."""
    if len(data) < 24:
        return []
    endian, nanos = _pcap_format(data)
    return _parse_records(data, 24, endian, nanos)[0]


class PcapFollower:
    """The events of a pcap file that is still being written, read incrementally:
    each call parses only the records added since the last one, so that polling a
    long capture costs little CPU next to the daemons being measured.  A record not
    yet complete is left for the next call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._format: tuple[str, bool] | None = None  # byte order, nanoseconds
        self._offset = 0  # of the first record not parsed yet
        self._events: list[Event] = []

    def events(self) -> list[Event]:
        try:
            with open(self.path, "rb") as f:
                if self._format is None:
                    header = f.read(24)
                    if len(header) < 24:
                        return []
                    self._format = _pcap_format(header)
                    self._offset = 24
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        endian, nanos = self._format
        new, used = _parse_records(data, 0, endian, nanos)
        self._offset += used
        self._events += new
        return list(self._events)


class Capture:
    """tcpdump on the lab bridge, readable while it runs."""

    def __init__(self, ns: str, path: Path, iface: str = BRIDGE) -> None:
        self.path = path
        self.ns = ns
        self._stderr = path.with_suffix(".log")
        self._err: IO[bytes] = open(self._stderr, "wb")
        self._follower = PcapFollower(path)
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-nn", "-U", "-Z", "root",
             "-s", "2048", "-w", str(path), CAPTURE_FILTER],
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
        """Every event captured so far (read incrementally, see ``PcapFollower``)."""
        return self._follower.events()

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
            after: float = 0.0, version: int | None = None) -> list[Event]:
    """The adverts among ``events``, optionally from ``src``/for ``vrid``/later than
    ``after``/of VRRP ``version``."""
    return [
        e for e in events
        if isinstance(e.kind, AdvertKind) and e.time > after
        and (src is None or e.src == src) and (vrid is None or e.kind.vrid == vrid)
        and (version is None or e.kind.version == version)
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


def nas(events: Iterable[Event], target: str | None = None, after: float = 0.0,
        unsolicited: bool = True) -> list[Event]:
    """Neighbor Advertisements (unsolicited ones only, unless ``unsolicited`` is False),
    optionally only for ``target`` (in ``ipaddress``'s compressed form) and later than
    ``after``: the IPv6 counterpart of ``garps``."""
    want = None if target is None else str(ipaddress.ip_address(target))
    return [
        e for e in events
        if isinstance(e.kind, NaKind) and e.time > after
        and (want is None or e.kind.target == want)
        and (not unsolicited or e.kind.unsolicited)
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
    version: int | None = None  # a ``version`` line (VRRPv3: 3); IPv6 VIPs imply 3
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
        if self.version is not None:
            body.append(f"version {self.version}")
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

    def addresses6(self, node: Node) -> set[str]:
        """Every IPv6 address configured in the namespace, compressed, without prefix length."""
        out = self.ip(node, "-o", "-6", "addr", "show")
        return {str(ipaddress.IPv6Address(line.split()[3].split("/")[0]))
                for line in out.splitlines() if " inet6 " in line}

    def add_ipv6(self, node: Node, address: str, timeout: float = 30.0) -> str:
        """Add ``address`` (with its prefix length, no duplicate address detection) to
        ``node``'s eth0 and return its link-local address once that is usable."""
        self.ip(node, "-6", "addr", "add", address, "dev", "eth0", "nodad")

        def link_local() -> str | None:
            out = self.ip(node, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link")
            if not out.strip() or "tentative" in out:
                return None
            return str(ipaddress.IPv6Address(out.split()[3].split("/")[0]))

        return wait_for(link_local, timeout, what=f"a link-local address on {node}")

    def holders(self, ip: str = VIP) -> list[Node]:
        """Routers on which ``ip`` (IPv4, or IPv6 in any spelling) is configured."""
        if ":" in ip:
            ip6 = str(ipaddress.IPv6Address(ip))
            return [r for r in self.routers if ip6 in self.addresses6(r)]
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
