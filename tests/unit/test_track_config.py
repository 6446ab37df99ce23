"""track_file / vrrp_track_process blocks and their references: parsing and diagnostics."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyalived.config.diagnostics import Severity
from pyalived.config.model import ParamMatch, TrackFile, TrackProcess
from pyalived.reload import plan_reload
from pyalived.vrrp.compile import build_tracking
from tests.unit.test_parser import messages, only_config, run

DEFS = """\
track_file drain {
    file "/run/lb/drain state"
    weight -10 reverse
    init_file 5 overwrite
}
vrrp_track_file old_style {
    file /run/lb/old
}
vrrp_track_process nginx {
    process nginx
    weight 20
    quorum 2
    quorum_max 4
    delay 0.5
    fork_delay 0.25
}
track_process worker {
    process /usr/bin/python3 -m "my worker"
    param_match initial
    full_command
    weight 5 reverse
    terminate_delay 2
}
"""

INSTANCE = """\
vrrp_instance VI_1 {{
    interface eth0
    virtual_router_id 51
    priority {prio}
    virtual_ipaddress {{
        198.18.0.100
    }}
{body}}}
"""


def conf(body: str = "", prio: int = 100, extra: str = "") -> str:
    return DEFS + extra + INSTANCE.format(body=body, prio=prio)


def test_definitions_land_in_the_model(tmp_path: Path) -> None:
    res = run(tmp_path, conf())
    config = only_config(res)
    # keepalived 2.2.7 reads the old spelling without a -t warning: a notice, exit 0
    assert messages(res) == [
        (Severity.NOTICE, 6, "vrrp_track_file is deprecated; write track_file")
    ]
    assert res.exit_code == 0
    drain, old = config.track_files
    assert (drain.name, drain.file, drain.weight, drain.reverse) == (
        "drain", "/run/lb/drain state", -10, True)
    assert (drain.init_value, drain.init_overwrite) == (5, True)
    assert old == TrackFile("old_style", "/run/lb/old", location=old.location)
    assert old.weight == 1 and old.init_value is None
    nginx, worker = config.track_processes
    assert nginx == TrackProcess("nginx", "nginx", quorum=2, quorum_max=4, weight=20,
                                 fork_delay=0.25, terminate_delay=0.5, location=nginx.location)
    assert worker.process == "/usr/bin/python3"
    assert worker.params == ("-m", "my worker")
    assert worker.param_match is ParamMatch.INITIAL
    assert (worker.full_command, worker.weight, worker.reverse) == (True, 5, True)
    assert (worker.terminate_delay, worker.fork_delay, worker.quorum_max) == (2.0, 0.0, None)


def test_parameters_without_param_match_match_exactly(tmp_path: Path) -> None:
    text = "vrrp_track_process p {\n process sleep 10\n}\n" \
           "vrrp_track_process q {\n process sleep\n param_match partial\n}\n"
    p, q = only_config(run(tmp_path, text)).track_processes
    assert p.param_match is ParamMatch.EXACT and p.params == ("10",)
    assert q.param_match is ParamMatch.PARTIAL and q.params == ()


def test_references_resolve_their_weights(tmp_path: Path) -> None:
    body = ("    track_file {\n        drain\n        old_style weight 7 reverse\n    }\n"
            "    track_process {\n        nginx weight -3\n        worker\n    }\n")
    config = only_config(run(tmp_path, conf(body)))
    inst = config.vrrp_instances[0]
    assert [(r.name, r.weight, r.reverse) for r in inst.track_file] == [
        ("drain", -10, True), ("old_style", 7, True)]
    assert [(r.name, r.weight, r.reverse) for r in inst.track_process] == [
        ("nginx", -3, False), ("worker", 5, True)]
    tracking = build_tracking(config, inst)
    assert tracking.file_names == ("drain", "old_style")
    assert tracking.process_names == ("nginx", "worker")


def test_sync_group_members_and_owners_ignore_their_weighted_references(
        tmp_path: Path) -> None:
    """As keepalived 2.2.7: "(VI_1) ignoring tracked file tf1 with weight 10 due to
    address_owner" (or SYNC group); weight 0 references stay, and the group's own
    references apply to the members with their weights."""
    group = ("vrrp_sync_group G {\n    group {\n        VI_1\n    }\n"
             "    track_file {\n        old_style\n    }\n}\n")
    body = "    track_process {\n        nginx weight 4\n        worker weight 0\n    }\n"
    res = run(tmp_path, conf(body, extra=group))
    config = only_config(res)
    inst = config.vrrp_instances[0]
    assert [(r.name, r.weight) for r in inst.track_process] == [("worker", 0)]
    assert [(r.name, r.weight) for r in config.vrrp_sync_groups[0].track_file] == [
        ("old_style", 1)]
    assert (Severity.WARNING, 40, "(VI_1) ignoring tracked process nginx with weight 4 "
            "since the instance is in a sync group") in messages(res)
    tracking = build_tracking(config, inst)
    assert tracking.file_names == ("old_style",) and tracking.process_names == ("worker",)
    res = run(tmp_path, conf("    track_file {\n        drain weight 3\n    }\n", prio=255))
    assert only_config(res).vrrp_instances[0].track_file == ()
    assert any("since the instance is the address owner" in msg for _, _, msg in messages(res))


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (conf("    track_file {\n        nosuch\n    }\n"), 32,
         "track_file nosuch: no track_file of that name"),
        (conf("    track_process {\n        nosuch\n    }\n"), 32,
         "track_process nosuch: no vrrp_track_process of that name"),
        (conf("    track_file {\n        drain weight 255\n    }\n"), 32,
         "weight 255 is outside [-254, 254]"),
        (conf("    track_file {\n        drain weight x\n    }\n"), 32, "not a whole number"),
        (conf("    track_process {\n        nginx bogus\n    }\n"), 32, "unknown option 'bogus'"),
        ("track_file t {\n weight 3\n}\n", 1, "track_file t has no file"),
        ("track_file t {\n file /x\n init_file abc\n}\n", 3, "init_file: unknown option 'abc'"),
        ("track_file t {\n file /x\n weight -255\n}\n", 3, "outside [-254, 254]"),
        ("vrrp_track_process p {\n weight 2\n}\n", 1, "vrrp_track_process p has no process"),
        ("vrrp_track_process p {\n process a\n param_match bogus\n}\n", 3,
         "param_match must be exact, partial or initial"),
        ("vrrp_track_process p {\n process a\n quorum 0\n}\n", 3, "quorum 0 is outside"),
        ("vrrp_track_process p {\n process a\n quorum 5\n quorum_max 2\n}\n", 1,
         "quorum_max 2 is less than quorum 5"),
        ("vrrp_track_process p {\n process a\n delay 0\n}\n", 3, "delay 0 is outside"),
        ("vrrp_track_process p {\n process a\n fork_delay 3601\n}\n", 3, "fork_delay 3601"),
        ("track_file t {\n file /x\n}\ntrack_file t {\n file /y\n}\n", 4, "already defined"),
    ],
)
def test_errors_refuse_the_config(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    res = run(tmp_path, text)
    assert res.config is None
    errors = [(ln, msg) for sev, ln, msg in messages(res) if sev is Severity.ERROR]
    assert any(ln == line and fragment in msg for ln, msg in errors), errors


def test_no_longer_reported_as_unsupported(tmp_path: Path) -> None:
    body = "    track_file {\n        drain\n    }\n    track_process {\n        nginx\n    }\n"
    res = run(tmp_path, conf(body))
    assert not [m for m in messages(res) if "not supported" in m[2]]


def test_reload_changes_tracking_in_place(tmp_path: Path) -> None:
    old = only_config(run(tmp_path, conf("    track_file {\n        drain\n    }\n")))
    new = only_config(run(tmp_path, conf("    track_file {\n        drain weight 3\n    }\n")))
    plan = plan_reload(old, new)
    (update,) = plan.updated
    assert "tracking" in update.changed
    assert not update.restart
    # Redefining the file is a tracking change too.
    newer = only_config(run(tmp_path, conf("    track_file {\n        drain\n    }\n").replace(
        "init_file 5 overwrite", "init_file 6")))
    (update,) = plan_reload(old, newer).updated
    assert update.changed == {"tracking"} and not update.restart  # the definition only
    same = only_config(run(tmp_path, "\n\n" + conf("    track_file {\n        drain\n    }\n")))
    assert plan_reload(old, same).empty
