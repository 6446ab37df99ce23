"""Differential ``-t``: keepalived 2.2.7 and pyalived check the same file, side by side.

Theory of operation: ``CheckNamespace`` is a throwaway network namespace (a
unique name, deleted on exit, pass or fail) holding a veth pair ``eth0`` /
``eth1`` -- keepalived's ``-t`` refuses ``lo`` for VRRP, so configurations
name ``eth0``.  ``keepalived(path)`` runs ``keepalived -t -f PATH`` and
``pyalived(path)`` runs ``python -m pyalived -t -f PATH`` from this checkout
(PYTHONPATH set to it), both inside the namespace, as root; each returns the
exit status and the output.  Tests write their cases into a tmp dir and
compare the statuses (see tests/netns/test_script_diff.py).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


@dataclass(frozen=True)
class Checked:
    code: int
    output: str


def require_keepalived() -> None:
    """Skip unless this runs as root with the keepalived binary installed."""
    if os.geteuid() != 0 or shutil.which("keepalived") is None or shutil.which("ip") is None:
        pytest.skip("needs root, iproute2 and the keepalived binary")


class CheckNamespace:
    """A namespace with eth0/eth1 in which both ``-t`` run (see the module docstring)."""

    def __init__(self, prefix: str = "pyadiff") -> None:
        self.name = f"{prefix}{os.getpid()}x{next(_counter)}"

    def __enter__(self) -> CheckNamespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            subprocess.run(["ip", "-n", self.name, "link", "add", "eth0", "type", "veth",
                            "peer", "name", "eth1"], check=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False,
                       stderr=subprocess.DEVNULL)

    def _run(self, argv: list[str], env: dict[str, str] | None = None) -> Checked:
        proc = subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True,
                              text=True, timeout=60, env=env, check=False)
        return Checked(proc.returncode, proc.stdout + proc.stderr)

    def keepalived(self, path: Path, *extra: str, search_path: str | None = None) -> Checked:
        """``keepalived -t``; ``search_path``: its PATH (None: this process's)."""
        env = dict(os.environ)
        if search_path is not None:
            env["PATH"] = search_path
        return self._run(["keepalived", "-t", "-l", "-D", *extra, "-f", str(path)], env)

    def pyalived(self, path: Path, *extra: str, search_path: str | None = None) -> Checked:
        """``pyalived -t`` from this checkout; ``search_path`` as for ``keepalived``."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        if search_path is not None:
            env["PATH"] = search_path
        return self._run([sys.executable, "-m", "pyalived", "-t", *extra, "-f", str(path)],
                         env)
