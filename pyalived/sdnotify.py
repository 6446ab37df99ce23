"""Service-manager notifications (systemd's sd_notify protocol), without libsystemd.

Theory of operation: a service started with ``Type=notify`` finds the path
of a datagram socket in ``NOTIFY_SOCKET`` and reports its life cycle by
sending it newline-separated ``KEY=VALUE`` assignments: ``READY=1`` once it
serves, ``RELOADING=1`` (with ``MONOTONIC_USEC``) when a reload starts and
``READY=1`` again when it ends, ``STOPPING=1`` when it begins to stop, and
``WATCHDOG=1`` at least every ``WATCHDOG_USEC`` microseconds if the unit has
``WatchdogSec=``.  A path starting with ``@`` names a socket in the
abstract namespace (the ``@`` becomes a NUL byte).  Other address kinds
(``vsock:``) are not supported and disable notifications.

The module has two halves.  The pure half formats messages
(``format_message``) and interprets the environment (``notify_address``,
``watchdog_interval``).  The sender (``Notifier``) owns one unbound
``AF_UNIX``/``SOCK_DGRAM`` socket and never blocks: a message the manager
cannot take right now is dropped and reported as not sent, because a
daemon that keeps a virtual router alive must not hang on its supervisor.
With no ``NOTIFY_SOCKET`` the notifier is disabled and every call is a
no-op, so callers need not check.  ``run_watchdog`` is the trio task that
sends ``WATCHDOG=1`` at half the watchdog interval (the margin systemd's
documentation recommends); as it runs on the event loop, a stalled loop
stops feeding the watchdog and the manager restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

import trio

log = logging.getLogger("pyalived.sdnotify")

READY = "READY"
RELOADING = "RELOADING"
STOPPING = "STOPPING"
WATCHDOG = "WATCHDOG"
STATUS = "STATUS"
MAINPID = "MAINPID"
MONOTONIC_USEC = "MONOTONIC_USEC"

#: Variables a service manager hands to the main process only.
ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def format_message(fields: Mapping[str, str | int]) -> bytes:
    """``{"READY": 1, "STATUS": "up"}`` -> ``b"READY=1\\nSTATUS=up\\n"``.

    Keys must be non-empty upper-case identifiers and values one line, as
    the protocol has no escaping.
    """
    if not fields:
        raise ValueError("empty notification")
    lines = []
    for key, value in fields.items():
        if not key or not all(c.isupper() or c.isdigit() or c == "_" for c in key):
            raise ValueError(f"invalid notification key {key!r}")
        text = str(value)
        if "\n" in text:
            raise ValueError(f"notification value of {key} spans lines")
        lines.append(f"{key}={text}\n")
    return "".join(lines).encode()


def notify_address(env: Mapping[str, str]) -> str | bytes | None:
    """The socket address named by ``NOTIFY_SOCKET``, or None if unusable/unset."""
    value = env.get("NOTIFY_SOCKET", "")
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value:
        log.warning("NOTIFY_SOCKET=%s is not supported; not notifying", value)
    return None


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds from ``WATCHDOG_USEC`` if the watchdog is meant for ``pid`` (else None)."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return value / 1_000_000


class Notifier:
    """Sends notifications to the service manager; a no-op when there is none."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog if address is not None else None
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(
        cls, env: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """Build from ``NOTIFY_SOCKET``/``WATCHDOG_*``; ``unset`` removes them from ``env``.

        Removing them keeps child processes (notify and track scripts) from
        talking to the manager in the daemon's name.
        """
        env = os.environ if env is None else env
        notifier = cls(notify_address(env), watchdog_interval(env))
        if unset:
            for name in ENVIRONMENT:
                env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, fields: Mapping[str, str | int]) -> bool:
        """Send one message; True if the manager's socket accepted it."""
        if self._sock is None or self.address is None:
            return False
        message = format_message(fields)
        try:
            self._sock.sendto(message, self.address)
        except OSError as exc:
            log.debug("notification %r not sent: %s", message, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {READY: 1}
        if status is not None:
            fields[STATUS] = status
        return self.notify(fields)

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        """Start of a reload; finish it with ``ready()``."""
        if monotonic_usec is None:
            monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify({RELOADING: 1, MONOTONIC_USEC: monotonic_usec})

    def stopping(self, status: str | None = None) -> bool:
        fields: dict[str, str | int] = {STOPPING: 1}
        if status is not None:
            fields[STATUS] = status
        return self.notify(fields)

    def status(self, text: str) -> bool:
        return self.notify({STATUS: text})

    def watchdog(self) -> bool:
        return self.notify({WATCHDOG: 1})

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def run_watchdog(
    notifier: Notifier,
    interval: float | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send ``WATCHDOG=1`` now and then every ``interval / 2`` seconds, until cancelled.

    ``interval`` defaults to the notifier's watchdog interval; with neither
    (no watchdog configured) the task reports itself started and returns.
    """
    period = interval if interval is not None else notifier.watchdog_interval
    task_status.started()
    if period is None or not notifier.enabled:
        return
    while True:
        notifier.watchdog()
        await trio.sleep(period / 2)
