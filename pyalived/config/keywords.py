"""Keyword tables: what each keyword of a configuration block does, one entry each.

Theory of operation: a block (``vrrp_instance``, ``real_server``, ``url``...)
is parsed by running its statements through a ``Keywords`` table, which maps
each keyword to a handler ``(block, node)``.  The block is the state of the
one block being parsed: a ``Block`` holding the ``ValueReader`` (see
``pyalived.config.values``) and ``fields``, the keyword arguments of the
model object the block becomes, plus whatever else its kind collects (lists
of addresses, of checkers...).  A keyword missing from the table is reported
as not supported yet (if in the table's ``unsupported`` set) or unknown, and
its statement, block included, is skipped.

A regular keyword, one value read into one field, is one line made by
``field``: ``"priority": field("priority", int_in(1, 255))`` reads the value
with the reader and, when there is one, stores it (a bad value is reported by
the reader and leaves the field as it was; ``unset_on_error`` clears it
instead).  ``user_fields`` does the same for ``USER [GROUP]`` into two fields.
An irregular keyword has a handler function of its own, referenced from the
table like any other.  The statements are handled in file order: a keyword
given twice has the effect of its last line, and the diagnostics come out in
the order of the statements.

Every handler says which attributes of the model its keyword ends up in
(``field`` and ``user_fields`` by themselves, the others with ``writes``),
and every table is listed in ``TABLES``: ``tests/unit/test_keyword_coverage.py``
checks from them that no keyword is accepted whose value nothing reads.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from pyalived.config.tree import Node
from pyalived.config.values import Read, ValueReader


class Block:
    """The state of one block being parsed; ``label`` names it in "unknown keyword" warnings."""

    __slots__ = ("fields", "label", "r")
    r: ValueReader
    label: str
    fields: dict[str, object]

    def __init__(self, r: ValueReader, label: str) -> None:
        self.r = r
        self.label = label
        self.fields = {}

    def where(self) -> str:
        return self.label


B = TypeVar("B", bound=Block)
Handler = Callable[[B, Node], None]
H = TypeVar("H", bound=Callable[..., None])

# handler -> the model attributes its keyword sets (see the module docstring)
WRITES: dict[Callable[..., None], tuple[str, ...]] = {}


def writes(*names: str) -> Callable[[H], H]:
    """Declare the model attributes a hand-written handler sets."""

    def declare(handler: H) -> H:
        WRITES[handler] = names
        return handler

    return declare


class Keywords(Generic[B]):
    """The keywords of one kind of block: keyword -> handler, and the ones not supported yet."""

    __slots__ = ("handlers", "origin", "unsupported")

    def __init__(
        self, handlers: Mapping[str, Handler[B]], unsupported: frozenset[str] = frozenset()
    ) -> None:
        self.handlers = dict(handlers)
        self.unsupported = unsupported
        self.origin = _caller()  # the module that made it
        TABLES.append(self)

    def run(self, block: B, nodes: Iterable[Node]) -> None:
        """Handle each statement of ``nodes``, in order, into ``block``."""
        get = self.handlers.get
        for node in nodes:
            handle = get(node.name)
            if handle is None:
                block.r.unknown(node, self.unsupported, block.where())
            else:
                handle(block, node)


def _caller() -> str:
    """The module calling into here (``Keywords[X](...)`` goes through ``typing``)."""
    frame = sys._getframe(2)
    while frame.f_back is not None and frame.f_globals.get("__name__") in ("typing", __name__):
        frame = frame.f_back
    return str(frame.f_globals.get("__name__", ""))


TABLES: list[Keywords[Any]] = []  # every table made, for the coverage test


def field(name: str, read: Read[object], *, unset_on_error: bool = False) -> Handler[Block]:
    """A handler that reads one value with ``read`` into ``fields[name]``."""
    if unset_on_error:

        @writes(name)
        def store(block: Block, node: Node) -> None:
            block.fields[name] = read(block.r, node)

        return store

    @writes(name)
    def handle(block: Block, node: Node) -> None:
        value = read(block.r, node)
        if value is not None:
            block.fields[name] = value

    return handle


def user_fields(user: str, group: str) -> Handler[Block]:
    """A handler that reads ``USER [GROUP]`` into ``fields[user]`` and ``fields[group]``."""

    @writes(user, group)
    def handle(block: Block, node: Node) -> None:
        value = block.r.user_group(node)
        if value is not None:
            block.fields[user], block.fields[group] = value

    return handle
