"""`hydra/launcher=ray`: a 4-job multirun on a local Ray cluster (ray.init() on this machine, started and
stopped by the run) with a tiny model; the jobs find the reference in the shared content-addressed cache."""

from __future__ import annotations

import json

import pytest

from .conftest import TINY, compose, run_cli

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is in setup.cfg")


def test_four_job_multirun_on_local_ray(tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith(("split.cut", "codec", "disk_cache"))]
    r = run_cli(["-m", *tiny, "split.cut=1,3", "codec=fp16,int8", "disk_cache=true", "hydra/launcher=ray",
                 "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false",
                 f"hydra.sweep.dir={sweep}"], tmp_path, env={"RAY_USAGE_STATS_ENABLED": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Ray Launcher is launching 4 jobs" in r.stdout + r.stderr
    rows = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert sorted((m["cut"], m["codec"]) for m in rows) == [(1, "fp16"), (1, "int8"), (3, "fp16"), (3, "int8")]
    assert sorted(m["job_num"] for m in rows) == [0, 1, 2, 3]
    # Ray workers inherit the run's environment: one reference file in $SPLITINFER_CACHE, shared by all.
    refs = list((tmp_path / "cache" / "reference").glob("*.safetensors"))
    assert len(refs) == 1 and {m["corpus_digest"] for m in rows} == {refs[0].stem.split("-", 1)[1]}


def test_ray_cluster_launcher_takes_an_address():
    cfg = compose(["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=ray://head:10001"],
                  hydra_cfg=True)
    assert cfg.hydra.launcher.ray.init.address == "ray://head:10001"
    assert cfg.hydra.launcher._target_.endswith("RayLauncher")
    # The launcher's default object_store_memory (for a local ray.init) is refused by ray.init(address=...).
    assert cfg.hydra.launcher.ray.init.object_store_memory is None
