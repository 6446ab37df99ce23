"""keepalived.conf support: lexer, parser, diagnostics and the frozen model.

Theory of operation: ``load(path)`` is the one entry point.  It lexes the file
and its includes (``lexer``), builds a statement tree (``tree``), turns the
tree into a validated ``model.Config`` (``parser``) and returns it together
with every diagnostic found and the ``-t`` exit status; the three stages run
as one stream, a top-level block at a time.  It never raises on a bad
configuration; a configuration with any ERROR is refused whole.
"""

from pyalived.config.diagnostics import Category, Diagnostic, Severity, render
from pyalived.config.parser import LoadResult, load

__all__ = ["Category", "Diagnostic", "LoadResult", "Severity", "load", "render"]
