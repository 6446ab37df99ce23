"""The configuration reader: one read of the file, in a process of its own.

Theory of operation: the daemon's parent process (``pyalived.supervisor``)
never parses a configuration in its own address space, so that what a parse
allocates (a few hundred MB for the largest files, much of it kept by the
allocator once freed) never stays in the long-lived parent.  At start-up
(``pyalived.cli``, ``run_reader``) and on a SIGHUP whose files changed
(``Supervisor._run_reader``, with a timeout) it runs::

    python -m pyalived.config.reader PATH [--config-id ID] --half vrrp --half checkers

This process loads the file exactly as the daemon's own loader does
(``pyalived.config.load`` with the default ``ReaderLimits``, interfaces looked
up in its network namespace, which is the daemon's), writes one pickle to its
standard output and exits 0.  The pickle is a ``ReadResult``: the
diagnostics as the text the daemon logs, the loader's exit status, the
sources read (for the next unchanged check,
``pyalived.config.lexer.sources_unchanged``) and, if the configuration has
no error, each requested half (``half_config``) pickled on its own
(``pickle_halves``).  The parent keeps those bytes and hands each child its
half, which only the child unpickles.  Whatever the parse allocated leaves
with the reader.

Anything else -- a nonzero exit, a signal, output that ``decode`` does not
accept -- is a failed read (``ReaderError``): the daemon does not start, or
the reload is refused.  The reader is this very program (``COMMAND``, with
``environment`` putting this ``pyalived`` first on the module path), so its
output is trusted as the supervisor's own messages are (``pyalived.ipc``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyalived.config.lexer import Source
from pyalived.config.model import Config
from pyalived.config.parser import SystemInterfaces, load

VRRP = "vrrp"
CHECKERS = "checkers"
HALVES = (VRRP, CHECKERS)
#: The key of the parent's own settings (``pyalived.startup.ParentSettings``) next to the halves.
PARENT = "parent"
COMMAND = (sys.executable, "-m", "pyalived.config.reader")


def half_config(half: str, config: Config) -> Config:
    """The part of ``config`` one half needs (a child gets only that; the checkers get
    the track files their FILE_CHECKs name)."""
    if half == VRRP:
        return dataclasses.replace(config, virtual_servers=(), virtual_server_groups=())
    files = config.track_files
    if files:
        named = {fc.track_file for vs in config.virtual_servers for rs in vs.real_servers
                 for fc in rs.file_checks}
        files = tuple(t for t in files if t.name in named)
    return dataclasses.replace(config, vrrp_instances=(), vrrp_sync_groups=(), vrrp_scripts=(),
                               static_ipaddress=(), static_routes=(), static_rules=(),
                               track_files=files, track_processes=())


def pickle_halves(config: Config, halves: Iterable[str]) -> dict[str, bytes]:
    """Each half of ``config`` pickled on its own, as a child unpickles it.

    The checker half goes as a ``PackedLvs``: each ``virtual_server`` block
    serialized apart, so that the checker process unpickles one block at a
    time, and only the blocks that changed.
    """
    from pyalived.checkers.compile import pack
    from pyalived.startup import parent_settings

    out: dict[str, bytes] = {
        PARENT: pickle.dumps(parent_settings(config), protocol=pickle.HIGHEST_PROTOCOL)
    }
    for h in halves:
        half = half_config(h, config)
        out[h] = pickle.dumps(pack(half) if h == CHECKERS else half,
                              protocol=pickle.HIGHEST_PROTOCOL)
    return out


@dataclass(frozen=True)
class ReadResult:
    """What one read found."""

    diagnostics: tuple[str, ...]  # each as the daemon logs it, in the loader's order
    exit_code: int  # the loader's (``-t``) exit status
    sources: tuple[Source, ...]  # what was read
    halves: dict[str, bytes] | None  # pickle_halves; None when the configuration has errors


class ReaderError(Exception):
    """The reader process ended without a result."""


def argv(path: str, config_id: str | None, halves: Iterable[str]) -> list[str]:
    """The arguments after ``COMMAND``."""
    args = [path]
    if config_id is not None:
        args += ["--config-id", config_id]
    for half in halves:
        args += ["--half", half]
    return args


def environment() -> dict[str, str]:
    """This process's environment, with this ``pyalived`` first on the module path.

    The reader must be this program even when it was not installed (run from
    its source tree, which the daemon leaves when it daemonizes).  An installed
    one is found as it is, and its site directory is never put ahead of the
    standard library.
    """
    import site

    import pyalived

    root = os.path.dirname(os.path.dirname(os.path.abspath(pyalived.__file__)))
    env = dict(os.environ)
    installed = {os.path.abspath(p) for p in (*site.getsitepackages(),
                                              site.getusersitepackages())}
    if root not in installed:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def describe_exit(returncode: int) -> str:
    """A ``subprocess`` return code in words."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def failure(returncode: int, errors: bytes | bytearray) -> ReaderError:
    """The error of a reader that exited with ``returncode``: the last line it wrote."""
    lines = bytes(errors).decode(errors="replace").strip().splitlines()
    last = lines[-1].strip() if lines else "no message"
    return ReaderError(f"the configuration reader failed ({describe_exit(returncode)}): {last}")


def decode(data: bytes | bytearray, halves: Sequence[str]) -> ReadResult:
    """The reader's output, checked; ``ReaderError`` if it is not a whole ``ReadResult``."""
    try:
        result = pickle.loads(data)
    except Exception as exc:  # truncated or foreign bytes fail in many ways
        raise ReaderError(f"the configuration reader's output ({len(data)} bytes) is not "
                          f"a result: {type(exc).__name__}: {exc}") from None
    if not isinstance(result, ReadResult):
        raise ReaderError(f"the configuration reader's output is a {type(result).__name__}, "
                          "not a result")
    if not (isinstance(result.diagnostics, tuple) and isinstance(result.sources, tuple)
            and isinstance(result.exit_code, int)
            and all(isinstance(d, str) for d in result.diagnostics)
            and all(isinstance(s, Source) for s in result.sources)):
        raise ReaderError("the configuration reader's output is malformed")
    if result.halves is not None and not all(
            isinstance(result.halves.get(h), bytes) for h in halves):
        raise ReaderError("the configuration reader's output lacks a half of the configuration")
    return result


def run_reader(path: str, config_id: str | None, halves: Sequence[str]) -> ReadResult:
    """Read ``path`` in a reader process, waiting for it (start-up, outside trio).

    Its standard error is this process's, so whatever it says is seen.
    """
    try:
        done = subprocess.run([*COMMAND, *argv(path, config_id, halves)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              env=environment(), check=False)
    except OSError as exc:
        raise ReaderError(f"cannot start the configuration reader: {exc}") from None
    if done.returncode != 0:
        raise failure(done.returncode, b"")
    return decode(done.stdout, halves)


def read(path: str, config_id: str | None, halves: Sequence[str]) -> ReadResult:
    """Load ``path`` as the daemon's loader does (``pyalived.daemon._file_loader``)."""
    loaded = load(path, config_id=config_id, interface_exists=SystemInterfaces())
    pickled = None if loaded.config is None else pickle_halves(loaded.config, halves)
    return ReadResult(tuple(str(d) for d in loaded.diagnostics), loaded.exit_code,
                      loaded.sources, pickled)


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyalived.config.reader",
                                     description="read a configuration for pyalived's parent")
    parser.add_argument("path")
    parser.add_argument("--config-id", default=None)
    parser.add_argument("--half", action="append", choices=HALVES, default=[])
    opts = parser.parse_args(args)
    result = read(opts.path, opts.config_id, opts.half)
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    # ``python -m`` runs this file as ``__main__``: run the module of its own name
    # instead, so that the pickle names ``pyalived.config.reader.ReadResult``.
    sys.exit(importlib.import_module(__spec__.name).main())
