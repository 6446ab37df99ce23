"""Mail alerts: keepalived's SMTP alert on each state change, sent without blocking VRRP.

Theory of operation: the pure part builds what is sent.  ``mail_settings``
turns ``global_defs`` into ``MailSettings`` (None unless both an
``smtp_server`` and a ``notification_email`` are configured).
``instance_alert`` / ``group_alert`` give keepalived 2.2.7's subject and
body for a VRRP state change (``[ROUTER_ID] VRRP Instance NAME - Entering
MASTER state``, body ``=> VRRP Instance is now owning VRRP VIPs <=``), and
``real_server_alert`` / ``virtual_server_alert`` those of the checkers
(``[ROUTER_ID] Realserver [IP]:tcp:PORT of virtual server [IP]:tcp:PORT -
DOWN``, ``=> TCP CHECK failed on service <=``; ``Virtualserver ... - UP``,
``=> Starting with quorum up 2+0=2 <= 2 <=``), and
``message`` renders the headers keepalived sends (Date, From, Subject,
X-Mailer, To) with CRLF line ends and dot-stuffing (RFC 5321 §4.5.2).
``SmtpDialogue`` is the client side of the SMTP exchange (RFC 5321) as a
sans-IO state machine: it is fed each server reply (``ReplyParser`` cuts
replies, multi-line ones included, out of the received bytes) and answers
with the next command -- HELO, MAIL FROM, one RCPT TO per recipient, DATA,
the message, QUIT -- or raises ``SmtpError`` on an unexpected reply.
keepalived speaks HELO, not EHLO, and so does this module.

The trio part: ``deliver`` runs one dialogue over a TCP connection
(``trio.open_tcp_stream``: an address or a host name), each connect and
each reply bounded by ``smtp_connect_timeout``.  ``Mailer`` is the service:
``send`` is synchronous and never blocks -- it renders the message at once
(so its Date is the time of the state change) and puts it on a bounded
queue; a full queue drops the alert, counted and logged.  One task sends
the queue in order.  A delivery that fails (server unreachable, refusing,
timing out) is logged and retried after 1 s, 2 s, 4 s... up to 60 s apart,
``MAX_ATTEMPTS`` times in all, then given up with an error; nothing of it
is ever fatal.  ``configure`` takes the settings of a reloaded
configuration; alerts already queued keep theirs.
"""

from __future__ import annotations

import email.utils
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import trio

from pyalived.config.model import GlobalDefs

log = logging.getLogger("pyalived.mail")

QUEUE_SIZE = 64  # alerts waiting to be sent before new ones are dropped
MAX_ATTEMPTS = 10  # deliveries of one alert before it is given up (about 4 minutes)
RETRY_FIRST = 1.0  # seconds before the first retry, doubled each time
RETRY_MAX = 60.0  # seconds between retries at most
MAX_REPLY = 64 * 1024  # bytes of server replies buffered at most


@dataclass(frozen=True)
class MailSettings:
    host: str
    port: int
    helo: str
    sender: str
    recipients: tuple[str, ...]
    timeout: float
    router_id: str


def mail_settings(g: GlobalDefs, hostname: str | None = None) -> MailSettings | None:
    """The mail settings of ``global_defs``, None when no mail can be sent."""
    if g.smtp_server is None or not g.notification_email:
        return None
    host = hostname if hostname is not None else socket.gethostname()
    return MailSettings(
        host=g.smtp_server.host,
        port=g.smtp_server.port,
        helo=g.smtp_helo_name or host,
        sender=g.notification_email_from or f"keepalived@{host}",
        recipients=g.notification_email,
        timeout=g.smtp_connect_timeout,
        router_id=g.router_id or host,
    )


@dataclass(frozen=True)
class Alert:
    subject: str  # without the "[router_id] " prefix
    body: str


def instance_alert(name: str, state: str) -> Alert:
    """keepalived's alert for VRRP instance ``name`` entering ``state`` (MASTER, ...)."""
    owning = ("is now owning" if state == "MASTER" else "is no longer owning")
    return Alert(f"VRRP Instance {name} - Entering {state} state",
                 f"=> VRRP Instance {owning} VRRP VIPs <=")


def group_alert(name: str, state: str) -> Alert:
    """keepalived's alert for sync group ``name`` whose members all entered ``state``."""
    return Alert(f"VRRP Group {name} - Entering {state} state",
                 f"=> All VRRP group instances are now in {state} state <=")


#: How a checker names itself in a real server alert's body (keepalived 2.2.7's
#: wording, checked for TCP_CHECK).
CHECK_WORDS = {"TCP_CHECK": "TCP CHECK", "HTTP_GET": "HTTP_GET CHECK",
               "SSL_GET": "SSL_GET CHECK", "MISC_CHECK": "MISC CHECK",
               # following the pattern of the above, not checked against keepalived
               "DNS_CHECK": "DNS CHECK", "UDP_CHECK": "UDP CHECK", "PING_CHECK": "PING CHECK",
               "SMTP_CHECK": "SMTP CHECK"}


def real_server_alert(rs: str, vs: str, up: bool, checker: str) -> Alert:
    """keepalived's alert for real server ``rs`` of ``vs`` (both as ``[IP]:tcp:PORT``),
    whose ``checker`` (TCP_CHECK, ...) succeeded (``up``) or failed."""
    word = CHECK_WORDS.get(checker, checker)
    return Alert(f"Realserver {rs} of virtual server {vs} - {'UP' if up else 'DOWN'}",
                 f"=> {word} {'succeed' if up else 'failed'} on service <=")


def virtual_server_alert(vs: str, up: bool, quorum: int, hysteresis: int, weight: int,
                         *, starting: bool = False) -> Alert:
    """keepalived's alert for virtual server ``vs`` gaining or losing its quorum."""
    what = "Starting with quorum up" if starting else "Gained quorum" if up else "Lost quorum"
    return Alert(f"Virtualserver {vs} - {'UP' if up else 'DOWN'}",
                 f"=> {what} {quorum}+{hysteresis}={quorum + hysteresis} <= {weight} <=")


def message(settings: MailSettings, alert: Alert, when: datetime) -> bytes:
    """The DATA of the mail, dot-stuffed, each line ending in CRLF (without the final dot)."""
    lines = [
        f"Date: {email.utils.format_datetime(when)}",
        f"From: {settings.sender}",
        f"Subject: [{settings.router_id}] {alert.subject}",
        "X-Mailer: Keepalived",
        f"To: {', '.join(settings.recipients)}",
        "",
        *alert.body.splitlines(),
        "",
    ]
    return "".join(("." + ln if ln.startswith(".") else ln) + "\r\n" for ln in lines).encode(
        "utf-8", "replace"
    )


class SmtpError(Exception):
    """The server refused or answered what SMTP does not allow here."""


class ReplyParser:
    """Cuts SMTP replies (RFC 5321 §4.2: ``CODE-text`` lines, then ``CODE text``) from bytes."""

    def __init__(self) -> None:
        self._buf = b""
        self._lines: list[str] = []

    def feed(self, data: bytes) -> list[tuple[int, str]]:
        self._buf += data
        if len(self._buf) > MAX_REPLY:
            raise SmtpError("reply too long")
        replies: list[tuple[int, str]] = []
        while b"\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n", 1)
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
                raise SmtpError(f"not an SMTP reply: {line[:80]!r}")
            self._lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                replies.append((int(line[:3]), "\n".join(self._lines)))
                self._lines = []
        return replies


class SmtpDialogue:
    """The client side of one mail's SMTP exchange, without I/O (see the module docstring).

    ``reply(code, text)`` takes each server reply, the greeting first, and
    returns the bytes to send next (b"" once QUIT is sent); ``done`` tells
    whether the mail was accepted.
    """

    def __init__(self, helo: str, sender: str, recipients: Sequence[str], data: bytes) -> None:
        ok = (250,)
        self._steps: list[tuple[str, tuple[int, ...], bytes]] = [
            ("greeting", (220,), f"HELO {helo}\r\n".encode()),
            ("HELO", ok, f"MAIL FROM:<{sender}>\r\n".encode()),
        ]
        for n, rcpt in enumerate(recipients):
            what = "MAIL FROM" if n == 0 else "RCPT TO"
            self._steps.append((what, ok if n == 0 else (250, 251),
                                f"RCPT TO:<{rcpt}>\r\n".encode()))
        self._steps.append(("RCPT TO", (250, 251), b"DATA\r\n"))
        self._steps.append(("DATA", (354,), data + b".\r\n"))
        self._steps.append(("message", ok, b"QUIT\r\n"))
        self.done = False
        self.finished = False

    def reply(self, code: int, text: str) -> bytes:
        if not self._steps:
            self.finished = True
            return b""  # the reply to QUIT: whatever it says, the mail is in
        what, expected, nxt = self._steps.pop(0)
        if code not in expected:
            raise SmtpError(f"{what} answered {code} {text.splitlines()[0] if text else ''}")
        if not self._steps:
            self.done = True  # the message was accepted
        return nxt


async def deliver(settings: MailSettings, data: bytes) -> None:
    """Send one message (``message``'s bytes) over SMTP; raise OSError or SmtpError."""
    with trio.fail_after(settings.timeout):
        stream = await trio.open_tcp_stream(settings.host, settings.port)
    async with stream:
        dialogue = SmtpDialogue(settings.helo, settings.sender, settings.recipients, data)
        parser = ReplyParser()
        while not dialogue.finished:
            with trio.fail_after(settings.timeout):
                chunk = await stream.receive_some(4096)
            if not chunk:
                if dialogue.done:
                    return  # closed after accepting the message, before answering QUIT
                raise SmtpError("connection closed by the server")
            for code, text in parser.feed(chunk):
                out = dialogue.reply(code, text)
                if out:
                    await stream.send_all(out)
                if dialogue.finished:
                    break


Deliver = Callable[[MailSettings, bytes], Awaitable[None]]


@dataclass
class MailCounters:
    sent: int = 0
    failed_attempts: int = 0
    dropped: int = 0  # queue full
    given_up: int = 0
    delays: list[float] = field(default_factory=list)  # seconds from queueing to accepted


@dataclass(frozen=True)
class _Queued:
    settings: MailSettings
    subject: str
    data: bytes
    queued_at: float


class Mailer:
    """The alert-sending service (see the module docstring)."""

    def __init__(
        self,
        settings: MailSettings | None,
        *,
        deliver: Deliver = deliver,
        queue_size: int = QUEUE_SIZE,
        max_attempts: int = MAX_ATTEMPTS,
        clock: Callable[[], datetime] = lambda: datetime.now().astimezone(),
    ) -> None:
        self.settings = settings
        self.counters = MailCounters()
        self._deliver = deliver
        self._max_attempts = max_attempts
        self._clock = clock
        self._tx, self._rx = trio.open_memory_channel[_Queued](queue_size)

    def configure(self, settings: MailSettings | None) -> None:
        self.settings = settings

    def send(self, alert: Alert) -> None:
        """Queue ``alert`` for sending; never blocks (a full queue drops it, counted)."""
        settings = self.settings
        if settings is None:
            return
        queued = _Queued(settings, alert.subject, message(settings, alert, self._clock()),
                         trio.current_time())
        try:
            self._tx.send_nowait(queued)
        except trio.WouldBlock:
            self.counters.dropped += 1
            log.error("mail alert dropped, %d waiting already (%d dropped in all): %s",
                      QUEUE_SIZE, self.counters.dropped, alert.subject)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        busy = False
        try:
            async for item in self._rx:
                busy = True
                await self._send_one(item)
                busy = False
        finally:
            unsent = self._rx.statistics().current_buffer_used + busy
            if unsent:
                log.warning("stopping with %d mail alert(s) not sent", unsent)

    async def _send_one(self, item: _Queued) -> None:
        s = item.settings
        delay = RETRY_FIRST
        for attempt in range(1, self._max_attempts + 1):
            try:
                await self._deliver(s, item.data)
            except (OSError, SmtpError, trio.TooSlowError) as exc:
                self.counters.failed_attempts += 1
                why = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
                if attempt == self._max_attempts:
                    self.counters.given_up += 1
                    log.error("mail alert given up after %d attempts (SMTP server %s port %d: "
                              "%s): %s", attempt, s.host, s.port, why, item.subject)
                    return
                log.warning("mail alert not sent (SMTP server %s port %d: %s); retrying in "
                            "%g s: %s", s.host, s.port, why, delay, item.subject)
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            else:
                self.counters.sent += 1
                took = trio.current_time() - item.queued_at
                self.counters.delays.append(took)
                del self.counters.delays[:-100]
                log.info("mail alert sent to SMTP server %s port %d (%d recipient(s), %.3f s "
                         "after the event): %s", s.host, s.port, len(s.recipients), took,
                         item.subject)
                return

