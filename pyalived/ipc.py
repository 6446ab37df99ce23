"""Messages between the supervisor and its two children, over a unix stream socket.

Theory of operation: each child is joined to the supervisor by one
``socketpair(AF_UNIX, SOCK_STREAM)``.  A message is any picklable value,
framed as an 8-byte big-endian length followed by its pickle.  A stream,
not SEQPACKET, because some messages are large (the metrics text of tens of
thousands of real servers, a half's pickled configuration on reload) and a
packet socket bounds a message by the socket buffer.  A large message goes
out as its header and then its pickle, never copied into one buffer, so that
sending it costs the parent no second copy.  Both ends are the same
program, started by the supervisor itself, so unpickling is no trust issue.

``Link`` wraps the socket for trio: ``send`` (serialised by a lock, so that
concurrent senders never interleave frames) and ``receive``, which returns
``None`` at end of stream -- the other process has exited or closed its end.
``Message`` tuples name what they carry by their first element; the set of
kinds is documented in ``pyalived.supervisor``.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

import trio

_HEADER = struct.Struct("!Q")
_JOIN = 64 * 1024  # a pickle shorter than this is sent in one piece with its header
MAX_MESSAGE = 1 << 31  # a frame announcing more is a broken peer, not a message


class LinkClosed(Exception):
    """The other end went away in the middle of a frame, or sent a broken one."""


class Link:
    """One end of a supervisor-child socket pair, for use inside ``trio.run``."""

    def __init__(self, sock: socket.socket, buffered: bytearray | None = None) -> None:
        """``buffered``: bytes already read from ``sock`` (see ``detach``)."""
        sock.setblocking(False)
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._send_lock = trio.Lock()
        self._buf = buffered if buffered is not None else bytearray()

    def detach(self) -> bytearray:
        """Stop using this wrapper, leaving the socket open; the bytes read ahead.

        The supervisor wraps the same socket anew in each ``trio.run``.
        """
        return self._buf

    async def send(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        header = _HEADER.pack(len(data))
        async with self._send_lock:
            if len(data) < _JOIN:
                await self._stream.send_all(header + data)
            else:
                await self._stream.send_all(header)
                await self._stream.send_all(data)

    async def _fill(self, size: int) -> bool:
        """Read until ``size`` bytes are buffered; False on a clean end of stream."""
        while len(self._buf) < size:
            chunk = await self._stream.receive_some(max(65536, size - len(self._buf)))
            if not chunk:
                if self._buf:
                    raise LinkClosed("end of stream inside a message")
                return False
            self._buf += chunk
        return True

    async def receive(self) -> Any:
        """The next message, or None once the other end has closed."""
        if not await self._fill(_HEADER.size):
            return None
        (size,) = _HEADER.unpack_from(self._buf)
        if size > MAX_MESSAGE:
            raise LinkClosed(f"message of {size} bytes announced")
        if not await self._fill(_HEADER.size + size):
            raise LinkClosed("end of stream inside a message")
        data = bytes(self._buf[_HEADER.size : _HEADER.size + size])
        del self._buf[: _HEADER.size + size]
        return pickle.loads(data)

    async def aclose(self) -> None:
        await self._stream.aclose()
