"""The trio probes: TCP_CHECK, HTTP_GET, SSL_GET and MISC_CHECK.

Theory of operation: each probe performs one check of one real server and
returns a ``ProbeResult``; it never raises for anything the real server or
the script does, and it always ends in bounded time and memory, whatever the
peer does (accept and stay silent, send garbage, send an endless body, reset).

* Every checker that opens a socket sets ``fwmark`` (SO_MARK) and
  ``bind_if`` (SO_BINDTODEVICE) on it first when they are given, as
  keepalived does; a socket option the kernel refuses fails the check.
* TCP_CHECK: a non-blocking connect (optionally from ``bindto``/``bind_port``)
  to ``connect_ip:connect_port`` (default: the real server's), bounded by
  ``connect_timeout``; success is an established connection, which is then
  closed.
* HTTP_GET / SSL_GET: for one URL (the policy's ``step``: keepalived checks
  one URL per check, in turn), connect, (TLS handshake), send the GET
  request built by ``pyalived.checkers.http`` and read the response.
  Each network step (connect, handshake, send, each receive) must progress
  within ``connect_timeout``, as keepalived does, and the whole URL check is
  also capped at ``total_timeout_factor * connect_timeout`` so that a slowly
  dripping server cannot hold it forever; the body is capped at
  ``max_body`` bytes.  SSL_GET's TLS client context is the top-level ``SSL``
  block's (``pyalived.checkers.tls``: a client certificate if one is given,
  never a verification of the server's).  The check passes when the status code is in the
  URL's ``status_code`` set, if a ``digest`` is configured, the MD5 of
  the body equals it, and if a ``regex`` is, it is found in the response's
  window (or not found, with ``regex_no_match``); with a regex the response
  is read only as far as it takes to know (``pyalived.checkers.bodymatch``),
  and the connection is then closed.  SSL_GET does not verify the server certificate
  unless asked to (keepalived's default), and sends SNI only with
  ``enable_sni``.
* MISC_CHECK: runs ``misc_path`` (split like a shell would, run without one)
  in its own session with stdin/stdout/stderr on /dev/null, killing its
  whole process group after ``misc_timeout``.  Exit 0 is success, 1 failure;
  with ``misc_dynamic`` an exit status 2..255 is success with weight
  ``status - 2``, without it any non-zero status is failure, as is death by
  a signal or a timeout.

A probe that cannot even start because this process is out of a resource
-- creating its socket fails with EMFILE, ENFILE, ENOBUFS or ENOMEM, or
MISC_CHECK's spawn fails with those or with EAGAIN (the process limit) --
returns a result marked ``internal``: it says nothing about the real server,
and the policy neither counts it nor lets it change the verdict
(``pyalived.limits``, ``pyalived.checkers.policy``).

``Prober`` is the interface the scheduler calls; ``RealProber`` dispatches
to these functions and tests substitute fakes.  ``RealProber.starter`` (the
``StartingProber`` fast path) prepares one TCP_CHECK per real server: each
call of the ``Starter`` runs the connect synchronously and returns the result
itself when the kernel answered at once, or an awaitable that finishes the
handshake in progress.
"""

from __future__ import annotations

import _socket
import errno
import functools
import os
import shlex
import signal
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from ipaddress import IPv6Address
from typing import Protocol

import regex
import trio

from pyalived.checkers.bodymatch import RegexMatcher, compile_regex
from pyalived.checkers.http import (
    MAX_BODY_BYTES,
    HttpError,
    ResponseReader,
    build_request,
    host_header,
)
from pyalived.checkers.policy import ProbeResult
from pyalived.checkers.spec import (
    CheckerSpec,
    DnsCheck,
    FailedCheck,
    HttpGet,
    IPAddress,
    MiscCheck,
    PingCheck,
    RealServerSpec,
    SmtpCheck,
    SslGet,
    TcpCheck,
    UdpCheck,
    UrlSpec,
)
from pyalived.checkers.tls import DEFAULT as DEFAULT_TLS
from pyalived.checkers.tls import TlsClient, TlsConfigError, cached_context
from pyalived.limits import is_resource_exhaustion
from pyalived.scripts import run_as
from pyalived.tuning import spawn_options

RECEIVE_CHUNK = 65536
TOTAL_TIMEOUT_FACTOR = 3.0
MISC_KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL of a timed-out script


Starter = Callable[[], ProbeResult | Awaitable[ProbeResult]]


class Prober(Protocol):
    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        """One check of ``rs``; ``step`` picks the URL of an HTTP_GET/SSL_GET."""
        ...


class StartingProber(Prober, Protocol):
    """A ``Prober`` that can start probes synchronously (the scheduler's fast path).

    ``starter(spec, rs)`` is called once per checker and returns a
    ``Starter``: each call of it does what ``probe(spec, rs)`` does, but
    returns the result itself when the probe could finish without waiting,
    else an awaitable for the rest (which the caller must await).
    """

    def starter(self, spec: CheckerSpec, rs: RealServerSpec) -> Starter: ...


def _target(spec: TcpCheck | HttpGet, rs: RealServerSpec) -> tuple[IPAddress, int]:
    ip = spec.connect_ip if spec.connect_ip is not None else rs.ip
    port = spec.connect_port if spec.connect_port is not None else rs.port
    if port is None:
        raise ValueError(f"{spec.kind} on {rs} needs connect_port (no real server port)")
    return ip, port


def _strerror(exc: OSError) -> str:
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


class LocalResourceError(OSError):
    """A probe's socket could not be created: this process, not the real server, is short."""


def _not_run(what: str, exc: OSError) -> ProbeResult:
    """A probe that failed before touching the network: internal if for lack of resources."""
    return ProbeResult(False, f"{what}: {_strerror(exc)}", internal=is_resource_exhaustion(exc))


def _bind_address(bindto: IPAddress | None, bind_port: int | None) -> tuple[str, int] | None:
    if bindto is None and bind_port is None:
        return None
    return ("" if bindto is None else str(bindto), bind_port or 0)


def set_socket_options(sock: _socket.socket, bind_if: str | None, fwmark: int | None) -> None:
    """``fwmark`` (SO_MARK) and ``bind_if`` (SO_BINDTODEVICE), before any bind or connect,
    as keepalived sets them; raises OSError (ENODEV: no such interface)."""
    if fwmark:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
    if bind_if is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bind_if.encode())


def _connect_at_once(sock: _socket.socket, addr: tuple[str, int]) -> int:
    """Start a non-blocking connect: 0 if established, EINPROGRESS if not yet, else its errno.

    A second ``connect()`` sees a handshake that completed within the first
    (always the case on loopback) without a trip through epoll.
    """
    err = sock.connect_ex(addr)
    if err == errno.EINPROGRESS:
        err = sock.connect_ex(addr)
        if err == errno.EALREADY:
            err = errno.EINPROGRESS
        elif err == errno.EISCONN:
            err = 0
    return err


async def _handshake(sock: _socket.socket, timeout: float) -> int:
    """Wait for a connect in progress: 0 or its errno; raises TooSlowError after ``timeout``."""
    with trio.fail_after(timeout):
        await trio.lowlevel.wait_writable(sock)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


async def connect_within(
    timeout: float,
    ip: IPAddress,
    port: int,
    bindto: IPAddress | None = None,
    bind_port: int | None = None,
    *,
    bind_if: str | None = None,
    fwmark: int | None = None,
) -> socket.socket:
    """A connected non-blocking socket; raises TooSlowError or OSError.

    The cancel scope is only entered while the handshake is still in progress.
    """
    family = socket.AF_INET6 if isinstance(ip, IPv6Address) else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)  # no fcntl call
    except OSError as exc:
        if is_resource_exhaustion(exc):
            raise LocalResourceError(exc.errno, exc.strerror) from exc
        raise
    try:
        set_socket_options(sock, bind_if, fwmark)
        bind = _bind_address(bindto, bind_port)
        if bind is not None:
            sock.bind(bind)
        err = _connect_at_once(sock, (str(ip), port))
        if err == errno.EINPROGRESS:
            err = await _handshake(sock, timeout)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock


def tcp_starter(spec: TcpCheck, rs: RealServerSpec) -> Starter:
    """TCP_CHECK of ``rs`` as a ``Starter``: everything per server computed once.

    Each call starts one check.  It returns the result itself when the
    connection was established or refused straight away (loopback, a local
    refusal), with no task switch and no trip through epoll, otherwise an
    awaitable that waits for the handshake in progress, bounded by
    ``connect_timeout``.  Raises ValueError now if there is no port to check.
    """
    ip, port = _target(spec, rs)
    family = socket.AF_INET6 if isinstance(ip, IPv6Address) else socket.AF_INET
    opts = (spec.bind_if, spec.fwmark) if spec.bind_if is not None or spec.fwmark else None
    return _TcpStarter(family, (str(ip), port), _bind_address(spec.bindto, spec.bind_port),
                       spec.connect_timeout, opts)


class _TcpStarter:
    """``tcp_starter``'s result: a few hundred bytes per real server, kept as long as its
    checker (tens of thousands of them live in a large director's checker process)."""

    __slots__ = ("_connected", "addr", "bind", "family", "opts", "timeout")

    def __init__(self, family: int, addr: tuple[str, int], bind: tuple[str, int] | None,
                 timeout: float, opts: tuple[str | None, int | None] | None = None) -> None:
        self.family, self.addr, self.bind, self.timeout = family, addr, bind, timeout
        self.opts = opts  # (bind_if, fwmark), None when neither is set (nearly always)
        self._connected: ProbeResult | None = None  # made once, at the first success

    @property
    def where(self) -> str:
        host, port = self.addr
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"

    @property
    def connected(self) -> ProbeResult:
        if self._connected is None:
            self._connected = ProbeResult(True, f"connected to {self.where}")
        return self._connected

    def __call__(self) -> ProbeResult | Awaitable[ProbeResult]:
        try:
            sock = _socket.socket(self.family, _STREAM)  # the C type: no Python layer per check
        except OSError as exc:
            return _not_run(f"socket for {self.where}", exc)
        try:
            if self.opts is not None:
                set_socket_options(sock, *self.opts)
            if self.bind is not None:
                sock.bind(self.bind)
            err = _connect_at_once(sock, self.addr)
        except OSError as exc:
            sock.close()
            return ProbeResult(False, f"connect to {self.where}: {_strerror(exc)}")
        except BaseException:
            sock.close()
            raise
        if err == errno.EINPROGRESS:
            return _tcp_finish(sock, self)
        sock.close()
        if err:
            return ProbeResult(False, f"connect to {self.where}: {os.strerror(err).lower()}")
        return self.connected


_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK  # no fcntl call


async def _tcp_finish(sock: _socket.socket, starter: _TcpStarter) -> ProbeResult:
    try:
        err = await _handshake(sock, starter.timeout)
    except trio.TooSlowError:
        return ProbeResult(False, f"timeout connecting to {starter.where}")
    finally:
        sock.close()
    if err:
        return ProbeResult(False, f"connect to {starter.where}: {os.strerror(err).lower()}")
    return starter.connected


async def tcp_probe(spec: TcpCheck, rs: RealServerSpec) -> ProbeResult:
    outcome = tcp_starter(spec, rs)()
    return outcome if isinstance(outcome, ProbeResult) else await outcome


_SSL_CONTEXTS: dict[tuple[bool, str | None], ssl.SSLContext] = {}


def ssl_context(verify: bool = False, ca_file: str | None = None) -> ssl.SSLContext:
    """A shared client context; without ``verify`` certificates are not checked."""
    key = (verify, ca_file)
    ctx = _SSL_CONTEXTS.get(key)
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            if ca_file is not None:
                ctx.load_verify_locations(ca_file)
            else:
                ctx.load_default_certs()
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _SSL_CONTEXTS[key] = ctx
    return ctx


async def _fetch(
    spec: HttpGet, ip: IPAddress, port: int, url: UrlSpec, max_body: int, tls: TlsClient
) -> ResponseReader:
    """One GET; raises TooSlowError, OSError, BrokenResourceError or HttpError."""
    step = spec.connect_timeout
    host = url.virtualhost or spec.virtualhost or host_header(ip, port)
    sock = await connect_within(step, ip, port, spec.bindto, spec.bind_port,
                                bind_if=spec.bind_if, fwmark=spec.fwmark)
    stream: trio.abc.Stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    try:
        if isinstance(spec, SslGet):
            sni = (url.virtualhost or spec.virtualhost) if spec.enable_sni else None
            ctx = ssl_context(spec.verify, spec.ca_file) if spec.verify else cached_context(tls)
            tls_stream = trio.SSLStream(stream, ctx, server_hostname=sni, https_compatible=True)
            stream = tls_stream
            with trio.fail_after(step):
                await tls_stream.do_handshake()
        with trio.fail_after(step):
            await stream.send_all(build_request(url.path, host, spec.http_protocol))
        reader = ResponseReader(
            max_body=max_body,
            want_digest=url.digest is not None,
            matcher=_matcher(url),
            status_ok=url.status_ok,
        )
        while True:
            with trio.fail_after(step):
                data = bytes(await stream.receive_some(RECEIVE_CHUNK))
            if not data:
                reader.feed_eof()
                return reader
            if reader.feed(data):
                return reader
    finally:
        await trio.aclose_forcefully(stream)


async def check_url(
    spec: HttpGet, ip: IPAddress, port: int, url: UrlSpec, max_body: int = MAX_BODY_BYTES,
    tls: TlsClient = DEFAULT_TLS,
) -> ProbeResult:
    what = f"GET {url.path} on {host_header(ip, port)}"
    try:
        with trio.fail_after(spec.connect_timeout * TOTAL_TIMEOUT_FACTOR):
            reader = await _fetch(spec, ip, port, url, max_body, tls)
    except trio.TooSlowError:
        return ProbeResult(False, f"{what}: timeout")
    except LocalResourceError as exc:
        return _not_run(f"{what}: socket", exc)
    except OSError as exc:
        return ProbeResult(False, f"{what}: {_strerror(exc)}")
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        detail = _strerror(cause) if isinstance(cause, OSError) else "connection broken"
        return ProbeResult(False, f"{what}: {detail}")
    except HttpError as exc:
        return ProbeResult(False, f"{what}: {exc}")
    except TlsConfigError as exc:  # a file of the SSL block went bad since it was checked
        return ProbeResult(False, f"{what}: {exc}")
    status = reader.status
    assert status is not None
    if not url.status_ok(status):
        return ProbeResult(False, f"{what}: HTTP status {status}")
    if url.digest is not None and reader.hexdigest() != url.digest.lower():
        return ProbeResult(False, f"{what}: digest mismatch ({reader.hexdigest()})")
    matcher = reader.matcher
    if matcher is not None:
        if matcher.matched is None:  # cannot happen: the body ended or the verdict came first
            matcher.finish()
        if bool(matcher.matched) == url.regex_no_match:
            found = "found" if matcher.matched else "not found"
            return ProbeResult(False, f"{what}: Regex match failed (pattern {found})")
        return ProbeResult(True, f"{what}: Regex match")
    return ProbeResult(True, f"{what}: HTTP status {status}")


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str, options: tuple[str, ...]) -> regex.Pattern[bytes]:
    """The parser compiled it already, so it compiles."""
    return compile_regex(pattern, options)


def _matcher(url: UrlSpec) -> RegexMatcher | None:
    if url.regex is None:
        return None
    return RegexMatcher(
        _compiled(url.regex, url.regex_options), url.regex_min_offset, url.regex_max_offset
    )


async def http_probe(
    spec: HttpGet, rs: RealServerSpec, max_body: int = MAX_BODY_BYTES, step: int = 0,
    tls: TlsClient = DEFAULT_TLS,
) -> ProbeResult:
    """Checks URL number ``step`` (modulo their number) of ``spec``; SSL_GET as ``tls``."""
    ip, port = _target(spec, rs)
    if not spec.urls:
        return ProbeResult(False, f"{spec.kind} has no url")
    return await check_url(spec, ip, port, spec.urls[step % len(spec.urls)], max_body, tls)


def interpret_exit(status: int, dynamic: bool) -> ProbeResult:
    """Meaning of a MISC_CHECK exit status (negative: killed by that signal)."""
    if status < 0:
        return ProbeResult(False, f"killed by signal {-status}")
    if status == 0:
        return ProbeResult(True, "exit status 0")
    if dynamic and 2 <= status <= 255:
        return ProbeResult(True, f"exit status {status}", weight=status - 2)
    return ProbeResult(False, f"exit status {status}")


async def misc_probe(spec: MiscCheck) -> ProbeResult:
    argv = shlex.split(spec.misc_path)
    if not argv:
        return ProbeResult(False, "empty misc_path")

    async def kill_group(proc: trio.Process) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with trio.move_on_after(MISC_KILL_GRACE):
            await proc.wait()
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    try:
        with trio.fail_after(spec.effective_timeout):
            proc = await trio.run_process(
                argv,
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                deliver_cancel=kill_group,
                **run_as(spec.user, spec.group),
                **spawn_options(),
            )
    except trio.TooSlowError:
        return ProbeResult(False, f"timeout after {spec.effective_timeout:g} s")
    except OSError as exc:
        # EAGAIN from fork: the process limit, as much this host's trouble as EMFILE.
        internal = is_resource_exhaustion(exc) or exc.errno == errno.EAGAIN
        return ProbeResult(False, f"cannot run {argv[0]}: {_strerror(exc)}", internal=internal)
    except (KeyError, ValueError) as exc:  # unknown user or group
        return ProbeResult(False, f"cannot run {argv[0]}: {exc}")
    return interpret_exit(proc.returncode, spec.misc_dynamic)


class RealProber:
    """The production ``Prober``: dispatches on the checker type.

    ``starter`` is the scheduler's fast path (see ``StartingProber``).
    """

    def __init__(self, max_body: int = MAX_BODY_BYTES) -> None:
        self.max_body = max_body
        self.tls = DEFAULT_TLS  # the SSL block's settings, set by the service

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        try:
            if isinstance(spec, TcpCheck):
                return await tcp_probe(spec, rs)
            if isinstance(spec, HttpGet):
                return await http_probe(spec, rs, self.max_body, step, self.tls)
            if isinstance(spec, MiscCheck):
                return await misc_probe(spec)
            return await self._net_probe(spec, rs)
        except ValueError as exc:
            return ProbeResult(False, str(exc))

    @staticmethod
    async def _net_probe(
        spec: DnsCheck | UdpCheck | PingCheck | SmtpCheck | FailedCheck, rs: RealServerSpec
    ) -> ProbeResult:
        """The checkers of ``pyalived.checkers.netprobes``, and the one that always fails."""
        from pyalived.checkers import netprobes  # it uses this module's TCP connect

        if isinstance(spec, DnsCheck):
            return await netprobes.dns_probe(spec, rs)
        if isinstance(spec, UdpCheck):
            return await netprobes.udp_probe(spec, rs)
        if isinstance(spec, PingCheck):
            return await netprobes.ping_probe(spec, rs)
        if isinstance(spec, SmtpCheck):
            return await netprobes.smtp_probe(spec, rs)
        return ProbeResult(False, f"not supported here, so never counted as up: {spec.what}")

    def starter(self, spec: CheckerSpec, rs: RealServerSpec) -> Starter:
        if isinstance(spec, TcpCheck):
            try:
                return tcp_starter(spec, rs)
            except ValueError as exc:
                failed = ProbeResult(False, str(exc))
                return lambda: failed
        return lambda: self.probe(spec, rs)
