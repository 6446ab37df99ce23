"""Lexer for keepalived.conf: files, includes, variables, conditionals -> tokens.

Theory of operation: keepalived's format is line oriented, and so is this
lexer.  Each physical line goes through these steps, in this order:

1. A line whose first word is ``@ID`` is kept only when ID equals the config
   id, a line starting ``@^ID`` only when it does not; the prefix is dropped.
   With no ``-i`` option the config id is the host name up to its first dot,
   as in keepalived.
2. ``$NAME=value`` defines a variable (a value ending in ``\\`` continues on
   the next line, so one definition can hold several lines).  Elsewhere
   ``$NAME`` and ``${NAME}`` are replaced by the value of a defined variable;
   an undefined name is left as written.
3. The line is split into words: ``"..."`` quotes a word that may hold
   spaces, ``#`` or ``!`` (outside quotes) start a comment that runs to the
   end of the line, and ``{`` and ``}`` are words of their own even when
   glued to another word.
4. ``include PATTERN`` is replaced by the tokens of every file matching the
   glob PATTERN, in sorted order.  A relative pattern is resolved against the
   directory of the file that holds the ``include`` line (measured with
   keepalived 2.2.7).  A missing file is an error; a pattern with glob
   characters that matches nothing is silently empty, as in keepalived.
   Include loops are errors.

Each token keeps the ``Location`` of the line it came from and the number of
the logical line it belongs to, which is what the parser uses to tell where a
statement ends.
"""

from __future__ import annotations

import glob
import os
import re
import socket
from dataclasses import dataclass, field

from pyalived.config.diagnostics import Category, DiagnosticSink
from pyalived.config.model import Location

MAX_INCLUDE_DEPTH = 32
_VAR_DEF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_VAR_USE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Token:
    value: str
    location: Location
    line_id: int  # tokens of one logical line share it
    quoted: bool = False

    @property
    def is_open(self) -> bool:
        return self.value == "{" and not self.quoted

    @property
    def is_close(self) -> bool:
        return self.value == "}" and not self.quoted


def default_config_id() -> str:
    """keepalived's default ``-i`` value: the host name up to its first dot."""
    return socket.gethostname().split(".", 1)[0]


def split_words(text: str) -> list[tuple[str, bool]]:
    """Split one line into ``(word, quoted)`` pairs, dropping any comment."""
    words: list[tuple[str, bool]] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c in "#!":
            break
        if c in "{}":
            words.append((c, False))
            i += 1
            continue
        if c == '"':
            end = text.find('"', i + 1)
            if end < 0:
                end = n  # an unterminated quote runs to the end of the line
            words.append((text[i + 1 : end], True))
            i = end + 1
            continue
        start = i
        while i < n and not text[i].isspace() and text[i] not in '{}#!"':
            i += 1
        words.append((text[start:i], False))
        if i < n and text[i] in "#!":
            break
    return words


@dataclass
class Lexer:
    config_id: str
    sink: DiagnosticSink
    variables: dict[str, str] = field(default_factory=dict)
    tokens: list[Token] = field(default_factory=list)
    _line_id: int = 0
    _stack: list[str] = field(default_factory=list)

    def lex_file(self, path: str, where: Location | None = None) -> None:
        """Append the tokens of ``path`` (``where``: the include line, if any)."""
        real = os.path.realpath(path)
        if real in self._stack:
            self.sink.error(where or Location(path, 0), f"include loop: {path} includes itself")
            return
        if len(self._stack) >= MAX_INCLUDE_DEPTH:
            self.sink.error(
                where or Location(path, 0), f"includes nested deeper than {MAX_INCLUDE_DEPTH}"
            )
            return
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            self.sink.error(
                where or Location(path, 0),
                f"configuration file {path} does not exist",
                Category.MISSING_FILE,
            )
            return
        except OSError as e:
            self.sink.error(
                where or Location(path, 0),
                f"cannot read configuration file {path}: {e.strerror or e}",
                Category.MISSING_FILE,
            )
            return
        self._stack.append(real)
        try:
            self._lex_text(path, text)
        finally:
            self._stack.pop()

    def _lex_text(self, path: str, text: str) -> None:
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            lineno = i + 1
            line = lines[i]
            i += 1
            loc = Location(path, lineno)
            kept = self._conditional(line)
            if kept is None:
                continue
            m = _VAR_DEF.match(kept.strip())
            if m:
                value = m.group(2)
                parts: list[str] = []
                while value.rstrip().endswith("\\"):
                    parts.append(value.rstrip()[:-1])
                    if i >= len(lines):
                        value = ""
                        break
                    value = lines[i]
                    i += 1
                parts.append(value)
                self.variables[m.group(1)] = "\n".join(p.strip() for p in parts)
                continue
            expanded = self._substitute(kept)
            for sub in expanded.split("\n"):
                self._line_id += 1
                words = split_words(sub)
                if words and words[0] == ("include", False):
                    if len(words) < 2:
                        self.sink.error(loc, "include needs a file name or pattern")
                    else:
                        for pattern, _q in words[1:]:
                            self._include(path, pattern, loc)
                    continue
                for value, quoted in words:
                    self.tokens.append(Token(value, loc, self._line_id, quoted))

    def _conditional(self, line: str) -> str | None:
        stripped = line.lstrip()
        if not stripped.startswith("@"):
            return line
        head, _, rest = stripped.partition(" ")
        if "\t" in head:
            head, _, more = head.partition("\t")
            rest = more + " " + rest
        if head.startswith("@^"):
            return rest if head[2:] != self.config_id else None
        return rest if head[1:] == self.config_id else None

    def _substitute(self, line: str) -> str:
        if "$" not in line:
            return line

        def repl(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2)
            if name in self.variables:
                return self.variables[name]
            return m.group(0)

        for _ in range(10):  # values may themselves use variables
            new = _VAR_USE.sub(repl, line)
            if new == line:
                break
            line = new
        return line

    def _include(self, including: str, pattern: str, loc: Location) -> None:
        if not os.path.isabs(pattern):
            pattern = os.path.join(os.path.dirname(including), pattern)
        if _GLOB_CHARS & set(pattern):
            for match in sorted(glob.glob(pattern)):
                if os.path.isfile(match):
                    self.lex_file(match, loc)
            return
        self.lex_file(pattern, loc)


def lex(path: str, *, config_id: str | None = None, sink: DiagnosticSink) -> list[Token]:
    """All tokens of ``path`` and the files it includes, in order."""
    lexer = Lexer(config_id if config_id is not None else default_config_id(), sink)
    lexer.lex_file(path)
    return lexer.tokens
