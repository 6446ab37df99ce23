"""The checker half's notify FIFO lines: real server and quorum changes, keepalived's format."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from tests.unit.test_alerts import Reader
from tests.unit.test_lvs_service import A, B, Rig, at, config, rs_block, running, vs_text


def fifo_config(tmp_path: Path, vs: str = "", extra: str = "") -> str:
    text = vs_text(rs_block(A), rs_block(B), vs=vs)
    return text.replace(
        "global_defs {\n",
        f"global_defs {{\n notify_fifo {tmp_path}/all\n lvs_notify_fifo {tmp_path}/lvs\n"
        f" vrrp_notify_fifo {tmp_path}/vrrp\n{extra}", 1)


async def test_real_server_and_quorum_lines(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    rig = Rig()
    conf = config(tmp_path, fifo_config(tmp_path, vs=" quorum 2"))
    svc = rig.service(conf, alerts=True, vrrp_running=True)
    async with trio.open_nursery() as outer:
        async with running(svc):
            readers = [Reader(tmp_path / "all"), Reader(tmp_path / "lvs")]
            assert not (tmp_path / "vrrp").exists()  # the VRRP half's, not opened here
            await trio.sleep_until(15)
            rig.prober.set(B, False)
            await at(22.5, svc)
            rig.prober.set(B, True)
            await at(32.5, svc)
        outer.cancel_scope.cancel()
    for reader in readers:
        assert reader.lines() == [
            "VS [198.18.0.1]:tcp:80 UP",  # at start, as keepalived
            "RS [198.18.0.3]:tcp:80 [198.18.0.1]:tcp:80 DOWN",
            "VS [198.18.0.1]:tcp:80 DOWN",
            "RS [198.18.0.3]:tcp:80 [198.18.0.1]:tcp:80 UP",
            "VS [198.18.0.1]:tcp:80 UP",
        ]
        reader.close()


async def test_the_shared_fifo_script_is_the_checker_half_s_only_without_vrrp(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    extra = " notify_fifo_script /bin/all-reader\n lvs_notify_fifo_script /bin/lvs-reader\n"
    conf = config(tmp_path, fifo_config(tmp_path, extra=extra))
    for vrrp_running, expected in ((True, ["/bin/lvs-reader"]),
                                   (False, ["/bin/all-reader", "/bin/lvs-reader"])):
        rig = Rig()
        rig.scripts.durations = {"/bin/all-reader": 1e9, "/bin/lvs-reader": 1e9}
        svc = rig.service(conf, alerts=True, vrrp_running=vrrp_running)
        async with running(svc):
            await trio.sleep(1)
            assert sorted(r.argv[0] for r in rig.scripts.runs) == expected


async def test_checker_mail_alerts_as_keepalived_sends_them(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """No global smtp_alert*: real servers alert by default, virtual servers only with their
    own smtp_alert (keepalived 2.2.7, seen with a mail server)."""
    from pyalived.alerts import LvsAlerts
    from tests.unit.test_alerts import Sink

    text = vs_text(rs_block(A), rs_block(B, extra="  smtp_alert off"), vs=" quorum 2\n smtp_alert")
    text = text.replace("global_defs {\n", "global_defs {\n router_id lb1\n smtp_server "
                        "198.18.0.25\n notification_email {\n  ops@example.org\n }\n", 1)
    conf = config(tmp_path, text)
    rig = Rig()
    sink = Sink()
    alerts = LvsAlerts(conf, rig.scripts, vrrp_running=True, deliver=sink, hostname="vm")
    svc = rig.service(conf, alerts=alerts)
    async with running(svc):
        await trio.sleep_until(15)
        rig.prober.set(A, False)
        rig.prober.set(B, False)
        await at(22.5, svc)
        rig.prober.set(A, True)
        rig.prober.set(B, True)
        await at(32.5, svc)
    vs = "[198.18.0.1]:tcp:80"
    assert sink.subjects() == [
        f"[lb1] Virtualserver {vs} - UP",
        f"[lb1] Realserver [198.18.0.2]:tcp:80 of virtual server {vs} - DOWN",
        f"[lb1] Virtualserver {vs} - DOWN",
        f"[lb1] Realserver [198.18.0.2]:tcp:80 of virtual server {vs} - UP",
        f"[lb1] Virtualserver {vs} - UP",
    ]
    bodies = [d.split(b"\r\n\r\n")[1].split(b"\r\n")[0].decode() for _, d in sink.mails]
    assert bodies == [
        "=> Starting with quorum up 2+0=2 <= 2 <=",
        "=> TCP CHECK failed on service <=",
        "=> Lost quorum 2+0=2 <= 0 <=",
        "=> TCP CHECK succeed on service <=",
        "=> Gained quorum 2+0=2 <= 2 <=",
    ]
    assert [t for t, _ in sink.mails] == [0, 22, 22, 32, 32]


def test_checker_alert_defaults() -> None:
    from pyalived.alerts import checker_alert_defaults
    from pyalived.config.model import GlobalDefs

    assert checker_alert_defaults(GlobalDefs()) == (False, True)
    assert checker_alert_defaults(GlobalDefs(smtp_alert=True)) == (True, True)
    assert checker_alert_defaults(GlobalDefs(smtp_alert=False)) == (False, False)
    assert checker_alert_defaults(GlobalDefs(smtp_alert=True, smtp_alert_checker=False)) == (
        False, False)
    assert checker_alert_defaults(GlobalDefs(smtp_alert_vrrp=True)) == (False, True)
