"""Sans-IO HTTP/1.x GET request builder and response reader for HTTP_GET/SSL_GET.

Theory of operation: ``build_request`` produces the exact bytes keepalived
2.2.7 sends (``GET PATH HTTP/1.0``, a ``User-Agent`` line, ``Connection:
close`` for 1.0C and 1.1, and ``Host:`` with the virtualhost or else
``IP:PORT``).  ``ResponseReader`` is fed the bytes received and parses the
status line and headers; the body is digested incrementally (MD5, exactly as
``genhash`` prints it: the raw bytes after the blank line, up to
``Content-Length`` when the server sends one, without decoding chunked
transfer coding).  The reader enforces caps on header and body sizes so a
hostile server cannot make it hold unbounded memory; it raises
``HttpError`` on any malformed or oversized response.

With a ``RegexMatcher`` (a URL's ``regex``, ``pyalived.checkers.bodymatch``)
the response -- its header, then its body as it arrives, as keepalived
2.2.7 searches it -- is also searched, and the reader says it is
``satisfied`` -- the caller stops reading -- as soon as the rest of the body
cannot change the check's outcome: the status code is not one the URL
accepts, or the regex verdict is known and no digest is wanted.  Without a
regex the whole body is read, as keepalived does.  No I/O happens here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from ipaddress import IPv6Address

from pyalived.checkers.bodymatch import RegexMatcher
from pyalived.checkers.spec import IPAddress

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024


class HttpError(Exception):
    """The response is malformed, oversized or truncated."""


def host_header(ip: IPAddress, port: int) -> str:
    host = f"[{ip}]" if isinstance(ip, IPv6Address) else str(ip)
    return f"{host}:{port}"


def build_request(path: str, host: str, protocol: str = "1.0") -> bytes:
    """The GET request for ``path``; ``protocol`` is "1.0", "1.0C" or "1.1"."""
    proto = protocol.upper()
    if proto not in ("1.0", "1.0C", "1.1"):
        raise ValueError(f"unsupported http_protocol {protocol!r}")
    if any(c in path + host for c in "\r\n"):
        raise ValueError("line breaks in path or host")
    version = "1.1" if proto == "1.1" else "1.0"
    lines = [f"GET {path} HTTP/{version}", "User-Agent: KeepAliveClient"]
    if proto != "1.0":
        lines.append("Connection: close")
    lines.append(f"Host: {host}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ResponseReader:
    """Incremental parser of one HTTP response; see the module docstring."""

    def __init__(
        self,
        max_header: int = MAX_HEADER_BYTES,
        max_body: int = MAX_BODY_BYTES,
        *,
        want_digest: bool = True,
        matcher: RegexMatcher | None = None,
        status_ok: Callable[[int], bool] | None = None,
    ) -> None:
        self.max_header = max_header
        self.max_body = max_body
        self.want_digest = want_digest
        self.matcher = matcher
        self.status_ok = status_ok
        self.satisfied = False  # the rest of the body cannot change the outcome
        self._head = bytearray()
        self.status: int | None = None
        self.content_length: int | None = None
        self.body_bytes = 0
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.complete = False

    @property
    def headers_done(self) -> bool:
        return self.status is not None

    def feed(self, data: bytes) -> bool:
        """Consume received bytes; True once the response is complete or ``satisfied``."""
        if self.complete or self.satisfied:
            return True
        if self.status is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > self.max_header:
                    raise HttpError("response header too large")
                return False
            if end > self.max_header:
                raise HttpError("response header too large")
            self._parse_head(bytes(self._head[:end]))
            data = bytes(self._head[end + 4 :])
            head = self._head[: end + 4]
            self._head = bytearray()
            if self.matcher is not None:
                status = self.status
                assert status is not None
                if self.status_ok is not None and not self.status_ok(status):
                    self.satisfied = True
                    return True
                self.matcher.feed(bytes(head))  # keepalived searches the header too
        if self.content_length is not None:
            data = data[: self.content_length - self.body_bytes]
        self.body_bytes += len(data)
        if self.body_bytes > self.max_body:
            raise HttpError(f"response body larger than {self.max_body} bytes")
        if self.want_digest:
            self._md5.update(data)
        matcher = self.matcher
        if matcher is not None:
            matcher.feed(data)
        if self.content_length is not None and self.body_bytes >= self.content_length:
            self.complete = True
            if matcher is not None:
                matcher.finish()
        elif matcher is not None and matcher.done and not self.want_digest:
            self.satisfied = True
            return True
        return self.complete

    def feed_eof(self) -> None:
        """The server closed the connection."""
        if self.status is None:
            raise HttpError("connection closed before the end of the response header")
        if self.content_length is not None and not self.complete:
            raise HttpError(
                f"connection closed after {self.body_bytes} of {self.content_length} body bytes"
            )
        self.complete = True
        if self.matcher is not None:
            self.matcher.finish()

    def hexdigest(self) -> str:
        return self._md5.hexdigest()

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise HttpError("malformed status line")
        code = parts[1]
        if len(code) != 3 or not code.isdigit():
            raise HttpError("malformed status code")
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if sep and name.strip().lower() == b"content-length":
                v = value.strip()
                if not v.isdigit():
                    raise HttpError("malformed Content-Length")
                self.content_length = int(v)
        self.status = int(code)
