"""splitinfer.cache: every in-memory cache is a named memo that one clear() empties; disk caches are
content-addressed files under one root, named by one key function."""

from __future__ import annotations

import importlib

from splitinfer import cache

# The module-level memos the package keeps, by module (each registers its memos when imported).
MEMOS = {
    "splitinfer.experiment": ["experiment.models"],
    "splitinfer.reference": ["reference.corpora", "reference.references", "reference.profiles"],
    "splitinfer.eval.run": ["eval.baselines", "eval.env_info", "eval.task_sets"],
    "splitinfer.privacy.evaluate": ["privacy.utility_ref"],
    "splitinfer.privacy.attacks.inverter": ["privacy.inverter"],
    "splitinfer.privacy.trained.public_data": ["privacy.public_sequences"],
    "splitinfer.privacy.trained.training": ["privacy.training_data"],
    "splitinfer.models.verify": ["models.verified"],
}


def test_one_clear_empties_every_memo_of_the_package():
    for module in MEMOS:
        importlib.import_module(module)
    names = [n for ns in MEMOS.values() for n in ns]
    assert set(names) <= set(cache.memos())
    for n in names:
        cache.memo(n)["probe"] = 1
    assert all(cache.memos()[n] >= 1 for n in names)
    cache.clear()
    assert all(cache.memos()[n] == 0 for n in names)
    assert cache.memo("experiment.models") is importlib.import_module("splitinfer.experiment")._MODELS


def test_no_module_keeps_a_memo_dict_of_its_own():
    """A module-level `_NAME: dict = {}` (or `= {}`) outside splitinfer.cache would escape clear()."""
    import ast
    from pathlib import Path

    root = Path(cache.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        if path.name == "cache.py" or "reliability" in path.parts:
            continue
        for node in ast.parse(path.read_text()).body:
            target = node.target if isinstance(node, ast.AnnAssign) else (
                node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
            value = getattr(node, "value", None)
            if isinstance(target, ast.Name) and isinstance(value, ast.Dict) and not value.keys \
                    and target.id.startswith("_") and target.id.isupper():
                found.append(f"{path.relative_to(root.parent)}: {target.id}")
    assert not found, f"use splitinfer.cache.memo(name) instead: {found}"


def test_disk_files_are_named_by_the_one_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITINFER_CACHE", str(tmp_path))
    a = cache.path("privacy", "fisher", {"m": "abc", "cut": 3})
    assert a.parent == tmp_path / "privacy" and a.parent.is_dir()
    assert a.name == f"fisher-{cache.key({'cut': 3, 'm': 'abc'})}.pt"  # key order does not matter
    assert a != cache.path("privacy", "fisher", {"m": "abc", "cut": 4})
    assert len(cache.key({"x": 1}, 12)) == 12
    from splitinfer.models import cache_dir, cache_key, cache_root

    assert (cache_root(), cache_dir("eval"), cache_key({"x": 1})) == (tmp_path, tmp_path / "eval", cache.key({"x": 1}))
    a.write_text("x")
    cache.clear(disk=True)
    assert not tmp_path.exists()
