"""The grader's layout holds: no import cycle among its modules, no module reaching into another's
private names, and kernel confinement (grader/kernel/) independent of the engine around it."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "grader"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_only(tree: ast.AST) -> set[int]:
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return inside


def imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for each import of a grader module in `name`, at any
    depth (a function-level import is still a dependency), except those for type checkers."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub, []) if sub in MODULES else (target, [alias.name]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return [(t, names) for t, names in found if t in MODULES and t != name and not name.startswith(t + ".")]


GRAPH = {name: {t for t, _ in imports(name)} for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found = []

    def walk(start, node, path):
        for nxt in sorted(graph[node]):
            if nxt == start:
                found.append(path)
            elif nxt not in path and nxt > start:
                walk(start, nxt, [*path, nxt])
    for name in sorted(graph):
        walk(name, name, [name])
    return found


def test_no_import_cycle():
    assert len(GRAPH) > 30 and cycles(GRAPH) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_takes_another_ones_private_names():
    taken = [f"{name} imports {t}.{n}" for name in MODULES for t, names in imports(name) for n in names
             if n.startswith("_")]
    used = []
    for name, path in MODULES.items():
        aliases = {a.asname or a.name.rpartition(".")[2]: t for t, _ in imports(name)
                   for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
                   for a in node.names if t.endswith("." + a.name) or t == a.name}
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                used.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    assert taken == [] and used == []


def test_kernel_confinement_needs_nothing_of_the_engine():
    """grader/kernel/ is used by the engine, never the other way round: it could serve another grader."""
    kernel = {name for name in MODULES if name.startswith("grader.kernel")}
    outside = {f"{name} -> {t}" for name in kernel for t in GRAPH[name] if t not in kernel and t != "grader"}
    assert kernel and outside == set()
