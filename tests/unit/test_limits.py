"""The open-file budget and the throttled log of internal errors (pyalived.limits)."""

from __future__ import annotations

import errno
import logging
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyalived.limits import (
    NOFILE_CEILING,
    NOFILE_WARN_BELOW,
    LogThrottle,
    is_resource_exhaustion,
    raise_nofile_limit,
)

REPO = Path(__file__).resolve().parents[2]


class FakeRlimit:
    """getrlimit/setrlimit over a pair of numbers; ``refuse`` makes setrlimit fail."""

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse
        self.calls: list[tuple[int, int]] = []

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def set(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        self.calls.append(limits)
        if self.refuse:
            raise ValueError("not allowed to raise maximum limit")
        self.limits = limits


def raise_with(fake: FakeRlimit) -> int:
    return raise_nofile_limit(getrlimit=fake.get, setrlimit=fake.set)


def test_soft_limit_goes_up_to_the_hard_limit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyalived.limits")
    fake = FakeRlimit(1024, 65536)
    assert raise_with(fake) == 65536
    assert fake.limits == (65536, 65536)
    assert [r.getMessage() for r in caplog.records] == [
        "open files limit raised from 1024 to 65536"]


def test_ceiling_unlimited_nothing_to_do_and_refusal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyalived.limits")
    huge = FakeRlimit(1024, 1 << 30)
    assert raise_with(huge) == NOFILE_CEILING  # children inherit it: not a billion
    assert huge.limits == (NOFILE_CEILING, 1 << 30)
    unlimited = FakeRlimit(1024, resource.RLIM_INFINITY)
    assert raise_with(unlimited) == NOFILE_CEILING
    done = FakeRlimit(65536, 65536)
    assert raise_with(done) == 65536 and done.calls == []
    caplog.clear()
    refused = FakeRlimit(1024, 65536, refuse=True)
    assert raise_with(refused) == 1024
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("cannot raise the open files limit from 1024 to 65536")
    assert "at least 4096 is advised" in messages[1]


def test_low_hard_limit_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeRlimit(256, 1024)
    assert raise_with(fake) == 1024
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"open files limit is 1024 (hard limit 1024); at least {NOFILE_WARN_BELOW}" in (
        warnings[0].getMessage())


def test_resource_errnos() -> None:
    for code in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
        assert is_resource_exhaustion(OSError(code, "x"))
    assert not is_resource_exhaustion(OSError(errno.ECONNREFUSED, "x"))
    assert not is_resource_exhaustion(OSError("no errno"))
    assert not is_resource_exhaustion(ValueError("x"))


_CHILD = textwrap.dedent("""
    import os, resource, sys
    from pyalived.limits import raise_nofile_limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))  # as a service manager leaves it
    if sys.argv[1] == "raise":
        raise_nofile_limit()
    fds = []
    try:
        for _ in range(2000):
            fds.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        print(f"failed after {len(fds)}: {exc.strerror}")
    else:
        print("2000 open")
""")


def test_the_raise_is_what_lets_a_process_hold_more_than_1024() -> None:
    def child(mode: str) -> str:
        proc = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True,
                              text=True, timeout=60, cwd=REPO, check=True)
        return proc.stdout.strip()

    assert child("keep").endswith("Too many open files")
    assert child("raise") == "2000 open"


def test_throttle_logs_the_first_then_one_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    throttle = LogThrottle(logging.getLogger("t"), 10.0, clock=lambda: now[0])
    written = []
    for step in range(100):  # 100 errors over 25 s
        now[0] = step * 0.25
        written.append(throttle.log(logging.ERROR, "accept failed: %s", "too many open files"))
    assert [i for i, w in enumerate(written) if w] == [0, 40, 80]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "accept failed: too many open files",
        "accept failed: too many open files "
        "(39 similar message(s) suppressed since the last one)",
        "accept failed: too many open files "
        "(39 similar message(s) suppressed since the last one)",
    ]
    assert all(r.exc_info is None for r in caplog.records)
    assert throttle.suppressed == 19
