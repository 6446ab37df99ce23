"""Hostile configuration files: each of the reader's caps is a ``file:line`` error.

An operator (or an attacker with write access to an include directory) can put
anything in keepalived.conf.  Whatever it is, reading it must end quickly in a
verdict with a location, never a traceback, a hang or gigabytes of memory.  The
files here are the real pathological ones (10 MB of braces, a FIFO, /dev/zero,
a variable bomb, an include tree that fans out), read through ``load`` as
start-up and reload do and through ``pyalived -t`` as the operator does;
hypothesis adds random files made of keepalived's own words and of the
characters that matter to the lexer.
"""

from __future__ import annotations

import contextlib
import io
import os
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyalived.cli import main
from pyalived.config import LoadResult, Severity, load
from pyalived.config.diagnostics import MAX_DIAGNOSTICS, DiagnosticSink
from pyalived.config.lexer import DEFAULT_LIMITS, ReaderLimits, lex

BASE = """vrrp_instance VI_1 {
    interface eth0
    virtual_router_id 51
    priority 100
    virtual_ipaddress {
        198.18.0.100/24
    }
}
"""
BASE_LINES = BASE.count("\n")


def load_text(path: Path, text: str, limits: ReaderLimits = DEFAULT_LIMITS) -> LoadResult:
    path.write_text(text)
    return load(str(path), config_id="me", interface_exists=lambda _n: True, limits=limits)


def errors(res: LoadResult) -> list[str]:
    return [str(d) for d in res.diagnostics if d.severity is Severity.ERROR]


def refused_at(res: LoadResult, file: Path, line: int, needle: str) -> None:
    assert res.config is None
    assert any(
        d.severity is Severity.ERROR and d.location.file == str(file)
        and d.location.line == line and needle in d.message
        for d in res.diagnostics
    ), errors(res)


def check_cli(path: Path) -> tuple[int, str]:
    """``pyalived -t -f path`` in this process: exit status and what it printed."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        code = main(["-t", "-f", str(path), "-i", "me"])
    return code, err.getvalue()


# ---- the pathological files an attacker tried ---------------------------------------


def test_a_thousand_open_braces_on_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    res = load_text(conf, BASE + "{" * 1000 + "\n")
    refused_at(res, conf, BASE_LINES + 1, "nested deeper than 32 levels")


def test_a_thousand_open_braces_a_line_each(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    res = load_text(conf, BASE + "{\n" * 1000)
    refused_at(res, conf, BASE_LINES + 33, "nested deeper than 32 levels")


def test_ten_megabytes_of_braces_stop_at_once(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    for text, line, needle in (
        (BASE + "{" * 10_000_000, BASE_LINES + 1, "line longer than 65536"),
        (BASE + "}" * 10_000_000, BASE_LINES + 1, "line longer than 65536"),
        (BASE + "{\n" * 5_000_000, BASE_LINES + 33, "nested deeper"),
        # Extra closing braces are reported one by one until the error cap.
        (BASE + "}\n" * 5_000_000, BASE_LINES + 1 + DEFAULT_LIMITS.max_errors, "100 errors"),
    ):
        res = load_text(conf, text)
        refused_at(res, conf, line, needle)
        assert len(res.diagnostics) <= DEFAULT_LIMITS.max_errors + 2


def test_include_of_dev_zero_is_refused_without_reading(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    res = load_text(conf, BASE + "include /dev/zero\n")
    refused_at(res, conf, BASE_LINES + 1, "/dev/zero is not a regular file")


def test_include_of_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    conf = tmp_path / "k.conf"
    res = load_text(conf, BASE + f"include {fifo}\n")
    refused_at(res, conf, BASE_LINES + 1, "is not a regular file")


def test_include_of_a_directory_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    res = load_text(conf, BASE + f"include {tmp_path}\n")
    refused_at(res, conf, BASE_LINES + 1, "is not a regular file")


def test_a_glob_skips_what_is_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "b.conf")
    (tmp_path / "d" / "a.conf").write_text("# nothing\n")
    res = load_text(tmp_path / "k.conf", BASE + "include d/*.conf\n")
    assert res.config is not None and not res.diagnostics


def test_a_variable_expansion_bomb(tmp_path: Path) -> None:
    # $I would be 10^8 copies of 1,000 characters: 100 GB.
    bomb = "$A=" + "x" * 1000 + "\n" + "".join(
        f"${chr(66 + i)}=" + f"${{{chr(65 + i)}}}" * 10 + "\n" for i in range(8)
    )
    conf = tmp_path / "k.conf"
    res = load_text(conf, BASE + bomb + "$I\n")
    refused_at(res, conf, BASE_LINES + 10, "longer than 65536 characters")


def test_a_long_continued_variable(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    res = load_text(conf, BASE + "$V=\\\n" + ("y" * 1000 + " \\\n") * 100 + "end\n")
    refused_at(res, conf, BASE_LINES + 1, "variable V is longer than 65536")


def test_an_include_tree_that_fans_out(tmp_path: Path) -> None:
    # Not a loop, but 2^30 inclusions of one small file.
    for i in range(30):
        body = f"include fan{i + 1}.inc\ninclude fan{i + 1}.inc\n" if i < 29 else "# leaf\n"
        (tmp_path / f"fan{i}.inc").write_text(body)
    res = load_text(tmp_path / "k.conf", BASE + "include fan0.inc\n")
    assert res.config is None
    (err,) = errors(res)
    assert "more than 65536 configuration files opened" in err
    assert ".inc:" in err  # the include line where the budget ran out


def test_a_file_over_the_byte_budget_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.inc"
    with big.open("wb") as f:
        f.truncate(DEFAULT_LIMITS.max_bytes + 1)  # sparse: nothing is written, nor read
    conf = tmp_path / "k.conf"
    res = load_text(conf, BASE + "include big.inc\n")
    refused_at(res, conf, BASE_LINES + 1, f"over {DEFAULT_LIMITS.max_bytes} bytes")


def test_too_many_lines_and_words(tmp_path: Path) -> None:
    small = ReaderLimits(max_lines=50, max_tokens=40)
    conf = tmp_path / "k.conf"
    refused_at(load_text(conf, BASE + "\n" * 100, small), conf, 51, "more than 50 lines")
    # BASE has 14 words: the 41st is on the fifth line of six words.
    refused_at(load_text(conf, BASE + "a b c d e f\n" * 5, small), conf,
               BASE_LINES + 5, "more than 40 words")


def test_a_flood_of_warnings_is_counted_not_kept(tmp_path: Path) -> None:
    res = load_text(tmp_path / "k.conf", BASE + "no_such_keyword\n" * 5000)
    assert len(res.diagnostics) == MAX_DIAGNOSTICS + 1
    assert "4000 more diagnostic(s) not shown" in res.diagnostics[-1].message
    assert res.config is not None  # warnings alone do not refuse a configuration
    assert res.exit_code == 5


def test_the_sink_keeps_each_kind_of_diagnostic_past_its_cap(tmp_path: Path) -> None:
    sink = DiagnosticSink(limit=2)
    loc = load_text(tmp_path / "k.conf", BASE).config
    assert loc is not None
    where = loc.vrrp_instances[0].location
    for _ in range(3):
        sink.warning(where, "w")
    sink.error(where, "e")
    assert [d.severity for d in sink.items] == [Severity.WARNING] * 2 + [Severity.ERROR]
    assert sink.suppressed == 1 and sink.has_errors


def test_the_largest_real_configs_stay_well_inside_the_caps(tmp_path: Path) -> None:
    """37,205 real servers (keepalived's largest known users) read without complaint."""
    conf = tmp_path / "big.conf"
    with conf.open("w") as f:
        for n in range(37_205):
            if n % 37 == 0:
                if n:
                    f.write("}\n")
                f.write(f"virtual_server 198.18.{100 + n // 9250}.{n // 37 % 250 + 1} 80 {{\n"
                        "    delay_loop 6\n    lb_algo wrr\n    lb_kind NAT\n"
                        "    protocol TCP\n")
            f.write(f"    real_server 198.19.{n // 250}.{n % 250 + 1} 8080 {{\n"
                    "        weight 1\n        HTTP_GET {\n            url {\n"
                    "                path /health\n                status_code 200\n"
                    "            }\n            connect_timeout 3\n        }\n    }\n")
        f.write("}\n")
    sink = DiagnosticSink()
    tokens = lex(str(conf), config_id="me", sink=sink)
    assert not sink.items
    assert len(tokens) * 4 < DEFAULT_LIMITS.max_tokens
    assert conf.stat().st_size * 8 < DEFAULT_LIMITS.max_bytes


# ---- more than 255 virtual addresses (RFC 3768 §5.3.5: the count is one octet) -------


def vip_config(n: int) -> str:
    vips = "".join(f"        198.18.{1 + i // 250}.{1 + i % 250}/32\n" for i in range(n))
    return BASE.replace("        198.18.0.100/24\n", vips)


def test_vips_past_255_are_configured_as_excluded_with_a_warning(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    res = load_text(conf, vip_config(300))
    assert res.config is not None
    (inst,) = res.config.vrrp_instances
    assert len(inst.virtual_ipaddress) == 255
    assert len(inst.virtual_ipaddress_excluded) == 45
    assert str(inst.virtual_ipaddress_excluded[0].ip) == "198.18.2.6"
    (w,) = res.diagnostics
    assert w.severity is Severity.WARNING and w.location.line == 5 + 256
    assert "300 virtual addresses" in w.message and "excluded" in w.message
    assert res.exit_code == 5  # keepalived 2.2.7's -t also exits 5 on this warning


def test_255_vips_are_all_advertised(tmp_path: Path) -> None:
    res = load_text(tmp_path / "k.conf", vip_config(255))
    assert res.config is not None and not res.diagnostics
    assert len(res.config.vrrp_instances[0].virtual_ipaddress) == 255


# ---- pyalived -t on the same files ---------------------------------------------------


@pytest.fixture
def hostile_files(tmp_path: Path) -> Iterator[list[Path]]:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    texts = {
        "braces": BASE + "{" * 1000,
        "braces10m": BASE + "{\n" * 5_000_000,
        "closers10m": BASE + "}" * 10_000_000,
        "zero": BASE + "include /dev/zero\n",
        "fifo": BASE + f"include {fifo}\n",
        "bomb": BASE + "$A=" + "x" * 60_000 + "\n$A $A\n",
        "vips": vip_config(300),
    }
    paths = []
    for name, text in texts.items():
        p = tmp_path / f"{name}.conf"
        p.write_text(text)
        paths.append(p)
    yield paths


def test_config_test_gives_a_location_and_no_traceback(hostile_files: list[Path]) -> None:
    for path in hostile_files:
        code, out = check_cli(path)
        assert code in (4, 5), (path.name, out)
        assert "Traceback" not in out
        assert f"{path}:" in out, out  # every verdict names the file and the line


# ---- random files ---------------------------------------------------------------------

WORDS = [
    "vrrp_instance", "virtual_server", "real_server", "global_defs", "virtual_ipaddress",
    "interface", "eth0", "virtual_router_id", "51", "priority", "100", "state", "MASTER",
    "include", "*.conf", "/dev/zero", "pipe", "$X", "${X}", "$X=", "@me", "@^me", "\\",
    "{", "}", "{{", "}}", '"', "#", "!", "198.18.0.1", "vrrp_script", "TCP_CHECK",
    "authentication", "auth_pass", "track_script", "weight", "-300", "\t",
]


@st.composite
def config_text(draw: st.DrawFn) -> str:
    parts = draw(st.lists(
        st.one_of(
            st.sampled_from(WORDS),
            st.text(alphabet=string.printable + "\u00e9\u2028\x00", max_size=12),
        ),
        max_size=80,
    ))
    seps = draw(st.lists(st.sampled_from([" ", "\n", "\r\n", ""]), min_size=len(parts),
                         max_size=len(parts)))
    return "".join(p + s for p, s in zip(parts, seps, strict=True))


@st.composite
def config_tree(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A main file and up to three includes that may include each other."""
    names = ["k.conf", "a.inc", "b.inc", "c.inc"][: draw(st.integers(1, 4))]
    return [(name, draw(config_text())) for name in names]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(files=config_tree(), prefix=st.booleans())
def test_random_files_always_end_in_a_verdict(
    tmp_path: Path, files: list[tuple[str, str]], prefix: bool
) -> None:
    os.chdir(tmp_path)
    for name, text in files:
        (tmp_path / name).write_text((BASE if prefix and name == "k.conf" else "") + text)
    if not (tmp_path / "pipe").exists():
        os.mkfifo(tmp_path / "pipe")
    res = load(str(tmp_path / "k.conf"), config_id="me", interface_exists=lambda _n: True)
    assert res.exit_code in (0, 4, 5, 6)
    assert (res.config is None) == any(d.severity is Severity.ERROR for d in res.diagnostics)
    for d in res.diagnostics:
        assert d.location.line >= 0 and d.location.file
        assert str(d).startswith(f"{d.location.file}:{d.location.line}: ")
    if res.config is None:
        code, out = check_cli(tmp_path / "k.conf")
        assert code == res.exit_code and "Traceback" not in out
