"""Statement tree of a keepalived.conf, built from the lexer's logical lines.

Theory of operation: a statement is a keyword followed by the arguments on
the same logical line.  If the next word is ``{`` (on the same line or on a
following one) the statement owns a block of child statements that ends at
the matching ``}``.  A ``}`` ends a statement early, so ``{ a b }`` on one
line is a block holding the statement ``a b``.  Brace mistakes are reported
(an extra ``}``, a ``{`` without keyword, a block never closed) and the tree
is still built as far as possible; the caller refuses the config anyway.

``TreeBuilder`` is fed the lexer's logical lines as they are read
(``TreeBuilder.line`` is a ``pyalived.config.lexer.LineSink``) and hands each
top-level statement, block included, to ``deliver`` once nothing more can
change it: when the next top-level statement starts, or at ``finish``.  So
the loader parses a large file one top-level block at a time and the whole
tree never exists at once.  The builder's own diagnostics are kept in its
``errors`` sink for the caller to merge after the lexer's (see
``DiagnosticSink.absorb``).  ``Node`` keeps a statement's words as plain
strings and its place as file and line; its ``Location`` is made when asked for.
"""

from __future__ import annotations

from collections.abc import Callable

from pyalived.config.diagnostics import DiagnosticSink
from pyalived.config.lexer import Token
from pyalived.config.model import Location


class Node:
    """One statement: ``name``, its argument words ``values`` and its block, if any."""

    __slots__ = ("_location", "children", "file", "line", "name", "quoted", "values")

    def __init__(
        self,
        name: str,
        values: tuple[str, ...],
        file: str,
        line: int,
        quoted: tuple[bool, ...] | None = None,
        children: tuple[Node, ...] | None = None,
    ) -> None:
        self.name = name
        self.values = values  # the argument words
        self.quoted = quoted  # per argument word, whether it was quoted; None: none was
        self.children = children  # None: no block
        self.file = file
        self.line = line
        self._location: Location | None = None

    @property
    def location(self) -> Location:
        loc = self._location
        if loc is None:
            loc = self._location = Location(self.file, self.line)
        return loc

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.values!r}, {self.file}:{self.line})"


class TreeBuilder:
    """Builds statements from logical lines; see the module docstring."""

    def __init__(self, deliver: Callable[[Node], None], limit: int | None = None) -> None:
        self.deliver = deliver
        self.errors = DiagnosticSink() if limit is None else DiagnosticSink(limit=limit)
        self._top: list[Node] = []  # top-level statements not delivered yet
        self._level: list[Node] = self._top  # the statements of the innermost open block
        # Open blocks, innermost last: (enclosing level, owner or None when skipped,
        # file and line of the "{").
        self._open: list[tuple[list[Node], Node | None, str, int]] = []
        self._last: Node | None = None  # a statement that a "{" would give a block to

    def line(self, file: str, lineno: int, words: list[str], quoted: list[bool] | None) -> None:
        """One logical line's words (an unquoted "{" or "}" is a brace)."""
        if quoted is None:
            # The shapes of nearly every line: "keyword args", "keyword args {" and "}".
            last = words[-1]
            if last == "}":
                if len(words) == 1:
                    self._close_block(file, lineno)
                    return
            elif last == "{":
                if len(words) > 1 and words.count("{") == 1 and "}" not in words:
                    if not self._open:
                        self._flush_top()
                    node = Node(words[0], tuple(words[1:-1]), file, lineno)
                    self._level.append(node)
                    self._last = node
                    self._open_block(file, lineno)
                    return
            elif "{" not in words and "}" not in words:
                if not self._open:
                    self._flush_top()
                node = Node(words[0], tuple(words[1:]), file, lineno)
                self._level.append(node)
                self._last = node
                return
        i = 0
        n = len(words)
        while i < n:
            word = words[i]
            if quoted is None or not quoted[i]:
                if word == "{":
                    self._open_block(file, lineno)
                    i += 1
                    continue
                if word == "}":
                    self._close_block(file, lineno)
                    i += 1
                    continue
            j = i + 1
            while j < n and not (
                (words[j] == "{" or words[j] == "}") and (quoted is None or not quoted[j])
            ):
                j += 1
            if not self._open:
                self._flush_top()
            q = None
            if quoted is not None and any(quoted[i + 1 : j]):
                q = tuple(quoted[i + 1 : j])
            node = Node(word, tuple(words[i + 1 : j]), file, lineno, q)
            self._level.append(node)
            self._last = node
            i = j

    def _flush_top(self) -> None:
        for node in self._top:
            self.deliver(node)
        self._top.clear()

    def _open_block(self, file: str, lineno: int) -> None:
        owner = self._last
        self._last = None
        if owner is None:
            self.errors.error(
                Location(file, lineno), "'{' without a keyword before it; block skipped"
            )
        self._open.append((self._level, owner, file, lineno))
        self._level = []

    def _close_block(self, file: str, lineno: int) -> None:
        self._last = None
        if not self._open:
            self.errors.error(Location(file, lineno), "'}' without a matching '{'")
            return
        outer, owner, _file, _line = self._open.pop()
        if owner is not None:
            owner.children = tuple(self._level)
        self._level = outer

    def finish(self) -> None:
        """End of input: report the blocks never closed, deliver what is left."""
        while self._open:
            outer, owner, file, lineno = self._open.pop()
            self.errors.error(Location(file, lineno), "'{' is never closed (missing '}')")
            if owner is not None:
                owner.children = tuple(self._level)
            self._level = outer
        self._last = None
        self._flush_top()


def build_tree(tokens: list[Token], sink: DiagnosticSink) -> tuple[Node, ...]:
    """The statements of a token list (``pyalived.config.lexer.lex``)."""
    nodes: list[Node] = []
    builder = TreeBuilder(nodes.append, sink.limit)
    start = 0
    while start < len(tokens):
        first = tokens[start]
        end = start + 1
        while end < len(tokens) and tokens[end].line_id == first.line_id:
            end += 1
        line = tokens[start:end]
        quoted = [t.quoted for t in line]
        builder.line(
            first.location.file,
            first.location.line,
            [t.value for t in line],
            quoted if any(quoted) else None,
        )
        start = end
    builder.finish()
    sink.absorb(builder.errors)
    return tuple(nodes)
