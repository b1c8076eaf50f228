"""A real multi-objective search (Hydra's Optuna sweeper, NSGA-II, SQLite study) on a tiny model: trials
return their objectives, a stopped search resumes in its folder with trials numbered on (here on a local
Ray cluster: hydra/launcher=ray), constraints reach NSGA-II, each trial is a W&B run of the search's group,
and the report reads the folder."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is in setup.cfg (dev, ray)")

from .conftest import compose, run_cli

SEARCH = [
    "-m", "hparams_search=split_optuna", "model=tiny_llama", "data=smoke", "disk_cache=true", "name=tiny",
    "metrics.prompt_tokens=16", "metrics.context_tokens=32", "metrics.profile_repeats=1",
    "split.cut=int(interval(0,3))", "codec=choice(fp16,int8,ec40)",
    "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler.population_size=2",
]


def test_search_runs_then_resumes_on_local_ray(tmp_path, plot_check):
    """One search end to end: 2 trials with the basic launcher, stopped; resumed in the same folder with a
    constraint and W&B (offline) as one batch of 4 trials = a 4-job multirun on a local Ray cluster."""
    import optuna

    from splitinfer.report import build_report

    sweep = tmp_path / "search"
    r = run_cli([*SEARCH, "logger=jsonl", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1"]
    r = run_cli([*SEARCH, "logger=wandb", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=4",
                 "search.constraints.max_delta_ppl_pct=1.0", f"hydra.sweep.dir={sweep}",
                 "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                 "+hydra.launcher.ray.init.include_dashboard=false"], tmp_path,
                env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "RAY_USAGE_STATS_ENABLED": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Ray Launcher is launching 4 jobs" in r.stdout + r.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{sweep}/optuna.db")
    assert [t.number for t in study.trials] == list(range(6))  # job folders 2-5 continue the numbering
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for t in study.trials:  # the values the sweeper got are the job's objectives, from its own folder
        m = json.loads((sweep / str(t.number) / "metrics.json").read_text())
        assert (m["cut"], m["codec"]) == (t.params["split.cut"], t.params["codec"])
        assert t.values == pytest.approx([m["objective/bytes"], m["objective/dppl_ub"], m["objective/latency"]])
        if t.number >= 2:  # NSGA-II got the constraint (measured |Δppl| bound - limit) from the job
            assert t.system_attrs["nsga2:constraints"] == pytest.approx([m["constraint/max_delta_ppl_pct"]])
            runs = list((sweep / str(t.number) / "wandb").glob("offline-run-*/run-*.wandb"))
            assert len(runs) == 1  # one W&B run per trial, in the search's group, objectives logged
            data = runs[0].read_bytes()
            assert b"tiny-search" in data and b"objective/dppl_ub" in data
    assert json.loads((sweep / "search.json").read_text())["resumed_after"] == 2
    # Ray workers inherit the run's environment: one reference file in $SPLITINFER_CACHE, shared by all.
    refs = list((tmp_path / "cache" / "reference").glob("*.safetensors"))
    assert len(refs) == 1
    rep = build_report(sweep)
    assert rep.search is not None and len(rep.search.trials) == 6 and rep.search.front
    assert "## Search" in rep.markdown.read_text()
    plot_check(rep.out_dir / "search_front.png")


def test_unknown_objective_is_refused_before_any_job(tmp_path):
    from splitinfer.errors import ConfigError
    from splitinfer.search import SearchCallback

    cfg = compose(["hparams_search=split_optuna", "search.objectives=[bytes,latnecy]",
                   f"hydra.sweep.dir={tmp_path / 's'}"], hydra_cfg=True)
    with pytest.raises(ConfigError, match="latnecy.*Did you mean latency"):
        SearchCallback().prepare(cfg)
    assert not (tmp_path / "s").exists()


def test_callback_sets_one_direction_per_objective_and_the_constraint_names(tmp_path):
    from splitinfer.search import SearchCallback

    cfg = compose(["hparams_search=split_privacy_optuna", "search.constraints.max_device_mb=300",
                   f"hydra.sweep.dir={tmp_path / 's'}"], hydra_cfg=True)
    SearchCallback().prepare(cfg)
    assert list(cfg.hydra.sweeper.direction) == ["minimize"] * 4
    assert list(cfg.hydra.sweeper.sampler.constraints_func.names) == ["max_device_mb"]
    saved = json.loads((tmp_path / "s" / "search.json").read_text())
    assert saved["objectives"] == ["bytes", "dppl_ub", "leakage", "latency"]
    assert saved["constraints"] == {"max_device_mb": 300.0}


def test_defense_strength_is_searched_only_for_the_defense_picked():
    import optuna
    from omegaconf import OmegaConf

    from splitinfer.search import defense_strength

    cfg = OmegaConf.create({"search": {"strength": {"gaussian": {"sigma": [0.01, 1.0]}}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(12):
        t = study.ask()
        d = t.suggest_categorical("defense", ["none", "gaussian"])
        defense_strength(cfg, t)
        seen.setdefault(d, set()).add(tuple(sorted(t.params)))
        if d == "gaussian":
            assert 0.01 <= t.params["defense.sigma"] <= 1.0
        study.tell(t, 0.0)
    assert seen == {"none": {("defense",)}, "gaussian": {("defense", "defense.sigma")}}


def test_motpe_search_config_composes_without_nsga2_keys(tmp_path):
    from splitinfer.search import SearchCallback

    cfg = compose(["hparams_search=split_motpe_optuna", f"hydra.sweep.dir={tmp_path / 's'}"], hydra_cfg=True)
    assert cfg.hydra.sweeper.sampler._target_ == "optuna.samplers.MOTPESampler"
    SearchCallback().prepare(cfg)
    assert list(cfg.hydra.sweeper.direction) == ["minimize"] * 3
