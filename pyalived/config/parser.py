"""Semantic parser: statement tree -> validated ``Config`` plus diagnostics.

Theory of operation: ``parse_tree`` walks the statement tree (see
``pyalived.config.tree``) one known block at a time and fills the frozen model
of ``pyalived.config.model``.  It never raises on bad input.  A keyword that
keepalived knows but this project does not implement yet is a WARNING ("not
supported yet") and its block is skipped; a keyword nobody knows is a WARNING
("unknown keyword").  Values that cannot be meant as written (out of range
numbers, bad addresses, missing required keywords, dangling references,
conflicting instances) are ERRORS, and any ERROR refuses the whole config
(``Config`` is None), as keepalived is meant to be run on a config it fully
understands.  Range checks follow RFC 3768: VRID 1..255 (§5.3.3), priority
1..255 where 255 is the address owner and 0 is reserved for the stop advert
(§5.3.4), auth_pass at most 8 octets (§5.3.10).

``load`` runs the three stages as one stream: the lexer hands each logical
line to the tree builder, which hands each finished top-level statement to
``_Parser.top``; only the ``vrrp_instance`` blocks wait for ``finish`` (they
need the whole ``global_defs``), followed by the whole-config checks.  So a
large file is never held as words nor as a tree, only as the model being
built.  The verdict is the one of running the stages one after the other:
the tree builder and the parser report into sinks of their own, merged after
the lexer's (``DiagnosticSink.absorb``) in stage order, which keeps the
lexer's error cap counting the lexer's errors only; and when a limit stops
the lexer, what the later stages found is dropped, as they would not have run.
The cyclic garbage collector is paused during a load on the main thread
(see ``_collector_paused``).

Deliberate choices: ``vrrp_version 3`` (or instance ``version 3``) is an
ERROR, because this daemon only speaks VRRPv2 and silently advertising v2 to
v3 peers would split the router group in two.  IPv6 addresses are warned
about and skipped.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import re
import shlex
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, ip_address, ip_interface

from pyalived.config.diagnostics import Category, Diagnostic, DiagnosticSink, exit_code_for
from pyalived.config.lexer import DEFAULT_LIMITS, Lexer, ReaderLimits, default_config_id
from pyalived.config.lvs_parse import LvsParser
from pyalived.config.model import (
    Authentication,
    AuthType,
    Config,
    GlobalDefs,
    InitialState,
    Location,
    Notify,
    TrackInterface,
    TrackScriptRef,
    VirtualIP,
    VrrpInstance,
    VrrpScript,
    VrrpSyncGroup,
)
from pyalived.config.tree import Node, TreeBuilder

InterfaceExists = Callable[[str], bool]

# A dotted quad as ipaddress.IPv4Address accepts it: four decimal octets of at most
# three digits, each 0..255 without a leading zero.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")

WEIGHT_MIN, WEIGHT_MAX = -253, 253
MAX_ADVERT_ADDRESSES = 255  # RFC 3768 §5.3.5: Count IP Addrs is 8 bits

# Keywords keepalived 2.2.7 accepts that this project does not implement yet.
UNSUPPORTED_TOP = frozenset(
    """static_ipaddress static_routes static_rules
    vrrp_track_file track_file vrrp_track_process track_process linkbeat_interfaces
    net_namespace net_namespace_ipvs namespace_with_ipsets instance use_pid_dir
    bfd_instance vrrp_track_bfd track_bfd garp_group child_wait_time""".split()
)
UNSUPPORTED_GLOBAL = frozenset(
    """notification_email notification_email_from smtp_server smtp_connect_timeout smtp_helo
    smtp_alert smtp_alert_vrrp smtp_alert_checker no_email_faults email_faults lvs_id
    lvs_sync_daemon lvs_flush lvs_flush_onstop lvs_timeouts lvs_timeout default_interface
    dynamic_interfaces vrrp_mcast_group6 vrrp_iptables vrrp_ipsets vrrp_check_unicast_src
    vrrp_skip_check_adv_addr vrrp_priority checker_priority bfd_priority vrrp_no_swap
    checker_no_swap bfd_no_swap vrrp_rt_priority checker_rt_priority bfd_rt_priority
    vrrp_rlimit_rtime checker_rlimit_rtime bfd_rlimit_rtime snmp_socket enable_snmp_vrrp
    enable_snmp_keepalived enable_snmp_checker enable_snmp_rfc enable_snmp_rfcv2
    enable_snmp_rfcv3 enable_traps enable_dbus enable_dbus_create_instance notify_fifo
    notify_fifo_script vrrp_notify_fifo vrrp_notify_fifo_script lvs_notify_fifo
    lvs_notify_fifo_script process_names process_name vrrp_process_name checker_process_name
    bfd_process_name max_auto_priority min_auto_priority_delay nftables nftables_priority
    nftables_counters nftables_ifindex nftables_ifname vrrp_startup_delay
    vrrp_higher_prio_send_advert vrrp_lower_prio_no_advert vrrp_min_garp
    vrrp_netlink_cmd_rcv_bufs vrrp_netlink_cmd_rcv_bufs_force vrrp_netlink_monitor_rcv_bufs
    vrrp_netlink_monitor_rcv_bufs_force vrrp_rx_bufs_policy vrrp_rx_bufs_multiplier
    lvs_netlink_cmd_rcv_bufs lvs_netlink_cmd_rcv_bufs_force lvs_netlink_monitor_rcv_bufs
    lvs_netlink_monitor_rcv_bufs_force linkbeat_use_polling checker_log_all_failures umask
    random_seed startup_script startup_script_timeout shutdown_script shutdown_script_timeout
    reload_check_config reload_time_file reload_repeat reload_file config_save_dir
    data_use_instance json_version tmp_config_directory vrrp_garp_master_refresh_repeat_delay
    vrrp_garp_interval_startup vrrp_gna_interval vrrp_down_timer_adverts
    vrrp_track_process_batch vrrp_socket_rcv_buf vrrp_socket_rcv_buf_force
    vrrp_notify_priority_changes fifo_write_vrrp_states_on_reload script_max_reload
    vrrp_use_ip6_prefix vrrp_ipvs_sync_daemon_interface vrrp_mcast_group_6
    local_name instance net_namespace use_symlink_paths""".split()
)
UNSUPPORTED_INSTANCE = frozenset(
    """native_ipv6 virtual_routes virtual_rules track_file track_process track_bfd accept
    no_accept strict_mode lvs_sync_daemon_interface debug linkbeat_use_polling notify_deleted
    notify_master_rx_lower_pri lower_prio_no_advert higher_prio_send_advert
    kernel_rx_buf_size unicast_ttl check_unicast_src skip_check_adv_addr promote_secondaries
    down_timer_adverts notify_priority_changes old_unicast_checksum unicast_fault_no_peer
    use_ipvlan track_src_ip garp_extra_if mcast_dst_ip""".split()
)
UNSUPPORTED_SYNC_GROUP = frozenset(
    "global_tracking sync_group_tracking_weight track_file track_process track_bfd "
    "notify_priority_changes notify_deleted".split()
)
UNSUPPORTED_SCRIPT = frozenset("init_fail".split())
UNSUPPORTED_VIP_OPTIONS = frozenset(
    "no_track preferred_lft home nodad mngtmpaddr noprefixroute autojoin track_group".split()
)


def system_interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class LoadResult:
    config: Config | None  # None when any diagnostic is an ERROR
    diagnostics: tuple[Diagnostic, ...]
    exit_code: int


def load(
    path: str,
    *,
    config_id: str | None = None,
    interface_exists: InterfaceExists | None = None,
    limits: ReaderLimits = DEFAULT_LIMITS,
) -> LoadResult:
    """Read, check and model the configuration in ``path`` and its includes.

    The reading is bounded by ``limits`` (see ``pyalived.config.lexer``).
    """
    sink = DiagnosticSink()
    if not os.path.isfile(path):
        sink.error(
            Location(path, 0),
            f"configuration file {path} does not exist or is not a file",
            Category.MISSING_FILE,
        )
        return LoadResult(None, tuple(sink.items), exit_code_for(sink.items))
    parser = _Parser(DiagnosticSink(), interface_exists or system_interface_exists)
    builder = TreeBuilder(parser.top)
    cid = config_id if config_id is not None else default_config_id()
    lexer = Lexer(cid, sink, limits, on_line=builder.line)
    with _collector_paused():
        if not lexer.read(path):  # a limit was reached: refused, the rest is not worth parsing
            return LoadResult(None, sink.diagnostics(), exit_code_for(sink.items))
        builder.finish()
        config = parser.finish()
    # In the order of a lexer, tree builder and parser each run after the one before.
    sink.absorb(builder.errors)
    sink.absorb(parser.sink)
    diags = sink.diagnostics()
    return LoadResult(None if sink.has_errors else config, diags, exit_code_for(diags))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection during a load on the main thread.

    A load only ever adds objects, most of them long-lived, and the collector
    would scan them again and again as they pile up (a fifth of the time of a
    large file).  Only on the main thread (``-t`` and start-up): a reload runs
    in a worker thread that a hung read may leave behind, and the collector
    must not stay off for the daemon meanwhile.
    """
    if not gc.isenabled() or threading.current_thread() is not threading.main_thread():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def parse_tree(nodes: tuple[Node, ...], sink: DiagnosticSink, exists: InterfaceExists) -> Config:
    return _Parser(sink, exists).parse(nodes)


@dataclass
class _NotifyBuilder:
    master: str | None = None
    backup: str | None = None
    fault: str | None = None
    stop: str | None = None
    generic: str | None = None

    def freeze(self) -> Notify:
        return Notify(self.master, self.backup, self.fault, self.stop, self.generic)


_NOTIFY_KEYS = {
    "notify_master": "master",
    "notify_backup": "backup",
    "notify_fault": "fault",
    "notify_stop": "stop",
    "notify": "generic",
}


@dataclass
class _Parser:
    sink: DiagnosticSink
    exists: InterfaceExists
    notify_locations: list[Location] = field(default_factory=list)
    # What the top-level statements gave so far (see ``top`` and ``finish``).
    global_defs: GlobalDefs = field(default_factory=GlobalDefs)
    seen_global: bool = False
    scripts: list[VrrpScript] = field(default_factory=list)
    instance_nodes: list[Node] = field(default_factory=list)
    sync_groups: list[VrrpSyncGroup] = field(default_factory=list)
    lvs: LvsParser = field(init=False)

    def __post_init__(self) -> None:
        self.lvs = LvsParser(self)

    # ---- small value helpers ------------------------------------------------

    def _no_block(self, node: Node) -> None:
        if node.children is not None:
            self.sink.warning(node.location, f"{node.name} takes no block; block ignored")

    def _one(self, node: Node) -> str | None:
        values = node.values
        if len(values) == 1 and node.children is None:  # the usual case, nothing to report
            return values[0]
        self._no_block(node)
        if not node.values:
            self.sink.error(node.location, f"{node.name} needs a value")
            return None
        if len(node.values) > 1:
            extra = " ".join(node.values[1:])
            self.sink.warning(node.location, f"{node.name}: extra words ignored: {extra}")
        return node.values[0]

    def _int(self, node: Node, lo: int, hi: int) -> int | None:
        text = self._one(node)
        if text is None:
            return None
        try:
            value = int(text, 10)
        except ValueError:
            self.sink.error(node.location, f"{node.name}: '{text}' is not a whole number")
            return None
        if not lo <= value <= hi:
            self.sink.error(node.location, f"{node.name} {value} is outside [{lo}, {hi}]")
            return None
        return value

    def _float(self, node: Node, lo: float, hi: float) -> float | None:
        text = self._one(node)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            self.sink.error(node.location, f"{node.name}: '{text}' is not a number")
            return None
        if not lo <= value <= hi:
            self.sink.error(node.location, f"{node.name} {text} is outside [{lo:g}, {hi:g}]")
            return None
        return value

    def _flag(self, node: Node) -> bool:
        self._no_block(node)
        if not node.values:
            return True
        word = node.values[0].lower()
        if word in ("true", "on", "yes", "1"):
            return True
        if word in ("false", "off", "no", "0"):
            return False
        self.sink.error(node.location, f"{node.name}: '{node.values[0]}' is not true/false")
        return True

    def _ipv4(self, node: Node, text: str) -> IPv4Address | None:
        if _DOTTED_QUAD.fullmatch(text):
            # What ip_address accepts as IPv4, exactly; converted without its slower checks.
            return IPv4Address(int.from_bytes(socket.inet_aton(text), "big"))
        try:
            addr = ip_address(text)
        except ValueError:
            self.sink.error(node.location, f"{node.name}: '{text}' is not an IP address")
            return None
        if isinstance(addr, IPv6Address):
            self.sink.warning(
                node.location, f"{node.name}: IPv6 address {text} is not supported yet; ignored"
            )
            return None
        return addr

    def _command(self, node: Node) -> str | None:
        self._no_block(node)
        if node.name in _NOTIFY_KEYS:
            self.notify_locations.append(node.location)
        if not node.values:
            self.sink.error(node.location, f"{node.name} needs a script")
            return None
        if len(node.values) == 1:
            return node.values[0]
        if node.quoted is None:
            return " ".join(node.values)
        return " ".join(
            shlex.quote(v) if q else v for v, q in zip(node.values, node.quoted, strict=True)
        )

    def _weighted(self, node: Node, what: str) -> tuple[str, int | None] | None:
        """``NAME [weight N]`` lines of track_interface / track_script blocks."""
        self._no_block(node)
        name = node.name
        words = list(node.values)
        weight: int | None = None
        if words and words[0] == "weight":
            if len(words) < 2:
                self.sink.error(node.location, f"{what} {name}: weight needs a number")
                return None
            try:
                weight = int(words[1], 10)
            except ValueError:
                self.sink.error(
                    node.location, f"{what} {name}: weight '{words[1]}' is not a number"
                )
                return None
            if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
                self.sink.error(
                    node.location,
                    f"{what} {name}: weight {weight} is outside [{WEIGHT_MIN}, {WEIGHT_MAX}]",
                )
                return None
            words = words[2:]
            if words and words[0] == "reverse":
                weight = -weight
                words = words[1:]
        if words:
            self.sink.warning(
                node.location, f"{what} {name}: extra words ignored: {' '.join(words)}"
            )
        return name, weight

    def _unknown(self, node: Node, unsupported: frozenset[str], where: str) -> None:
        skipped = "; block skipped" if node.children is not None else ""
        if node.name in unsupported:
            self.sink.warning(node.location, f"keyword {node.name} is not supported yet{skipped}")
        else:
            self.sink.warning(node.location, f"unknown keyword {node.name} in {where}{skipped}")

    def _block(self, node: Node) -> tuple[Node, ...]:
        if node.children is None:
            self.sink.error(node.location, f"{node.name} needs a {{ ... }} block")
            return ()
        return node.children

    def _block_name(self, node: Node) -> str | None:
        if not node.values:
            self.sink.error(node.location, f"{node.name} needs a name")
            return None
        if len(node.values) > 1:
            self.sink.warning(
                node.location, f"{node.name}: extra words ignored: {' '.join(node.values[1:])}"
            )
        return node.values[0]

    # ---- top level ------------------------------------------------------------

    def parse(self, nodes: tuple[Node, ...]) -> Config:
        for node in nodes:
            self.top(node)
        return self.finish()

    def top(self, node: Node) -> None:
        """One top-level statement, in file order."""
        name = node.name
        if name == "virtual_server":
            self.lvs.virtual_server(node)
        elif name == "global_defs":
            if self.seen_global:
                self.sink.warning(node.location, "second global_defs block merged into first")
            self.global_defs = self._global_defs(node, self.global_defs)
            self.seen_global = True
        elif name == "vrrp_script":
            s = self._vrrp_script(node)
            if s is not None:
                self.scripts.append(s)
        elif name == "vrrp_instance":
            self.instance_nodes.append(node)  # parsed after global_defs (garp defaults)
        elif name == "vrrp_sync_group":
            g = self._sync_group(node)
            if g is not None:
                self.sync_groups.append(g)
        elif name == "virtual_server_group":
            self.lvs.group(node)
        else:
            self._unknown(node, UNSUPPORTED_TOP, "the top level")

    def finish(self) -> Config:
        """The configuration, once every top-level statement went through ``top``."""
        lvs = self.lvs
        instances = [i for n in self.instance_nodes if (i := self._instance(n, self.global_defs))]
        config = Config(
            self.global_defs,
            tuple(self.scripts),
            tuple(instances),
            tuple(self.sync_groups),
            tuple(lvs.servers),
            tuple(lvs.groups),
        )
        lvs.cross_check(config)
        self._cross_check(config)
        # The parser and its LVS half refer to each other: let go of the model, so
        # that reference counting alone frees it once its user does.
        lvs.release()
        return self.strict_fixups(config)

    # ---- global_defs ----------------------------------------------------------

    def _global_defs(self, node: Node, g: GlobalDefs) -> GlobalDefs:
        g = replace(g, location=node.location)
        for n in self._block(node):
            k = n.name
            if k == "router_id":
                v = self._one(n)
                if v is not None:
                    g = replace(g, router_id=v)
            elif k == "vrrp_version":
                ver = self._int(n, 2, 3)
                if ver == 3:
                    self.sink.error(
                        n.location, "vrrp_version 3 is not supported: only VRRPv2 (RFC 3768)"
                    )
            elif k == "vrrp_mcast_group4":
                text = self._one(n)
                addr = self._ipv4(n, text) if text is not None else None
                if addr is not None:
                    if not addr.is_multicast:
                        self.sink.error(n.location, f"vrrp_mcast_group4 {addr} is not multicast")
                    else:
                        g = replace(g, vrrp_mcast_group4=addr)
            elif k == "vrrp_garp_master_delay":
                f = self._float(n, 0, 3600)
                if f is not None:
                    g = replace(g, vrrp_garp_master_delay=f)
            elif k == "vrrp_garp_master_repeat":
                i = self._int(n, 1, 10000)
                if i is not None:
                    g = replace(g, vrrp_garp_master_repeat=i)
            elif k == "vrrp_garp_master_refresh":
                f = self._float(n, 0, 86400)
                if f is not None:
                    g = replace(g, vrrp_garp_master_refresh=f)
            elif k == "vrrp_garp_master_refresh_repeat":
                i = self._int(n, 1, 10000)
                if i is not None:
                    g = replace(g, vrrp_garp_master_refresh_repeat=i)
            elif k == "vrrp_garp_interval":
                f = self._float(n, 0, 1)
                if f is not None:
                    g = replace(g, vrrp_garp_interval=f)
            elif k == "vrrp_garp_lower_prio_delay":
                f = self._float(n, 0, 3600)
                if f is not None:
                    g = replace(g, vrrp_garp_lower_prio_delay=f)
            elif k == "vrrp_garp_lower_prio_repeat":
                i = self._int(n, 0, 10000)
                if i is not None:
                    g = replace(g, vrrp_garp_lower_prio_repeat=i)
            elif k == "script_user":
                self._no_block(n)
                if not n.values or len(n.values) > 2:
                    self.sink.error(n.location, "script_user needs USER [GROUP]")
                else:
                    g = replace(
                        g,
                        script_user=n.values[0],
                        script_group=n.values[1] if len(n.values) > 1 else None,
                    )
            elif k == "enable_script_security":
                g = replace(g, enable_script_security=self._flag(n))
            elif k == "vrrp_strict":
                g = replace(g, vrrp_strict=self._flag(n))
            else:
                self._unknown(n, UNSUPPORTED_GLOBAL, "global_defs")
        return g

    # ---- vrrp_script ----------------------------------------------------------

    def _vrrp_script(self, node: Node) -> VrrpScript | None:
        name = self._block_name(node)
        body = self._block(node)
        if name is None:
            return None
        script: str | None = None
        s = VrrpScript(name=name, script="", location=node.location)
        for n in body:
            k = n.name
            if k == "script":
                script = self._command(n)
            elif k == "interval":
                f = self._float(n, 0.001, 86400)
                if f is not None:
                    s = replace(s, interval=f)
            elif k == "timeout":
                f = self._float(n, 0.001, 86400)
                if f is not None:
                    s = replace(s, timeout=f)
            elif k == "weight":
                self._no_block(n)
                words = list(n.values)
                if not words:
                    self.sink.error(n.location, "weight needs a number")
                    continue
                try:
                    w = int(words[0], 10)
                except ValueError:
                    self.sink.error(n.location, f"weight '{words[0]}' is not a whole number")
                    continue
                if not WEIGHT_MIN <= w <= WEIGHT_MAX:
                    self.sink.error(
                        n.location, f"weight {w} is outside [{WEIGHT_MIN}, {WEIGHT_MAX}]"
                    )
                    continue
                if len(words) > 1 and words[1] == "reverse":
                    w = -w
                s = replace(s, weight=w)
            elif k == "rise":
                i = self._int(n, 1, 1000000)
                if i is not None:
                    s = replace(s, rise=i)
            elif k == "fall":
                i = self._int(n, 1, 1000000)
                if i is not None:
                    s = replace(s, fall=i)
            elif k == "user":
                self._no_block(n)
                if not n.values or len(n.values) > 2:
                    self.sink.error(n.location, "user needs USER [GROUP]")
                else:
                    s = replace(
                        s,
                        user=n.values[0],
                        group=n.values[1] if len(n.values) > 1 else None,
                    )
            else:
                self._unknown(n, UNSUPPORTED_SCRIPT, f"vrrp_script {name}")
        if script is None:
            self.sink.error(node.location, f"vrrp_script {name} has no script")
            return None
        return replace(s, script=script)

    # ---- vrrp_sync_group ------------------------------------------------------

    def _sync_group(self, node: Node) -> VrrpSyncGroup | None:
        name = self._block_name(node)
        body = self._block(node)
        if name is None:
            return None
        members: list[str] = []
        notify = _NotifyBuilder()
        track_script: list[TrackScriptRef] = []
        track_interface: list[TrackInterface] = []
        smtp = False
        for n in body:
            k = n.name
            if k == "group":
                for m in self._block(n):
                    self._no_block(m)
                    members.append(m.name)
                    members.extend(m.values)
            elif k in _NOTIFY_KEYS:
                setattr(notify, _NOTIFY_KEYS[k], self._command(n))
            elif k == "track_script":
                track_script.extend(self._track_scripts(n))
            elif k == "track_interface":
                track_interface.extend(self._track_interfaces(n))
            elif k == "smtp_alert":
                smtp = self._flag(n)
            else:
                self._unknown(n, UNSUPPORTED_SYNC_GROUP, f"vrrp_sync_group {name}")
        if not members:
            self.sink.warning(
                node.location, f"vrrp_sync_group {name} names no instance (no group block); ignored"
            )
            return None
        if len(members) < 2:
            self.sink.warning(node.location, f"vrrp_sync_group {name} has only one instance")
        return VrrpSyncGroup(
            name=name,
            group=tuple(members),
            location=node.location,
            notify=notify.freeze(),
            track_script=tuple(track_script),
            track_interface=tuple(track_interface),
            smtp_alert=smtp,
        )

    def _track_scripts(self, node: Node) -> list[TrackScriptRef]:
        out: list[TrackScriptRef] = []
        for m in self._block(node):
            res = self._weighted(m, "track_script")
            if res is not None:
                out.append(TrackScriptRef(res[0], res[1], m.location))
        return out

    def _track_interfaces(self, node: Node) -> list[TrackInterface]:
        out: list[TrackInterface] = []
        for m in self._block(node):
            res = self._weighted(m, "track_interface")
            if res is None:
                continue
            if not self.exists(res[0]):
                self.sink.error(
                    m.location,
                    f"tracked interface {res[0]} does not exist",
                    Category.MISSING_INTERFACE,
                )
            out.append(TrackInterface(res[0], res[1] or 0, m.location))
        return out

    # ---- vrrp_instance --------------------------------------------------------

    def _instance(self, node: Node, g: GlobalDefs) -> VrrpInstance | None:
        name = self._block_name(node)
        body = self._block(node)
        if name is None:
            return None
        fields: dict[str, object] = {
            "garp_master_delay": g.vrrp_garp_master_delay,
            "garp_master_repeat": g.vrrp_garp_master_repeat,
            "garp_master_refresh": g.vrrp_garp_master_refresh,
            "garp_master_refresh_repeat": g.vrrp_garp_master_refresh_repeat,
            "garp_lower_prio_delay": g.vrrp_garp_lower_prio_delay,
            "garp_lower_prio_repeat": g.vrrp_garp_lower_prio_repeat,
        }
        interface: str | None = None
        vrid: int | None = None
        ok = True
        notify = _NotifyBuilder()
        vips: list[VirtualIP] = []
        vips_excl: list[VirtualIP] = []
        peers: list[IPv4Address] = []
        t_if: list[TrackInterface] = []
        t_sc: list[TrackScriptRef] = []
        where = f"vrrp_instance {name}"

        def setf(key: str, value: object) -> None:
            if value is not None:
                fields[key] = value

        for n in body:
            k = n.name
            if k == "interface":
                v = self._one(n)
                if v is not None:
                    interface = v
                    if not self.exists(v):
                        self.sink.error(
                            n.location,
                            f"interface {v} of {where} does not exist",
                            Category.MISSING_INTERFACE,
                        )
            elif k == "virtual_router_id":
                vrid = self._int(n, 1, 255)
                ok = ok and vrid is not None
            elif k == "state":
                v = self._one(n)
                if v is not None:
                    try:
                        fields["state"] = InitialState(v.upper())
                    except ValueError:
                        self.sink.error(n.location, f"state must be MASTER or BACKUP, not {v}")
            elif k == "priority":
                setf("priority", self._int(n, 1, 255))
            elif k == "advert_int":
                f = self._float(n, 0.001, 255)
                if f is not None and f != int(f):
                    rounded = max(1, round(f))
                    self.sink.warning(
                        n.location,
                        f"advert_int {f:g}: VRRPv2 advertises whole seconds; using {rounded}",
                    )
                    f = float(rounded)
                setf("advert_int", f)
            elif k == "nopreempt":
                fields["nopreempt"] = self._flag(n)
            elif k == "preempt":
                fields["nopreempt"] = not self._flag(n)
            elif k == "preempt_delay":
                setf("preempt_delay", self._float(n, 0, 1000))
            elif k == "authentication":
                setf("authentication", self._auth(n))
            elif k == "virtual_ipaddress":
                vips.extend(self._vips(n))
            elif k == "virtual_ipaddress_excluded":
                vips_excl.extend(self._vips(n))
            elif k == "unicast_src_ip":
                v = self._one(n)
                setf("unicast_src_ip", self._ipv4(n, v) if v is not None else None)
            elif k == "mcast_src_ip":
                v = self._one(n)
                setf("mcast_src_ip", self._ipv4(n, v) if v is not None else None)
            elif k == "unicast_peer":
                for m in self._block(n):
                    self._no_block(m)
                    a = self._ipv4(m, m.name)
                    if a is not None:
                        peers.append(a)
                    if m.values:
                        self.sink.warning(
                            m.location,
                            f"unicast_peer options are not supported yet: {' '.join(m.values)}",
                        )
            elif k == "use_vmac":
                self._no_block(n)
                fields["use_vmac"] = True
                if n.values:
                    fields["vmac_name"] = n.values[0]
            elif k == "vmac_xmit_base":
                fields["vmac_xmit_base"] = self._flag(n)
            elif k == "garp_master_delay":
                setf("garp_master_delay", self._float(n, 0, 3600))
            elif k == "garp_master_repeat":
                setf("garp_master_repeat", self._int(n, 1, 10000))
            elif k == "garp_master_refresh":
                setf("garp_master_refresh", self._float(n, 0, 86400))
            elif k == "garp_master_refresh_repeat":
                setf("garp_master_refresh_repeat", self._int(n, 1, 10000))
            elif k == "garp_lower_prio_delay":
                setf("garp_lower_prio_delay", self._float(n, 0, 3600))
            elif k == "garp_lower_prio_repeat":
                setf("garp_lower_prio_repeat", self._int(n, 0, 10000))
            elif k == "track_interface":
                t_if.extend(self._track_interfaces(n))
            elif k == "track_script":
                t_sc.extend(self._track_scripts(n))
            elif k in _NOTIFY_KEYS:
                setattr(notify, _NOTIFY_KEYS[k], self._command(n))
            elif k == "smtp_alert":
                fields["smtp_alert"] = self._flag(n)
            elif k == "dont_track_primary":
                fields["dont_track_primary"] = self._flag(n)
            elif k == "version":
                ver = self._int(n, 2, 3)
                if ver == 3:
                    self.sink.error(
                        n.location, "version 3 is not supported: only VRRPv2 (RFC 3768)"
                    )
            else:
                self._unknown(n, UNSUPPORTED_INSTANCE, where)
        if interface is None:
            self.sink.error(node.location, f"{where} has no interface")
        if vrid is None:
            if ok:
                self.sink.error(node.location, f"{where} has no virtual_router_id")
            return None
        if interface is None:
            return None
        if not vips:
            self.sink.warning(node.location, f"{where} has no virtual_ipaddress")
        if len(vips) > MAX_ADVERT_ADDRESSES:
            # RFC 3768 §5.3.5: the count is one octet.  As keepalived does, the excess
            # is still configured on MASTER, but as excluded addresses, not advertised.
            excess = vips[MAX_ADVERT_ADDRESSES:]
            self.sink.warning(
                excess[0].location,
                f"{where} has {len(vips)} virtual addresses but an advert carries at most "
                f"{MAX_ADVERT_ADDRESSES}; the {len(excess)} from here on are configured "
                "as virtual_ipaddress_excluded",
            )
            vips_excl = excess + vips_excl
            del vips[MAX_ADVERT_ADDRESSES:]
        if "state" not in fields and fields.get("priority") == 255:
            # keepalived: the address owner with no `state` line starts as MASTER.
            fields["state"] = InitialState.MASTER
        return VrrpInstance(
            name=name,
            interface=interface,
            virtual_router_id=vrid,
            location=node.location,
            virtual_ipaddress=tuple(vips),
            virtual_ipaddress_excluded=tuple(vips_excl),
            unicast_peer=tuple(peers),
            track_interface=tuple(t_if),
            track_script=tuple(t_sc),
            notify=notify.freeze(),
            **fields,  # type: ignore[arg-type]
        )

    def _auth(self, node: Node) -> Authentication | None:
        auth_type: AuthType | None = None
        password: bytes | None = None
        for n in self._block(node):
            if n.name == "auth_type":
                v = self._one(n)
                if v is not None:
                    try:
                        auth_type = AuthType(v.upper())
                    except ValueError:
                        self.sink.error(n.location, f"auth_type must be PASS or AH, not {v}")
            elif n.name == "auth_pass":
                v = self._one(n)
                if v is not None:
                    raw = v.encode()
                    if len(raw) > 8:
                        self.sink.warning(
                            n.location, "auth_pass is longer than 8 characters; truncated to 8"
                        )
                    password = raw[:8]
            else:
                self._unknown(n, frozenset(), "authentication")
        if auth_type is None:
            self.sink.error(node.location, "authentication needs auth_type PASS or AH")
            return None
        if password is None:
            self.sink.error(node.location, "authentication needs auth_pass")
            return None
        return Authentication(auth_type, password)

    def _vips(self, node: Node) -> list[VirtualIP]:
        out: list[VirtualIP] = []
        for m in self._block(node):
            self._no_block(m)
            try:
                iface = ip_interface(m.name)
            except ValueError:
                self.sink.error(m.location, f"'{m.name}' is not an address[/prefix]")
                continue
            if not isinstance(iface, IPv4Interface):
                self.sink.warning(
                    m.location, f"IPv6 address {m.name} is not supported yet; ignored"
                )
                continue
            vip = VirtualIP(iface, location=m.location)
            words = list(m.values)
            bad = False
            while words:
                opt = words.pop(0)
                if opt in UNSUPPORTED_VIP_OPTIONS:
                    self.sink.warning(m.location, f"address option {opt} is not supported yet")
                    continue
                if opt not in ("dev", "label", "scope", "brd", "broadcast"):
                    self.sink.error(m.location, f"unknown address option '{opt}'")
                    bad = True
                    break
                if not words:
                    self.sink.error(m.location, f"address option {opt} needs a value")
                    bad = True
                    break
                val = words.pop(0)
                if opt == "dev":
                    if not self.exists(val):
                        self.sink.error(
                            m.location,
                            f"interface {val} of address {m.name} does not exist",
                            Category.MISSING_INTERFACE,
                        )
                    vip = replace(vip, dev=val)
                elif opt == "label":
                    vip = replace(vip, label=val)
                elif opt == "scope":
                    if val not in ("global", "site", "link", "host", "nowhere") and not (
                        val.isdigit() and int(val) <= 255
                    ):
                        self.sink.error(m.location, f"unknown scope '{val}'")
                        bad = True
                        break
                    vip = replace(vip, scope=val)
                else:
                    try:
                        vip = replace(vip, brd=IPv4Address(val))
                    except ValueError:
                        self.sink.error(m.location, f"broadcast '{val}' is not an IPv4 address")
                        bad = True
                        break
            if not bad:
                out.append(vip)
        return out

    # ---- whole-config checks --------------------------------------------------

    def _cross_check(self, config: Config) -> None:
        sink = self.sink
        by_name: dict[str, VrrpInstance] = {}
        by_vrid: dict[tuple[str, int], VrrpInstance] = {}
        for inst in config.vrrp_instances:
            if inst.name in by_name:
                sink.error(
                    inst.location,
                    f"vrrp_instance {inst.name} is already defined"
                    f" at {by_name[inst.name].location}",
                )
            else:
                by_name[inst.name] = inst
            key = (inst.interface, inst.virtual_router_id)
            other = by_vrid.get(key)
            if other is not None and other.name != inst.name:
                sink.error(
                    inst.location,
                    f"vrrp_instance {inst.name} uses virtual_router_id {inst.virtual_router_id}"
                    f" on {inst.interface}, like {other.name} at {other.location}",
                )
            else:
                by_vrid[key] = inst
        scripts: dict[str, VrrpScript] = {}
        for s in config.vrrp_scripts:
            if s.name in scripts:
                sink.error(
                    s.location,
                    f"vrrp_script {s.name} is already defined at {scripts[s.name].location}",
                )
            scripts[s.name] = s
        script_users: list[Location] = []
        refs: list[TrackScriptRef] = [r for i in config.vrrp_instances for r in i.track_script]
        refs += [r for g in config.vrrp_sync_groups for r in g.track_script]
        for ref in refs:
            if ref.name not in scripts:
                sink.error(ref.location, f"track_script {ref.name}: no vrrp_script of that name")
            else:
                script_users.append(ref.location)
        groups: dict[str, VrrpSyncGroup] = {}
        member_of: dict[str, str] = {}
        for g in config.vrrp_sync_groups:
            if g.name in groups:
                sink.error(
                    g.location,
                    f"vrrp_sync_group {g.name} is already defined at {groups[g.name].location}",
                )
            groups[g.name] = g
            for member in g.group:
                if member not in by_name:
                    sink.error(g.location, f"vrrp_sync_group {g.name}: no vrrp_instance {member}")
                elif member in member_of and member_of[member] != g.name:
                    sink.error(
                        g.location,
                        f"vrrp_instance {member} is in sync groups {member_of[member]}"
                        f" and {g.name}",
                    )
                else:
                    member_of[member] = g.name
        script_users += self.notify_locations
        if script_users and not config.global_defs.enable_script_security:
            sink.warning(
                min(script_users, key=lambda loc: (loc.file, loc.line)),
                "scripts are configured but enable_script_security is not set",
                Category.SCRIPT_SECURITY,
            )
        if config.global_defs.vrrp_strict:
            for inst in config.vrrp_instances:
                if inst.unicast_peer:
                    sink.error(
                        inst.location,
                        f"vrrp_instance {inst.name}: vrrp_strict forbids unicast_peer",
                    )

    def strict_fixups(self, config: Config) -> Config:
        """keepalived's vrrp_strict: drop authentication, MASTER only for the owner."""
        if not config.global_defs.vrrp_strict:
            return config
        fixed: list[VrrpInstance] = []
        for inst in config.vrrp_instances:
            if inst.authentication is not None:
                self.sink.warning(
                    inst.location,
                    f"vrrp_instance {inst.name}: vrrp_strict forbids authentication; ignored",
                )
                inst = replace(inst, authentication=None)
            if inst.state is InitialState.MASTER and inst.priority != 255:
                self.sink.warning(
                    inst.location,
                    f"vrrp_instance {inst.name}: vrrp_strict allows state MASTER only with"
                    " priority 255 (address owner); starting as BACKUP",
                )
                inst = replace(inst, state=InitialState.BACKUP)
            fixed.append(inst)
        return replace(config, vrrp_instances=tuple(fixed))
