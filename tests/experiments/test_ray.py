"""`hydra/launcher=ray_cluster`: the config for an existing Ray cluster. The 4-job multirun on a local Ray
cluster (hydra/launcher=ray) is the resumed half of tests/experiments/test_search.py (one Ray start for both)."""

from __future__ import annotations

import pytest

from .conftest import compose

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is in setup.cfg")


def test_ray_cluster_launcher_takes_an_address():
    cfg = compose(["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=ray://head:10001"],
                  hydra_cfg=True)
    assert cfg.hydra.launcher.ray.init.address == "ray://head:10001"
    assert cfg.hydra.launcher._target_.endswith("RayLauncher")
    # The launcher's default object_store_memory (for a local ray.init) is refused by ray.init(address=...).
    assert cfg.hydra.launcher.ray.init.object_store_memory is None
