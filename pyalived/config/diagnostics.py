"""Configuration diagnostics: what is wrong with a keepalived.conf, and where.

Theory of operation: the lexer and the parser never raise on bad input; they
append ``Diagnostic`` objects to a ``DiagnosticSink`` and carry on, so that a
single ``-t`` run reports every problem of a file at once.  An ERROR refuses
the whole configuration; a WARNING does not, but still makes ``-t`` fail, as
keepalived's own checker does.  Each diagnostic also has a ``Category`` that
feeds the ``-t`` exit status (see ``exit_code_for``):

* 0  no diagnostic at all;
* 4  a configuration file (the main one or an include) is missing or
  unreadable.  keepalived 2.2.7 prints a message but exits 0 here; we refuse;
* 5  any other error or warning, including an interface that does not exist
  (keepalived 2.2.7's ``-t`` also exits 5 for that one);
* 6  a script will run but ``enable_script_security`` is not set (scripts that
  will never run, see ``pyalived.config.script_check``, do not count); as
  with keepalived this wins over ordinary errors and warnings, but not over
  a missing file or interface.

A NOTICE is printed and logged like the others but changes neither the
verdict nor the exit status: it is for what keepalived 2.2.7 accepts and
only mentions outside ``-t`` (a deprecated spelling such as
``vrrp_track_file``), or drops silently (a notify script that will not
run, see ``pyalived.config.script_check``), so that ``pyalived -t`` and
``keepalived -t`` agree.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyalived.config.model import Location

EXIT_OK = 0
EXIT_CONFIG = 4
EXIT_CONFIG_TEST = 5
EXIT_CONFIG_TEST_SECURITY = 6


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    NOTICE = "notice"  # printed and logged; no effect on the verdict or the exit status


class Category(enum.Enum):
    GENERAL = "general"
    MISSING_FILE = "missing-file"
    MISSING_INTERFACE = "missing-interface"
    SCRIPT_SECURITY = "script-security"


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    location: Location
    message: str
    category: Category = Category.GENERAL

    def __str__(self) -> str:
        return f"{self.location}: {self.severity.value}: {self.message}"


MAX_DIAGNOSTICS = 1000


@dataclass
class DiagnosticSink:
    """Mutable collector used while lexing and parsing.

    It keeps at most ``limit`` diagnostics, so that a hostile file cannot fill
    memory or the log with them; past that it only counts them (``suppressed``),
    still keeping the first of each severity and category so that the verdict
    and the ``-t`` exit status stay exact.
    """

    items: list[Diagnostic] = field(default_factory=list)
    limit: int = MAX_DIAGNOSTICS
    suppressed: int = 0
    error_count: int = 0
    _kinds: set[tuple[Severity, Category]] = field(default_factory=set)

    def _add(self, diagnostic: Diagnostic) -> None:
        if diagnostic.severity is Severity.ERROR:
            self.error_count += 1
        kind = (diagnostic.severity, diagnostic.category)
        if len(self.items) >= self.limit and kind in self._kinds:
            self.suppressed += 1
            return
        self._kinds.add(kind)
        self.items.append(diagnostic)

    def error(
        self, location: Location, message: str, category: Category = Category.GENERAL
    ) -> None:
        self._add(Diagnostic(Severity.ERROR, location, message, category))

    def warning(
        self, location: Location, message: str, category: Category = Category.GENERAL
    ) -> None:
        self._add(Diagnostic(Severity.WARNING, location, message, category))

    def notice(self, location: Location, message: str) -> None:
        self._add(Diagnostic(Severity.NOTICE, location, message))

    def absorb(self, other: DiagnosticSink) -> None:
        """Take over what ``other`` collected, as if it had been reported here, in order.

        ``other`` must keep at least as many diagnostics as this sink: it then
        kept every diagnostic this sink would have kept (the first ``limit`` and
        the first of each kind), so replaying its items gives this sink exactly
        the items, counts and verdict that reporting them here would have given.
        This is what lets the loader collect the tree builder's and the parser's
        diagnostics while the lexer is still reading, and put them after the
        lexer's as if each stage had run after the one before.
        """
        assert other.limit >= self.limit
        dropped_errors = other.error_count
        for diagnostic in other.items:
            if diagnostic.severity is Severity.ERROR:
                dropped_errors -= 1
            self._add(diagnostic)
        self.suppressed += other.suppressed
        self.error_count += dropped_errors

    @property
    def has_errors(self) -> bool:
        return self.error_count > 0 or any(d.severity is Severity.ERROR for d in self.items)

    def diagnostics(self) -> tuple[Diagnostic, ...]:
        """What was kept, with a last note saying how many were left out."""
        if not self.suppressed:
            return tuple(self.items)
        last = max(self.items, key=lambda d: (d.location.file, d.location.line))
        note = Diagnostic(
            Severity.WARNING,
            last.location,
            f"{self.suppressed} more diagnostic(s) not shown (at most {self.limit} are kept)",
        )
        return (*self.items, note)


def exit_code_for(diagnostics: Iterable[Diagnostic]) -> int:
    """The ``-t`` exit status for a set of diagnostics (see module docstring)."""
    diags = [d for d in diagnostics if d.severity is not Severity.NOTICE]
    categories = {d.category for d in diags}
    if Category.MISSING_FILE in categories:
        return EXIT_CONFIG
    if Category.MISSING_INTERFACE in categories:
        return EXIT_CONFIG_TEST
    if Category.SCRIPT_SECURITY in categories:
        return EXIT_CONFIG_TEST_SECURITY
    if diags:
        return EXIT_CONFIG_TEST
    return EXIT_OK


def render(diagnostics: Iterable[Diagnostic]) -> str:
    """Text for ``-t`` output: one diagnostic per line, in file order, then a summary."""
    diags = sorted(diagnostics, key=lambda d: (d.location.file, d.location.line))
    lines = [str(d) for d in diags]
    errors = sum(1 for d in diags if d.severity is Severity.ERROR)
    warnings = sum(1 for d in diags if d.severity is Severity.WARNING)
    if errors:
        lines.append(f"configuration refused: {errors} error(s), {warnings} warning(s)")
    elif warnings:
        lines.append(f"configuration accepted with {warnings} warning(s)")
    elif lines:
        lines.append("configuration OK, with notices")
    else:
        lines.append("configuration OK")
    return "\n".join(lines) + "\n"
