"""Finding and vetting every script of a configuration at load, as keepalived 2.2.7 does.

Theory of operation: once a configuration is parsed, ``check_scripts`` looks
at every script it names -- ``vrrp_script``, the notify scripts of instances,
sync groups, real and virtual servers, ``MISC_CHECK``'s ``misc_path``, the
start-up/shutdown scripts and the notify FIFO scripts -- and decides, for
each, whether it would ever run.  It reports each finding as a ``file:line``
diagnostic and returns the configuration with the scripts that cannot run
taken out, so that ``-t``, the daemon's start and a reload all see the same
thing (the loader runs this; the daemon never learns of a disabled script).

Finding the program (``find_script``): the first word of the line (quotes
grouping as ``pyalived.cmdline.split_command`` splits) names it.  A name with
a ``/`` is taken as it is and only has to exist, reachable by the script's
user (every directory on the way searchable by that user; the execute bit of
the file is not looked at, as keepalived does not).  A bare name is looked for
in the ``PATH`` of the loader (keepalived's PATH at configuration time; with
no PATH, ``/bin:/usr/bin``), and the first entry holding an executable file
of that name wins, as ``execvp`` would choose it.

The user a script runs as: its own ``user``/``USER`` if the keyword has one
(the ``USER [GROUP]`` after a notify script),
else ``global_defs``' ``script_user``, else ``keepalived_script`` if that user
exists, else root -- but under ``enable_script_security`` root is never taken
by default: with neither ``script_user`` nor a ``keepalived_script`` user, no
script can run.  A user or group that does not resolve removes the script.

Security (``insecurity``): the script's real path (symbolic links resolved)
and every directory above it must be owned by root, and none of them may be
writable by others, nor by a group other than root's; a directory with the
sticky bit (``/tmp``) may be writable by all.  Under
``enable_script_security`` a script that fails this is disabled; without it,
the script runs anyway.  A script that is a directory is always disabled.

What happens to a script that cannot run, each as keepalived 2.2.7 does it
(which also decides the ``-t`` exit status, see ``pyalived.config.diagnostics``):

* a ``vrrp_script``: a WARNING, and the script is removed; each
  ``track_script`` naming it gets a WARNING of its own and is ignored (the
  instance or group then runs as if the line were not there);
* a notify script, ``misc_path``, start-up/shutdown or FIFO script not found
  or insecure: a NOTICE (which does not change the exit status: keepalived says
  nothing), and it is dropped; a ``MISC_CHECK`` dropped so leaves its real
  server with the checkers it has left;
* a user that does not resolve: the script is removed, with a WARNING -- but
  only a NOTICE when it is the user named on a notify line or a FIFO script
  line (keepalived 2.2.7's ``-t`` passes those).

A notify line (``notify_master SCRIPT [USER [GROUP]]``, and the same for the
other notify keywords, ``notify_up``/``notify_down`` and
``quorum_up``/``quorum_down``) may name its own user and group: the words
after the script.  keepalived 2.2.7 reads them so even when the script is not
quoted, so ``notify_master /x.sh arg1`` runs ``/x.sh`` as the user ``arg1``;
``misc_path`` is different: its words are all the command, and ``user`` is a
keyword of its own.  A script run by another user counts for the
``enable_script_security`` warning like one run by root.

Finally, when some script would run and ``enable_script_security`` is not
set, one WARNING of category SCRIPT_SECURITY says so (``-t`` exit status 6);
scripts that will never run do not count.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
from dataclasses import dataclass, replace
from typing import Protocol

from pyalived.cmdline import split_command
from pyalived.config.diagnostics import Category, DiagnosticSink
from pyalived.config.lexer import Source
from pyalived.config.model import (
    NOWHERE,
    Checker,
    CheckerType,
    Config,
    GlobalDefs,
    Location,
    Notify,
    NotifyFifo,
    ParentScript,
    RealServer,
    ScriptUser,
    TrackScriptRef,
    VirtualServer,
    VrrpInstance,
    VrrpScript,
    VrrpSyncGroup,
)

DEFAULT_SCRIPT_USER = "keepalived_script"
DEFAULT_PATH = "/bin:/usr/bin"


@dataclass(frozen=True)
class RunAs:
    """Who a script runs as: the name (for messages), uid and all its gids."""

    name: str
    uid: int
    gids: frozenset[int]


ROOT = RunAs("root", 0, frozenset({0}))


def resolve_user(user: str, group: str | None) -> RunAs | str:
    """The ``RunAs`` of ``user`` [``group``], or why it cannot be used."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return f"user '{user}' does not exist"
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            return f"group '{group}' does not exist"
    return RunAs(user, entry.pw_uid, frozenset({gid, *os.getgrouplist(user, gid)}))


def _allowed(st: os.stat_result, who: RunAs, bit: int) -> bool:
    """Whether ``who`` has permission ``bit`` (4 read, 2 write, 1 execute) on ``st``."""
    if who.uid == 0:
        # root may search any directory; it may execute a file with any execute bit
        return bit != 1 or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == who.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in who.gids:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def _reachable(path: str, who: RunAs) -> str | None:
    """The real path of ``path`` if it exists and ``who`` may search every directory on
    the way to it (and to the targets of its links), else None."""
    try:
        real = os.path.realpath(path, strict=True)
    except OSError:
        return None
    for p in (path, real):
        absolute = os.path.abspath(p)
        parent = os.path.dirname(absolute)
        while True:
            try:
                if not _allowed(os.stat(parent), who, 1):
                    return None
            except OSError:
                return None
            if parent == "/":
                break
            parent = os.path.dirname(parent)
    return real


def find_script(program: str, who: RunAs, search_path: str | None) -> str | None:
    """The real path of the file ``program`` names for ``who`` (see the module
    docstring), or None when there is none it could run."""
    if not program:
        return None
    if "/" in program:
        return _reachable(program, who)
    for entry in (DEFAULT_PATH if search_path is None else search_path).split(":"):
        candidate = os.path.join(entry or ".", program)
        real = _reachable(candidate, who)
        if real is None:
            continue
        try:
            st = os.stat(real)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and _allowed(st, who, 1):
            return real
    return None


def insecurity(real: str) -> str | None:
    """Why the file at ``real`` (a real path) is not safe to run as root, or None."""
    path = real
    while True:
        try:
            st = os.lstat(path)
        except OSError as exc:
            return f"{path}: {exc.strerror}"
        mode = st.st_mode
        if path == real and stat.S_ISDIR(mode):
            return f"{path} is a directory"
        if st.st_uid != 0:
            return f"{path} is not owned by root"
        if not (stat.S_ISDIR(mode) and mode & stat.S_ISVTX):
            if mode & stat.S_IWOTH:
                return f"{path} is writable by others"
            if st.st_gid != 0 and mode & stat.S_IWGRP:
                return f"{path} is writable by group {st.st_gid}"
        if path == "/":
            return None
        path = os.path.dirname(path)


class ScriptHost(Protocol):
    """Where scripts are looked for and vetted: this host (``SystemScripts``), or a fake."""

    def resolve_user(self, user: str, group: str | None) -> RunAs | str:
        """The ``RunAs`` of ``user`` [``group``], or why it cannot be used."""
        ...

    def user_exists(self, name: str) -> bool:
        ...

    def find(self, program: str, who: RunAs) -> str | None:
        """The real path of the file ``program`` names for ``who``, or None."""
        ...

    def insecurity(self, real: str) -> str | None:
        """Why the file at ``real`` is not safe to run as root, or None."""
        ...


class SystemScripts:
    """``ScriptHost`` on this host's files and users; programs without a ``/`` are
    looked for in ``search_path`` (None: this process's PATH)."""

    def __init__(self, search_path: str | None = None) -> None:
        self.search_path = os.environ.get("PATH") if search_path is None else search_path

    def resolve_user(self, user: str, group: str | None) -> RunAs | str:
        return resolve_user(user, group)

    def user_exists(self, name: str) -> bool:
        try:
            pwd.getpwnam(name)
        except KeyError:
            return False
        return True

    def find(self, program: str, who: RunAs) -> str | None:
        return find_script(program, who, self.search_path)

    def insecurity(self, real: str) -> str | None:
        return insecurity(real)


@dataclass(frozen=True)
class Verdict:
    """What ``ScriptChecker.check`` found for one script line."""

    runs: bool  # it will run
    found: bool  # its program was found (counts for enable_script_security if it runs)
    why: str = ""  # why it will not run
    bad_user: bool = False  # the user did not resolve (a WARNING for every kind)


class ScriptChecker:
    """Decides for each script line whether it will run (see the module docstring)."""

    def __init__(self, defs: GlobalDefs, host: ScriptHost, sink: DiagnosticSink) -> None:
        self.secure = defs.enable_script_security
        self.host = host
        self.sink = sink
        self.default: RunAs | str
        self.default_user: str | None = defs.script_user
        if defs.script_user is not None:
            self.default = host.resolve_user(defs.script_user, defs.script_group)
            if isinstance(self.default, str):
                sink.warning(defs.location, f"script_user: {self.default}; no script"
                             " without a user of its own can run")
        elif host.user_exists(DEFAULT_SCRIPT_USER):
            self.default = host.resolve_user(DEFAULT_SCRIPT_USER, None)
            self.default_user = DEFAULT_SCRIPT_USER
        elif self.secure:
            self.default = (f"no script_user and no user '{DEFAULT_SCRIPT_USER}', and"
                            " enable_script_security forbids running scripts as root")
        else:
            self.default = ROOT
        self.violation: Location | None = None  # the first script that runs unsecured
        self.insecure_running = False
        # What was checked, and what was found: a reload compares it (``scripts_source``).
        self.checked: list[tuple[str, str | None, str | None]] = []
        self.states: list[str] = []

    def check(self, line: str, user: str | None, group: str | None,
              location: Location) -> Verdict:
        self.checked.append((line, user, group))
        who = self.host.resolve_user(user, group) if user is not None else self.default
        if isinstance(who, str):
            self.states.append(f"user: {who}")
            return Verdict(False, False, who, bad_user=True)
        words = split_command(line)
        real = self.host.find(words[0] if words else "", who)
        unsafe = None if real is None else self.host.insecurity(real)
        self.states.append(f"{who.uid} {sorted(who.gids)} {real} {unsafe}")
        if real is None:
            return Verdict(False, False, f"{words[0] if words else line!r} not found or"
                           f" not accessible to user {who.name}")
        if unsafe is not None and (self.secure or unsafe.endswith("is a directory")):
            self._count(location, unsafe)
            return Verdict(False, True, f"{real} is insecure ({unsafe})")
        self._count(location, unsafe)
        return Verdict(True, True)

    def source(self, defs: GlobalDefs) -> Source | None:
        """What was found, as a ``Source`` that ``scripts_unchanged`` re-checks (only for
        this host's scripts: a fake's findings cannot be checked again)."""
        if not isinstance(self.host, SystemScripts) or not self.checked:
            return None
        inputs = {"path": self.host.search_path, "secure": self.secure,
                  "user": defs.script_user, "group": defs.script_group,
                  "checked": self.checked}
        return Source("scripts", json.dumps(inputs), tuple(self.states))

    def _count(self, location: Location, unsafe: str | None) -> None:
        if self.violation is None or (location.file, location.line) < (
                self.violation.file, self.violation.line):
            self.violation = location
        self.insecure_running = self.insecure_running or unsafe is not None

    def drop(self, what: str, line: str, verdict: Verdict, location: Location,
             consequence: str, *, quiet_user: bool = False) -> None:
        """Report a script that will not run: a WARNING for a user that does not resolve
        (unless ``quiet_user``: the user named on a notify line or FIFO script line, which
        keepalived only logs), a NOTICE otherwise (keepalived says nothing and carries
        on)."""
        message = f"{what} '{line}': {verdict.why}; {consequence}"
        if verdict.bad_user and not quiet_user:
            self.sink.warning(location, message)
        else:
            self.sink.notice(location, message)


@dataclass(frozen=True)
class ScriptSite:
    """A notify-like script line where the parser met it: its keyword, place and text."""

    keyword: str
    location: Location
    line: str
    user: str | None = None  # the line's own USER [GROUP]
    group: str | None = None


def scripts_unchanged(source: Source) -> bool:
    """True if every script of ``source`` (see ``ScriptChecker.source``) would be found
    and judged as it was: else a reload must load the configuration again, even if
    its files did not change (keepalived looks for its scripts again on every reload)."""
    inputs = json.loads(source.name)
    defs = GlobalDefs(enable_script_security=inputs["secure"], script_user=inputs["user"],
                      script_group=inputs["group"])
    checker = ScriptChecker(defs, SystemScripts(inputs["path"]), DiagnosticSink())
    for line, user, group in inputs["checked"]:
        checker.check(line, user, group, NOWHERE)
    return tuple(checker.states) == source.value


def check_scripts(
    config: Config,
    sites: list[ScriptSite],
    sink: DiagnosticSink,
    host: ScriptHost | None = None,
    sources: list[Source] | None = None,
) -> Config:
    """``config`` without the scripts that cannot run, each reported into ``sink``; plus
    the SCRIPT_SECURITY warning when a script runs without enable_script_security.
    ``host`` finds and vets the scripts (None: ``SystemScripts()``); what it found is
    appended to ``sources`` (see ``scripts_unchanged``)."""
    checker = ScriptChecker(config.global_defs, host or SystemScripts(), sink)
    defs = config.global_defs
    if defs.script_user is None and checker.default_user is not None:
        defs = replace(defs, script_user=checker.default_user)

    # vrrp_script: removed, and the track_script lines naming it ignored
    scripts: list[VrrpScript] = []
    removed: set[str] = set()
    for s in config.vrrp_scripts:
        verdict = checker.check(s.script, s.user, s.group, s.location)
        if verdict.runs:
            scripts.append(s)
        else:
            removed.add(s.name)
            sink.warning(s.location, f"vrrp_script {s.name}: {verdict.why}; disabled")

    def tracked(owner: VrrpInstance | VrrpSyncGroup) -> tuple[TrackScriptRef, ...]:
        kept: list[TrackScriptRef] = []
        for ref in owner.track_script:
            if ref.name in removed:
                sink.warning(ref.location, f"track_script {ref.name}: that vrrp_script is"
                             " disabled; ignored")
            else:
                kept.append(ref)
        return tuple(kept)

    # notify lines: the same line, at the same user, has the same fate
    fate: dict[tuple[str, str | None, str | None], bool] = {}
    for site in sites:
        if site.keyword == "misc_path":
            continue
        verdict = checker.check(site.line, site.user, site.group, site.location)
        fate.setdefault((site.line, site.user, site.group), verdict.runs)
        if not verdict.runs:
            checker.drop(site.keyword, site.line, verdict, site.location, "it will not run",
                         quiet_user=site.user is not None)

    def runs(line: str | None, who: ScriptUser | None) -> bool:
        return line is None or fate.get(
            (line, who.user if who else None, who.group if who else None), True)

    def kept(line: str | None, who: ScriptUser | None = None) -> str | None:
        return line if runs(line, who) else None

    def kept_user(line: str | None, who: ScriptUser | None) -> ScriptUser | None:
        return who if line is not None and runs(line, who) else None

    def notify_of(owner: VrrpInstance | VrrpSyncGroup) -> Notify:
        n = owner.notify
        return replace(
            n, master=kept(n.master, n.master_user), backup=kept(n.backup, n.backup_user),
            fault=kept(n.fault, n.fault_user), stop=kept(n.stop, n.stop_user),
            generic=kept(n.generic, n.generic_user),
            master_user=kept_user(n.master, n.master_user),
            backup_user=kept_user(n.backup, n.backup_user),
            fault_user=kept_user(n.fault, n.fault_user),
            stop_user=kept_user(n.stop, n.stop_user),
            generic_user=kept_user(n.generic, n.generic_user))

    instances = tuple(
        replace(i, notify=notify_of(i), track_script=tracked(i))
        for i in config.vrrp_instances
    )
    groups = tuple(
        replace(g, notify=notify_of(g), track_script=tracked(g))
        for g in config.vrrp_sync_groups
    )

    misc_sites = [s for s in sites if s.keyword == "misc_path"]

    def checker_runs(c: Checker) -> bool:
        if c.type is not CheckerType.MISC_CHECK or c.misc_path is None:
            return True
        # the misc_path line: the first one of this text in the checker's block
        at = min((s.location for s in misc_sites
                  if s.line == c.misc_path and s.location.file == c.location.file
                  and s.location.line >= c.location.line),
                 key=lambda loc: loc.line, default=c.location)
        verdict = checker.check(c.misc_path, c.user, c.group, at)
        if not verdict.runs:
            checker.drop("MISC_CHECK misc_path", c.misc_path, verdict, at, "checker dropped")
        return verdict.runs

    def real_server(rs: RealServer) -> RealServer:
        return replace(rs, notify_up=kept(rs.notify_up, rs.notify_up_user),
                       notify_down=kept(rs.notify_down, rs.notify_down_user),
                       notify_up_user=kept_user(rs.notify_up, rs.notify_up_user),
                       notify_down_user=kept_user(rs.notify_down, rs.notify_down_user),
                       checkers=tuple(misc_user(c) for c in rs.checkers if checker_runs(c)))

    def misc_user(c: Checker) -> Checker:
        # A MISC_CHECK without ``user`` runs as the default script user, as keepalived's does.
        if c.type is not CheckerType.MISC_CHECK or c.user is not None or defs.script_user is None:
            return c
        return replace(c, user=defs.script_user, group=defs.script_group)

    def virtual_server(vs: VirtualServer) -> VirtualServer:
        return replace(vs, quorum_up=kept(vs.quorum_up, vs.quorum_up_user),
                       quorum_down=kept(vs.quorum_down, vs.quorum_down_user),
                       quorum_up_user=kept_user(vs.quorum_up, vs.quorum_up_user),
                       quorum_down_user=kept_user(vs.quorum_down, vs.quorum_down_user),
                       real_servers=tuple(real_server(rs) for rs in vs.real_servers))

    servers = tuple(virtual_server(vs) for vs in config.virtual_servers)

    def parent(key: str, ps: ParentScript | None) -> ParentScript | None:
        if ps is None:
            return None
        verdict = checker.check(ps.command, ps.user, ps.group, ps.location)
        if not verdict.runs:
            checker.drop(key, ps.command, verdict, ps.location, "it will not run")
            return None
        return ps

    def fifo(key: str, f: NotifyFifo | None) -> NotifyFifo | None:
        if f is None or f.script is None:
            return f
        verdict = checker.check(f.script, f.script_user, f.script_group, defs.location)
        if not verdict.runs:
            checker.drop(f"{key}_script", f.script, verdict, defs.location, "it will not run",
                         quiet_user=f.script_user is not None)
            return replace(f, script=None, script_user=None, script_group=None)
        return f

    defs = replace(
        defs,
        startup_script=parent("startup_script", defs.startup_script),
        shutdown_script=parent("shutdown_script", defs.shutdown_script),
        notify_fifo=fifo("notify_fifo", defs.notify_fifo),
        vrrp_notify_fifo=fifo("vrrp_notify_fifo", defs.vrrp_notify_fifo),
        lvs_notify_fifo=fifo("lvs_notify_fifo", defs.lvs_notify_fifo),
    )
    if checker.violation is not None and not config.global_defs.enable_script_security:
        sink.warning(
            checker.violation,
            "scripts are configured but enable_script_security is not set"
            + (" (and some of them are insecure)" if checker.insecure_running else ""),
            Category.SCRIPT_SECURITY,
        )
    found = checker.source(config.global_defs)
    if found is not None and sources is not None:
        sources.append(found)
    return replace(config, global_defs=defs, vrrp_scripts=tuple(scripts),
                   vrrp_instances=instances, vrrp_sync_groups=groups, virtual_servers=servers)
