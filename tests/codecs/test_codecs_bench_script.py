"""scripts/bench_codecs.py without the model: CSV round trip, tables and both figures from fake rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_codecs.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_codecs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_codecs"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_codecs", None)


def _rows():
    rows = []
    for corpus in ("pydoc", "licenses"):
        for cut in (1, 15):
            for name, bits, dppl in (("fp16", 16.0, 0.0), ("petals_blockwise8", 8.07, 0.2), ("ec40", 3.4, 0.6),
                                     ("ec37g_s", 3.2, 0.8), ("int3_b64_outlier_rot_log8_tc", 3.5, 2.5)):
                rows.append({"corpus": corpus, "cut": cut, "codec": name, "bits_per_value": bits,
                             "bits_per_value_1tok": bits + (0.05 if name.endswith("_s") else 1.6),
                             "ratio_vs_fp32": 32 / bits,
                             "ratio_vs_fp16": 16 / bits, "delta_ppl_pct": dppl, "delta_ppl_ci_lo": dppl - 0.3,
                             "delta_ppl_ci_hi": dppl + 0.3, "kl_nats": dppl / 100 + 1e-7, "top1_agree": 0.95,
                             "rel_l2_err": 0.01, "step_us": 300.0, "encdec_MBps": 500.0, "encdec_MBps_median": 400.0,
                             "enc_MBps": 900.0, "dec_MBps": 1000.0, "ppl_ref": 10.0, "ppl": 10.1, "wire_bytes": 1000,
                             "values": 2000, "tokens": 20})
    return rows


def test_tables_csv_and_figures(bench, tmp_path, plot_check):
    rows = _rows()
    bench.write_csv(rows, tmp_path / "r.csv")
    back = bench.read_csv(tmp_path / "r.csv")
    assert [(r["corpus"], r["cut"], r["codec"]) for r in back] == [(r["corpus"], r["cut"], r["codec"]) for r in rows]
    table = bench.markdown_table(back)
    assert "`ec40`" in table and "Δppl % cut 15" in table and "**licenses**" in table
    target = bench.target_table(back)
    # ec40 is smaller in prefill but its decode steps are not: the session codec is the one within target
    assert "| licenses | 1 | `ec37g_s` | 3.200 / 3.250 | +0.80 [+0.50, +1.10]" not in target
    assert "| licenses | 15 | none; best ≤ 3.5 bits: `ec37g_s` | 3.200 / 3.250 | +0.80 [+0.50, +1.10]" in target
    bench.plot(back, tmp_path / "rd.png")
    bench.plot(back, tmp_path / "rd_kl.png", metric="kl_nats")
    plot_check(tmp_path / "rd.png")
    plot_check(tmp_path / "rd_kl.png")


def test_flags(bench):
    a = bench.parse_args(["--quick"])
    assert a.cuts == [1, 15, 29] and a.n_windows == 2 and a.seq_len == 128 and "petals_blockwise8" in a.codecs
    assert a.corpora == ["pydoc"] and bench.parse_args([]).corpora == ["pydoc", "licenses"]
    a = bench.parse_args(["--cuts", "4,8", "--codecs", "int8,fp16", "--n-windows", "3"])
    assert a.cuts == [4, 8] and a.codecs == ["int8", "fp16"] and a.n_windows == 3 and a.seq_len == 256


def test_bench_figures_equal_a_sweep_jobs_on_the_same_windows(bench, tmp_path):
    """The benchmark is a recipe over the library: its Δppl/KL/top-1/bytes for a (cut, codec) are exactly a
    sweep job's on the same windows (same corpus spec, same split path, same statistics)."""
    from hydra import compose, initialize_config_dir

    from splitinfer.experiment import run_job

    args = bench.parse_args(["--model", "tiny-llama", "--cuts", "1,2", "--codecs", "int8,ec37g_s", "--n-windows",
                             "2", "--seq-len", "24", "--repeats", "1", "--threads", "1", "--corpora", "pydoc"])
    rows = bench.run(args)
    conf = Path(__file__).resolve().parents[2] / "conf"
    spec = bench.corpus_spec(args)
    for row in rows:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("config", overrides=[
                "model=tiny_llama", "logger=jsonl", "metrics.timing=false", "metrics.latency=false",
                "metrics.generation=false", f"split.cut={row['cut']}", f"codec={row['codec']}", "data=pydoc",
                f"data.num_windows={spec.num_windows}", f"data.window_tokens={spec.window_tokens}",
                f"data.num_prompts={spec.num_prompts}", f"data.prompt_tokens={spec.prompt_tokens}",
                f"data.gen_tokens={spec.gen_tokens}", f"seed={spec.seed}"])
        m = run_job(cfg, out_dir=tmp_path / f"cut{row['cut']}")
        assert row["delta_ppl_pct"] == m["delta_ppl_pct"] and row["kl_nats"] == m["kl_mean"]
        assert row["delta_ppl_ci_lo"] == m["delta_ppl_pct_ci_low"] and row["top1_agree"] == m["top1_agreement"]
        assert row["bits_per_value"] == m["up_bytes_per_token_prefill"] * 8 / 64
        assert row["bits_per_value_1tok"] == m["up_bytes_per_token_decode"] * 8 / 64


@pytest.mark.parametrize("answer", [-1, 0, 3, 7, 12, 17])  # -1: no step passes; 17: the coarsest passes
def test_bisect_step_finds_the_coarsest_passing_step(bench, answer):
    grid = bench.step_grid(0.15, 0.49, 0.02)
    assert len(grid) == 18 and grid[0] == 0.15 and grid[-1] == 0.49
    tried = []

    def passes(step):
        tried.append(step)
        return grid.index(step) <= answer

    ok, bad = bench.bisect_step(passes, grid, start=5, max_evals=10)
    assert ok == (answer if answer >= 0 else None)
    assert bad == (answer + 1 if answer < 17 else None)
    assert len(tried) == len(set(tried)) <= 10  # no step measured twice
    tried.clear()
    bench.bisect_step(passes, grid, start=5, max_evals=2)
    assert len(tried) <= 2


def test_bound_table_picks_the_fewest_bits_within_the_bound(bench):
    row = {"corpus": "readmes", "cut": 4, "bits_per_value_1tok": 3.0, "delta_ppl_pct": 0.3, "delta_ppl_ci_lo": -0.2,
           "kl_nats": 0.01, "corpus_digest": "d"}
    rows = [{**row, "codec": "ec25g_s:step=0.29", "bits_per_value": 3.2, "delta_ppl_ci_hi": 1.2},
            {**row, "codec": "ec25g_s:step=0.23", "bits_per_value": 3.6, "delta_ppl_ci_hi": 0.8},
            {**row, "codec": "ec25g_s:step=0.17", "bits_per_value": 4.1, "delta_ppl_ci_hi": 0.5},
            {**row, "codec": "ec25g_s:step=0.17", "bits_per_value": 4.1, "delta_ppl_ci_hi": 0.5}]  # a reused repeat
    table = bench.bound_table(bench.dedupe(rows))
    assert "| readmes | 4 | `ec25g_s:step=0.23` | **3.60** |" in table
    assert "0.29 (3.20 ✗), 0.23 (3.60 ✓), 0.17 (4.10 ✓)" in table
    assert "≤ 3.5 bits within the bound at 0 of 1 cuts" in table
