"""The rest of the IPVS settings: tunnels, persistence engine, timeouts, flushes, FILE_CHECK.

Parser tests check keepalived 2.2.7's words, defaults and limits (as its
``keepalived -t`` reports them); planner tests check what reaches the table
and that a reload changing a tunnel or an engine edits in place; service
tests run ``LvsService`` on a fake IPVS kernel under trio's autojump clock,
with real files watched through inotify for FILE_CHECK.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import ClassVar

import pytest
import trio

from pyalived.checkers import ha_suspend as ha
from pyalived.checkers.compile import ipvs_configs
from pyalived.checkers.file_check import file_effect, file_status
from pyalived.config import load
from pyalived.config.diagnostics import Severity
from pyalived.config.model import FileCheck, LvsTimeouts, LvsTunnel, TrackFile
from pyalived.ipvs import model as m
from pyalived.ipvs.model import (
    Destination,
    DestKey,
    EditDest,
    EditService,
    Forwarding,
    Service,
    ServiceEntry,
    ServiceKey,
    Timeouts,
    diff,
    plan,
)

from .test_lvs_service import CHECK, VIP, A, B, FakeKernel, Rig, at, config, running

RS1 = DestKey(ip_address("198.18.0.2"), 80)


def load_text(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "keepalived.conf"
    p.write_text(text)
    return load(str(p), interface_exists=lambda name: True)


def vs(body: str = "", rs: str = "", head: str = "") -> str:
    return (
        f"{head}virtual_server 198.18.0.1 80 {{\n protocol TCP\n lb_algo rr\n lb_kind NAT\n{body}\n"
        f" real_server 198.18.0.2 80 {{\n{rs}\n }}\n}}\n"
    )


def errors(res) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    return [(d.location.line, d.message) for d in res.diagnostics
            if d.severity is Severity.ERROR]


# ---- tunnels ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "tunnel", "dest"),
    [
        ("TUN", LvsTunnel(), (m.TUN_TYPE_IPIP, 0, m.TUN_F_NOCSUM)),
        ("TUN type ipip nocsum", LvsTunnel(), (m.TUN_TYPE_IPIP, 0, m.TUN_F_NOCSUM)),
        ("TUN type gue port 6080", LvsTunnel("gue", 6080), (m.TUN_TYPE_GUE, 6080, 0)),
        ("TUN type gue port 6080 remcsum", LvsTunnel("gue", 6080, "remcsum"),
         (m.TUN_TYPE_GUE, 6080, m.TUN_F_REMCSUM)),
        ("TUN type gre csum", LvsTunnel("gre", 0, "csum"), (m.TUN_TYPE_GRE, 0, m.TUN_F_CSUM)),
    ],
)
def test_tunnel_options_reach_the_destination(
    tmp_path: Path, words: str, tunnel: LvsTunnel, dest: tuple[int, int, int]
) -> None:
    res = load_text(tmp_path, vs(f" lvs_method {words}"))
    assert res.config is not None, [str(d) for d in res.diagnostics]
    (v,) = res.config.virtual_servers
    assert v.lvs_tunnel == tunnel
    (svc,) = ipvs_configs(res.config)
    d = plan([svc], {}).table[VIP].dests[RS1]
    assert (d.forwarding, d.tun_type, d.tun_port, d.tun_flags) == (Forwarding.TUN, *dest)


def test_a_real_servers_own_lvs_method_replaces_the_tunnel_of_the_virtual_server(
    tmp_path: Path,
) -> None:
    text = vs(" lvs_method TUN type gue port 6080", rs="  lvs_method TUN")
    text = text.replace("}\n}\n", "}\n real_server 198.18.0.3 80 {\n }\n}\n")
    res = load_text(tmp_path, text)
    assert res.config is not None
    (svc,) = ipvs_configs(res.config)
    dests = plan([svc], {}).table[VIP].dests
    assert (dests[RS1].tun_type, dests[RS1].tun_port) == (m.TUN_TYPE_IPIP, 0)
    other = dests[DestKey(ip_address("198.18.0.3"), 80)]
    assert (other.tun_type, other.tun_port) == (m.TUN_TYPE_GUE, 6080)


def test_sorry_server_lvs_method_takes_tunnel_options(tmp_path: Path) -> None:
    text = vs(" lvs_method DR\n sorry_server 198.18.0.9 80\n"
              " sorry_server_lvs_method TUN type gre csum\n sorry_server_inhibit")
    res = load_text(tmp_path, text)
    assert res.config is not None
    (svc,) = ipvs_configs(res.config)
    sorry = plan([svc], {}).table[VIP].dests[DestKey(ip_address("198.18.0.9"), 80)]
    assert (sorry.forwarding, sorry.tun_type, sorry.tun_flags) == (
        Forwarding.TUN, m.TUN_TYPE_GRE, m.TUN_F_CSUM)


@pytest.mark.parametrize(
    ("words", "fragment"),
    [
        ("TUN type gue", "gue tunnels need a port"),
        ("TUN port 5", "gue tunnels need a port"),
        ("TUN type gue port 0", "tunnel port 0 is outside [1, 65535]"),
        ("TUN type gue port 70000", "tunnel port 70000 is outside"),
        ("TUN type vxlan", "unknown tunnel type vxlan"),
        ("TUN type ipip csum", "ipip tunnels take no checksum option"),
        ("TUN type gre remcsum", "gre tunnels do not support remcsum"),
        ("TUN type gre sideways", "unknown tunnel option 'sideways'"),
    ],
)
def test_bad_tunnel_options_refuse_the_config(tmp_path: Path, words: str, fragment: str) -> None:
    res = load_text(tmp_path, vs(rs=f"  lvs_method {words}"))
    assert res.config is None
    assert any(line == 7 and fragment in msg for line, msg in errors(res)), res.diagnostics


def test_options_after_dr_are_warned_about_and_ignored(tmp_path: Path) -> None:
    res = load_text(tmp_path, vs(rs="  lvs_method DR type gre"))
    assert res.config is not None
    assert any("options of DR ignored: type gre" in d.message for d in res.diagnostics)
    assert res.config.virtual_servers[0].real_servers[0].lvs_tunnel is None


# ---- persistence engine -------------------------------------------------------------


def test_persistence_engine_names_the_services_engine(tmp_path: Path) -> None:
    res = load_text(tmp_path, vs(" persistence_engine sip\n persistence_timeout 60"))
    assert res.config is not None and res.diagnostics == ()
    (svc,) = ipvs_configs(res.config)
    assert svc.service() == Service(VIP, "rr", m.SVC_F_PERSISTENT, 60, 32, "sip")


def test_a_long_persistence_engine_name_is_cut_like_keepalived(tmp_path: Path) -> None:
    res = load_text(tmp_path, vs(" persistence_engine abcdefghijklmnopqrstuvwxyz"))
    assert res.config is not None
    assert res.config.virtual_servers[0].persistence_engine == "abcdefghijklmno"
    assert [d.location.line for d in res.diagnostics] == [5]


def test_changing_tunnel_or_engine_on_reload_edits_in_place() -> None:
    tun = Destination(A, 1, Forwarding.TUN)
    gue = Destination(A, 1, Forwarding.TUN, 0, 0, m.TUN_TYPE_GUE, 6080, m.TUN_F_CSUM)
    old = {VIP: ServiceEntry(Service(VIP, "rr"), {A: tun})}
    new = {VIP: ServiceEntry(Service(VIP, "rr", pe_name="sip"), {A: gue})}
    assert diff(old, new) == [EditService(Service(VIP, "rr", pe_name="sip")), EditDest(VIP, gue)]
    assert diff(new, old) == [EditService(Service(VIP, "rr")), EditDest(VIP, tun)]


# ---- global_defs ------------------------------------------------------------------------


def test_global_lvs_settings(tmp_path: Path) -> None:
    head = ("global_defs {\n lvs_flush\n lvs_flush_on_stop VS\n"
            " lvs_timeouts tcp 900 udp 2678400\n}\n")
    res = load_text(tmp_path, vs(head=head))
    assert res.config is not None and res.diagnostics == (), res.diagnostics
    g = res.config.global_defs
    assert g.lvs_flush and g.lvs_flush_on_stop == "vs"
    assert g.lvs_timeouts == LvsTimeouts(tcp=900, udp=2678400)
    res = load_text(tmp_path, vs(head="global_defs {\n lvs_flush_onstop\n}\n"))
    assert res.config is not None and res.config.global_defs.lvs_flush_on_stop == "full"
    res = load_text(tmp_path, vs())
    assert res.config is not None
    g = res.config.global_defs
    assert (g.lvs_flush, g.lvs_flush_on_stop, g.lvs_timeouts) == (False, None, None)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("lvs_flush_on_stop FULL", "unknown type 'FULL'"),
        ("lvs_flush_on_stop NO", "unknown type 'NO'"),
        ("lvs_timeouts", "needs at least one of tcp, tcpfin, udp"),
        ("lvs_timeouts tcpfin 2678401", "tcpfin timeout 2678401 is outside [0, 2678400]"),
        ("lvs_timeouts tcp", "tcp timeout None is outside"),
        ("lvs_timeouts sctp 5", "unknown timeout 'sctp'"),
    ],
)
def test_bad_global_lvs_settings_refuse_the_config(
    tmp_path: Path, line: str, fragment: str
) -> None:
    res = load_text(tmp_path, vs(head=f"global_defs {{\n {line}\n}}\n"))
    assert res.config is None
    assert any(ln == 2 and fragment in msg for ln, msg in errors(res)), res.diagnostics


def test_lvs_timeout_is_unknown_as_in_keepalived(tmp_path: Path) -> None:
    res = load_text(tmp_path, vs(head="global_defs {\n lvs_timeout tcp 5\n}\n"))
    assert res.config is not None
    assert any("unknown keyword lvs_timeout" in d.message for d in res.diagnostics)


# ---- FILE_CHECK: parsing and semantics ---------------------------------------------------

TRACK = "track_file drain {\n file /tmp/x/drain\n weight -3\n}\n"


def test_file_check_parses(tmp_path: Path) -> None:
    rs = ("  FILE_CHECK {\n   track_file drain\n  }\n"
          "  FILE_CHECK {\n   track_file drain\n   weight 7 reverse\n  }")
    res = load_text(tmp_path, vs(rs=rs, head=TRACK))
    assert res.config is not None and res.diagnostics == (), res.diagnostics
    (rs_,) = res.config.virtual_servers[0].real_servers
    assert [(f.track_file, f.weight, f.reverse) for f in rs_.file_checks] == [
        ("drain", 0, False), ("drain", 7, True)]
    (svc,) = ipvs_configs(res.config)
    assert svc.real_servers[0].checked  # alpha and quorum count it as checked


@pytest.mark.parametrize(
    ("rs", "line", "fragment"),
    [
        ("  FILE_CHECK {\n   weight 5\n  }", 11, "FILE_CHECK has no track_file"),
        ("  FILE_CHECK {\n   track_file nosuch\n  }", 11, "track_file nosuch not found"),
        ("  FILE_CHECK {\n   track_file drain\n   weight 3 sideways\n  }", 13,
         "unknown option 'sideways'"),
        ("  FILE_CHECK {\n   track_file drain\n   weight 2147483648\n  }", 13,
         "weight 2147483648 is outside"),
    ],
)
def test_bad_file_checks_refuse_the_config(
    tmp_path: Path, rs: str, line: int, fragment: str
) -> None:
    res = load_text(tmp_path, vs(rs=rs, head=TRACK))
    assert res.config is None
    assert any(ln == line and fragment in msg for ln, msg in errors(res)), res.diagnostics


def test_dynamic_in_file_check_is_unknown_as_in_keepalived(tmp_path: Path) -> None:
    rs = "  FILE_CHECK {\n   track_file drain\n   dynamic\n  }"
    res = load_text(tmp_path, vs(rs=rs, head=TRACK))
    assert res.config is not None
    assert any("unknown keyword dynamic" in d.message for d in res.diagnostics)


@pytest.mark.parametrize(
    ("value", "weight", "reverse", "status"),
    [
        (0, 0, False, 0), (1, 0, False, None), (-5, 0, False, None),
        (0, 0, True, None), (3, 0, True, 0),
        (5, 10, False, 50), (5, 10, True, -50), (-2, 3, False, -6),
        (2**31 - 1, 2, False, 2**31 - 1), (-(2**31), 1, False, None), (2**30, -4, False, None),
    ],
)
def test_file_status_follows_keepalived(
    value: int, weight: int, reverse: bool, status: int | None
) -> None:
    assert file_status(value, weight, reverse) == status


def test_file_effect_uses_the_track_files_weight_when_the_check_has_none() -> None:
    files = {"t": TrackFile("t", "/x", weight=-3), "u": TrackFile("u", "/y", weight=0)}
    checks = (FileCheck("t"), FileCheck("t", weight=2, reverse=True))
    assert file_effect(checks, files, {"t": 4}) == (None, -12 - 8)
    assert file_effect((FileCheck("u"),), files, {}) == (None, 0)  # missing file: 0
    fault, delta = file_effect((FileCheck("u"), FileCheck("t")), files, {"u": 1})
    assert fault is not None and "u reads 1" in fault and delta == 0


# ---- the service: FILE_CHECK, flushes and timeouts ---------------------------------------


class GlobalKernel(FakeKernel):
    """The fake kernel with IPVS's table-wide commands."""

    def __init__(self, table: dict[ServiceKey, ServiceEntry] | None = None) -> None:
        super().__init__(table)
        self.timeouts = Timeouts(900, 120, 300)  # the kernel's defaults
        self.calls: list[str] = []

    def set_timeouts(self, timeouts: Timeouts) -> None:
        self.calls.append("timeouts")
        self.timeouts = Timeouts(*(new or old for new, old in zip(
            (timeouts.tcp, timeouts.tcpfin, timeouts.udp),
            (self.timeouts.tcp, self.timeouts.tcpfin, self.timeouts.udp), strict=True)))

    def get_timeouts(self) -> Timeouts:
        return self.timeouts

    def flush(self) -> None:
        self.calls.append("flush")
        self.table = {}


OTHER = ServiceKey.inet("198.18.5.5", 443)


def lvs_text(tmp_path: Path, globals_: str = "", rs_extra: Sequence[str] = ("", "")) -> str:
    servers = "".join(
        f" real_server {d.address} {d.port} {{\n{extra}\n{CHECK}\n }}\n"
        for d, extra in zip((A, B), rs_extra, strict=True)
    )
    return (
        f"global_defs {{\n{globals_}\n}}\n"
        f"track_file drain {{\n file {tmp_path}/drain\n weight 0\n}}\n"
        f"track_file load {{\n file {tmp_path}/load\n weight 10\n}}\n"
        "virtual_server 198.18.0.1 80 {\n lb_algo rr\n lb_kind NAT\n protocol TCP\n"
        f"{servers}}}\n"
    )


async def test_lvs_flush_and_timeouts_at_start_and_flush_on_stop(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    kernel = GlobalKernel({OTHER: ServiceEntry(Service(OTHER, "wlc"))})
    rig = Rig(kernel)
    text = lvs_text(tmp_path, " lvs_flush\n lvs_flush_on_stop\n lvs_timeouts tcp 600 udp 20")
    svc = rig.service(config(tmp_path, text))
    async with running(svc):
        assert kernel.calls == ["flush", "timeouts"]
        assert set(kernel.table) == {VIP}  # the other service was flushed away
        assert kernel.timeouts == Timeouts(600, 120, 20)  # tcpfin left as it was
        # a reload that changes the timeouts sets them again, and drops the flush on stop
        await svc.apply(config(tmp_path, lvs_text(tmp_path, " lvs_timeouts tcpfin 30")))
        assert kernel.timeouts == Timeouts(600, 30, 20)
        kernel.table[OTHER] = ServiceEntry(Service(OTHER, "wlc"))
    assert kernel.calls == ["flush", "timeouts", "timeouts"]
    assert set(kernel.table) == {OTHER}  # only our service was deleted


async def test_lvs_flush_on_stop_empties_the_whole_table(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    kernel = GlobalKernel({OTHER: ServiceEntry(Service(OTHER, "wlc"))})
    rig = Rig(kernel)
    svc = rig.service(config(tmp_path, lvs_text(tmp_path, " lvs_flush_on_stop")))
    async with running(svc):
        assert set(kernel.table) == {OTHER, VIP}  # no lvs_flush: the other one stays
        assert kernel.calls == []  # nor any timeouts
    assert kernel.calls == ["flush"] and kernel.table == {}


async def test_an_operator_drains_a_real_server_by_writing_a_file(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A (FILE_CHECK on ``drain``, weight 0) goes out when an operator writes 1 to the
    file minutes after start, and back when it is 0 again or removed; B's weight
    follows ``load`` (weight 10) on top of its probes'."""
    drain, load_ = tmp_path / "drain", tmp_path / "load"
    load_.write_text("2\n")
    rig = Rig()
    fc_a = "  FILE_CHECK {\n   track_file drain\n  }"
    fc_b = "  weight 5\n  FILE_CHECK {\n   track_file load\n  }"
    svc = rig.service(config(tmp_path, lvs_text(tmp_path, rs_extra=(fc_a, fc_b))))
    async with running(svc):
        assert rig.kernel.weights() == {A: 1, B: 25}  # no drain file reads 0: A is up
        await trio.sleep(300)
        drain.write_text("1\n")
        await at(301, svc)
        assert rig.kernel.weights() == {B: 25}
        load_.write_text("-1\n")  # 5 - 10: IPVS weight 0, still in the table
        await at(302, svc)
        assert rig.kernel.weights() == {B: 0}
        await trio.sleep(120)
        drain.write_text("0\n")
        await at(423, svc)
        assert rig.kernel.weights() == {A: 1, B: 0}
        drain.write_text("7\n")
        await at(424, svc)
        assert A not in rig.kernel.weights()
        drain.unlink()  # a deleted file reads 0
        await at(425, svc)
        assert rig.kernel.weights() == {A: 1, B: 0}
        # the probes still count: B refused is B out, whatever its file says
        rig.prober.set(B, False)
        await at(445, svc)
        assert rig.kernel.weights() == {A: 1}


async def test_a_file_that_says_down_at_start_keeps_the_server_out_from_the_first_plan(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    (tmp_path / "drain").write_text("1\n")
    rig = Rig()
    fc_a = "  FILE_CHECK {\n   track_file drain\n  }"
    svc = rig.service(config(tmp_path, lvs_text(tmp_path, rs_extra=(fc_a, ""))))
    async with running(svc):
        assert rig.kernel.weights() == {B: 1}
        assert all(A not in p.table[VIP].dests for _, p in rig.plans)
        # a reload that drops the FILE_CHECK brings A in; one that adds it back, out
        await svc.apply(config(tmp_path, lvs_text(tmp_path)))
        assert rig.kernel.weights() == {A: 1, B: 1}
        await svc.apply(config(tmp_path, lvs_text(tmp_path, rs_extra=(fc_a, ""))))
        assert rig.kernel.weights() == {B: 1}


# ---- ha_suspend -------------------------------------------------------------------------


def addr_message(mtype: int, index: int, local: str, seq: int = 0) -> bytes:
    raw = ip_address(local).packed
    family = 2 if len(raw) == 4 else 10
    attr = struct.pack("=HH", 4 + len(raw), ha.IFA_LOCAL) + raw
    body = struct.pack("=BBBBI", family, 24, 0, 0, index) + attr
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, seq, 0) + body


def test_address_messages_decode_and_count_per_interface() -> None:
    buf = (addr_message(ha.RTM_NEWADDR, 2, "198.18.0.100")
           + addr_message(ha.RTM_NEWADDR, 3, "fd00:198:18::100")
           + struct.pack("=IHHIIi", 20, ha.NLMSG_DONE, 2, 5, 0, 0))
    got = list(ha.decode(buf))
    assert got == [(ha.RTM_NEWADDR, 0, 2, ip_address("198.18.0.100")),
                   (ha.RTM_NEWADDR, 0, 3, ip_address("fd00:198:18::100")),
                   (ha.NLMSG_DONE, 5, 0, None)]
    local = ha.LocalAddresses()
    vip = ip_address("198.18.0.100")
    assert local.add(vip, 2) and not local.add(vip, 4)  # on a second interface too
    assert not local.remove(vip, 2) and vip in local  # still on the other one
    assert local.remove(vip, 4) and vip not in local


class FakeAddresses(ha.AddressWatcher):
    """The host's addresses as the test sets them (no netlink)."""

    instances: ClassVar[list[FakeAddresses]] = []

    def __init__(self, on_change: ha.AddressCallback) -> None:
        super().__init__(on_change)
        FakeAddresses.instances.append(self)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        await trio.sleep_forever()

    def set(self, address: str, present: bool) -> None:
        addr = ip_address(address)
        if present:
            self.local.add(addr, 2)
        else:
            self.local.remove(addr, 2)
        self._on_change(addr, present)


async def test_ha_suspend_rests_the_checkers_of_a_backup_director(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A backup director (VIP not on it) never probes; the VIP arriving at t=100 (it
    became MASTER) starts the probes within a delay_loop; the VIP leaving at t=200
    suspends them again, each real server keeping the state it had."""
    FakeAddresses.instances.clear()
    rig = Rig()
    text = lvs_text(tmp_path).replace(" protocol TCP\n", " protocol TCP\n ha_suspend\n")
    svc = rig.service(config(tmp_path, text), address_watcher=FakeAddresses)
    async with running(svc):
        (watcher,) = FakeAddresses.instances
        rig.prober.set(B, False)  # B is dead, but nobody looks
        await at(100, svc)
        assert rig.prober.calls == []
        assert rig.kernel.weights() == {A: 1, B: 1}  # the service stays, as in keepalived
        watcher.set("198.18.0.1", True)
        await at(112.5, svc)
        assert sorted({t for t, _ in rig.prober.calls}) and all(
            100 < t <= 110 for t, _ in rig.prober.calls[:2])
        assert rig.kernel.weights() == {A: 1}  # B's probe and two retries failed
        watcher.set("198.18.0.1", False)
        count = len(rig.prober.calls)
        rig.prober.set(B, True)  # B comes back while suspended: not seen
        await at(300, svc)
        assert len(rig.prober.calls) == count
        assert rig.kernel.weights() == {A: 1}
        watcher.set("198.18.0.1", True)
        await at(311, svc)
        assert rig.kernel.weights() == {A: 1, B: 1}


async def test_a_reload_adding_ha_suspend_suspends_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    FakeAddresses.instances.clear()
    rig = Rig()
    svc = rig.service(config(tmp_path, lvs_text(tmp_path)), address_watcher=FakeAddresses)
    async with running(svc):
        assert FakeAddresses.instances == []  # no ha_suspend: no watcher
        await at(25, svc)
        assert rig.prober.times(A)[:3] == [0, 10, 20]
        text = lvs_text(tmp_path).replace(" protocol TCP\n", " protocol TCP\n ha_suspend\n")
        await svc.apply(config(tmp_path, text))
        await at(100, svc)
        assert rig.prober.times(A)[:3] == [0, 10, 20] and len(rig.prober.times(A)) == 3
        await svc.apply(config(tmp_path, lvs_text(tmp_path)))  # dropped again: resumed
        await at(115, svc)
        assert len(rig.prober.times(A)) > 3


def test_ha_suspend_on_a_group_is_warned_about_and_cleared(tmp_path: Path) -> None:
    text = ("virtual_server_group G {\n 198.18.0.1 80\n}\n"
            "virtual_server group G {\n protocol TCP\n lb_algo rr\n lb_kind NAT\n ha_suspend\n"
            " real_server 198.18.0.2 80 {\n }\n}\n")
    res = load_text(tmp_path, text)
    assert res.config is not None
    (v,) = res.config.virtual_servers
    assert not v.ha_suspend
    assert any(d.location.line == 4 and "ha_suspend is not supported yet for virtual server"
               " groups" in d.message for d in res.diagnostics), res.diagnostics
