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
            assert [r.argv[0] for r in rig.scripts.runs] == expected
