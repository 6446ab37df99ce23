"""Keyword tables and value readers: the structure of the config parser and its readers."""

from __future__ import annotations

import ast
import gc
from pathlib import Path
from typing import Any

import pytest

import pyalived.config
from pyalived.config import Severity, load, lvs_parse, vrrp_parse
from pyalived.config.diagnostics import DiagnosticSink
from pyalived.config.keywords import Block, Keywords, field, user_fields
from pyalived.config.model import InitialState
from pyalived.config.tree import Node
from pyalived.config.values import ValueReader, float_in, int_in, one_of

CONFIG_DIR = Path(pyalived.config.__file__).parent


def config_imports(module: str) -> set[str]:
    """The modules of ``pyalived.config`` that ``module`` imports."""
    tree = ast.parse((CONFIG_DIR / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("pyalived.config."):
                out.add(node.module.removeprefix("pyalived.config."))
            elif node.module == "pyalived.config":
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(
                a.name.removeprefix("pyalived.config.")
                for a in node.names
                if a.name.startswith("pyalived.config.")
            )
    return out


def test_the_config_modules_import_no_cycle() -> None:
    modules = {p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__"}
    graph = {m: config_imports(m) & modules for m in modules}
    assert "lvs_parse" not in graph["vrrp_parse"]
    assert "vrrp_parse" not in graph["lvs_parse"]
    assert not graph["values"] & {"parser", "vrrp_parse", "lvs_parse", "keywords"}
    assert not graph["keywords"] & {"parser", "vrrp_parse", "lvs_parse"}
    done: set[str] = set()

    def visit(m: str, path: tuple[str, ...]) -> None:
        assert m not in path, f"import cycle: {' -> '.join((*path, m))}"
        if m in done:
            return
        for dep in graph[m]:
            visit(dep, (*path, m))
        done.add(m)

    for m in sorted(modules):
        visit(m, ())


TABLES: list[Keywords[Any]] = [
    vrrp_parse._GLOBAL_DEFS,
    vrrp_parse._VRRP_SCRIPT,
    vrrp_parse._AUTHENTICATION,
    vrrp_parse._INSTANCE,
    vrrp_parse._SYNC_GROUP,
    lvs_parse._VIRTUAL_SERVER,
    lvs_parse._REAL_SERVER,
    lvs_parse._URL,
]


@pytest.mark.parametrize("table", TABLES)
def test_a_handled_keyword_is_never_listed_as_unsupported(table: Keywords[Any]) -> None:
    assert table.handlers and not set(table.handlers) & table.unsupported


def reader() -> ValueReader:
    return ValueReader(DiagnosticSink(), lambda _name: True)


def node(name: str, *values: str, block: bool = False) -> Node:
    return Node(name, values, "k.conf", 7, children=() if block else None)


def messages(r: ValueReader) -> list[str]:
    return [str(d) for d in r.sink.items]


def test_range_readers() -> None:
    r = reader()
    assert int_in(1, 255)(r, node("priority", "255")) == 255
    assert int_in(1, 255)(r, node("priority", "256")) is None
    assert int_in(1, 255)(r, node("priority", "x")) is None
    assert float_in(0.001, 255)(r, node("advert_int", "0")) is None
    assert float_in(0, 1)(r, node("garp", "nan")) is None
    assert float_in(0, 1)(r, node("garp", "0.5", "extra")) == 0.5
    assert messages(r) == [
        "k.conf:7: error: priority 256 is outside [1, 255]",
        "k.conf:7: error: priority: 'x' is not a whole number",
        "k.conf:7: error: advert_int 0 is outside [0.001, 255]",
        "k.conf:7: error: garp: 'nan' is not a number",
        "k.conf:7: warning: garp: extra words ignored: extra",
    ]


def test_one_of_upper_cases_and_names_the_choices() -> None:
    r = reader()
    read = one_of({s.value: s for s in InitialState}, "state must be MASTER or BACKUP")
    assert read(r, node("state", "backup")) is InitialState.BACKUP
    assert read(r, node("state", "slave")) is None
    assert read(r, node("state")) is None
    assert messages(r) == [
        "k.conf:7: error: state must be MASTER or BACKUP, not slave",
        "k.conf:7: error: state needs a value",
    ]


def test_field_keeps_or_unsets_the_value_on_a_bad_line() -> None:
    r = reader()
    keep = Block(r, "test")
    table = Keywords[Block](
        {
            "n": field("n", int_in(0, 9)),
            "path": field("path", ValueReader.one, unset_on_error=True),
            "user": user_fields("user", "group"),
        },
        frozenset({"later"}),
    )
    table.run(
        keep,
        [
            node("n", "3"),
            node("n", "10"),
            node("path", "/a"),
            node("path"),
            node("user", "root"),
            node("later"),
            node("what", block=True),
        ],
    )
    assert keep.fields == {"n": 3, "path": None, "user": "root", "group": None}
    assert messages(r) == [
        "k.conf:7: error: n 10 is outside [0, 9]",
        "k.conf:7: error: path needs a value",
        "k.conf:7: warning: keyword later is not supported yet",
        "k.conf:7: warning: unknown keyword what in test; block skipped",
    ]


def test_a_keyword_given_twice_keeps_its_last_good_value(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text(
        "vrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 1\n  nopreempt\n"
        "  preempt\n  advert_int 3\n  advert_int 2\n"
        "  virtual_ipaddress {\n    198.18.0.1\n  }\n}\n"
    )
    res = load(str(conf), config_id="me", interface_exists=lambda _n: True)
    assert res.config is not None and not res.diagnostics
    (inst,) = res.config.vrrp_instances
    assert inst.nopreempt is False and inst.advert_int == 2


def test_a_load_leaves_no_reference_cycle(tmp_path: Path) -> None:
    """What a load builds is freed by reference counting alone once unused."""
    conf = tmp_path / "k.conf"
    conf.write_text(
        "vrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 1\n"
        "  virtual_ipaddress {\n    198.18.0.1\n  }\n}\n"
        "virtual_server 198.18.1.1 80 {\n  lb_algo rr\n  lb_kind NAT\n  protocol TCP\n"
        "  real_server 198.19.0.1 80 {\n    TCP_CHECK {\n      connect_timeout 3\n    }\n  }\n}\n"
    )
    gc.collect()
    gc.disable()
    try:
        res = load(str(conf), config_id="me", interface_exists=lambda _n: True)
        assert res.config is not None
        assert all(d.severity is Severity.WARNING for d in res.diagnostics)
        del res
        assert gc.collect() == 0
    finally:
        gc.enable()
