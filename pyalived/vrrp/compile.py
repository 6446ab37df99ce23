"""From a ``vrrp_instance`` block to what its driver runs with: pure functions.

Theory of operation: the configuration model (``pyalived.config.model``)
says what the administrator wrote; the driver (``pyalived.vrrp.instance``)
needs it as the parameters of its parts.  Each function here derives one of
them from a ``VrrpInstance`` (and, where a sync group or a ``vrrp_script``
matters, the whole ``Config``), and nothing else: no clock, no socket, no
state.  The driver calls them at start and again on a reload, so a setting
means the same thing in both; the reload planner (``pyalived.reload``)
compares the same derived values, so what it calls a change is a change of
what the driver runs with.

* ``machine_config``: the state machine's settings (RFC 3768 §6.1), the
  advert's source address breaking ties (§6.4.3).
* ``advert_for``, ``advert_proto``, ``advert_source``, ``advert_destinations``:
  what an advert carries and where it goes -- the authentication fields of
  §5.3.6 and §5.3.10, IP protocol 51 with AH, ``unicast_src_ip`` /
  ``mcast_src_ip`` or the interface's primary address, the ``unicast_peer``
  list or the multicast group (§5.2.2).
* ``expectation``: what a received advert must match (§7.1).
* VRRPv3 (``version 3``, RFC 5798): ``advert_for_v3`` (Max Adver Int in
  centiseconds, §5.2.7; no authentication), ``expectation_v3`` (§7.1: the
  address list only) and ``v3_checksum``, the checksum mode of
  ``old_unicast_checksum`` (multicast instances always use the RFC 5798
  §5.2.8 form, with which the old one coincides).
  An IPv6 instance (``VrrpInstance.family``, RFC 5798 §5.1.2) sends from
  its interface's link-local address to ``vrrp_mcast_group6`` (ff02::12).
* ``instance_vips``: every address the instance puts on the host as MASTER,
  the advertised ones first, then ``virtual_ipaddress_excluded``.
* ``garp_count``: the gratuitous ARP frames per VIP of a burst.
* ``tracking_spec`` and ``build_tracking``: the scripts and interfaces an
  instance tracks -- its own, then its sync group's, and its own interface
  (weight 0) unless ``dont_track_primary``; a reference to an undefined
  ``vrrp_script`` is kept in the spec and left out of the tracking.  Track
  files and tracked processes (``track_file``, ``track_process``) come the
  same way, their weights already resolved by the parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from pyalived.config.model import (
    AuthType,
    Config,
    InitialState,
    OldUnicastChecksum,
    TrackFile,
    TrackInterface,
    TrackProcess,
    TrackRef,
    TrackScriptRef,
    VirtualIP,
    VrrpInstance,
    VrrpScript,
    VrrpSyncGroup,
)
from pyalived.vrrp import packet
from pyalived.vrrp.fsm import GarpKind, MachineConfig, State, advert_centis
from pyalived.vrrp.tracking import InstanceTracking, Tracked


def machine_config(conf: VrrpInstance, src_ip: packet.IPAddress) -> MachineConfig:
    """The state machine's settings for ``conf``, tie-breaking on ``src_ip``."""
    return MachineConfig(
        name=conf.name,
        vrid=conf.virtual_router_id,
        priority=conf.priority,
        advert_int=conf.advert_int,
        primary_ip=src_ip,
        initial_state=(State.MASTER if conf.state is InitialState.MASTER else State.BACKUP),
        preempt=not conf.nopreempt,
        preempt_delay=conf.preempt_delay,
        garp_master_delay=conf.garp_master_delay,
        garp_master_refresh=conf.garp_master_refresh,
        garp_lower_prio_delay=conf.garp_lower_prio_delay,
        version=conf.version,
    )


def advert_interval(conf: VrrpInstance) -> int:
    """The advert's interval field: whole seconds, at least 1 (VRRPv2, RFC 3768 §5.3.7)."""
    return max(1, round(conf.advert_int))


def auth_fields(conf: VrrpInstance) -> tuple[int, bytes]:
    """The advert's auth_type and auth_data (RFC 3768 §5.3.6, §5.3.10)."""
    auth = conf.authentication
    if auth is None:
        return 0, b"\0" * 8
    if auth.type is AuthType.PASS:
        return 1, auth.password[:8].ljust(8, b"\0")
    return 2, b"\0" * 8


def advert_for(conf: VrrpInstance, priority: int) -> packet.Advert:
    """The advert ``conf`` sends with ``priority`` (0 on a graceful stop)."""
    auth_type, auth_data = auth_fields(conf)
    return packet.Advert(
        vrid=conf.virtual_router_id,
        priority=priority,
        advert_int=advert_interval(conf),
        addresses=tuple(v.ip for v in conf.virtual_ipaddress if isinstance(v.ip, IPv4Address)),
        auth_type=auth_type,
        auth_data=auth_data,
    )


def max_advert_int(conf: VrrpInstance) -> int:
    """A VRRPv3 advert's Max Adver Int: centiseconds, 1..4095 (RFC 5798 §5.2.7)."""
    return min(max(advert_centis(conf.advert_int), 1), packet.MAX_ADVERT_INT_MAX)


def advert_for_v3(conf: VrrpInstance, priority: int) -> packet.AdvertV3:
    """The VRRPv3 advert ``conf`` sends with ``priority`` (0 on a graceful stop)."""
    return packet.AdvertV3(
        vrid=conf.virtual_router_id,
        priority=priority,
        max_advert_int=max_advert_int(conf),
        addresses=tuple(v.ip for v in conf.virtual_ipaddress),
    )


def expectation_v3(conf: VrrpInstance) -> packet.ExpectationV3:
    """What a received VRRPv3 advert for ``conf`` must match (RFC 5798 §7.1)."""
    return packet.ExpectationV3(
        vrid=conf.virtual_router_id,
        addresses=frozenset(v.ip for v in conf.virtual_ipaddress),
    )


def v3_checksum(conf: VrrpInstance) -> packet.V3Checksum:
    """The VRRPv3 checksum mode ``conf`` starts with (see ``packet.V3Checksum``)."""
    if not conf.unicast_peer:
        return packet.V3Checksum.RFC
    return {
        OldUnicastChecksum.AUTO: packet.V3Checksum.RFC_OR_OLD,
        OldUnicastChecksum.ALWAYS: packet.V3Checksum.OLD,
        OldUnicastChecksum.NEVER: packet.V3Checksum.RFC,
    }[conf.old_unicast_checksum]


def advert_proto(conf: VrrpInstance) -> int:
    """The adverts' IP protocol: AH (51) with ``auth_type AH`` (VRRPv2), else VRRP (112)."""
    auth = conf.authentication
    if conf.version == 2 and auth is not None and auth.type is AuthType.AH:
        return packet.AH_PROTO
    return packet.VRRP_PROTO


def advert_source(conf: VrrpInstance, primary_ip: packet.IPAddress) -> packet.IPAddress:
    """The adverts' source: ``unicast_src_ip``, ``mcast_src_ip`` or the interface's address
    (its primary IPv4 address, or for an IPv6 instance its link-local one, RFC 5798
    §5.1.2.1)."""
    return conf.unicast_src_ip or conf.mcast_src_ip or primary_ip


def advert_destinations(
    conf: VrrpInstance,
    multicast_group: IPv4Address,
    multicast_group6: IPv6Address = packet.VRRP_MCAST_GROUP6,
) -> tuple[packet.IPAddress, ...]:
    """Where adverts go: each ``unicast_peer``, or the multicast group of the family."""
    if conf.unicast_peer:
        return conf.unicast_peer
    return (multicast_group6,) if conf.family == 6 else (multicast_group,)


def expectation(conf: VrrpInstance) -> packet.Expectation:
    """What a received advert for ``conf`` must match (RFC 3768 §7.1)."""
    return packet.Expectation(
        vrid=conf.virtual_router_id,
        advert_int=advert_interval(conf),
        addresses=frozenset(v.ip for v in conf.virtual_ipaddress if isinstance(v.ip, IPv4Address)),
        auth_type=conf.authentication.type if conf.authentication else None,
        auth_key=conf.authentication.password if conf.authentication else b"",
    )


def instance_vips(conf: VrrpInstance) -> tuple[VirtualIP, ...]:
    """Every address of the instance: the advertised ones, then the excluded ones."""
    return conf.virtual_ipaddress + conf.virtual_ipaddress_excluded


def garp_count(conf: VrrpInstance, kind: GarpKind) -> int:
    """Gratuitous ARP frames per VIP in a burst of ``kind``."""
    if kind is GarpKind.MASTER:
        return conf.garp_master_repeat
    if kind is GarpKind.REFRESH:
        return conf.garp_master_refresh_repeat
    if conf.garp_lower_prio_repeat is not None:
        return conf.garp_lower_prio_repeat
    return conf.garp_master_repeat


def sync_group_of(config: Config, name: str) -> VrrpSyncGroup | None:
    """The ``vrrp_sync_group`` that instance ``name`` belongs to, if any."""
    for group in config.vrrp_sync_groups:
        if name in group.group:
            return group
    return None


@dataclass(frozen=True)
class TrackingSpec:
    """What one instance tracks, as configured (its own items, then its sync group's)."""

    # Each track_script reference with its vrrp_script (None: no such script).
    scripts: tuple[tuple[TrackScriptRef, VrrpScript | None], ...]
    interfaces: tuple[TrackInterface, ...]
    # The instance's own interface, tracked with weight 0; None with dont_track_primary.
    primary: str | None
    # Each track_file / track_process reference with its definition (None: undefined).
    files: tuple[tuple[TrackRef, TrackFile | None], ...] = ()
    processes: tuple[tuple[TrackRef, TrackProcess | None], ...] = ()


def tracking_spec(config: Config, conf: VrrpInstance) -> TrackingSpec:
    """What ``conf`` tracks in ``config``, scripts resolved to their definitions."""
    group = sync_group_of(config, conf.name)
    refs = conf.track_script + (group.track_script if group else ())
    scripts: list[tuple[TrackScriptRef, VrrpScript | None]] = []
    for ref in refs:
        try:
            script: VrrpScript | None = config.script(ref.name)
        except KeyError:
            script = None
        scripts.append((ref, script))
    files = {t.name: t for t in config.track_files}
    procs = {t.name: t for t in config.track_processes}
    return TrackingSpec(
        scripts=tuple(scripts),
        interfaces=conf.track_interface + (group.track_interface if group else ()),
        primary=None if conf.dont_track_primary else conf.interface,
        files=tuple((ref, files.get(ref.name))
                    for ref in conf.track_file + (group.track_file if group else ())),
        processes=tuple((ref, procs.get(ref.name))
                        for ref in conf.track_process + (group.track_process if group else ())),
    )


def _tracked(ref: TrackRef, definition: TrackFile | TrackProcess) -> Tracked:
    if ref.weight is None:
        return Tracked(ref.name, definition.weight, definition.reverse)
    return Tracked(ref.name, ref.weight, ref.reverse)


def build_tracking(config: Config, conf: VrrpInstance) -> InstanceTracking:
    """The tracked scripts and interfaces of one instance (with its sync group's)."""
    spec = tracking_spec(config, conf)
    scripts = [
        Tracked(ref.name, ref.weight if ref.weight is not None else script.weight)
        for ref, script in spec.scripts
        if script is not None
    ]
    interfaces = [Tracked(t.name, t.weight) for t in spec.interfaces]
    if spec.primary is not None:
        interfaces.insert(0, Tracked(spec.primary, 0))
    files = [_tracked(ref, d) for ref, d in spec.files if d is not None]
    processes = [_tracked(ref, d) for ref, d in spec.processes if d is not None]
    return InstanceTracking(conf.priority, scripts, interfaces, files, processes)
