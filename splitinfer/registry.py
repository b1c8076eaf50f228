"""One registry helper for the swappable parts looked up by name (attacks, defenses, codec peers).

    DEFENSES = Registry("defense", {"none": NoDefense, "gaussian": GaussianNoise,
                                    "fisher_noise": "splitinfer.privacy.trained.fisher:FisherNoise"})
    cls = DEFENSES.get("gausian")                      # ConfigError: ... did you mean 'gaussian'? ...

Every entry is listed where the registry is made (explicit registration: nothing registers itself when
its module is imported). An entry given as "module:attribute" is imported on first lookup: a part
defined in a module that imports the registry's own module (a subclass of its base) is listed without
an import cycle.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from splitinfer.errors import ConfigError

T = TypeVar("T")


def closest(name: object, choices: list[str], n: int = 3) -> list[str]:
    """The names in `choices` closest to `name` (difflib), for "did you mean" hints."""
    return difflib.get_close_matches(str(name), choices, n=n, cutoff=0.6)


class Registry(Mapping[str, T], Generic[T]):
    """Name -> part. `get` refuses an unknown name with the choices and the closest match."""

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None, *, example: str = "") -> None:
        self.kind = kind
        self.example = example
        self._entries: dict[str, T] = dict(entries or {})

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def _resolve(self, name: str) -> T:
        entry = self._entries[name]
        if isinstance(entry, str) and ":" in entry:  # "module:attribute", imported on first lookup
            module, _, attr = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attr)
        return entry

    def get(self, name: object, default: T | None = None) -> T:  # type: ignore[override]
        if isinstance(name, str) and name in self._entries:
            return self._resolve(name)
        near = closest(name, self.names())
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        example = f" (e.g. {self.example})" if self.example else ""
        raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Choose one of {self.names()}{example}")

    def __getitem__(self, name: str) -> T:
        return self._resolve(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
