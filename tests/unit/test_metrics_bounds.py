"""The metrics server's bounds: connections, deadlines, and accept out of descriptors.

Clients are real loopback sockets in the test's own process, timed by trio's
autojump clock (a loopback handshake completes inside ``connect``, so the
virtual clock never jumps past a connection the kernel already queued).
The slow reader is a lockstep in-memory stream, the EMFILE a real one, in a
child process whose descriptor limit is lowered there only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import trio
import trio.testing

from pyalived.metrics import (
    CONNECTION_TIMEOUT,
    MAX_CONNECTIONS,
    REQUEST_HEAD_TIMEOUT,
    HttpStats,
    Metrics,
    _serve_connection,
    serve_metrics,
)
from pyalived.vrrp.counters import VrrpCounters

REPO = Path(__file__).resolve().parents[2]
SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"


async def fetch(port: int, request: bytes = SCRAPE) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def closed_by_server(stream: trio.SocketStream) -> bool:
    """Whether the server closed ``stream`` (EOF or reset), reading whatever it sent."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass
    return True


async def start(nursery: trio.Nursery) -> tuple[Metrics, int]:
    metrics = Metrics(VrrpCounters())
    listeners = await nursery.start(serve_metrics, metrics, "127.0.0.1", 0)
    return metrics, listeners[0].socket.getsockname()[1]


async def settle(stats: HttpStats, open_: int) -> None:
    with trio.fail_after(1):
        while stats.open != open_:
            await trio.sleep(0.001)


async def test_connections_beyond_the_bound_are_refused_at_once_not_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        metrics, port = await start(nursery)
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
        await settle(metrics.http, MAX_CONNECTIONS)
        t0 = trio.current_time()
        for _ in range(50):
            response = await fetch(port)
            assert response.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
        assert trio.current_time() - t0 < 0.1  # no waiting for a slot
        assert (metrics.http.open, metrics.http.refused) == (MAX_CONNECTIONS, 50)
        scraped = metrics.render()[0].decode()
        assert "pyalived_metrics_http_refused_total 50.0" in scraped
        assert f"pyalived_metrics_http_connections {MAX_CONNECTIONS}.0" in scraped
        for stream in idle:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_idle_and_slowloris_clients_lose_their_slot_at_the_head_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slowloris(stream: trio.SocketStream) -> None:
        try:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            while True:  # one byte a second: never a whole head
                await trio.sleep(1.0)
                await stream.send_all(b"a")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        metrics, port = await start(nursery)
        t0 = trio.current_time()
        clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
        for stream in clients[::2]:
            nursery.start_soon(slowloris, stream)
        await settle(metrics.http, MAX_CONNECTIONS)
        await trio.sleep(1.0)
        assert (await fetch(port)).startswith(b"HTTP/1.0 503")  # all slots taken
        await trio.sleep_until(t0 + REQUEST_HEAD_TIMEOUT + 0.01)
        # every one of them was dropped at the deadline...
        with trio.move_on_after(0.001) as late:
            for stream in clients:
                assert await closed_by_server(stream)
        assert not late.cancelled_caught
        assert (metrics.http.open, metrics.http.timed_out) == (0, MAX_CONNECTIONS)
        # ...so a scrape retried now succeeds
        response = await fetch(port)
        assert response.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b"pyalived_metrics_http_timeouts_total 16.0" in response
        for stream in clients:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_slow_reader_is_cut_at_the_connection_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics, stats = Metrics(VrrpCounters()), HttpStats()
    client, server = trio.testing.lockstep_stream_pair()  # a send waits for the reader
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, SCRAPE)
        await _serve_connection(metrics, server, stats)  # the client never reads
    assert trio.current_time() - t0 == CONNECTION_TIMEOUT
    assert stats.timed_out == 1


_ACCEPT_CHILD = textwrap.dedent("""
    import json, logging, os, resource, sys
    import trio
    from pyalived.metrics import Metrics, serve_metrics
    from pyalived.vrrp.counters import VrrpCounters

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)

    async def main():
        metrics = Metrics(VrrpCounters())
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_metrics, metrics, "127.0.0.1", 0)
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            filler = []
            try:
                while True:
                    filler.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            print(listeners[0].socket.getsockname()[1], flush=True)
            await trio.sleep(float(sys.argv[1]))  # out of descriptors all this time
            for fd in filler:
                os.close(fd)
            await trio.sleep(2.0)
            print(json.dumps(metrics.http.__dict__), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)
""")


def test_accept_out_of_descriptors_pauses_logs_once_and_recovers() -> None:
    import socket

    starved = 3.0
    child = subprocess.Popen([sys.executable, "-c", _ACCEPT_CHILD, str(starved)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        t0 = time.monotonic()
        clients = []
        for _ in range(5):  # completed by the kernel, waiting in the accept queue
            sock = socket.create_connection(("127.0.0.1", port), timeout=15)
            sock.sendall(SCRAPE)
            clients.append(sock)
        for sock in clients:
            with sock:
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            assert data.startswith(b"HTTP/1.0 200 OK"), data[:100]
        assert time.monotonic() - t0 >= starved - 0.5  # served once descriptors came back
        stats = json.loads(child.stdout.readline())
        _, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, stderr
    lines = [line for line in stderr.splitlines() if "accept failed" in line]
    # ~0.5 s apart for 3 s: about 6 failed accepts, one log line, no traceback
    assert 3 <= stats["accept_errors"] <= 10, stats
    assert len(lines) == 1 and "too many open files" in lines[0].lower(), stderr
    assert "Traceback" not in stderr
    assert stats["open"] == 0 and stats["refused"] == 0
