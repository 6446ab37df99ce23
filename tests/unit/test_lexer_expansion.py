"""keepalived's expansions: ``~SEQ`` lines, variables inside words, pre-defined variables.

The expected words were read from keepalived 2.2.7 (``keepalived -t`` names
every unknown keyword it meets, after expansion, with its line); the last
test runs the real binary on the same files and compares.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyalived.config.diagnostics import DiagnosticSink, Severity
from pyalived.config.lexer import ReaderLimits, lex
from pyalived.config.parser import load
from tests.unit.test_samples import netns_with_eth0  # noqa: F401  (a fixture)


def words_of(
    tmp_path: Path, text: str, limits: ReaderLimits | None = None
) -> tuple[list[tuple[int, str]], DiagnosticSink]:
    p = tmp_path / "k.conf"
    p.write_text(text)
    sink = DiagnosticSink()
    if limits is None:
        toks = lex(str(p), config_id="me", sink=sink)
    else:
        toks = lex(str(p), config_id="me", sink=sink, limits=limits)
    return [(t.location.line, t.value) for t in toks], sink


def errors(sink: DiagnosticSink) -> list[str]:
    return [
        f"{d.location.line}: {d.message}"
        for d in sink.diagnostics()
        if d.severity is Severity.ERROR
    ]


# ---- ~SEQ ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seq", "values"),
    [
        ("~SEQ(A, 0, 2)", ["0", "1", "2"]),  # START END
        ("~SEQ(A, 3)", ["1", "2", "3"]),  # END: from 1
        ("~SEQ(A, -2)", ["-1", "-2"]),  # END < 0: from -1 down
        ("~SEQ(A, 0)", ["1", "0"]),  # END 0: from 1 down
        ("~SEQ(A, 5, -2, 1)", ["5", "3", "1"]),
        ("~SEQ(A, 1, 2, 6)", ["1", "3", "5"]),  # stops once past END
        ("~SEQ(A,1,1,2)", ["1", "2"]),
        ("~SEQ(A 1 2)", ["1", "2"]),  # blanks separate as commas do
        ("~SEQ (A, 1, 2)", ["1", "2"]),
        ("~SEQ(A, 010)", [str(i) for i in range(1, 9)]),  # C numbers: 010 is octal 8
        ("~SEQ(A, 0x3)", ["1", "2", "3"]),
        ("~SEQx(A, 0x9, 0x3, 0x10)", ["9", "c", "f"]),  # hexadecimal, no 0x
        ("~SEQx(A, 144, 16, 192)", ["90", "a0", "b0", "c0"]),
        ("~SEQ(A, 2, 2)", ["2"]),
    ],
)
def test_seq_forms(tmp_path: Path, seq: str, values: list[str]) -> None:
    toks, sink = words_of(tmp_path, f"x\n  {seq} v_$A\n")
    assert errors(sink) == []
    assert toks == [(1, "x")] + [(2, f"v_{v}") for v in values]


def test_seq_lines_are_whole_logical_lines(tmp_path: Path) -> None:
    # Each pass is one statement: keyword and values, on the ~SEQ line's number.
    # $N before "/" is not a use (keepalived): ${N} is.
    text = "virtual_ipaddress {\n~SEQ(N, 1, 3) 198.18.0.${N}/24 dev eth0 # c\n}\n"
    p = tmp_path / "k.conf"
    p.write_text(text)
    sink = DiagnosticSink()
    toks = lex(str(p), config_id="me", sink=sink)
    lines: dict[int, list[str]] = {}
    for t in toks:
        lines.setdefault(t.line_id, []).append(t.value)
    assert [v for v in lines.values() if v[0].startswith("198")] == [
        [f"198.18.0.{n}/24", "dev", "eth0"] for n in (1, 2, 3)
    ]
    assert {t.location.line for t in toks if t.value.startswith("198")} == {2}


def test_nested_seq_and_seq_from_a_variable(tmp_path: Path) -> None:
    text = (
        "$S=~SEQ(Z,2)\n"
        "~SEQ(K, 1, 2) ~SEQ(L, 1, 2) a_${K}_${L}\n"
        "$S z_$Z\n"  # a variable's value may be the ~SEQ; $Z takes each pass's value
        "~SEQ(E, 2) $S e_${E}_${Z}\n"
    )
    toks, sink = words_of(tmp_path, text)
    assert errors(sink) == []
    assert [w for _l, w in toks] == [
        "a_1_1", "a_1_2", "a_2_1", "a_2_2", "z_1", "z_2",
        "e_1_1", "e_1_2", "e_2_1", "e_2_2",
    ]  # fmt: skip


def test_seq_takes_variables_conditionals_and_keeps_its_last_value(tmp_path: Path) -> None:
    text = (
        "$N=2\n"
        "~SEQ(A, 1, $N) a_$A\n"  # a variable as a number, before "," or ")"
        "~SEQ(B,$N,3) b_$B\n"
        "@other ~SEQ(C, 2) c_$C\n"  # conditional line: dropped
        "~SEQ(D, 2) @other d_$D\n"  # conditional pass: dropped
        "~SEQ(F, 2) @me f_$F\n"
        "after_$B\n"  # the variable keeps the last value
        "~SEQ(G, 2)\n"  # nothing to repeat
    )
    toks, sink = words_of(tmp_path, text)
    assert errors(sink) == []
    assert [w for _l, w in toks] == ["a_1", "a_2", "b_2", "b_3", "f_1", "f_2", "after_3"]


def test_seq_repeats_a_multiline_variable(tmp_path: Path) -> None:
    text = (
        "$RS=\\\n"
        "real_server 198.18.0.${N} 80 { \\\n"
        "   weight ${N} \\\n"
        "}\n"
        "virtual_server 198.18.1.1 80 {\n"
        "~SEQ(N, 1, 2) $RS\n"
        "}\n"
    )
    toks, sink = words_of(tmp_path, text)
    assert errors(sink) == []
    assert [w for _l, w in toks][4:] == [
        "real_server", "198.18.0.1", "80", "{", "weight", "1", "}",
        "real_server", "198.18.0.2", "80", "{", "weight", "2", "}", "}",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("~SEQ(A, 1, 0, 2) x", "never reaches its end"),  # step 0
        ("~SEQ(A, 3, 1, 1) x", "never reaches its end"),  # wrong way
        ("~SEQ(A, a, 2) x", "'a' is not a number"),
        ("~SEQ(A) x", "1 to 3 numbers"),
        ("~SEQ(A, 1, 1, 2, 4) x", "1 to 3 numbers"),
        ("~SEQ(A, 1, 2 x", "no closing ')'"),
        ("~SEQ A, 1, 2) x", "needs '('"),
        ("~SEQx(A, -3) x", "only numbers >= 0"),
    ],
)
def test_bad_seq_is_an_error_on_its_line(tmp_path: Path, line: str, needle: str) -> None:
    toks, sink = words_of(tmp_path, f"a\n{line}\nb\n")
    (err,) = errors(sink)
    assert err.startswith("2: ") and needle in err, err
    assert toks == [(1, "a"), (3, "b")]  # the line is skipped, the rest read


def test_lowercase_seq_is_a_word(tmp_path: Path) -> None:
    toks, sink = words_of(tmp_path, "~seq(G, 2) x\n")
    assert errors(sink) == [] and [w for _l, w in toks] == ["~seq(G,", "2)", "x"]


def test_a_billion_step_seq_is_refused_at_once(tmp_path: Path) -> None:
    toks, sink = words_of(tmp_path, "a\n~SEQ(N, 1, 1000000000) x_$N\nb\n")
    (err,) = errors(sink)
    assert err.startswith("2: ~SEQ makes 1000000000 lines") and "not read" in err
    assert toks == [(1, "a")]


def test_nested_seq_stops_at_the_caps(tmp_path: Path) -> None:
    limits = ReaderLimits(max_lines=10_000, max_tokens=5_000)
    toks, sink = words_of(tmp_path, "~SEQ(A, 1000) ~SEQ(B, 1000) x_${A}_$B\n", limits)
    (err,) = errors(sink)
    assert err.startswith("1: ") and "not read" in err
    assert len(toks) <= 10_000


def test_seq_lines_count_against_the_line_cap(tmp_path: Path) -> None:
    limits = ReaderLimits(max_lines=100)
    toks, sink = words_of(tmp_path, "~SEQ(A, 50) x\n~SEQ(B, 60) y\n", limits)
    (err,) = errors(sink)
    assert err.startswith("2: ~SEQ makes 60 lines")
    assert len(toks) == 50


# ---- variables inside words ------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("foo_$X", "foo_1"),  # $NAME at the end of the line
        ("foo_$X bar", "foo_1"),  # before a blank
        ("foo_$X\ttab", "foo_1"),
        ("foo_$X#c", "foo_1"),  # the comment goes first
        ("foo_$X,", "foo_1,"),  # before "," or ")": as keepalived
        ("foo_$X)", "foo_1)"),
        ("foo_${X}_x", "foo_1_x"),  # ${NAME} anywhere
        ("k_${IF}.${NUM}", "k_eth.7"),
        ("k_$IF.$NUM", "k_$IF.7"),  # $IF is followed by ".": not a use
        ("k_$IF.${NUM}", "k_$IF.7"),
        ("k_$X$X", "k_$X1"),
        ("$X$X", "$X1"),
        ("c_$X;", "c_$X;"),
        ("c_$X/", "c_$X/"),
        ("c_$X:", "c_$X:"),
        ("c_$X-", "c_$X-"),
        ("c_$UNDEF", "c_$UNDEF"),
        ("${R2}_c", "$R_c"),  # the value "$R" is scanned again: $R_c is undefined
        ("$R2", "r_1"),
        ("v_${V}_z", "v_abc_z"),  # a definition's comment is not its value
        ("${_HASH}c", None),  # "#": a comment from there
        ("c${_BANG}", "c"),
        ("i_${_INSTANCE}", "i_me"),
        ("r_${_RANDOM 5 5}", "r_5"),
    ],
)
def test_variable_uses(tmp_path: Path, line: str, expected: str | None) -> None:
    head = "$X=1\n$IF=eth\n$NUM=7\n$R=r_$X\n$R2=$R\n$V=abc # x\n"
    toks, sink = words_of(tmp_path, head + line + "\n")
    assert errors(sink) == []
    assert toks[:1] == ([] if expected is None else [(7, expected)])


def test_pwd_is_the_directory_of_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "inc"
    sub.mkdir()
    (sub / "a.conf").write_text("p_${_PWD}\n")
    toks, _ = words_of(tmp_path, "p_${_PWD}\ninclude inc/a.conf\n")
    assert [w for _l, w in toks] == [f"p_{tmp_path}", f"p_{sub}"]


def test_multiline_value_only_at_the_end_of_a_line(tmp_path: Path) -> None:
    text = (
        "$M= \\\n"
        "m_$X \\\n"
        "   m2_${X} z\n"
        "$X=1\n"
        "c7 $M\n"  # first line joins this one, the others follow
        "c8 $M tail\n"  # not at the end: left as written
        "c9_${M}\n"
    )
    p = tmp_path / "k.conf"
    p.write_text(text)
    sink = DiagnosticSink()
    toks = lex(str(p), config_id="me", sink=sink)
    lines: dict[int, list[str]] = {}
    for t in toks:
        lines.setdefault(t.line_id, []).append(t.value)
    assert list(lines.values()) == [
        ["c7", "m_1"], ["m2_1", "z"], ["c8", "$M", "tail"], ["c9_m_1"], ["m2_1", "z"],
    ]  # fmt: skip


def test_multiline_value_lines_are_whole_lines(tmp_path: Path) -> None:
    # Definitions and conditionals inside a multi-line value work (man page).
    text = "$I=\\\n@me prio 130 \\\n@other prio 120 \\\n$Y=5 \\\nv ${Y}\n$I\n"
    toks, sink = words_of(tmp_path, text)
    assert errors(sink) == []
    assert [w for _l, w in toks] == ["prio", "130", "v", "5"]


def test_a_variable_that_is_a_conditional(tmp_path: Path) -> None:
    toks, _ = words_of(tmp_path, "$C=@other\n$C c20\n$D=@me\n$D c21\n")
    assert [w for _l, w in toks] == ["c21"]


def test_a_variable_that_uses_itself_is_refused(tmp_path: Path) -> None:
    toks, sink = words_of(tmp_path, "$A=${A}\nx ${A}\ny\n")
    (err,) = errors(sink)
    assert err.startswith("2: more than 65536 variables substituted")
    assert [w for _l, w in toks] == ["y"]


def test_a_multiline_variable_that_uses_itself_is_refused(tmp_path: Path) -> None:
    toks, sink = words_of(tmp_path, "$A=\\\nx \\\n$A\n$A\ny\n")
    (err,) = errors(sink)
    assert err.startswith("4: ") and "nested deeper than 32" in err
    assert [w for _l, w in toks][-1] == "y"


_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: not n.startswith("_")
)
_TEXT = st.text(alphabet="ab.-:/", max_size=4)


@settings(max_examples=60, deadline=None)
@given(
    name=_NAMES,
    value=st.text(alphabet="xyz019.", min_size=1, max_size=6),
    before=_TEXT,
    after=_TEXT,
)
def test_braced_variable_anywhere_in_a_word(
    tmp_path_factory: pytest.TempPathFactory, name: str, value: str, before: str, after: str
) -> None:
    d = tmp_path_factory.mktemp("v")
    toks, _sink = words_of(d, f"${name}={value}\nw{before}${{{name}}}{after}\n")
    assert toks == [(2, f"w{before}{value}{after}")]


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(-20, 20),
    step=st.integers(-7, 7).filter(lambda s: s != 0),
    end=st.integers(-20, 20),
    hexa=st.booleans(),
)
def test_seq_values_match_the_definition(
    tmp_path_factory: pytest.TempPathFactory, start: int, step: int, end: int, hexa: bool
) -> None:
    d = tmp_path_factory.mktemp("s")
    kind = "~SEQx" if hexa else "~SEQ"
    toks, sink = words_of(d, f"{kind}(V, {start}, {step}, {end}) w_$V\n")
    if (end - start) * step < 0 or (hexa and (start < 0 or end < 0)):
        assert len(errors(sink)) == 1 and toks == []
        return
    expected = list(range(start, end + (1 if step > 0 else -1), step))
    shown = [format(v, "x") if hexa else str(v) for v in expected]
    assert toks == [(1, f"w_{v}") for v in shown]


# ---- the reference: keepalived 2.2.7's -t ----------------------------------------

DIFF_CONFIGS = {
    "seq.conf": (
        "$N=2\n$S=~SEQ(Z,2)\n$Q=q\nglobal_defs {\n"
        "~SEQ(A, 0, 2) s1_$A\n~SEQ(B, 3) s2_${B}\n~SEQ(C, 5, -2, 1) s3_$C\n"
        "~SEQx(D, 0x9, 0x3, 0x10) s4_${D}\n~SEQ(E, -2) s5_$E\n  ~SEQ(G, 1, 2) s7_$G\n"
        "~SEQ(J, 0) s10_$J\n~SEQ(K, 1, 2) ~SEQ(L, 1, 2) s11_${K}_${L}\n"
        "~SEQ(M 1 2) s12_$M\n~SEQ(H, 1, $N) s8_$H\n~SEQ(I,$N,4) s9_$I\n"
        "~SEQ(O, 010) s13_$O\n$S z_$Z\n$S ${Q}_$Z\n~SEQ(P, 2) $S e_${P}_${Z}\n"
        "~SEQ(R, 2) @nothere r_$R\nafter_$O\n~seq(T, 2)\n}\n"
    ),
    "vars.conf": (
        "$X=1\n$IF=eth\n$NUM=7\n$R=r_$X\n$R2=$R\n$V=abc # x\n$W=abc#x\n"
        "$M= \\\nm_$X \\\n   m2_${X} z\n"
        "global_defs {\n"
        "foo_$X\nfoo_$X bar\nfoo_${X}_x\nk_$IF.$NUM\nk_${IF}.${NUM}\nk_$IF.${NUM}\n"
        "k_$X$X\n$X$X\nc1_$X#c\nc5_$X,\np1_$X)\np2_$X;\np3_$X/\np6_$X-\n"
        "c6_${V}_\nk_${W}_z\nc7 $M\nc8 $M tail\n$M\nc9_${M}\n${R2}_c10\n$R2\n"
        "${_HASH}c11\nc12${_BANG}\nc13_${_INSTANCE}\nc15_$_HASH\nc16_$UNDEF\n"
        "r_${_RANDOM 5 5}\n}\n"
    ),
    "multiline.conf": (
        # (Not compared: keepalived 2.2.7 crashes, after reading the whole file, on a
        # multi-line value holding @ lines; test_multiline_value_lines_are_whole_lines.)
        "$RS=\\\nrs_${N} \\\n w_${N}\n"
        "global_defs {\n~SEQ(N, 1, 2) $RS\npwd_${_PWD}\n}\n"
    ),
    "bad_seq.conf": (
        "global_defs {\n~SEQ(H, 1, 0, 2) s8_$H\n~SEQ(I, 3, 1, 1) s9_$I\n"
        "~SEQ(O, a, 2) s14_$O\n~SEQ(C) s3_$C\n~SEQ(F, 1, 2 s6_$F\n~SEQx(O, -3) s12_$O\n"
        "ok_1\n}\n"
    ),
    "clean.conf": (
        "$B=198.18.0\nglobal_defs {\n  router_id r_${_INSTANCE}\n}\n"
        "vrrp_instance V {\n  interface eth0\n  virtual_router_id 51\n  priority 100\n"
        "  virtual_ipaddress {\n    ~SEQ(N, 1, 3) ${B}.${N}/24\n"
        "    ~SEQx(H, 0xa, 0xc) fd00:198:18::${H}/64\n  }\n}\n"
    ),
}

_KA_UNKNOWN = re.compile(r"\(.*Line (\d+)\) Unknown keyword '(.*)'$")
_OUR_UNKNOWN = re.compile(r":(\d+): warning: unknown keyword (.*) in (global_defs|the top level)")
_ERROR_LINE = re.compile(r"\(.*Line (\d+)\)")


@pytest.mark.netns
@pytest.mark.interop
@pytest.mark.parametrize("name", sorted(DIFF_CONFIGS))
def test_expansion_matches_keepalived(
    netns_with_eth0: str,  # noqa: F811
    tmp_path: Path,
    name: str,
) -> None:
    """Exit code, the words expanded (every unknown keyword, on its line) and error lines."""
    assert shutil.which("keepalived") is not None
    conf = tmp_path / name
    conf.write_text(DIFF_CONFIGS[name])
    ref = subprocess.run(
        ["ip", "netns", "exec", netns_with_eth0, "keepalived", "-t", "-i", "me", "-f", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ours = load(str(conf), config_id="me", interface_exists=lambda n: n in ("eth0", "eth1"))
    assert ours.exit_code == ref.returncode, ref.stderr
    ref_lines = ref.stderr.splitlines()
    ref_unknown = [
        (int(m.group(1)), m.group(2)) for m in map(_KA_UNKNOWN.search, ref_lines) if m
    ]
    # keepalived repeats its errors for each of its processes; ours are said once.
    ref_errors = sorted(
        {int(m.group(1)) for line in ref_lines if "SEQ" in line if (m := _ERROR_LINE.search(line))}
    )
    our_unknown = []
    our_errors = []
    for d in ours.diagnostics:
        m = _OUR_UNKNOWN.search(f"x:{d.location.line}: warning: {d.message}")
        if d.severity is Severity.WARNING and m:
            our_unknown.append((d.location.line, m.group(2)))
        elif d.severity is Severity.ERROR:
            our_errors.append(d.location.line)
    assert our_unknown == ref_unknown
    assert our_errors == ref_errors
