"""No import cycles in chaosbus's packages: libs/chaosbus and every service.

The import graph is read from the source with ``ast``, without importing anything:
an edge for every ``import`` and ``from ... import`` at any depth of a module
(a function-level import is a cycle put off, not removed), except those under
``if TYPE_CHECKING:``, which never run. ``from package import name`` points at the
submodule when ``name`` is one, at the package otherwise. A cycle is a strongly
connected set of modules: each can be reached from every other.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

TREE = Path(__file__).resolve().parents[2]
# Where each top-level package lives: chaosbus in libs/, each service in services/.
SOURCE_ROOTS = [TREE / "libs", TREE / "services"]

# Cycles allowed to remain while they are being removed: none now.
KNOWN_CYCLES: list[frozenset[str]] = []


def modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    found: dict[str, Path] = {}
    for root in SOURCE_ROOTS:
        for init in sorted(root.glob("*/__init__.py")):
            for path in sorted(init.parent.rglob("*.py")):
                parts = list(path.relative_to(root).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules that ``name`` (at ``path``) imports."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                if node.module:
                    base = [*base, *node.module.split(".")]
                module = ".".join(base)
            else:
                module = node.module or ""
            targets = []
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.append(sub if sub in known else module)
        for target in targets:
            # "import a.b.c" runs a.b.c; the nearest module of ours it names is the edge.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


@functools.cache  # parsed once for the tests below, which only read it
def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected sets of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                members.add(top)
                if top == node:
                    break
            if len(members) > 1:
                found.append(frozenset(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(found: list[frozenset[str]]) -> str:
    return "; ".join(" <-> ".join(sorted(c)) for c in sorted(found, key=sorted))


# --- the walker itself --------------------------------------------------------------------


def test_the_walker_sees_every_package_and_their_imports() -> None:
    graph = import_graph()
    tops = {name.split(".")[0] for name in graph}
    assert {"chaosbus", "chaosfs", "chaosctl", "injector", "controller"} <= tops
    assert "chaosbus.rules" in graph["chaosfs.faults"]  # from chaosbus.rules import ...
    assert "chaosfs.inodes" in graph["chaosfs.faults"]  # from .inodes import ...


def test_cycles_are_found_and_type_checking_imports_ignored() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\nimport y\n"
    names = [a.name for node in _imports(ast.parse(source)) for a in node.names]
    assert names == ["TYPE_CHECKING", "y"]


# --- the project -----------------------------------------------------------------------------


def test_no_new_import_cycles() -> None:
    """Whatever is still to be removed, no cycle beyond the known ones appears."""
    new = [c for c in cycles(import_graph()) if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, f"import cycles: {describe(new)}"


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, f"import cycles: {describe(found)}"
