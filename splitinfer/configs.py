"""The shipped config files (conf/<group>/<name>.yaml) read as plain data, outside Hydra.

`splitinfer plan`, `splitinfer report` and the shape loader look up a link, hardware profile or model
shape by name; this is the one place that finds the folder (the installed package `splitinfer.conf`, else
the checkout's conf/) and refuses an unknown name with the choices.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from splitinfer.errors import ConfigError


def _conf_dir() -> Path:
    """The configs: the installed package `splitinfer.conf` when it has link/, else the checkout's conf/."""
    try:
        spec = importlib.util.find_spec("splitinfer.conf")
    except ImportError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / "link").is_dir():
            return Path(location)
    return Path(__file__).resolve().parents[1] / "conf"


CONF_DIR = _conf_dir()


def available(group: str) -> list[str]:
    """The option names of a config group."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_node(group: str, name: str) -> dict[str, Any]:
    """conf/GROUP/NAME.yaml as a plain dict (resolved); a ConfigError naming the choices if it is missing."""
    from omegaconf import OmegaConf

    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        from splitinfer.registry import closest

        hint = closest(str(name), available(group), n=1)
        raise ConfigError(f"{group} {name!r} is not one of {available(group)} (conf/{group}/*.yaml)"
                          + (f"; did you mean {hint[0]!r}?" if hint else ""))
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return node if isinstance(node, dict) else {}


def build(group: str, name: str, cls: type) -> Any:
    """conf/GROUP/NAME.yaml built as `cls` (its `_target_` dropped)."""
    node = load_node(group, name)
    node.pop("_target_", None)
    return cls(**node)
