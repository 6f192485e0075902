"""No import cycles anywhere in the project, and no private name imported across its modules.

Every module of tierserve/, operator/, pruning/ and serving/ (the import packages tierserve,
tierserve.operator, tierserve.pruning, tierserve.serving) and every script of benchmarks/ (which
import each other by bare name, their folder on sys.path) is a node; its imports are edges:
relative ones, `tierserve.*` ones, and for benchmarks/ the sibling scripts. Imports inside
functions count too; those under `if TYPE_CHECKING:` do not (they never run).

Parsed with ast, so nothing is imported and the test takes milliseconds."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> import package (pyproject.toml's package-dir); benchmarks/ are scripts
PACKAGES = {"tierserve": "tierserve", "operator": "tierserve.operator",
            "pruning": "tierserve.pruning", "serving": "tierserve.serving"}
SCRIPTS = "benchmarks"
# Cycles a colleague is still breaking, as sorted module tuples; empty once every cycle is gone.
KNOWN_CYCLES: frozenset[tuple[str, ...]] = frozenset()
# (importing module, imported module, private name) still imported across modules: each waits on
# its owner making the name public; empty once they have.
KNOWN_PRIVATE: frozenset[tuple[str, str, str]] = frozenset()


@functools.cache
def project_files() -> dict[str, Path]:
    """Module name -> file, for every module of the packages and every benchmark script."""
    files: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            files[".".join([package, *(p for p in parts if p != "__init__")])] = path
    for path in (ROOT / SCRIPTS).glob("*.py"):
        files[f"{SCRIPTS}.{path.stem}"] = path
    return files


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under `node`, at any depth, except in `if TYPE_CHECKING:` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _imports(ast.Module(body=[stmt], type_ignores=[]))
        else:
            yield from _imports(child)


def _absolute(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The module a `from ... import` names, made absolute (`from . import x`: the package)."""
    if node.level == 0:
        return node.module or ""
    package = mod.split(".") if is_pkg else mod.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def _targets(mod: str, is_pkg: bool, node: ast.Import | ast.ImportFrom,
             scripts: set[str]) -> list[tuple[str, list[str]]]:
    """(candidate module, names imported from it) per module one import statement may load."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        if mod.startswith(SCRIPTS + "."):
            names += [f"{SCRIPTS}.{n}" for n in names if n in scripts]
        return [(n, []) for n in names]
    base = _absolute(mod, is_pkg, node)
    if mod.startswith(SCRIPTS + ".") and node.level == 0 and base in scripts:
        base = f"{SCRIPTS}.{base}"
    imported = [a.name for a in node.names]
    # `from .x import y` may import submodule x.y; `from . import y` names only submodules
    out = [(base, imported)] if node.module else []
    return out + [(f"{base}.{n}" if base else n, []) for n in imported]


def import_graph() -> dict[str, set[str]]:
    files = project_files()
    scripts = {m.split(".", 1)[1] for m in files if m.startswith(SCRIPTS + ".")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        for node in _imports(_tree(path)):
            for target, _ in _targets(mod, path.name == "__init__.py", node, scripts):
                if target in files and target != mod:
                    graph[mod].add(target)
    return graph


def private_imports() -> set[tuple[str, str, str]]:
    """(importing module, project module, name) for every `from M import _name` across modules."""
    files = project_files()
    scripts = {m.split(".", 1)[1] for m in files if m.startswith(SCRIPTS + ".")}
    found: set[tuple[str, str, str]] = set()
    for mod, path in files.items():
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.ImportFrom):
                continue
            for target, names in _targets(mod, path.name == "__init__.py", node, scripts):
                if target in files and target != mod:
                    found |= {(mod, target, n) for n in names
                              if n.startswith("_") and not n.startswith("__")}
    return found


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Strongly connected components with more than one module (Tarjan), as sorted tuples."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}
    assert cycles({"a": {"b"}, "b": set()}) == set()


def test_the_graph_sees_every_kind_of_import():
    g = import_graph()
    job = g["tierserve.pruning.job"]
    assert "tierserve.pruning.spec" in job  # top-level `from .spec import ...`
    assert "tierserve.pruning.pipeline" in job  # deferred, inside a function
    assert "tierserve.serving.call" in g["tierserve.serving.router"]
    assert "tierserve.pruning.spec" in g["tierserve.serving.router"]  # `from tierserve.x import`
    assert "benchmarks.harness" in g["benchmarks.pruning"]  # a sibling script, by bare name
    assert "benchmarks.decoder" in g["benchmarks.frontier_generation"]  # `import decoder`
    assert "tierserve.pruning.adapters.base" not in g["tierserve.pruning.surgery"]  # TYPE_CHECKING


def test_the_graph_finds_the_cycles_this_test_guards_against():
    """`if TYPE_CHECKING:` bodies are skipped (their `else:` is not); two scripts importing each
    other are a cycle."""
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import late\nelse:\n    import now\n"
    assert [n.names[0].name for n in _imports(ast.parse(src))] == ["TYPE_CHECKING", "now"]
    assert cycles({"benchmarks.frontier": {"benchmarks.frontier_generation"},
                   "benchmarks.frontier_generation": {"benchmarks.frontier"}})


def test_no_import_cycles_anywhere():
    found = cycles(import_graph())
    assert found <= KNOWN_CYCLES, f"import cycles: {sorted(found - KNOWN_CYCLES)}"


def test_no_private_name_is_imported_across_modules():
    found = private_imports()
    new = sorted(found - KNOWN_PRIVATE)
    assert not new, f"private names imported across modules (make them public or move them): {new}"
    assert not KNOWN_PRIVATE - found, f"fixed, drop from KNOWN_PRIVATE: {KNOWN_PRIVATE - found}"
