"""A tiny namespace LAN for the socket and netlink tests of pyalived.vrrp.

``NsLan(n)`` makes a bridge namespace and ``n`` host namespaces, each with an
``eth0`` (one end of a veth pair whose other end is enslaved to the bridge)
carrying 198.18.7.(10+i)/24.  Names carry the pid, a counter and a random
token; ``close()`` deletes every namespace (and so every interface) it made,
and is always called by the fixture, pass or fail.
"""

from __future__ import annotations

import itertools
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pytest

SUBNET = "198.18.7"
_counter = itertools.count(1)


def sh(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


class NsLan:
    def __init__(self, hosts: int = 2) -> None:
        self.prefix = f"pnt{os.getpid()}x{next(_counter)}{secrets.token_hex(2)}"
        self.bridge = f"{self.prefix}br"
        self.hosts: list[str] = []
        self._made: list[str] = []
        try:
            self._add(self.bridge)
            sh("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.bridge, "link", "set", "br0", "up")
            for i in range(hosts):
                self.add_host(i)
        except BaseException:
            self.close()
            raise

    def _add(self, ns: str) -> None:
        sh("ip", "netns", "add", ns)
        self._made.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def add_host(self, i: int) -> None:
        ns = f"{self.prefix}h{i}"
        self._add(ns)
        leg = f"leg{i}"
        sh("ip", "-n", self.bridge, "link", "add", leg, "type", "veth",
           "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.bridge, "link", "set", leg, "master", "br0", "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
        self.hosts.append(ns)

    @staticmethod
    def ip(i: int) -> str:
        return f"{SUBNET}.{10 + i}"

    def leg(self, i: int) -> str:
        return f"leg{i}"

    def run(self, ns: str, *argv: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", ns, *argv, check=check)

    def addrs(self, ns: str, dev: str | None = None) -> list[str]:
        args: Sequence[str] = ("dev", dev) if dev else ()
        return sh("ip", "-n", ns, "-o", "-4", "addr", "show", *args).splitlines()

    def close(self) -> None:
        for ns in reversed(self._made):
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        self._made.clear()


@contextmanager
def ns_lan(hosts: int) -> Iterator[NsLan]:
    """An ``NsLan`` for one test (skipped without root), deleted pass or fail."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    net = NsLan(hosts)
    try:
        yield net
    finally:
        net.close()
