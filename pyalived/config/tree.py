"""Statement tree of a keepalived.conf, built from the lexer's tokens.

Theory of operation: a statement is a keyword followed by the arguments on
the same logical line.  If the next token is ``{`` (on the same line or on a
following one) the statement owns a block of child statements that ends at
the matching ``}``.  A ``}`` ends a statement early, so ``{ a b }`` on one
line is a block holding the statement ``a b``.  Brace mistakes are reported
(an extra ``}``, a ``{`` without keyword, a block never closed) and the tree
is still built as far as possible; the caller refuses the config anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyalived.config.diagnostics import DiagnosticSink
from pyalived.config.lexer import Token
from pyalived.config.model import Location


@dataclass(frozen=True, slots=True)
class Node:
    keyword: Token
    args: tuple[Token, ...]
    children: tuple[Node, ...] | None  # None: no block

    @property
    def name(self) -> str:
        return self.keyword.value

    @property
    def location(self) -> Location:
        return self.keyword.location

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(t.value for t in self.args)


def build_tree(tokens: list[Token], sink: DiagnosticSink) -> tuple[Node, ...]:
    builder = _Builder(tokens, sink)
    return builder.block(None)


class _Builder:
    def __init__(self, tokens: list[Token], sink: DiagnosticSink) -> None:
        self.tokens = tokens
        self.sink = sink
        self.pos = 0

    def block(self, opener: Token | None) -> tuple[Node, ...]:
        nodes: list[Node] = []
        toks = self.tokens
        while self.pos < len(toks):
            tok = toks[self.pos]
            if tok.is_close:
                self.pos += 1
                if opener is None:
                    self.sink.error(tok.location, "'}' without a matching '{'")
                    continue
                return tuple(nodes)
            if tok.is_open:
                self.pos += 1
                self.sink.error(tok.location, "'{' without a keyword before it; block skipped")
                self.block(tok)
                continue
            self.pos += 1
            args: list[Token] = []
            while (
                self.pos < len(toks)
                and toks[self.pos].line_id == tok.line_id
                and not toks[self.pos].is_open
                and not toks[self.pos].is_close
            ):
                args.append(toks[self.pos])
                self.pos += 1
            children: tuple[Node, ...] | None = None
            if self.pos < len(toks) and toks[self.pos].is_open:
                brace = toks[self.pos]
                self.pos += 1
                children = self.block(brace)
            nodes.append(Node(tok, tuple(args), children))
        if opener is not None:
            self.sink.error(opener.location, "'{' is never closed (missing '}')")
        return tuple(nodes)
