"""Kernel tests run only inside the test VM (``run_vm.py`` sets PYALIVED_IN_VM=1)."""

from __future__ import annotations

import os

import pytest

IN_VM = os.environ.get("PYALIVED_IN_VM") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the host, kernel tests are not skipped but deselected: they run in the VM,
    booted once by ``test_in_vm.py``, which fails if any of them fails there."""
    if IN_VM:
        return
    kernel = [item for item in items if item.get_closest_marker("kernel")]
    if kernel:
        config.hook.pytest_deselected(items=kernel)
        items[:] = [item for item in items if not item.get_closest_marker("kernel")]
