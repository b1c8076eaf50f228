"""Fixtures for experiment tests: compose configs from conf/, tiny models, outputs under tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"

# Tiny, fast settings used by every test job.
TINY = [
    "model=tiny_llama", "data=smoke", "logger=jsonl", "split.cut=2", "codec=int8", "disk_cache=false",
    "metrics.prompt_tokens=16", "metrics.context_tokens=32", "metrics.profile_repeats=1",
]


def compose(overrides: list[str] | None = None, *, hydra_cfg: bool = False):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hcompose("config", overrides=list(overrides or []), return_hydra_config=hydra_cfg)


def run_cli(args: list[str], tmp_path: Path, env: dict | None = None, timeout: int = 240):
    """`python -m splitinfer.run ARGS` in a subprocess, outputs under tmp_path."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0",
                "SPLITINFER_CACHE": str(tmp_path / "cache"), **(env or {})}  # tiny models only: no real cache needed
    return subprocess.run([sys.executable, "-m", "splitinfer.run", *args], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def _fresh_caches():
    from splitinfer import cache

    cache.clear()
    yield
    cache.clear()
