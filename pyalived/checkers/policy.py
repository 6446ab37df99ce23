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

``RealServerHealth`` combines the checkers of one real server: the server is
alive only when every one of its checkers is UP (a server without checkers is
always alive), and MISC_CHECK's ``misc_dynamic`` results adjust its weight.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pyalived.checkers.spec import CheckerSpec, HttpGet, MiscCheck

#: Seconds before a probe that could not run (an internal error) is tried again.
INTERNAL_RETRY_DELAY = 1.0


class Verdict(enum.Enum):
    UP = "UP"
    DOWN = "DOWN"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str  # short human-readable outcome, e.g. "connection refused"
    weight: int | None = None  # misc_dynamic: the weight the probe asks for
    internal: bool = False  # the probe could not run here (EMFILE, ...): not a verdict


@dataclass(frozen=True)
class CheckerTransition:
    verdict: Verdict
    reason: str


class CheckerPolicy:
    """Timing and verdict of one checker; see the module docstring."""

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
    ) -> None:
        if delay_loop <= 0:
            raise ValueError("delay_loop must be positive")
        if urls < 0:
            raise ValueError("urls must not be negative")
        if retry < 0 or delay_before_retry < 0 or first_delay < 0:
            raise ValueError("retry, delay_before_retry and first_delay must not be negative")
        self.delay_loop = delay_loop
        self.retry = retry
        self.delay_before_retry = delay_before_retry
        self.up = not alpha
        self.retries_done = 0
        self.steps = max(1, urls)  # what the probes go through in turn: the URLs
        self.step = 0  # the URL the next probe checks
        self._passes = urls > 0  # UP only after a pass over every URL
        self._passing = alpha  # DOWN, in a pass over every URL that would bring it UP
        self._next: float | None = now + first_delay
        self.last_reason = "initial state (alpha)" if alpha else "initial state"

    @classmethod
    def for_spec(cls, spec: CheckerSpec, now: float, rng: random.Random) -> CheckerPolicy:
        """Build the policy of ``spec``; the warmup delay is drawn from ``rng``."""
        warmup = spec.timing.effective_warmup
        return cls(
            delay_loop=spec.timing.delay_loop,
            retry=spec.effective_retry,
            delay_before_retry=spec.effective_delay_before_retry,
            alpha=spec.timing.alpha,
            now=now,
            first_delay=rng.uniform(0.0, warmup) if warmup > 0 else 0.0,
            urls=max(1, len(spec.urls)) if isinstance(spec, HttpGet) else 0,
        )

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

    def probe_finished(self, result: ProbeResult, now: float) -> list[CheckerTransition]:
        if self._next is not None:
            raise RuntimeError("no probe in progress")
        if result.internal:
            self._next = now + min(self.delay_loop, INTERNAL_RETRY_DELAY)
            return []
        out: list[CheckerTransition] = []
        if result.ok:
            self.retries_done = 0
            if self.up:
                self.step = (self.step + 1) % self.steps
            elif self._passes and not self._passing:
                self._passing, self.step = True, 0
            elif self._passes and self.step + 1 < self.steps:
                self.step += 1
            else:
                self.up, self._passing, self.step = True, False, 0
                out.append(CheckerTransition(Verdict.UP, result.reason))
            self._next = now + self.delay_loop
            self.last_reason = result.reason
            return out
        self._passing = False
        if self.up and self.retries_done < self.retry:
            self.retries_done += 1
            self._next = now + self.delay_before_retry
        else:
            if self.up:
                self.up = False
                reason = result.reason
                if self.retry:
                    reason = f"{reason} (after {self.retry} retries)"
                out.append(CheckerTransition(Verdict.DOWN, reason))
            self.retries_done = 0
            self._next = now + self.delay_loop
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

    def __init__(self, weight: int, checkers: Sequence[CheckerSpec | None], alpha: Sequence[bool]):
        if len(checkers) != len(alpha):
            raise ValueError("one alpha flag per checker")
        self.configured_weight = weight
        self._up = [not a for a in alpha]
        self._dynamic = [isinstance(c, MiscCheck) and c.misc_dynamic for c in checkers]
        self._delta = [0] * len(checkers)

    @classmethod
    def for_checkers(cls, weight: int, checkers: Sequence[CheckerSpec]) -> RealServerHealth:
        return cls(weight, checkers, [c.timing.alpha for c in checkers])

    @property
    def alive(self) -> bool:
        return all(self._up)

    @property
    def weight(self) -> int:
        return max(0, self.configured_weight + sum(self._delta))

    @property
    def failed_checkers(self) -> int:
        return self._up.count(False)

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
        if weight is not None and self._dynamic[index]:
            self._delta[index] = weight - self.configured_weight
        after = (self.alive, self.weight)
        if after == before:
            return None
        return HealthChange(after[0], after[1], reason)
