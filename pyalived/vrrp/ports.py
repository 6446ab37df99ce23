"""The side-effect interfaces of the VRRP engine.

Theory of operation: the trio driver (``pyalived.vrrp.instance``) executes the
state machine's actions through these small protocols.  Production code gets
the implementations in ``pyalived.vrrp.net`` (raw sockets, AF_PACKET),
``pyalived.vrrp.net6`` (raw IPv6 sockets and link-local addresses, RFC 5798
§5.1.2),
``pyalived.vrrp.netlink`` (addresses, macvlan, link state),
``pyalived.vrrp.routes`` (routes and policy rules),
``pyalived.scripts`` (notify and track scripts, shared with the checker
half, which is why ``ScriptRunner`` is defined there),
``pyalived.vrrp.wakeup`` (exact timer wake-ups) and ``pyalived.vrrp.nftables`` (the
firewall of ``no_accept`` VIPs); tests get fakes that record
what was asked of them.  Nothing here blocks the trio loop: calls that may
block (netlink) are async and run in a worker thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pyalived.config.model import Config, VirtualIP, VirtualRoute, VirtualRule

if TYPE_CHECKING:
    from pyalived.vrrp.net6 import Datagram6


class AdvertSocket(Protocol):
    """Raw IPv4 socket for one interface, protocol 112 (or 51 for AH).

    ``send`` takes a whole IPv4 datagram (IP_HDRINCL) and its destination.
    ``receive`` returns whole IPv4 datagrams arriving on the interface.
    """

    def send(self, datagram: bytes, dst: IPv4Address) -> None: ...

    async def receive(self) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class TimedAdvertSocket(Protocol):
    """An ``AdvertSocket`` that also tells when each datagram arrived."""

    async def receive_timed(self) -> tuple[bytes, float]:
        """The next datagram and its arrival time on trio's clock."""
        ...


class GarpSocket(Protocol):
    """AF_PACKET sender of gratuitous ARP on one interface (or its VMAC), and of the
    unsolicited neighbour advertisements of IPv6 addresses (``pyalived.vrrp.ndisc``)."""

    def send_garp(self, ips: Sequence[IPv4Address], count: int) -> None: ...

    def send_na(self, ips: Sequence[IPv6Address], count: int) -> None: ...

    def close(self) -> None: ...


class SocketFactory(Protocol):
    """Opens the raw sockets; production: ``pyalived.vrrp.net``."""

    def open_advert(self, ifname: str, proto: int) -> AdvertSocket: ...

    def open_garp(self, ifname: str) -> GarpSocket: ...


class Advert6Socket(Protocol):
    """Raw IPv6 socket for VRRPv3 on one interface (``pyalived.vrrp.net6``).

    ``send6`` takes the VRRP message alone (the kernel writes the IPv6 header
    and the checksum); ``receive6`` returns the message with its source,
    destination, hop limit and arrival time.
    """

    def send6(self, message: bytes, src: IPv6Address, dst: IPv6Address) -> None: ...

    async def receive6(self) -> Datagram6: ...

    def close(self) -> None: ...


class SocketFactory6(Protocol):
    """Opens the IPv6 advert sockets, and finds an interface's link-local address;
    production: ``pyalived.vrrp.net6.NetSockets6``."""

    def open_advert6(self, ifname: str) -> Advert6Socket: ...

    def link_local(self, ifname: str) -> IPv6Address: ...


class AddressManager(Protocol):
    """Adds and removes VIPs through netlink. Idempotent; raises OSError after retries."""

    async def add(self, default_dev: str, vips: Sequence[VirtualIP]) -> None: ...

    async def remove(self, default_dev: str, vips: Sequence[VirtualIP]) -> None: ...


class RouteManager(Protocol):
    """Adds routes then rules, removes rules then routes (``pyalived.vrrp.routes``).
    Idempotent; every change is tried, then OSError tells that one failed."""

    async def add(self, routes: Sequence[VirtualRoute], rules: Sequence[VirtualRule]) -> None: ...

    async def remove(self, routes: Sequence[VirtualRoute],
                     rules: Sequence[VirtualRule]) -> None: ...


class VmacManager(Protocol):
    """Creates/removes the macvlan ``name`` on ``parent`` with MAC 00:00:5e:00:01:VRID
    (IPv4) or 00:00:5e:00:02:VRID (IPv6)."""

    async def create(self, parent: str, name: str, vrid: int, family: int = 4) -> str:
        """Adopt (a leftover) or create the VMAC, bring it up; return the name it has.

        That is ``name`` unless a foreign interface holds it (``pyalived.vrrp.vmac``).
        """
        ...

    async def delete(self, name: str) -> None: ...


@dataclass(frozen=True)
class LinkEvent:
    ifname: str
    up: bool  # operationally up (IFF_RUNNING) and administratively up


class LinkWatcher(Protocol):
    """Current link states, then a change stream (RTM_NEWLINK/DELLINK)."""

    def is_up(self, ifname: str) -> bool: ...

    def events(self) -> AsyncIterator[LinkEvent]: ...


class Wakeup(Protocol):
    """Wakes the event loop exactly at posted deadlines (``pyalived.vrrp.wakeup``).

    A callable ``owner`` is called when its deadline has come; ``fallback`` is how
    long after the deadline its task stops waiting for that call.
    """

    fallback: float

    def wake_at(self, owner: Hashable, deadline: float | None) -> None: ...


class StateAlerts(Protocol):
    """Where state changes are reported besides notify scripts: the notify FIFOs and
    mail alerts (``pyalived.alerts``).  Calls return at once; nothing they do blocks."""

    def instance_state(self, name: str, state: str, priority: int) -> None:
        """Instance ``name`` entered ``state`` (MASTER, BACKUP, FAULT or STOP)."""
        ...

    def group_state(self, name: str, state: str) -> None:
        """Every member of sync group ``name`` is in ``state``."""
        ...

    def configure(self, config: Config) -> None:
        """A reload: the new configuration's FIFOs, mail settings and ``smtp_alert``s."""
        ...


class FirewallError(Exception):
    """An nftables batch was refused or could not be run; nothing of it was applied."""


class NftRunner(Protocol):
    """Applies one nftables JSON batch (a list of commands) as one transaction;
    production: ``pyalived.vrrp.nftables``.  Raises ``FirewallError``."""

    async def run(self, commands: list[dict[str, Any]]) -> None: ...
