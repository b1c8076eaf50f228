"""`splitinfer eval`: bad input is one line and exit 2 before any model loads; a run prints lm-eval's table
and the comparison, and writes lm-eval's results JSON. Plus the pieces: offline task lookup and the paired Δ."""

from __future__ import annotations

import json

import pytest


def _bad_task(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "task: badtask\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data/missing.jsonl\n"
        "output_type: multiple_choice\ndoc_to_text: !function utils.text\ndoc_to_choice: [a, b]\ndoc_to_target: 0\n")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "badtask"], r"task 'badtask': its data file .*data/missing\.jsonl is not on disk; put the file"),
    (["--tasks", "splitinfer_mc", "--cut", "99"], r"--cut 99: .*0\.\.30"),
    (["--tasks", "splitinfer_mc", "--codec", "int99"], r"unknown codec 'int99'"),
    (["--tasks", "splitinfer_mc", "--limit", "2.5"], r"--limit 2\.5: give a whole number"),
    (["--tasks", "splitinfer_mc", "--include_path", "/no/such/dir"], r"include path /no/such/dir does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    import re

    from splitinfer.cli import main

    monkeypatch.setattr("splitinfer.models.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    code = main(["eval", "--include_path", str(_bad_task(tmp_path)), *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err


def test_local_tasks_are_found_with_their_data_files_next_to_the_yaml(tmp_path):
    from splitinfer.eval.tasks import BUNDLED_TASKS, find_local_tasks, include_paths

    found = find_local_tasks(include_paths([_bad_task(tmp_path)]))
    assert found["badtask"].data_files == ((tmp_path / "data" / "missing.jsonl").resolve(),)
    mc = found["splitinfer_mc"]
    assert mc.yaml_path.parent == BUNDLED_TASKS / "splitinfer_mc" and all(f.is_file() for f in mc.data_files)
    assert (mc.yaml_path.parent / "LICENSE").read_text().count("CC0") == 1
    assert sum(1 for _ in mc.data_files[0].open()) == 40


def test_paired_delta():
    from splitinfer.eval.compare import paired_delta

    same = paired_delta({i: float(i % 2) for i in range(20)}, {i: float(i % 2) for i in range(20)})
    assert same["delta"] == same["delta_ci_low"] == same["delta_ci_high"] == 0 and same["n"] == 20
    base = {i: 1.0 for i in range(40)}
    split = {i: (0.0 if i < 10 else 1.0) for i in range(40)}  # 10 of 40 answers lost
    d = paired_delta(split, base, seed=1)
    assert d["delta"] == -0.25 and d["changed"] == 10
    assert -0.45 < d["delta_ci_low"] < -0.25 < d["delta_ci_high"] < -0.05
    assert paired_delta({1: 1.0}, {2: 1.0})["n"] == 0  # no common example: no figure


@pytest.mark.slow
def test_eval_command_prints_the_comparison_and_writes_lm_evals_json(tmp_path, capsys, monkeypatch, real_model):
    from splitinfer.cli import main

    monkeypatch.setattr("splitinfer.models.load_model", lambda *a, **k: real_model)
    monkeypatch.setenv("SPLITINFER_CACHE", str(tmp_path))  # splitinfer.cache.root(): a fresh disk cache
    out_dir = tmp_path / "out"
    code = main(["eval", "--tasks", "splitinfer_mc", "--limit", "4", "--cut", "15", "--codec", "int4_b32",
                 "--output_path", str(out_dir), "--log_samples"])
    out = capsys.readouterr().out
    assert code == 0
    assert "|splitinfer_mc|" in out and "Δ [95 % CI, paired]" in out and "| 4 |" not in out
    assert "cut 15 codec int4_b32 (in process)" in out and "/ 4 |" in out
    results = json.loads(next(out_dir.glob("splitinfer/results_*.json")).read_text())
    assert results["results"]["splitinfer_mc"]["acc,none"] == results["splitinfer"]["comparison"][0]["split"]
    assert {r["metric"] for r in results["splitinfer"]["comparison"]} == {"acc", "acc_norm"}
    assert len(next(out_dir.glob("splitinfer/samples_splitinfer_mc_*.jsonl")).read_text().splitlines()) == 4
