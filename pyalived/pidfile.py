"""Pid files.

Theory of operation: the pid file holds the daemon's process id followed by a
newline, written atomically (temporary file, then rename) by the process that
will run the service, i.e. after daemonizing.  A pid file is *live* when the
process it names exists and is a pyalived process (its command line mentions
``pyalived``); a live pid file makes a second start refuse.  Anything else
(unreadable content, no such process, a recycled pid) is stale and is taken
over.  On exit the file is removed only if it still holds our own pid.
"""

from __future__ import annotations

import os
from pathlib import Path


class PidFileError(Exception):
    """An expected condition: another daemon runs, or the file cannot be written."""


def read_pid(path: str | os.PathLike[str]) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _is_pyalived(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"pyalived" in cmdline


def running_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid of the live daemon named by ``path``, or None if none (or ourselves)."""
    pid = read_pid(path)
    if pid is None or pid == os.getpid():
        return None
    return pid if _is_pyalived(pid) else None


def check_not_running(path: str | os.PathLike[str]) -> None:
    pid = running_pid(path)
    if pid is not None:
        raise PidFileError(f"pyalived is already running with pid {pid} (pid file {path})")


def write_pid(path: str | os.PathLike[str], pid: int | None = None) -> None:
    """Atomically write ``pid`` (default: ours), refusing a live pid file."""
    check_not_running(path)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{pid if pid is not None else os.getpid()}\n")
        os.replace(tmp, target)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise PidFileError(f"cannot write pid file {path}: {exc.strerror or exc}") from exc


def remove_pid(path: str | os.PathLike[str], pid: int | None = None) -> None:
    """Remove ``path`` if it names ``pid`` (default: this process)."""
    if read_pid(path) == (os.getpid() if pid is None else pid):
        try:
            Path(path).unlink()
        except OSError:
            pass
