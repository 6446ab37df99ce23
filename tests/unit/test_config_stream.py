"""The streaming load: lexer, tree builder and parser as one pass, same verdicts.

``load`` no longer lexes a whole file, then builds a whole tree, then parses
it: each stage feeds the next as it goes, with fast paths for the lines that
make up nearly all of a large file.  These tests hold the streamed pieces to
simple references of the stage-by-stage behaviour: the tree builder to the
token-list algorithm, the lexer's common-case split to ``split_words``, the
merged diagnostics to a single sink, the dotted-quad shortcut to ``ipaddress``.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from ipaddress import IPv4Address
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyalived.config import Severity, load
from pyalived.config.diagnostics import Category, Diagnostic, DiagnosticSink
from pyalived.config.lexer import Lexer, Token, lex, split_words
from pyalived.config.model import Location
from pyalived.config.tree import Node, TreeBuilder
from pyalived.config.values import _DOTTED_QUAD

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ---- the tree builder against the token-list algorithm --------------------------------

Shape = tuple[str, tuple[str, ...], int, "list[Shape] | None"]


def reference_tree(tokens: list[Token], errors: list[tuple[int, str]]) -> list[Shape]:
    """Statements of a token list, the way the tree was built before streaming."""
    pos = 0

    def block(opener: Token | None) -> list[Shape]:
        nonlocal pos
        nodes: list[Shape] = []
        while pos < len(tokens):
            tok = tokens[pos]
            if tok.is_close:
                pos += 1
                if opener is None:
                    errors.append((tok.location.line, "'}' without a matching '{'"))
                    continue
                return nodes
            if tok.is_open:
                pos += 1
                errors.append(
                    (tok.location.line, "'{' without a keyword before it; block skipped")
                )
                block(tok)
                continue
            pos += 1
            args: list[str] = []
            while (
                pos < len(tokens)
                and tokens[pos].line_id == tok.line_id
                and not tokens[pos].is_open
                and not tokens[pos].is_close
            ):
                args.append(tokens[pos].value)
                pos += 1
            children = None
            if pos < len(tokens) and tokens[pos].is_open:
                brace = tokens[pos]
                pos += 1
                children = block(brace)
            nodes.append((tok.value, tuple(args), tok.location.line, children))
        if opener is not None:
            errors.append((opener.location.line, "'{' is never closed (missing '}')"))
        return nodes

    return block(None)


def shape(node: Node) -> Shape:
    children = None if node.children is None else [shape(c) for c in node.children]
    return (node.name, node.values, node.line, children)


WORDS = ["a", "b", "vrrp_instance", "real_server", "1", "{", "}", '"{"', '"}"', '"x y"',
         "{{", "}}", "a{", "}b", "# c", "! c", "$V", "${V}", "\t", " "]


@st.composite
def brace_text(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(WORDS), max_size=60))
    seps = draw(st.lists(st.sampled_from([" ", "\n", "\n", ""]), min_size=len(parts),
                         max_size=len(parts)))
    prefix = draw(st.sampled_from(["", "$V=k { v \\\n  w }\n", "$V=}\n"]))
    return prefix + "".join(p + s for p, s in zip(parts, seps, strict=True))


@SETTINGS
@given(text=brace_text())
def test_streamed_tree_matches_the_token_list_algorithm(tmp_path: Path, text: str) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text(text)
    sink = DiagnosticSink()
    tokens = lex(str(conf), config_id="me", sink=sink)
    expected_errors: list[tuple[int, str]] = []
    expected = reference_tree(tokens, expected_errors)

    delivered: list[Node] = []
    builder = TreeBuilder(delivered.append)
    Lexer("me", DiagnosticSink(), on_line=builder.line).read(str(conf))
    builder.finish()
    assert [shape(n) for n in delivered] == expected
    assert [(d.location.line, d.message) for d in builder.errors.items] == expected_errors


def test_top_level_blocks_are_handed_over_while_reading(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text("".join(f"virtual_server 198.18.0.{i} 80 {{\n  weight 1\n}}\n"
                            for i in range(1, 6)))
    lines_read = 0
    seen_at: list[int] = []

    def on_line(file: str, lineno: int, words: list[str], quoted: list[bool] | None) -> None:
        nonlocal lines_read
        lines_read = lineno
        builder.line(file, lineno, words, quoted)

    builder = TreeBuilder(lambda node: seen_at.append(lines_read))
    Lexer("me", DiagnosticSink(), on_line=on_line).read(str(conf))
    builder.finish()
    # Each block is handed over when the next one starts, not after the last line.
    assert seen_at == [4, 7, 10, 13, 15]


# ---- the common-case split against split_words -----------------------------------------

LINE_CHARS = st.sampled_from([*"ab1.{}#!\t ", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u00a0",
                              "\x00", "\u00e9", "word"])


@SETTINGS
@given(line=st.lists(LINE_CHARS, max_size=40).map("".join))
def test_plain_lines_split_like_split_words(tmp_path: Path, line: str) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text(line + "\n", newline="")
    sink = DiagnosticSink()
    got = [(t.value, t.quoted) for t in lex(str(conf), config_id="me", sink=sink)]
    expected: list[tuple[str, bool]] = []
    pairs = split_words(line)
    if not (pairs and pairs[0] == ("include", False)):
        depth = 0
        for word, quoted in pairs:
            if word == "}" and not quoted:
                if depth == 0:
                    continue  # reported and dropped
                depth -= 1
            elif word == "{" and not quoted:
                depth += 1
            expected.append((word, quoted))
    assert got == expected


# ---- merged diagnostics against a single sink ------------------------------------------

KINDS = [(Severity.ERROR, Category.GENERAL), (Severity.WARNING, Category.GENERAL),
         (Severity.ERROR, Category.MISSING_FILE), (Severity.WARNING, Category.SCRIPT_SECURITY)]


def diagnostic(n: int, kind: int) -> Diagnostic:
    severity, category = KINDS[kind]
    return Diagnostic(severity, Location("k.conf", n), f"d{n}", category)


@settings(max_examples=500, deadline=None)
@given(
    stages=st.lists(st.lists(st.integers(0, len(KINDS) - 1), max_size=12), min_size=1,
                    max_size=4),
    limit=st.integers(1, 6),
)
def test_absorbed_stages_equal_one_sink(stages: list[list[int]], limit: int) -> None:
    direct = DiagnosticSink(limit=limit)
    merged = DiagnosticSink(limit=limit)
    n = 0
    buffers = []
    for i, kinds in enumerate(stages):
        buffer = merged if i == 0 else DiagnosticSink(limit=limit)
        for kind in kinds:
            n += 1
            direct._add(diagnostic(n, kind))
            buffer._add(diagnostic(n, kind))
        if i:
            buffers.append(buffer)
    for buffer in buffers:
        merged.absorb(buffer)
    assert merged.items == direct.items
    assert merged.suppressed == direct.suppressed
    assert merged.error_count == direct.error_count
    assert merged.has_errors == direct.has_errors
    if merged.items:
        assert merged.diagnostics() == direct.diagnostics()


# ---- values ----------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(text=st.lists(st.sampled_from([*"0123456789.", "25", "255", "256", "00", "\u0663", " ",
                                      "/", "a", ":"]),
                     max_size=12).map("".join))
def test_dotted_quad_shortcut_accepts_what_ipaddress_accepts(text: str) -> None:
    try:
        IPv4Address(text)
    except ValueError:
        valid = False
    else:
        valid = True
    assert (_DOTTED_QUAD.fullmatch(text) is not None) == valid


def lvs_config(checker_lines: str) -> str:
    rs = "".join(
        f"    real_server 198.19.0.{i} 80 {{\n        TCP_CHECK {{\n{checker_lines}"
        "        }\n    }\n"
        for i in range(1, 4)
    )
    return ("virtual_server 198.18.0.1 80 {\n    lb_algo rr\n    lb_kind NAT\n"
            f"    protocol TCP\n{rs}}}\n")


def test_equal_checker_options_are_one_object(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text(lvs_config("            connect_timeout 3\n            retry 2\n"))
    res = load(str(conf), config_id="me", interface_exists=lambda _n: True)
    assert res.config is not None and not res.diagnostics
    (vs,) = res.config.virtual_servers
    options = [rs.checkers[0].options for rs in vs.real_servers]
    assert options[0].connect_timeout == 3.0 and options[0].retry == 2
    assert all(o is options[0] for o in options)


def test_a_negative_zero_stays_negative(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text(lvs_config("            delay_before_retry -0\n"))
    res = load(str(conf), config_id="me", interface_exists=lambda _n: True)
    assert res.config is not None
    for rs in res.config.virtual_servers[0].real_servers:
        assert repr(rs.checkers[0].options.delay_before_retry) == "-0.0"


# ---- the process around a load ---------------------------------------------------------

BASE = """vrrp_instance VI_1 {
    interface eth0
    virtual_router_id 51
    virtual_ipaddress {
        198.18.0.100/24
    }
}
"""


def test_collector_is_paused_on_the_main_thread_only(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text(BASE)
    seen: list[bool] = []

    def exists(_name: str) -> bool:
        seen.append(gc.isenabled())
        return True

    assert gc.isenabled()
    load(str(conf), config_id="me", interface_exists=exists)
    assert gc.isenabled()
    worker = threading.Thread(
        target=lambda: load(str(conf), config_id="me", interface_exists=exists)
    )
    worker.start()
    worker.join()
    assert seen == [False, True]  # a reload's worker thread leaves the collector alone
    assert gc.isenabled()


def test_an_include_with_a_nul_byte_is_an_error(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    conf.write_bytes(BASE.encode() + b"include a\x00b.conf\n")
    res = load(str(conf), config_id="me", interface_exists=lambda _n: True)
    assert res.config is None and res.exit_code == 4
    (d,) = res.diagnostics
    assert d.location.line == BASE.count("\n") + 1
    assert "embedded null byte" in d.message and d.category is Category.MISSING_FILE


def test_loading_imports_no_daemon_library(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text(BASE)
    code = (
        "import sys\n"
        "from pyalived.config import load\n"
        f"load({str(conf)!r}, config_id='me', interface_exists=lambda _n: True)\n"
        "heavy = ('trio', 'pyroute2', 'prometheus_client', 'cryptography')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
