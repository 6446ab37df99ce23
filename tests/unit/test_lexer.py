"""Lexer tests: words, comments, quotes, braces, variables, conditionals, includes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyalived.config.diagnostics import Category, DiagnosticSink, Severity
from pyalived.config.lexer import default_config_id, lex, split_words


def words(text: str) -> list[str]:
    return [w for w, _q in split_words(text)]


def lex_text(
    tmp_path: Path, text: str, config_id: str | None = "me"
) -> tuple[list[tuple[str, int]], DiagnosticSink]:
    p = tmp_path / "k.conf"
    p.write_text(text)
    sink = DiagnosticSink()
    toks = lex(str(p), config_id=config_id, sink=sink)
    return [(t.value, t.location.line) for t in toks], sink


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a b  c", ["a", "b", "c"]),
        ("a # comment b", ["a"]),
        ("a ! comment b", ["a"]),
        ("ab#cd", ["ab"]),  # keepalived 2.2.7 cuts auth_pass ab#cd to "ab"
        ("# all comment", []),
        ('x "a b # not comment" y', ["x", "a b # not comment", "y"]),
        ('x "unterminated quote', ["x", "unterminated quote"]),
        ("name{", ["name", "{"]),
        ("{ a b }", ["{", "a", "b", "}"]),
        ("a}", ["a", "}"]),
        ("\tkey\tvalue ", ["key", "value"]),
    ],
)
def test_split_words(text: str, expected: list[str]) -> None:
    assert words(text) == expected


def test_quoted_flag() -> None:
    assert split_words('a "b"') == [("a", False), ("b", True)]
    assert split_words('"{"') == [("{", True)]


def test_tokens_keep_line_numbers(tmp_path: Path) -> None:
    toks, sink = lex_text(tmp_path, "a 1\n\n! c\nb {\n}\n")
    assert toks == [("a", 1), ("1", 1), ("b", 4), ("{", 4), ("}", 5)]
    assert not sink.items


def test_conditionals_with_explicit_id(tmp_path: Path) -> None:
    text = "@me a\n@other b\n@^me c\n@^other d\n  @me\te\n"
    toks, _ = lex_text(tmp_path, text, config_id="me")
    assert toks == [("a", 1), ("d", 4), ("e", 5)]


def test_conditionals_default_to_short_hostname(tmp_path: Path) -> None:
    me = default_config_id()
    assert "." not in me
    toks, _ = lex_text(tmp_path, f"@{me} yes\n@^{me} no\n", config_id=None)
    assert toks == [("yes", 1)]


def test_variables(tmp_path: Path) -> None:
    text = "$IF=eth0\n$N=51\ninterface $IF\nvrid ${N}x\nscript $HOME\n"
    toks, _ = lex_text(tmp_path, text)
    assert toks == [
        ("interface", 3),
        ("eth0", 3),
        ("vrid", 4),
        ("51x", 4),
        ("script", 5),
        ("$HOME", 5),  # undefined: left as written, like keepalived
    ]


def test_multiline_variable_keeps_lines_apart(tmp_path: Path) -> None:
    text = "$B=interface eth0 \\\n  priority 5\nx {\n$B\n}\n"
    p = tmp_path / "k.conf"
    p.write_text(text)
    sink = DiagnosticSink()
    toks = lex(str(p), config_id="me", sink=sink)
    body = [t for t in toks if t.value in ("interface", "eth0", "priority", "5")]
    assert [t.location.line for t in body] == [4, 4, 4, 4]
    assert body[0].line_id == body[1].line_id != body[2].line_id == body[3].line_id


def test_variable_inside_variable(tmp_path: Path) -> None:
    toks, _ = lex_text(tmp_path, "$A=1\n$B=x$A\nv $B\n")
    assert toks == [("v", 3), ("x1", 3)]


def test_include_relative_to_including_file_with_glob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.conf").write_text("bee\ninclude nested.inc\n")
    (tmp_path / "sub" / "a.conf").write_text("ay\n")
    (tmp_path / "sub" / "nested.inc").write_text("nested\n")
    (tmp_path / "nested.inc").write_text("wrong\n")
    (tmp_path / "main.conf").write_text("first\ninclude sub/*.conf\nlast\n")
    monkeypatch.chdir("/")  # relative to the file, not to the working directory
    sink = DiagnosticSink()
    toks = lex(str(tmp_path / "main.conf"), config_id="me", sink=sink)
    got = [(t.value, os.path.basename(t.location.file), t.location.line) for t in toks]
    assert got == [
        ("first", "main.conf", 1),
        ("ay", "a.conf", 1),
        ("bee", "b.conf", 1),
        ("nested", "nested.inc", 1),
        ("last", "main.conf", 3),
    ]
    assert not sink.items


def test_include_glob_matching_nothing_is_silent(tmp_path: Path) -> None:
    toks, sink = lex_text(tmp_path, "include none*.conf\nx\n")
    assert toks == [("x", 2)]
    assert not sink.items


def test_missing_include_is_an_error(tmp_path: Path) -> None:
    toks, sink = lex_text(tmp_path, "include nothere.conf\nx\n")
    assert toks == [("x", 2)]
    (d,) = sink.items
    assert d.severity is Severity.ERROR
    assert d.category is Category.MISSING_FILE
    assert d.location.line == 1 and "nothere.conf" in d.message


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("include b.conf\nx\n")
    (tmp_path / "b.conf").write_text("y\ninclude a.conf\n")
    sink = DiagnosticSink()
    toks = lex(str(tmp_path / "a.conf"), config_id="me", sink=sink)
    assert [t.value for t in toks] == ["y", "x"]
    (d,) = sink.items
    assert d.severity is Severity.ERROR and "loop" in d.message
    assert d.location.file.endswith("b.conf") and d.location.line == 2


def test_include_without_argument(tmp_path: Path) -> None:
    _, sink = lex_text(tmp_path, "include\n")
    (d,) = sink.items
    assert d.severity is Severity.ERROR and d.location.line == 1
