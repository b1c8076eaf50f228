"""Drafters: prompt lookup, the early-exit head and its fitted, cached adapter; the hand-off baseline."""

from __future__ import annotations

import pytest
import torch

from splitinfer.errors import ConfigError
from splitinfer.models import tiny_model
from splitinfer.split import InProcessLink, SimulatedLink, in_process_generator
from splitinfer.split.drafters import (
    EarlyExitDrafter,
    NGramDrafter,
    adapter_path,
    build_drafter,
    cuts_and_final_hidden,
    fit_adapter,
    fit_adapters,
)
from splitinfer.split.handoff import handoff_generator


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


def test_cut_hidden_is_the_device_stage_output_and_final_is_the_models(lm):
    ids = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    xs, y = cuts_and_final_hidden(lm, [1, 3], ids)
    drafter = EarlyExitDrafter(lm, 4, (torch.eye(lm.hidden_size), torch.zeros(lm.hidden_size)))
    # the final normed hidden through the head gives the model's own logits
    with torch.no_grad():
        ref = lm.model(ids).logits.reshape(-1, lm.vocab_size)
        assert torch.allclose(drafter.head(y), ref, atol=1e-4)
    from splitinfer.models import split_model

    with torch.no_grad():
        dev = split_model(lm, [3])[0](ids)
        assert torch.allclose(xs[3], drafter.norm(dev).reshape(-1, lm.hidden_size), atol=1e-5)
    assert xs[1].shape == xs[3].shape == y.shape == (20, lm.hidden_size)
    assert not torch.allclose(xs[1], xs[3])


def test_fitted_adapter_beats_the_logit_lens_on_held_out_text(lm):
    g = torch.Generator().manual_seed(1)
    train, test = torch.randint(3, 256, (24, 32), generator=g), torch.randint(3, 256, (8, 32), generator=g)
    (w, b), = fit_adapters(lm, [2], ids=train).values()
    xs, y = cuts_and_final_hidden(lm, [2], test)
    x = xs[2]
    err_fit = (x @ w + b - y).pow(2).mean()
    err_lens = (x - y).pow(2).mean()
    assert err_fit < 0.7 * err_lens
    target = EarlyExitDrafter(lm, 2).head(y).argmax(-1)
    fitted = EarlyExitDrafter(lm, 2, (w, b))
    agree_fit = (fitted.head(x @ w + b).argmax(-1) == target).float().mean()
    agree_lens = (fitted.head(x).argmax(-1) == target).float().mean()
    assert agree_fit > agree_lens


def test_ridge_fit_recovers_a_linear_map():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 8, generator=g)
    w0, b0 = torch.randn(8, 8, generator=g), torch.randn(8, generator=g)
    w, b = fit_adapter(x, x @ w0 + b0, ridge=1e-8)
    assert torch.allclose(w, w0, atol=1e-3) and torch.allclose(b, b0, atol=1e-3)


def test_adapter_is_cached_per_model_and_cut(lm, tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITINFER_CACHE", str(tmp_path))
    from splitinfer.split.drafters import AdapterSpec

    spec = AdapterSpec(tokens=600, window=50)
    first = fit_adapters(lm, [1, 3], spec)
    assert adapter_path(lm, 1, spec).is_file() and adapter_path(lm, 3, spec).is_file()
    assert adapter_path(lm, 1, spec) != adapter_path(lm, 1, AdapterSpec(tokens=601, window=50))
    again = fit_adapters(lm, [3], spec)  # loaded, not refitted
    assert torch.equal(again[3][0], first[3][0])
    d = build_drafter("early_exit", lm=lm, cut=3, spec=spec)
    assert d.weight is not None and isinstance(d.from_hidden(torch.randn(1, lm.hidden_size)), int)


def test_build_drafter_refuses_unknown_names_and_bad_cuts(lm):
    with pytest.raises(ConfigError, match="ngarm.*did you mean 'ngram'"):
        build_drafter("ngarm")
    with pytest.raises(ConfigError, match="needs the model"):
        build_drafter("early_exit")
    with pytest.raises(ConfigError, match="cut=0"):
        fit_adapters(lm, [0], ids=torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ConfigError):
        NGramDrafter(max_ngram=0)


def test_handoff_gives_the_split_text_with_one_upload(lm):
    ids = torch.randint(3, 256, (1, 9), generator=torch.Generator().manual_seed(3))
    ref = in_process_generator(lm, [2]).generate(ids, 12, stop_at_eos=False)
    gen = handoff_generator(lm, 2, wrap=lambda link: SimulatedLink(link, bandwidth_bps=1e6, rtt_s=0.05, sleep=False))
    res = gen.generate(ids, 12, stop_at_eos=False)
    assert res.token_ids == ref.token_ids
    kv = 2 * 2 * 9 * lm.hidden_size * 4 // (lm.config.num_attention_heads // lm.config.num_key_value_heads)
    t = gen.link.traffic
    assert t.prefill_msgs == 1 and t.decode_msgs == 0
    assert t.up_prefill_bytes >= kv + 9 * lm.hidden_size * 4
    assert res.bytes_down == 4 * 12
    assert 0.05 < res.network_s < 0.05 + (t.up_prefill_bytes + 100) * 8 / 1e6
    assert isinstance(gen.link.inner, InProcessLink)


def test_the_handoff_kv_cache_gives_the_prompt_back(lm):
    """A Kerckhoffs server matches each position's layer-0 value against every vocabulary token."""
    from splitinfer.split.handoff import first_layer_value_table, invert_handoff_kv

    ids = torch.randint(0, lm.vocab_size, (1, 24), generator=torch.Generator().manual_seed(5))
    gen = handoff_generator(lm, 3)
    gen.generate(ids, 2, stop_at_eos=False)
    table = first_layer_value_table(lm, chunk=100)
    assert table.shape == (lm.vocab_size, lm.config.num_key_value_heads * lm.hidden_size
                           // lm.config.num_attention_heads)
    rec, rel = invert_handoff_kv(gen.last_upload, table)
    assert rec.tolist() == ids[0].tolist()
    assert float(rel.max()) < 1e-3
    # a deeper layer's values depend on the context: the same lookup there does not give the prompt
    deeper = type(gen.last_upload)()
    deeper.keys, deeper.values = {1: gen.last_upload.keys[1]}, {1: gen.last_upload.values[1]}
    rec1, rel1 = invert_handoff_kv(deeper, table)
    assert float(rel1.median()) > 0.05 and (rec1 == ids[0]).float().mean() < 0.9


def test_distilled_mlp_adapter_fits_the_teacher_better_than_its_ridge_start(lm):
    from splitinfer.split.drafters import MLPAdapterSpec, distill_adapter, teacher_top_k

    g = torch.Generator().manual_seed(2)
    xs, y = cuts_and_final_hidden(lm, [1], torch.randint(3, 256, (16, 32), generator=g))
    x = xs[1]
    spec = MLPAdapterSpec(hidden=64, steps=60, batch=64, lr=3e-3, top_k=8)
    tp, tidx = teacher_top_k(lm, y, spec.top_k)
    ridge = fit_adapter(x, y)
    start, _ = distill_adapter(lm, x, y, MLPAdapterSpec(hidden=64, steps=0), init=ridge)
    assert torch.allclose(start(x), x @ ridge[0] + ridge[1], atol=1e-4)  # starts as the ridge adapter
    trained, steps = distill_adapter(lm, x, y, spec, init=ridge)
    assert steps == 60

    def kl(m):  # on the teacher's top-k: sum p (log p - log q)
        logq = torch.log_softmax(EarlyExitDrafter(lm, 1).head(m(x)).float(), -1).gather(-1, tidx)
        return float((tp * (tp.log() - logq)).sum(-1).mean())

    assert kl(trained) < 0.7 * kl(start)


def test_mlp_adapter_is_cached_and_drafts_the_split_text(lm, tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITINFER_CACHE", str(tmp_path))
    from splitinfer.split import SpeculativeGenerator, split_pair
    from splitinfer.split.drafters import MLPAdapterSpec, load_or_train_mlp_adapters, mlp_adapter_path

    spec = MLPAdapterSpec(tokens=600, window=50, hidden=32, steps=5, batch=32)
    first = load_or_train_mlp_adapters(lm, [2], spec)
    assert mlp_adapter_path(lm, 2, spec).is_file()
    d = build_drafter("early_exit_mlp", lm=lm, cut=2, spec=spec)  # loaded from the cache
    assert d.name == "early_exit_mlp"
    assert torch.equal(d.module.down.weight, first[2].down.weight)
    ids = torch.randint(3, 256, (1, 7), generator=torch.Generator().manual_seed(4))
    ref = in_process_generator(lm, [2]).generate(ids, 10, stop_at_eos=False)
    device, server = split_pair(lm, [2])
    res = SpeculativeGenerator(lm, device, InProcessLink(server), d, gamma=3).generate(ids, 10, stop_at_eos=False)
    assert res.token_ids == ref.token_ids and res.drafted > 0
