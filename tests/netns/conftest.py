"""Shared fixtures for namespace tests: throwaway labs that are always torn down.

Every lab gets a unique name prefix (pid, counter, random token), lives in its
own namespaces and is deleted at teardown, pass or fail.  The implementation
under test is pyalived; setting PYALIVED_TEST_IMPL=keepalived runs the same
tests against keepalived 2.2.7, which validates the tests themselves.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from pyalived.lab import Impl, Lab, sweep_stale_labs

IMPL = cast(Impl, os.environ.get("PYALIVED_TEST_IMPL", "pyalived"))


def _check_environment() -> None:
    if os.geteuid() != 0:
        pytest.skip("namespace tests need root")
    for tool in ("ip", "tcpdump"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


@pytest.fixture(scope="session", autouse=True)
def _sweep_leftovers() -> None:
    """Remove namespaces left behind by lab runs whose process died."""
    if os.geteuid() == 0 and shutil.which("ip"):
        sweep_stale_labs()


@pytest.fixture
def impl() -> Impl:
    """The VRRP daemon under test."""
    return IMPL


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """A factory: ``make_lab(routers=2, clients=0)`` returns a built ``Lab``.

    Logs, configs and captures go under the test's tmp_path; at teardown each
    daemon log's tail is printed (pytest shows it when the test fails) and the
    lab is destroyed.
    """
    _check_environment()
    labs: list[Lab] = []

    def factory(routers: int = 2, clients: int = 0) -> Lab:
        lab = Lab(routers, clients, workdir=tmp_path / f"lab{len(labs)}")
        labs.append(lab)
        return lab.__enter__()

    try:
        yield factory
    finally:
        for lab in labs:
            for proc in lab.procs:
                try:
                    tail = proc.log_text().splitlines()[-40:]
                except OSError:
                    continue
                print(f"----- {proc.name} ({' '.join(proc.argv)})")
                print("\n".join(tail))
            lab.close()
