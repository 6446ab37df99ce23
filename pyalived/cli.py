"""Command line: ``pyalived`` / ``python -m pyalived``.

Theory of operation: the options are keepalived's, with keepalived's
meanings, so that an existing unit file or init script keeps working.  The
configuration is loaded and checked before anything else happens: a config
with errors is refused whole, its diagnostics printed, and the exit status is
non-zero (``-t`` only prints the diagnostics and exits with the loader's
status).  For the daemon the file is loaded by a reader process
(``pyalived.config.reader``), and this process, the daemon's parent, gets
each half of the configuration pickled: it never holds the parsed
configuration nor what parsing it allocated (``-t`` loads it here).  A
live pid file makes a second start refuse; a stale one is taken over.
Unless ``-n`` is given the process daemonizes the classic way (fork, setsid,
fork, chdir /, stdio to /dev/null) before trio starts, and the final process
writes the pid file.

As in keepalived, the process that writes ``-p`` is the parent of one child
per half (``pyalived.supervisor``): ``-r`` names the VRRP child and ``-c``
the checker child, each rewritten when the child is restarted.  ``-P`` runs
only the VRRP half, ``-C`` only the health checkers and their IPVS table;
with neither, both run.  ``-R`` stops the daemon when a child dies instead of
restarting it.  Options of keepalived that pyalived does not implement are
refused with a message naming them, rather than silently ignored; ``-B`` is
accepted because its meaning (no BFD process) is what pyalived always does.

pyalived's own options have no short form: ``--metrics-listen`` says where
the Prometheus metrics are served (``none`` turns them off).  Under a
service manager (``NOTIFY_SOCKET`` set; run with ``-n``) the daemon reports
readiness, stopping and watchdog pings, and removes the manager's variables
from its environment so that scripts do not inherit them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pyalived import __version__
from pyalived.limits import raise_nofile_limit
from pyalived.log import parse_facility, setup_logging
from pyalived.pidfile import PidFileError, check_not_running, remove_pid, write_pid

if TYPE_CHECKING:
    from pyalived.daemon import DaemonOptions
    from pyalived.startup import ParentSettings

DEFAULT_CONFIG = "/etc/keepalived/keepalived.conf"
DEFAULT_PIDFILE = "/run/pyalived.pid"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9165"  # pyalived.metrics.DEFAULT_LISTEN
# The default given parsed: argparse passes a string default through ``type``, and
# _listen imports pyalived.metrics (trio, prometheus_client), which -t does not need.
DEFAULT_METRICS_ADDRESS = ("127.0.0.1", 9165)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
EXIT_USAGE = 1  # as keepalived

log = logging.getLogger("pyalived")

# keepalived options that pyalived does not implement: (short, long, takes a value).
REFUSED: tuple[tuple[str | None, str, bool], ...] = (
    ("-X", "--release-vips", False),
    ("-V", "--dont-release-vrrp", False),
    ("-I", "--dont-release-ipvs", False),
    ("-d", "--dump-conf", False),
    ("-T", "--genhash", False),
    ("-a", "--address-monitoring", False),
    ("-b", "--bfd_pid", True),
    ("-x", "--snmp", False),
    ("-A", "--snmp-agent-socket", True),
    ("-s", "--namespace", True),
    ("-m", "--core-dump", False),
    ("-M", "--core-dump-pattern", True),
    ("-e", "--all-config", False),
    (None, "--all", False),
    (None, "--signum", True),
)


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class _Refuse(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        raise UsageError(f"option {'/'.join(self.option_strings)} is not supported by pyalived")


def _umask(value: str) -> int:
    try:
        mask = int(value, 0) if value.lower().startswith("0x") else int(value, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid umask {value!r}") from None
    if not 0 <= mask <= 0o777:
        raise argparse.ArgumentTypeError(f"invalid umask {value!r}")
    return mask


def _facility(value: str) -> int:
    try:
        return parse_facility(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen(value: str) -> tuple[str, int] | None:
    from pyalived.metrics import parse_listen

    try:
        return parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pyalived",
        description="keepalived-compatible VRRP and LVS health-checker daemon",
        add_help=False,
        allow_abbrev=False,
    )
    p.add_argument("-f", "--use-file", metavar="FILE", default=DEFAULT_CONFIG,
                   help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("-P", "--vrrp", action="store_true", help="run only the VRRP half")
    p.add_argument("-C", "--check", action="store_true",
                   help="run only the health-checker half (checkers and IPVS)")
    p.add_argument("-B", "--no_bfd", action="store_true",
                   help="accepted; pyalived never runs BFD")
    p.add_argument("-l", "--log-console", action="store_true", help="log to stderr, not syslog")
    p.add_argument("-D", "--log-detail", action="store_true", help="detailed (debug) logging")
    p.add_argument("-S", "--log-facility", metavar="FACILITY", type=_facility, default=None,
                   help="syslog facility: 0-7 (local0-7), local0-7, user or daemon (default)")
    p.add_argument("-G", "--no-syslog", action="store_true", help="do not log to syslog")
    p.add_argument("-u", "--umask", metavar="MASK", type=_umask, default=None,
                   help="umask for created files (octal)")
    p.add_argument("-R", "--dont-respawn", action="store_true",
                   help="do not restart a child that dies: stop the daemon instead")
    p.add_argument("-n", "--dont-fork", action="store_true", help="stay in the foreground")
    p.add_argument("-p", "--pid", metavar="FILE", default=DEFAULT_PIDFILE,
                   help=f"pid file (default {DEFAULT_PIDFILE})")
    p.add_argument("-r", "--vrrp_pid", metavar="FILE", default=None,
                   help="VRRP child's pid file")
    p.add_argument("-c", "--checkers_pid", metavar="FILE", default=None,
                   help="checker child's pid file")
    p.add_argument("-i", "--config-id", metavar="ID", default=None,
                   help="config id for '@' lines (default: the node name)")
    p.add_argument("-t", "--config-test", metavar="LOG_FILE", nargs="?", const="-",
                   default=None, help="check the configuration and exit")
    p.add_argument("--metrics-listen", metavar="ADDR:PORT", type=_listen,
                   default=DEFAULT_METRICS_ADDRESS,
                   help="serve Prometheus metrics on ADDR:PORT ([V6ADDR]:PORT for IPv6), "
                        f"'none' to disable (default {DEFAULT_METRICS_LISTEN})")
    p.add_argument("--dump-dir", metavar="DIR", default="/tmp",
                   help="directory of the SIGUSR1/SIGUSR2/SIGRTMIN+2 dumps pyalived.data, "
                        "pyalived.stats, pyalived.json (default /tmp)")
    p.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    p.add_argument("-h", "--help", action="store_true", help="print this help and exit")
    for short, long, takes_value in REFUSED:
        names = [n for n in (short, long) if n]
        p.add_argument(*names, action=_Refuse, nargs="?" if takes_value else 0,
                       help=argparse.SUPPRESS)
    return p


def _daemonize() -> None:
    """fork, setsid, fork, chdir /, stdio to /dev/null (the parents exit 0)."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


def _expected_errors(exc: BaseException) -> list[str] | None:
    """Messages of an (possibly grouped) expected error; None if any leaf is unexpected."""
    if isinstance(exc, BaseExceptionGroup):
        messages: list[str] = []
        for sub in exc.exceptions:
            leaf = _expected_errors(sub)
            if leaf is None:
                return None
            messages += leaf
        return messages
    if isinstance(exc, OSError | PidFileError):
        return [str(exc)]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        print(f"pyalived: {exc}", file=sys.stderr)
        print("Try 'pyalived --help' for the list of options.", file=sys.stderr)
        return EXIT_USAGE
    if args.help:
        parser.print_help()
        return 0
    if args.version:
        print(f"pyalived {__version__}")
        return 0
    if args.umask is not None:
        os.umask(args.umask)

    conf_path = os.path.abspath(args.use_file)
    if args.config_test is not None:
        return _config_test(conf_path, args.config_id, args.config_test)
    return _start(args, conf_path)


def _config_test(conf_path: str, config_id: str | None, output: str) -> int:
    """``-t``: the diagnostics of the file, and the loader's exit status."""
    from pyalived.config import load, render

    # No -i: the loader selects @name lines by the short host name, as keepalived does.
    result = load(conf_path, config_id=config_id)
    text = render(result.diagnostics)
    if output == "-":
        sys.stderr.write(text)
    else:
        try:
            Path(output).write_text(text)
        except OSError as exc:
            print(f"pyalived: cannot write {output}: {exc}", file=sys.stderr)
            return 1
    return result.exit_code


def _start(args: argparse.Namespace, conf_path: str) -> int:
    """The daemon: its configuration read, checked and handed to the supervisor."""
    from pyalived.config.reader import CHECKERS, VRRP, ReaderError, run_reader

    run_vrrp = args.vrrp or not args.check
    run_checkers = args.check or not args.vrrp
    halves = [h for h, on in ((VRRP, run_vrrp), (CHECKERS, run_checkers)) if on]
    # Read by a process of its own: the parent only ever holds each half pickled
    # (pyalived.config.reader, pyalived.supervisor), never what parsing allocated.
    try:
        result = run_reader(conf_path, args.config_id, halves)
    except ReaderError as exc:
        print(f"pyalived: {exc}", file=sys.stderr)
        return 1
    for diagnostic in result.diagnostics:
        print(diagnostic, file=sys.stderr)
    if result.halves is None:
        print(f"pyalived: configuration {conf_path} refused", file=sys.stderr)
        return result.exit_code or 1
    pickled, sources = result.halves, result.sources
    del result
    settings = _parent_settings(pickled)

    pid_path = os.path.abspath(args.pid)
    vrrp_pid_path = os.path.abspath(args.vrrp_pid) if args.vrrp_pid else None
    checkers_pid_path = os.path.abspath(args.checkers_pid) if args.checkers_pid else None
    namespace = settings.net_namespace
    if namespace is not None:
        from pyalived.startup import enter_namespace, make_pid_dir, namespace_pid_files

        # As keepalived: the whole daemon (scripts included) runs in the namespace, and
        # the pid files not given on the command line go to /run/pyalived/NAME/.
        pid_path, vrrp_pid_path, checkers_pid_path = namespace_pid_files(
            namespace, None if args.pid == DEFAULT_PIDFILE else pid_path,
            vrrp_pid_path, checkers_pid_path)
        try:
            enter_namespace(namespace)
            make_pid_dir(namespace)
        except OSError as exc:
            print(f"pyalived: {exc}", file=sys.stderr)
            return 1
    try:
        check_not_running(pid_path)
    except PidFileError as exc:
        print(f"pyalived: {exc}", file=sys.stderr)
        return 1

    if not args.dont_fork:
        _daemonize()
    setup_logging(
        console=args.log_console,
        detail=args.log_detail,
        facility=args.log_facility if args.log_facility is not None else parse_facility("daemon"),
        use_syslog=not args.no_syslog,
        ident=f"pyalived_{namespace}" if namespace is not None else "pyalived",
    )
    # Hold the stop signals until the daemon's receiver is open: anyone who
    # reads the pid file may signal us, and must not kill us uncleanly.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    written: list[str] = []
    try:
        write_pid(pid_path)
        written.append(pid_path)
        from pyalived.daemon import DaemonOptions

        pid_files = {VRRP: vrrp_pid_path, CHECKERS: checkers_pid_path}
        if settings.startup_script is not None:
            from pyalived.startup import run_parent_script

            run_parent_script("startup script", settings.startup_script, settings)
        try:
            return _run(pickled, DaemonOptions(
                vrrp=run_vrrp, checkers=run_checkers, metrics_listen=args.metrics_listen,
                config_path=conf_path, config_id=args.config_id,
                dump_dir=os.path.abspath(args.dump_dir)), pid_files, not args.dont_respawn,
                sources)
        finally:
            if settings.shutdown_script is not None:
                from pyalived.startup import run_parent_script

                run_parent_script("shutdown script", settings.shutdown_script, settings)
    except PidFileError as exc:
        log.error("%s", exc)
        if args.dont_fork and not args.log_console:
            print(f"pyalived: {exc}", file=sys.stderr)
        return 1
    finally:
        for path in written:
            remove_pid(path)
        if namespace is not None:
            from pyalived.startup import remove_pid_dir

            remove_pid_dir(namespace)


def _parent_settings(pickled: dict[str, bytes]) -> ParentSettings:
    """The parent's own settings, which the reader pickled next to the halves."""
    import pickle

    from pyalived.config.reader import PARENT
    from pyalived.startup import ParentSettings

    data = pickled.pop(PARENT, None)
    settings = pickle.loads(data) if data is not None else None
    return settings if isinstance(settings, ParentSettings) else ParentSettings()


def _run(pickled: dict[str, bytes], options: DaemonOptions, pid_files: dict[str, str | None],
         respawn: bool, sources: tuple[object, ...] = ()) -> int:
    """The supervisor on each half's pickled configuration (``reader.ReadResult.halves``)."""
    from pyalived.config.lexer import Source
    from pyalived.sdnotify import Notifier
    from pyalived.supervisor import supervise

    log.info("pyalived %s starting (pid %d)", __version__, os.getpid())
    raise_nofile_limit()  # sockets are file descriptors: lift the soft limit to the hard one
    notifier = Notifier.from_environment()
    try:
        return supervise(pickled, options, notifier, pid_files, respawn,
                         tuple(s for s in sources if isinstance(s, Source)))
    except BaseException as exc:
        return _failed(exc)
    finally:
        notifier.close()


def run_trio(main: Callable[[], Awaitable[None]]) -> int:
    """``trio.run(main)``; expected errors are logged, and the exit status returned."""
    import trio

    try:
        trio.run(main)
    except BaseException as exc:
        return _failed(exc)
    return 0


def _failed(exc: BaseException) -> int:
    messages = _expected_errors(exc)
    if messages is None:
        if isinstance(exc, KeyboardInterrupt):
            return 1
        raise exc
    for message in messages:
        log.error("%s", message)
    return 1
