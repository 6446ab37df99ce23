"""Typed value readers shared by the VRRP and the LVS halves of the parser.

Theory of operation: a keyword's value is read from its statement (a
``pyalived.config.tree.Node``) by a reader, a function ``(ValueReader, Node)``
that returns the value, or None after reporting why there is none.  A reader
never raises: what is wrong is an ERROR or a WARNING in the ``DiagnosticSink``
of the ``ValueReader``, at the statement's ``file:line``, and parsing goes on.
The ``ValueReader`` holds what every reader may need besides the statement:
the sink, the test for an interface's existence, and the places that
configure a script (for the ``enable_script_security`` check).

The plain readers are methods of ``ValueReader`` taking the statement alone
(``one``, ``flag``, ``address``, ``port_value``, ``command``, ``script``), so
``ValueReader.flag`` is itself a reader to put in a keyword table (see
``pyalived.config.keywords``); ``int_in``, ``float_in`` and ``one_of`` make
readers for a range or a set of words.  ``user_group`` reads ``USER
[GROUP]`` for ``keywords.user_fields``.  The methods taking more than the
statement (``integer``, ``number``, ``ipv4``, ``port``, ``weighted``) and the
block helpers (``block``, ``block_name``, ``no_block``, ``unknown``) serve
the keywords whose handling is irregular.

Most statements hold one word and no block: the readers of one number,
address or port test for that shape first and only otherwise go through
``one``, which reports a missing value, extra words and a stray block.
"""

from __future__ import annotations

import math
import re
import shlex
import socket
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TypeVar

from pyalived.config.diagnostics import DiagnosticSink
from pyalived.config.model import Location, ScriptUser
from pyalived.config.script_check import ScriptSite
from pyalived.config.tree import Node

T = TypeVar("T")

InterfaceExists = Callable[[str], bool]

# A dotted quad as ipaddress.IPv4Address accepts it: four decimal octets of at most
# three digits, each 0..255 without a leading zero.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")

WEIGHT_MIN, WEIGHT_MAX = -253, 253  # track_script / track_interface weights


class ValueReader:
    """Reads and checks keyword values, reporting into ``sink``; see the module docstring."""

    __slots__ = ("exists", "script_locations", "script_sites", "sink")

    def __init__(self, sink: DiagnosticSink, exists: InterfaceExists) -> None:
        self.sink = sink
        self.exists = exists
        # Where scripts are configured: any one needs enable_script_security.
        self.script_locations: list[Location] = []
        # The notify-like script lines, for pyalived.config.script_check.
        self.script_sites: list[ScriptSite] = []

    # ---- blocks ---------------------------------------------------------------

    def no_block(self, node: Node) -> None:
        if node.children is not None:
            self.sink.warning(node.location, f"{node.name} takes no block; block ignored")

    def block(self, node: Node) -> tuple[Node, ...]:
        if node.children is None:
            self.sink.error(node.location, f"{node.name} needs a {{ ... }} block")
            return ()
        return node.children

    def block_name(self, node: Node) -> str | None:
        if not node.values:
            self.sink.error(node.location, f"{node.name} needs a name")
            return None
        if len(node.values) > 1:
            self.sink.warning(
                node.location, f"{node.name}: extra words ignored: {' '.join(node.values[1:])}"
            )
        return node.values[0]

    def unknown(self, node: Node, unsupported: frozenset[str], where: str) -> None:
        skipped = "; block skipped" if node.children is not None else ""
        if node.name in unsupported:
            self.sink.warning(node.location, f"keyword {node.name} is not supported yet{skipped}")
        else:
            self.sink.warning(node.location, f"unknown keyword {node.name} in {where}{skipped}")

    # ---- words ----------------------------------------------------------------

    def one(self, node: Node) -> str | None:
        """The one word of the statement."""
        values = node.values
        if len(values) == 1 and node.children is None:  # the usual case, nothing to report
            return values[0]
        self.no_block(node)
        if not node.values:
            self.sink.error(node.location, f"{node.name} needs a value")
            return None
        if len(node.values) > 1:
            extra = " ".join(node.values[1:])
            self.sink.warning(node.location, f"{node.name}: extra words ignored: {extra}")
        return node.values[0]

    def integer(self, node: Node, lo: int, hi: int) -> int | None:
        """A whole number in ``[lo, hi]``."""
        return int_in(lo, hi)(self, node)

    def number(self, node: Node, lo: float, hi: float) -> float | None:
        """A finite number in ``[lo, hi]``."""
        return float_in(lo, hi)(self, node)

    def flag(self, node: Node) -> bool:
        """No word (true) or a true/false word; a bad word is reported and taken as true."""
        self.no_block(node)
        if not node.values:
            return True
        word = node.values[0].lower()
        if word in ("true", "on", "yes", "1"):
            return True
        if word in ("false", "off", "no", "0"):
            return False
        self.sink.error(node.location, f"{node.name}: '{node.values[0]}' is not true/false")
        return True

    def ipv4(self, node: Node, text: str) -> IPv4Address | None:
        """``text`` (a word of ``node``) as an IPv4 address; IPv6 is warned about."""
        if _DOTTED_QUAD.fullmatch(text):
            # What ip_address accepts as IPv4, exactly; converted without its slower checks.
            return IPv4Address(int.from_bytes(socket.inet_aton(text), "big"))
        try:
            addr = ip_address(text)
        except ValueError:
            self.sink.error(node.location, f"{node.name}: '{text}' is not an IP address")
            return None
        if isinstance(addr, IPv6Address):
            self.sink.warning(
                node.location, f"{node.name}: IPv6 address {text} is not supported yet; ignored"
            )
            return None
        return addr

    def address(self, node: Node) -> IPv4Address | None:
        """The one word of the statement as an IPv4 address."""
        values = node.values
        if len(values) == 1 and node.children is None:  # the usual case, as in ``one``
            return self.ipv4(node, values[0])
        text = self.one(node)
        return None if text is None else self.ipv4(node, text)

    def port(self, node: Node, text: str, what: str, lowest: int = 1) -> int | None:
        """``text`` (a word of ``node``) as a port number, ``lowest``..65535."""
        try:
            port = int(text, 10)
        except ValueError:
            self.sink.error(node.location, f"{what}: '{text}' is not a port number")
            return None
        if not lowest <= port <= 65535:
            self.sink.error(node.location, f"{what}: port {port} is outside [{lowest}, 65535]")
            return None
        return port

    def port_value(self, node: Node) -> int | None:
        """The one word of the statement as a port number."""
        values = node.values
        if len(values) == 1 and node.children is None:  # the usual case, as in ``one``
            return self.port(node, values[0], node.name)
        text = self.one(node)
        return None if text is None else self.port(node, text, node.name)

    def command(self, node: Node) -> str | None:
        """The words of the statement as one command line; quoted words stay quoted."""
        self.no_block(node)
        if not node.values:
            self.sink.error(node.location, f"{node.name} needs a script")
            return None
        if len(node.values) == 1:
            return node.values[0]
        if node.quoted is None:
            return " ".join(node.values)
        return " ".join(
            shlex.quote(v) if q else v for v, q in zip(node.values, node.quoted, strict=True)
        )

    def script(self, node: Node) -> str | None:
        """A command that the daemon runs (a notify script): needs enable_script_security."""
        self.script_locations.append(node.location)
        line = self.command(node)
        if line is not None:
            self.script_sites.append(ScriptSite(node.name, node.location, line))
        return line

    def notify_script(self, node: Node) -> tuple[str, ScriptUser | None] | None:
        """``SCRIPT [USER [GROUP]]``, as keepalived 2.2.7 reads a notify line: the first
        word (quoted, it may hold the script's arguments) is the script, the next two
        are the user and group it runs as; words after them are ignored (a NOTICE)."""
        self.no_block(node)
        self.script_locations.append(node.location)
        if not node.values:
            self.sink.error(node.location, f"{node.name} needs a script")
            return None
        line, *rest = node.values
        if len(rest) > 2:
            self.sink.notice(node.location, f"{node.name}: extra words ignored:"
                             f" {' '.join(rest[2:])} (the words after the script are"
                             " USER [GROUP])")
        who = ScriptUser(rest[0], rest[1] if len(rest) > 1 else None) if rest else None
        self.script_sites.append(ScriptSite(node.name, node.location, line,
                                            who.user if who else None,
                                            who.group if who else None))
        return line, who

    def user_group(self, node: Node) -> tuple[str, str | None] | None:
        """``USER [GROUP]``."""
        self.no_block(node)
        if not node.values or len(node.values) > 2:
            self.sink.error(node.location, f"{node.name} needs USER [GROUP]")
            return None
        return node.values[0], node.values[1] if len(node.values) > 1 else None

    def weighted(self, node: Node, what: str) -> tuple[str, int | None] | None:
        """``NAME [weight N [reverse]]`` lines of track_interface / track_script blocks."""
        self.no_block(node)
        name = node.name
        words = list(node.values)
        weight: int | None = None
        if words and words[0] == "weight":
            if len(words) < 2:
                self.sink.error(node.location, f"{what} {name}: weight needs a number")
                return None
            try:
                weight = int(words[1], 10)
            except ValueError:
                self.sink.error(
                    node.location, f"{what} {name}: weight '{words[1]}' is not a number"
                )
                return None
            if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
                self.sink.error(
                    node.location,
                    f"{what} {name}: weight {weight} is outside [{WEIGHT_MIN}, {WEIGHT_MAX}]",
                )
                return None
            words = words[2:]
            if words and words[0] == "reverse":
                weight = -weight
                words = words[1:]
        if words:
            self.sink.warning(
                node.location, f"{what} {name}: extra words ignored: {' '.join(words)}"
            )
        return name, weight


# ---- readers for keyword tables ---------------------------------------------------

Read = Callable[[ValueReader, Node], T | None]  # a reader of T


def _single(r: ValueReader, node: Node) -> str | None:
    """``node``'s one value (as ``ValueReader.one``, with the usual case first)."""
    values = node.values
    if len(values) == 1 and node.children is None:
        return values[0]
    return r.one(node)


def int_in(lo: int, hi: int) -> Read[int]:
    """A reader of a whole number in ``[lo, hi]``."""

    def read(r: ValueReader, node: Node) -> int | None:
        text = _single(r, node)
        if text is None:
            return None
        try:
            value = int(text, 10)
        except ValueError:
            r.sink.error(node.location, f"{node.name}: '{text}' is not a whole number")
            return None
        if not lo <= value <= hi:
            r.sink.error(node.location, f"{node.name} {value} is outside [{lo}, {hi}]")
            return None
        return value

    return read


def float_in(lo: float, hi: float) -> Read[float]:
    """A reader of a finite number in ``[lo, hi]``."""

    def read(r: ValueReader, node: Node) -> float | None:
        text = _single(r, node)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            r.sink.error(node.location, f"{node.name}: '{text}' is not a number")
            return None
        if not lo <= value <= hi:
            r.sink.error(node.location, f"{node.name} {text} is outside [{lo:g}, {hi:g}]")
            return None
        return value

    return read


def one_of(choices: Mapping[str, T], message: str) -> Read[T]:
    """A reader of one word among ``choices`` (upper-cased first); else ``"{message}, not X"``."""

    def read(r: ValueReader, node: Node) -> T | None:
        word = r.one(node)
        if word is None:
            return None
        value = choices.get(word.upper())
        if value is None:
            r.sink.error(node.location, f"{message}, not {word}")
        return value

    return read
