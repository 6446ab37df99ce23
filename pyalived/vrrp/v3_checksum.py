"""The VRRPv3 checksum mode of one instance, and keepalived's automatic switch.

Theory of operation: a pure object, no clock, no socket.  A VRRPv3 instance
over IPv4 computes its checksum (RFC 5798 §5.2.8) with the pseudo-header
destination its mode says (``packet.V3Checksum``): multicast instances and
``old_unicast_checksum never`` use the RFC form, ``old_unicast_checksum``
the form of keepalived up to 1.3.5 (the multicast group in place of the
unicast destination).  A unicast instance without the keyword starts in
``RFC_OR_OLD``: it sends the RFC form and accepts either; the first advert
that verifies only the old way (``ReceivedV3.old_checksum``) switches it to
``OLD`` for good, sending and receiving, as keepalived 2.2.7 does (it logs
"Setting unicast VRRPv3 checksum to old version" once).  The demux decodes
with ``mode``, the instance driver sends with it and reports every accepted
advert to ``observe``, which says when the switch happens so that the
driver logs it once.
"""

from __future__ import annotations

from pyalived.vrrp.packet import ReceivedV3, V3Checksum


class ChecksumMode:
    """One instance's current VRRPv3 checksum mode."""

    def __init__(self, mode: V3Checksum) -> None:
        self._mode = mode

    @property
    def mode(self) -> V3Checksum:
        return self._mode

    def observe(self, received: ReceivedV3) -> bool:
        """Note an accepted advert; True when it switches the mode to ``OLD`` (once)."""
        if self._mode is V3Checksum.RFC_OR_OLD and received.old_checksum:
            self._mode = V3Checksum.OLD
            return True
        return False
