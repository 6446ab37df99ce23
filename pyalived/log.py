"""Logging set-up for the daemon.

Theory of operation: everything logs through the standard ``logging`` module
under the ``pyalived`` logger.  ``setup_logging`` installs one destination:
the console (stderr, keepalived's ``-l``) with a timestamped line per message,
or syslog with the facility of ``-S`` (default ``daemon``) otherwise.  The
normal level is INFO (state transitions, start and stop); ``-D`` lowers it to
DEBUG and adds the level and the emitting module to every line (for example
each dropped datagram and why).  Expected conditions are logged as one line
without a traceback; only programming errors carry one.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

LOGGER = "pyalived"
SYSLOG_SOCKET = "/dev/log"
SYSLOG_IDENT = "pyalived"

_FACILITIES = {
    "daemon": logging.handlers.SysLogHandler.LOG_DAEMON,
    "user": logging.handlers.SysLogHandler.LOG_USER,
    **{f"local{n}": logging.handlers.SysLogHandler.LOG_LOCAL0 + n for n in range(8)},
}


def parse_facility(value: str) -> int:
    """``0``..``7`` (local0..local7), ``local0``..``local7``, ``user`` or ``daemon``."""
    if value.isdigit() and 0 <= int(value) <= 7:
        return _FACILITIES[f"local{value}"]
    try:
        return _FACILITIES[value.lower()]
    except KeyError:
        raise ValueError(
            f"invalid syslog facility {value!r} (0-7, local0-7, user or daemon)"
        ) from None


class _ConsoleFormatter(logging.Formatter):
    def __init__(self, detail: bool) -> None:
        fmt = "%(asctime)s: %(message)s"
        if detail:
            fmt = "%(asctime)s: [%(levelname)s %(name)s] %(message)s"
        super().__init__(fmt, datefmt="%a %b %d %H:%M:%S %Y")


def setup_logging(
    *,
    console: bool,
    detail: bool = False,
    facility: int = logging.handlers.SysLogHandler.LOG_DAEMON,
    use_syslog: bool = True,
    ident: str = SYSLOG_IDENT,
) -> logging.Logger:
    root = logging.getLogger(LOGGER)
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.setLevel(logging.DEBUG if detail else logging.INFO)
    root.propagate = False
    handler: logging.Handler
    if console:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_ConsoleFormatter(detail))
        root.addHandler(handler)
    if use_syslog and not console:
        try:
            handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET, facility=facility)
        except OSError as exc:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_ConsoleFormatter(detail))
            root.addHandler(handler)
            root.warning("syslog unavailable (%s); logging to stderr", exc)
            return root
        fmt = f"{ident}[{os.getpid()}]: %(message)s"
        if detail:
            fmt = f"{ident}[{os.getpid()}]: [%(levelname)s %(name)s] %(message)s"
        handler.setFormatter(logging.Formatter(fmt))
        root.addHandler(handler)
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    return root
