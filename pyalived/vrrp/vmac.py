"""Choosing, adopting and preparing the VMAC interface of a VRRP instance.

Theory of operation: with ``use_vmac`` an instance needs a macvlan child of
its interface (the *parent*) carrying the virtual router MAC,
00:00:5e:00:01:VRID for IPv4 (RFC 3768 §7.3, RFC 5798 §7.3) and
00:00:5e:00:02:VRID for IPv6 (RFC 5798 §7.3).  The kernel refuses to bring up a
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
  a macvlan on another parent or with a MAC not in the VRRP block, or the
  VMAC of another running instance of this daemon, *claimed*) is not
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
  does not configure on it.  (An IPv6 VMAC keeps its link-local address.)
- Then, adopted or new, the VMAC gets the same treatment: the sysctls
  keepalived 2.2.7 sets on a VMAC it creates, and it is brought up.  IPv4:
  arp_ignore=1, accept_local=1, promote_secondaries=1, IPv6 off and no
  link-local address; arp_ignore=1 and arp_filter=1 on the parent.  IPv6:
  IPv6 on, no address generated from the virtual MAC (addr_gen_mode=1), and
  once it is up the parent's link-local address, added without duplicate
  address detection and deprecated (preferred lifetime 0, so the kernel
  never picks it as a source itself): RFC 5798 §5.1.2.1 sends adverts from
  the link-local address of the interface they leave by, so the VMAC needs
  one, and it is the parent's so that the source peers see does not change
  with ``use_vmac``.  The instance then sends, receives and announces
  (unsolicited neighbour advertisements) on the VMAC, as keepalived does.

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
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface
from typing import Protocol

log = logging.getLogger("pyalived.vrrp.vmac")

VRRP_MAC_PREFIXES = ("00:00:5e:00:01:", "00:00:5e:00:02:")  # RFC 3768 §7.3, RFC 5798 §7.3
VMAC_SYSCTLS = {"arp_ignore": "1", "accept_local": "1", "promote_secondaries": "1"}
PARENT_SYSCTLS = {"arp_ignore": "1", "arp_filter": "1"}


def vmac_mac(vrid: int, family: int = 4) -> str:
    """The virtual router MAC of ``vrid`` for IPv4 or IPv6 in ``aa:bb:..`` notation."""
    if not 1 <= vrid <= 255:
        raise ValueError(f"VRID {vrid} is outside 1..255")
    block = 1 if family == 4 else 2
    return f"00:00:5e:00:0{block}:{vrid:02x}"


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


def plan_vmac(links: Sequence[LinkInfo], parent: str, name: str, vrid: int,
              family: int = 4, claimed: Collection[str] = ()) -> VmacPlan:
    """Decide how to get the VMAC ``name`` for ``vrid`` on ``parent`` (rules: module doc).

    ``claimed`` names the VMACs other instances of this daemon use.  Raises
    ``OSError(ENODEV)`` if ``parent`` does not exist.
    """
    mac = vmac_mac(vrid, family)
    by_name = {link.name: link for link in links}
    base = by_name.get(parent)
    if base is None:
        raise OSError(errno.ENODEV, f"no interface {parent}")

    def on_parent(link: LinkInfo) -> bool:
        return (link.kind == "macvlan" and link.parent == base.index and link is not base
                and link.name not in claimed)

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

    def addresses(self, index: int) -> Sequence[IPv4Interface | IPv6Interface]:
        """Every IPv4 and IPv6 address of interface ``index``."""
        ...

    def delete_address(self, index: int, address: IPv4Interface | IPv6Interface) -> None: ...

    def link_local(self, index: int) -> IPv6Address | None:
        """The usable link-local address of interface ``index``, if any."""
        ...

    def add_link_local(self, index: int, address: IPv6Address) -> None:
        """Add ``address``/64, without DAD and deprecated; an existing one is not an error."""
        ...

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


def _log_blocked(plan: VmacPlan, configured: str, vrid: int, names: dict[int, str],
                 claimed: Collection[str]) -> None:
    holder = plan.blocked_by
    if holder is None:
        return
    instead = (f"adopting the leftover VMAC {plan.name}" if plan.adopt is not None
               else f"creating the VMAC as {plan.name}")
    if holder.name in claimed:
        log.info("interface %s is the VMAC of another instance; %s", configured, instead)
        return
    level = logging.WARNING if holder.kind == "macvlan" and is_vrrp_mac(holder.mac) \
        else logging.ERROR
    log.log(level, "interface %s is %s, not the VMAC of VRID %d on %s; left alone, %s instead",
            configured, holder.describe(names), vrid, plan.parent.name, instead)


def prepare_vmac(ops: LinkOps, parent: str, name: str, vrid: int, family: int = 4,
                 claimed: Collection[str] = ()) -> str:
    """Adopt or create the VMAC, configure it and bring it up; return its name.

    Idempotent: run again after a failure it finds its own work as a leftover
    and finishes it.  An IPv6 VMAC needs the parent's link-local address:
    ``OSError(EADDRNOTAVAIL)`` while the parent has none usable yet.
    """
    links = ops.links()
    names = {link.index: link.name for link in links}
    plan = plan_vmac(links, parent, name, vrid, family, claimed)
    _log_blocked(plan, name, vrid, names, claimed)
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
        stale_addresses = [a for a in ops.addresses(index)
                           if a.version == 4 or not a.ip.is_link_local]
        for address in stale_addresses:
            ops.delete_address(index, address)
        if stale_addresses:
            log.warning("removed stale address%s %s from leftover VMAC %s",
                        "es" if len(stale_addresses) > 1 else "",
                        ", ".join(str(a) for a in stale_addresses), plan.name)
    # No link-local address generated from the virtual MAC; IPv6 only on an IPv6 VMAC.
    ops.write_sysctl(f"ipv6/conf/{plan.name}/addr_gen_mode", "1")
    ops.write_sysctl(f"ipv6/conf/{plan.name}/disable_ipv6", "1" if family == 4 else "0")
    if family == 4:
        for key, value in VMAC_SYSCTLS.items():
            ops.write_sysctl(f"ipv4/conf/{plan.name}/{key}", value)
        for key, value in PARENT_SYSCTLS.items():
            ops.write_sysctl(f"ipv4/conf/{parent}/{key}", value)
    ops.set_up(index, True)
    if family == 6:
        source = ops.link_local(plan.parent.index)
        if source is None:
            raise OSError(errno.EADDRNOTAVAIL,
                          f"{parent} has no usable link-local address for {plan.name}")
        for address in ops.addresses(index):
            if address.version == 6 and address.ip.is_link_local and address.ip != source:
                ops.delete_address(index, address)  # the parent's changed since
        ops.add_link_local(index, source)
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
