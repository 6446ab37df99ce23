"""The two-router lab of the interop tests; each daemon's log tail is printed at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pyalived.lab import Lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(2, workdir=tmp_path / "lab") as built:
        try:
            yield built
        finally:
            for proc in built.procs:
                print(f"----- {proc.name}")
                print("\n".join(proc.log_text().splitlines()[-40:]))
