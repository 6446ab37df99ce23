"""No silent no-ops: every keyword the parser accepts does something.

The parser's keyword tables (``pyalived.config.keywords.TABLES``) say, for
each keyword, which attributes of the configuration model its value ends up
in (``keywords.WRITES``).  A keyword is a silent no-op when nothing outside
the parser's own bookkeeping ever reads that attribute: the daemon would
accept the line and do nothing with it.  The check reads the source of the
``pyalived`` package (the signal dump, which prints every setting, does not
count as a use) for attribute reads of each such name.

keepalived 2.2.7's man page is the list of keywords a user may write: each
must be one the parser handles, one it warns about as not supported (and the
README lists), or one set apart below with the reason.
"""

from __future__ import annotations

import ast
import gzip
import re
from pathlib import Path

import pyalived
import pyalived.config.lvs_parse
import pyalived.config.parser
import pyalived.config.vrrp_parse
from pyalived.config.keywords import TABLES as ALL_TABLES
from pyalived.config.keywords import WRITES

# The parser's tables (other tests make tables of their own).
TABLES = [t for t in ALL_TABLES if t.origin.startswith("pyalived.")]

PACKAGE = Path(pyalived.__file__).parent
README = PACKAGE.parent / "README.md"
MAN_PAGE = Path("/usr/share/man/man5/keepalived.conf.5.gz")
NOT_A_USE = {PACKAGE / "dump.py"}  # prints the configuration, uses none of it


def attributes_read() -> set[str]:
    """Every ``x.NAME`` read, and every ``getattr(x, "NAME")``, in the package."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path in NOT_A_USE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id == "getattr" and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str)):
                names.add(node.args[1].value)
    return names


def accepted() -> dict[str, set[str]]:
    """keyword -> the model attributes it sets (over every table that has it)."""
    found: dict[str, set[str]] = {}
    for table in TABLES:
        for keyword, handler in table.handlers.items():
            found.setdefault(keyword, set()).update(WRITES.get(handler, ("?",)))
    return found


def unsupported() -> set[str]:
    return {keyword for table in TABLES for keyword in table.unsupported}


def test_every_handler_says_what_it_sets() -> None:
    undeclared = sorted(k for k, names in accepted().items() if "?" in names)
    assert not undeclared, f"no @writes(...) on the handler of: {', '.join(undeclared)}"


def test_no_keyword_is_accepted_and_ignored() -> None:
    read = attributes_read()
    ignored = sorted(f"{keyword} (sets {name})" for keyword, names in accepted().items()
                     for name in names
                     if name != "?" and name not in read and name not in INTENTIONAL)
    assert not ignored, f"accepted, but nothing reads the value: {', '.join(ignored)}"


# Bold words at the start of a man page line that are not keywords: headings
# and prose.
PROSE = frozenset(
    "GLOBAL BFD VRRPD LVS Global Static NOT VRRP Important Note NOTE Virtual keepalived start "
    "val1".split()
)
# Keywords of no table, each handled where the reason says.
ELSEWHERE = {
    **dict.fromkeys("include include_check includea includeb includem includer includew".split(),
                    "read by the lexer (pyalived.config.lexer)"),
    **dict.fromkeys(("virtual_routes", "virtual_rules"),
                    "read by the route reader (pyalived.config.routes_parse)"),
    **dict.fromkeys("neighbor_ip source_ip min_rx min_tx idle_tx multiplier passive ttl "
                    "hoplimit max_hops vrrp checker".split(),
                    "in a bfd_instance block, not supported yet (skipped with a warning)"),
    **dict.fromkeys(("dynamic",),
                    "in a FILE_CHECK block: the man page shows it, but keepalived 2.2.7 "
                    "itself rejects it as an unknown keyword, and so does pyalived"),
}
# Model attributes that are set and deliberately read by nothing, with the reason
# (the README says so too).
INTENTIONAL = {
    "dynamic_interfaces_allow_changes": "allow_if_changes only relaxes keepalived's "
    "duplicate-VRID check across interfaces that share a lower device; pyalived checks "
    "duplicate VRIDs per interface name only, so there is nothing to relax",
}


def man_keywords() -> set[str]:
    """The keywords keepalived 2.2.7's keepalived.conf(5) shows in bold at a line's start."""
    assert MAN_PAGE.exists(), f"{MAN_PAGE} is missing: keepalived's package installs it"
    text = gzip.open(MAN_PAGE, "rt").read()
    words = re.findall(r"^[ \t]*\\fB([A-Za-z_][A-Za-z0-9_-]*)(?=[ \\\[|]|$)", text, re.M)
    return set(words) - PROSE


def top_level() -> set[str]:
    parser = pyalived.config.parser._Parser(  # the top-level table is made per parser
        pyalived.config.parser.DiagnosticSink(), lambda name: True)
    return set(parser._top) | set(pyalived.config.parser.UNSUPPORTED_TOP)


def test_every_keyword_of_keepalived_is_handled_warned_or_explained() -> None:
    known = set(accepted()) | unsupported() | top_level() | set(ELSEWHERE)
    missing = sorted(man_keywords() - known)
    assert not missing, f"keepalived 2.2.7 keywords pyalived knows nothing of: {missing}"
    stale = sorted(set(ELSEWHERE) & (set(accepted()) | unsupported()))
    assert not stale, f"explained in ELSEWHERE but in a table: {stale}"


def not_supported_section() -> str:
    text = README.read_text()
    start = text.index("### Not supported yet")
    end = text.index("\n#", start + 1)
    return text[start:end]


def test_the_readme_lists_every_keyword_not_supported() -> None:
    # the list items: "- BLOCK: `keyword`, `keyword`..." (the block's name is not listed)
    items = re.findall(r"^- [^:]*:(.*?)(?=^- |^$)", not_supported_section(), re.M | re.S)
    listed = {k for item in items for k in re.findall(r"`([A-Za-z_][A-Za-z0-9_-]*)`", item)}
    missing = sorted(unsupported() - listed)
    assert not missing, f"warned as not supported, but not in the README's list: {missing}"
    doing = {k for k, names in accepted().items() if names}  # not warn-only handlers
    supported = sorted(listed & doing - unsupported())
    assert not supported, f"in the README's not-supported list, but supported: {supported}"
