"""What a search shows a user: its cut space fits the model, its objective values carry names and units,
no colour codes or ExperimentalWarning off a terminal, and the Pareto set it prints is the report's."""

from __future__ import annotations

import logging

from omegaconf import open_dict, read_write

from .conftest import compose, run_cli


def test_the_cut_space_is_every_cut_of_the_jobs_model(tmp_path):
    from splitinfer.search import SearchCallback

    tiny = compose(["hparams_search=split_optuna", "model=tiny_llama"], hydra_cfg=True)
    SearchCallback.cut_space(tiny)
    assert tiny.hydra.sweeper.params["split.cut"] == "int(interval(0,4))"  # tiny_llama: 4 layers
    default = compose(["hparams_search=split_optuna"], hydra_cfg=True)  # SmolLM2-135M: 30 layers
    SearchCallback.cut_space(default)
    assert default.hydra.sweeper.params["split.cut"] == "int(interval(0,30))"
    mine = compose(["hparams_search=split_optuna", "model=tiny_llama"], hydra_cfg=True)
    with read_write(mine.hydra), open_dict(mine.hydra):
        mine.hydra.sweeper.params["split.cut"] = "int(interval(1,2))"  # an experiment's own space is kept
    SearchCallback.cut_space(mine)
    assert mine.hydra.sweeper.params["split.cut"] == "int(interval(1,2))"


def test_the_sweepers_values_line_gets_names_and_units():
    from splitinfer.search import LabelledValues

    f = LabelledValues(["bytes", "dppl_ub", "latency"])
    rec = logging.LogRecord("x", logging.INFO, __file__, 1,
                            "    Values: [354.67, 2.12, 0.21], Params: {'split.cut': 3}", (), None)
    assert f.filter(rec) and rec.getMessage() == ("    bytes 354.7 B, dppl_ub 2.12 %, latency 0.21 s; "
                                                  "params {'split.cut': 3}")
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "Number of Pareto solutions: 5", (), None)
    assert f.filter(rec) and "infeasible ones and repeats included): 5" in rec.getMessage()


def test_a_tiny_search_end_to_end_prints_plain_labelled_lines_and_the_reports_pareto_set(tmp_path):
    """model=tiny_llama with the shipped search space (it failed with `cut 17 is out of range` before)."""
    from splitinfer.report import build_report

    sweep = tmp_path / "search"
    r = run_cli(["-m", "hparams_search=split_optuna", "model=tiny_llama", "data=smoke", "logger=jsonl",
                 "metrics.prompt_tokens=16", "metrics.context_tokens=32", "metrics.profile_repeats=1",
                 "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler.population_size=2",
                 f"hydra.sweep.dir={sweep}"], tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "search space: split.cut in 0..4" in out
    assert "\x1b[" not in out and "ExperimentalWarning" not in out and "Values: [" not in out
    front = build_report(sweep).search.front
    n = len(front)
    assert f"Pareto set: {n} configuration{'' if n == 1 else 's'} from 4 trials" in out
    for row in front:  # each printed with its labelled values
        assert f"trial {row['trial']:>3}  cut {row['cut']} {row['codec']}" in out
    assert "bytes " in out and " B, dppl_ub " in out and " %, latency " in out
