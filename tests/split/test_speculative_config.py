"""`split.speculate` in a Hydra job, `splitinfer generate --speculate`, and the latency model's modes."""

from __future__ import annotations

import math

import pytest

from splitinfer.metrics.latency import MODES, DeviceProfile, LinkProfile, estimate_modes

TINY = ["model=tiny_llama", "data=smoke", "logger=jsonl", "split.cut=2", "codec=int8", "disk_cache=false",
        "metrics.prompt_tokens=16", "metrics.context_tokens=32", "metrics.profile_repeats=1"]


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from tests.experiments.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_hydra_job_measures_speculation_and_every_mode(tmp_path, monkeypatch):
    from splitinfer import cache
    from splitinfer.experiment import run_job

    monkeypatch.setenv("SPLITINFER_CACHE", str(tmp_path / "cache"))
    cache.clear()
    cfg = _compose([*TINY, "split.speculate=auto", "split.drafter=ngram", "link=4g_lte"])
    m = run_job(cfg, tmp_path / "job")
    cache.clear()
    assert m["spec_drafter"] == "ngram" and m["spec_rounds"] > 0
    assert 1.0 <= m["spec_tokens_per_round"] and m["spec_positions_per_round"] >= 1.0
    for mode in MODES:
        assert m[f"tpot_{mode}_s"] > 0 and math.isfinite(m[f"ttft_{mode}_s"])
    assert m["tpot_per_token_split_s"] == pytest.approx(m["tpot_s"])


@pytest.mark.parametrize("value", ["fast", "17"])
def test_hydra_refuses_bad_speculate_before_loading(tmp_path, value):
    from splitinfer.errors import ConfigError
    from splitinfer.experiment import run_job

    with pytest.raises(ConfigError, match="speculate="):
        run_job(_compose([*TINY, f"split.speculate={value}"]), tmp_path / "job")
    with pytest.raises(ConfigError, match="split.drafter"):
        run_job(_compose([*TINY, "split.speculate=2", "split.drafter=oracle"]), tmp_path / "job2")


def _metrics(**kw):
    m = {"device_prefill_s_per_token": 0.001, "server_prefill_s_per_token": 0.001, "device_decode_s_per_token": 0.01,
         "server_decode_s_per_token": 0.01, "whole_prefill_s_per_token": 0.002, "whole_decode_s_per_token": 0.02,
         "up_bytes_per_token_prefill": 1000.0, "up_bytes_per_token_decode": 1000.0, "device_flops_per_token": 1e6,
         "whole_flops_per_token": 2e6, "device_kv_bytes_per_token": 3000.0}
    return {**m, **kw}


def test_latency_modes_follow_round_trips_and_acceptance():
    lte = LinkProfile("lte", 5.85, 13.0, 70.0)
    phone = DeviceProfile("same", 1.0)
    none = estimate_modes(_metrics(), lte, phone, 32)
    assert none["tpot_speculative_split_s"] == none["tpot_per_token_split_s"]
    good = estimate_modes(_metrics(spec_tokens_per_round=3.0, spec_positions_per_round=4.0,
                                   spec_up_bytes_per_round=4100.0), lte, phone, 32)
    assert good["speedup_speculative_split_vs_per_token"] > 1.5  # 70 ms round trip shared by 3 tokens
    lo = LinkProfile("lo", 1e4, 1e4, 0.05)
    bad = estimate_modes(_metrics(spec_tokens_per_round=1.1, spec_positions_per_round=4.0,
                                  spec_up_bytes_per_round=4100.0), lo, phone, 32)
    assert bad["speedup_speculative_split_vs_per_token"] < 1.0  # no round trip to save: the drafts cost
    # hand-off: no round trip per token, but its TTFT pays the KV upload
    assert good["tpot_handoff_s"] < good["tpot_per_token_split_s"]
    assert good["ttft_handoff_s"] > good["ttft_per_token_split_s"]


def test_generate_refuses_bad_speculate_before_loading(capsys):
    from splitinfer.cli import main

    assert main(["generate", "--model", "tiny-llama", "--speculate", "fast", "hi"]) == 2
    assert "speculate='fast'" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_speculative_cli_on_the_real_model(capsys, real_model):
    from splitinfer.cli import main
    from splitinfer.split import in_process_generator

    prompt = "The quick brown fox jumps over the lazy dog. The quick brown fox"
    plain = in_process_generator(real_model, [8]).generate(prompt, 10, chat=False).text
    assert main(["generate", "--cut", "8", "--max-new-tokens", "10", "--stats", "--no-chat", "--speculate", "4",
                 prompt]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == plain.strip() and "speculative (ngram)" in out.err


def test_recommend_states_the_modes_when_measured():
    from splitinfer.report.recommend import modes_statement

    assert modes_statement({"tpot_s": 0.1}) is None
    text = modes_statement({"tpot_per_token_split_s": 0.09, "tpot_speculative_split_s": 0.04, "tpot_handoff_s": 0.02,
                            "spec_drafter": "ngram", "spec_acceptance": 0.5, "spec_tokens_per_round": 2.5})
    assert "speculative split (ngram drafts, 50% accepted, 2.50 tokens per round trip) 0.040 s" in text
    assert "hand-off" in text and "0.020 s" in text
