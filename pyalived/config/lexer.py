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

Hostile files: the reader is the same for ``-t``, start-up and a reload, and
it works in bounded time and memory whatever the file holds.  ``ReaderLimits``
caps the text read (all files together, counting what variable expansion
adds), the length of one line, the number of files opened (repeats
included, so an include tree that fans out cannot explode), the nesting depth
of ``{`` blocks, the number of tokens and the number of errors.  Each cap is
an ERROR at the ``file:line`` where it was reached, after which reading
stops; the configuration is then refused.  Files are read a line at a time,
and only regular files are read: an ``include`` of a FIFO, a device or a
directory is an ERROR (keepalived skips such files), so reading can never
block on a pipe nor run forever on ``/dev/zero``.  The braces are counted
here, as they are read: a ``}`` with no open block is reported and dropped,
so the tree builder only ever sees at most ``max_depth`` levels.
"""

from __future__ import annotations

import glob
import os
import re
import socket
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from pyalived.config.diagnostics import Category, DiagnosticSink
from pyalived.config.model import Location

MAX_INCLUDE_DEPTH = 32


@dataclass(frozen=True)
class ReaderLimits:
    """Hard caps on what one configuration read may cost (see the module docstring).

    The defaults leave ten times the room the largest known keepalived
    configuration needs (37,205 real servers: 6.7 MB, 323,000 lines, 629,000
    words), and keep the worst file within them to seconds and a few hundred MB.
    """

    max_bytes: int = 64 * 1024 * 1024  # text read from all files, plus what expansion adds
    max_lines: int = 4_000_000  # physical lines, all files together
    max_line: int = 64 * 1024  # characters in one line, before and after expansion
    max_files: int = 65_536  # files opened, the main one and every include, repeats counted
    max_depth: int = 32  # nesting of { } blocks
    max_tokens: int = 3_000_000  # words
    max_errors: int = 100  # reading stops at this many errors


DEFAULT_LIMITS = ReaderLimits()


class _Stop(Exception):
    """A limit was reached: the error is reported, nothing more is read."""


class _TooLong(Exception):
    """Variable expansion made a line longer than allowed."""
_VAR_DEF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_VAR_USE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
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
    limits: ReaderLimits = DEFAULT_LIMITS
    variables: dict[str, str] = field(default_factory=dict)
    tokens: list[Token] = field(default_factory=list)
    _line_id: int = 0
    _stack: list[str] = field(default_factory=list)
    _bytes: int = 0  # text charged against limits.max_bytes
    _files: int = 0  # files opened
    _lines_read: int = 0
    _depth: int = 0  # open { blocks

    def read(self, path: str) -> bool:
        """Append the tokens of ``path`` and its includes; False if a limit stopped it."""
        try:
            self.lex_file(path)
        except _Stop:
            return False
        return True

    def lex_file(self, path: str, where: Location | None = None) -> None:
        """Append the tokens of ``path`` (``where``: the include line, if any).

        Raises ``_Stop`` once a limit is reached (the error is already reported).
        """
        at = where or Location(path, 0)
        real = os.path.realpath(path)
        if real in self._stack:
            self.sink.error(at, f"include loop: {path} includes itself")
            return
        if len(self._stack) >= MAX_INCLUDE_DEPTH:
            self.sink.error(at, f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
            return
        self._files += 1
        if self._files > self.limits.max_files:
            self._stop(at, f"more than {self.limits.max_files} configuration files opened")
        f = self._open(path, at)
        if f is None:
            return
        self._stack.append(real)
        try:
            with f:
                self._lex_lines(path, self._lines(f, path))
        finally:
            self._stack.pop()

    def _open(self, path: str, at: Location) -> TextIO | None:
        """``path`` opened for reading if it is a regular file within the byte budget."""
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.sink.error(
                at, f"configuration file {path} does not exist", Category.MISSING_FILE
            )
            return None
        except OSError as e:
            self.sink.error(
                at,
                f"cannot read configuration file {path}: {e.strerror or e}",
                Category.MISSING_FILE,
            )
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.sink.error(
                    at,
                    f"configuration file {path} is not a regular file; not read",
                    Category.MISSING_FILE,
                )
                os.close(fd)
                return None
            if self._bytes + st.st_size > self.limits.max_bytes:
                os.close(fd)
                self._stop(
                    at,
                    f"configuration file {path} ({st.st_size} bytes) takes the configuration "
                    f"over {self.limits.max_bytes} bytes",
                )
            return open(fd, encoding="utf-8", errors="replace")
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise

    def _charge(self, size: int, loc: Location) -> None:
        self._bytes += size
        if self._bytes > self.limits.max_bytes:
            self._stop(loc, f"configuration text exceeds {self.limits.max_bytes} bytes")

    def _stop(self, loc: Location, message: str) -> None:
        self.sink.error(loc, f"{message}; the rest of the configuration is not read")
        raise _Stop

    def _lines(self, f: TextIO, path: str) -> Iterator[tuple[int, str]]:
        """``(line number, text)`` of each physical line, without its end-of-line.

        A line longer than ``max_line`` is reported and skipped (its numbers stay right).
        """
        limit = self.limits.max_line
        lineno = 0
        while True:
            if self.sink.error_count >= self.limits.max_errors:
                self._stop(Location(path, lineno + 1), f"{self.sink.error_count} errors")
            line = f.readline(limit + 1)
            if not line:
                return
            lineno += 1
            loc = Location(path, lineno)
            self._charge(len(line), loc)
            self._lines_read += 1
            if self._lines_read > self.limits.max_lines:
                self._stop(loc, f"more than {self.limits.max_lines} lines")
            if len(line) > limit:
                self.sink.error(loc, f"line longer than {limit} characters; skipped")
                while not line.endswith("\n"):
                    line = f.readline(limit)
                    if not line:
                        return
                    self._charge(len(line), loc)
                continue
            yield lineno, line.rstrip("\n")

    def _lex_lines(self, path: str, lines: Iterator[tuple[int, str]]) -> None:
        for lineno, line in lines:
            loc = Location(path, lineno)
            kept = self._conditional(line)
            if kept is None:
                continue
            m = _VAR_DEF.match(kept.strip())
            if m:
                self._define(m.group(1), m.group(2), lines, loc)
                continue
            expanded = self._substitute(kept, loc)
            if expanded is None:
                continue
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
                    # Interned: a large config repeats a few keywords very many times.
                    self._token(Token(sys.intern(value), loc, self._line_id, quoted))

    def _define(
        self, name: str, value: str, lines: Iterator[tuple[int, str]], loc: Location
    ) -> None:
        """``$NAME=value``, continued on the next line while it ends with a backslash."""
        parts: list[str] = []
        size = 0
        while value.rstrip().endswith("\\"):
            parts.append(value.rstrip()[:-1])
            size += len(parts[-1])
            if size > self.limits.max_line:
                self.sink.error(
                    loc, f"variable {name} is longer than {self.limits.max_line} characters"
                )
                return
            nxt = next(lines, None)
            if nxt is None:
                value = ""
                break
            value = nxt[1]
        parts.append(value)
        self.variables[name] = "\n".join(p.strip() for p in parts)

    def _token(self, token: Token) -> None:
        if token.is_open:
            self._depth += 1
            if self._depth > self.limits.max_depth:
                self._stop(
                    token.location, f"blocks nested deeper than {self.limits.max_depth} levels"
                )
        elif token.is_close:
            if self._depth == 0:
                self.sink.error(token.location, "'}' without a matching '{'")
                return
            self._depth -= 1
        if len(self.tokens) >= self.limits.max_tokens:
            self._stop(token.location, f"more than {self.limits.max_tokens} words")
        self.tokens.append(token)

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

    def _substitute(self, line: str, loc: Location) -> str | None:
        """``line`` with variables expanded; None (reported) if it grows past ``max_line``."""
        if "$" not in line:
            return line
        limit = self.limits.max_line
        original = len(line)

        for _ in range(10):  # values may themselves use variables
            size = len(line)

            def repl(m: re.Match[str]) -> str:
                nonlocal size
                name = m.group(1) or m.group(2)
                if name not in self.variables:
                    return m.group(0)
                value = self.variables[name]
                size += len(value) - len(m.group(0))
                if size > limit:
                    raise _TooLong
                return value

            try:
                new = _VAR_USE.sub(repl, line)
            except _TooLong:
                self.sink.error(
                    loc, f"variable expansion makes this line longer than {limit} characters"
                )
                return None
            if new == line:
                break
            line = new
        self._charge(max(0, len(line) - original), loc)
        return line

    def _include(self, including: str, pattern: str, loc: Location) -> None:
        if not os.path.isabs(pattern):
            pattern = os.path.join(os.path.dirname(including), pattern)
        if _GLOB_CHARS & set(pattern):
            for match in sorted(glob.iglob(pattern)):
                if os.path.isfile(match):
                    self.lex_file(match, loc)
            return
        self.lex_file(pattern, loc)


def lex(
    path: str,
    *,
    config_id: str | None = None,
    sink: DiagnosticSink,
    limits: ReaderLimits = DEFAULT_LIMITS,
) -> list[Token]:
    """All tokens of ``path`` and the files it includes, in order.

    When a limit stops the reading, the tokens read so far are returned and
    the sink holds the error.
    """
    lexer = Lexer(config_id if config_id is not None else default_config_id(), sink, limits)
    lexer.read(path)
    return lexer.tokens
