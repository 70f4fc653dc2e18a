"""The engine's shortcut for directories no rule reaches must never hide a match.

``FaultEngine.below`` skips path matching under a directory when no rule's glob,
up to its first wildcard, can lead there. Checked here against the glob itself,
for every child of every directory of a small real tree and globs chosen to be
awkward (``dir/**`` also covers ``dir``; wildcards in the first segment; a glob
naming a file exactly; character classes).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chaosbus.rules import FaultRule
from chaosfs.faults import FaultEngine
from chaosfs.inodes import InodeTable

DIRS = ["a", "a/b", "a/b/c", "ab", "abc", "x", "x/a", "nomatch-1"]
NAMES = ["a", "b", "c", "f", "ab", "f.log", "nomatch-1"]
GLOBS = [
    "**", "a/**", "a", "a/b", "a/b/**", "ab/**", "a*/f", "*/b/*", "**/f.log", "a/**/f",
    "[ax]/a", "x/a/**", "nomatch-1/**", "nomatch-2/**", "a/b/c/f", "?b*/**", "abc",
]  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> tuple[InodeTable, dict[str, object]]:
    for d in DIRS:
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    table = InodeTable(os.open(tmp_path, os.O_PATH | os.O_DIRECTORY))
    nodes: dict[str, object] = {"": table.root}
    for d in DIRS:  # parents come first in DIRS
        parent, _, name = d.rpartition("/")
        st = os.stat(tmp_path / d, follow_symlinks=False)
        nodes[d] = table.attach(nodes[parent], name.encode(), st)  # type: ignore[arg-type]
    return table, nodes


@pytest.mark.parametrize("glob", GLOBS)
def test_the_shortcut_agrees_with_the_glob_everywhere(tree, glob):
    table, nodes = tree
    engine = FaultEngine(table)
    rule = FaultRule.from_wire({"id": "r", "action": "errno", "errno": "EIO", "path": glob})
    engine.set_rules([rule])
    for directory, node in nodes.items():
        for name in NAMES:
            child = f"{directory}/{name}" if directory else name
            expected = rule.path_regex.match(child) is not None
            got = engine.for_path("unlink", node, name.encode()) is not None  # type: ignore[arg-type]
            assert got == expected, (glob, child)
    table.close_all()
