"""Lexer for keepalived.conf: files, includes, variables, conditionals -> tokens.

Theory of operation: keepalived's format is line oriented, and so is this
lexer.  Each physical line goes through these steps, in this order:

1. A line whose first word is ``@ID`` is kept only when ID equals the config
   id, a line starting ``@^ID`` only when it does not; the prefix is dropped.
   With no ``-i`` option the config id is the host name up to its first dot,
   as in keepalived.
2. The comment is cut (``#`` or ``!`` outside double quotes), then
   ``$NAME=value`` defines a variable (a value ending in ``\\`` continues on
   the next line, so one definition can hold several lines).  Elsewhere,
   with keepalived 2.2.7's rules, ``${NAME}`` is replaced anywhere and
   ``$NAME`` only where a blank, ``,``, ``)`` or the end of the line follows
   it; an undefined name is left as written.  A value is scanned again
   where it was put.  A multi-line value is used only at the end of a line:
   its first line joins the line, its other lines follow as lines of their
   own (each going through these steps).  ``_PWD``, ``_INSTANCE``,
   ``_HASH``, ``_BANG`` and ``${_RANDOM [MIN [MAX]]}`` are pre-defined.  A
   line a variable turned into ``@ID ...`` is a conditional line again.
   ``~SEQ(VAR, [START, [STEP,]] END) REST`` (``~SEQx``: VAR in hexadecimal)
   takes REST through these steps once per value of VAR; its lines count
   against the caps below, and one whose count alone goes over them is
   refused before anything is repeated.
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

The lexer hands its words over one logical line at a time (``LineSink``:
file, line number, words, which of them were quoted), which is what the tree
builder uses to tell where a statement ends; ``load`` streams them straight
into it, so the words of a large file never exist all at once.  ``lex``
collects them instead as ``Token`` objects, each with the ``Location`` of its
line and the number of its logical line.

Most lines of a real file hold no ``$``, ``@`` nor ``"``: they are split with
``str.split`` after cutting the comment and spacing out the braces, which
gives exactly the words of step 3.  The other lines take the general path,
steps 1 to 4 in full.  ``~`` sends a line there too.

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
import hashlib
import os
import random
import re
import socket
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from pyalived.config.diagnostics import Category, DiagnosticSink
from pyalived.config.model import Location

MAX_INCLUDE_DEPTH = 32
MAX_EXPANSION_DEPTH = 32  # ~SEQ and multi-line values inside each other


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

# The words of one logical line, never none: (file, line number, words, quoted flags
# or None when no word was quoted).  An unquoted "{" or "}" word is a brace.
LineSink = Callable[[str, int, list[str], "list[bool] | None"], None]


@dataclass(frozen=True)
class Source:
    """One input of a configuration, as ``sources_unchanged`` re-checks it.

    ``("file", path, digest)``: a file read, with the SHA-256 of its decoded
    text; ``("glob", pattern, matches)``: an include pattern and the regular
    files it matched; ``("scripts", inputs, findings)``: the scripts the
    configuration names and what was found of them on this host (see
    ``pyalived.config.script_check.scripts_unchanged``).  The reader's output
    is a function of these texts, matches and findings alone (and of the
    config id), so the same sources read again give the same configuration.
    """

    kind: str
    name: str
    value: str | tuple[str, ...]


def sources_unchanged(sources: Sequence[Source], limits: ReaderLimits = DEFAULT_LIMITS,
                      other: Callable[[Source], bool] = lambda source: False) -> bool:
    """True if every file still holds the same text and every glob the same matches,
    and ``other`` says so of every other source (the ``scripts`` one: pass
    ``pyalived.config.script_check.scripts_unchanged``; by default such a source
    counts as changed).

    Files are opened the way the reader opens them (regular files only,
    never waiting on a FIFO) and read no further than ``limits.max_bytes``.
    """
    budget = limits.max_bytes
    for source in sources:
        if source.kind not in ("file", "glob"):
            if not other(source):
                return False
            continue
        if source.kind == "glob":
            if _glob_files(source.name) != source.value:
                return False
            continue
        try:
            fd = os.open(source.name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return False
        with open(fd, encoding="utf-8", errors="replace") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            digest = hashlib.sha256()
            while chunk := f.read(1 << 20):
                budget -= len(chunk)
                if budget < 0:
                    return False
                digest.update(chunk.encode())
        if digest.hexdigest() != source.value:
            return False
    return True


def _glob_files(pattern: str) -> tuple[str, ...]:
    return tuple(m for m in sorted(glob.iglob(pattern)) if os.path.isfile(m))


class _Stop(Exception):
    """A limit was reached: the error is reported, nothing more is read."""


class _TooLong(Exception):
    """Variable expansion made a line longer than allowed."""


_VAR_DEF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_C_INTEGER = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\s*")


def _c_integer(text: str) -> int | None:
    """``text`` read as C's ``strtol(text, NULL, 0)`` reads a whole number, or None."""
    m = _C_INTEGER.fullmatch(text)
    if m is None:
        return None
    digits = m.group(2)
    if digits[:2] in ("0x", "0X"):
        n = int(digits[2:], 16)
    elif digits.startswith("0"):
        n = int(digits, 8)
    else:
        n = int(digits)
    return -n if m.group(1) == "-" else n


def _cut_comment(line: str) -> str:
    """``line`` without its comment (``#`` or ``!`` outside double quotes)."""
    if "#" not in line and "!" not in line:
        return line
    quoted = False
    for i, c in enumerate(line):
        if c == '"':
            quoted = not quoted
        elif not quoted and c in "#!":
            return line[:i]
    return line
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


class Lexer:
    """Reads a file and its includes, handing each logical line's words to ``on_line``.

    Without ``on_line`` the words are collected in ``tokens``.
    """

    def __init__(
        self,
        config_id: str,
        sink: DiagnosticSink,
        limits: ReaderLimits = DEFAULT_LIMITS,
        on_line: LineSink | None = None,
    ) -> None:
        self.config_id = config_id
        self.sink = sink
        self.limits = limits
        self.variables: dict[str, str] = {}
        self.tokens: list[Token] = []
        self._on_line: LineSink = on_line if on_line is not None else self._collect
        self._line_id = 0
        self._stack: list[str] = []
        self._bytes = 0  # text charged against limits.max_bytes
        self._files = 0  # files opened
        self._lines_read = 0
        self._depth = 0  # open { blocks
        self._words = 0  # words handed over
        self.sources: list[Source] = []  # every file read and glob expanded

    def read(self, path: str) -> bool:
        """Hand over the words of ``path`` and its includes; False if a limit stopped it."""
        try:
            self.lex_file(path)
        except _Stop:
            return False
        return True

    def lex_file(self, path: str, where: Location | None = None) -> None:
        """Hand over the words of ``path`` (``where``: the include line, if any).

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
        digest = hashlib.sha256()
        try:
            with f:
                self._lex_lines(path, self._lines(f, path, digest))
        finally:
            self._stack.pop()
        self.sources.append(Source("file", path, digest.hexdigest()))

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

    def _lines(self, f: TextIO, path: str, digest: Any) -> Iterator[tuple[int, str]]:
        """``(line number, text)`` of each physical line, its end-of-line included.

        A line longer than ``max_line`` is reported and skipped (its numbers stay right).
        """
        limits = self.limits
        limit = limits.max_line
        max_bytes = limits.max_bytes
        max_lines = limits.max_lines
        max_errors = limits.max_errors
        sink = self.sink
        readline = f.readline
        update = digest.update
        lineno = 0
        while True:
            if sink.error_count >= max_errors:
                self._stop(Location(path, lineno + 1), f"{sink.error_count} errors")
            line = readline(limit + 1)
            if not line:
                return
            update(line.encode())
            lineno += 1
            size = len(line)
            self._bytes += size
            if self._bytes > max_bytes:
                self._stop(
                    Location(path, lineno), f"configuration text exceeds {max_bytes} bytes"
                )
            self._lines_read += 1
            if self._lines_read > max_lines:
                self._stop(Location(path, lineno), f"more than {max_lines} lines")
            if size > limit:
                loc = Location(path, lineno)
                sink.error(loc, f"line longer than {limit} characters; skipped")
                while not line.endswith("\n"):
                    line = readline(limit)
                    if not line:
                        return
                    update(line.encode())
                    self._charge(len(line), loc)
                continue
            yield lineno, line

    def _lex_lines(self, path: str, lines: Iterator[tuple[int, str]]) -> None:
        on_line = self._on_line
        max_tokens = self.limits.max_tokens
        max_depth = self.limits.max_depth
        for lineno, line in lines:
            if (
                "{" not in line
                and "}" not in line
                and "#" not in line
                and "!" not in line
                and "$" not in line
                and "@" not in line
                and '"' not in line
                and "~" not in line
            ):
                # Words and white space only (its end-of-line included): the usual line.
                self._line_id += 1
                words = line.split()
                if not words:
                    continue
                if words[0] == "include":
                    self._include_words(path, lineno, words)
                    continue
                if self._words + len(words) > max_tokens:
                    self._too_many_words(path, lineno, words, None)
                self._words += len(words)
                on_line(path, lineno, words, None)
                continue
            if "$" in line or "@" in line or '"' in line or "~" in line:
                self._general_line(path, lineno, line.rstrip("\n"), lines)
                continue
            # No variable, conditional nor quote (see the module docstring).
            if "#" in line or "!" in line:
                cut = line.find("#")
                bang = line.find("!")
                if cut < 0 or 0 <= bang < cut:
                    cut = bang
                line = line[:cut]
            self._line_id += 1
            words = line.replace("{", " { ").replace("}", " } ").split()
            if not words:
                continue
            if words[0] == "include":
                self._include_words(path, lineno, words)
                continue
            # Only opening or only closing braces, within the caps: counted at once.
            if self._words + len(words) <= max_tokens:
                if "}" not in line:
                    depth = self._depth + line.count("{")
                    if depth <= max_depth:
                        self._depth = depth
                        self._words += len(words)
                        on_line(path, lineno, words, None)
                        continue
                elif "{" not in line:
                    depth = self._depth - line.count("}")
                    if depth >= 0:
                        self._depth = depth
                        self._words += len(words)
                        on_line(path, lineno, words, None)
                        continue
            self._braces(path, lineno, words, None)

    def _general_line(
        self, path: str, lineno: int, line: str, lines: Iterator[tuple[int, str]]
    ) -> None:
        """Steps 1 to 4 of the module docstring, for a line the common case does not cover."""
        self._logical(path, lineno, line, lines, 0)

    def _logical(
        self, path: str, lineno: int, line: str, lines: Iterator[tuple[int, str]], depth: int
    ) -> None:
        """One logical line: a physical one, a ``~SEQ`` pass or a line of a multi-line value."""
        loc = Location(path, lineno)
        if depth > MAX_EXPANSION_DEPTH:
            self.sink.error(
                loc,
                f"~SEQ and multi-line variables nested deeper than {MAX_EXPANSION_DEPTH} "
                "levels (a variable that uses itself?); line skipped",
            )
            return
        kept = self._conditional(_cut_comment(line))
        if kept is None:
            return
        m = _VAR_DEF.match(kept.strip())
        if m:
            self._define(m.group(1), m.group(2), lines, loc)
            return
        if kept.lstrip().startswith("~SEQ"):
            self._sequence(path, lineno, kept.strip(), lines, depth)
            return
        done = self._substitute(kept.rstrip(), loc, path)
        if done is None:
            return
        expanded, more = done
        if expanded.lstrip().startswith("@"):  # a variable's value may be a conditional
            cond = self._conditional(expanded)
            if cond is None:
                return
            expanded = cond
        if expanded.lstrip().startswith("~SEQ"):
            # A variable made the line a ~SEQ: as in keepalived, the variables of
            # what follows the first word take each pass's values.
            head, _, tail = kept.strip().partition(" ")
            first = self._substitute(head, loc, path)
            if first is not None and first[0].lstrip().startswith("~SEQ") and not first[1]:
                expanded = first[0] + " " + tail
            self._sequence(path, lineno, expanded.strip(), lines, depth)
        else:
            self._words_of(path, lineno, expanded)
        for sub in more:
            self._logical(path, lineno, sub, lines, depth + 1)

    def _words_of(self, path: str, lineno: int, text: str) -> None:
        self._line_id += 1
        pairs = split_words(text)
        if not pairs:
            return
        words = [w for w, _q in pairs]
        if pairs[0] == ("include", False):
            self._include_words(path, lineno, words)
            return
        quoted = [q for _w, q in pairs]
        self._braces(path, lineno, words, quoted if any(quoted) else None)

    def _sequence(
        self, path: str, lineno: int, text: str, lines: Iterator[tuple[int, str]], depth: int
    ) -> None:
        """``~SEQ(VAR, START, STEP, END) REST``: REST once per value, VAR set to it."""
        loc = Location(path, lineno)
        seq = self._parse_sequence(text, loc, path)
        if seq is None:
            return
        name, start, step, end, hexa, rest = seq
        count = (end - start) // step + 1
        lines_left = self.limits.max_lines - self._lines_read
        bytes_left = self.limits.max_bytes - self._bytes
        if count > lines_left or count * (len(rest) + 1) > bytes_left:
            self._stop(
                loc,
                f"~SEQ makes {count} lines; the configuration may hold {self.limits.max_lines} "
                f"lines and {self.limits.max_bytes} bytes in all",
            )
        value = start
        for _ in range(count):
            self._lines_read += 1
            self._charge(len(rest) + 1, loc)
            self.variables[name] = format(value, "x") if hexa else str(value)
            self._logical(path, lineno, rest, lines, depth + 1)
            value += step

    def _parse_sequence(
        self, text: str, loc: Location, path: str
    ) -> tuple[str, int, int, int, bool, str] | None:
        """(variable, start, step, end, hexadecimal, rest) of a ``~SEQ`` line; None if reported."""
        hexa = text.startswith("~SEQx")
        head = text[5:] if hexa else text[4:]
        head = head.lstrip(" \t")
        shown = text if len(text) <= 200 else text[:200] + "..."
        if not head.startswith("("):
            self.sink.error(loc, f"~SEQ needs '(' after it: {shown!r}; line skipped")
            return None
        close = head.find(")")
        if close < 0:
            self.sink.error(loc, f"~SEQ has no closing ')': {shown!r}; line skipped")
            return None
        params = [p for p in re.split(r"[\s,]+", head[1:close]) if p]
        rest = head[close + 1 :]
        if not 2 <= len(params) <= 4:
            self.sink.error(
                loc,
                f"~SEQ takes a variable and 1 to 3 numbers (END, START END or START STEP "
                f"END): {shown!r}; line skipped",
            )
            return None
        numbers: list[int] = []
        for p in params[1:]:
            if "$" in p:
                done = self._substitute(p, loc, path)
                if done is None:
                    return None
                p = done[0]
            n = _c_integer(p)
            if n is None:
                self.sink.error(loc, f"~SEQ value {p!r} is not a number: {shown!r}; line skipped")
                return None
            numbers.append(n)
        if len(numbers) == 1:
            end = numbers[0]
            start = -1 if end < 0 else 1
            step = 1 if end >= start else -1
        elif len(numbers) == 2:
            start, end = numbers
            step = 1 if end >= start else -1
        else:
            start, step, end = numbers
        if step == 0 or (end - start) * step < 0:
            self.sink.error(
                loc,
                f"~SEQ never reaches its end from its start with step {step}: {shown!r}; "
                "line skipped",
            )
            return None
        if hexa and (start < 0 or end < 0):
            self.sink.error(loc, f"~SEQx takes only numbers >= 0: {shown!r}; line skipped")
            return None
        return params[0], start, step, end, hexa, rest

    def _include_words(self, path: str, lineno: int, words: list[str]) -> None:
        loc = Location(path, lineno)
        if len(words) < 2:
            self.sink.error(loc, "include needs a file name or pattern")
            return
        for pattern in words[1:]:
            self._include(path, pattern, loc)

    def _braces(
        self, path: str, lineno: int, words: list[str], quoted: list[bool] | None
    ) -> None:
        """Hand over a line that may hold braces, counting them one word at a time."""
        if "{" not in words and "}" not in words:
            if self._words + len(words) > self.limits.max_tokens:
                self._too_many_words(path, lineno, words, quoted)
            self._words += len(words)
            self._on_line(path, lineno, words, quoted)
            return
        limits = self.limits
        kept: list[str] = []
        kept_quoted: list[bool] = []
        for i, value in enumerate(words):
            q = quoted is not None and quoted[i]
            if value == "{" and not q:
                self._depth += 1
                if self._depth > limits.max_depth:
                    self._flush(path, lineno, kept, kept_quoted, quoted)
                    self._stop(
                        Location(path, lineno),
                        f"blocks nested deeper than {limits.max_depth} levels",
                    )
            elif value == "}" and not q:
                if self._depth == 0:
                    self.sink.error(Location(path, lineno), "'}' without a matching '{'")
                    continue
                self._depth -= 1
            if self._words >= limits.max_tokens:
                self._flush(path, lineno, kept, kept_quoted, quoted)
                self._stop(Location(path, lineno), f"more than {limits.max_tokens} words")
            self._words += 1
            kept.append(value)
            kept_quoted.append(q)
        self._flush(path, lineno, kept, kept_quoted, quoted)

    def _flush(
        self,
        path: str,
        lineno: int,
        words: list[str],
        kept_quoted: list[bool],
        quoted: list[bool] | None,
    ) -> None:
        if words:
            self._on_line(path, lineno, words, kept_quoted if quoted is not None else None)

    def _too_many_words(
        self, path: str, lineno: int, words: list[str], quoted: list[bool] | None
    ) -> None:
        """Hand over the words that still fit, then stop at this line."""
        room = self.limits.max_tokens - self._words
        if room > 0:
            self._words += room
            self._on_line(path, lineno, words[:room], None if quoted is None else quoted[:room])
        self._stop(Location(path, lineno), f"more than {self.limits.max_tokens} words")

    def _collect(
        self, path: str, lineno: int, words: list[str], quoted: list[bool] | None
    ) -> None:
        loc = Location(path, lineno)
        line_id = self._line_id
        for i, value in enumerate(words):
            # Interned: a large config repeats a few keywords very many times.
            q = quoted is not None and quoted[i]
            self.tokens.append(Token(sys.intern(value), loc, line_id, q))

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
        if len(parts) > 1 and not parts[0].strip():
            del parts[0]  # "$NAME= \" : the value starts on the next line
        self.variables[name] = "\n".join(p.strip() for p in parts)

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

    def _substitute(self, line: str, loc: Location, path: str) -> tuple[str, list[str]] | None:
        """``line`` with variables expanded, and the further lines of a multi-line value.

        keepalived's rules: ``${NAME}`` anywhere, ``$NAME`` only where a blank
        or the end of the line follows it; a multi-line value only at the end
        of the line (its first line joins the line, the others follow it).  A
        value is scanned again where it was put, so values may use variables.
        None (reported) if the line grows past ``max_line`` or never ends.
        """
        more: list[str] = []
        if "$" not in line:
            return line, more
        limit = self.limits.max_line
        original = len(line)
        pos = 0
        replaced = 0
        while True:
            i = line.find("$", pos)
            if i < 0 or i + 1 >= len(line):
                break
            found = self._lookup(line, i + 1, path)
            if found is None:
                pos = i + 1
                continue
            value, end = found
            if "\n" in value:
                if end != len(line):  # a multi-line value only ends a line
                    pos = i + 1
                    continue
                value, *rest = value.split("\n")
                more[:0] = rest
            replaced += 1
            line = line[:i] + value + line[end:]
            if len(line) > limit:
                self.sink.error(
                    loc, f"variable expansion makes this line longer than {limit} characters"
                )
                return None
            if replaced > limit:
                self.sink.error(
                    loc,
                    f"more than {limit} variables substituted in this line "
                    "(a variable that uses itself?)",
                )
                return None
            pos = i
        self._charge(max(0, len(line) - original) + sum(len(m) for m in more), loc)
        return line, more

    def _lookup(self, line: str, at: int, path: str) -> tuple[str, int] | None:
        """The value of the variable named at ``line[at:]`` and where its name ends."""
        braces = line[at] == "{"
        m = _NAME.match(line, at + 1 if braces else at)
        if m is None:
            return None
        name = m.group(0)
        end = m.end()
        nxt = line[end] if end < len(line) else ""
        args: list[str] = []
        if braces:
            if nxt == " " and name == "_RANDOM":
                close = line.find("}", end)
                if close < 0:
                    return None
                args = line[end:close].split()
                end = close
            elif nxt != "}":
                return None
            end += 1
        elif nxt not in ("", " ", "\t", ",", ")"):
            return None
        value = self._builtin(name, args, path)
        if value is None:
            value = self.variables.get(name)
        if value is None:
            return None
        return value, end

    def _builtin(self, name: str, args: list[str], path: str) -> str | None:
        """keepalived's pre-defined variables (``${_RANDOM MIN MAX}`` takes arguments)."""
        if name == "_PWD":
            return os.path.dirname(os.path.abspath(path))
        if name == "_INSTANCE":
            return self.config_id
        if name == "_HASH":
            return "#"
        if name == "_BANG":
            return "!"
        if name == "_RANDOM":
            bounds = [_c_integer(a) for a in args[:2]]
            low = bounds[0] if bounds and bounds[0] is not None and bounds[0] >= 0 else 0
            high = bounds[1] if len(bounds) > 1 and bounds[1] is not None else 32767
            return str(random.randint(low, max(low, high)))
        return None

    def _include(self, including: str, pattern: str, loc: Location) -> None:
        if not os.path.isabs(pattern):
            pattern = os.path.join(os.path.dirname(including), pattern)
        if "\0" in pattern:  # no file name holds one; the system calls refuse it
            shown = pattern.replace("\0", "\\0")
            self.sink.error(
                loc,
                f"cannot read configuration file {shown}: embedded null byte",
                Category.MISSING_FILE,
            )
            return
        if _GLOB_CHARS & set(pattern):
            matches = _glob_files(pattern)
            self.sources.append(Source("glob", pattern, matches))
            for match in matches:
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
