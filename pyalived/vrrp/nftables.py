"""nftables batches through libnftables' JSON API (or the ``nft`` command).

Theory of operation: ``pyalived.vrrp.firewall`` builds each change as a list
of nftables JSON commands; this module applies one such list as one
transaction.  ``LibNftables`` loads ``libnftables.so.1`` with ctypes and
calls ``nft_run_cmd_from_buffer`` with the JSON text (JSON output mode makes
libnftables parse its input as JSON), in a worker thread, one batch at a
time, so the trio loop never waits for the kernel.  ``NftCommand`` does the
same by piping the JSON to ``nft -j -f -``, for a host that has the command
but not the library.  Either raises ``FirewallError`` with nft's own error
text; nftables applies a batch whole or not at all.  Nothing here reads
nft's text output.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import shutil
from typing import Any

import trio

from pyalived.vrrp.ports import FirewallError, NftRunner

NFT_CTX_OUTPUT_JSON = 1 << 4  # enum nft_output_flags
LIBRARY = "libnftables.so.1"


class LibNftables:
    """``NftRunner`` on libnftables (one context, used by one thread at a time)."""

    def __init__(self, library: str = LIBRARY) -> None:
        lib = ctypes.CDLL(library)  # OSError if missing
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self._lib = lib
        self._ctx = ctx
        self._limiter = trio.CapacityLimiter(1)

    def _run(self, text: bytes) -> None:
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text)
        error = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        self._lib.nft_ctx_get_output_buffer(self._ctx)  # drain
        if rc != 0:
            raise FirewallError(error.decode(errors="replace").strip() or f"nft returned {rc}")

    async def run(self, commands: list[dict[str, Any]]) -> None:
        text = json.dumps({"nftables": commands}).encode()
        await trio.to_thread.run_sync(self._run, text, limiter=self._limiter)


class NftCommand:
    """``NftRunner`` on ``nft -j -f -``."""

    def __init__(self, nft: str = "nft") -> None:
        self._nft = nft

    async def run(self, commands: list[dict[str, Any]]) -> None:
        text = json.dumps({"nftables": commands}).encode()
        try:
            done = await trio.run_process([self._nft, "-j", "-f", "-"], stdin=text,
                                          capture_stdout=True, capture_stderr=True,
                                          check=False)
        except OSError as exc:
            raise FirewallError(f"{self._nft}: {exc}") from exc
        if done.returncode != 0:
            raise FirewallError(done.stderr.decode(errors="replace").strip()
                                or f"{self._nft} exited {done.returncode}")


def default_runner() -> NftRunner | None:
    """libnftables if it loads, else the ``nft`` command, else None (no nftables here)."""
    try:
        return LibNftables(ctypes.util.find_library("nftables") or LIBRARY)
    except OSError:
        pass
    nft = shutil.which("nft")
    return NftCommand(nft) if nft is not None else None
