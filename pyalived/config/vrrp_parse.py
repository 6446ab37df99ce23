"""Parser for the VRRP half of keepalived.conf: global_defs, scripts, instances, sync groups.

Theory of operation: ``VrrpParser`` takes the top-level statements of its
half from the loader (``pyalived.config.parser``) and fills the frozen model
of ``pyalived.config.model``.  Each kind of block has a keyword table
(``pyalived.config.keywords``): a regular keyword is one ``field`` line
naming its reader (``pyalived.config.values``) and the model field it sets;
the irregular ones (``interface``, ``virtual_router_id``, the address and
tracking blocks, the notify scripts, ``use_vmac``...) have a handler below.
``global_defs``, ``vrrp_script`` and ``vrrp_sync_group`` are modelled as
they come; the ``vrrp_instance`` blocks wait for ``instances``, once the
whole file is read, because an instance takes its gratuitous ARP defaults
from ``global_defs`` wherever that block is.  ``cross_check`` then looks at
the whole configuration (unique names, one VRID per interface, the
references of sync groups and ``track_script``, ``enable_script_security``)
and ``strict_fixups`` applies ``vrrp_strict``.

``track_file`` (``vrrp_track_file``) and ``vrrp_track_process``
(``track_process``) blocks are top-level definitions; instances and sync
groups reference them in ``track_file { }`` / ``track_process { }`` blocks,
``NAME [weight N [reverse|noreverse]]`` with keepalived 2.2.7's range
-254..254.  ``cross_check`` refuses references to undefined names, and
``track_fixups`` resolves each reference's weight (its own, else its
definition's) and, as keepalived does, drops an address owner's or a sync
group member's own references whose weight is not 0, with a warning.

Range checks follow RFC 3768: VRID 1..255 (§5.3.3), priority 1..255 where
255 is the address owner and 0 is reserved for the stop advert (§5.3.4),
auth_pass at most 8 octets (§5.3.10).

IPv6 (RFC 5798 §5.1.2): an instance whose ``virtual_ipaddress`` is IPv6
(its first address decides; without addresses, ``unicast_src_ip`` or the
first ``unicast_peer``) is an IPv6 instance and always VRRPv3, since RFC 3768
defines VRRPv2 for IPv4 only.  keepalived 2.2.7 says "cannot use IPv6 with
VRRP version 2; setting version 3" only under ``vrrp_strict`` and otherwise
runs its own non-standard VRRPv2 over IPv6; pyalived always switches, with
that warning when the instance asked for version 2 (the global
``vrrp_version`` does not apply to IPv6 instances, as in keepalived).
``virtual_ipaddress`` holds one family: an address of the other is warned
about and ignored ("address family must match VRRP instance"), while
``virtual_ipaddress_excluded`` may hold both.  ``unicast_src_ip``,
``mcast_src_ip`` and ``unicast_peer`` of the other family are errors and
ignored, as keepalived ("MUST be of the same family").
``vrrp_mcast_group6`` (default ff02::12, RFC 5798 §5.1.2.2) is the group of
IPv6 instances.  ``vrrp_gna_interval`` (0..1 s, default 0), or an
instance's own ``gna_interval``, spaces the unsolicited neighbour
advertisements of a burst (``vrrp_garp_interval`` does not yet space
gratuitous ARPs).
An IPv6 address without a prefix length is a /128.  ``use_vmac`` on an
IPv6 instance makes a 00:00:5e:00:02:VRID macvlan (``pyalived.vrrp.vmac``);
its default name is ``vrrp.VRID`` as for IPv4, or, as keepalived names it,
``vrrp6.VRID`` when an instance before it already has that name (an IPv4
and an IPv6 instance sharing a VRID).

VRRPv3 (RFC 5798 as updated by RFC 9568): ``vrrp_version 2|3`` in
global_defs sets the default, ``version 2|3`` in an instance overrides it.
The version decides what ``advert_int`` means, so it is applied once the
instance block is complete (a ``version`` line may follow ``advert_int``),
with keepalived 2.2.7's limits and diagnostics (``keepalived -t``):

* VRRPv2: whole seconds, a fraction rounded with a warning (§5.3.7).
* VRRPv3: the Max Adver Int field is 12 bits of centiseconds (RFC 5798
  §5.2.7): below 0.01 s the line is refused and the default (1 s) kept, a
  value not a multiple of 10 ms is rounded half up to one with a warning,
  and 40.96 s or more becomes 40.95 s with a warning.
* ``authentication`` under VRRPv3 is warned about and ignored (RFC 5798
  removed authentication; keepalived: "VRRP version 3 does not support
  authentication. Ignoring.").
* ``old_unicast_checksum [never]`` chooses the checksum of unicast VRRPv3
  adverts over IPv4 (``OldUnicastChecksum``; see ``pyalived.vrrp.packet``).

Accept mode (RFC 5798 Accept_Mode) is settled with the other ``vrrp_strict``
consequences: ``accept`` / ``no_accept`` as written, by default accept unless
``vrrp_strict``; the address owner always accepts; under ``vrrp_strict`` a
VRRPv2 instance's ``accept`` is warned about and dropped, as keepalived does.
``nftables [TABLE]``, ``nftables_priority``, ``nftables_counters`` and
``nftables_ifindex`` configure the firewall (``pyalived.vrrp.firewall``);
``vrrp_iptables`` / ``vrrp_ipsets`` are warned about: nftables is used.

``lvs_sync_daemon IF [[inst] INSTANCE] [id N] [maxlen N] [port N] [ttl N]
[group IP]`` follows keepalived 2.2.7's syntax and ranges (also its old
``IF INSTANCE SYNC_ID`` form); an instance's deprecated
``lvs_sync_daemon_interface IF`` is taken when no global one is given
(``sync_daemon_fixups``, which also refuses an unknown instance).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, IPv6Interface, ip_address, ip_interface
from typing import TypeVar

from pyalived.config import lvs_globals
from pyalived.config.diagnostics import Category
from pyalived.config.keywords import Block, Keywords, field, user_fields, writes
from pyalived.config.model import (
    STARTUP_SCRIPT_TIMEOUT,
    Authentication,
    AuthType,
    Config,
    GarpGroup,
    GlobalDefs,
    InitialState,
    Location,
    LvsSyncDaemon,
    Notify,
    NotifyFifo,
    OldUnicastChecksum,
    ParamMatch,
    ParentScript,
    ScriptUser,
    SmtpServer,
    TrackFile,
    TrackInterface,
    TrackProcess,
    TrackRef,
    TrackScriptRef,
    VirtualIP,
    VirtualRoute,
    VirtualRule,
    VrrpInstance,
    VrrpScript,
    VrrpSyncGroup,
)
from pyalived.config.routes_parse import RouteReader, RulePreferences, instance_blocks
from pyalived.config.tree import Node
from pyalived.config.values import (
    WEIGHT_MAX,
    WEIGHT_MIN,
    ValueReader,
    float_in,
    int_in,
    one_of,
)

STATIC_DEFAULT_INTERFACE = "eth0"  # keepalived's default_interface
MAX_ADVERT_ADDRESSES = 255  # RFC 3768 §5.3.5: Count IP Addrs is 8 bits

# Keywords keepalived 2.2.7 accepts that this project does not implement yet.
UNSUPPORTED_GLOBAL = frozenset(
    """no_email_faults email_faults lvs_id
    default_interface
    vrrp_check_unicast_src
    bfd_priority bfd_no_swap bfd_rt_priority bfd_rlimit_rtime bfd_rlimit_rttime
    bfd_cpu_affinity snmp_socket enable_snmp_vrrp
    enable_snmp_keepalived enable_snmp_checker enable_snmp_rfc enable_snmp_rfcv2
    enable_snmp_rfcv3 enable_traps enable_dbus enable_dbus_create_instance
    process_names process_name vrrp_process_name checker_process_name
    bfd_process_name max_auto_priority min_auto_priority_delay
    vrrp_higher_prio_send_advert vrrp_lower_prio_no_advert vrrp_garp_extra_if
    log_unknown_vrids rs_init_notifies no_checker_emails
    dbus_service_name nftables_ipvs nftables_ipvs_priority nftables_ipvs_start_fwmark
    process_monitor_rcv_bufs process_monitor_rcv_bufs_force vmac_prefix vmac_addr_prefix
    vrrp_netlink_cmd_rcv_bufs vrrp_netlink_cmd_rcv_bufs_force vrrp_netlink_monitor_rcv_bufs
    vrrp_netlink_monitor_rcv_bufs_force vrrp_rx_bufs_policy vrrp_rx_bufs_multiplier
    lvs_netlink_cmd_rcv_bufs lvs_netlink_cmd_rcv_bufs_force lvs_netlink_monitor_rcv_bufs
    lvs_netlink_monitor_rcv_bufs_force linkbeat_use_polling umask
    random_seed
    reload_check_config reload_time_file reload_repeat reload_file config_save_dir
    data_use_instance json_version tmp_config_directory vrrp_garp_master_refresh_repeat_delay
    vrrp_garp_interval_startup vrrp_down_timer_adverts
    vrrp_track_process_batch vrrp_socket_rcv_buf vrrp_socket_rcv_buf_force
    vrrp_notify_priority_changes fifo_write_vrrp_states_on_reload script_max_reload
    vrrp_use_ip6_prefix vrrp_ipvs_sync_daemon_interface vrrp_mcast_group_6
    local_name instance use_symlink_paths
    lvs_process_name vrrp_vmac_garp_intvl""".split()
)
UNSUPPORTED_INSTANCE = frozenset(
    """native_ipv6 track_bfd
    strict_mode debug linkbeat_use_polling notify_deleted
    notify_master_rx_lower_pri lower_prio_no_advert higher_prio_send_advert
    kernel_rx_buf_size unicast_ttl check_unicast_src promote_secondaries
    down_timer_adverts notify_priority_changes unicast_fault_no_peer
    use_ipvlan track_src_ip garp_extra_if mcast_dst_ip vrf use_vmac_addr
    vmac_garp_intvl""".split()
)
UNSUPPORTED_SYNC_GROUP = frozenset(
    "global_tracking sync_group_tracking_weight track_bfd "
    "notify_priority_changes notify_deleted".split()
)
UNSUPPORTED_SCRIPT = frozenset("init_fail".split())
UNSUPPORTED_VIP_OPTIONS = frozenset(
    "no_track preferred_lft home nodad mngtmpaddr noprefixroute autojoin track_group".split()
)

_NOTIFY_KEYS = {
    "notify_master": "master",
    "notify_backup": "backup",
    "notify_fault": "fault",
    "notify_stop": "stop",
    "notify": "generic",
}
_STATES = {s.value: s for s in InitialState}
_AUTH_TYPES = {a.value: a for a in AuthType}


# ---- block states ------------------------------------------------------------------


class _Tracking(Block):
    """A block with notify scripts and tracking: ``vrrp_instance`` or ``vrrp_sync_group``."""

    __slots__ = ("notify", "notify_users", "track_file", "track_interface", "track_process",
                 "track_script")

    def __init__(self, r: ValueReader, label: str) -> None:
        super().__init__(r, label)
        self.notify: dict[str, str | None] = {}  # Notify's fields
        self.notify_users: dict[str, ScriptUser | None] = {}  # their USER [GROUP]
        self.track_interface: list[TrackInterface] = []
        self.track_script: list[TrackScriptRef] = []
        self.track_file: list[TrackRef] = []
        self.track_process: list[TrackRef] = []


class _Instance(_Tracking):
    __slots__ = ("advert_int", "interface", "ok", "peer_locations", "peers", "sync_daemon",
                 "vips", "vips_excluded", "vrid")

    def __init__(self, r: ValueReader, label: str) -> None:
        super().__init__(r, label)
        self.advert_int: tuple[float, Location] | None = None  # as written, with its line
        self.interface: str | None = None
        self.vrid: int | None = None
        self.ok = True  # no bad virtual_router_id seen
        self.vips: list[VirtualIP] = []
        self.vips_excluded: list[VirtualIP] = []
        self.peers: list[IPv4Address | IPv6Address] = []
        self.peer_locations: list[Location] = []
        self.sync_daemon: LvsSyncDaemon | None = None  # lvs_sync_daemon_interface


class _SyncGroup(_Tracking):
    __slots__ = ("members",)

    def __init__(self, r: ValueReader, label: str) -> None:
        super().__init__(r, label)
        self.members: list[str] = []


_Ref = TypeVar("_Ref", TrackScriptRef, TrackRef)
_Owner = TypeVar("_Owner", VrrpInstance, VrrpSyncGroup)


# keywords that mean unicast VRRP: without a peer they are warned (keepalived 2.2.7)
UNICAST_KEYWORDS = frozenset(("unicast_src_ip", "unicast_peer", "old_unicast_checksum"))


def _any_interface(name: str) -> bool:
    """With ``dynamic_interfaces`` every interface may exist later."""
    return True


# ---- readers and handlers ------------------------------------------------------------


def _version(r: ValueReader, node: Node) -> int | None:
    """``vrrp_version`` / ``version``: 2 (RFC 3768) or 3 (RFC 5798)."""
    return r.integer(node, 2, 3)


def _whole(r: ValueReader, node: Node) -> int | None:
    """One whole number; anything else is warned about and ignored (keepalived's way
    with the process settings below)."""
    text = r.one(node)
    if text is None:
        return None
    try:
        return int(text, 10)
    except ValueError:
        r.sink.warning(node.location, f"{node.name}: '{text}' is not a whole number; ignored")
        return None


def _nice(r: ValueReader, node: Node) -> int | None:
    """``vrrp_priority`` / ``checker_priority``: a nice value; out of range, ignored."""
    value = _whole(r, node)
    if value is not None and not -20 <= value <= 19:
        r.sink.warning(node.location, f"{node.name} {value} is outside [-20, 19]; ignored")
        return None
    return value


def _rt_priority(r: ValueReader, node: Node) -> int | None:
    """``vrrp_rt_priority`` / ``checker_rt_priority``: 1..99, clamped as keepalived does."""
    value = _whole(r, node)
    if value is None:
        return None
    clamped = min(max(value, 1), 99)
    if clamped != value:
        r.sink.warning(node.location, f"{node.name} {value} is outside [1, 99]; "
                       f"using {clamped}")
    return clamped


def _rlimit_rttime(r: ValueReader, node: Node) -> int | None:
    """``*_rlimit_rttime`` (and keepalived's older spelling ``*_rlimit_rtime``): µs."""
    if node.name.endswith("_rlimit_rtime"):  # keepalived 2.2.7 reads it without a -t warning
        r.sink.notice(node.location, f"{node.name} is deprecated; write {node.name[:-5]}rttime")
    value = _whole(r, node)
    if value is not None and value < 1:
        r.sink.warning(node.location, f"{node.name} {value} is not a positive number; ignored")
        return None
    return value


def _cpu_affinity(r: ValueReader, node: Node) -> tuple[int, ...] | None:
    """``vrrp_cpu_affinity CPU...``: this host's CPU numbers; a bad one is ignored."""
    r.no_block(node)
    cpus = os.cpu_count() or 1
    found: list[int] = []
    for word in node.values:
        try:
            cpu = int(word, 10)
        except ValueError:
            r.sink.warning(node.location, f"{node.name}: '{word}' is not a CPU number; ignored")
            continue
        if not 0 <= cpu < cpus:
            r.sink.warning(node.location,
                           f"{node.name}: CPU {cpu} is outside [0, {cpus - 1}]; ignored")
            continue
        found.append(cpu)
    if not node.values:
        r.sink.warning(node.location, f"{node.name} needs CPU numbers")
    return tuple(found) if found else None


def _old_unicast_checksum(r: ValueReader, node: Node) -> OldUnicastChecksum | None:
    """``old_unicast_checksum [never]``; another word is ignored, as keepalived does."""
    r.no_block(node)
    if not node.values:
        return OldUnicastChecksum.ALWAYS
    if node.values[0] == "never":
        return OldUnicastChecksum.NEVER
    r.sink.warning(node.location, f"unknown old_unicast_checksum mode {node.values[0]}; ignored")
    return None


def _multicast_group(r: ValueReader, node: Node) -> IPv4Address | None:
    addr = r.address(node)
    if addr is not None and not addr.is_multicast:
        r.sink.error(node.location, f"vrrp_mcast_group4 {addr} is not multicast")
        return None
    return addr


def _any_address(r: ValueReader, node: Node, text: str) -> IPv4Address | IPv6Address | None:
    """``text`` (a word of ``node``) as an IPv4 or IPv6 address."""
    try:
        return ip_address(text)
    except ValueError:
        r.sink.error(node.location, f"{node.name}: '{text}' is not an IP address")
        return None


def _address_any(r: ValueReader, node: Node) -> IPv4Address | IPv6Address | None:
    """The one word of the statement as an IPv4 or IPv6 address."""
    text = r.one(node)
    return None if text is None else _any_address(r, node, text)


def _multicast_group6(r: ValueReader, node: Node) -> IPv6Address | None:
    """``vrrp_mcast_group6``: an IPv6 multicast address (default ff02::12)."""
    text = r.one(node)
    if text is None:
        return None
    try:
        addr = IPv6Address(text)
    except ValueError:
        r.sink.error(node.location, f"vrrp_mcast_group6 '{text}' is not an IPv6 address")
        return None
    if not addr.is_multicast:
        r.sink.error(node.location, f"vrrp_mcast_group6 {addr} is not multicast")
        return None
    return addr


def _script_weight(r: ValueReader, node: Node) -> int | None:
    """``weight N [reverse]`` of a vrrp_script."""
    r.no_block(node)
    words = node.values
    if not words:
        r.sink.error(node.location, "weight needs a number")
        return None
    try:
        weight = int(words[0], 10)
    except ValueError:
        r.sink.error(node.location, f"weight '{words[0]}' is not a whole number")
        return None
    if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
        r.sink.error(node.location, f"weight {weight} is outside [{WEIGHT_MIN}, {WEIGHT_MAX}]")
        return None
    if len(words) > 1 and words[1] == "reverse":
        weight = -weight
    return weight


@writes("advert_int")
def _advert_int(block: _Instance, node: Node) -> None:
    """``advert_int``, applied by ``_advert_interval`` once the version is known."""
    value = block.r.number(node, 0.001, 255)
    if value is not None:
        block.advert_int = (value, node.location)


V3_ADVERT_INT_MIN = 0.01  # seconds: one centisecond (RFC 5798 §5.2.7); keepalived's minimum
V3_ADVERT_INT_MAX_CS = 4095  # 12 bits of centiseconds (RFC 5798 §5.2.7)


def _advert_interval(r: ValueReader, version: int, value: float, loc: Location) -> float | None:
    """The instance's advert_int in seconds for ``version``; None: keep the default."""
    if version == 2:
        if value != int(value):
            rounded = max(1, round(value))
            r.sink.warning(
                loc, f"advert_int {value:g}: VRRPv2 advertises whole seconds; using {rounded}"
            )
            return float(rounded)
        return value
    if value < V3_ADVERT_INT_MIN:
        r.sink.warning(  # keepalived reports the line and carries on
            loc, f"advert_int {value:g} is outside [0.01, 255]; ignored (default 1 s)"
        )
        return None
    micros = round(value * 1_000_000)  # keepalived counts in microseconds
    if micros >= (V3_ADVERT_INT_MAX_CS + 1) * 10_000:
        r.sink.warning(
            loc,
            f"advert_int {value:g}: VRRPv3 allows less than 40.96 s (RFC 5798 §5.2.7); "
            "using 40.95",
        )
        return V3_ADVERT_INT_MAX_CS / 100
    if micros % 10_000:
        centis = max(1, (micros + 5_000) // 10_000)  # half up, as keepalived rounds
        r.sink.warning(
            loc, f"advert_int {value:g}: VRRPv3 advertises centiseconds; using {centis / 100:g}"
        )
        return centis / 100
    return micros // 10_000 / 100


def _preempt(r: ValueReader, node: Node) -> bool:
    return not r.flag(node)


def _accept(r: ValueReader, node: Node) -> bool:
    """``accept``: RFC 5798 Accept_Mode on (a bare keyword, as keepalived reads it)."""
    r.no_block(node)
    return True


def _no_accept(r: ValueReader, node: Node) -> bool:
    r.no_block(node)
    return False


NFT_TABLE_MAX = 255  # NFT_NAME_MAXLEN 256, with its terminating zero


def _nftables_table(r: ValueReader, node: Node) -> str | None:
    """``nftables [TABLE]``: the firewall's table (default ``keepalived``)."""
    r.no_block(node)
    if not node.values:
        return "keepalived"
    name = node.values[0]
    if len(name) > NFT_TABLE_MAX:
        r.sink.error(node.location, f"nftables table name longer than {NFT_TABLE_MAX} characters")
        return None
    if len(node.values) > 1:
        r.sink.warning(node.location, f"nftables: extra words after {name!r} ignored")
    return name


def _nftables_priority(r: ValueReader, node: Node) -> int | None:
    """``nftables_priority N``: the hook priority of the input and output chains."""
    return r.integer(node, -(2**31), 2**31 - 1)


@writes()  # warns: nftables is used instead
def _iptables(block: Block, node: Node) -> None:
    """``vrrp_iptables`` / ``vrrp_ipsets``: iptables is not used; nftables does the job."""
    block.r.sink.warning(
        node.location,
        f"{node.name}: iptables not supported, using nftables instead; replace"
        " vrrp_iptables and vrrp_ipsets with the nftables option",
    )


def _auth_pass(r: ValueReader, node: Node) -> bytes | None:
    text = r.one(node)
    if text is None:
        return None
    raw = text.encode()
    if len(raw) > 8:
        r.sink.warning(node.location, "auth_pass is longer than 8 characters; truncated to 8")
    return raw[:8]


def _authentication(r: ValueReader, node: Node) -> Authentication | None:
    block = Block(r, "authentication")
    _AUTHENTICATION.run(block, r.block(node))
    auth_type = block.fields.get("type")
    password = block.fields.get("password")
    if not isinstance(auth_type, AuthType):
        r.sink.error(node.location, "authentication needs auth_type PASS or AH")
        return None
    if not isinstance(password, bytes):
        r.sink.error(node.location, "authentication needs auth_pass")
        return None
    return Authentication(auth_type, password)


@writes("interface")
def _interface(block: _Instance, node: Node) -> None:
    name = block.r.one(node)
    if name is not None:
        block.interface = name
        if not block.r.exists(name):
            block.r.sink.error(
                node.location,
                f"interface {name} of {block.label} does not exist",
                Category.MISSING_INTERFACE,
            )


@writes("virtual_router_id")
def _virtual_router_id(block: _Instance, node: Node) -> None:
    block.vrid = block.r.integer(node, 1, 255)
    block.ok = block.ok and block.vrid is not None


@writes("virtual_ipaddress")
def _virtual_ipaddress(block: _Instance, node: Node) -> None:
    block.vips.extend(_vips(block.r, node))


@writes("virtual_ipaddress_excluded")
def _virtual_ipaddress_excluded(block: _Instance, node: Node) -> None:
    block.vips_excluded.extend(_vips(block.r, node))


@writes("unicast_peer")
def _unicast_peer(block: _Instance, node: Node) -> None:
    r = block.r
    for m in r.block(node):
        r.no_block(m)
        addr = _any_address(r, m, m.name)
        if addr is not None:
            block.peers.append(addr)
            block.peer_locations.append(m.location)
        if m.values:
            r.sink.warning(
                m.location, f"unicast_peer options are not supported yet: {' '.join(m.values)}"
            )


@writes("use_vmac", "vmac_name")
def _use_vmac(block: _Instance, node: Node) -> None:
    block.r.no_block(node)
    block.fields["use_vmac"] = True
    if node.values:
        block.fields["vmac_name"] = node.values[0]


@writes("master", "backup", "fault", "stop", "generic", "master_user", "backup_user",
        "fault_user", "stop_user", "generic_user")
def _notify(block: _Tracking, node: Node) -> None:
    """A notify script ``SCRIPT [USER [GROUP]]``; a bad line unsets the script given
    before."""
    key = _NOTIFY_KEYS[node.name]
    read = block.r.notify_script(node)
    block.notify[key], block.notify_users[key] = (None, None) if read is None else read


def _notify_of(block: _Tracking) -> Notify:
    """The ``Notify`` of the lines read into ``block``."""
    line, user = block.notify.get, block.notify_users.get
    return Notify(
        master=line("master"), backup=line("backup"), fault=line("fault"),
        stop=line("stop"), generic=line("generic"), master_user=user("master"),
        backup_user=user("backup"), fault_user=user("fault"), stop_user=user("stop"),
        generic_user=user("generic"))


@writes("track_script")
def _track_script(block: _Tracking, node: Node) -> None:
    for m in block.r.block(node):
        res = block.r.weighted(m, "track_script")
        if res is not None:
            block.track_script.append(TrackScriptRef(res[0], res[1], m.location))


TRACK_WEIGHT_MIN, TRACK_WEIGHT_MAX = -254, 254  # track_file / track_process weights


def _track_weight(r: ValueReader, node: Node, words: list[str], what: str
                  ) -> tuple[int, bool] | None:
    """``N [reverse|noreverse]`` (the words after ``weight``) of a track_file or
    track_process, in keepalived's range -254..254."""
    if not words:
        r.sink.error(node.location, f"{what}: weight needs a number")
        return None
    try:
        weight = int(words[0], 10)
    except ValueError:
        r.sink.error(node.location, f"{what}: weight '{words[0]}' is not a whole number")
        return None
    if not TRACK_WEIGHT_MIN <= weight <= TRACK_WEIGHT_MAX:
        r.sink.error(
            node.location,
            f"{what}: weight {weight} is outside [{TRACK_WEIGHT_MIN}, {TRACK_WEIGHT_MAX}]",
        )
        return None
    reverse = False
    rest = words[1:]
    if rest and rest[0] in ("reverse", "noreverse"):
        reverse = rest[0] == "reverse"
        rest = rest[1:]
    if rest:
        r.sink.warning(node.location, f"{what}: extra words ignored: {' '.join(rest)}")
    return weight, reverse


def _track_refs(block: _Tracking, node: Node, into: list[TrackRef]) -> None:
    """The ``NAME [weight N [reverse|noreverse]]`` lines of a track_file or
    track_process block of an instance or sync group."""
    r = block.r
    for m in r.block(node):
        r.no_block(m)
        words = list(m.values)
        if not words:
            into.append(TrackRef(m.name, location=m.location))
            continue
        what = f"{node.name} {m.name}"
        if words[0] != "weight":
            r.sink.error(m.location, f"{what}: unknown option '{words[0]}'")
            continue
        res = _track_weight(r, m, words[1:], what)
        if res is not None:
            into.append(TrackRef(m.name, res[0], res[1], m.location))


@writes("track_file")
def _track_file_refs(block: _Tracking, node: Node) -> None:
    _track_refs(block, node, block.track_file)


@writes("track_process")
def _track_process_refs(block: _Tracking, node: Node) -> None:
    _track_refs(block, node, block.track_process)


def _def_weight(r: ValueReader, node: Node) -> tuple[int, bool] | None:
    """``weight N [reverse]`` inside a track_file or vrrp_track_process block."""
    r.no_block(node)
    return _track_weight(r, node, list(node.values), node.name)


INIT_FILE_MIN, INIT_FILE_MAX = -(2**31), 2**31 - 1  # keepalived reads the file as an int


def _init_file(r: ValueReader, node: Node) -> tuple[int, bool] | None:
    """``init_file [VALUE] [overwrite]``: the value (default 0) and whether to overwrite."""
    r.no_block(node)
    value, overwrite = 0, False
    for word in node.values:
        if word == "overwrite" and not overwrite:
            overwrite = True
            continue
        try:
            number = int(word, 10)
        except ValueError:
            r.sink.error(node.location, f"init_file: unknown option '{word}'")
            return None
        if not INIT_FILE_MIN <= number <= INIT_FILE_MAX:
            r.sink.error(
                node.location,
                f"init_file: {number} is outside [{INIT_FILE_MIN}, {INIT_FILE_MAX}]",
            )
            return None
        value = number
    return value, overwrite


def _weight_field(fields: dict[str, object]) -> tuple[int, bool]:
    """A definition's ``weight`` as read by ``_def_weight`` (default 1, not reversed)."""
    value = fields.get("weight")
    if isinstance(value, tuple):
        return int(value[0]), bool(value[1])
    return 1, False


def _process(r: ValueReader, node: Node) -> tuple[str, tuple[str, ...]] | None:
    """``process NAME [PARAM...]`` (a quoted word is one element)."""
    r.no_block(node)
    if not node.values:
        r.sink.error(node.location, "process needs a process name")
        return None
    if not node.values[0]:
        r.sink.error(node.location, "process: the process name is empty")
        return None
    return node.values[0], tuple(node.values[1:])


@writes("track_interface")
def _track_interface(block: _Tracking, node: Node) -> None:
    r = block.r
    for m in r.block(node):
        res = r.weighted(m, "track_interface")
        if res is None:
            continue
        if not r.exists(res[0]):
            r.sink.error(
                m.location,
                f"tracked interface {res[0]} does not exist",
                Category.MISSING_INTERFACE,
            )
        block.track_interface.append(TrackInterface(res[0], res[1] or 0, m.location))


@writes("group")
def _group(block: _SyncGroup, node: Node) -> None:
    for m in block.r.block(node):
        block.r.no_block(m)
        block.members.append(m.name)
        block.members.extend(m.values)


def _vips(r: ValueReader, node: Node) -> list[VirtualIP]:
    """The ``ADDR[/PREFIX] [brd X] [dev IF] [scope S] [label L]`` lines of a block."""
    out: list[VirtualIP] = []
    for m in r.block(node):
        r.no_block(m)
        try:
            iface = ip_interface(m.name)
        except ValueError:
            r.sink.error(m.location, f"'{m.name}' is not an address[/prefix]")
            continue
        vip = VirtualIP(iface, location=m.location)
        words = list(m.values)
        bad = False
        while words:
            opt = words.pop(0)
            if opt in UNSUPPORTED_VIP_OPTIONS:
                r.sink.warning(m.location, f"address option {opt} is not supported yet")
                continue
            if opt not in ("dev", "label", "scope", "brd", "broadcast"):
                r.sink.error(m.location, f"unknown address option '{opt}'")
                bad = True
                break
            if not words:
                r.sink.error(m.location, f"address option {opt} needs a value")
                bad = True
                break
            val = words.pop(0)
            if opt == "dev":
                if not r.exists(val):
                    r.sink.error(
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
                    r.sink.error(m.location, f"unknown scope '{val}'")
                    bad = True
                    break
                vip = replace(vip, scope=val)
            elif isinstance(iface, IPv6Interface):
                r.sink.error(m.location, f"an IPv6 address has no broadcast ({opt} {val})")
                bad = True
                break
            else:
                try:
                    vip = replace(vip, brd=IPv4Address(val))
                except ValueError:
                    r.sink.error(m.location, f"broadcast '{val}' is not an IPv4 address")
                    bad = True
                    break
        if not bad:
            out.append(vip)
    return out


# ---- mail alerts and notify FIFOs (global_defs) -------------------------------------

SMTP_CONNECT_TIMEOUT_MAX = 4294  # seconds, keepalived 2.2.7's limit
_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
                        r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")
_FIFO_KEYS = ("notify_fifo", "vrrp_notify_fifo", "lvs_notify_fifo")


@writes("notification_email")
def _notification_email(block: Block, node: Node) -> None:
    """``notification_email { ADDRESS ... }``: one or more addresses a line, appended."""
    r = block.r
    found = list(block.fields.get("notification_email", ()))  # type: ignore[call-overload]
    for m in r.block(node):
        r.no_block(m)
        for word in (m.name, *m.values):
            # A local mailbox ("root") is fine, as in keepalived; what would break the
            # SMTP command is not.
            if any(c in word for c in "<>\r\n ,\"") or word.startswith("@"):
                r.sink.error(m.location, f"notification_email: '{word}' is not a mail address")
            else:
                found.append(word)
    block.fields["notification_email"] = tuple(found)


def _smtp_server(r: ValueReader, node: Node) -> SmtpServer | None:
    """``smtp_server HOST [PORT]``: an IPv4 or IPv6 address or a host name (default port 25)."""
    r.no_block(node)
    if not node.values or len(node.values) > 2:
        r.sink.error(node.location, "smtp_server needs HOST [PORT]")
        return None
    host = node.values[0]
    try:
        host = str(ip_address(host))
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            r.sink.error(node.location, f"smtp_server: '{host}' is not an address or host name")
            return None
    port = 25
    if len(node.values) > 1:
        read = r.port(node, node.values[1], "smtp_server")
        if read is None:
            return None
        port = read
    return SmtpServer(host, port)


def _smtp_connect_timeout(r: ValueReader, node: Node) -> float | None:
    """Whole seconds in [0, 4294]; 0 becomes 1 with a warning, as keepalived does."""
    value = r.integer(node, 0, SMTP_CONNECT_TIMEOUT_MAX)
    if value == 0:
        r.sink.warning(node.location, "smtp_connect_timeout must be greater than 0; using 1")
        value = 1
    return None if value is None else float(value)


def _fifo(r: ValueReader, node: Node) -> tuple[str, str | None, str | None] | None:
    """``..._fifo PATH [USER [GROUP]]`` and ``..._fifo_script SCRIPT [USER [GROUP]]``."""
    r.no_block(node)
    if not node.values or len(node.values) > 3:
        what = "SCRIPT" if node.name.endswith("_script") else "PATH"
        r.sink.error(node.location, f"{node.name} needs {what} [USER [GROUP]]")
        return None
    first = node.values[0]
    if node.name.endswith("_script"):
        r.script_locations.append(node.location)
    elif not first.startswith("/"):
        r.sink.error(node.location, f"{node.name}: '{first}' is not an absolute path")
        return None
    words = list(node.values[1:])
    return first, *[*words, None, None][:2]  # type: ignore[return-value]


def _fifos(fields: dict[str, object], defs: GlobalDefs) -> None:
    """Join each ``..._fifo`` with its ``..._fifo_script`` into a ``NotifyFifo``."""
    for key in _FIFO_KEYS:
        fifo = fields.pop(key, None)
        script = fields.pop(f"{key}_script", None)
        current: NotifyFifo | None = getattr(defs, key)
        if isinstance(fifo, tuple):
            current = NotifyFifo(fifo[0], fifo[1], fifo[2], *(
                (current.script, current.script_user, current.script_group)
                if current is not None else ()))
        if isinstance(script, tuple) and current is not None:
            current = replace(current, script=script[0], script_user=script[1],
                              script_group=script[2])
        if current is not None:
            fields[key] = current


def vrrp_alert_default(g: GlobalDefs) -> bool:
    """An instance's or sync group's ``smtp_alert`` when it has none: ``smtp_alert_vrrp``,
    else ``smtp_alert``, else off (keepalived 2.2.7)."""
    if g.smtp_alert_vrrp is not None:
        return g.smtp_alert_vrrp
    return bool(g.smtp_alert)
# ---- start-up, interfaces and GARP pacing (global) -------------------------------------

#: What ``vrrp_min_garp`` sets, unless the key is given explicitly (before or after it).
MIN_GARP_DEFAULTS: dict[str, object] = {
    "vrrp_garp_master_delay": 0.0,
    "vrrp_garp_master_repeat": 1,
    "vrrp_garp_master_refresh": 0.0,
    "vrrp_garp_master_refresh_repeat": 1,
}
STARTUP_DELAY_MAX = 4294.967295  # keepalived's limit (a 32-bit count of microseconds)
GARP_GROUP_INTERVAL_MAX = 4294.967295


@writes("dynamic_interfaces", "dynamic_interfaces_allow_changes")
def _dynamic_interfaces(block: Block, node: Node) -> None:
    """``dynamic_interfaces [allow_if_changes]``."""
    r = block.r
    r.no_block(node)
    block.fields["dynamic_interfaces"] = True
    for word in node.values:
        if word == "allow_if_changes":
            block.fields["dynamic_interfaces_allow_changes"] = True
        else:
            r.sink.warning(node.location, f"unknown dynamic_interfaces option '{word}'; ignored")


def _parent_script(key: str) -> Callable[[Block, Node], None]:
    """``startup_script`` / ``shutdown_script SCRIPT [USER [GROUP]]``."""

    @writes(key)
    def handle(block: Block, node: Node) -> None:
        r = block.r
        r.no_block(node)
        words = node.values
        if not words:
            r.sink.error(node.location, f"{node.name} needs a script")
            return
        if len(words) > 3:
            r.sink.error(node.location, f"{node.name} takes SCRIPT [USER [GROUP]]")
            return
        r.script_locations.append(node.location)
        block.fields[key] = ParentScript(
            command=words[0],
            user=words[1] if len(words) > 1 else None,
            group=words[2] if len(words) > 2 else None,
            location=node.location,
        )

    return handle


class _GarpGroup(Block):
    __slots__ = ("interfaces",)

    def __init__(self, r: ValueReader, label: str) -> None:
        super().__init__(r, label)
        self.interfaces: list[str] = []


@writes("interfaces")
def _garp_group_interface(block: _GarpGroup, node: Node) -> None:
    name = block.r.one(node)
    if name is not None:
        block.interfaces.append(name)


@writes("interfaces")
def _garp_group_interfaces(block: _GarpGroup, node: Node) -> None:
    for m in block.r.block(node):
        block.r.no_block(m)
        block.interfaces += [m.name, *m.values]


_GARP_GROUP = Keywords[_GarpGroup](
    {
        "garp_interval": field("garp_interval", float_in(0, GARP_GROUP_INTERVAL_MAX)),
        "gna_interval": field("gna_interval", float_in(0, GARP_GROUP_INTERVAL_MAX)),
        "interface": _garp_group_interface,
        "interfaces": _garp_group_interfaces,
    }
)


SYNCD_IFNAME_MAX = 15  # IP_VS_IFNAME_MAXLEN less its NUL
SYNCD_MAXLEN_MAX = 65535 - 20 - 8  # an IPv4 UDP datagram's payload
_SYNCD_OPTIONS: dict[str, tuple[str, int, int]] = {
    "id": ("sync_id", 0, 255),
    "maxlen": ("maxlen", 1, SYNCD_MAXLEN_MAX),
    "port": ("port", 1, 65535),
    "ttl": ("ttl", 1, 255),
}


def _syncd_number(r: ValueReader, node: Node, word: str, text: str, lo: int, hi: int
                  ) -> int | None:
    try:
        value = int(text, 10)
    except ValueError:
        r.sink.error(node.location, f"lvs_sync_daemon {word}: '{text}' is not a whole number")
        return None
    if not lo <= value <= hi:
        r.sink.error(node.location, f"lvs_sync_daemon {word} {value} is outside [{lo}, {hi}]")
        return None
    return value


@writes("lvs_sync_daemon")
def _lvs_sync_daemon(block: Block, node: Node) -> None:
    """``lvs_sync_daemon IF [[inst] INSTANCE] [id N] [maxlen N] [port N] [ttl N] [group IP]``
    with keepalived 2.2.7's ranges; its old form ``IF INSTANCE [SYNC_ID]`` too."""
    r = block.r
    r.no_block(node)
    if "lvs_sync_daemon" in block.fields:
        r.sink.warning(node.location, "lvs_sync_daemon is already given; ignored")
        return
    words = node.values
    if not words:
        r.sink.error(node.location, "lvs_sync_daemon needs an interface")
        return
    ifname = words[0]
    if len(ifname) > SYNCD_IFNAME_MAX:
        r.sink.error(node.location, f"lvs_sync_daemon interface name '{ifname}' is longer "
                                    f"than {SYNCD_IFNAME_MAX} characters")
        return
    if not r.exists(ifname):
        r.sink.warning(node.location, f"lvs_sync_daemon: interface {ifname} does not exist "
                                      "(yet); the sync daemon is started once it does")
    values: dict[str, object] = {}
    ok = True
    i = 1
    while i < len(words):
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) else None
        if word in ("inst", *_SYNCD_OPTIONS, "group") and value is None:
            r.sink.error(node.location, f"lvs_sync_daemon {word} needs a value")
            ok = False
            i += 1
            continue
        if word == "inst" and value is not None:
            if "instance" in values:
                r.sink.error(node.location, "lvs_sync_daemon names its vrrp_instance twice")
                ok = False
            values["instance"] = value
        elif word in _SYNCD_OPTIONS and value is not None:
            key, lo, hi = _SYNCD_OPTIONS[word]
            number = _syncd_number(r, node, word, value, lo, hi)
            ok = ok and number is not None
            values[key] = number
        elif word == "group" and value is not None:
            group = _any_address(r, node, value)
            if group is not None and not group.is_multicast:
                r.sink.error(node.location, f"lvs_sync_daemon group {group} is not multicast")
                group = None
            ok = ok and group is not None
            values["group"] = group
        elif i == 1:  # the old form: IF INSTANCE [SYNC_ID]
            values["instance"] = word
            i += 1
            continue
        elif i == 2 and "sync_id" not in values:
            r.sink.warning(node.location, 'lvs_sync_daemon: write "id" before the sync id')
            number = _syncd_number(r, node, "id", word, 0, 255)
            ok = ok and number is not None
            values["sync_id"] = number
            i += 1
            continue
        else:
            r.sink.error(node.location, f"lvs_sync_daemon: unknown option '{word}'")
            ok = False
            i += 1
            continue
        i += 2
    if not ok:
        return
    if "instance" not in values:
        r.sink.warning(node.location, "lvs_sync_daemon names no vrrp_instance: no sync "
                                      "daemon is started (as keepalived 2.2.7)")
    block.fields["lvs_sync_daemon"] = LvsSyncDaemon(
        interface=ifname, location=node.location, **values)  # type: ignore[arg-type]


@writes("lvs_sync_daemon")
def _lvs_sync_daemon_interface(block: _Instance, node: Node) -> None:
    """An instance's ``lvs_sync_daemon_interface IF``: keepalived's deprecated form of
    ``lvs_sync_daemon IF INSTANCE`` (sync id 0, as keepalived 2.2.7 starts it)."""
    r = block.r
    name = block.label.removeprefix("vrrp_instance ")
    r.sink.warning(node.location, f"({name}) lvs_sync_daemon_interface is deprecated; "
                                  "use lvs_sync_daemon in global_defs")
    ifname = r.one(node)
    if ifname is None:
        return
    if len(ifname) > SYNCD_IFNAME_MAX:
        r.sink.error(node.location, f"lvs_sync_daemon_interface name '{ifname}' is longer "
                                    f"than {SYNCD_IFNAME_MAX} characters")
        return
    block.sync_daemon = LvsSyncDaemon(ifname, name, 0, location=node.location)


# ---- keyword tables ----------------------------------------------------------------------

_GLOBAL_DEFS = Keywords[Block](
    {
        "router_id": field("router_id", ValueReader.one),
        "vrrp_version": field("vrrp_version", _version),
        "vrrp_mcast_group4": field("vrrp_mcast_group4", _multicast_group),
        "vrrp_mcast_group6": field("vrrp_mcast_group6", _multicast_group6),
        "vrrp_gna_interval": field("vrrp_gna_interval", float_in(0, 1)),
        "vrrp_garp_master_delay": field("vrrp_garp_master_delay", float_in(0, 3600)),
        "vrrp_garp_master_repeat": field("vrrp_garp_master_repeat", int_in(1, 10000)),
        "vrrp_garp_master_refresh": field("vrrp_garp_master_refresh", float_in(0, 86400)),
        "vrrp_garp_master_refresh_repeat": field(
            "vrrp_garp_master_refresh_repeat", int_in(1, 10000)
        ),
        "vrrp_garp_interval": field("vrrp_garp_interval", float_in(0, 1)),
        "vrrp_garp_lower_prio_delay": field("vrrp_garp_lower_prio_delay", float_in(0, 3600)),
        "vrrp_garp_lower_prio_repeat": field("vrrp_garp_lower_prio_repeat", int_in(0, 10000)),
        "script_user": user_fields("script_user", "script_group"),
        "enable_script_security": field("enable_script_security", ValueReader.flag),
        "vrrp_strict": field("vrrp_strict", ValueReader.flag),
        "vrrp_skip_check_adv_addr": field("vrrp_skip_check_adv_addr", ValueReader.flag),
        "notification_email": _notification_email,
        "notification_email_from": field("notification_email_from", ValueReader.one),
        "smtp_server": field("smtp_server", _smtp_server),
        "smtp_helo_name": field("smtp_helo_name", ValueReader.one),
        "smtp_helo": field("smtp_helo_name", ValueReader.one),
        "smtp_connect_timeout": field("smtp_connect_timeout", _smtp_connect_timeout),
        "smtp_alert": field("smtp_alert", ValueReader.flag),
        "smtp_alert_vrrp": field("smtp_alert_vrrp", ValueReader.flag),
        "smtp_alert_checker": field("smtp_alert_checker", ValueReader.flag),
        "checker_log_all_failures": field("checker_log_all_failures", ValueReader.flag),
        **{key: field(key, _fifo) for key in _FIFO_KEYS},
        # joined with their FIFO into a NotifyFifo (``_fifos``)
        **{f"{key}_script": writes("script", "script_user", "script_group")(
            field(f"{key}_script", _fifo)) for key in _FIFO_KEYS},
        # The VRRP and checker children's scheduling and memory (pyalived.tuning).
        **{f"{half}_{name}": field(f"{half}_{key}", read)
           for half in ("vrrp", "checker")
           for name, key, read in (
               ("priority", "priority", _nice),
               ("rt_priority", "rt_priority", _rt_priority),
               ("rlimit_rttime", "rlimit_rttime", _rlimit_rttime),
               ("rlimit_rtime", "rlimit_rttime", _rlimit_rttime),
               ("no_swap", "no_swap", ValueReader.flag),
               ("cpu_affinity", "cpu_affinity", _cpu_affinity),
           )},
        "nftables": field("nftables", _nftables_table),
        "nftables_priority": field("nftables_priority", _nftables_priority),
        "nftables_counters": field("nftables_counters", ValueReader.flag),
        "nftables_ifindex": field("nftables_ifindex", ValueReader.flag),
        "vrrp_iptables": _iptables,
        "vrrp_ipsets": _iptables,
        "vrrp_startup_delay": field("vrrp_startup_delay", float_in(0.001, STARTUP_DELAY_MAX)),
        "dynamic_interfaces": _dynamic_interfaces,
        "startup_script": _parent_script("startup_script"),
        "shutdown_script": _parent_script("shutdown_script"),
        # the ParentScript's timeout (``global_defs`` below)
        "startup_script_timeout": writes("timeout")(
            field("startup_script_timeout", int_in(1, 1000))),
        "shutdown_script_timeout": writes("timeout")(
            field("shutdown_script_timeout", int_in(1, 1000))),
        "vrrp_min_garp": field("vrrp_min_garp", ValueReader.flag),
        # The IPVS table as a whole (the checker half: pyalived.checkers.service).
        "lvs_flush": field("lvs_flush", ValueReader.flag),
        "lvs_flush_on_stop": field("lvs_flush_on_stop", lvs_globals.flush_on_stop),
        "lvs_flush_onstop": field("lvs_flush_on_stop", lvs_globals.flush_on_stop),
        "lvs_timeouts": field("lvs_timeouts", lvs_globals.lvs_timeouts),
        "lvs_sync_daemon": _lvs_sync_daemon,
    },
    UNSUPPORTED_GLOBAL,
)

_VRRP_SCRIPT = Keywords[Block](
    {
        # A bad script line unsets the script given before: the vrrp_script is then refused.
        "script": field("script", ValueReader.command, unset_on_error=True),
        "interval": field("interval", float_in(0.001, 86400)),
        "timeout": field("timeout", float_in(0.001, 86400)),
        "weight": field("weight", _script_weight),
        "rise": field("rise", int_in(1, 1000000)),
        "fall": field("fall", int_in(1, 1000000)),
        "user": user_fields("user", "group"),
    },
    UNSUPPORTED_SCRIPT,
)

_TRACK_FILE = Keywords[Block](
    {
        "file": field("file", ValueReader.one),
        "weight": field("weight", _def_weight),
        "init_file": writes("init_value", "init_overwrite")(field("init_file", _init_file)),
    }
)

_PARAM_MATCH = {"EXACT": ParamMatch.EXACT, "PARTIAL": ParamMatch.PARTIAL,
                "INITIAL": ParamMatch.INITIAL}
_TRACK_DELAY = float_in(0.000001, 3600)  # keepalived's range for the three delays

_TRACK_PROCESS = Keywords[Block](
    {
        "process": field("process", _process),
        "param_match": field(
            "param_match", one_of(_PARAM_MATCH, "param_match must be exact, partial or initial")
        ),
        "weight": field("weight", _def_weight),
        "quorum": field("quorum", int_in(1, 65535)),
        "quorum_max": field("quorum_max", int_in(0, 65535)),
        "fork_delay": field("fork_delay", _TRACK_DELAY),
        "terminate_delay": field("terminate_delay", _TRACK_DELAY),
        # the default of both delays (``track_process`` below)
        "delay": writes("fork_delay", "terminate_delay")(field("delay", _TRACK_DELAY)),
        "full_command": field("full_command", ValueReader.flag),
    }
)

_AUTHENTICATION = Keywords[Block](
    {
        "auth_type": field("type", one_of(_AUTH_TYPES, "auth_type must be PASS or AH")),
        "auth_pass": field("password", _auth_pass),
    }
)

_INSTANCE = Keywords[_Instance](
    {
        "interface": _interface,
        "virtual_router_id": _virtual_router_id,
        "state": field("state", one_of(_STATES, "state must be MASTER or BACKUP")),
        "priority": field("priority", int_in(1, 255)),
        "advert_int": _advert_int,
        "nopreempt": field("nopreempt", ValueReader.flag),
        "preempt": field("nopreempt", _preempt),
        "preempt_delay": field("preempt_delay", float_in(0, 1000)),
        "authentication": field("authentication", _authentication),
        "virtual_ipaddress": _virtual_ipaddress,
        "virtual_ipaddress_excluded": _virtual_ipaddress_excluded,
        "unicast_src_ip": field("unicast_src_ip", _address_any),
        "mcast_src_ip": field("mcast_src_ip", _address_any),
        "unicast_peer": _unicast_peer,
        "use_vmac": _use_vmac,
        "vmac_xmit_base": field("vmac_xmit_base", ValueReader.flag),
        "garp_master_delay": field("garp_master_delay", float_in(0, 3600)),
        "garp_master_repeat": field("garp_master_repeat", int_in(1, 10000)),
        "garp_master_refresh": field("garp_master_refresh", float_in(0, 86400)),
        "garp_master_refresh_repeat": field("garp_master_refresh_repeat", int_in(1, 10000)),
        "garp_lower_prio_delay": field("garp_lower_prio_delay", float_in(0, 3600)),
        "garp_lower_prio_repeat": field("garp_lower_prio_repeat", int_in(0, 10000)),
        "gna_interval": field("gna_interval", float_in(0, 1)),
        "garp_interval": field("garp_interval", float_in(0, 1)),
        "track_interface": _track_interface,
        "track_script": _track_script,
        "track_file": _track_file_refs,
        "track_process": _track_process_refs,
        **dict.fromkeys(_NOTIFY_KEYS, _notify),
        "smtp_alert": field("smtp_alert", ValueReader.flag),
        "dont_track_primary": field("dont_track_primary", ValueReader.flag),
        "skip_check_adv_addr": field("skip_check_adv_addr", ValueReader.flag),
        "version": field("version", _version),
        "old_unicast_checksum": field("old_unicast_checksum", _old_unicast_checksum),
        "accept": field("accept", _accept),
        "no_accept": field("accept", _no_accept),
        "lvs_sync_daemon_interface": _lvs_sync_daemon_interface,
    },
    UNSUPPORTED_INSTANCE,
)

_SYNC_GROUP = Keywords[_SyncGroup](
    {
        "group": _group,
        **dict.fromkeys(_NOTIFY_KEYS, _notify),
        "track_script": _track_script,
        "track_interface": _track_interface,
        "track_file": _track_file_refs,
        "track_process": _track_process_refs,
        "smtp_alert": field("smtp_alert", ValueReader.flag),
    },
    UNSUPPORTED_SYNC_GROUP,
)


# ---- the parser ----------------------------------------------------------------------------


class VrrpParser:
    """The VRRP half of the configuration; see the module docstring."""

    def __init__(self, r: ValueReader) -> None:
        self.r = r
        self.defs = GlobalDefs()  # global_defs, all blocks merged
        self.seen_global = False
        self.scripts: list[VrrpScript] = []
        self.instance_nodes: list[Node] = []  # parsed by ``instances``
        self.known_at: dict[Location, frozenset[tuple[str, str]]] = {}  # _defined_so_far
        self.sync_groups: list[VrrpSyncGroup] = []
        # Routes, rules and static addresses (pyalived.config.routes_parse).
        self.rule_preferences = RulePreferences()
        self.route_reader = RouteReader(r, self.rule_preferences)
        self.static_ipaddress: list[VirtualIP] = []
        self.static_routes: list[VirtualRoute] = []
        self.static_rules: list[VirtualRule] = []
        self.group_alert_default: set[str] = set()  # groups without their own smtp_alert
        self._explicit: set[str] = set()  # global_defs keys given explicitly
        self._script_timeouts: dict[str, int] = {}
        self.track_files: list[TrackFile] = []
        self.track_processes: list[TrackProcess] = []
        self.instance_sync_daemons: list[LvsSyncDaemon] = []  # lvs_sync_daemon_interface

    def static_ipaddress_block(self, node: Node) -> None:
        """``static_ipaddress``: virtual_ipaddress lines; without ``dev``, keepalived's
        default interface, eth0."""
        for vip in _vips(self.r, node):
            if vip.dev is None:
                if not self.r.exists(STATIC_DEFAULT_INTERFACE):
                    self.r.sink.error(vip.location,
                                      f"interface {STATIC_DEFAULT_INTERFACE} does not exist",
                                      Category.MISSING_INTERFACE)
                vip = replace(vip, dev=STATIC_DEFAULT_INTERFACE)
            self.static_ipaddress.append(vip)

    def static_routes_block(self, node: Node) -> None:
        self.static_routes.extend(self.route_reader.routes(node))

    def static_rules_block(self, node: Node) -> None:
        self.rule_preferences.reserve(node.children or (), self.r.exists)
        self.static_rules.extend(self.route_reader.rules(node))

    def global_defs(self, node: Node) -> None:
        if self.seen_global:
            self.r.sink.warning(node.location, "second global_defs block merged into first")
        block = Block(self.r, "global_defs")
        _GLOBAL_DEFS.run(block, self.r.block(node))
        _fifos(block.fields, self.defs)
        fields = block.fields
        for key in ("startup_script_timeout", "shutdown_script_timeout"):
            timeout = fields.pop(key, None)
            if isinstance(timeout, int):
                self._script_timeouts[key.removesuffix("_timeout")] = timeout
        if "lvs_sync_daemon" in fields and self.defs.lvs_sync_daemon is not None:
            self.r.sink.warning(fields["lvs_sync_daemon"].location,  # type: ignore[attr-defined]
                                "lvs_sync_daemon is already given; ignored")
            del fields["lvs_sync_daemon"]
        self._explicit |= set(fields)
        self.defs = replace(
            self.defs,
            location=node.location,
            **fields,  # type: ignore[arg-type]
        )
        self._finish_defs()
        self.seen_global = True
        if self.defs.dynamic_interfaces:
            # keepalived says nothing of a missing interface then: the instance waits
            # in FAULT for it at run time (pyalived.vrrp.runtime).
            self.r.exists = _any_interface

    def _finish_defs(self) -> None:
        """``vrrp_min_garp`` defaults and the scripts' timeouts, wherever they were given."""
        defs = self.defs
        if defs.vrrp_min_garp:
            unset = {k: v for k, v in MIN_GARP_DEFAULTS.items() if k not in self._explicit}
            defs = replace(defs, **unset)  # type: ignore[arg-type]
        start, stop = defs.startup_script, defs.shutdown_script
        if start is not None:
            start = replace(start, timeout=float(
                self._script_timeouts.get("startup_script", STARTUP_SCRIPT_TIMEOUT)))
        if stop is not None:
            stop = replace(stop, timeout=float(
                self._script_timeouts.get("shutdown_script", STARTUP_SCRIPT_TIMEOUT)))
        self.defs = replace(defs, startup_script=start, shutdown_script=stop)

    def net_namespace(self, node: Node) -> None:
        """Top-level ``net_namespace NAME``: the daemon runs in /run/netns/NAME, and the
        interfaces the configuration names are looked for there."""
        name = self.r.one(node)
        if name is None:
            return
        if self.defs.net_namespace not in (None, name):
            self.r.sink.warning(
                node.location,
                f"net_namespace {name}: already {self.defs.net_namespace}; ignored",
            )
            return
        enter = getattr(self.r.exists, "use_namespace", None)
        if callable(enter) and not enter(name):
            self.r.sink.error(
                node.location,
                f"network namespace {name} does not exist (/run/netns/{name})",
            )
            return
        self.defs = replace(self.defs, net_namespace=name)

    def garp_group(self, node: Node) -> None:
        """Top-level ``garp_group { garp_interval gna_interval interface interfaces }``."""
        body = self.r.block(node)
        block = _GarpGroup(self.r, "garp_group")
        _GARP_GROUP.run(block, body)
        garp = block.fields.get("garp_interval", 0.0)
        gna = block.fields.get("gna_interval", 0.0)
        assert isinstance(garp, float) and isinstance(gna, float)
        if not block.interfaces:
            self.r.sink.warning(node.location, "garp_group names no interface; ignored")
            return
        if garp == 0 and gna == 0:
            self.r.sink.warning(
                node.location, "garp_group does not have any delay set; ignored"
            )
            return
        taken = {i for g in self.defs.garp_groups for i in g.interfaces}
        interfaces: list[str] = []
        for name in block.interfaces:
            if name in taken or name in interfaces:
                self.r.sink.warning(
                    node.location, f"garp_group already specified for {name}; ignored"
                )
            else:
                interfaces.append(name)
        if interfaces:
            group = GarpGroup(tuple(interfaces), garp, gna, node.location)
            self.defs = replace(self.defs, garp_groups=(*self.defs.garp_groups, group))

    def vrrp_script(self, node: Node) -> None:
        name = self.r.block_name(node)
        body = self.r.block(node)
        if name is None:
            return
        block = Block(self.r, f"vrrp_script {name}")
        _VRRP_SCRIPT.run(block, body)
        script = block.fields.pop("script", None)
        if not isinstance(script, str):
            self.r.sink.error(node.location, f"vrrp_script {name} has no script")
            return
        self.scripts.append(
            VrrpScript(
                name=name,
                script=script,
                location=node.location,
                **block.fields,  # type: ignore[arg-type]
            )
        )

    def track_file(self, node: Node) -> None:
        """``track_file NAME { file PATH; weight N [reverse]; init_file [VALUE] [overwrite] }``
        (also ``vrrp_track_file``)."""
        name = self.r.block_name(node)
        body = self.r.block(node)
        if name is None:
            return
        if node.name == "vrrp_track_file":  # keepalived 2.2.7: no -t warning either
            self.r.sink.notice(node.location, "vrrp_track_file is deprecated; write track_file")
        block = Block(self.r, f"track_file {name}")
        _TRACK_FILE.run(block, body)
        f = block.fields
        path = f.get("file")
        if not isinstance(path, str) or not path:
            self.r.sink.error(node.location, f"track_file {name} has no file")
            return
        weight, reverse = _weight_field(f)
        init = f.get("init_file")
        self.track_files.append(TrackFile(
            name=name, file=path, weight=weight, reverse=reverse,
            init_value=init[0] if isinstance(init, tuple) else None,
            init_overwrite=bool(init[1]) if isinstance(init, tuple) else False,
            location=node.location,
        ))

    def track_process(self, node: Node) -> None:
        """``vrrp_track_process NAME { process NAME [PARAM...]; param_match; weight;
        quorum; quorum_max; fork_delay; terminate_delay; delay; full_command }``."""
        name = self.r.block_name(node)
        body = self.r.block(node)
        if name is None:
            return
        where = f"vrrp_track_process {name}"
        block = Block(self.r, where)
        _TRACK_PROCESS.run(block, body)
        f = block.fields
        proc = f.get("process")
        if not isinstance(proc, tuple):
            self.r.sink.error(node.location, f"{where} has no process")
            return
        process, params = proc
        match = f.get("param_match")
        if not isinstance(match, ParamMatch):
            match = ParamMatch.EXACT if params else ParamMatch.NONE
        weight, reverse = _weight_field(f)
        quorum = f.get("quorum", 1)
        quorum_max = f.get("quorum_max")
        assert isinstance(quorum, int)
        if isinstance(quorum_max, int) and quorum_max < quorum:
            self.r.sink.error(
                node.location, f"{where}: quorum_max {quorum_max} is less than quorum {quorum}"
            )
            return
        delay = f.get("delay")
        fork_delay = f.get("fork_delay", delay if delay is not None else 0.0)
        terminate_delay = f.get("terminate_delay", delay if delay is not None else 0.0)
        assert isinstance(fork_delay, float) and isinstance(terminate_delay, float)
        self.track_processes.append(TrackProcess(
            name=name, process=process, params=params, param_match=match,
            weight=weight, reverse=reverse, quorum=quorum,
            quorum_max=quorum_max if isinstance(quorum_max, int) else None,
            fork_delay=fork_delay, terminate_delay=terminate_delay,
            full_command=bool(f.get("full_command", False)), location=node.location,
        ))

    def _defined_so_far(self, node: Node) -> None:
        """Note what a block's track_* references can see: keepalived 2.2.7 resolves
        them where the block ends, so a definition further down the file is not found
        there (``order_fixups``)."""
        self.known_at[node.location] = frozenset(
            [("track_script", s.name) for s in self.scripts]
            + [("track_file", f.name) for f in self.track_files]
            + [("track_process", t.name) for t in self.track_processes]
        )

    def order_fixups(self, config: Config) -> Config:
        """Drop, with a warning, each track_script / track_file / track_process reference
        to a definition that comes after its block in the file, as keepalived 2.2.7 does
        (it warns "not found" and ignores it).  A name defined nowhere is left for
        ``cross_check``, which refuses it."""
        defined = {("track_script", s.name) for s in config.vrrp_scripts}
        defined |= {("track_file", f.name) for f in config.track_files}
        defined |= {("track_process", t.name) for t in config.track_processes}

        def keep(owner: str, location: Location, kind: str,
                 refs: tuple[_Ref, ...]) -> tuple[_Ref, ...]:
            known = self.known_at.get(location, frozenset())
            out: list[_Ref] = []
            for ref in refs:
                key = (kind, ref.name)
                if key in defined and key not in known:
                    self.r.sink.warning(
                        ref.location,
                        f"({owner}) {kind} {ref.name} is defined further down the file,"
                        " too late for this block (as in keepalived); ignored",
                    )
                    continue
                out.append(ref)
            return tuple(out)

        def fix(block: _Owner) -> _Owner:
            return replace(
                block,
                track_script=keep(block.name, block.location, "track_script",
                                  block.track_script),
                track_file=keep(block.name, block.location, "track_file", block.track_file),
                track_process=keep(block.name, block.location, "track_process",
                                   block.track_process),
            )

        return replace(
            config,
            vrrp_instances=tuple(fix(i) for i in config.vrrp_instances),
            vrrp_sync_groups=tuple(fix(g) for g in config.vrrp_sync_groups),
        )

    def vrrp_instance(self, node: Node) -> None:
        self.instance_nodes.append(node)  # parsed after global_defs (garp defaults)
        self._defined_so_far(node)
        for rules in instance_blocks(node.children or (), "virtual_rules"):
            self.rule_preferences.reserve(rules.children or (), self.r.exists)  # file order

    def vrrp_sync_group(self, node: Node) -> None:
        name = self.r.block_name(node)
        body = self.r.block(node)
        if name is None:
            return
        block = _SyncGroup(self.r, f"vrrp_sync_group {name}")
        _SYNC_GROUP.run(block, body)
        self._defined_so_far(node)
        if not block.members:
            self.r.sink.warning(
                node.location, f"vrrp_sync_group {name} names no instance (no group block); ignored"
            )
            return
        if len(block.members) < 2:
            self.r.sink.warning(node.location, f"vrrp_sync_group {name} has only one instance")
        if "smtp_alert" not in block.fields:
            self.group_alert_default.add(name)  # global_defs may come later in the file
        self.sync_groups.append(
            VrrpSyncGroup(
                name=name,
                group=tuple(block.members),
                location=node.location,
                notify=_notify_of(block),
                track_script=tuple(block.track_script),
                track_interface=tuple(block.track_interface),
                track_file=tuple(block.track_file),
                track_process=tuple(block.track_process),
                **block.fields,  # type: ignore[arg-type]
            )
        )

    def instances(self) -> list[VrrpInstance]:
        """The ``vrrp_instance`` blocks, once ``global_defs`` is complete."""
        built = [i for n in self.instance_nodes if (i := self._instance(n, self.defs))]
        vmacs: set[str] = set()
        for n, inst in enumerate(built):
            name = inst.effective_vmac_name
            if name is None:
                continue
            if inst.family == 6 and inst.vmac_name is None and name in vmacs:
                name = f"vrrp6.{inst.virtual_router_id}"
                built[n] = dataclasses.replace(inst, vmac_name=name)
            vmacs.add(name)
        return built

    def _instance(self, node: Node, g: GlobalDefs) -> VrrpInstance | None:
        r = self.r
        name = r.block_name(node)
        body = r.block(node)
        if name is None:
            return None
        where = f"vrrp_instance {name}"
        block = _Instance(r, where)
        fields = block.fields
        fields["garp_master_delay"] = g.vrrp_garp_master_delay
        fields["garp_master_repeat"] = g.vrrp_garp_master_repeat
        fields["garp_master_refresh"] = g.vrrp_garp_master_refresh
        fields["garp_master_refresh_repeat"] = g.vrrp_garp_master_refresh_repeat
        fields["garp_lower_prio_delay"] = g.vrrp_garp_lower_prio_delay
        fields["garp_lower_prio_repeat"] = g.vrrp_garp_lower_prio_repeat
        fields["gna_interval"] = g.vrrp_gna_interval
        fields["smtp_alert"] = vrrp_alert_default(g)
        fields["garp_interval"] = g.vrrp_garp_interval
        route_blocks = [n for n in body if n.name in ("virtual_routes", "virtual_rules")]
        _INSTANCE.run(block, (n for n in body if n.name not in ("virtual_routes",
                                                                  "virtual_rules")))
        if block.sync_daemon is not None:
            self.instance_sync_daemons.append(block.sync_daemon)
        interface, vrid, vips = block.interface, block.vrid, block.vips
        vips_excl = block.vips_excluded
        if interface is None:
            r.sink.error(node.location, f"{where} has no interface")
        if vrid is None:
            if block.ok:
                r.sink.error(node.location, f"{where} has no virtual_router_id")
            return None
        if interface is None:
            return None
        if not vips:
            r.sink.warning(node.location, f"{where} has no virtual_ipaddress")
        if len(vips) > MAX_ADVERT_ADDRESSES:
            # RFC 3768 §5.3.5: the count is one octet.  As keepalived does, the excess
            # is still configured on MASTER, but as excluded addresses, not advertised.
            excess = vips[MAX_ADVERT_ADDRESSES:]
            r.sink.warning(
                excess[0].location,
                f"{where} has {len(vips)} virtual addresses but an advert carries at most "
                f"{MAX_ADVERT_ADDRESSES}; the {len(excess)} from here on are configured "
                "as virtual_ipaddress_excluded",
            )
            vips_excl = excess + vips_excl
            del vips[MAX_ADVERT_ADDRESSES:]
        family = self._family(block, where)
        vips = block.vips = [v for v in vips if self._same_family(v, family, where)]
        for key in ("unicast_src_ip", "mcast_src_ip"):
            src = fields.get(key)
            if isinstance(src, IPv4Address | IPv6Address) and not self._peer_family(
                src, family, node.location, name, "src"
            ):
                del fields[key]
        if family == 6:
            # RFC 3768 defines VRRPv2 for IPv4 only; the global vrrp_version is not
            # consulted (keepalived warns only under vrrp_strict, and otherwise runs
            # its own VRRPv2 over IPv6).
            if fields.get("version", 3) != 3:
                r.sink.warning(
                    node.location,
                    f"({name}) cannot use IPv6 with VRRP version 2; setting version 3",
                )
            fields["version"] = 3
        version = fields.setdefault("version", g.vrrp_version)
        assert isinstance(version, int)
        if block.advert_int is not None:
            interval = _advert_interval(r, version, *block.advert_int)
            if interval is not None:
                fields["advert_int"] = interval
        if version == 3 and fields.get("authentication") is not None:
            r.sink.warning(
                node.location,
                f"{where}: VRRP version 3 does not support authentication; ignored",
            )
            del fields["authentication"]
        routes: list[VirtualRoute] = []
        rules: list[VirtualRule] = []
        for n in route_blocks:  # read once the instance's family is known
            if n.name == "virtual_routes":
                routes += self.route_reader.routes(n, family, virtual=True)
            else:
                rules += self.route_reader.rules(n, family)
        if routes:
            fields["virtual_routes"] = tuple(routes)
        if rules:
            fields["virtual_rules"] = tuple(rules)
        if fields.get("vmac_xmit_base") and not fields.get("use_vmac"):
            r.sink.warning(node.location, f"{where}: vmac_xmit_base means nothing without use_vmac")
        elif fields.get("use_vmac") and block.peers and not fields.get("vmac_xmit_base"):
            # keepalived 2.2.7 does the same: unicast adverts leave by the base interface
            r.sink.warning(
                node.location, f"{where}: unicast with use_vmac needs vmac_xmit_base; set"
            )
            fields["vmac_xmit_base"] = True
        auth = fields.get("authentication")
        if (fields.get("state") is InitialState.MASTER and fields.get("priority") != 255
                and isinstance(auth, Authentication) and auth.type is AuthType.AH):
            # keepalived 2.2.7 too: the AH sequence numbers are learnt as BACKUP first
            r.sink.warning(
                node.location,
                f"{where}: state MASTER does not go with AH authentication; starting as BACKUP",
            )
            fields["state"] = InitialState.BACKUP
        if fields.get("nopreempt") and fields.get("preempt_delay"):
            delay = next(n for n in reversed(body) if n.name == "preempt_delay")
            r.sink.warning(
                delay.location, f"{where}: preempt_delay means nothing with nopreempt; cleared"
            )
            fields["preempt_delay"] = 0.0
        for t in [t for t in block.track_interface if t.name == interface]:
            # keepalived 2.2.7 drops it too: the instance watches its own interface anyway
            r.sink.warning(
                t.location,
                f"{where}: track_interface {t.name} is the instance's own interface; ignored",
            )
            block.track_interface.remove(t)
        if not block.peers:
            unicast = [n for n in body if n.name in UNICAST_KEYWORDS]
            if unicast:
                # keepalived 2.2.7 warns the same way and runs the instance multicast
                r.sink.warning(
                    unicast[0].location,
                    f"{where}: {unicast[0].name} without any unicast_peer; the instance"
                    " advertises by multicast",
                )
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
            unicast_peer=tuple(
                p for p, loc in zip(block.peers, block.peer_locations, strict=True)
                if self._peer_family(p, family, loc, name, "unicast peer")
            ),
            track_interface=tuple(block.track_interface),
            track_script=tuple(block.track_script),
            track_file=tuple(block.track_file),
            track_process=tuple(block.track_process),
            notify=_notify_of(block),
            **fields,  # type: ignore[arg-type]
        )

    def _family(self, block: _Instance, where: str) -> int:
        """The instance's address family: its first VIP's, else its unicast addresses'."""
        if block.vips:
            return block.vips[0].ip.version
        for key in ("unicast_src_ip", "mcast_src_ip"):
            addr = block.fields.get(key)
            if isinstance(addr, IPv4Address | IPv6Address):
                return addr.version
        return block.peers[0].version if block.peers else 4

    def _same_family(self, vip: VirtualIP, family: int, where: str) -> bool:
        if vip.ip.version == family:
            return True
        self.r.sink.warning(
            vip.location,
            f"{where}: address family must match VRRP instance [{vip.address}] - ignoring",
        )
        return False

    def _peer_family(self, addr: IPv4Address | IPv6Address, family: int, loc: Location,
                     name: str, what: str) -> bool:
        if addr.version == family:
            return True
        self.r.sink.error(
            loc,
            f"VRRP instance[{name}] and {what} address[{addr}] MUST be of the same family; "
            "ignored",
        )
        return False

    # ---- whole-config checks --------------------------------------------------------

    def cross_check(self, config: Config) -> None:
        sink = self.r.sink
        by_name: dict[str, VrrpInstance] = {}
        by_vrid: dict[tuple[str, int, int], VrrpInstance] = {}  # IPv4 and IPv6 apart
        for inst in config.vrrp_instances:
            if inst.name in by_name:
                sink.error(
                    inst.location,
                    f"vrrp_instance {inst.name} is already defined"
                    f" at {by_name[inst.name].location}",
                )
            else:
                by_name[inst.name] = inst
            key = (inst.interface, inst.virtual_router_id, inst.family)
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
        refs: list[TrackScriptRef] = [r for i in config.vrrp_instances for r in i.track_script]
        refs += [r for g in config.vrrp_sync_groups for r in g.track_script]
        for ref in refs:
            if ref.name not in scripts:
                sink.error(ref.location, f"track_script {ref.name}: no vrrp_script of that name")
        self._check_track_defs(config)
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
        for g in config.vrrp_sync_groups:
            for member in g.group:
                found = by_name.get(member)
                if found is None:
                    continue
                own = {found.interface} | {t.name for t in found.track_interface}
                for t in g.track_interface:
                    if t.name in own:  # keepalived 2.2.7 warns the same way
                        sink.warning(
                            t.location,
                            f"({member}) track_interface {t.name} is tracked by the instance"
                            f" (or is its interface) and by sync group {g.name}: remove one",
                        )

    def _accept_mode(self, inst: VrrpInstance, strict: bool) -> bool:
        """RFC 5798 Accept_Mode as keepalived 2.2.7 settles it: the address owner always
        accepts; otherwise ``accept`` / ``no_accept``, by default accept unless
        ``vrrp_strict``; under ``vrrp_strict`` a VRRPv2 instance cannot accept (RFC 3768
        has no Accept_Mode), which is warned about."""
        if inst.priority == 255:
            return True
        if inst.accept is None:
            return not strict
        if inst.accept and strict and inst.version == 2:
            self.r.sink.warning(
                inst.location,
                f"vrrp_instance {inst.name}: accept mode for VRRP version 2 does not comply"
                " with RFC 3768 under vrrp_strict; using no_accept",
            )
            return False
        return inst.accept
    def _check_track_defs(self, config: Config) -> None:
        """Unique track_file / vrrp_track_process names; references to defined ones."""
        sink = self.r.sink
        for kind, defs, attr in (
            ("track_file", config.track_files, "track_file"),
            ("vrrp_track_process", config.track_processes, "track_process"),
        ):
            seen: dict[str, Location] = {}
            for d in defs:
                if d.name in seen:
                    sink.error(d.location, f"{kind} {d.name} is already defined at {seen[d.name]}")
                seen.setdefault(d.name, d.location)
            owners: list[VrrpInstance | VrrpSyncGroup] = [
                *config.vrrp_instances, *config.vrrp_sync_groups
            ]
            for owner in owners:
                for ref in getattr(owner, attr):
                    if ref.name not in seen:
                        sink.error(ref.location, f"{attr} {ref.name}: no {kind} of that name")

    def track_fixups(self, config: Config) -> Config:
        """Resolve each track_file / track_process reference's weight (a reference
        without one takes its definition's), and apply keepalived 2.2.7's rule: an
        instance that is the address owner or a member of a sync group ignores its own
        references with a non-zero weight (a warning names the line); weight 0 ones
        still put it in FAULT.  A sync group's own references apply, with their
        weights, to each member (``sync_group_tracking_weight`` is not needed)."""
        files = {t.name: t for t in config.track_files}
        procs = {t.name: t for t in config.track_processes}
        in_group = {m for g in config.vrrp_sync_groups for m in g.group}

        def resolve(refs: tuple[TrackRef, ...], defs: dict[str, TrackFile] | dict[
                str, TrackProcess], what: str, ignore: str | None, inst: str = ""
                    ) -> tuple[TrackRef, ...]:
            out: list[TrackRef] = []
            for ref in refs:
                d = defs.get(ref.name)
                if d is None:
                    out.append(ref)
                    continue
                weight, reverse = (
                    (d.weight, d.reverse) if ref.weight is None else (ref.weight, ref.reverse)
                )
                if ignore is not None and weight != 0:
                    self.r.sink.warning(
                        ref.location,
                        f"({inst}) ignoring {what} {ref.name} with weight {weight} {ignore}",
                    )
                    continue
                out.append(replace(ref, weight=weight, reverse=reverse))
            return tuple(out)

        scripts = {s.name: s for s in config.vrrp_scripts}

        def own_scripts(inst: VrrpInstance, ignore: str | None) -> tuple[TrackScriptRef, ...]:
            out: list[TrackScriptRef] = []
            for ref in inst.track_script:
                d = scripts.get(ref.name)
                weight = ref.weight if ref.weight is not None or d is None else d.weight
                if ignore is not None and weight:
                    self.r.sink.warning(
                        ref.location,
                        f"({inst.name}) ignoring tracked script {ref.name} with weight"
                        f" {weight} {ignore}",
                    )
                    continue
                out.append(ref)
            return tuple(out)

        def own_interfaces(inst: VrrpInstance, grouped: bool) -> tuple[TrackInterface, ...]:
            # keepalived 2.2.7: in a sync group the weight goes (down means FAULT); the
            # address owner drops the interface altogether
            out: list[TrackInterface] = []
            for t in inst.track_interface:
                if t.weight and grouped:
                    self.r.sink.warning(
                        t.location,
                        f"({inst.name}) ignoring the weight of tracked interface {t.name}"
                        " since the instance is in a sync group; down means FAULT",
                    )
                    t = replace(t, weight=0)
                elif t.weight and inst.priority == 255:
                    self.r.sink.warning(
                        t.location,
                        f"({inst.name}) ignoring tracked interface {t.name} with weight"
                        f" {t.weight} since the instance is the address owner",
                    )
                    continue
                out.append(t)
            return tuple(out)

        instances = []
        for inst in config.vrrp_instances:
            ignore = ("since the instance is in a sync group" if inst.name in in_group else
                      "since the instance is the address owner" if inst.priority == 255
                      else None)
            instances.append(replace(
                inst,
                track_script=own_scripts(inst, ignore),
                track_interface=own_interfaces(inst, inst.name in in_group),
                track_file=resolve(inst.track_file, files, "tracked file", ignore, inst.name),
                track_process=resolve(inst.track_process, procs, "tracked process", ignore,
                                      inst.name),
            ))
        groups = [
            replace(
                g,
                track_file=resolve(g.track_file, files, "tracked file", None),
                track_process=resolve(g.track_process, procs, "tracked process", None),
            )
            for g in config.vrrp_sync_groups
        ]
        return replace(config, vrrp_instances=tuple(instances), vrrp_sync_groups=tuple(groups))

    def sync_daemon_fixups(self, config: Config) -> Config:
        """``lvs_sync_daemon``: the global one, else the first instance's deprecated
        ``lvs_sync_daemon_interface``; its instance must exist."""
        sink = self.r.sink
        syncd = config.global_defs.lvs_sync_daemon
        for extra in self.instance_sync_daemons:
            if syncd is None:
                syncd = extra
            else:
                sink.warning(extra.location, f"({extra.instance}) lvs_sync_daemon is already "
                                             f"given (interface {syncd.interface}); ignored")
        if syncd is None:
            return config
        if syncd.instance is not None:
            names = {inst.name for inst in config.vrrp_instances}
            if syncd.instance not in names:
                sink.error(syncd.location,
                           f"lvs_sync_daemon: no vrrp_instance {syncd.instance}")
        return replace(config, global_defs=replace(config.global_defs, lvs_sync_daemon=syncd))

    def strict_fixups(self, config: Config) -> Config:
        """keepalived's vrrp_strict: drop authentication, MASTER only for the owner; and
        each instance's ``skip_check_adv_addr`` defaults from the global
        ``vrrp_skip_check_adv_addr``, its ``strict_mode`` is ``vrrp_strict``."""
        g = config.global_defs
        default_alert = vrrp_alert_default(g)
        config = replace(config, vrrp_sync_groups=tuple(
            replace(group, smtp_alert=default_alert)
            if group.name in self.group_alert_default else group
            for group in config.vrrp_sync_groups
        ))
        config = replace(config, vrrp_instances=tuple(
            replace(
                inst,
                skip_check_adv_addr=(g.vrrp_skip_check_adv_addr if inst.skip_check_adv_addr
                                     is None else inst.skip_check_adv_addr),
                strict_mode=g.vrrp_strict,
                accept=self._accept_mode(inst, g.vrrp_strict),
            )
            for inst in config.vrrp_instances
        ))
        if not config.global_defs.vrrp_strict:
            return config
        fixed: list[VrrpInstance] = []
        for inst in config.vrrp_instances:
            if inst.authentication is not None:
                self.r.sink.warning(
                    inst.location,
                    f"vrrp_instance {inst.name}: vrrp_strict forbids authentication; ignored",
                )
                inst = replace(inst, authentication=None)
            if inst.state is InitialState.MASTER and inst.priority != 255:
                self.r.sink.warning(
                    inst.location,
                    f"vrrp_instance {inst.name}: vrrp_strict allows state MASTER only with"
                    " priority 255 (address owner); starting as BACKUP",
                )
                inst = replace(inst, state=InitialState.BACKUP)
            # keepalived 2.2.7 resets these under vrrp_strict, each with a warning
            strict_resets: tuple[tuple[str, object, object], ...] = (
                ("preempt_delay", inst.preempt_delay, 0.0),
                # only when the instance sets them (the global values are kept, silently)
                ("garp_lower_prio_repeat", inst.garp_lower_prio_repeat
                 if inst.garp_lower_prio_repeat != g.vrrp_garp_lower_prio_repeat else None, 0),
                ("garp_lower_prio_delay", inst.garp_lower_prio_delay
                 if inst.garp_lower_prio_delay != g.vrrp_garp_lower_prio_delay else None, 0.0),
                ("vmac_xmit_base", inst.vmac_xmit_base, False),
            )
            for key, value, cleared in strict_resets:
                if value:
                    self.r.sink.warning(
                        inst.location,
                        f"vrrp_instance {inst.name}: vrrp_strict does not allow {key}; cleared",
                    )
                    inst = replace(inst, **{key: cleared})  # type: ignore[arg-type]
            fixed.append(inst)
        return replace(config, vrrp_instances=tuple(fixed))
