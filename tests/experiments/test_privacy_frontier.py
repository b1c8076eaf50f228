"""The privacy frontier as a Hydra experiment (conf/experiment/privacy_frontier*.yaml): every file composes
with options that exist, a small grid runs as two real multiruns into one sweep folder, the recipe's
table holds the report's strongest attack per setting with the utility intervals, and a rerun resumes."""

from __future__ import annotations

import csv
import importlib
import json
import sys

import pytest
from omegaconf import OmegaConf

from .conftest import CONF, REPO, compose, run_cli

FRONTIERS = sorted(p.stem for p in (CONF / "experiment").glob("privacy_frontier*.yaml"))
# the small grid: the tiny model, 2 victims of 8 tokens, short utility data
SMALL = ["model=tiny_llama", "split.cut=2", "disk_cache=false", "attack.victims=2", "attack.victim_tokens=8",
         "data.num_windows=2", "data.window_tokens=24", "data.num_prompts=2", "data.prompt_tokens=8",
         "data.gen_tokens=4"]


def _recipe():
    sys.path.insert(0, str(REPO / "experiments" / "privacy_defense_frontier"))
    try:
        return importlib.import_module("frontier")
    finally:
        sys.path.pop(0)


@pytest.mark.parametrize("name", FRONTIERS)
def test_every_frontier_file_sweeps_options_that_exist(name):
    cfg = compose([f"experiment={name}"], hydra_cfg=True)
    params = cfg.hydra.sweeper.params
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert sweep == {"dir": "multirun/privacy_frontier", "subdir": "${hydra.job.override_dirname}"}  # reruns resume
    assert "defense" in params, "the defense must name each job folder"
    assert params["split.cut"] == "4,8,15"
    for attack in params["attack"].split(","):  # each attack composes with the experiment's victims
        node = compose([f"experiment={name}", f"attack={attack}"]).attack
        assert node.name == attack and node.victims == 20 and node.victim_tokens == 24
    for defense in params["defense"].split(","):
        node = compose([f"experiment={name}", f"defense={defense}"]).defense
        assert node.name == defense
        for key in (k for k in params if k.startswith("defense.")):
            assert key.split(".", 1)[1] in node, f"{name}: {key} is not a key of defense={defense}"


def test_small_grid_runs_reports_the_strongest_attack_and_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    control = ["-m", "experiment=privacy_frontier", *SMALL, "attack=whitebox,learned_inverter",
               f"hydra.sweep.dir={sweep}"]
    noise = ["-m", "experiment=privacy_frontier_noise", *SMALL, "defense=gaussian", "defense.sigma=0.5",
             "attack=whitebox,learned_inverter", f"hydra.sweep.dir={sweep}"]
    for args in (control, noise):
        r = run_cli(args, tmp_path, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    jobs = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert len(jobs) == 4, sorted(jobs)

    rows = _recipe().main([str(sweep), "--out", str(tmp_path / "out")])
    assert [(r["defense"], r["strength"]) for r in rows] == [("none", "–"), ("gaussian", "sigma=0.5")]
    for row in rows:  # the strongest attack is the one with the most tokens among that setting's jobs
        mine = {a: m[f"privacy/{a}/token_acc"] for m in jobs.values() if m["defense"] == row["defense"]
                for a in ("whitebox", "learned_inverter") if f"privacy/{a}/token_acc" in m}
        assert len(mine) == 2
        assert row["leakage_attack"] == max(mine, key=mine.get) and row["leakage_token_acc"] == max(mine.values())
        assert row["delta_ppl_pct_ci_low"] <= row["delta_ppl_pct"] <= row["delta_ppl_pct_ci_high"]
    # no defense and a lossless codec: the exact white-box search rebuilds every token
    assert rows[0]["leakage_attack"] == "whitebox" and rows[0]["leakage_token_acc"] == 1.0
    with open(tmp_path / "out" / "frontier.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| 2 | gaussian | sigma=0.5 |" in table and "Δppl % [95 % CI]" in table
    from PIL import Image

    with Image.open(tmp_path / "out" / "frontier_cut2.png") as im:  # a drawn figure, not just a PNG header
        assert im.size[0] > 400 and len(set(im.convert("L").getdata())) > 10

    # a rerun of a command lands in the same job folders: the attacks keep their finished victims
    r = run_cli(control, tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(sweep.glob("*/metrics.json"))) == 4
    assert "resuming, 2 of 2 victims already done" in r.stderr + r.stdout
