"""DNS_CHECK, UDP_CHECK, PING_CHECK and SMTP_CHECK: parsing, defaults, codecs, retry timing;
and a real server whose only checker is not supported, which is never counted as up."""

from __future__ import annotations

import logging
import struct
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import dns.message
import dns.rcode
import pytest
import trio
import trio.testing

from pyalived.checkers.compile import checker_specs, ipvs_configs
from pyalived.checkers.netprobes import (
    ReplyReader,
    SmtpError,
    echo_request,
    icmp_checksum,
    parse_echo_reply,
    reply_matches,
)
from pyalived.checkers.policy import ProbeResult
from pyalived.checkers.probes import RealProber
from pyalived.checkers.scheduler import CallbackSink, CheckerScheduler, RealServerEvent
from pyalived.checkers.spec import (
    CheckerSpec,
    DnsCheck,
    FailedCheck,
    PingCheck,
    RealServerSpec,
    SmtpCheck,
    Timing,
    UdpCheck,
    VirtualServerSpec,
)
from pyalived.config import LoadResult, Severity, load, render
from pyalived.config.lvs_parse import hex_bytes
from pyalived.config.model import Config
from pyalived.mail import real_server_alert

VS = """virtual_server 198.18.0.1 53 {{
  lb_algo rr
  lb_kind NAT
  protocol UDP
  real_server 198.18.0.2 53 {{
{rs}
  }}
}}
"""


def run(tmp_path: Path, rs: str) -> LoadResult:
    p = tmp_path / "keepalived.conf"
    p.write_text(VS.format(rs=rs))
    return load(str(p), interface_exists={"eth0"}.__contains__)


def config(res: LoadResult) -> Config:
    assert res.config is not None, render(res.diagnostics)
    # notices (keepalived's deprecations that its -t does not count) are not problems
    assert all(d.severity is Severity.NOTICE for d in res.diagnostics), render(res.diagnostics)
    return res.config


def specs(res: LoadResult) -> tuple[CheckerSpec, ...]:
    (vs,) = checker_specs(config(res))
    (rs,) = vs.real_servers
    return rs.checkers


# ---- parsing and keepalived's defaults --------------------------------------------------


def test_dns_check_keywords_and_defaults(tmp_path: Path) -> None:
    res = run(tmp_path, """    DNS_CHECK {
      type mx
      name example.org
      connect_ip 198.18.0.12
      connect_port 5353
      bindto 198.18.0.3
      connect_timeout 2
    }
    DNS_CHECK {
    }""")
    dns1, dns2 = specs(res)
    assert isinstance(dns1, DnsCheck) and isinstance(dns2, DnsCheck)
    assert (dns1.type, dns1.name, dns1.connect_ip, dns1.connect_port, dns1.bindto,
            dns1.connect_timeout) == ("MX", "example.org", IPv4Address("198.18.0.12"), 5353,
                                      IPv4Address("198.18.0.3"), 2.0)
    # keepalived 2.2.7: type SOA, name ".", retry 3, delay_before_retry = delay_loop
    assert (dns2.type, dns2.name, dns2.connect_timeout) == ("SOA", ".", 5.0)
    assert dns2.effective_retry == 3
    assert dns2.effective_delay_before_retry == 60.0


def test_dns_check_delay_before_retry_follows_inherited_delay_loop(tmp_path: Path) -> None:
    res = run(tmp_path, "    delay_loop 7\n    DNS_CHECK {\n    }")
    (dns_check,) = specs(res)
    assert isinstance(dns_check, DnsCheck)
    assert dns_check.effective_delay_before_retry == 7.0


def test_udp_check_keywords(tmp_path: Path) -> None:
    res = run(tmp_path, """    UDP_CHECK {
      payload Ab12f 3 456 546443123
      require_reply 0102xX
      min_reply_length 2
      max_reply_length 40
      retry 0
    }
    UDP_CHECK {
    }""")
    udp, bare = specs(res)
    assert isinstance(udp, UdpCheck) and isinstance(bare, UdpCheck)
    # the man page's own example of HEX_STR
    assert udp.payload == bytes.fromhex("AB120F03450654644312 03".replace(" ", ""))
    assert (udp.require_reply, udp.reply, udp.reply_mask) == (
        True, b"\x01\x02\x00", b"\xff\xff\x00")
    assert (udp.min_reply_length, udp.max_reply_length, udp.effective_retry) == (2, 40, 0)
    assert (bare.payload, bare.require_reply, bare.min_reply_length, bare.max_reply_length) == (
        None, False, 0, 255)
    assert (bare.effective_retry, bare.effective_delay_before_retry) == (1, 1.0)


def test_require_reply_without_a_value(tmp_path: Path) -> None:
    (udp,) = specs(run(tmp_path, "    UDP_CHECK {\n      require_reply\n    }"))
    assert isinstance(udp, UdpCheck)
    assert (udp.require_reply, udp.reply) == (True, None)


def test_ping_and_smtp_checks(tmp_path: Path) -> None:
    res = run(tmp_path, """    PING_CHECK {
      connect_ip fd00:198:18::5
      connect_timeout 1
    }
    SMTP_CHECK {
      helo_name mail.example
      connect_port 2525
    }
    SMTP_CHECK {
    }""")
    ping, smtp, plain = specs(res)
    assert isinstance(ping, PingCheck) and ping.connect_ip == IPv6Address("fd00:198:18::5")
    assert isinstance(smtp, SmtpCheck) and (smtp.helo_name, smtp.connect_port) == (
        "mail.example", 2525)
    assert isinstance(plain, SmtpCheck)
    assert plain.helo_name == "smtpchecker.keepalived.org"


def test_smtp_host_blocks_are_one_checker_each(tmp_path: Path) -> None:
    res = run(tmp_path, """    SMTP_CHECK {
      helo_name h.example
      connect_port 2525
      retry 2
      host {
        connect_ip 198.18.0.21
      }
      host {
        connect_ip 198.18.0.22
        connect_port 25
        connect_timeout 2
      }
    }""")
    cfg = config(res)
    assert [(d.location.line, d.message) for d in res.diagnostics] == [
        (n, "SMTP_CHECK host blocks are deprecated; write one SMTP_CHECK per host")
        for n in (10, 13)
    ]
    (rs,) = cfg.virtual_servers[0].real_servers
    assert [c.location.line for c in rs.checkers] == [10, 13]
    first, second = specs(res)
    assert isinstance(first, SmtpCheck) and isinstance(second, SmtpCheck)
    assert (first.connect_ip, first.connect_port, first.connect_timeout) == (
        IPv4Address("198.18.0.21"), 2525, 5.0)
    assert (second.connect_ip, second.connect_port, second.connect_timeout) == (
        IPv4Address("198.18.0.22"), 25, 2.0)
    assert first.helo_name == second.helo_name == "h.example"
    assert first.effective_retry == second.effective_retry == 2


@pytest.mark.parametrize(
    ("rs", "line", "fragment"),
    [
        ("    DNS_CHECK {\n      type ANY\n    }", 7, "DNS_CHECK: unknown type 'ANY'"),
        ("    DNS_CHECK {\n      name a..b\n    }", 7, "is not a domain name"),
        ("    UDP_CHECK {\n      payload 12zz\n    }", 7, "payload '12zz' is not a hex string"),
        ("    UDP_CHECK {\n      require_reply 1g\n    }", 7, "is not a hex string"),
        ("    UDP_CHECK {\n      min_reply_length 9\n      max_reply_length 3\n    }", 6,
         "min_reply_length 9 is above max_reply_length 3"),
        ("    SMTP_CHECK {\n      host {\n        connect_ip 198.18.0.300\n      }\n    }", 8,
         "'198.18.0.300' is not an IP address"),
        ("    PING_CHECK {\n      helo_name x\n    }", 7, "unknown keyword helo_name"),
    ],
)
def test_bad_values_name_their_line(tmp_path: Path, rs: str, line: int, fragment: str) -> None:
    res = run(tmp_path, rs)
    assert any(d.location.line == line and fragment in d.message for d in res.diagnostics), (
        render(res.diagnostics))
    if "unknown keyword" not in fragment:
        assert res.config is None
        assert any(d.severity is Severity.ERROR for d in res.diagnostics)


# ---- a real server whose only checker is not supported ---------------------------------


@pytest.mark.parametrize("kind", ["BFD_CHECK"])
def test_only_checker_unsupported_is_never_up(tmp_path: Path, kind: str) -> None:
    res = run(tmp_path, f"    {kind} {{\n      name x\n    }}")
    assert res.config is not None
    (warning,) = res.diagnostics
    assert warning.location.line == 6 and f"checker {kind} is not supported yet" in warning.message
    (vs,) = checker_specs(res.config)
    (rs,) = vs.real_servers
    (failed,) = rs.checkers
    assert isinstance(failed, FailedCheck)
    assert failed.what == f"{kind} at {tmp_path / 'keepalived.conf'}:6"
    assert failed.timing.alpha  # starts down, never passes
    (svc,) = ipvs_configs(res.config)
    assert svc.real_servers[0].checked


def test_unsupported_checker_beside_a_supported_one_is_left_out(tmp_path: Path) -> None:
    res = run(tmp_path, "    BFD_CHECK {\n      name x\n    }\n    PING_CHECK {\n    }")
    assert res.config is not None
    (vs,) = checker_specs(res.config)
    assert [type(c) for c in vs.real_servers[0].checkers] == [PingCheck]


async def test_failed_check_keeps_the_server_down(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    failed = FailedCheck("BFD_CHECK at /etc/keepalived/keepalived.conf:6",
                         timing=Timing(delay_loop=5.0, warmup=0.0, alpha=True))
    rs = RealServerSpec(IPv4Address("198.18.0.2"), 53, 1, (failed,))
    events: list[tuple[float, RealServerEvent]] = []
    caplog.set_level(logging.INFO, logger="pyalived.checkers")
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        sink = CallbackSink(lambda e: events.append((trio.current_time() - t0, e)))
        await nursery.start(CheckerScheduler([VirtualServerSpec("vs", (rs,))], sink,
                                             RealProber()).run)
        await trio.sleep(60.0)
        nursery.cancel_scope.cancel()
    assert [(t, e.alive) for t, e in events] == [(0.0, False)]


# ---- codecs -----------------------------------------------------------------------------


def test_hex_strings() -> None:
    assert hex_bytes("Ab12f 3 456 546443123") == (
        bytes([0xAB, 0x12, 0x0F, 0x03, 0x45, 0x06, 0x54, 0x64, 0x43, 0x12, 0x03]),
        b"\xff" * 11,
    )
    assert hex_bytes("x1 Xf", wildcard=True) == (b"\x01\x0f", b"\x0f\x0f")
    assert hex_bytes("x1") is None
    assert hex_bytes("12 g") is None


def udp(**kw: object) -> UdpCheck:
    return UdpCheck(require_reply=True, **kw)  # type: ignore[arg-type]


def test_reply_matching() -> None:
    spec = udp(reply=b"\x01\x02\x00", reply_mask=b"\xff\xff\x00", min_reply_length=2,
               max_reply_length=5)
    assert reply_matches(spec, b"\x01\x02\x99") is None
    assert reply_matches(spec, b"\x01\x02") is None  # compared over the shorter
    assert reply_matches(spec, b"\x01\x03\x00") == "reply does not match require_reply"
    assert reply_matches(spec, b"\x01") == "reply of 1 bytes, not 2..5"
    assert reply_matches(spec, b"\x01\x02\x00\x00\x00\x00") == "reply of 6 bytes, not 2..5"
    assert reply_matches(udp(), b"anything") is None


def test_icmp_echo_codec() -> None:
    req = echo_request(False, 0x1234, 7, b"abc")
    assert req[0] == 8 and struct.unpack("!HH", req[4:8]) == (0x1234, 7)
    assert icmp_checksum(req) == 0  # a correct checksum sums to zero
    reply = bytes([0, 0]) + req[2:]
    assert parse_echo_reply(reply, v6=False, raw=False) == (0x1234, 7)
    ip_header = bytes([0x45]) + bytes(19)
    assert parse_echo_reply(ip_header + reply, v6=False, raw=True) == (0x1234, 7)
    assert parse_echo_reply(req, v6=False, raw=False) is None  # a request is not a reply
    unreachable = bytes([3, 3]) + req[2:]
    assert parse_echo_reply(unreachable, v6=False, raw=False) is None
    req6 = echo_request(True, 5, 6)
    assert req6[0] == 128
    assert parse_echo_reply(bytes([129, 0]) + req6[2:], v6=True, raw=True) == (5, 6)


def test_smtp_reply_reader() -> None:
    r = ReplyReader()
    assert r.feed(b"220-first line\r\n220-") is None
    assert r.feed(b"second\r\n220 ready\r\n") == (220, "ready")
    assert r.feed(b"250 ok\r\n") == (250, "ok")
    with pytest.raises(SmtpError, match="not an SMTP reply"):
        ReplyReader().feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(SmtpError, match="longer than"):
        ReplyReader(limit=10).feed(b"220" + b"x" * 20)


def test_dns_query_and_rcode_rule() -> None:
    query = dns.message.make_query(".", "SOA")
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.SERVFAIL)
    assert query.is_response(reply) and reply.rcode() == dns.rcode.SERVFAIL


async def test_failed_check_probe_says_why() -> None:
    rs = RealServerSpec(IPv4Address("198.18.0.2"), 53, 1, ())
    got = await RealProber().probe(FailedCheck("FILE_CHECK at k.conf:3"), rs)
    assert got == ProbeResult(False, "not supported here, so never counted as up: "
                                     "FILE_CHECK at k.conf:3")


# ---- retry timing -----------------------------------------------------------------------


class ScriptedProber:
    """Fails every probe after the first; records the virtual start times."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        self.starts.append(trio.current_time())
        return ProbeResult(len(self.starts) == 1, "NOERROR" if len(self.starts) == 1 else
                           "timeout")


async def test_dns_check_retries_three_times_at_delay_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """keepalived's DNS_CHECK: retry 3, delay_before_retry defaults to delay_loop."""
    spec = DnsCheck(timing=Timing(delay_loop=10.0, warmup=0.0))
    rs = RealServerSpec(IPv4Address("198.18.0.2"), 53, 1, (spec,))
    prober = ScriptedProber()
    events: list[tuple[float, bool]] = []
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        sink = CallbackSink(lambda e: events.append((trio.current_time() - t0, e.alive)))
        await nursery.start(CheckerScheduler([VirtualServerSpec("vs", (rs,))], sink,
                                             prober).run)
        await trio.sleep(55.0)
        nursery.cancel_scope.cancel()
    # OK at 0; fails at 10, retried at 20, 30, 40: down after the third retry
    assert [s - t0 for s in prober.starts] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert events == [(0.0, True), (40.0, False)]


# ---- reload -----------------------------------------------------------------------------


class KindProber:
    """Passes every check but the FailedCheck's (as RealProber does); records them."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        self.calls.append((trio.current_time(), spec.kind))
        if isinstance(spec, FailedCheck):
            return await RealProber().probe(spec, rs)
        return ProbeResult(True, "echo reply")


async def test_reload_from_an_unsupported_checker_to_ping_and_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An operator replaces the FILE_CHECK of a server kept down by a PING_CHECK (SIGHUP):
    it comes up on the first echo reply; going back keeps it down from its first check."""
    timing = Timing(delay_loop=10.0, warmup=0.0)
    failed = FailedCheck("FILE_CHECK at k.conf:6", timing=Timing(delay_loop=10.0, warmup=0.0,
                                                                alpha=True))
    ping = PingCheck(timing=timing)
    vs = VirtualServerSpec("vs", (RealServerSpec(IPv4Address("198.18.0.2"), 80, 1, (failed,)),))
    prober = KindProber()
    events: list[tuple[float, bool]] = []
    t0 = trio.current_time()
    sched = CheckerScheduler([vs], CallbackSink(
        lambda e: events.append((trio.current_time() - t0, e.alive))), prober)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(25.0)
        sched.update(vs, RealServerSpec(IPv4Address("198.18.0.2"), 80, 1, (ping,)))
        await trio.sleep(20.0)
        sched.update(vs, RealServerSpec(IPv4Address("198.18.0.2"), 80, 1, (failed,)))
        await trio.sleep(20.0)
        nursery.cancel_scope.cancel()
    calls = [(t - t0, kind) for t, kind in prober.calls]
    # the loop goes on at its delay_loop whichever checker is in it
    assert calls == [(0.0, "UNSUPPORTED"), (10.0, "UNSUPPORTED"), (20.0, "UNSUPPORTED"),
                     (30.0, "PING_CHECK"), (40.0, "PING_CHECK"),
                     (50.0, "UNSUPPORTED"), (60.0, "UNSUPPORTED")]
    assert events == [(0.0, False), (30.0, True), (50.0, False)]


@pytest.mark.parametrize("kind", ["DNS_CHECK", "UDP_CHECK", "PING_CHECK", "SMTP_CHECK"])
def test_mail_alert_names_the_checker(kind: str) -> None:
    alert = real_server_alert("[198.18.0.2]:udp:53", "[198.18.0.1]:udp:53", False, kind)
    word = kind.replace("_CHECK", "")
    assert alert.body == f"=> {word} CHECK failed on service <="
