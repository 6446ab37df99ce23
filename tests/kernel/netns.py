"""Network-namespace helpers for the kernel tests (IPVS tables are per namespace)."""

from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` with the calling thread inside netns ``name`` (sockets it opens stay there)."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as target:
        _setns(target.fileno())
        try:
            return fn()
        finally:
            _setns(home.fileno())


def enter_netns(name: str) -> None:
    """Move the calling thread into netns ``name`` for good (e.g. in a forked child)."""
    with open(f"/run/netns/{name}") as target:
        _setns(target.fileno())


@contextmanager
def netns(tag: str) -> Iterator[str]:
    name = f"pyalk{os.getpid()}{tag}{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # IPVS accepts only unicast destinations: give the test range a route
        # (nothing is ever sent to it).
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "route", "add", "198.18.0.0/15", "dev", "lo"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def sh(ns: str, *argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} in {ns}: {done.stderr.strip()}")
    return done.stdout


def ipvsadm_table(ns: str) -> dict[str, frozenset[str]]:
    """``ipvsadm -Ln`` as {service line: destination lines}, independent of hash order."""
    out: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in sh(ns, "ipvsadm", "-Ln").splitlines()[3:]:
        if line.startswith("  ->"):
            assert current is not None
            current.add(" ".join(line.split()))
        else:
            current = out.setdefault(" ".join(line.split()), set())
    return {k: frozenset(v) for k, v in out.items()}
