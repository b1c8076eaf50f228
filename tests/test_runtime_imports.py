"""The runtime package needs none of the test harness's dependencies: no `splitinfer` module imports
hypothesis, psutil or `splitinfer_testing` (the harness, installed with the `dev` extra), at the top or
inside a function, and every `splitinfer` module imports in a process where they cannot be found."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import splitinfer

PACKAGE = Path(splitinfer.__file__).parent
TEST_ONLY = ("hypothesis", "psutil", "splitinfer_testing")


def _imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):  # every import, lazy ones inside functions included
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def test_no_runtime_module_imports_a_test_only_package():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, name in _imported_names(ast.parse(path.read_text(), str(path))):
            if name.split(".")[0] in TEST_ONLY:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not found, found


def test_the_ast_check_sees_a_lazy_import():  # the check above can fail: it finds imports in functions
    tree = ast.parse("def f():\n    import psutil\n    from hypothesis import given\n")
    assert [n for _, n in _imported_names(tree)] == ["psutil", "hypothesis"]


# Refuses the test-only packages when a splitinfer module asks for them (a third-party dependency may
# import psutil itself), then imports every splitinfer module (but __main__, which runs the CLI).
_IMPORT_ALL = """
import importlib, pkgutil, sys
BLOCKED = {blocked!r}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in BLOCKED:
            return None
        f = sys._getframe(1)
        while f is not None and f.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
            f = f.f_back
        if f is not None and f.f_globals.get("__name__", "").split(".")[0] == "splitinfer":
            raise ModuleNotFoundError(f"test-only {{name}} imported by {{f.f_globals['__name__']}}")
        return None
sys.meta_path.insert(0, Refuse())
import splitinfer
names = [m.name for m in pkgutil.walk_packages(splitinfer.__path__, "splitinfer.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {{"hypothesis", "splitinfer_testing"}})
print(len(names), "modules", "leaked:", leaked)
sys.exit(1 if leaked else 0)
"""


def _import_all(blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _IMPORT_ALL.format(blocked=set(blocked))], capture_output=True,
                          text=True, timeout=280, env={"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
                                                       "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


def test_every_runtime_module_imports_without_the_test_only_packages():
    r = _import_all(TEST_ONLY)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert int(r.stdout.split()[0]) > 50  # it walked the package, not an empty list
