"""Choosing, adopting and preparing the VMAC interface of a VRRP instance.

Theory of operation: with ``use_vmac`` an instance needs a macvlan child of
its interface (the *parent*) carrying the virtual router MAC
00:00:5e:00:01:VRID (RFC 3768 §7.3).  The kernel refuses to bring up a
second macvlan with the same MAC on the same parent (EADDRINUSE), so a VMAC
left behind by a daemon that died without cleaning up (SIGKILL, a crash, a
power cut during a reload that renamed it) must be reused, never duplicated.
This module decides what to do from a snapshot of the namespace's links
(``plan_vmac``, pure) and carries the decision out through a small
synchronous ``LinkOps`` port (``prepare_vmac``, ``remove_vmac``), which the
netlink thread implements over rtnetlink (``pyalived.vrrp.netlink``) and the
unit tests with an in-memory kernel model.

The rules, in order:

- *Ours* are the macvlans on the parent, in this namespace, carrying this
  VRID's virtual MAC, whatever their name, mode or state: only a VRRP daemon
  makes such an interface.  One of them is adopted (the one already bearing
  the configured name, else one that is up, else the oldest); any other is
  deleted, since only one of them could ever be up.
- A link holding the configured name that is a macvlan on the parent with
  another VRID's virtual MAC is a leftover of an older configuration (the
  VRID was renumbered): it is deleted.
- Any other link holding the configured name (a physical or veth interface,
  a macvlan on another parent or with a MAC not in the VRRP block) is not
  ours and is never touched.  As keepalived 2.2.7 does, the VMAC then gets
  another name: the adopted leftover keeps its own, a new one is called
  ``vrrp.VRID``, else ``vrrp1.VRID``, ``vrrp2.VRID``...  The instance uses
  the name ``prepare_vmac`` returns.
- An adopted VMAC is renamed to the configured name (taken down first: older
  kernels refuse to rename a running interface), switched to private mode if
  it was in another, and stripped of every IPv4 address it carries: an
  address on a VMAC is a VIP of the previous run, and a BACKUP must not keep
  answering for it.  keepalived 2.2.7 instead keeps the leftover's name,
  leaves it down (and the instance in FAULT) if it was down, ignores one in
  another mode (and then fails to bring its own up) and leaves addresses it
  does not configure on it.
- Then, adopted or new, the VMAC gets the same treatment: the sysctls
  keepalived 2.2.7 sets on a VMAC it creates (arp_ignore=1, accept_local=1,
  promote_secondaries=1, IPv6 off and no link-local address; arp_ignore=1
  and arp_filter=1 on the parent), and it is brought up.

Every adoption, rename, deletion and stripped address is logged at warning
level; a foreign link in the way is logged at error level (at warning level
when it is itself a VMAC, typically another instance's with the same VRID on
another interface).  ``remove_vmac`` deletes only a macvlan carrying a VRRP
virtual MAC, so a stop never deletes an interface the daemon did not make.
"""

from __future__ import annotations

import errno
import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Protocol

log = logging.getLogger("pyalived.vrrp.vmac")

VRRP_MAC_PREFIXES = ("00:00:5e:00:01:", "00:00:5e:00:02:")  # RFC 3768 §7.3, RFC 5798 §7.3
VMAC_SYSCTLS = {"arp_ignore": "1", "accept_local": "1", "promote_secondaries": "1"}
PARENT_SYSCTLS = {"arp_ignore": "1", "arp_filter": "1"}


def vmac_mac(vrid: int) -> str:
    """The virtual router MAC of ``vrid`` in ``aa:bb:..`` notation."""
    if not 1 <= vrid <= 255:
        raise ValueError(f"VRID {vrid} is outside 1..255")
    return f"00:00:5e:00:01:{vrid:02x}"


def is_vrrp_mac(mac: str) -> bool:
    """True for a virtual router MAC of any VRID (IPv4 or IPv6 block)."""
    return mac.lower().startswith(VRRP_MAC_PREFIXES) and len(mac) == 17


@dataclass(frozen=True)
class LinkInfo:
    """What the planner needs to know of one interface."""

    index: int
    name: str
    kind: str | None = None  # IFLA_INFO_KIND: "macvlan", "veth"...; None for a plain device
    parent: int | None = None  # lower device's index, None if none or in another namespace
    mac: str = ""  # lower-case aa:bb:cc:dd:ee:ff
    mode: str | None = None  # macvlan mode: "private", "bridge", "vepa", ...
    up: bool = False  # administratively up (IFF_UP)

    def describe(self, names: dict[int, str]) -> str:
        """``a veth with MAC ..`` / ``a macvlan on eth1 with MAC ..`` for log lines."""
        kind = self.kind or "device"
        on = ""
        if self.parent is not None and kind != "veth":  # a veth's link is its peer
            on = f" on {names.get(self.parent, f'ifindex {self.parent}')}"
        return f"a {kind}{on} with MAC {self.mac or 'none'}"


@dataclass(frozen=True)
class VmacPlan:
    """What ``prepare_vmac`` will do."""

    name: str  # the VMAC's name once prepared
    parent: LinkInfo
    mac: str
    adopt: LinkInfo | None  # the leftover to reuse; None: create one
    remove: tuple[LinkInfo, ...]  # leftovers to delete first
    blocked_by: LinkInfo | None  # a foreign link holding the configured name (left alone)

    @property
    def rename(self) -> bool:
        return self.adopt is not None and self.adopt.name != self.name


def _fallback_names(vrid: int) -> Iterator[str]:
    yield f"vrrp.{vrid}"
    for n in itertools.count(1):
        yield f"vrrp{n}.{vrid}"


def plan_vmac(links: Sequence[LinkInfo], parent: str, name: str, vrid: int) -> VmacPlan:
    """Decide how to get the VMAC ``name`` for ``vrid`` on ``parent`` (rules: module doc).

    Raises ``OSError(ENODEV)`` if ``parent`` does not exist.
    """
    mac = vmac_mac(vrid)
    by_name = {link.name: link for link in links}
    base = by_name.get(parent)
    if base is None:
        raise OSError(errno.ENODEV, f"no interface {parent}")

    def on_parent(link: LinkInfo) -> bool:
        return link.kind == "macvlan" and link.parent == base.index and link is not base

    ours = [link for link in links if on_parent(link) and link.mac == mac]
    remove: list[LinkInfo] = []
    blocked: LinkInfo | None = None
    holder = by_name.get(name)
    if holder is not None and holder not in ours:
        if on_parent(holder) and is_vrrp_mac(holder.mac):
            remove.append(holder)  # another VRID's VMAC of ours under this name
        else:
            blocked = holder
    if ours:
        chosen = min(ours, key=lambda link: (link.name != name, not link.up, link.index))
        remove += [link for link in ours if link is not chosen]
        final = chosen.name if blocked is not None else name
        return VmacPlan(final, base, mac, chosen, tuple(remove), blocked)
    final = name
    if blocked is not None:
        taken = set(by_name)
        final = next(n for n in _fallback_names(vrid) if n not in taken)
    return VmacPlan(final, base, mac, None, tuple(remove), blocked)


class LinkOps(Protocol):
    """Synchronous link operations (run in the netlink thread); failures raise OSError."""

    def links(self) -> Sequence[LinkInfo]: ...

    def add_macvlan(self, name: str, parent: int, mac: str) -> None:
        """A private-mode macvlan ``name`` on ``parent`` with ``mac``, left down."""
        ...

    def delete(self, index: int) -> None: ...

    def set_up(self, index: int, up: bool) -> None: ...

    def rename(self, index: int, name: str) -> None: ...

    def set_private(self, index: int) -> None:
        """Switch a macvlan to private mode."""
        ...

    def ipv4_addresses(self, index: int) -> Sequence[IPv4Interface]: ...

    def delete_address(self, index: int, address: IPv4Interface) -> None: ...

    def write_sysctl(self, path: str, value: str) -> None:
        """Write ``/proc/sys/net/PATH`` if it exists."""
        ...


def _find(ops: LinkOps, name: str) -> LinkInfo | None:
    for link in ops.links():
        if link.name == name:
            return link
    return None


def _delete(ops: LinkOps, index: int) -> None:
    try:
        ops.delete(index)
    except OSError as exc:
        if exc.errno != errno.ENODEV:
            raise


def _log_blocked(plan: VmacPlan, configured: str, vrid: int, names: dict[int, str]) -> None:
    holder = plan.blocked_by
    if holder is None:
        return
    instead = (f"adopting the leftover VMAC {plan.name}" if plan.adopt is not None
               else f"creating the VMAC as {plan.name}")
    level = logging.WARNING if holder.kind == "macvlan" and is_vrrp_mac(holder.mac) \
        else logging.ERROR
    log.log(level, "interface %s is %s, not the VMAC of VRID %d on %s; left alone, %s instead",
            configured, holder.describe(names), vrid, plan.parent.name, instead)


def prepare_vmac(ops: LinkOps, parent: str, name: str, vrid: int) -> str:
    """Adopt or create the VMAC, configure it and bring it up; return its name.

    Idempotent: run again after a failure it finds its own work as a leftover
    and finishes it.
    """
    links = ops.links()
    names = {link.index: link.name for link in links}
    plan = plan_vmac(links, parent, name, vrid)
    _log_blocked(plan, name, vrid, names)
    for stale in plan.remove:
        log.warning("deleting leftover VMAC %s (%s)", stale.name, stale.describe(names))
        _delete(ops, stale.index)
    link = plan.adopt
    if link is not None and link.mode != "private":
        try:
            ops.set_private(link.index)
            log.warning("leftover VMAC %s was in macvlan mode %s: set to private",
                        link.name, link.mode)
        except OSError as exc:
            log.warning("leftover VMAC %s is in macvlan mode %s and cannot be set to "
                        "private (%s): deleting it", link.name, link.mode, exc)
            _delete(ops, link.index)
            link = None
    if link is None:
        ops.add_macvlan(plan.name, plan.parent.index, plan.mac)
        made = _find(ops, plan.name)
        if made is None:
            raise OSError(errno.ENODEV, f"{plan.name} vanished after creation")
        index = made.index
    else:
        index = link.index
        if link.name != plan.name:
            if link.up:
                ops.set_up(index, False)
            ops.rename(index, plan.name)
            log.warning("adopted leftover VMAC %s (%s), renamed to %s",
                        link.name, link.describe(names), plan.name)
        else:
            log.warning("adopted leftover VMAC %s (%s)", link.name, link.describe(names))
        stale_addresses = list(ops.ipv4_addresses(index))
        for address in stale_addresses:
            ops.delete_address(index, address)
        if stale_addresses:
            log.warning("removed stale address%s %s from leftover VMAC %s",
                        "es" if len(stale_addresses) > 1 else "",
                        ", ".join(str(a) for a in stale_addresses), plan.name)
    # IPv6 off (VRRPv2 is IPv4 only) and no link-local address.
    ops.write_sysctl(f"ipv6/conf/{plan.name}/addr_gen_mode", "1")
    ops.write_sysctl(f"ipv6/conf/{plan.name}/disable_ipv6", "1")
    for key, value in VMAC_SYSCTLS.items():
        ops.write_sysctl(f"ipv4/conf/{plan.name}/{key}", value)
    for key, value in PARENT_SYSCTLS.items():
        ops.write_sysctl(f"ipv4/conf/{parent}/{key}", value)
    ops.set_up(index, True)
    return plan.name


def remove_vmac(ops: LinkOps, name: str) -> None:
    """Delete the VMAC ``name`` if it exists and is one (a macvlan with a VRRP MAC)."""
    link = _find(ops, name)
    if link is None:
        return
    if link.kind != "macvlan" or not is_vrrp_mac(link.mac):
        names = {other.index: other.name for other in ops.links()}
        log.error("not deleting %s: it is %s, not a VMAC", name, link.describe(names))
        return
    _delete(ops, link.index)
