"""No import cycles in splitinfer/: the module import graph, read statically (ast) from the source.

Every `import` counts, also those inside functions: a lazy import hides a cycle from Python's loader,
not from a reader, who still has to hold both modules in their head to follow either. `from pkg import
name` is an edge to `pkg.name` when that is a module, else to `pkg` (its __init__), so a module that
imports a sibling through its package's __init__ (which imports the module back) is a cycle too.
Imports under `if TYPE_CHECKING:` are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "splitinfer"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under root (a package's name is its __init__)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str | None:
    if not node.level:
        return node.module
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its source)."""
    names = module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in names}
    for module, path in names.items():
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(module, path, node)
                if base is None:
                    continue
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names]
            for target in targets:
                while target and target not in names:  # `import a.b.c` where c is an attribute
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles in splitinfer/ (break each, e.g. by moving the shared part down):\n" + \
        "\n".join(" <-> ".join(c) for c in found)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize("files, expected", [
    # run <-> search, one side importing inside a function (the old splitinfer.run <-> search)
    ({"pkg/__init__.py": "", "pkg/run.py": "from pkg.search import Callback\n",
      "pkg/search.py": "def f():\n    from pkg.run import _exit\n"}, [["pkg.run", "pkg.search"]]),
    # three modules in a ring, relative imports (the old models adapters -> loading -> partition)
    ({"pkg/__init__.py": "", "pkg/m/__init__.py": "", "pkg/m/a.py": "from .b import x\n",
      "pkg/m/b.py": "from . import c\n", "pkg/m/c.py": "def g():\n    from pkg.m.a import y\n"},
     [["pkg.m.a", "pkg.m.b", "pkg.m.c"]]),
    # a module importing a sibling through its package __init__, which imports the module
    ({"pkg/__init__.py": "", "pkg/c/__init__.py": "from pkg.c.a import A\n", "pkg/c/a.py": "from pkg.c import B\n"},
     [["pkg.c", "pkg.c.a"]]),
    # one-way imports and TYPE_CHECKING-only back-references are not cycles
    ({"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n",
      "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n"}, []),
])
def test_the_graph_finds_cycles_of_each_kind(tmp_path, files, expected):
    assert cycles(import_graph(_write(tmp_path, files))) == expected


# The re-export shim splitinfer.generation is public API (README, docs/API.md) for users; the package imports
# the real modules.
def test_the_package_does_not_import_its_own_shim():
    users = {m for m, targets in import_graph().items() if "splitinfer.generation" in targets}
    assert not users, f"import splitinfer.split, not the splitinfer.generation shim, in {users}"
