"""Imports inside splitinfer.codecs point one way: no module reaches itself through its imports."""

from __future__ import annotations

import ast
from pathlib import Path

import splitinfer.codecs

PKG = "splitinfer.codecs"
ROOT = Path(splitinfer.codecs.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every splitinfer.codecs module `path` imports, at module level or inside a function (a lazy
    import is still an edge: the base -> encoded -> framing -> base cycle went through one)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PKG):
            if node.module == PKG:  # from splitinfer.codecs import rans (a submodule) or build_codec (__init__)
                for a in node.names:
                    out.add(f"{PKG}.{a.name}" if (ROOT / f"{a.name}.py").exists() else PKG)
            else:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith(PKG)}
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in ROOT.glob("*.py"):
        if path.name != "__init__.py":
            graph[f"{PKG}.{path.stem}"] = _imports(path)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_within_the_codecs_package():
    graph = _graph()
    assert len(graph) >= 20 and f"{PKG}.base" in graph[f"{PKG}.pipeline"]  # the parse sees the real edges
    assert PKG not in set().union(*graph.values()), "a codecs module imports the package itself (a cycle via __init__)"
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
