"""Readers of the global_defs keywords that shape the IPVS table as a whole.

Theory of operation: pure ``ValueReader`` functions for ``lvs_flush_on_stop``
and ``lvs_timeouts``, with keepalived 2.2.7's words and limits; the
``global_defs`` table (``pyalived.config.vrrp_parse``) uses them, and the
checker half (``pyalived.checkers.service``) applies the values.  Apart from
``lvs_parse`` so that the VRRP parser does not depend on the LVS one.
"""

from __future__ import annotations

from pyalived.config.model import LvsTimeouts
from pyalived.config.tree import Node
from pyalived.config.values import ValueReader


def flush_on_stop(r: ValueReader, node: Node) -> str | None:
    """global ``lvs_flush_on_stop [VS]``: "full" (flush everything) or "vs"."""
    r.no_block(node)
    if not node.values:
        return "full"
    if node.values[0] != "VS":
        r.sink.error(node.location, f"{node.name}: unknown type '{node.values[0]}' (VS)")
        return None
    if len(node.values) > 1:
        extra = " ".join(node.values[1:])
        r.sink.warning(node.location, f"{node.name}: extra words ignored: {extra}")
    return "vs"


LVS_MAX_TIMEOUT = 86400 * 31  # keepalived's limit for each of lvs_timeouts' values


def lvs_timeouts(r: ValueReader, node: Node) -> LvsTimeouts | None:
    """global ``lvs_timeouts [tcp SECS] [tcpfin SECS] [udp SECS]`` (at least one)."""
    r.no_block(node)
    values = {"tcp": 0, "tcpfin": 0, "udp": 0}
    words = node.values
    if not words:
        r.sink.error(node.location, f"{node.name} needs at least one of tcp, tcpfin, udp")
        return None
    i = 0
    while i < len(words):
        name = words[i]
        if name not in values:
            r.sink.error(node.location, f"{node.name}: unknown timeout '{name}' (tcp, tcpfin, udp)")
            return None
        text = words[i + 1] if i + 1 < len(words) else None
        if text is None or not text.isdigit() or not 0 <= int(text) <= LVS_MAX_TIMEOUT:
            r.sink.error(
                node.location,
                f"{node.name}: {name} timeout {text} is outside [0, {LVS_MAX_TIMEOUT}]",
            )
            return None
        values[name] = int(text)
        i += 2
    return LvsTimeouts(**values)
