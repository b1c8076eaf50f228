"""Task metrics in sweep jobs: `metrics.tasks` runs lm-eval tasks inside each job (metrics.json gets the
accuracy, its interval and Δ vs unsplit with its paired interval), and the report and recommendation
show task columns. On the real model (lm-eval tasks need its tokenizer), two jobs of the task sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CONF = Path(__file__).resolve().parents[2] / "conf"
FAST = ["experiment=task_sweep", "logger=jsonl", "metrics.task_limit=4", "metrics.quality=false",
        "metrics.generation=false", "metrics.timing=false", "metrics.latency=false", "data=smoke",
        "disk_cache=false", "split.cut=15"]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_task_sweep_jobs_log_task_metrics_and_the_report_shows_them(real_model, tmp_path, monkeypatch):
    from splitinfer import experiment
    from splitinfer.eval import run
    from splitinfer.report import build_report, load_runs, recommend

    monkeypatch.setattr(run, "_BASELINES", {})  # computed by the first job, whatever other tests ran
    monkeypatch.setenv("SPLITINFER_CACHE", str(tmp_path))  # splitinfer.cache.root(): a fresh disk cache
    monkeypatch.setitem(experiment._MODELS, "smollm2-135m-instruct", real_model)  # loaded once per session
    sweep = tmp_path / "sweep"
    for i, codec in enumerate(("fp32", "int4_b32")):
        m = experiment.run_job(_compose([*FAST, f"codec={codec}"]), out_dir=sweep / str(i))
        assert m["tasks"] == "splitinfer_mc" and m["task_baseline_cached"] == (i == 1)
    fp32, int4 = (json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2))
    key = "task/splitinfer_mc/acc"
    for m in (fp32, int4):
        assert m[f"{key}_n"] == 4 and m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"]
        assert m[f"{key}_delta_ci_low"] <= m[f"{key}_delta"] <= m[f"{key}_delta_ci_high"]
        assert m[f"{key}_unsplit"] == fp32[f"{key}_unsplit"]  # one baseline for every job of the model
    assert fp32[key] == fp32[f"{key}_unsplit"] and fp32[f"{key}_delta"] == 0  # lossless: nothing changed

    rep = build_report(sweep)
    head = rep.table.splitlines()[0]
    assert "splitinfer_mc acc [95% CI]" in head and "Δ splitinfer_mc acc vs unsplit [95% CI]" in head
    assert "| +0.000 [+0.000, +0.000] |" in rep.table  # the fp32 job's Δ with its interval
    assert "splitinfer_mc acc" in rep.markdown.read_text()
    rec = recommend(load_runs(sweep), "bytes")
    assert "splitinfer_mc acc" in rec.explanation and "vs unsplit (paired 95 % CI)" in rec.explanation
