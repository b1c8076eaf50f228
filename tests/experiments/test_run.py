"""Jobs end to end on a tiny model: one job in process, the cached path against the naive one, a
multirun per launcher (basic, joblib, submitit_local) as subprocesses, and a real offline W&B run."""

from __future__ import annotations

import json

import pytest

from splitinfer.cli import main as cli

from .conftest import TINY, compose, run_cli

METRIC_KEYS = [
    "up_bytes_per_token_prefill", "up_bytes_per_token_decode", "down_bytes_per_token_decode",
    "up_ratio_vs_fp32_decode", "delta_ppl_pct", "kl_mean", "top1_agreement", "exact_match_rate",
    "device_prefill_s_per_token", "server_decode_s_per_token", "device_memory_bytes", "ttft_s", "tpot_s",
    "ttft_all_device_s", "tpot_all_server_s", "energy_j_per_token",
]


def test_one_job_writes_metrics(tmp_path):
    from splitinfer.experiment import run_job

    m = run_job(compose([*TINY, "codec=fp32"]), out_dir=tmp_path)
    for k in METRIC_KEYS:
        assert k in m, k
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["cut"] == 2 and on_disk["codec"] == "fp32"
    # fp32 is lossless: the split model is the unsplit model.
    assert m["kl_mean"] < 1e-6 and m["top1_agreement"] == 1.0 and m["exact_match_rate"] == 1.0
    assert m["up_ratio_vs_fp32_decode"] > 1.0  # raw fp32 plus the codec's header
    assert m["device_memory_bytes"] == m["device_param_bytes"] + 32 * m["device_kv_bytes_per_token"]
    # latency is modelled (the hardware profiles' roofline on the model's shape), the measured times stay beside it
    assert m["latency_source"] == "modelled" and m["server_hardware"] == "h100"
    assert m["tpot_s"] > m["model_device_decode_s_per_token"] + m["model_server_decode_s_per_token"]
    assert m["model_device_memory_bytes"] < m["device_memory_bytes"]  # fp16 weights and KV, not fp32
    assert (tmp_path / "metrics.jsonl").exists()


def test_cached_path_matches_the_naive_path(tmp_path):
    """Reusing the unsplit pass (hidden at every cut, teacher-forced generation) gives the naive
    way's numbers: same bytes, same generations, the same quality up to float rounding."""
    from splitinfer import cache
    from splitinfer.experiment import run_job

    fast = run_job(compose([*TINY, "codec=int8", "reuse=true"]), out_dir=tmp_path / "fast")
    cache.clear()
    naive = run_job(compose([*TINY, "codec=int8", "reuse=false"]), out_dir=tmp_path / "naive")
    for k in ("up_bytes_per_token_prefill", "up_bytes_per_token_decode", "exact_match_rate", "top1_agreement",
              "device_memory_bytes"):
        assert fast[k] == pytest.approx(naive[k]), k
    assert fast["delta_ppl_pct"] == pytest.approx(naive["delta_ppl_pct"], abs=1e-3)
    assert fast["kl_mean"] == pytest.approx(naive["kl_mean"], rel=1e-3, abs=1e-7)


def test_latency_only_metrics(tmp_path):
    from splitinfer.experiment import run_job

    m = run_job(compose([*TINY, "metrics=latency_only", "link=3g", "metrics.context_tokens=32",
                         "metrics.prompt_tokens=16", "metrics.profile_repeats=1"]), out_dir=tmp_path)
    assert "delta_ppl_pct" not in m and m["up_bytes_per_token_decode"] > 0 and m["link"] == "3g"


def test_basic_multirun_then_report_and_recommend(tmp_path, capsys, plot_check):
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", "experiment=smoke", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(sweep.glob("*/metrics.json"))
    assert len(jobs) == 6  # cuts 0,2,4 x codecs fp16,int8
    assert {json.loads(j.read_text())["job_num"] for j in jobs} == set(range(6))
    assert cli(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "| cut | codec |" in out and "metrics_vs_cut.png" in out
    for name in ("report.csv", "report.md"):
        assert (sweep / "report" / name).stat().st_size > 0
    for name in ("metrics_vs_cut.png", "tradeoff_pareto.png"):
        plot_check(sweep / "report" / name)
    assert cli(["recommend", str(sweep), "--objective", "bytes", "--max-delta-ppl", "50"]) == 0
    assert "Recommended: cut" in capsys.readouterr().out


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers(launcher, tmp_path):
    sweep = tmp_path / "sweep"
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=5"]
    r = run_cli(["-m", *TINY, "split.cut=1,3", f"hydra/launcher={launcher}", *extra, f"hydra.sweep.dir={sweep}",
                 "metrics.quality=false"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert sorted(m["cut"] for m in rows) == [1, 3]


def test_wandb_offline_run_files(tmp_path):
    out = tmp_path / "job"
    r = run_cli([*TINY, "logger=wandb", f"hydra.run.dir={out}", "metrics.quality=false"], tmp_path,
                env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), "the offline run must hold its data file for `wandb sync`"
    assert (out / "metrics.json").exists() and (out / "metrics.jsonl").exists()
    # A single job says what it found, and where.
    assert "cut 2 | codec int8 | defense none" in r.stdout and "B/token prefill" in r.stdout
    assert "output       job\n" in r.stdout  # relative to the working folder


def test_summary_lines():
    from splitinfer.run import summarize

    m = {"cut": 4, "codec": "ec40", "defense": "gaussian", "attack": "whitebox",
         "up_bytes_per_token_prefill": 1234.4, "up_bytes_per_token_decode": 98.0,
         "delta_ppl_pct": 0.8123, "delta_ppl_pct_ci_low": 0.2, "delta_ppl_pct_ci_high": 1.4,
         "kl_mean": 0.0123, "top1_agreement": 0.975, "exact_match_rate": 0.5, "ttft_s": 0.25, "tpot_s": 0.05,
         "link": "wifi", "device": "phone", "privacy/whitebox/token_acc": 0.125}
    text = summarize(m, "outputs/x")
    for part in ("cut 4 | codec ec40 | defense gaussian | attack whitebox", "1,234 B/token prefill",
                 "98 B/token decode", "+0.812 % (95% CI +0.200 .. +1.400)", "KL 0.0123 nats", "top-1 97.5 %",
                 "exact match 50.0 %", "TTFT 250.0 ms", "TPOT 50.0 ms (link wifi, device phone)",
                 "whitebox/token_acc 0.125", "output       outputs/x"):
        assert part in text, part
    short = summarize({"cut": 1, "codec": "fp32", "delta_ppl_pct": 0.0})
    assert "CI" not in short and "latency" not in short and "privacy" not in short and "output" not in short


def test_remove_if_empty(tmp_path, monkeypatch):
    from splitinfer.run import remove_if_empty

    monkeypatch.chdir(tmp_path)
    job = tmp_path / "outputs" / "name" / "time"
    (job / ".hydra").mkdir(parents=True)
    (job / "run.log").write_text("")
    kept = tmp_path / "outputs" / "other"
    (kept / ".hydra").mkdir(parents=True)
    (kept / "metrics.jsonl").write_text("{}\n")
    assert not remove_if_empty(kept, "run") and kept.exists()  # the job wrote something: it stays
    assert remove_if_empty(job, "run")
    assert not (tmp_path / "outputs" / "name").exists() and (tmp_path / "outputs").exists()


def test_defenses_on_the_data_path():
    """A payload defense (noise) and an embedding defense (dχ) both reach the server; the embedding one
    forces the device stage to run (cached unsplit hidden states cannot stand in for it)."""
    defenses = pytest.importorskip("splitinfer.privacy.defenses")
    from splitinfer.codecs import build_codec
    from splitinfer.data import CorpusSpec
    from splitinfer.experiment import MetricOptions, compute_reference, evaluate_split
    from splitinfer.models import tiny_model

    lm = tiny_model("llama")
    corpus = CorpusSpec(num_windows=2, window_tokens=16, num_prompts=1, prompt_tokens=8, gen_tokens=4).build(lm)
    ref = compute_reference(lm, corpus)
    opts = MetricOptions(timing=False, latency=False)
    codec = build_codec("fp32")
    clean = evaluate_split(lm, 2, codec, None, corpus, ref, opts)
    noisy = evaluate_split(lm, 2, codec, defenses.build_defense("gaussian", sigma=1.0), corpus, ref, opts)
    dchi = defenses.build_defense("dchi", eta=1.0)
    assert dchi.acts_on == "embedding"
    embedded = evaluate_split(lm, 2, codec, dchi, corpus, ref, opts, reuse_hidden=False)
    assert clean["kl_mean"] < 1e-6 < noisy["kl_mean"] and embedded["kl_mean"] > 1e-6


def test_reference_disk_cache(tmp_path, monkeypatch):
    """A second process (simulated by clearing the in-memory caches) reads the unsplit reference from
    disk instead of recomputing it, and gets the same metrics."""
    from splitinfer import cache, experiment, reference

    monkeypatch.setenv("SPLITINFER_CACHE", str(tmp_path / "cache"))
    first = experiment.run_job(compose([*TINY, "disk_cache=true"]), out_dir=tmp_path / "a")
    assert list((tmp_path / "cache" / "reference").glob("*.safetensors"))
    cache.clear()

    def no_recompute(*a, **k):
        raise AssertionError("the reference should come from the disk cache")

    monkeypatch.setattr(reference, "compute_reference", no_recompute)
    second = experiment.run_job(compose([*TINY, "disk_cache=true"]), out_dir=tmp_path / "b")
    for k in ("kl_mean", "delta_ppl_pct", "exact_match_rate", "up_bytes_per_token_decode"):
        assert second[k] == first[k]


def test_attack_adds_leakage_columns(tmp_path):
    """attack=none adds nothing (checked above); a real attack adds privacy/* columns the report uses."""
    from .conftest import CONF

    if not (CONF / "attack" / "nearest_embedding.yaml").exists():
        pytest.skip("conf/attack (privacy package) is not in this checkout")
    from splitinfer.experiment import run_job
    from splitinfer.report import build_report, privacy_columns

    m = run_job(compose([*TINY, "attack=nearest_embedding", "defense=gaussian", "metrics.generation=false"]),
                out_dir=tmp_path / "0")
    assert privacy_columns([m])[0] == "privacy/nearest_embedding/token_acc"
    rep = build_report(tmp_path)
    assert "nearest_embedding/token_acc" in rep.table


def test_a_job_places_each_half_and_refuses_a_bad_placement(tmp_path):
    """`placement.*_half.{device,dtype}`: a bf16 server half scores close to the fp32 one; a bad value is
    refused before the model loads."""
    from splitinfer import cache, experiment
    from splitinfer.experiment import run_job

    fp32 = run_job(compose([*TINY, "codec=fp32"]), out_dir=tmp_path / "fp32")
    bf16 = run_job(compose([*TINY, "codec=fp32", "placement.server_half.dtype=bfloat16"]), out_dir=tmp_path / "bf16")
    assert fp32["kl_mean"] < bf16["kl_mean"] < 1e-2  # bf16 rounding shows, and it is rounding, not a broken half
    cache.clear()
    with pytest.raises(ValueError, match=r"placement.device_half.dtype 'int3' is not supported"):
        run_job(compose([*TINY, "placement.device_half.dtype=int3"]), out_dir=tmp_path / "bad")
    assert not experiment._MODELS
