"""The issue's "done when", on the real model and the shipped task: with a lossless codec a split scores
every example exactly as lm-eval's own `hf` model does on the same checkpoint (in process and against a
real `splitinfer serve`); with a lossy codec the scores differ and the comparison gives Δ with an interval."""

from __future__ import annotations

import math

import pytest

from .conftest import LIMIT, hf_evaluate, responses

pytestmark = pytest.mark.slow


def _split_result(real_model, mc_tasks, limit=LIMIT, **kw) -> dict:
    from splitinfer.eval.harness import SplitLM
    from splitinfer.eval.run import EvalSettings, evaluate_model

    model = SplitLM(real_model, batch_size=8, **kw)
    try:
        return evaluate_model(model, mc_tasks, EvalSettings(limit=limit, batch_size=8))
    finally:
        model.close()


def _assert_same_scores(split: dict, ref: dict, n: int = LIMIT) -> None:
    """Every example's loglikelihoods within 1e-4, the same greedy flags and answers (the first `n`
    examples of the reference)."""
    a, b = responses(split, "splitinfer_mc"), responses(ref, "splitinfer_mc")
    b = {k: v for k, v in b.items() if k[0] < n}
    assert a.keys() == b.keys() and len(a) == 4 * n
    worst = max(abs(a[k][0] - b[k][0]) for k in a)
    assert worst < 1e-4, f"largest loglikelihood difference {worst:.2e}"
    assert [a[k][1] for k in sorted(a)] == [b[k][1] for k in sorted(b)]  # is_greedy
    for m in ("acc", "acc_norm"):
        assert ([s[m] for s in split["samples"]["splitinfer_mc"]]
                == [s[m] for s in ref["samples"]["splitinfer_mc"] if s["doc_id"] < n])
    if n == LIMIT:
        for m in ("acc,none", "acc_norm,none"):
            assert split["results"]["splitinfer_mc"][m] == ref["results"]["splitinfer_mc"][m]


def _assert_lossy(ev, ref: dict, n: int = LIMIT) -> None:
    a, b = responses(ev.result, "splitinfer_mc"), responses(ref, "splitinfer_mc")
    assert max(abs(a[k][0] - b[k][0]) for k in a) > 1e-2  # the codec changed the scores
    rows = {r["metric"]: r for r in ev.rows}
    assert set(rows) == {"acc", "acc_norm"}
    for r in rows.values():
        assert r["n"] == n
        assert r["delta_ci_low"] <= r["delta"] <= r["delta_ci_high"]
        assert r["delta"] == pytest.approx(r["split"] - r["unsplit"], abs=1e-9)
        assert not math.isnan(r["split_stderr"])
    # the baseline is the unsplit model scored by the same code: equal to lm-eval's hf model's answers
    if n == LIMIT:
        assert rows["acc"]["unsplit"] == ref["results"]["splitinfer_mc"]["acc,none"]


@pytest.fixture(scope="module")
def baseline_cache(tmp_path_factory):
    """The unsplit baseline's disk cache in a fresh folder (the model itself is already loaded)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPLITINFER_CACHE", str(path))
        from splitinfer.eval import run

        mp.setattr(run, "_BASELINES", {})
        yield path


def _evaluate(real_model, mc_tasks, limit=LIMIT, **kw):
    from splitinfer.eval.run import EvalSettings, evaluate_tasks

    return evaluate_tasks(real_model, mc_tasks, settings=EvalSettings(limit=limit, batch_size=8), **kw)


@pytest.fixture(scope="module")
def lossy(real_model, mc_tasks, baseline_cache, hf_mc):
    return _evaluate(real_model, mc_tasks, cut=15, codec="int4_b32")


def test_lossless_split_scores_exactly_as_lm_eval_hf(real_model, mc_tasks, hf_mc, baseline_cache):
    ev = _evaluate(real_model, mc_tasks, cut=15, codec="fp32")
    _assert_same_scores(ev.result, hf_mc)
    assert all(r["delta"] == 0 and r["delta_ci_low"] == r["delta_ci_high"] == 0 and r["n"] == LIMIT
               for r in ev.rows)


def test_lossy_codec_differs_and_the_table_shows_delta_with_an_interval(lossy, hf_mc, baseline_cache):
    from splitinfer.eval.compare import format_table

    _assert_lossy(lossy, hf_mc)
    assert list((baseline_cache / "eval").glob("unsplit-*.json"))  # computed once per model, then cached
    table = format_table(lossy.rows)
    assert "Δ [95 % CI, paired]" in table and f"/ {LIMIT} |" in table


def test_the_unsplit_baseline_is_cached_across_cuts_and_codecs(real_model, mc_tasks, lossy, baseline_cache):
    from splitinfer.eval import run
    from splitinfer.eval.run import EvalSettings, unsplit_baseline

    run._BASELINES.clear()  # from disk this time
    base = unsplit_baseline(real_model, mc_tasks, EvalSettings(limit=LIMIT, batch_size=4))
    assert base["cached"] and base["results"] == lossy.baseline["results"]


SERVED = 2  # examples over the wire (a request at a time: the slowest path; 8 loglikelihoods)


def test_served_half_scores_exactly_and_lossy_equals_in_process(real_model, mc_tasks, hf_mc, lossy, served_url):
    import lm_eval

    # lm-eval's own route: the registered model name and a model_args string
    served = lm_eval.simple_evaluate(model="splitinfer", model_args=f"cut=15,codec=fp32,server={served_url}",
                                     tasks=mc_tasks.build(), task_manager=mc_tasks.task_manager, limit=SERVED,
                                     batch_size=8, log_samples=True, bootstrap_iters=0)
    assert served["config"]["model"] == "splitinfer"
    _assert_same_scores(served, hf_mc, SERVED)
    ev = _evaluate(real_model, mc_tasks, SERVED, cut=15, codec="int4_b32", server=served_url)
    _assert_lossy(ev, hf_mc, SERVED)
    assert served_url in ev.description and ev.bytes_up > 0
    a, b = responses(ev.result, "splitinfer_mc"), responses(lossy.result, "splitinfer_mc")
    assert max(abs(a[k][0] - b[k][0]) for k in a) < 1e-4  # the served half decodes what the in-process one does


def test_rolling_and_generation_tasks_match_lm_eval_hf(real_model, tmp_path):
    """loglikelihood_rolling and generate_until through the split (fp32) give what `hf` gives."""
    import json

    from splitinfer.eval.tasks import task_set

    texts = ["Split inference runs the first layers on a phone and the rest on a server."]
    prompts = [{"q": "What is the capital of France?", "a": "Paris"}, {"q": "What is 2 + 3?", "a": "5"}]
    (tmp_path / "roll.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    common = "dataset_path: json\ntest_split: test\n"
    (tmp_path / "roll.yaml").write_text(
        f"task: t_roll\n{common}dataset_kwargs:\n  data_files:\n    test: roll.jsonl\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n")
    (tmp_path / "gen.yaml").write_text(
        f"task: t_gen\n{common}dataset_kwargs:\n  data_files:\n    test: gen.jsonl\n"
        "output_type: generate_until\ndoc_to_text: 'Question: {{q}}\\nAnswer:'\ndoc_to_target: '{{a}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    tasks = task_set("t_roll,t_gen", [tmp_path])
    ref = hf_evaluate(real_model, tasks, limit=None)
    split = _split_result(real_model, tasks, cut=15, codec="fp32")
    a, b = responses(split, "t_roll"), responses(ref, "t_roll")
    assert len(a) == 1 and max(abs(a[k] - b[k]) for k in a) < 1e-4
    a, b = responses(split, "t_gen"), responses(ref, "t_gen")
    assert len(a) == 2 and a == b and all(isinstance(v, str) for v in a.values())
