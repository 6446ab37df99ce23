"""Boot an IPVS-capable kernel once under qemu and run commands inside it.

Theory of operation: this machine's kernel has no IPVS, Debian's packaged
kernel does.  virtme-ng (``vng``) boots that kernel under qemu (TCG: KVM hangs
under nested virtualisation here) with the host's filesystem visible
read-only, so the project's venv runs unchanged inside the guest.  By default
the guest loads ``ip_vs`` and runs every ``@pytest.mark.kernel`` test under
``tests/kernel`` in one pytest process, with ``PYALIVED_IN_VM=1`` so those
tests know where they are (outside the VM ``conftest.py`` skips them).  The
guest's exit status comes back through vng; the runner also prints and checks
a sentinel line so that a guest that dies early is a failure, not a pass.

Usage::

    python tests/kernel/run_vm.py                 # all kernel tests
    python tests/kernel/run_vm.py -- -k parity    # extra pytest arguments
    python tests/kernel/run_vm.py --exec "python bench/ipvs_program.py --in-vm"

Environment: ``VNG`` (default ``/opt/vng/bin/vng`` or ``vng`` on PATH),
``PYALIVED_VM_KERNEL`` (default: the newest ``/boot/vmlinuz-*-amd64``).
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SENTINEL = "PYALIVED-VM-EXIT="
DEFAULT_TIMEOUT = 2400.0  # under test_in_vm.py's 2460 s; ~1,400 s used on a busy host
GUEST_MODULES = ("ip_vs", "ip_vs_pe_sip", "ipip")


def find_vng() -> str | None:
    env = os.environ.get("VNG")
    if env:
        return env
    if os.access("/opt/vng/bin/vng", os.X_OK):
        return "/opt/vng/bin/vng"
    return shutil.which("vng")


def find_kernel() -> str | None:
    env = os.environ.get("PYALIVED_VM_KERNEL")
    if env:
        return env
    images = sorted(glob.glob("/boot/vmlinuz-*-amd64"))
    return images[-1] if images else None


def missing_prerequisites() -> list[str]:
    out = []
    if find_vng() is None:
        out.append(
            "virtme-ng (vng), e.g. python3 -m venv /opt/vng && /opt/vng/bin/pip install virtme-ng"
        )
    if find_kernel() is None:
        out.append("a kernel image with IPVS modules (apt-get install linux-image-amd64)")
    for tool in ("qemu-system-x86_64", "ipvsadm", "busybox"):
        if shutil.which(tool) is None:
            out.append(tool)
    return out


def guest_script(command: str) -> str:
    venv_bin = ROOT / ".venv" / "bin"
    lines = [f"cd {shlex.quote(str(ROOT))}"]
    lines += [f"modprobe {m} || echo 'modprobe {m} failed' >&2" for m in GUEST_MODULES]
    lines += [
        "export PYALIVED_IN_VM=1 PYTHONDONTWRITEBYTECODE=1",
        f"export PATH={shlex.quote(str(venv_bin))}:$PATH",
        f"( {command} )",
        "rc=$?",
        f'echo "{SENTINEL}$rc"',
        "exit $rc",
    ]
    return "\n".join(lines)


def pytest_command(extra: list[str]) -> str:
    args = ["python", "-m", "pytest", "-m", "kernel", "-p", "no:cacheprovider", "tests/kernel"]
    return shlex.join(args + extra)


def run(command: str, *, timeout: float = DEFAULT_TIMEOUT, memory: str = "2G") -> int:
    missing = missing_prerequisites()
    if missing:
        print("cannot boot the test VM; missing: " + "; ".join(missing), file=sys.stderr)
        return 2
    vng = find_vng()
    kernel = find_kernel()
    assert vng is not None and kernel is not None
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(vng) + os.pathsep + env.get("PATH", "")
    argv = [
        vng, "-r", kernel, "--user", "root", "--disable-kvm", "--cpus", "2",
        "--memory", memory, "--exec", guest_script(command),
    ]  # fmt: skip
    try:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    except OSError as exc:
        print(f"cannot start vng: {exc}", file=sys.stderr)
        return 2
    assert proc.stdout is not None
    guest_rc: int | None = None
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith(SENTINEL):
                guest_rc = int(line[len(SENTINEL) :].strip() or 1)
        rc = proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc == -signal.SIGKILL and guest_rc is None:
        print(f"test VM killed after {timeout} s", file=sys.stderr)
        return 124
    if guest_rc is None:
        print(f"test VM ended without reporting (vng exit status {rc})", file=sys.stderr)
        return rc or 1
    return guest_rc if guest_rc else rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exec", dest="command", help="shell command to run in the guest")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    ap.add_argument("--memory", default="2G")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    ns = ap.parse_args(argv)
    command = ns.command or pytest_command(ns.pytest_args)
    return run(command, timeout=ns.timeout, memory=ns.memory)


if __name__ == "__main__":
    sys.exit(main())
