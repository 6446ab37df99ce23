"""Mail alerts: keepalived's message, the SMTP dialogue, and the Mailer's queue and retries."""

from __future__ import annotations

import functools
import itertools
from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from pyalived.config.model import GlobalDefs, SmtpServer
from pyalived.mail import (
    Alert,
    Mailer,
    MailSettings,
    ReplyParser,
    SmtpDialogue,
    SmtpError,
    group_alert,
    instance_alert,
    mail_settings,
    message,
)

SETTINGS = MailSettings(
    host="198.18.0.25", port=2525, helo="lb1", sender="keepalived@lab",
    recipients=("ops@example.org", "noc@example.org"), timeout=5.0, router_id="lab_r1",
)
WHEN = datetime(2026, 11, 29, 13, 29, 14, tzinfo=UTC)


def test_settings_need_a_server_and_recipients_and_default_like_keepalived() -> None:
    assert mail_settings(GlobalDefs(notification_email=("a@b",)), "vm") is None
    assert mail_settings(GlobalDefs(smtp_server=SmtpServer("198.18.0.25")), "vm") is None
    s = mail_settings(GlobalDefs(smtp_server=SmtpServer("198.18.0.25"),
                                 notification_email=("a@b",)), "vm")
    assert s == MailSettings("198.18.0.25", 25, "vm", "keepalived@vm", ("a@b",), 30.0, "vm")


def test_message_is_keepalived_s_to_the_byte() -> None:
    # Captured from keepalived 2.2.7 with a raw SMTP sink (the DATA part).
    expected = (
        b"Date: Sun, 29 Nov 2026 13:29:14 +0000\r\n"
        b"From: keepalived@lab\r\n"
        b"Subject: [lab_r1] VRRP Instance VI_1 - Entering MASTER state\r\n"
        b"X-Mailer: Keepalived\r\n"
        b"To: ops@example.org, noc@example.org\r\n"
        b"\r\n"
        b"=> VRRP Instance is now owning VRRP VIPs <=\r\n"
        b"\r\n"
    )
    assert message(SETTINGS, instance_alert("VI_1", "MASTER"), WHEN) == expected


@pytest.mark.parametrize(("alert", "subject", "body"), [
    (instance_alert("VI_1", "BACKUP"), "VRRP Instance VI_1 - Entering BACKUP state",
     "=> VRRP Instance is no longer owning VRRP VIPs <="),
    (instance_alert("VI_1", "FAULT"), "VRRP Instance VI_1 - Entering FAULT state",
     "=> VRRP Instance is no longer owning VRRP VIPs <="),
    (group_alert("G1", "MASTER"), "VRRP Group G1 - Entering MASTER state",
     "=> All VRRP group instances are now in MASTER state <="),
])
def test_alert_texts(alert: Alert, subject: str, body: str) -> None:
    assert (alert.subject, alert.body) == (subject, body)


def test_a_body_line_starting_with_a_dot_is_stuffed() -> None:
    data = message(SETTINGS, Alert("s", ".\n..x"), WHEN)
    assert data.endswith(b"\r\n\r\n..\r\n...x\r\n\r\n")


def run_dialogue(replies: list[tuple[int, str]], recipients: tuple[str, ...] = ("a@b", "c@d")
                 ) -> tuple[SmtpDialogue, list[bytes]]:
    d = SmtpDialogue("lb1", "k@lab", recipients, b"DATA-BYTES\r\n")
    sent = [d.reply(code, text) for code, text in replies]
    return d, sent


def test_dialogue_speaks_helo_and_one_rcpt_per_recipient() -> None:
    d, sent = run_dialogue([(220, "hi"), (250, "ok"), (250, "ok"), (250, "ok"), (251, "fwd"),
                            (354, "go"), (250, "queued"), (221, "bye")])
    assert sent == [b"HELO lb1\r\n", b"MAIL FROM:<k@lab>\r\n", b"RCPT TO:<a@b>\r\n",
                    b"RCPT TO:<c@d>\r\n", b"DATA\r\n", b"DATA-BYTES\r\n.\r\n", b"QUIT\r\n", b""]
    assert d.done and d.finished


@pytest.mark.parametrize("bad_at", range(6))
def test_dialogue_refuses_an_unexpected_reply_at_each_step(bad_at: int) -> None:
    replies = [(220, ""), (250, ""), (250, ""), (250, ""), (354, ""), (250, "")]
    replies[bad_at] = (554, "no")
    with pytest.raises(SmtpError):
        run_dialogue(replies, ("a@b",))


def test_reply_parser_joins_multiline_replies_and_rejects_garbage() -> None:
    p = ReplyParser()
    assert p.feed(b"250-first\r\n250-sec") == []
    assert p.feed(b"ond\r\n250 last\r\n220 x\r\n") == [(250, "first\nsecond\nlast"), (220, "x")]
    with pytest.raises(SmtpError):
        ReplyParser().feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(SmtpError):
        ReplyParser().feed(b"2" * 70000)


class FlakyServer:
    """A fake delivery that fails ``failures`` times, then accepts; records when it was tried."""

    def __init__(self, failures: int, hang: float = 0.0) -> None:
        self.failures = failures
        self.hang = hang
        self.tries: list[float] = []
        self.accepted: list[bytes] = []

    async def __call__(self, settings: MailSettings, data: bytes) -> None:
        self.tries.append(trio.current_time())
        if self.hang:
            await trio.sleep(self.hang)
        if len(self.tries) <= self.failures:
            raise ConnectionRefusedError(111, "Connection refused")
        self.accepted.append(data)


async def test_a_server_that_is_down_is_retried_with_back_off_until_it_comes_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FlakyServer(failures=4)
    mailer = Mailer(SETTINGS, deliver=server, clock=lambda: WHEN)
    async with trio.open_nursery() as nursery:
        await nursery.start(mailer.run)
        t0 = trio.current_time()
        mailer.send(instance_alert("VI_1", "MASTER"))
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert [t - t0 for t in server.tries] == [0, 1, 3, 7, 15]
    assert len(server.accepted) == 1 and b"Entering MASTER state" in server.accepted[0]
    assert (mailer.counters.sent, mailer.counters.failed_attempts) == (1, 4)
    assert mailer.counters.delays == [15]


async def test_a_server_that_never_comes_up_is_given_up_and_the_next_alert_still_goes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FlakyServer(failures=3)
    mailer = Mailer(SETTINGS, deliver=server, max_attempts=3, clock=lambda: WHEN)
    async with trio.open_nursery() as nursery:
        await nursery.start(mailer.run)
        t0 = trio.current_time()
        mailer.send(instance_alert("VI_1", "BACKUP"))
        mailer.send(instance_alert("VI_1", "MASTER"))
        await trio.sleep(1000)
        nursery.cancel_scope.cancel()
    assert [t - t0 for t in server.tries] == [0, 1, 3, 3]
    assert mailer.counters.given_up == 1
    assert len(server.accepted) == 1 and b"MASTER" in server.accepted[0]


async def test_back_off_is_capped_at_a_minute(autojump_clock: trio.testing.MockClock) -> None:
    server = FlakyServer(failures=9)
    mailer = Mailer(SETTINGS, deliver=server, clock=lambda: WHEN)
    async with trio.open_nursery() as nursery:
        await nursery.start(mailer.run)
        mailer.send(instance_alert("VI_1", "MASTER"))
        await trio.sleep(1000)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(server.tries)]
    assert gaps == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert mailer.counters.sent == 1


async def test_a_full_queue_drops_and_counts_without_blocking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FlakyServer(failures=0, hang=10)
    mailer = Mailer(SETTINGS, deliver=server, queue_size=2, clock=lambda: WHEN)
    async with trio.open_nursery() as nursery:
        await nursery.start(mailer.run)
        t0 = trio.current_time()
        for n in range(6):
            mailer.send(Alert(f"alert {n}", "b"))
        assert trio.current_time() == t0  # send never waits
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    # One in delivery, two queued; the other three dropped.
    assert mailer.counters.dropped == 3
    assert [d.split(b"Subject: [lab_r1] ")[1][:7] for d in server.accepted] == [
        b"alert 0", b"alert 1", b"alert 2"]


async def test_date_is_the_time_of_the_event_and_reconfigure_applies_to_new_alerts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FlakyServer(failures=1)
    mailer = Mailer(SETTINGS, deliver=server, clock=lambda: WHEN)
    async with trio.open_nursery() as nursery:
        await nursery.start(mailer.run)
        mailer.send(Alert("one", "b"))
        mailer.configure(None)
        mailer.send(Alert("two", "b"))  # no mail configured any more: nothing
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert len(server.accepted) == 1
    assert b"Date: Sun, 29 Nov 2026 13:29:14 +0000" in server.accepted[0]


async def smtp_server(stream: trio.SocketStream, transcript: list[bytes], greeting: bytes
                      ) -> None:
    """A minimal SMTP server over a real socket: answers each command, keeps what it got."""
    await stream.send_all(greeting)
    buf = b""
    in_data = False
    while True:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        buf += chunk
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            transcript.append(line)
            if in_data:
                if line == b".":
                    in_data = False
                    await stream.send_all(b"250 2.0.0 queued\r\n")
            elif line == b"DATA":
                in_data = True
                await stream.send_all(b"354 go ahead\r\n")
            elif line == b"QUIT":
                await stream.send_all(b"221 bye\r\n")
                return
            else:
                await stream.send_all(b"250-hello\r\n250 ok\r\n")


async def test_deliver_over_a_real_socket() -> None:
    from pyalived.mail import deliver

    transcript: list[bytes] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(
            trio.serve_tcp, lambda s: smtp_server(s, transcript, b"220 sink ESMTP\r\n"), 0,
            host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        settings = MailSettings("127.0.0.1", port, "lb1", "k@lab", ("a@b",), 5.0, "r1")
        await deliver(settings, message(settings, instance_alert("VI_1", "FAULT"), WHEN))
        nursery.cancel_scope.cancel()
    assert transcript[:4] == [b"HELO lb1", b"MAIL FROM:<k@lab>", b"RCPT TO:<a@b>", b"DATA"]
    assert b"Subject: [r1] VRRP Instance VI_1 - Entering FAULT state" in transcript
    assert transcript[-2:] == [b".", b"QUIT"]


async def test_deliver_times_out_on_a_server_that_never_greets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from pyalived.mail import deliver

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(
            trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        settings = MailSettings("127.0.0.1", port, "lb1", "k@lab", ("a@b",), 7.0, "r1")
        t0 = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            await deliver(settings, b"x\r\n")
        assert trio.current_time() - t0 == pytest.approx(7.0)
        nursery.cancel_scope.cancel()


async def test_deliver_reports_a_refusing_server() -> None:
    from pyalived.mail import deliver

    transcript: list[bytes] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(
            trio.serve_tcp, lambda s: smtp_server(s, transcript, b"554 5.3.2 go away\r\n"), 0,
            host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        settings = MailSettings("127.0.0.1", port, "lb1", "k@lab", ("a@b",), 5.0, "r1")
        with pytest.raises(SmtpError, match="554"):
            await deliver(settings, b"x\r\n")
        nursery.cancel_scope.cancel()


async def test_stop_logs_the_alerts_not_sent(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    server = FlakyServer(failures=100)
    mailer = Mailer(SETTINGS, deliver=server, clock=lambda: WHEN)
    async with trio.open_nursery() as nursery:
        await nursery.start(mailer.run)
        mailer.send(Alert("one", "b"))
        mailer.send(Alert("two", "b"))
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert "stopping with 2 mail alert(s) not sent" in caplog.text
