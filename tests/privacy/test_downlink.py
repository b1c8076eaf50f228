"""The U-shape's downlink privacy rows: what the server infers about the answer from what it returns."""

from __future__ import annotations

import pytest
import torch

from splitinfer.models import tiny_model
from splitinfer.privacy.downlink import attack_logits, downlink_leakage, downlink_payload


def test_public_tail_on_the_downlink_recovers_the_greedy_answer_and_the_logit_lens_less(one_torch_thread):
    lm = tiny_model("llama")
    prompts = [torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    rows = {r.attack: r for r in downlink_leakage(lm, [1, 2], prompts, 8, up_codec="none", down_codec="none")}
    assert rows["public_tail"].tokens == 24 and rows["public_tail"].recovered == 24  # the public weights replay it
    assert rows["logit_lens"].recovered < 24  # layer 2 of 4 is not the answer yet
    assert rows["public_tail"].as_dict()["ci_low"] < 1.0


def test_downlink_payload_is_what_the_u_shape_server_returns(one_torch_thread):
    lm = tiny_model("llama")
    ids = torch.randint(3, 256, (1, 7), generator=torch.Generator().manual_seed(4))
    h = downlink_payload(lm, [1, 3], ids)
    assert h.shape == (1, 7, lm.hidden_size)
    with pytest.raises(ValueError, match="not one of"):
        attack_logits(lm, [1, 3], h, "oracle")



def test_downlink_rows_in_the_privacy_pipeline(tmp_path, one_torch_thread):
    """`topology=ushape attack=downlink`: a sweep job's privacy metrics hold the downlink rows (exactly what
    `downlink_leakage` finds on the job's prompts), the report lists them as leakage columns, and they never
    become the prompt's headline leakage (that is the uplink attacks' `privacy/<attack>/token_acc`)."""
    from hydra.utils import instantiate

    from splitinfer.experiment import get_corpus, run_job
    from splitinfer.report.measures import LEAK, annotate, privacy_columns
    from tests.experiments.conftest import TINY, compose

    cfg = compose([*TINY, "split.cut=1", "topology=ushape", "topology.cut_b=3", "attack=downlink",
                   "topology.down_codec=fp16"])
    m = run_job(cfg, out_dir=tmp_path)
    lm = instantiate(cfg.model).load()
    corpus = get_corpus(lm, instantiate(cfg.data), reuse=True)
    prompts = [corpus.prompts[p:p + 1] for p in range(corpus.prompts.shape[0])]
    want = downlink_leakage(lm, [1, 3], prompts, corpus.gen_tokens, up_codec=instantiate(cfg.codec),
                            down_codec="fp16")
    for row in want:
        key = f"privacy/downlink/{row.attack}/answer_token_acc"
        assert m[key] == pytest.approx(row.accuracy, abs=1e-4) and m[key.replace("answer_token_acc",
                                                                                "answer_tokens")] == row.tokens
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"]
    assert m["privacy/downlink/public_tail/answer_tokens"] == corpus.prompts.shape[0] * corpus.gen_tokens
    rows = [dict(m)]
    annotate(rows)
    assert "privacy/downlink/public_tail/answer_token_acc" in privacy_columns(rows)
    assert LEAK not in rows[0]  # the answer's leakage is not the prompt's
    from splitinfer.report.recommend import recommend

    text = recommend([m], "bytes").explanation  # the recommendation quotes the downlink rows, measured
    assert "Downlink (measured, attack=downlink)" in text and "no attack on the uplink" in text
    assert f"public tail {100 * m['privacy/downlink/public_tail/answer_token_acc']:.1f} %" in text


def test_downlink_attack_needs_a_ushape_job(tmp_path):
    from splitinfer.errors import ConfigError
    from splitinfer.experiment import run_job
    from tests.experiments.conftest import TINY, compose

    with pytest.raises(ConfigError, match="add topology=ushape"):
        run_job(compose([*TINY, "attack=downlink"]), out_dir=tmp_path)
    with pytest.raises(ConfigError, match="each must be one of"):
        run_job(compose([*TINY, "split.cut=1", "topology=ushape", "topology.cut_b=3", "attack=downlink",
                         "attack.attacks=[oracle]"]), out_dir=tmp_path)
