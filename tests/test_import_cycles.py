"""pruning/ has no import cycles: every module's imports (top-level and deferred ones inside
functions alike, relative or `tierserve.pruning.*`) form a directed acyclic graph.

Parsed with ast, so nothing is imported and the test takes milliseconds."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = "tierserve.pruning"
ROOT = Path(__file__).resolve().parents[1] / "pruning"
# Cycles a colleague is still breaking, as sorted module tuples; empty once every cycle is gone.
KNOWN: frozenset[tuple[str, ...]] = frozenset()


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "__init__"


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    """Modules of pruning/ named by one `from ... import ...` inside module `mod`."""
    if node.level == 0:
        if not (node.module or "").startswith(PKG + "."):
            return []
        base = node.module[len(PKG) + 1:]
    else:
        here = mod.split(".") if mod != "__init__" else []
        package = here if is_pkg else here[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    # `from .x import y` may import submodule x.y
    return [base, *(f"{base}.{a.name}" if base else a.name for a in node.names)]


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(mod, is_pkg, node)
            elif isinstance(node, ast.Import):
                targets = [a.name[len(PKG) + 1:] for a in node.names
                           if a.name.startswith(PKG + ".")]
            else:
                continue
            graph[mod].update(t for t in targets if t in files and t != mod)
    return graph


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


def test_the_graph_sees_relative_and_deferred_imports():
    g = import_graph()
    assert "spec" in g["job"]  # top-level `from .spec import ...`
    assert "pipeline" in g["job"]  # deferred `from .pipeline import run_pipeline` in a function


def test_pruning_has_no_import_cycles():
    found = cycles(import_graph())
    assert found <= KNOWN, f"import cycles in pruning/: {sorted(found - KNOWN)}"
