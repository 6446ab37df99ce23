"""What a configuration was read from, and whether reading it again could differ.

A reload of files that hold exactly what is running has nothing to apply.
These tests edit a configuration the ways operators and tools do -- one
character in an include, a file dropped into a glob's directory, a file
removed, a symlink switched, a file rewritten with the same text, a FIFO
left where a file was -- and require that only the rewrite with the same
text counts as "unchanged".
"""

from __future__ import annotations

import os
from pathlib import Path

from pyalived.config import load
from pyalived.config.lexer import Source, sources_unchanged

MAIN = """vrrp_instance VI_1 {
    interface eth0
    virtual_router_id 51
    priority 100
    virtual_ipaddress {
        198.18.0.100/24
    }
}
include extra.conf
include conf.d/*.conf
"""


def tree(tmp_path: Path) -> tuple[Path, tuple[Source, ...]]:
    main = tmp_path / "keepalived.conf"
    main.write_text(MAIN)
    (tmp_path / "extra.conf").write_text("# nothing yet\n")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("# a\n")
    res = load(str(main), config_id="me", interface_exists=lambda _n: True)
    assert res.config is not None
    return main, res.sources


def test_every_file_read_and_every_glob_is_recorded(tmp_path: Path) -> None:
    main, sources = tree(tmp_path)
    files = {s.name for s in sources if s.kind == "file"}
    assert files == {str(main), str(tmp_path / "extra.conf"), str(tmp_path / "conf.d/a.conf")}
    (glob,) = [s for s in sources if s.kind == "glob"]
    assert glob.name == str(tmp_path / "conf.d/*.conf")
    assert glob.value == (str(tmp_path / "conf.d/a.conf"),)
    assert sources_unchanged(sources)


def test_the_same_text_rewritten_is_unchanged(tmp_path: Path) -> None:
    _main, sources = tree(tmp_path)
    extra = tmp_path / "extra.conf"
    extra.write_text(extra.read_text())  # a tool rewrote it: new mtime, same text
    os.utime(extra, (1, 1))
    assert sources_unchanged(sources)


def test_one_character_in_an_include_is_a_change(tmp_path: Path) -> None:
    _main, sources = tree(tmp_path)
    (tmp_path / "extra.conf").write_text("# nothing yeT\n")
    assert not sources_unchanged(sources)


def test_a_new_or_removed_file_under_a_glob_is_a_change(tmp_path: Path) -> None:
    _main, sources = tree(tmp_path)
    (tmp_path / "conf.d" / "b.conf").write_text("# b\n")
    assert not sources_unchanged(sources)
    (tmp_path / "conf.d" / "b.conf").unlink()
    assert sources_unchanged(sources)
    (tmp_path / "conf.d" / "a.conf").unlink()
    assert not sources_unchanged(sources)


def test_a_switched_symlink_or_a_missing_file_is_a_change(tmp_path: Path) -> None:
    main = tmp_path / "keepalived.conf"
    (tmp_path / "v1.conf").write_text("# v1\n")
    (tmp_path / "v2.conf").write_text("# v2\n")
    (tmp_path / "current.conf").symlink_to(tmp_path / "v1.conf")
    main.write_text(MAIN.replace("include extra.conf\ninclude conf.d/*.conf\n",
                                 "include current.conf\n"))
    res = load(str(main), config_id="me", interface_exists=lambda _n: True)
    assert res.config is not None and sources_unchanged(res.sources)
    (tmp_path / "current.conf").unlink()
    assert not sources_unchanged(res.sources)
    (tmp_path / "current.conf").symlink_to(tmp_path / "v2.conf")
    assert not sources_unchanged(res.sources)


def test_a_fifo_where_a_file_was_is_a_change_and_never_waits(tmp_path: Path) -> None:
    _main, sources = tree(tmp_path)
    (tmp_path / "extra.conf").unlink()
    os.mkfifo(tmp_path / "extra.conf")
    assert not sources_unchanged(sources)
