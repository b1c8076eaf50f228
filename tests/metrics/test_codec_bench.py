"""splitinfer.metrics.codec_bench: the codec benchmark's figures are a sweep job's, the step bisection, codec specs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from splitinfer.codecs import build_codec
from splitinfer.errors import ConfigError
from splitinfer.metrics import codec_bench


@pytest.fixture(scope="module")
def tiny_lm():
    from splitinfer.models import load_model

    return load_model("tiny-llama")  # 4 layers, hidden size 64, from its config (no download)


def _args(**kw):
    """The options codec_bench reads (what scripts/bench_codecs.py parses), as a plain object."""
    base = dict(cuts=[1, 2], codecs=["int8", "ec37g_s"], corpora=["pydoc"], n_windows=2, seq_len=24, seed=0,
                threads=1, repeats=1, no_timing=False)
    return SimpleNamespace(**{**base, **kw})


def test_bench_figures_equal_a_sweep_jobs_on_the_same_windows(tmp_path, tiny_lm):
    """The benchmark is a recipe over the library: its Δppl/KL/top-1/bytes for a (cut, codec) are exactly a
    sweep job's on the same windows (same corpus spec, same split path, same statistics)."""
    from hydra import compose, initialize_config_dir

    from splitinfer.experiment import run_job

    args = _args()
    rows = codec_bench.run(tiny_lm, args)
    assert [(r["cut"], r["codec"]) for r in rows] == [(1, "int8"), (1, "ec37g_s"), (2, "int8"), (2, "ec37g_s")]
    conf = Path(__file__).resolve().parents[2] / "conf"
    spec = codec_bench.corpus_spec(args)
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


def test_run_refuses_a_cut_outside_the_model(tiny_lm):
    with pytest.raises(ConfigError, match=r"--cuts \[0, 4\] out of range: cuts must be in 1\.\.3"):
        codec_bench.run(tiny_lm, _args(cuts=[0, 1, 4]))


def test_codec_spec_arg():
    assert codec_bench.codec_spec_arg("ec37g") == "ec37g"
    assert codec_bench.codec_spec_arg("ec25g_s:step=0.27:coder=rans_py") == {"name": "ec25g_s", "step": 0.27,
                                                                             "coder": "rans_py"}
    with pytest.raises(ConfigError, match="'ec37g:coder': 'coder' is not key=value"):
        codec_bench.codec_spec_arg("ec37g:coder")
    assert codec_bench.family_spec("ec25g_s", 0.270) == "ec25g_s:step=0.27"
    assert codec_bench.codec_key("ec25g_s") == codec_bench.codec_key("ec30g_s:step=0.25")  # same codec, same key
    assert codec_bench.codec_key("ec25g_s") != codec_bench.codec_key("ec25g_s:step=0.27")


@pytest.mark.parametrize("answer", [-1, 0, 3, 7, 12, 17])  # -1: no step passes; 17: the coarsest passes
def test_bisect_step_finds_the_coarsest_passing_step(answer):
    grid = codec_bench.step_grid(0.15, 0.49, 0.02)
    assert len(grid) == 18 and grid[0] == 0.15 and grid[-1] == 0.49
    tried = []

    def passes(step):
        tried.append(step)
        return grid.index(step) <= answer

    ok, bad = codec_bench.bisect_step(passes, grid, start=5, max_evals=10)
    assert ok == (answer if answer >= 0 else None)
    assert bad == (answer + 1 if answer < 17 else None)
    assert len(tried) == len(set(tried)) <= 10  # no step measured twice
    tried.clear()
    codec_bench.bisect_step(passes, grid, start=5, max_evals=2)
    assert len(tried) <= 2




def _bisect_args(**kw):
    return _args(**{"bisect": ["ec25g_s"], "step_range": (0.15, 0.49), "step_res": 0.02, "step_start": 0.27,
                    "max_evals": 2, "max_dppl": 1.0, **kw})


def test_tune_on_checks_each_corpus_at_the_steps_chosen_on_the_tuning_corpus(tiny_lm):
    """Issue 28's protocol: steps bisected on pydoc alone, every other corpus measured once per cut at them;
    --steps-from (the tuning rows of an earlier run) gives the same checks without bisecting again."""
    args = _bisect_args(corpora=["pydoc", "licenses"], tune_on="pydoc")
    rows = []
    codec_bench.run_bisect(tiny_lm, args, rows.append, {})
    tuning = [r for r in rows if not r["tuned_on"]]
    checks = [r for r in rows if r["tuned_on"]]
    assert {r["corpus"] for r in tuning} == {"pydoc"} and len(tuning) == 4  # 2 cuts x max_evals
    assert [(r["corpus"], r["cut"], r["tuned_on"]) for r in checks] == [("licenses", 1, "pydoc"),
                                                                         ("licenses", 2, "pydoc")]
    corpus, steps = codec_bench.tuned_steps(tuning, ["ec25g_s"], [1, 2], 1.0)
    assert corpus == "pydoc"
    assert [r["codec"] for r in checks] == [codec_bench.family_spec("ec25g_s", steps["ec25g_s", c]) for c in (1, 2)]
    again = []
    codec_bench.run_bisect(tiny_lm, _bisect_args(corpora=["licenses"]), again.append, {}, tuning=tuning)
    assert [(r["codec"], r["delta_ppl_pct"], r["bits_per_value"]) for r in again] == \
        [(r["codec"], r["delta_ppl_pct"], r["bits_per_value"]) for r in checks]


def test_another_family_is_measured_at_the_steps_one_family_chose(tiny_lm):
    """--steps-family: the held-out check of ec25g_s's pydoc steps measured with ec25g_s:refs=true (same
    reconstruction, so the same Δppl); --own-steps: each corpus at the steps its own bisection chose (an oracle
    table replayed), as bisection rows."""
    rows = []
    codec_bench.run_bisect(tiny_lm, _bisect_args(corpora=["pydoc", "licenses"]), rows.append, {})
    refs = "ec25g_s:refs=true"
    again = []
    codec_bench.run_bisect(tiny_lm, _bisect_args(corpora=["pydoc", "licenses"], steps_family="ec25g_s",
                                                 own_steps=True, bisect=[refs]), again.append, {}, tuning=rows)
    for corpus in ("pydoc", "licenses"):
        _, steps = codec_bench.tuned_steps([r for r in rows if r["corpus"] == corpus], ["ec25g_s"], [1, 2], 1.0)
        mine = [r for r in again if r["corpus"] == corpus]
        assert [r["codec"] for r in mine] == [codec_bench.family_spec(refs, steps["ec25g_s", c]) for c in (1, 2)]
        assert all(not r["tuned_on"] for r in mine)
        for r in mine:
            old = next(o for o in rows if o["corpus"] == corpus and o["cut"] == r["cut"]
                       and o["codec"] == r["codec"].replace(":refs=true", ""))
            assert r["delta_ppl_pct"] == old["delta_ppl_pct"]  # the same reconstruction
    checks = []
    tuning = [r for r in rows if r["corpus"] == "pydoc"]
    codec_bench.run_bisect(tiny_lm, _bisect_args(corpora=["licenses"], steps_family="ec25g_s", bisect=[refs]),
                           checks.append, {}, tuning=tuning)
    assert [(r["corpus"], r["tuned_on"]) for r in checks] == [("licenses", "pydoc")] * 2
    with pytest.raises(ConfigError, match="no ec30g_s row at cut 1"):
        codec_bench.run_bisect(tiny_lm, _bisect_args(corpora=["licenses"], steps_family="ec30g_s"), checks.append,
                               {}, tuning=tuning)
    with pytest.raises(ConfigError, match="add --steps-from CSV"):
        codec_bench.run_bisect(tiny_lm, _bisect_args(steps_family="ec25g_s"), checks.append, {})
    with pytest.raises(ConfigError, match="no rows of corpus 'readmes'"):
        codec_bench.run_bisect(tiny_lm, _bisect_args(corpora=["readmes"], own_steps=True), checks.append, {},
                               tuning=rows)


def test_tuned_steps_takes_the_coarsest_passing_step_else_the_finest_tried():
    def row(cut, step, hi, corpus="pydoc"):
        return {"corpus": corpus, "cut": cut, "codec": f"ec25g_s:step={step}", "delta_ppl_ci_hi": hi}

    rows = [row(1, 0.27, 1.3), row(1, 0.21, 0.9), row(1, 0.15, 0.4), row(2, 0.27, 1.5), row(2, 0.19, 1.1),
            {**row(1, 0.5, 0.1, "licenses"), "tuned_on": "pydoc"}]  # a check row is not a tuning row
    assert codec_bench.tuned_steps(rows, ["ec25g_s"], [1, 2], 1.0) == ("pydoc", {("ec25g_s", 1): 0.21,
                                                                                  ("ec25g_s", 2): 0.19})
    with pytest.raises(ConfigError, match="no ec25g_s row at cut 3 in the tuning run"):
        codec_bench.tuned_steps(rows, ["ec25g_s"], [1, 3], 1.0)
    with pytest.raises(ConfigError, match=r"one corpus's --bisect run, found corpora \['licenses', 'pydoc'\]"):
        codec_bench.tuned_steps([*rows, row(1, 0.3, 0.5, "licenses")], ["ec25g_s"], [1], 1.0)


def test_a_row_of_another_wire_format_is_not_reused():
    """A row measured under another wire format has other bits: --reuse measures it again."""
    row = {"corpus": "licenses", "cut": 3, "codec": "ec25g_s", "corpus_digest": "d", "delta_ppl_ci_hi": 0.5}
    now = build_codec("ec25g_s").wire_format
    assert now != build_codec({"name": "ec25g_s", "coder": "rans_py"}).wire_format  # the old coder's session head
    key = ("d", 3, codec_bench.codec_key("ec25g_s"), now)
    assert list(codec_bench.reusable_rows([{**row, "wire_format": now}])) == [key]
    assert codec_bench.reusable_rows([{**row, "wire_format": "v1.1"}]) != {}  # kept, under its own format
    assert key not in codec_bench.reusable_rows([{**row, "wire_format": "v1.1"}])
    assert codec_bench.reusable_rows([row]) == {}  # measured before the format was recorded
