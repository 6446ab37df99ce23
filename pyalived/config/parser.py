"""Semantic parser: statement tree -> validated ``Config`` plus diagnostics.

Theory of operation: ``load`` reads a file into the frozen model of
``pyalived.config.model``, and ``parse_tree`` does the same from a statement
tree (see ``pyalived.config.tree``).  The work is split in two halves that
know nothing of each other: ``pyalived.config.vrrp_parse`` (``global_defs``,
``vrrp_script``, ``vrrp_instance``, ``vrrp_sync_group``) and
``pyalived.config.lvs_parse`` (``virtual_server``, ``virtual_server_group``).
``_Parser`` hands each top-level statement to its half through the top-level
keyword table, then puts the halves' results together in ``finish``.  Both
halves read values through one ``pyalived.config.values.ValueReader``, so
they report into one ``DiagnosticSink``, in file order, and share the list
of places that configure scripts.  Each block is parsed through a keyword
table (``pyalived.config.keywords``).

Nothing here raises on bad input.  A keyword that keepalived knows but this
project does not implement yet is a WARNING ("not supported yet") and its
block is skipped; a keyword nobody knows is a WARNING ("unknown keyword").
Values that cannot be meant as written (out of range numbers, bad
addresses, missing required keywords, dangling references, conflicting
instances) are ERRORS, and any ERROR refuses the whole config (``Config`` is
None), as keepalived is meant to be run on a config it fully understands.

``load`` runs the three stages as one stream: the lexer hands each logical
line to the tree builder, which hands each finished top-level statement to
``_Parser.top``; only the ``vrrp_instance`` blocks wait for ``finish`` (they
need the whole ``global_defs``), followed by the whole-config checks.  So a
large file is never held as words nor as a tree, only as the model being
built.  The verdict is the one of running the stages one after the other:
the tree builder and the parser report into sinks of their own, merged after
the lexer's (``DiagnosticSink.absorb``) in stage order, which keeps the
lexer's error cap counting the lexer's errors only; and when a limit stops
the lexer, what the later stages found is dropped, as they would not have run.
The cyclic garbage collector is paused during a load on the main thread
(see ``_collector_paused``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pyalived.config.diagnostics import Category, Diagnostic, DiagnosticSink, exit_code_for
from pyalived.config.lexer import (
    DEFAULT_LIMITS,
    Lexer,
    ReaderLimits,
    Source,
    default_config_id,
)
from pyalived.config.lvs_parse import LvsParser
from pyalived.config.model import Config, Location
from pyalived.config.tree import Node, TreeBuilder
from pyalived.config.values import InterfaceExists, ValueReader
from pyalived.config.vrrp_parse import VrrpParser

# Top-level keywords keepalived 2.2.7 accepts that this project does not implement yet.
UNSUPPORTED_TOP = frozenset(
    """linkbeat_interfaces
    net_namespace_ipvs namespace_with_ipsets instance use_pid_dir
    bfd_instance vrrp_track_bfd track_bfd child_wait_time track_group SSL""".split()
)


def system_interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


class SystemInterfaces:
    """``InterfaceExists`` on this host: in this process's network namespace, or in the
    one a top-level ``net_namespace`` names, once the parser has seen it
    (``use_namespace``).  Every interface check is made after the whole file is read
    (instances wait for ``finish``), so the namespace applies wherever the line is."""

    def __init__(self) -> None:
        self.namespace: str | None = None

    def use_namespace(self, name: str) -> bool:
        """Look for interfaces in /run/netns/NAME from now on; False if it does not exist."""
        if not os.path.exists(f"/run/netns/{name}"):
            return False
        self.namespace = name
        return True

    def __call__(self, name: str) -> bool:
        if self.namespace is None:
            return system_interface_exists(name)
        from pyalived.vrrp.netlink import in_netns

        try:
            with in_netns(self.namespace):
                return system_interface_exists(name)
        except OSError:
            return False


@dataclass(frozen=True)
class LoadResult:
    config: Config | None  # None when any diagnostic is an ERROR
    diagnostics: tuple[Diagnostic, ...]
    exit_code: int
    sources: tuple[Source, ...] = ()  # what was read (see ``lexer.sources_unchanged``)


def load(
    path: str,
    *,
    config_id: str | None = None,
    interface_exists: InterfaceExists | None = None,
    limits: ReaderLimits = DEFAULT_LIMITS,
) -> LoadResult:
    """Read, check and model the configuration in ``path`` and its includes.

    The reading is bounded by ``limits`` (see ``pyalived.config.lexer``).
    """
    sink = DiagnosticSink()
    if not os.path.isfile(path):
        sink.error(
            Location(path, 0),
            f"configuration file {path} does not exist or is not a file",
            Category.MISSING_FILE,
        )
        return LoadResult(None, tuple(sink.items), exit_code_for(sink.items))
    parser = _Parser(DiagnosticSink(), interface_exists or SystemInterfaces())
    builder = TreeBuilder(parser.top)
    cid = config_id if config_id is not None else default_config_id()
    lexer = Lexer(cid, sink, limits, on_line=builder.line)
    with _collector_paused():
        if not lexer.read(path):  # a limit was reached: refused, the rest is not worth parsing
            return LoadResult(None, sink.diagnostics(), exit_code_for(sink.items))
        builder.finish()
        config = parser.finish()
    # In the order of a lexer, tree builder and parser each run after the one before.
    sink.absorb(builder.errors)
    sink.absorb(parser.sink)
    diags = sink.diagnostics()
    return LoadResult(None if sink.has_errors else config, diags, exit_code_for(diags),
                      tuple(lexer.sources))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection during a load on the main thread.

    A load only ever adds objects, most of them long-lived, and the collector
    would scan them again and again as they pile up (a fifth of the time of a
    large file).  Only on the main thread (``-t`` and start-up): a reload runs
    in a worker thread that a hung read may leave behind, and the collector
    must not stay off for the daemon meanwhile.
    """
    if not gc.isenabled() or threading.current_thread() is not threading.main_thread():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def parse_tree(nodes: tuple[Node, ...], sink: DiagnosticSink, exists: InterfaceExists) -> Config:
    return _Parser(sink, exists).parse(nodes)


class _Parser:
    """The top level: each statement to its half, then the whole configuration."""

    def __init__(self, sink: DiagnosticSink, exists: InterfaceExists) -> None:
        self.sink = sink
        self.r = ValueReader(sink, exists)
        self.vrrp = VrrpParser(self.r)
        self.lvs = LvsParser(self.r)
        # The top-level keyword table: each keyword to the half's method of that name
        # (bound to the halves, which hold no reference back to this object).
        self._top: dict[str, Callable[[Node], None]] = {
            "virtual_server": self.lvs.virtual_server,
            "global_defs": self.vrrp.global_defs,
            "vrrp_script": self.vrrp.vrrp_script,
            "vrrp_instance": self.vrrp.vrrp_instance,
            "vrrp_sync_group": self.vrrp.vrrp_sync_group,
            "track_file": self.vrrp.track_file,
            "vrrp_track_file": self.vrrp.track_file,  # keepalived's deprecated synonym
            "vrrp_track_process": self.vrrp.track_process,
            "track_process": self.vrrp.track_process,
            "virtual_server_group": self.lvs.virtual_server_group,
            "static_ipaddress": self.vrrp.static_ipaddress_block,
            "static_routes": self.vrrp.static_routes_block,
            "static_rules": self.vrrp.static_rules_block,
            "net_namespace": self.vrrp.net_namespace,
            "garp_group": self.vrrp.garp_group,
        }

    def parse(self, nodes: tuple[Node, ...]) -> Config:
        for node in nodes:
            self.top(node)
        return self.finish()

    def top(self, node: Node) -> None:
        """One top-level statement, in file order."""
        handle = self._top.get(node.name)
        if handle is None:
            self.r.unknown(node, UNSUPPORTED_TOP, "the top level")
        else:
            handle(node)

    def finish(self) -> Config:
        """The configuration, once every top-level statement went through ``top``."""
        vrrp, lvs = self.vrrp, self.lvs
        config = Config(
            vrrp.defs,
            tuple(vrrp.scripts),
            tuple(vrrp.instances()),
            tuple(vrrp.sync_groups),
            tuple(lvs.servers),
            tuple(lvs.groups),
            static_ipaddress=tuple(vrrp.static_ipaddress),
            static_routes=tuple(vrrp.static_routes),
            static_rules=tuple(vrrp.static_rules),
            track_files=tuple(vrrp.track_files),
            track_processes=tuple(vrrp.track_processes),
        )
        lvs.cross_check(config)
        vrrp.cross_check(config)
        return vrrp.sync_daemon_fixups(vrrp.track_fixups(vrrp.strict_fixups(config)))
