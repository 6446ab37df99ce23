"""HTTP_GET/SSL_GET ``regex``: the streaming search, the reader's early stop, the parser."""

from __future__ import annotations

import hashlib
import itertools
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import regex
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from pyalived.checkers.bodymatch import MAX_PENDING, RegexMatcher, compile_regex
from pyalived.checkers.compile import checker_specs
from pyalived.checkers.http import ResponseReader
from pyalived.checkers.policy import ProbeResult
from pyalived.checkers.scheduler import CallbackSink, CheckerScheduler
from pyalived.checkers.spec import (
    CheckerSpec,
    HttpGet,
    RealServerSpec,
    Timing,
    UrlSpec,
    VirtualServerSpec,
)
from pyalived.config import LoadResult, load, render


def verdict(pattern: bytes, chunks: list[bytes], lo: int = 0, hi: int | None = None) -> bool:
    m = RegexMatcher(regex.compile(pattern), lo, hi)
    for c in chunks:
        m.feed(c)
    m.finish()
    assert m.matched is not None
    return m.matched


def reference(pattern: bytes, body: bytes, lo: int = 0, hi: int | None = None) -> bool:
    """The verdict over the whole body at once: the leftmost match from ``lo`` on
    (none in a body shorter than ``lo``)."""
    if lo > len(body):
        return False
    m = regex.compile(pattern).search(body, lo)
    return m is not None and (hi is None or m.start() <= hi)


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    edges = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


PATTERNS = [
    rb"ab+c", rb"(?<=x)y", rb"foo(?!bar)", rb"^ab", rb"c$", rb"\bab\b", rb"a.{0,5}b",
    rb"(ab|b)c", rb"x*", rb"maintenance", rb"(?m)^ok$", rb"[0-9]{3}",
]


@settings(max_examples=300, deadline=None)
@given(
    pattern=st.sampled_from(PATTERNS),
    body=st.binary(max_size=40).map(lambda b: bytes(c % 12 for c in b)).map(
        lambda b: b.translate(bytes.maketrans(bytes(range(12)), b"abcxyfor\n 19"))
    ),
    cuts=st.lists(st.integers(0, 1000), max_size=8),
    lo=st.integers(0, 12),
    span=st.one_of(st.none(), st.integers(0, 30)),
)
def test_the_verdict_does_not_depend_on_how_the_body_is_split(
    pattern: bytes, body: bytes, cuts: list[int], lo: int, span: int | None
) -> None:
    hi = None if span is None else lo + span
    assert verdict(pattern, split(body, cuts), lo, hi) == reference(pattern, body, lo, hi)


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(0, 20000), max_size=6), at=st.integers(0, 9000))
def test_a_match_far_into_a_long_body_is_found_whatever_the_split(
    cuts: list[int], at: int
) -> None:
    body = b"." * at + b"<title>Down for maintenance</title>" + b"." * 9000
    chunks = split(body, cuts)
    assert verdict(rb"Down for maint\w+", chunks)
    assert not verdict(rb"Down for maint\w+", chunks, hi=at - 1) if at else True
    assert verdict(rb"(?<=<title>)Down", chunks, lo=at)


def test_a_match_split_between_two_reads_is_found() -> None:
    assert verdict(rb"service ok", [b"<p>service", b" ok</p>"])
    assert not verdict(rb"service ok", [b"<p>service", b" down</p>"])


def test_min_offset_is_where_a_match_may_start_and_lookbehind_sees_before_it() -> None:
    body = [b"ok....", b"ok"]
    assert not verdict(rb"ok.", body, lo=1)
    assert verdict(rb"(?<=\.)ok", body, lo=6)
    assert verdict(rb"ok", body, lo=6)
    assert not verdict(rb"ok", body, lo=7)  # a match must start at or after it
    assert not verdict(rb"ok", [b"ok"], lo=100)  # a body shorter than min_offset


def test_the_verdict_comes_as_soon_as_it_is_known() -> None:
    m = RegexMatcher(regex.compile(rb"ready"), 0, None)
    m.feed(b"status: ready" + b" " * 300)
    assert m.matched is True  # well before the end of the body
    m = RegexMatcher(regex.compile(rb"ready"), 0, 99)
    m.feed(b"x" * 99)
    assert m.matched is None  # "ready" could still start at 99
    m.feed(b"y")
    assert m.matched is False  # the window is passed: no need to read on
    m = RegexMatcher(regex.compile(rb"ready"), 0, 50)
    m.feed(b"x" * 60 + b"ready" + b"x" * 300)
    assert m.matched is False  # the leftmost match starts past the window


def test_a_match_at_the_end_of_what_arrived_waits_for_the_rest() -> None:
    m = RegexMatcher(regex.compile(rb"foo(?!bar)"), 0, None)
    m.feed(b"xxfoo")
    assert m.matched is None  # "bar" may follow
    m.feed(b"bar and nothing else")
    m.finish()
    assert m.matched is False


def test_only_what_can_still_matter_is_kept() -> None:
    m = RegexMatcher(regex.compile(rb"needle"), 0, None)
    for _ in range(200):
        m.feed(b"hay " * 1024)
    assert len(m._buf) <= 4096 + 4 * 1024
    m.feed(b"needle" + b" " * 300)
    assert m.matched is True


def test_a_partial_match_that_outgrows_the_cap_is_dropped_and_the_search_goes_on() -> None:
    m = RegexMatcher(regex.compile(rb"<a.*>"), 0, None)
    m.feed(b"<a")
    for _ in range(MAX_PENDING // 65536 + 2):
        m.feed(b"z" * 65536)
    assert m.discarded == 1
    assert len(m._buf) <= MAX_PENDING + 70000
    m.feed(b"<a>" + b" " * 300)
    assert m.matched is True


def test_options_map_to_flags_and_a_bad_pattern_is_refused() -> None:
    assert compile_regex("READY", ("caseless",)).search(b"ready")
    assert compile_regex("a.b", ("dotall",)).search(b"a\nb")
    assert not compile_regex("a.b").search(b"a\nb")
    assert compile_regex("^b", ("multiline",)).search(b"a\nb")
    assert compile_regex("a b # c", ("extended",)).search(b"ab")
    assert compile_regex("é").search("é".encode())
    with pytest.raises(ValueError, match="missing"):
        compile_regex("a(b")


# ---- the response reader ---------------------------------------------------------------

HEAD = b"HTTP/1.0 200 OK\r\nServer: t\r\n\r\n"


def reader(pattern: bytes, *, digest: bool = False, hi: int | None = None,
           statuses: tuple[int, ...] = (200,)) -> ResponseReader:
    return ResponseReader(
        want_digest=digest,
        matcher=RegexMatcher(regex.compile(pattern), 0, hi),
        status_ok=statuses.__contains__,
    )


def test_the_reader_is_satisfied_once_the_regex_verdict_is_known() -> None:
    r = reader(rb"ready")
    assert not r.feed(HEAD + b"<p>rea")
    assert r.feed(b"dy</p>" + b"." * 300)
    assert r.satisfied and not r.complete and r.matcher is not None and r.matcher.matched


def test_with_a_digest_the_whole_body_is_read() -> None:
    body = b"ready" + b"." * 1000
    r = reader(rb"ready", digest=True)
    r.feed(HEAD + body[:500])
    assert not r.satisfied and r.matcher is not None and r.matcher.matched
    r.feed(body[500:])
    r.feed_eof()
    assert r.hexdigest() == hashlib.md5(body).hexdigest()


def test_a_status_the_url_does_not_accept_ends_the_read_at_the_header() -> None:
    r = reader(rb"ready")
    assert r.feed(b"HTTP/1.0 503 Busy\r\n\r\nready")
    assert r.status == 503 and r.body_bytes == 0


def test_the_header_is_searched_too_and_offsets_count_from_the_status_line() -> None:
    r = reader(rb"Server: t")  # keepalived's subject starts at the status line
    r.feed(HEAD + b"." * 300)
    assert r.satisfied and r.matcher is not None and r.matcher.matched is True
    head = b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\n"
    for hi, found in ((len(head) + 3, False), (len(head) + 4, True)):  # inclusive
        r = reader(rb"Welcome", hi=hi)
        r.feed(head + b"<h1>Welcome")
        assert r.complete and r.matcher is not None and r.matcher.matched is found


def test_nothing_past_content_length_is_searched() -> None:
    r = reader(rb"tail")
    r.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nbodytail")
    assert r.complete and r.matcher is not None and r.matcher.matched is False


# ---- configuration -------------------------------------------------------------------

CONF = """\
virtual_server 198.18.0.1 80 {{
  lvs_sched rr
  lvs_method NAT
  protocol TCP
  real_server 198.18.0.2 80 {{
    HTTP_GET {{
      {checker}
      url {{
        path /
{url}
      }}
    }}
  }}
}}
"""


def run(tmp_path: Path, url: str, checker: str = "") -> LoadResult:
    p = tmp_path / "keepalived.conf"
    p.write_text(CONF.format(url=url, checker=checker))
    return load(str(p))


def the_url(res: LoadResult) -> UrlSpec:
    assert res.config is not None, render(res.diagnostics)
    spec = checker_specs(res.config)[0].real_servers[0].checkers[0]
    assert isinstance(spec, HttpGet)
    return spec.urls[0]


def test_regex_keywords_reach_the_checker(tmp_path: Path) -> None:
    res = run(tmp_path, """\
        regex "Service (is )?up"
        regex_no_match
        regex_options caseless dotall no_start_optimize
        regex_min_offset 10
        regex_max_offset 4000""", "fast_recovery")
    url = the_url(res)
    assert (url.regex, url.regex_no_match, url.regex_options) == (
        "Service (is )?up", True, ("caseless", "dotall", "no_start_optimize"))
    assert (url.regex_min_offset, url.regex_max_offset) == (10, 4000)
    assert res.config is not None
    spec = checker_specs(res.config)[0].real_servers[0].checkers[0]
    assert isinstance(spec, HttpGet) and spec.fast_recovery
    assert not [d for d in res.diagnostics if d.message.startswith("keyword")]


def messages(res: LoadResult) -> list[str]:
    return [f"{d.location.line}: {d.severity.name.lower()}: {d.message}" for d in res.diagnostics]


def test_a_bad_regex_refuses_the_configuration_with_its_line(tmp_path: Path) -> None:
    res = run(tmp_path, '        regex "a(b"')
    assert res.config is None
    assert "10: error: invalid regex 'a(b': missing ) at position 3" in messages(res)
    res = run(tmp_path, "        regex two words")
    assert res.config is None
    assert any("exactly one pattern" in m for m in messages(res))
    res = run(tmp_path, "        regex_max_offset -1\n        regex x")
    assert res.config is None
    assert any(m.startswith("10: error: regex_max_offset") for m in messages(res))


def test_regex_options_without_equivalent_and_unknown_ones_are_warned(tmp_path: Path) -> None:
    res = run(tmp_path, "        regex x\n        regex_options ungreedy bogus caseless")
    url = the_url(res)
    assert url.regex_options == ("caseless",)
    got = messages(res)
    assert any("'ungreedy' has no equivalent" in m for m in got)
    assert any("unknown option 'bogus'" in m for m in got)


def test_regex_settings_without_regex_and_a_reversed_window_are_dropped(tmp_path: Path) -> None:
    res = run(tmp_path, "        regex_no_match\n        regex_min_offset 3")
    url = the_url(res)
    assert (url.regex, url.regex_no_match, url.regex_min_offset) == (None, False, 0)
    assert any("regex_no_match, regex_min_offset without regex; ignored" in m
               for m in messages(res))
    res = run(tmp_path, "        regex x\n        regex_min_offset 9\n        regex_max_offset 3")
    url = the_url(res)
    assert (url.regex_min_offset, url.regex_max_offset) == (0, None)
    assert any("regex_min_offset 9 > regex_max_offset 3; both ignored" in m
               for m in messages(res))


def test_regex_stack_is_checked_then_ignored_with_the_reason(tmp_path: Path) -> None:
    res = run(tmp_path, "        regex x\n        regex_stack 100 200")
    the_url(res)
    assert any("JIT stack" in m and "warning" in m for m in messages(res))
    res = run(tmp_path, "        regex x\n        regex_stack 300 200")
    assert res.config is None


# ---- reload ----------------------------------------------------------------------------


class RegexProber:
    """Passes when the URL's regex is found in ``body``; records (time, regex) per probe."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls: list[tuple[float, str | None]] = []

    async def probe(self, spec: CheckerSpec, rs: RealServerSpec, step: int = 0) -> ProbeResult:
        assert isinstance(spec, HttpGet)
        url = spec.urls[step % len(spec.urls)]
        self.calls.append((trio.current_time(), url.regex))
        ok = verdict((url.regex or "").encode(), [self.body]) != url.regex_no_match
        return ProbeResult(ok, "Regex match" if ok else "Regex match failed")


async def test_a_reload_that_changes_the_regex_keeps_the_server_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def spec(pattern: str, no_match: bool = False) -> HttpGet:
        return HttpGet(urls=(UrlSpec("/", regex=pattern, regex_no_match=no_match),),
                       timing=Timing(delay_loop=5.0, warmup=0.0, retry=0))

    def server(check: HttpGet) -> RealServerSpec:
        return RealServerSpec(IPv4Address("198.18.0.2"), 80, 1, (check,))

    prober = RegexProber(b"<h1>Welcome</h1>")
    vs = VirtualServerSpec("vs", (server(spec("Welcome")),))
    events: list[tuple[float, bool]] = []
    sched = CheckerScheduler([vs], CallbackSink(
        lambda e: events.append((trio.current_time(), e.alive))), prober)
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep_until(12.0)
        # the operator rewrites the check: the same page must not show "maintenance"
        sched.update(vs, server(spec("maintenance", no_match=True)))
        await trio.sleep_until(22.0)
        sched.update(vs, server(spec("Goodbye")))  # a check this page fails
        await trio.sleep_until(27.0)
        nursery.cancel_scope.cancel()
    assert prober.calls == [(0.0, "Welcome"), (5.0, "Welcome"), (10.0, "Welcome"),
                            (15.0, "maintenance"), (20.0, "maintenance"), (25.0, "Goodbye")]
    assert events == [(0.0, True), (25.0, False)]  # no flap at either reload
