"""Pure up/down policy of the health checkers.

Theory of operation: a ``CheckerPolicy`` decides *when* one checker probes its
real server and *what* a probe result means; it never touches a clock, a
socket or a process.  The caller asks ``get_timer()`` when the next probe is
due, calls ``probe_started(now)`` when it starts one (``get_timer()`` is then
``None`` until the probe ends) and ``probe_finished(result, now)`` with the
outcome, which returns the verdict transitions to report.  The rules follow
keepalived 2.2.7:

* The first probe runs after a random delay in ``[0, warmup]`` (``warmup``
  defaults to ``delay_loop``; 0 disables it), drawn from an injectable RNG.
* A checker starts UP, or DOWN with ``alpha``; in both cases it is reported.
* While UP, a failed probe is retried ``retry`` more times, each
  ``delay_before_retry`` after the previous one ends; only when all of those
  fail too does the checker go DOWN.  Any success resets the retry count.
* While DOWN, a single successful probe brings it UP (HTTP_GET and SSL_GET:
  see below); failures are not retried, the next probe simply comes
  ``delay_loop`` later.
* Otherwise the next probe starts ``delay_loop`` after the previous one ends.
* A result marked ``internal`` is not a check at all: the probe could not
  run because this process lacked a resource (file descriptors, memory; see
  ``pyalived.limits``).  It changes nothing -- verdict, retry count, URL --
  and the probe is simply tried again ``INTERNAL_RETRY_DELAY`` later (or
  ``delay_loop``, if shorter).  Exhaustion of the director's own resources
  must never take real servers out of service.
* HTTP_GET/SSL_GET (``urls`` > 0) probe one URL at a time, ``step`` being the
  one to check: each success moves on to the next (after the last, the
  first), a failure stays on the failing one (its retries check it again).
  Such a checker comes UP only after a pass over every URL in turn, the
  last one included; when it went DOWN by failing, the first success only
  starts that pass, from the first URL (so a single URL needs two successes),
  while with ``alpha`` the pass starts at once.  This is what keepalived
  2.2.7 does on the wire (one URL per ``delay_loop``).
* ``fast_recovery`` (HTTP_GET/SSL_GET) takes the ``delay_loop`` out of such a
  pass: while the checker has not yet finished its first pass, and while it
  is DOWN in a pass (after the failed URL passed again, or with ``alpha``),
  each success is followed by the next probe at once; the probe that
  brings it UP, or any failure, is followed by the usual wait.  This is
  keepalived 2.2.7's rule (a checker that "has not run", or is down without
  a failed URL, is scheduled again with no delay).

``RealServerHealth`` combines the checkers of one real server: the server is
alive only when every one of its checkers is UP (a server without checkers is
always alive), and MISC_CHECK's ``misc_dynamic`` results adjust its weight.

A reload hands a running checker its new specification (``reconfigure``) and
a running real server its new weight and checkers (``RealServerHealth.
reconfigure``); both keep their state.  The policy keeps its verdict, retry
count and URL; its timing settings change, and so does the wait in progress
when the interval it runs under changed: the next probe is then due the new
interval after the end of the last one, as if that interval had always been
in force, and when that moment has come already (a shorter ``delay_loop``)
the missed turns are skipped: the next probe comes at the first turn after the
reload.  Checkers spread over a ``delay_loop`` therefore stay spread, and a
reload never makes them all probe at once; a wait whose interval did not
change is left alone, to the exact time.  A probe in progress finishes and
counts under the new settings.  The real server keeps its alive flag: checker
*i* keeps the verdict of the old checker *i*, an added checker starts in the
real server's state, and a dead real server whose remaining checkers are all
UP (its failed checker was removed) has them all set DOWN, so that only a
successful probe brings it back, never a reload.  ``misc_dynamic`` weights
stay as their checkers last asked.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pyalived.checkers.spec import CheckerSpec, HttpGet, MiscCheck

#: Seconds before a probe that could not run (an internal error) is tried again.
INTERNAL_RETRY_DELAY = 1.0


class Verdict(enum.Enum):
    UP = "UP"
    DOWN = "DOWN"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    reason: str  # short human-readable outcome, e.g. "connection refused"
    weight: int | None = None  # misc_dynamic: the weight the probe asks for
    internal: bool = False  # the probe could not run here (EMFILE, ...): not a verdict


@dataclass(frozen=True)
class CheckerTransition:
    verdict: Verdict
    reason: str


class _Wait(enum.Enum):
    """What a policy waits for until its next probe."""

    FIRST = "first"  # the first probe (warmup)
    LOOP = "loop"  # delay_loop
    RETRY = "retry"  # delay_before_retry
    INTERNAL = "internal"  # a probe that could not run
    FAST = "fast"  # fast_recovery: the next URL of a pass, at once


def _urls(spec: CheckerSpec) -> int:
    return max(1, len(spec.urls)) if isinstance(spec, HttpGet) else 0


def _fast(spec: CheckerSpec) -> bool:
    return isinstance(spec, HttpGet) and spec.fast_recovery


class CheckerPolicy:
    """Timing and verdict of one checker; see the module docstring."""

    __slots__ = (
        "_first_pass", "_last_end", "_next", "_passes", "_passing", "_wait", "_waiting",
        "delay_before_retry", "delay_loop", "fast_recovery", "last_reason", "retries_done",
        "retry", "step", "steps", "up",
    )

    def __init__(
        self,
        *,
        delay_loop: float,
        retry: int,
        delay_before_retry: float,
        alpha: bool,
        now: float,
        first_delay: float = 0.0,
        urls: int = 0,
        fast_recovery: bool = False,
    ) -> None:
        if first_delay < 0:
            raise ValueError("first_delay must not be negative")
        self._configure(delay_loop, retry, delay_before_retry, urls)
        self.fast_recovery = fast_recovery
        self._first_pass = True  # keepalived's "has not run": no pass finished, no failure
        self.up = not alpha
        self.retries_done = 0
        self.step = 0  # the URL the next probe checks
        self._passing = alpha  # DOWN, in a pass over every URL that would bring it UP
        self._next: float | None = now + first_delay
        self._last_end: float | None = None  # when the last probe ended
        self._wait = _Wait.FIRST  # what the wait until ``_next`` is
        self._waiting = first_delay  # the interval ``_next`` was set with
        self.last_reason = "initial state (alpha)" if alpha else "initial state"

    def _configure(self, delay_loop: float, retry: int, delay_before_retry: float,
                   urls: int) -> None:
        if delay_loop <= 0:
            raise ValueError("delay_loop must be positive")
        if urls < 0:
            raise ValueError("urls must not be negative")
        if retry < 0 or delay_before_retry < 0:
            raise ValueError("retry and delay_before_retry must not be negative")
        self.delay_loop = delay_loop
        self.retry = retry
        self.delay_before_retry = delay_before_retry
        self.steps = max(1, urls)  # what the probes go through in turn: the URLs
        self._passes = urls > 0  # UP only after a pass over every URL

    def _interval(self, wait: _Wait) -> float:
        if wait is _Wait.RETRY:
            return self.delay_before_retry
        if wait is _Wait.INTERNAL:
            return min(self.delay_loop, INTERNAL_RETRY_DELAY)
        if wait is _Wait.FAST:
            return 0.0
        return self.delay_loop

    @classmethod
    def for_spec(
        cls, spec: CheckerSpec, now: float, rng: random.Random, *, alpha: bool | None = None
    ) -> CheckerPolicy:
        """Build the policy of ``spec``; the warmup delay is drawn from ``rng``.

        ``alpha`` overrides the specification's (a checker added to a running
        real server starts in that server's state)."""
        warmup = spec.timing.effective_warmup
        return cls(
            delay_loop=spec.timing.delay_loop,
            retry=spec.effective_retry,
            delay_before_retry=spec.effective_delay_before_retry,
            alpha=spec.timing.alpha if alpha is None else alpha,
            now=now,
            first_delay=rng.uniform(0.0, warmup) if warmup > 0 else 0.0,
            urls=_urls(spec),
            fast_recovery=_fast(spec),
        )

    def reconfigure(self, spec: CheckerSpec, now: float) -> None:
        """Take ``spec``'s settings (a reload), keeping the state; see the module docstring."""
        self._configure(
            spec.timing.delay_loop, spec.effective_retry, spec.effective_delay_before_retry,
            _urls(spec),
        )
        self.fast_recovery = _fast(spec)
        if self.step >= self.steps:
            self.step = 0
        if not self._passes:
            self._passing = False
        last, due = self._last_end, self._next
        if due is None or last is None:
            return  # a probe in progress, or the first one still to come: as it was
        interval = self._interval(self._wait)
        if interval == self._waiting:
            return  # the same wait as before
        self._waiting = interval
        turns = math.floor(max(0.0, now - last) / interval) + 1 if interval > 0 else 0
        self._next = last + turns * interval

    def probe_abandoned(self, now: float) -> None:
        """The probe in progress was cancelled without a result: the next one is due now."""
        if self._next is not None:
            raise RuntimeError("no probe in progress")
        self._next = now

    def force_down(self) -> None:
        """DOWN without a failure (a reload must not revive a dead real server): like
        ``alpha``, the next success (a pass over every URL) brings it UP."""
        self.up, self.retries_done, self._passing, self.step = False, 0, True, 0

    @property
    def verdict(self) -> Verdict:
        return Verdict.UP if self.up else Verdict.DOWN

    @property
    def probing(self) -> bool:
        return self._next is None

    def get_timer(self) -> float | None:
        """When the next probe is due; None while a probe is in progress."""
        return self._next

    def probe_started(self, now: float) -> None:
        if self._next is None:
            raise RuntimeError("a probe is already in progress")
        self._next = None

    def _set_wait(self, wait: _Wait, now: float) -> None:
        self._wait, self._waiting = wait, self._interval(wait)
        self._next = now + self._waiting

    def probe_finished(self, result: ProbeResult, now: float) -> list[CheckerTransition]:
        if self._next is not None:
            raise RuntimeError("no probe in progress")
        self._last_end = now
        if result.internal:
            self._set_wait(_Wait.INTERNAL, now)
            return []
        out: list[CheckerTransition] = []
        if result.ok:
            self.retries_done = 0
            # fast_recovery: keepalived checks again at once while it "has not run" or
            # is down in a pass (not on the probe that ends the pass by coming up)
            fast = False
            if self.up:
                self.step = (self.step + 1) % self.steps
                fast = self._first_pass and self.step != 0
                if self.step == 0:
                    self._first_pass = False
            elif self._passes and not self._passing:
                self._passing, self.step, fast = True, 0, True
            elif self._passes and self.step + 1 < self.steps:
                self.step += 1
                fast = True
            else:
                self.up, self._passing, self.step = True, False, 0
                self._first_pass = False
                out.append(CheckerTransition(Verdict.UP, result.reason))
            self._set_wait(_Wait.FAST if fast and self.fast_recovery else _Wait.LOOP, now)
            self.last_reason = result.reason
            return out
        self._passing = False
        self._first_pass = False
        if self.up and self.retries_done < self.retry:
            self.retries_done += 1
            self._set_wait(_Wait.RETRY, now)
        else:
            if self.up:
                self.up = False
                reason = result.reason
                if self.retry:
                    reason = f"{reason} (after {self.retry} retries)"
                out.append(CheckerTransition(Verdict.DOWN, reason))
            self.retries_done = 0
            self._set_wait(_Wait.LOOP, now)
        self.last_reason = result.reason
        return out


@dataclass(frozen=True)
class HealthChange:
    """A change of a real server's alive flag and/or effective weight."""

    alive: bool
    weight: int
    reason: str


class RealServerHealth:
    """Combines the verdicts of a real server's checkers (all UP -> alive)."""

    __slots__ = ("_asked", "_dynamic", "_up", "configured_weight")

    def __init__(self, weight: int, checkers: Sequence[CheckerSpec | None], alpha: Sequence[bool]):
        if len(checkers) != len(alpha):
            raise ValueError("one alpha flag per checker")
        self.configured_weight = weight
        self._up = [not a for a in alpha]
        # Which checkers are misc_dynamic and the weights they asked for; both
        # None when none is (nearly always: a large director holds many of these).
        self._dynamic: tuple[bool, ...] | None = None
        self._asked: list[int | None] | None = None
        self._set_dynamic(checkers)

    def _set_dynamic(self, checkers: Sequence[CheckerSpec | None]) -> None:
        dynamic = tuple(_dynamic(c) for c in checkers)
        if not any(dynamic):
            self._dynamic = self._asked = None
            return
        old_dynamic, old_asked = self._dynamic, self._asked
        self._asked = [
            old_asked[i] if old_asked is not None and old_dynamic is not None
            and i < len(old_dynamic) and old_dynamic[i] and dynamic[i] else None
            for i in range(len(dynamic))
        ]
        self._dynamic = dynamic

    @classmethod
    def for_checkers(cls, weight: int, checkers: Sequence[CheckerSpec]) -> RealServerHealth:
        return cls(weight, checkers, [c.timing.alpha for c in checkers])

    @property
    def alive(self) -> bool:
        return all(self._up)

    @property
    def weight(self) -> int:
        base = self.configured_weight
        if self._asked is None:
            return max(0, base)
        return max(0, base + sum(w - base for w in self._asked if w is not None))

    @property
    def failed_checkers(self) -> int:
        return self._up.count(False)

    def checker_up(self, index: int) -> bool:
        return self._up[index]

    def update(
        self, index: int, verdict: Verdict | None, weight: int | None, reason: str
    ) -> HealthChange | None:
        """Record checker ``index``'s new verdict (None: unchanged) and dynamic weight.

        ``weight`` is honoured only for ``misc_dynamic`` checkers: each one
        shifts the server's weight by ``weight - configured weight``, so a
        single one sets the weight to exactly ``weight``.  Returns the change
        of the server's state, or None when nothing visible changed.
        """
        before = (self.alive, self.weight)
        if verdict is not None:
            self._up[index] = verdict is Verdict.UP
        if weight is not None and self._dynamic is not None and self._dynamic[index]:
            assert self._asked is not None
            self._asked[index] = weight
        return self._change(before, reason)

    def reconfigure(
        self, weight: int, checkers: Sequence[CheckerSpec], reason: str = "reload"
    ) -> HealthChange | None:
        """Take the real server's new weight and checkers (a reload), keeping its state.

        Checker *i* keeps the verdict of the old checker *i* (and its asked
        weight if it stays ``misc_dynamic``), added checkers start in the real
        server's state, and a dead real server never comes alive here: if none
        of its checkers is DOWN any more, all of them are set DOWN (the caller
        then sets DOWN each policy that ``checker_up`` says is DOWN).  A real
        server left without checkers has nothing to fail: it is alive.  Returns
        the change of the server's state (its weight, or that last case), or None.
        """
        before = (self.alive, self.weight)
        alive = before[0]
        n, old = len(checkers), len(self._up)
        self._up = [self._up[i] if i < old else alive for i in range(n)]
        if n and not alive and all(self._up):
            self._up = [False] * n
        self._set_dynamic(checkers)
        self.configured_weight = weight
        return self._change(before, reason)

    def _change(self, before: tuple[bool, int], reason: str) -> HealthChange | None:
        after = (self.alive, self.weight)
        if after == before:
            return None
        return HealthChange(after[0], after[1], reason)


def _dynamic(checker: CheckerSpec | None) -> bool:
    return isinstance(checker, MiscCheck) and checker.misc_dynamic
