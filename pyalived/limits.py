"""Process resource limits: the open-file budget, and resource exhaustion as an internal error.

Theory of operation: every socket, pipe and netlink channel of the daemon is a
file descriptor, and the kernel refuses the next one with EMFILE once the
process holds ``RLIMIT_NOFILE`` of them (ENFILE: the whole system is out).
A service manager typically starts daemons with a soft limit of 1024 and a
far higher hard limit; the soft limit exists for programs still using
``select()``, which pyalived does not (trio uses epoll).  So at start
``raise_nofile_limit`` lifts the soft limit to the hard one, capped at
``NOFILE_CEILING`` (children -- notify, track and MISC_CHECK scripts --
inherit it, and a few programs still loop over every possible descriptor),
and warns when even the hard limit is below ``NOFILE_WARN_BELOW``.  The unit
file sets ``LimitNOFILE=`` so that the hard limit does not depend on the
service manager's defaults.

Running out of descriptors or kernel memory says nothing about a real server
or a peer: it is this process's own trouble.  ``is_resource_exhaustion``
recognises those failures (``RESOURCE_ERRNOS``), so that callers can treat
them as internal errors -- log, retry soon, never count them against a real
server (the checkers) or silently lose a frame (gratuitous ARPs).  Such
failures come in bursts, often thousands a second, so their log lines go
through a ``LogThrottle``: the first of a burst is logged at once, the rest
only counted, and the count is reported with the next line that gets through,
at most one per ``interval``.  No traceback is ever attached: the errno says
all there is to say.
"""

from __future__ import annotations

import errno
import logging
import resource
import time
from collections.abc import Callable

log = logging.getLogger("pyalived.limits")

#: errno values meaning "this process or host is out of a resource", not "the peer failed".
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: The soft open-file limit is raised to the hard limit, but never above this.
NOFILE_CEILING = 524288
#: Below this many descriptors (the hard limit) a warning suggests raising it.
NOFILE_WARN_BELOW = 4096

GetRlimit = Callable[[int], tuple[int, int]]
SetRlimit = Callable[[int, tuple[int, int]], None]


def is_resource_exhaustion(exc: BaseException) -> bool:
    """True for an ``OSError`` whose errno is one of ``RESOURCE_ERRNOS``."""
    return isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS


def raise_nofile_limit(
    *,
    getrlimit: GetRlimit = resource.getrlimit,
    setrlimit: SetRlimit = resource.setrlimit,
) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (at most ``NOFILE_CEILING``).

    Returns the soft limit in force afterwards.  Never raises: a refusal is
    logged and the old limit kept.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    target = NOFILE_CEILING if hard == infinite else min(hard, NOFILE_CEILING)
    current = soft
    if soft != infinite and soft < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
        else:
            current = target
            log.info("open files limit raised from %d to %d", soft, target)
    if current != infinite and current < NOFILE_WARN_BELOW:
        log.warning(
            "open files limit is %d (hard limit %s); at least %d is advised "
            "(LimitNOFILE= in the systemd unit, ulimit -n)",
            current, "unlimited" if hard == infinite else hard, NOFILE_WARN_BELOW,
        )
    return current


class LogThrottle:
    """At most one log line per ``interval`` seconds; the ones in between are counted.

    ``log`` returns whether the line was written.  A written line that
    follows suppressed ones says how many were suppressed.  ``clock`` is
    injectable (the trio code passes ``trio.current_time``).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.interval = interval
        self._clock = clock
        self._next = -float("inf")
        self.suppressed = 0

    def log(self, level: int, msg: str, *args: object) -> bool:
        now = self._clock()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.interval
        if self.suppressed:
            msg += " (%d similar message(s) suppressed since the last one)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self._logger.log(level, msg, *args)
        return True
