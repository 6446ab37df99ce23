"""Probes against real loopback servers started by the tests, hostile ones included."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
import socket
import ssl
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import trio

from pyalived.checkers.http import HttpError, ResponseReader, build_request
from pyalived.checkers.probes import (
    RealProber,
    http_probe,
    interpret_exit,
    misc_probe,
    tcp_probe,
)
from pyalived.checkers.spec import (
    HttpGet,
    MiscCheck,
    RealServerSpec,
    SslGet,
    StatusRange,
    TcpCheck,
    Timing,
    UrlSpec,
)

LO = IPv4Address("127.0.0.1")
HANG_GUARD = 30  # seconds: only to avoid a hung test run, never a budget

Handler = Callable[[trio.SocketStream], Awaitable[None]]


def rs(port: int) -> RealServerSpec:
    return RealServerSpec(LO, port)


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1:<ephemeral>; yields its port."""

    async def wrapped(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, wrapped, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def read_request(stream: trio.abc.Stream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


def reply(response: bytes) -> Handler:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(response)

    return handler


@contextmanager
def closed_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


# ---- sans-IO HTTP ---------------------------------------------------------


def test_request_bytes_match_keepalived() -> None:
    assert build_request("/x?y", "vh.example") == (
        b"GET /x?y HTTP/1.0\r\nUser-Agent: KeepAliveClient\r\nHost: vh.example\r\n\r\n"
    )
    assert build_request("/", "127.0.0.1:80", "1.1") == (
        b"GET / HTTP/1.1\r\nUser-Agent: KeepAliveClient\r\nConnection: close\r\n"
        b"Host: 127.0.0.1:80\r\n\r\n"
    )
    assert b"HTTP/1.0\r\n" in build_request("/", "h", "1.0C")
    assert b"Connection: close" in build_request("/", "h", "1.0C")
    with pytest.raises(ValueError):
        build_request("/\r\nX: y", "h")


def test_reader_content_length_and_byte_by_byte() -> None:
    raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nhelloEXTRA"
    r = ResponseReader()
    done = [r.feed(raw[i : i + 1]) for i in range(len(raw))]
    assert done.index(True) == raw.index(b"hello") + 4
    assert (r.status, r.hexdigest()) == (404, hashlib.md5(b"hello").hexdigest())


@pytest.mark.parametrize(
    "raw",
    [b"garbage\r\n\r\n", b"HTTP/1.0 2x0 OK\r\n\r\n", b"HTTP/1.0 200\r\nContent-Length: z\r\n\r\n"],
)
def test_reader_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(HttpError):
        ResponseReader().feed(raw)


def test_reader_caps() -> None:
    r = ResponseReader(max_header=100)
    with pytest.raises(HttpError):
        for _ in range(10):
            r.feed(b"X" * 20)
    r = ResponseReader(max_body=10)
    r.feed(b"HTTP/1.0 200 OK\r\n\r\n0123456789")
    with pytest.raises(HttpError):
        r.feed(b"a")
    r = ResponseReader()
    r.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    with pytest.raises(HttpError):
        r.feed_eof()


# ---- TCP_CHECK ------------------------------------------------------------


async def test_tcp_up_refused_and_connect_ip_override() -> None:
    async def idle(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with serve(idle) as port:
        ok = await tcp_probe(TcpCheck(), rs(port))
        assert ok.ok, ok.reason
        with closed_port() as dead:
            res = await tcp_probe(TcpCheck(), rs(dead))
            assert not res.ok and "refused" in res.reason
            # connect_port overrides the real server's port
            assert (await tcp_probe(TcpCheck(connect_port=port), rs(dead))).ok
        assert (await tcp_probe(TcpCheck(bindto=IPv4Address("127.0.0.2")), rs(port))).ok


async def test_tcp_connect_timeout() -> None:
    # A listener with a full accept queue drops further SYNs: connect hangs.
    lst = socket.socket()
    fillers: list[socket.socket] = []
    try:
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        port = lst.getsockname()[1]
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        await trio.sleep(0.2)
        with trio.fail_after(HANG_GUARD):
            res = await tcp_probe(TcpCheck(connect_timeout=0.3), rs(port))
        assert not res.ok and "timeout" in res.reason
    finally:
        for f in fillers:
            f.close()
        lst.close()


# ---- HTTP_GET -------------------------------------------------------------


async def genhash(port: int, path: str, *extra: str) -> str:
    exe = shutil.which("genhash")
    if exe is None:
        pytest.skip("genhash (Debian keepalived) not installed")
    proc = await trio.run_process(
        [exe, "-s", "127.0.0.1", "-p", str(port), "-u", path, *extra], capture_stdout=True
    )
    found = re.findall(rb"\b[0-9a-f]{32}\b", proc.stdout)
    assert found, proc.stdout
    return str(found[-1].decode())


@pytest.mark.interop
@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.0 200 OK\r\n\r\n" + bytes(range(256)) * 300,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\n",
    ],
    ids=["eof-76kB", "content-length", "chunked-raw", "empty"],
)
async def test_digest_matches_genhash(response: bytes) -> None:
    async with serve(reply(response)) as port:
        expected = await genhash(port, "/index.html")
        spec = HttpGet(urls=(UrlSpec("/index.html", digest=expected),))
        res = await http_probe(spec, rs(port))
        assert res.ok, res.reason
        bad = HttpGet(urls=(UrlSpec("/index.html", digest="0" * 32),))
        res = await http_probe(bad, rs(port))
        assert not res.ok and "digest mismatch" in res.reason


async def test_http_request_host_header_and_status_codes() -> None:
    seen: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        req = await read_request(stream)
        seen.append(req)
        code = 503 if b"/down" in req else 200
        await stream.send_all(b"HTTP/1.0 %d X\r\n\r\nbody" % code)

    async with serve(handler) as port:
        spec = HttpGet(urls=(UrlSpec("/a"),), virtualhost="www.example")
        assert (await http_probe(spec, rs(port))).ok
        assert seen[-1].startswith(b"GET /a HTTP/1.0\r\n")
        assert b"\r\nHost: www.example\r\n" in seen[-1]
        assert (await http_probe(HttpGet(urls=(UrlSpec("/b"),)), rs(port))).ok
        assert f"\r\nHost: 127.0.0.1:{port}\r\n".encode() in seen[-1]
        down = HttpGet(urls=(UrlSpec("/a"), UrlSpec("/down")))
        assert (await http_probe(down, rs(port), step=0)).ok  # one URL per probe
        assert seen[-1].startswith(b"GET /a ")
        res = await http_probe(down, rs(port), step=1)
        assert not res.ok and "/down" in res.reason and "503" in res.reason
        assert (await http_probe(down, rs(port), step=2)).ok  # steps wrap around
        assert seen[-1].startswith(b"GET /a ")
        ranges = (StatusRange(200, 200), StatusRange(500, 599))
        allowed = HttpGet(urls=(UrlSpec("/a"), UrlSpec("/down", status_code=ranges)))
        assert (await http_probe(allowed, rs(port), step=1)).ok


async def _hostile(handler: Handler, *, max_body: int = 1 << 20) -> str:
    async with serve(handler) as port:
        spec = HttpGet(urls=(UrlSpec("/"),), connect_timeout=0.4)
        with trio.fail_after(HANG_GUARD):
            res = await http_probe(spec, rs(port), max_body=max_body)
        assert not res.ok
        return res.reason


async def test_hostile_silent_server_times_out() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    assert "timeout" in await _hostile(silent)


async def test_hostile_garbage() -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(os.urandom(3000) + b"\r\n\r\n")

    assert "malformed" in await _hostile(garbage)

    async def garbage_no_header_end(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"\x00\xff" * 5000)

    reason = await _hostile(garbage_no_header_end)
    assert "header" in reason


async def test_hostile_endless_body_is_capped() -> None:
    async def endless(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.0 200 OK\r\n\r\n")
        block = b"x" * 65536
        while True:
            await stream.send_all(block)

    assert "larger than 1048576" in await _hostile(endless)


async def test_hostile_dripping_server_hits_total_deadline() -> None:
    async def drip(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.0 200 OK\r\n\r\n")
        while True:
            await stream.send_all(b"x")
            await trio.sleep(0.05)

    assert "timeout" in await _hostile(drip)


async def test_hostile_reset() -> None:
    async def reset(stream: trio.SocketStream) -> None:
        await read_request(stream)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    reason = await _hostile(reset)
    assert "reset" in reason or "closed" in reason


async def test_truncated_and_refused() -> None:
    async def truncated(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\nshort")

    assert "closed after 5 of 100" in await _hostile(truncated)
    with closed_port() as dead:
        res = await http_probe(HttpGet(urls=(UrlSpec("/"),)), rs(dead))
        assert not res.ok and "refused" in res.reason


# ---- SSL_GET --------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_files() -> Iterator[tuple[str, str]]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed.invalid")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory() as d:
        cpath, kpath = Path(d, "cert.pem"), Path(d, "key.pem")
        cpath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kpath.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        yield str(cpath), str(kpath)


def tls_reply(cert_files: tuple[str, str], response: bytes, snis: list[str | None]) -> Handler:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert_files)

    def note_sni(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        snis.append(name)

    ctx.sni_callback = note_sni

    async def handler(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, ctx, server_side=True, https_compatible=True)
        await tls.do_handshake()
        await read_request(tls)
        await tls.send_all(response)
        await tls.aclose()

    return handler


@pytest.mark.interop
async def test_ssl_get_self_signed_digest_matches_genhash(cert_files: tuple[str, str]) -> None:
    snis: list[str | None] = []
    body = b"HTTP/1.0 200 OK\r\n\r\n" + b"secure page\n" * 1000
    async with serve(tls_reply(cert_files, body, snis)) as port:
        expected = await genhash(port, "/s", "-S")
        url = UrlSpec("/s", digest=expected)
        res = await http_probe(SslGet(urls=(url,), virtualhost="vh.example"), rs(port))
        assert res.ok, res.reason
        assert snis[-1] is None  # no SNI unless enable_sni
        spec = SslGet(urls=(url,), virtualhost="vh.example", enable_sni=True)
        assert (await http_probe(spec, rs(port))).ok
        assert snis[-1] == "vh.example"
        strict = SslGet(urls=(url,), verify=True)
        res = await http_probe(strict, rs(port))
        assert not res.ok  # an untrusted certificate fails only when verifying


async def test_ssl_get_against_plain_or_silent_server_fails() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with serve(silent) as port:
        spec = SslGet(urls=(UrlSpec("/"),), connect_timeout=0.3)
        with trio.fail_after(HANG_GUARD):
            res = await http_probe(spec, rs(port))
        assert not res.ok and "timeout" in res.reason
    async with serve(reply(b"HTTP/1.0 200 OK\r\n\r\nplain")) as port:
        with trio.fail_after(HANG_GUARD):
            res = await http_probe(SslGet(urls=(UrlSpec("/"),), connect_timeout=1), rs(port))
        assert not res.ok


# ---- MISC_CHECK -----------------------------------------------------------


def test_exit_status_meaning() -> None:
    assert interpret_exit(0, False).ok and interpret_exit(0, True).weight is None
    assert not interpret_exit(1, True).ok
    assert not interpret_exit(12, False).ok
    assert interpret_exit(12, True).weight == 10
    assert interpret_exit(255, True).weight == 253
    assert not interpret_exit(-9, True).ok


async def test_misc_exit_codes_and_dynamic_weight() -> None:
    assert (await misc_probe(MiscCheck("/bin/true"))).ok
    assert not (await misc_probe(MiscCheck("/bin/false"))).ok
    res = await misc_probe(MiscCheck("/bin/sh -c 'exit 12'", misc_dynamic=True))
    assert res.ok and res.weight == 10
    assert not (await misc_probe(MiscCheck("/bin/sh -c 'exit 12'"))).ok
    res = await misc_probe(MiscCheck("/bin/sh -c 'kill -9 $$'"))
    assert not res.ok and "signal 9" in res.reason
    res = await misc_probe(MiscCheck("/nonexistent/check --x"))
    assert not res.ok and "cannot run" in res.reason
    res = await misc_probe(MiscCheck("/bin/sh -c 'test $(id -u) = 65534'", user="nobody"))
    assert res.ok, res.reason


async def test_misc_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    cmd = f"/bin/sh -c 'sleep 300 & echo $! > {pidfile}; trap \"\" TERM; wait'"
    with trio.fail_after(HANG_GUARD):
        res = await misc_probe(MiscCheck(cmd, misc_timeout=0.5))
    assert not res.ok and "timeout" in res.reason
    child = int(pidfile.read_text())
    with trio.fail_after(HANG_GUARD):
        while Path(f"/proc/{child}").exists():
            status = Path(f"/proc/{child}/stat").read_text().split()[2:3]
            if status == ["Z"]:
                break
            await trio.sleep(0.05)


async def test_real_prober_dispatch() -> None:
    prober = RealProber()
    with closed_port() as dead:
        assert not (await prober.probe(TcpCheck(), rs(dead))).ok
    assert (await prober.probe(MiscCheck("/bin/true", timing=Timing()), rs(1))).ok
    res = await prober.probe(TcpCheck(), RealServerSpec(LO, None))
    assert not res.ok and "connect_port" in res.reason
