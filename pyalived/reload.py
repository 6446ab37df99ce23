"""Configuration reload planning: what a SIGHUP changes, as a pure difference.

Theory of operation: ``plan_reload(old, new)`` compares two valid ``Config``
objects and returns a ``ReloadPlan``; it touches nothing.  VRRP instances are
matched the way keepalived matches them on reload: by virtual router ID,
address family and interface, never by name (a renamed instance is the same
instance).  Each match is then *kept* (nothing but source locations
differs: the running instance is not told anything), *updated in place*
(the running instance keeps its state, timers and VIPs; only the differing
settings are applied, and on a MASTER only the added VIPs are configured and
announced by gratuitous ARP, the removed ones deleted), or *restarted* (a
setting the running instance cannot take over without a new identity on the
wire or on the host: VMAC, authentication type (it changes the IP protocol,
RFC 3768 §5.3.6 / AH), advert source address, becoming or ceasing to be the
address owner (priority 255, RFC 3768 §5.3.4), sync-group membership, the
VRRP version (RFC 5798) or ``old_unicast_checksum``);
a restart is a graceful stop (priority-0 advert when MASTER, RFC 3768
§6.4.3) followed by a fresh start.  Unmatched new instances start, unmatched
old ones stop gracefully.  Tracking (``vrrp_script`` definitions,
``track_script``, ``track_interface``, a sync group's tracking) is compared as
what each instance finally tracks, so editing a script's interval updates
exactly the instances that use it; what an instance tracks, and which sync
group it is in, come from the same functions the driver is built with
(``pyalived.vrrp.compile``).

The VIPs of a matched instance are compared without their source locations
(``vip_difference``).  ``reload_vip_change`` says what the running instance
does with the difference: as MASTER it removes the dropped VIPs, adds the
new ones and announces only those by gratuitous ARP; in any other state it
holds no VIPs and does nothing (its next MASTER transition adds them all).
``virtual_routes`` and ``virtual_rules`` are updated in place the same way
(``difference``): a MASTER deletes the dropped ones and adds the new ones,
leaving its VIPs and the unchanged routes alone.

keepalived 2.2.7, reloaded with ``kill -HUP`` in a namespace lab, keeps a
MASTER's state across VIP-list, priority and advert_int changes, but also
sends an immediate advert and gratuitous ARPs for *every* VIP on each
reload; pyalived deliberately sends nothing for unchanged settings and
announces only the added VIPs, so a reload never disturbs the backups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyalived.config.model import NOWHERE, Config, VirtualIP, VrrpInstance, VrrpSyncGroup
from pyalived.vrrp.compile import instance_vips, sync_group_of, tracking_spec
from pyalived.vrrp.fsm import State

T = TypeVar("T")
InstanceKey = tuple[int, int, str]  # (VRID, address family: 4 or 6, interface)

# Settings a running instance cannot take over in place (see the module docstring).
RESTART_FIELDS = frozenset(
    {
        "use_vmac",
        "vmac_name",
        "vmac_xmit_base",
        "authentication_type",
        "unicast_src_ip",
        "mcast_src_ip",
        "address_owner",
        "sync_group",
        "sync_group_settings",
        # VRRPv3: another protocol (RFC 5798) and another checksum state.
        "version",
        "old_unicast_checksum",
    }
)


def instance_key(conf: VrrpInstance) -> InstanceKey:
    """keepalived's reload identity of an instance: VRID, address family, interface."""
    return (conf.virtual_router_id, conf.family, conf.interface)


def strip_locations(value: Any) -> Any:
    """``value`` with every ``location`` field reset, for comparisons that ignore layout."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            current = getattr(value, f.name)
            if f.name == "location":
                if current != NOWHERE:
                    changes[f.name] = NOWHERE
                continue
            stripped = strip_locations(current)
            if stripped is not current:
                changes[f.name] = stripped
        return dataclasses.replace(value, **changes) if changes else value
    if isinstance(value, tuple):
        items = tuple(strip_locations(v) for v in value)
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def vip_key(vip: VirtualIP) -> VirtualIP:
    """A VIP compared without its location."""
    stripped: VirtualIP = strip_locations(vip)
    return stripped


@dataclass(frozen=True)
class InstanceUpdate:
    """A matched instance whose settings differ."""

    old: VrrpInstance
    new: VrrpInstance
    changed: frozenset[str]  # VrrpInstance field names, plus "tracking", "address_owner", ...
    vips_added: tuple[VirtualIP, ...] = ()
    vips_removed: tuple[VirtualIP, ...] = ()

    @property
    def restart(self) -> bool:
        return bool(self.changed & RESTART_FIELDS)


@dataclass(frozen=True)
class ReloadPlan:
    kept: tuple[tuple[VrrpInstance, VrrpInstance], ...] = ()  # (old, new): nothing to do
    updated: tuple[InstanceUpdate, ...] = ()
    added: tuple[VrrpInstance, ...] = ()
    removed: tuple[VrrpInstance, ...] = ()
    scripts_changed: tuple[str, ...] = ()  # vrrp_script names added, removed or redefined

    @property
    def in_place(self) -> tuple[InstanceUpdate, ...]:
        return tuple(u for u in self.updated if not u.restart)

    @property
    def restarted(self) -> tuple[InstanceUpdate, ...]:
        return tuple(u for u in self.updated if u.restart)

    @property
    def empty(self) -> bool:
        return not (self.updated or self.added or self.removed or self.scripts_changed)

    def summary(self) -> str:
        """One log line: counts, then the names of everything that changes."""
        parts = [
            f"{len(self.kept)} kept",
            f"{len(self.in_place)} updated",
            f"{len(self.restarted)} restarted",
            f"{len(self.added)} added",
            f"{len(self.removed)} removed",
        ]
        details = []
        for upd in self.updated:
            verb = "restarted" if upd.restart else "updated"
            details.append(f"{upd.new.name} {verb} ({', '.join(sorted(upd.changed))})")
        details += [f"{c.name} added" for c in self.added]
        details += [f"{c.name} removed" for c in self.removed]
        if self.scripts_changed:
            details.append(f"scripts changed: {', '.join(self.scripts_changed)}")
        text = "VRRP instances: " + ", ".join(parts)
        return f"{text}; {'; '.join(details)}" if details else text


def _group_identity(config: Config, conf: VrrpInstance) -> Any:
    group = sync_group_of(config, conf.name)
    if group is None:
        return None
    # The group's notify scripts and tracking do not need a restart.
    return (group.name, tuple(instance_key(config.instance(m)) for m in group.group
                              if any(i.name == m for i in config.vrrp_instances)))


def _group_settings(group: VrrpSyncGroup | None) -> Any:
    """A sync group's settings that matter to its members (its mail alerts do not: the
    alert outlets read ``smtp_alert`` from the running configuration)."""
    if group is None:
        return None
    return strip_locations(dataclasses.replace(group, smtp_alert=False))


def _diff(old_cfg: Config, new_cfg: Config, old: VrrpInstance, new: VrrpInstance) -> set[str]:
    a, b = strip_locations(old), strip_locations(new)
    changed = {f.name for f in dataclasses.fields(VrrpInstance) if getattr(a, f.name) !=
               getattr(b, f.name)}
    changed.discard("location")
    old_tracking = strip_locations(tracking_spec(old_cfg, old))
    if old_tracking != strip_locations(tracking_spec(new_cfg, new)):
        changed.add("tracking")
    old_group, new_group = sync_group_of(old_cfg, old.name), sync_group_of(new_cfg, new.name)
    if _group_identity(old_cfg, old) != _group_identity(new_cfg, new):
        changed.add("sync_group")
    elif _group_settings(old_group) != _group_settings(new_group):
        changed.add("sync_group_settings")
    old_type = old.authentication.type if old.authentication else None
    new_type = new.authentication.type if new.authentication else None
    if old_type != new_type:
        changed.add("authentication_type")
    if "vmac_name" in changed and old.effective_vmac_name == new.effective_vmac_name:
        changed.discard("vmac_name")
    if (old.priority == 255) != (new.priority == 255):
        changed.add("address_owner")
    return changed


def vip_difference(
    old: Iterable[VirtualIP], new: Iterable[VirtualIP]
) -> tuple[tuple[VirtualIP, ...], tuple[VirtualIP, ...]]:
    """(added, removed): the VIPs of ``new`` not in ``old`` and of ``old`` not in ``new``.

    Compared without locations; each keeps its order and its own location.
    """
    old_l, new_l = list(old), list(new)
    old_keys = {vip_key(v) for v in old_l}
    new_keys = {vip_key(v) for v in new_l}
    added = tuple(v for v in new_l if vip_key(v) not in old_keys)
    removed = tuple(v for v in old_l if vip_key(v) not in new_keys)
    return added, removed


def difference(old: Iterable[T], new: Iterable[T]) -> tuple[tuple[T, ...], tuple[T, ...]]:
    """(added, removed) of any configured items (routes, rules), compared without their
    locations; each keeps its order and its own location."""
    old_l, new_l = list(old), list(new)
    old_keys = {strip_locations(v) for v in old_l}
    new_keys = {strip_locations(v) for v in new_l}
    added = tuple(v for v in new_l if strip_locations(v) not in old_keys)
    removed = tuple(v for v in old_l if strip_locations(v) not in new_keys)
    return added, removed


@dataclass(frozen=True)
class VipChange:
    """What a running instance does with its VIPs when a reload changes them."""

    remove: tuple[VirtualIP, ...] = ()  # deleted from the host (first)
    add: tuple[VirtualIP, ...] = ()  # configured on the host (then)
    announce: tuple[VirtualIP, ...] = ()  # sent gratuitous ARPs for (last)


def reload_vip_change(
    running: Iterable[VirtualIP], new: Iterable[VirtualIP], state: State
) -> VipChange:
    """The VIP work of an in-place reload from the ``running`` VIPs to ``new``.

    ``state`` is the instance's state once the reload's settings are taken.
    Only a MASTER holds VIPs: it removes the dropped ones, adds the new ones
    and announces the new ones alone.  Any other state does nothing now.
    """
    if state is not State.MASTER:
        return VipChange()
    added, removed = vip_difference(running, new)
    return VipChange(remove=removed, add=added, announce=added)


def _script_changes(old: Config, new: Config) -> tuple[str, ...]:
    old_s = {s.name: strip_locations(s) for s in old.vrrp_scripts}
    new_s = {s.name: strip_locations(s) for s in new.vrrp_scripts}
    return tuple(sorted(n for n in old_s.keys() | new_s.keys() if old_s.get(n) != new_s.get(n)))


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """The difference between the running ``old`` config and the re-read ``new`` one."""
    old_by_key = {instance_key(c): c for c in old.vrrp_instances}
    new_keys = {instance_key(c) for c in new.vrrp_instances}
    kept: list[tuple[VrrpInstance, VrrpInstance]] = []
    updated: list[InstanceUpdate] = []
    added: list[VrrpInstance] = []
    for conf in new.vrrp_instances:
        prev = old_by_key.get(instance_key(conf))
        if prev is None:
            added.append(conf)
            continue
        changed = _diff(old, new, prev, conf)
        if not changed:
            kept.append((prev, conf))
            continue
        vips_added, vips_removed = vip_difference(instance_vips(prev), instance_vips(conf))
        updated.append(InstanceUpdate(prev, conf, frozenset(changed), vips_added, vips_removed))
    removed = [c for c in old.vrrp_instances if instance_key(c) not in new_keys]
    return ReloadPlan(
        kept=tuple(kept),
        updated=tuple(updated),
        added=tuple(added),
        removed=tuple(removed),
        scripts_changed=_script_changes(old, new),
    )
