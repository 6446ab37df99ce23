"""State, statistics and JSON dumps of the running VRRP instances.

Theory of operation: like keepalived, the daemon writes a snapshot of its
instances to a file when signalled: SIGUSR1 writes the human-readable state
(``pyalived.data``: per instance its state, priorities, interface, VIPs,
timers and tracking), SIGUSR2 the counters (``pyalived.stats``), and
SIGRTMIN+2 (keepalived's JSON signal, ``keepalived --signum=JSON`` prints 36
on Linux) both as one JSON document (``pyalived.json``).  The files go to
``/tmp`` unless the daemon is given another directory; the names differ from
keepalived's so that both daemons can run on one host.  The formatting
functions are pure (instances, counters and ``now`` in, text out); only
``write_atomically`` touches the file system, replacing the file in one
rename so a reader never sees half a dump.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, Protocol

from pyalived.config.model import VirtualIP, VrrpInstance
from pyalived.vrrp.counters import VrrpCounters
from pyalived.vrrp.fsm import State, VrrpMachine
from pyalived.vrrp.tracking import InstanceTracking

DEFAULT_DUMP_DIR = "/tmp"
DATA_FILE = "pyalived.data"
STATS_FILE = "pyalived.stats"
JSON_FILE = "pyalived.json"
SIGDATA = signal.SIGUSR1
SIGSTATS = signal.SIGUSR2
SIGJSON = signal.SIGRTMIN + 2  # keepalived's JSON dump signal


class DumpedInstance(Protocol):
    """What a dump reads of a running ``pyalived.vrrp.instance.Instance``."""

    conf: VrrpInstance
    machine: VrrpMachine
    tracking: InstanceTracking
    src_ip: IPv4Address | IPv6Address
    vips: tuple[VirtualIP, ...]

    @property
    def name(self) -> str: ...


def _vip_text(vip: VirtualIP, default_dev: str) -> str:
    text = f"{vip.address} dev {vip.dev or default_dev}"
    if vip.scope:
        text += f" scope {vip.scope}"
    if vip.label:
        text += f" label {vip.label}"
    return text


def _timer_in(machine: VrrpMachine, now: float) -> float | None:
    timer = machine.get_timer()
    return None if timer is None else max(0.0, timer - now)


def _tracking(inst: DumpedInstance) -> dict[str, Any]:
    verdict = inst.tracking.verdict()
    scripts = {}
    for name in inst.tracking.script_names:
        ok = inst.tracking.script_ok(name)
        scripts[name] = "unknown" if ok is None else ("ok" if ok else "failing")
    files: dict[str, int | str] = {}
    for name in inst.tracking.file_names:
        value = inst.tracking.file_value(name)
        files[name] = "unknown" if value is None else value
    processes = {}
    for name in inst.tracking.process_names:
        up = inst.tracking.process_up(name)
        processes[name] = "unknown" if up is None else ("running" if up else "not running")
    return {
        "interfaces": list(inst.tracking.interface_names),
        "scripts": scripts,
        "files": files,
        "processes": processes,
        "faulty": verdict.faulty,
        "reason": verdict.reason,
    }


def instance_data(inst: DumpedInstance, now: float) -> dict[str, Any]:
    """One instance's state as plain data (the JSON dump's ``data``)."""
    conf, machine = inst.conf, inst.machine
    return {
        "name": inst.name,
        "state": machine.state.name,
        "interface": conf.interface,
        "vrid": conf.virtual_router_id,
        "base_priority": conf.priority,
        "effective_priority": machine.effective_priority,
        "advert_int": conf.advert_int,
        "version": conf.version,
        # VRRPv3: the interval learned from the master (RFC 5798 §6.4.2); v2: advert_int
        "master_adver_int": machine.master_adver_interval,
        "preempt": not conf.nopreempt,
        "preempt_delay": conf.preempt_delay,
        "accept": conf.accept is not False,  # RFC 5798 Accept_Mode (False: no_accept)
        "source_ip": str(inst.src_ip),
        "master_down_interval": round(machine.master_down_interval, 6),
        "next_timer_in": _timer_in(machine, now),
        "vips": [_vip_text(v, conf.interface) for v in inst.vips],
        "unicast_peers": [str(p) for p in conf.unicast_peer],
        "use_vmac": conf.effective_vmac_name,
        "tracking": _tracking(inst),
    }


def instance_stats(inst: DumpedInstance, counters: VrrpCounters) -> dict[str, Any]:
    """One instance's counters as plain data (the JSON dump's ``stats``)."""
    name = inst.name
    return {
        "adverts_received": counters.adverts_received[name],
        "adverts_sent": counters.adverts_sent[name],
        "priority_zero_received": counters.priority_zero_received[name],
        "priority_zero_sent": counters.priority_zero_sent[name],
        "garps_sent": counters.garps_sent[name],
        "tx_errors": counters.tx_errors[name],
        "became": {s.name: counters.transitions[(name, s.name)] for s in State},
        "rx_errors": {
            reason: n for (inst_name, reason), n in sorted(counters.instance_rx_errors.items())
            if inst_name == name
        },
    }


def format_data(instances: Sequence[DumpedInstance], now: float) -> str:
    """The SIGUSR1 dump: human-readable state of every instance."""
    lines = ["------< pyalived VRRP instances >------", ""]
    for inst in instances:
        d = instance_data(inst, now)
        timer = d["next_timer_in"]
        lines += [
            f" VRRP instance {d['name']}",
            f"   State                = {d['state']}",
            f"   Interface            = {d['interface']}",
            f"   Virtual router ID    = {d['vrid']}",
            f"   Base priority        = {d['base_priority']}",
            f"   Effective priority   = {d['effective_priority']}",
            f"   Advert interval      = {d['advert_int']:g} s",
            *(
                [
                    "   VRRP version         = 3",
                    f"   Master adver int     = {d['master_adver_int']:g} s",
                ]
                if d["version"] == 3
                else []
            ),
            f"   Preempt              = {'yes' if d['preempt'] else 'no'}"
            + (f" (delay {d['preempt_delay']:g} s)" if d["preempt_delay"] else ""),
            f"   Accept               = {'yes' if d['accept'] else 'no'}",
            f"   Source address       = {d['source_ip']}",
            f"   Master down interval = {d['master_down_interval']:.3f} s",
            f"   Next timer in        = {'none' if timer is None else f'{timer:.3f} s'}",
        ]
        if d["unicast_peers"]:
            lines.append(f"   Unicast peers        = {', '.join(d['unicast_peers'])}")
        if d["use_vmac"]:
            lines.append(f"   VMAC interface       = {d['use_vmac']}")
        lines.append(f"   Virtual IPs ({len(d['vips'])}):")
        lines += [f"     {v}" for v in d["vips"]]
        tracking = d["tracking"]
        if tracking["interfaces"]:
            lines.append(f"   Tracked interfaces   = {', '.join(tracking['interfaces'])}")
        for name, status in tracking["scripts"].items():
            lines.append(f"   Tracked script       = {name} ({status})")
        for name, value in tracking.get("files", {}).items():
            lines.append(f"   Tracked file         = {name} ({value})")
        for name, status in tracking.get("processes", {}).items():
            lines.append(f"   Tracked process      = {name} ({status})")
        if tracking["faulty"]:
            lines.append(f"   Fault                = {tracking['reason']}")
        lines.append("")
    return "\n".join(lines)


def format_stats(instances: Sequence[DumpedInstance], counters: VrrpCounters) -> str:
    """The SIGUSR2 dump: counters of every instance."""
    lines = ["------< pyalived VRRP statistics >------", ""]
    for inst in instances:
        s = instance_stats(inst, counters)
        lines += [
            f" VRRP instance {inst.name}",
            "   Adverts",
            f"     Received           = {s['adverts_received']}",
            f"     Sent               = {s['adverts_sent']}",
            "   Priority zero",
            f"     Received           = {s['priority_zero_received']}",
            f"     Sent               = {s['priority_zero_sent']}",
            f"   Gratuitous ARPs sent = {s['garps_sent']}",
            f"   Send errors          = {s['tx_errors']}",
            "   Became",
            *(f"     {state:<18} = {n}" for state, n in s["became"].items()),
            "   Dropped adverts",
        ]
        if s["rx_errors"]:
            lines += [f"     {reason:<18} = {n}" for reason, n in s["rx_errors"].items()]
        else:
            lines.append("     none")
        lines.append("")
    lines.append(" Dropped datagrams (all interfaces)")
    if counters.rx_errors:
        lines += [f"   {reason:<20} = {n}" for reason, n in sorted(counters.rx_errors.items())]
    else:
        lines.append("   none")
    lines.append("")
    return "\n".join(lines)


def format_json(
    instances: Sequence[DumpedInstance], counters: VrrpCounters, now: float
) -> str:
    """The SIGRTMIN+2 dump: a JSON list of ``{"data": ..., "stats": ...}`` per instance."""
    doc = [
        {"data": instance_data(inst, now), "stats": instance_stats(inst, counters)}
        for inst in instances
    ]
    return json.dumps(doc, indent=2) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (mode 0644) in one rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def dump_for_signal(
    signum: int,
    instances: Sequence[DumpedInstance],
    counters: VrrpCounters,
    now: float,
    directory: str = DEFAULT_DUMP_DIR,
) -> tuple[Path, str] | None:
    """The file and text a dump signal asks for (None: not a dump signal)."""
    base = Path(directory)
    if signum == SIGDATA:
        return base / DATA_FILE, format_data(instances, now)
    if signum == SIGSTATS:
        return base / STATS_FILE, format_stats(instances, counters)
    if signum == SIGJSON:
        return base / JSON_FILE, format_json(instances, counters, now)
    return None
