"""Kernel tests run only inside the test VM (``run_vm.py`` sets PYALIVED_IN_VM=1)."""

from __future__ import annotations

import os

import pytest

IN_VM = os.environ.get("PYALIVED_IN_VM") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_VM:
        return
    skip = pytest.mark.skip(reason="needs the IPVS kernel: run tests/kernel/run_vm.py")
    for item in items:
        if item.get_closest_marker("kernel"):
            item.add_marker(skip)
