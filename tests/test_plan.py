"""`splitinfer plan`: every cut of a shape, no weights; the columns, the recommendation, bad input."""

from __future__ import annotations

import csv
import io
import json

import pytest

from splitinfer.cli import main
from splitinfer.errors import ConfigError
from splitinfer.plan import COLUMNS, PlanOptions, make_plan

REQUIRED = ("cut", "device_params", "device_weight_bytes", "device_kv_bytes", "fits", "device_ms_per_token",
            "server_ms_per_token", "up_bytes_per_token", "e2e_ms_per_token", "device_mj_per_token")


def test_plan_csv_has_every_cut_and_the_required_columns(capsys):
    assert main(["plan", "--model", "llama3_1_8b", "--hardware", "snapdragon_8_gen3", "--link", "4g_lte",
                 "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert set(REQUIRED) <= set(rows[0]) and tuple(rows[0]) == COLUMNS
    splits = [r for r in rows if r["mode"] == "split"]
    assert [int(r["cut"]) for r in splits] == list(range(33))
    params = [int(r["device_params"]) for r in splits]
    assert params == sorted(params) and params[-1] < 8.1e9
    assert {r["mode"] for r in rows} == {"split", "all_server", "all_device"}


def test_json_and_recommendation_under_a_memory_budget(capsys):
    assert main(["plan", "--model", "qwen2_5_7b", "--memory-budget-gb", "1.5", "--objective", "energy",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    fits = [r for r in rows if r["mode"] == "split" and r["fits"]]
    assert fits and all(r["device_memory_bytes"] <= 1.5e9 for r in fits)
    assert any(not r["fits"] for r in rows if r["mode"] == "split")
    shape, rows, best, why = make_plan("qwen2_5_7b", "snapdragon_8_gen3", "h100", "5g",
                                       PlanOptions(memory_budget_gb=1.5))
    assert best["fits"] and f"cut {best['cut']}" in why and "all-server" in why


def test_quantized_device_weights_shrink_memory():
    rows = {b: make_plan("llama3_2_3b", "apple_a17_pro", "l4", "wifi", PlanOptions(weight_bits=b))[1]
            for b in (4, 8, 16)}
    at = {b: next(r for r in rows[b] if r["cut"] == 14 and r["mode"] == "split") for b in rows}
    assert at[4]["device_weight_bytes"] < at[8]["device_weight_bytes"] < at[16]["device_weight_bytes"]
    assert at[4]["device_ms_per_token"] < at[16]["device_ms_per_token"]  # decode reads fewer bytes


@pytest.mark.parametrize("argv, words", [
    (["--hardware", "pixel"], "hardware 'pixel' is not one of"),
    (["--link", "6g"], "link '6g' is not one of"),
    (["--model", "gpt5"], "unknown model shape 'gpt5'"),
    (["--model", "phi3_mini", "--context-tokens", "100000"], "exceeds phi-3-mini-4k's max_position_embeddings"),
    (["--weight-bits", "3"], "precision 3"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, words):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_a_context_that_fits_nowhere():
    with pytest.raises(ConfigError, match="fits neither"):
        make_plan("llama3_1_8b", "raspberry_pi_5", "l4", "5g",
                  PlanOptions(context_tokens=100_000, prompt_tokens=512, clients=8, memory_budget_gb=0.1))


def test_hydra_job_form_and_the_old_group_name(tmp_path):
    from tests.experiments.conftest import run_cli

    r = run_cli(["job=plan", "model=llama3_2_1b", "hardware=tensor_g3", "server_hardware=l4", "link=wifi",
                 "logger=jsonl", "hydra.run.dir=out"], tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["figures"] == "modelled" and m["best_fits"] and m["server_hardware"] == "l4"
    assert (tmp_path / "out" / "plan.csv").read_text().startswith("mode,cut,")
    from splitinfer.run import check_command_line

    with pytest.raises(ConfigError, match="now `hardware`"):
        check_command_line(["device=phone"])


def test_a_shape_only_model_is_refused_by_a_split_job(tmp_path):
    from splitinfer.experiment import run_job
    from tests.experiments.conftest import compose

    with pytest.raises(ConfigError, match="'llama-3.1-8b' is a shape only"):
        run_job(compose(["model=llama3_1_8b", "logger=jsonl"]), out_dir=tmp_path)
    with pytest.raises(ConfigError, match="job='serve' is not one of"):
        run_job(compose(["job=serve", "logger=jsonl"]), out_dir=tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_a_quality_bound_keeps_only_cuts_measured_within_it(tmp_path, capsys):
    q = tmp_path / "q.csv"
    q.write_text("cut,device_weights,codec,delta_ppl_pct_ci_low,delta_ppl_pct_ci_high\n"
                 "8,int4_g32,none,1.7,5.7\n8,int4_g32,int8,1.7,5.6\n15,int4_g32,none,7.0,12.2\n"
                 "15,int8,none,-0.6,0.1\n")
    _, rows, best, why = make_plan("smollm2_135m", "snapdragon_8_gen3", "h100", "5g",
                                   PlanOptions(weight_bits=4, max_delta_ppl=10, quality_csv=str(q)))
    assert best["cut"] == 8 and best["dppl_ub_pct"] == 5.7 and "measured |Δppl| <= 5.70 %" in why
    assert next(r for r in rows if r["cut"] == 15)["dppl_ub_pct"] == 12.2
    _, _, best8, _ = make_plan("smollm2_135m", "snapdragon_8_gen3", "h100", "5g",
                               PlanOptions(weight_bits=8, max_delta_ppl=1, quality_csv=str(q)))
    assert best8["cut"] == 15
    assert main(["plan", "--model", "smollm2_135m", "--max-delta-ppl", "1"]) == 2
    assert "needs quality_csv" in capsys.readouterr().err


def test_plan_costs_a_relay_and_a_ushape_beside_every_cut(capsys):
    """`--relay A,B` and `--u-shape a,b` add a row each (modelled, on the same device link) and a line
    comparing them with the recommended cut; the relay's device side is the cut at A's."""
    assert main(["plan", "--model", "smollm2_135m", "--link", "4g_lte", "--relay", "8,20", "--u-shape", "8,26",
                 "--format", "csv"]) == 0
    rows = {r["mode"] + r["cut"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    relay, ushape, cut8 = rows["relay8,20"], rows["ushape8,26"], rows["split8"]
    assert relay["device_memory_bytes"] == cut8["device_memory_bytes"]  # the device runs [0, 8) in both
    assert relay["device_mj_per_token"] == cut8["device_mj_per_token"]
    # a relay adds the edge -> server hop (10 ms fibre RTT) and a slower edge for 12 layers
    assert float(relay["e2e_ms_per_token"]) > float(cut8["e2e_ms_per_token"]) + 10
    # a U-shape keeps [26, 30) + head on the phone: more device memory and energy than the cut at 8
    assert int(ushape["device_memory_bytes"]) > int(cut8["device_memory_bytes"])
    assert float(ushape["device_mj_per_token"]) > float(cut8["device_mj_per_token"])
    _, _, best, why = make_plan("smollm2_135m", "snapdragon_8_gen3", "h100", "4g_lte", PlanOptions(),
                                relay=[8, 20], ushape=[8, 26], edge_hardware="jetson_orin_nano",
                                hop_link="metro_fiber")
    assert "topologies on the same device link (modelled)" in why and "relay 8,20" in why and "U-shape 8,26" in why
    assert best["mode"] == "split"  # the recommendation is still a cut; the topologies are set beside it
    assert "edge 0.09 GB (fits)" in why  # 12 layers of a 135M model on a 6 GB Jetson
    *_, why8b = make_plan("llama3_1_8b", "snapdragon_8_gen3", "h100", "5g", PlanOptions(), relay=[4, 24],
                          edge_hardware="jetson_orin_nano", hop_link="metro_fiber")
    assert "edge 8.81 GB (does NOT fit)" in why8b  # 20 fp16 layers of an 8B model: more than the edge holds


@pytest.mark.parametrize("argv, words", [
    (["--relay", "8"], "--relay '8': give two cuts A,B"),
    (["--u-shape", "8,30"], "--u-shape 8,30: give two cuts 1 <= A < B < 30"),
    (["--relay", "8,20", "--hop-link", "tin_can"], "link 'tin_can' is not one of"),
    (["--hop-link", "wifi"], "add --relay A,B"),
])
def test_bad_topology_plans_are_one_line(capsys, argv, words):
    assert main(["plan", "--model", "smollm2_135m", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


def test_hydra_plan_job_costs_the_topology(tmp_path):
    from tests.experiments.conftest import run_cli

    r = run_cli(["job=plan", "model=smollm2_135m", "topology=relay", "split.cut=8", "logger=jsonl",
                 "hydra.run.dir=out"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'relay,"8,20",' in (tmp_path / "out" / "plan.csv").read_text()
    r = run_cli(["job=plan", "model=smollm2_135m", "topology=ushape", "topology.down_codec=int8", "logger=jsonl",
                 "hydra.run.dir=out2"], tmp_path)
    assert r.returncode == 2 and "plan.codec_bits" in r.stderr
