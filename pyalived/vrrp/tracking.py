"""Evaluation of ``track_script`` and ``track_interface`` for VRRP instances.

Theory of operation: the pure part has two pieces.  ``ScriptHealth`` applies
the rise/fall hysteresis of one ``vrrp_script`` to its successive exit
statuses: the first result decides the initial status at once, after that
``rise`` consecutive successes are needed to turn a failing script OK and
``fall`` consecutive failures to turn an OK script failing.  ``InstanceTracking``
folds the status of every tracked script and interface of one instance into a
``Verdict``: an item with weight 0 that fails (script failing, interface down)
puts the instance in FAULT; a positive weight is added to the configured
priority while the item is OK/up, a negative weight is subtracted while it
fails/is down.  The result is clamped to 1..254; an address owner (priority
255) keeps 255 whatever the weights.  A script that has not reported yet
counts neither for nor against the instance.

Track files and tracked processes (``pyalived.vrrp.track_file``,
``pyalived.vrrp.track_process``) fold in the same way, following keepalived:
a file's value v with weight w (``reverse`` negates it) adds v * w, clamped
to -254..253, and -254 means FAULT; with weight 0 a non-zero value means
FAULT (with ``reverse``, a zero value).  A process is "up" when its quorum
is met; weight 0 means FAULT while it is not (with ``reverse``, while it
is); another weight is added while up if positive, while down if negative,
negated by ``reverse``.  A file or process not read yet does not count.

The I/O part is two small trio services: ``run_script_tracker`` runs one
``vrrp_script`` every ``interval`` (killed at ``timeout``, default the
interval) through a ``ScriptRunner`` and reports status changes to its
subscribers, and ``run_link_dispatch`` forwards a ``LinkWatcher``'s changes
to the instances tracking that interface.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import trio

from pyalived.config.model import VrrpScript
from pyalived.scripts import ScriptRunner, split_command
from pyalived.vrrp.ports import LinkWatcher

log = logging.getLogger("pyalived.vrrp.tracking")

MIN_PRIORITY = 1
MAX_TRACKED_PRIORITY = 254
OWNER_PRIORITY = 255


class ScriptHealth:
    """rise/fall hysteresis for one script; ``ok`` is None until the first result."""

    def __init__(self, rise: int = 1, fall: int = 1) -> None:
        self.rise = max(1, rise)
        self.fall = max(1, fall)
        self.ok: bool | None = None
        self._contrary = 0  # consecutive results disagreeing with ``ok``

    def record(self, success: bool) -> bool:
        """Account one result; return True when ``ok`` changed."""
        if self.ok is None:
            self.ok = success
            self._contrary = 0
            return True
        if success == self.ok:
            self._contrary = 0
            return False
        self._contrary += 1
        if self._contrary >= (self.rise if success else self.fall):
            self.ok = success
            self._contrary = 0
            return True
        return False


@dataclass(frozen=True)
class Verdict:
    faulty: bool
    priority: int
    reason: str  # why faulty, or which items changed the priority ("" when none)


@dataclass(frozen=True)
class Tracked:
    name: str
    weight: int
    reverse: bool = False  # track_file / track_process only


FILE_FAULT = -254  # a track file's weighted value at or below this means FAULT
FILE_MAX = 253


def file_effect(value: int, weight: int, reverse: bool) -> tuple[bool, int]:
    """(faulty, priority change) of a track file holding ``value``, as keepalived."""
    if weight == 0:
        return (value != 0) != reverse, 0
    status = max(FILE_FAULT, min(FILE_MAX, value * weight * (-1 if reverse else 1)))
    if status <= FILE_FAULT:
        return True, 0
    return False, status


def process_effect(up: bool, weight: int, reverse: bool) -> tuple[bool, int]:
    """(faulty, priority change) of a tracked process whose quorum is ``up`` or not."""
    if weight == 0:
        return up == reverse, 0
    if (weight > 0) == up:
        return False, -weight if reverse else weight
    return False, 0


class InstanceTracking:
    """Tracked-item status of one instance, folded into a ``Verdict``."""

    def __init__(
        self,
        base_priority: int,
        scripts: Iterable[Tracked] = (),
        interfaces: Iterable[Tracked] = (),
        files: Iterable[Tracked] = (),
        processes: Iterable[Tracked] = (),
    ) -> None:
        self.base_priority = base_priority
        # A name may be tracked twice (by the instance and by its sync group).
        self._files = tuple(files)
        self._processes = tuple(processes)
        self._file_value: dict[str, int | None] = {f.name: None for f in self._files}
        self._process_up: dict[str, bool | None] = {p.name: None for p in self._processes}
        self._scripts: dict[str, Tracked] = {}
        for s in scripts:
            self._scripts.setdefault(s.name, s)
        self._interfaces: dict[str, Tracked] = {}
        for i in interfaces:
            self._interfaces.setdefault(i.name, i)
        self._script_ok: dict[str, bool | None] = dict.fromkeys(self._scripts)
        self._link_up: dict[str, bool] = dict.fromkeys(self._interfaces, True)

    @property
    def script_names(self) -> tuple[str, ...]:
        return tuple(self._scripts)

    @property
    def interface_names(self) -> tuple[str, ...]:
        return tuple(self._interfaces)

    @property
    def file_names(self) -> tuple[str, ...]:
        return tuple(self._file_value)

    @property
    def process_names(self) -> tuple[str, ...]:
        return tuple(self._process_up)

    def file_value(self, name: str) -> int | None:
        return self._file_value.get(name)

    def process_up(self, name: str) -> bool | None:
        return self._process_up.get(name)

    def update_file(self, name: str, value: int) -> None:
        if name in self._file_value:
            self._file_value[name] = value

    def update_process(self, name: str, up: bool) -> None:
        if name in self._process_up:
            self._process_up[name] = up

    def script_ok(self, name: str) -> bool | None:
        """The last result applied for a tracked script (None: none yet)."""
        return self._script_ok.get(name)

    def update_script(self, name: str, ok: bool) -> None:
        if name in self._scripts:
            self._script_ok[name] = ok

    def update_link(self, ifname: str, up: bool) -> None:
        if ifname in self._interfaces:
            self._link_up[ifname] = up

    def verdict(self) -> Verdict:
        # (what, weight, healthy, word when healthy, word when not); scripts with
        # no result yet do not count.
        items = [
            (f"interface {name}", iface.weight, self._link_up[name], "up", "down")
            for name, iface in self._interfaces.items()
        ] + [
            (f"script {name}", script.weight, ok, "ok", "failing")
            for name, script in self._scripts.items()
            if (ok := self._script_ok[name]) is not None
        ]
        faults: list[str] = []
        notes: list[str] = []
        delta = 0
        for what, weight, healthy, good, bad in items:
            if weight == 0:
                if not healthy:
                    faults.append(f"{what} {bad}")
            elif (weight > 0) == healthy:
                # keepalived: a positive weight adds while healthy, a negative
                # one subtracts while failing.
                delta += weight
                notes.append(f"{what} {good if healthy else bad} {weight:+d}")
        for f in self._files:
            value = self._file_value[f.name]
            if value is None:
                continue
            faulty, change = file_effect(value, f.weight, f.reverse)
            if faulty:
                faults.append(f"track file {f.name} holds {value}")
            elif change:
                delta += change
                notes.append(f"track file {f.name} holds {value} {change:+d}")
        for p in self._processes:
            up = self._process_up[p.name]
            if up is None:
                continue
            word = "running" if up else "not running"
            faulty, change = process_effect(up, p.weight, p.reverse)
            if faulty:
                faults.append(f"process {p.name} {word}")
            elif change:
                delta += change
                notes.append(f"process {p.name} {word} {change:+d}")
        if self.base_priority >= OWNER_PRIORITY:
            priority = OWNER_PRIORITY
        else:
            priority = min(MAX_TRACKED_PRIORITY, max(MIN_PRIORITY, self.base_priority + delta))
        if faults:
            return Verdict(True, priority, ", ".join(faults))
        return Verdict(False, priority, ", ".join(notes))


def script_argv(script: VrrpScript) -> list[str]:
    return split_command(script.script)


ScriptSubscriber = Callable[[str, bool], None]


async def run_script_tracker(
    script: VrrpScript,
    runner: ScriptRunner,
    subscribers: Sequence[ScriptSubscriber],
    *,
    default_user: str | None = None,
    default_group: str | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``script`` every ``interval`` forever; report status changes.

    Runs start at t0, t0 + interval, t0 + 2*interval, ...; a run that outlasts
    the interval delays the next start until it has finished.
    """
    health = ScriptHealth(script.rise, script.fall)
    argv = script_argv(script)
    interval = script.interval if script.interval > 0 else 1.0
    timeout = script.timeout if script.timeout is not None else interval
    # The script's own ``user USER [GROUP]``, else global_defs' ``script_user``.
    user, group = (script.user, script.group) if script.user else (default_user, default_group)
    task_status.started()
    next_run = trio.current_time()
    while True:
        await trio.sleep_until(next_run)
        started = trio.current_time()
        status = await runner.run(argv, timeout, user, group)
        success = status == 0
        if status == -1:
            log.debug("track script %s timed out after %gs", script.name, timeout)
        if health.record(success):
            log.info("track script %s is now %s", script.name, "OK" if health.ok else "failing")
            for subscriber in subscribers:
                subscriber(script.name, success)
        next_run = max(started + interval, trio.current_time())


LinkSubscriber = Callable[[str, bool], None]


async def run_link_dispatch(
    watcher: LinkWatcher,
    subscribers: Mapping[str, Sequence[LinkSubscriber]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Forward link changes of interesting interfaces to their subscribers."""
    last: dict[str, bool] = {name: watcher.is_up(name) for name in subscribers}
    task_status.started()
    async for event in watcher.events():
        targets = subscribers.get(event.ifname)
        if not targets or last.get(event.ifname) == event.up:
            continue
        last[event.ifname] = event.up
        log.info("interface %s is %s", event.ifname, "up" if event.up else "down")
        for subscriber in targets:
            subscriber(event.ifname, event.up)
