"""The TLS client context of SSL_GET, from the top-level ``SSL`` block.

Theory of operation: keepalived 2.2.7 has one TLS client context for every
SSL_GET checker.  Without an ``SSL`` block it is a default one; with one,
``certificate`` (a PEM chain) and ``key`` (its PEM private key, decrypted
with ``password`` if it is encrypted) make the client certificate that is
presented when a server asks for one, and ``ca`` is loaded as trust
anchors.  keepalived never verifies the server's certificate, whatever the
block says, and neither does this context (no verification, no host name
check); SNI is the checker's ``enable_sni``.

``client_context`` builds that context and raises ``TlsConfigError`` with
the reason when a file is missing, is not PEM, or the key does not fit the
certificate or its password: the parser calls it to refuse such a
configuration with the ``SSL`` block's ``file:line``, and the checker
process calls it for its probes.  The checker process keeps the contexts
it built, keyed by the settings and by the size and modification time of
each file: a certificate renewed on disk is picked up by the next check,
without a reload.  No network I/O happens here.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass


class TlsConfigError(ValueError):
    """A file of the SSL block cannot be used."""


@dataclass(frozen=True, slots=True)
class TlsClient:
    """The TLS client settings (the ``SSL`` block's, without its location)."""

    certificate: str | None = None
    key: str | None = None
    password: str | None = None
    ca: str | None = None


DEFAULT = TlsClient()
MAX_CACHED = 16

_cache: dict[tuple[TlsClient, tuple[tuple[int, int] | None, ...]], ssl.SSLContext] = {}


def _stamp(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def client_context(settings: TlsClient = DEFAULT) -> ssl.SSLContext:
    """A context for ``settings``; raises TlsConfigError if its files cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if settings.certificate is not None:
        password = settings.password
        try:
            ctx.load_cert_chain(settings.certificate, settings.key, password)
        except OSError as exc:
            if isinstance(exc, ssl.SSLError):  # PEM lib, KEY_VALUES_MISMATCH, BAD_DECRYPT...
                why = f"not a usable PEM certificate and key ({exc.reason or exc})"
                if password is not None:
                    why += ", or a wrong password"
            else:
                why = (exc.strerror or str(exc)).lower()
            raise TlsConfigError(
                f"cannot load certificate {settings.certificate}"
                + (f" with key {settings.key}" if settings.key else "")
                + f": {why}"
            ) from exc
    if settings.ca is not None:
        try:
            ctx.load_verify_locations(settings.ca)
        except OSError as exc:
            if isinstance(exc, ssl.SSLError):
                why = f"not PEM certificates ({exc.reason or exc})"
            else:
                why = (exc.strerror or str(exc)).lower()
            raise TlsConfigError(f"cannot load CA file {settings.ca}: {why}") from exc
    return ctx


def cached_context(settings: TlsClient = DEFAULT) -> ssl.SSLContext:
    """``client_context(settings)``, built again only when a file changed on disk."""
    key = (settings, tuple(_stamp(p) for p in (settings.certificate, settings.key, settings.ca)))
    ctx = _cache.get(key)
    if ctx is None:
        if len(_cache) >= MAX_CACHED:
            _cache.clear()
        ctx = _cache[key] = client_context(settings)
    return ctx
