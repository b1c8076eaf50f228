"""Every cache splitinfer keeps, in one place: named in-memory memos and content-addressed disk caches.

Work that is exactly reusable (a loaded model, an unsplit reference, a fitted adapter) is done once.
In memory it is kept in a *memo*, a dict registered here by name (`memo("experiment.models")`), so
`clear()` empties every one of them and `memos()` lists them; nothing else in the package keeps a
module-level dict of results. On disk it is kept under `root()/<kind>/` (models, reference, privacy,
eval, codecs, drafters), each file named by `key(recipe)`: the sha256 of everything that determines it
(model fingerprint, cut, recipe, seed), so a changed recipe can never load a stale file.

    cached = cache.memo("privacy.utility_ref")           # a dict, cleared by cache.clear()
    path = cache.path("privacy", "fisher", {"m": lm.fingerprint, "cut": 3})   # root()/privacy/fisher-<key>.pt
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

_MEMOS: dict[str, dict] = {}


def memo(name: str) -> dict:
    """The in-memory cache called `name` (created empty on first use; the same dict every call)."""
    return _MEMOS.setdefault(name, {})


def memos() -> dict[str, int]:
    """Every registered memo and how many entries it holds."""
    return {name: len(d) for name, d in sorted(_MEMOS.items())}


def clear(*, disk: bool = False) -> None:
    """Empty every in-memory cache; with disk=True also delete everything under root()."""
    for d in _MEMOS.values():
        d.clear()
    if disk:
        shutil.rmtree(root(), ignore_errors=True)


def key(recipe: Any, length: int = 24) -> str:
    """The content address of a cached artefact: sha256 of everything that determines it as sorted JSON,
    `length` hex characters. The one key function: memos keyed by content and disk files use it."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:length]


def root() -> Path:
    """Where the disk caches live: $SPLITINFER_CACHE, else ~/.cache/splitinfer."""
    return Path(os.environ.get("SPLITINFER_CACHE", Path.home() / ".cache" / "splitinfer"))


def directory(kind: str) -> Path:
    """`root()/kind`, created: where one kind of artefact (models, privacy, eval, ...) is kept."""
    path = root() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def path(kind: str, name: str, recipe: Any, suffix: str = ".pt") -> Path:
    """`root()/kind/<name>-<key(recipe)><suffix>`: the file a content-addressed artefact is kept in."""
    return directory(kind) / f"{name}-{key(recipe)}{suffix}"
