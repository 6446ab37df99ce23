"""Host side: boot the IPVS VM once and require every kernel test in it to pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernel.conftest import IN_VM

RUNNER = Path(__file__).with_name("run_vm.py")


@pytest.mark.skipif(IN_VM, reason="already inside the VM")
@pytest.mark.skipif(os.environ.get("PYALIVED_SKIP_VM") == "1", reason="PYALIVED_SKIP_VM=1 set")
def test_kernel_suite_passes_in_vm() -> None:
    done = subprocess.run(
        [sys.executable, str(RUNNER)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=2460,
        check=False,
    )
    tail = "\n".join(done.stdout.splitlines()[-60:])
    assert done.returncode == 0, (
        f"kernel tests failed in the VM (status {done.returncode}):\n{tail}"
    )
    summary = [line for line in tail.splitlines() if " passed" in line]
    assert summary, tail
    assert not any(word in summary[-1] for word in ("failed", "error", "skipped")), tail
    print(f"kernel tests in the VM: {summary[-1].strip()}")
