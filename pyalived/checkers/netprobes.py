"""The trio probes of DNS_CHECK, UDP_CHECK, PING_CHECK and SMTP_CHECK.

Theory of operation: like the probes of ``pyalived.checkers.probes``, each
function performs one check of one real server and returns a
``ProbeResult``; it never raises for anything the real server does, and
ends within a bound of ``connect_timeout`` (SMTP: each step, and three
times it in all), keeping at most a few kilobytes of what the server sends.

* DNS_CHECK: a query (``type`` and ``name``, recursion desired) built with
  dnspython, sent from a connected UDP socket to ``connect_ip:connect_port``
  (default: the real server's address and port, port 53 when there is
  none).  Datagrams that are not a response to this query (another id or
  question) are ignored; the check passes on the first response whose RCODE
  is NOERROR, whatever its answer section holds (keepalived looks at the
  header only), and fails on another RCODE, on an ICMP error (the socket's
  ECONNREFUSED, EHOSTUNREACH...), or when nothing comes in time.
* UDP_CHECK: ``payload`` (random bytes without one) from a connected UDP
  socket.  An ICMP error within ``connect_timeout`` fails the check; silence
  passes it unless ``require_reply`` is set.  A reply, when one is required,
  must be ``min_reply_length``..``max_reply_length`` bytes long and match
  ``require_reply``'s bytes (its ``X`` digits match anything) over the
  shorter of the two.
* PING_CHECK: one echo request (ICMP, or ICMPv6 for an IPv6 address) from a
  connected unprivileged ping socket (SOCK_DGRAM; the kernel allows it when
  the group is in ``net.ipv4.ping_group_range``, which also governs ICMPv6)
  and, where that is refused, a raw socket.  The check passes on the echo
  reply of this request (identifier and sequence number), fails on an ICMP
  error or when nothing comes in time.
* SMTP_CHECK: a TCP connection to the host (default port 25), the 220
  greeting (multi-line replies allowed), ``HELO helo_name`` answered with
  250, then ``QUIT`` without waiting for its answer.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv6Address

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import trio

from pyalived.checkers.policy import ProbeResult
from pyalived.checkers.probes import LocalResourceError, connect_within, set_socket_options
from pyalived.checkers.spec import (
    DnsCheck,
    IPAddress,
    PingCheck,
    RealServerSpec,
    SmtpCheck,
    UdpCheck,
)
from pyalived.limits import is_resource_exhaustion

MAX_DATAGRAM = 65535
RANDOM_PAYLOAD_BYTES = 16
SMTP_MAX_REPLY = 8192  # bytes of one SMTP reply kept before the check fails
SMTP_TOTAL_FACTOR = 3.0
PING_PAYLOAD = b"pyalived-ping-check\x00\x00\x00\x00\x00"

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129

_sequence = itertools.count(1)
_raw_noted = False  # the fallback to raw sockets is logged once
log = logging.getLogger("pyalived.checkers")


def _strerror(exc: OSError) -> str:
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _where(ip: IPAddress, port: int | None = None) -> str:
    host = f"[{ip}]" if isinstance(ip, IPv6Address) and port is not None else str(ip)
    return host if port is None else f"{host}:{port}"


def _family(ip: IPAddress) -> int:
    return socket.AF_INET6 if isinstance(ip, IPv6Address) else socket.AF_INET


def target(spec: DnsCheck | UdpCheck | SmtpCheck, rs: RealServerSpec,
           default_port: int | None = None) -> tuple[IPAddress, int]:
    """The address and port checked; ValueError if there is no port."""
    ip = spec.connect_ip if spec.connect_ip is not None else rs.ip
    port = spec.connect_port if spec.connect_port is not None else rs.port
    if port is None:
        port = default_port
    if port is None:
        raise ValueError(f"{spec.kind} on {rs} needs connect_port (no real server port)")
    return ip, port


class _SocketFailed(Exception):
    """Creating or connecting the probe's socket failed (the ProbeResult says why)."""

    def __init__(self, result: ProbeResult) -> None:
        super().__init__(result.reason)
        self.result = result


def _datagram_socket(ip: IPAddress, port: int, bindto: IPAddress | None,
                     bind_port: int | None, what: str,
                     proto: int = 0, kind: int = socket.SOCK_DGRAM,
                     opts: tuple[str | None, int | None] = (None, None),
                     ) -> trio.socket.SocketType:
    """A non-blocking datagram socket connected to ``ip:port``; raises _SocketFailed."""
    try:
        sock = socket.socket(_family(ip), kind | socket.SOCK_NONBLOCK, proto)
    except OSError as exc:
        raise _SocketFailed(ProbeResult(False, f"{what}: socket: {_strerror(exc)}",
                                        internal=is_resource_exhaustion(exc))) from exc
    try:
        set_socket_options(sock, *opts)  # bind_if, fwmark
        if bindto is not None or bind_port is not None:
            sock.bind(("" if bindto is None else str(bindto), bind_port or 0))
        sock.connect((str(ip), port))  # a datagram socket's connect does no I/O
    except OSError as exc:
        sock.close()
        raise _SocketFailed(ProbeResult(False, f"{what}: {_strerror(exc)}")) from exc
    return trio.socket.from_stdlib_socket(sock)


async def _exchange(sock: trio.socket.SocketType, request: bytes, timeout: float,
                    accept: Callable[[bytes], ProbeResult | None], what: str) -> ProbeResult:
    """Send ``request``, then feed each datagram to ``accept`` until it decides.

    ``accept`` returns None to go on waiting.  An ICMP error reported by the
    socket fails the check; so does the end of ``timeout`` (the caller turns
    that into success where silence means success: see ``udp_probe``).
    """
    with trio.fail_after(timeout):
        try:
            await sock.send(request)
        except OSError as exc:
            return ProbeResult(False, f"{what}: send: {_strerror(exc)}")
        while True:
            try:
                data = await sock.recv(MAX_DATAGRAM)
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    return ProbeResult(False, f"{what}: port unreachable")
                return ProbeResult(False, f"{what}: {_strerror(exc)}")
            verdict = accept(data)
            if verdict is not None:
                return verdict


# ---- DNS_CHECK ------------------------------------------------------------------------


async def dns_probe(spec: DnsCheck, rs: RealServerSpec) -> ProbeResult:
    ip, port = target(spec, rs, DnsCheck.default_port)
    what = f"DNS {spec.type} {spec.name} query to {_where(ip, port)}"
    query = dns.message.make_query(spec.name, dns.rdatatype.from_text(spec.type))

    def accept(data: bytes) -> ProbeResult | None:
        try:
            reply = dns.message.from_wire(data, ignore_trailing=True)
        except Exception:  # whatever the bytes are, the probe must not raise
            if data[:2] == query.id.to_bytes(2, "big"):
                return ProbeResult(False, f"{what}: malformed response")
            return None
        if not query.is_response(reply):
            return None  # not ours: keep waiting
        code = reply.rcode()
        if code != dns.rcode.NOERROR:
            return ProbeResult(False, f"{what}: RCODE {dns.rcode.to_text(code)}")
        return ProbeResult(True, f"{what}: NOERROR, {len(reply.answer)} answer(s)")

    try:
        sock = _datagram_socket(ip, port, spec.bindto, spec.bind_port, what,
                                opts=(spec.bind_if, spec.fwmark))
    except _SocketFailed as failed:
        return failed.result
    with sock:
        try:
            return await _exchange(sock, query.to_wire(), spec.connect_timeout, accept, what)
        except trio.TooSlowError:
            return ProbeResult(False, f"{what}: timeout")


# ---- UDP_CHECK ------------------------------------------------------------------------


def reply_matches(spec: UdpCheck, data: bytes) -> str | None:
    """Why ``data`` is not the reply UDP_CHECK requires (None: it is)."""
    if not spec.min_reply_length <= len(data) <= spec.max_reply_length:
        return (f"reply of {len(data)} bytes, not {spec.min_reply_length}"
                f"..{spec.max_reply_length}")
    want, mask = spec.reply, spec.reply_mask
    if want is None:
        return None
    if mask is None:
        mask = b"\xff" * len(want)
    for got, w, m in zip(data, want, mask, strict=False):
        if got & m != w & m:
            return "reply does not match require_reply"
    return None


async def udp_probe(spec: UdpCheck, rs: RealServerSpec) -> ProbeResult:
    ip, port = target(spec, rs)
    what = f"UDP to {_where(ip, port)}"
    payload = spec.payload if spec.payload is not None else os.urandom(RANDOM_PAYLOAD_BYTES)

    def accept(data: bytes) -> ProbeResult:
        if not spec.require_reply:
            return ProbeResult(True, f"{what}: reply of {len(data)} bytes")
        why = reply_matches(spec, data)
        if why is not None:
            return ProbeResult(False, f"{what}: {why}")
        return ProbeResult(True, f"{what}: reply of {len(data)} bytes")

    try:
        sock = _datagram_socket(ip, port, spec.bindto, spec.bind_port, what,
                                opts=(spec.bind_if, spec.fwmark))
    except _SocketFailed as failed:
        return failed.result
    with sock:
        try:
            return await _exchange(sock, payload, spec.connect_timeout, accept, what)
        except trio.TooSlowError:
            if spec.require_reply:
                return ProbeResult(False, f"{what}: no reply")
            return ProbeResult(True, f"{what}: no error within {spec.connect_timeout:g} s")


# ---- PING_CHECK -----------------------------------------------------------------------


def icmp_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def echo_request(v6: bool, ident: int, seq: int, payload: bytes = PING_PAYLOAD) -> bytes:
    """An ICMP (or ICMPv6) echo request; the kernel fills in ICMPv6's checksum."""
    kind = ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST
    head = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if v6:
        return head + payload
    cksum = icmp_checksum(head + payload)
    return struct.pack("!BBHHH", kind, 0, cksum, ident, seq) + payload


def parse_echo_reply(data: bytes, v6: bool, raw: bool) -> tuple[int, int] | None:
    """(identifier, sequence) of an echo reply, None for any other ICMP message.

    A raw IPv4 socket hands over the IP header too; ICMPv6 and ping sockets
    do not.
    """
    if raw and not v6:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8:
        return None
    kind, code, _cksum, ident, seq = struct.unpack("!BBHHH", data[:8])
    if kind != (ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY) or code != 0:
        return None
    return ident, seq


def _ping_socket(ip: IPAddress, bindto: IPAddress | None, what: str,
                 opts: tuple[str | None, int | None] = (None, None)) -> tuple[
        trio.socket.SocketType, bool]:
    """A connected ICMP socket: the unprivileged ping socket, else a raw one (True)."""
    v6 = isinstance(ip, IPv6Address)
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    global _raw_noted
    try:
        return _datagram_socket(ip, 0, bindto, None, what, proto, socket.SOCK_DGRAM, opts), False
    except _SocketFailed as failed:
        cause = failed.__cause__
        if not (isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM)):
            raise
    if not _raw_noted:
        _raw_noted = True
        log.info("PING_CHECK: ping sockets are not allowed for this group"
                 " (net.ipv4.ping_group_range); using raw ICMP sockets")
    return _datagram_socket(ip, 0, bindto, None, what, proto, socket.SOCK_RAW, opts), True


async def ping_probe(spec: PingCheck, rs: RealServerSpec) -> ProbeResult:
    ip = spec.connect_ip if spec.connect_ip is not None else rs.ip
    v6 = isinstance(ip, IPv6Address)
    what = f"ping {ip}"
    try:
        sock, raw = _ping_socket(ip, spec.bindto, what, (spec.bind_if, spec.fwmark))
    except _SocketFailed as failed:
        return failed.result
    with sock:
        seq = next(_sequence) & 0xFFFF
        # a ping socket's identifier is its local port, which the kernel chose
        ident = (os.getpid() & 0xFFFF) if raw else sock.getsockname()[1]

        def accept(data: bytes) -> ProbeResult | None:
            got = parse_echo_reply(data, v6, raw)
            if got is None or (raw and got != (ident, seq)) or (not raw and got[1] != seq):
                return None
            return ProbeResult(True, f"{what}: echo reply")

        try:
            return await _exchange(sock, echo_request(v6, ident, seq), spec.connect_timeout,
                                   accept, what)
        except trio.TooSlowError:
            return ProbeResult(False, f"{what}: no echo reply within {spec.connect_timeout:g} s")


# ---- SMTP_CHECK -----------------------------------------------------------------------


class SmtpError(Exception):
    """The server's reply is not what SMTP_CHECK needs."""


class ReplyReader:
    """Splits an SMTP byte stream into replies: (code, text of the last line)."""

    def __init__(self, limit: int = SMTP_MAX_REPLY) -> None:
        self.buffer = b""
        self.limit = limit

    def feed(self, data: bytes) -> tuple[int, str] | None:
        """Add ``data``; the reply completed by it, if any. Raises SmtpError."""
        self.buffer += data
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            text = line.rstrip(b"\r").decode("latin-1")
            if len(text) < 3 or not text[:3].isdigit() or (len(text) > 3 and text[3] not in " -"):
                raise SmtpError(f"not an SMTP reply: {text[:60]!r}")
            if len(text) == 3 or text[3] == " ":
                return int(text[:3]), text[4:]
        if len(self.buffer) > self.limit:
            raise SmtpError(f"reply line longer than {self.limit} bytes")
        return None


async def _smtp_session(spec: SmtpCheck, ip: IPAddress, port: int) -> str:
    """The SMTP dialogue; the greeting's text, or raises SmtpError/OSError/TooSlowError."""
    step = spec.connect_timeout
    sock = await connect_within(step, ip, port, spec.bindto, spec.bind_port,
                                bind_if=spec.bind_if, fwmark=spec.fwmark)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    reader = ReplyReader()

    async def reply() -> tuple[int, str]:
        while True:
            with trio.fail_after(step):
                data = await stream.receive_some(4096)
            if not data:
                raise SmtpError("connection closed by the server")
            got = reader.feed(bytes(data))
            if got is not None:
                return got

    try:
        code, greeting = await reply()
        if code != 220:
            raise SmtpError(f"greeting {code} {greeting[:60]}")
        with trio.fail_after(step):
            await stream.send_all(f"HELO {spec.helo_name}\r\n".encode())
        code, text = await reply()
        if code != 250:
            raise SmtpError(f"HELO answered {code} {text[:60]}")
        with trio.fail_after(step):
            await stream.send_all(b"QUIT\r\n")
        return greeting
    finally:
        await trio.aclose_forcefully(stream)


async def smtp_probe(spec: SmtpCheck, rs: RealServerSpec) -> ProbeResult:
    ip, port = target(spec, rs, SmtpCheck.default_port)
    what = f"SMTP {_where(ip, port)}"
    try:
        with trio.fail_after(spec.connect_timeout * SMTP_TOTAL_FACTOR):
            await _smtp_session(spec, ip, port)
    except trio.TooSlowError:
        return ProbeResult(False, f"{what}: timeout")
    except LocalResourceError as exc:
        return ProbeResult(False, f"{what}: socket: {_strerror(exc)}", internal=True)
    except OSError as exc:
        return ProbeResult(False, f"{what}: {_strerror(exc)}")
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        return ProbeResult(False, f"{what}: "
                           f"{_strerror(cause) if isinstance(cause, OSError) else 'broken'}")
    except SmtpError as exc:
        return ProbeResult(False, f"{what}: {exc}")
    return ProbeResult(True, f"{what}: 220 and 250 to HELO {spec.helo_name}")
