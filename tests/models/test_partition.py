"""Composing the stages with no codec reproduces the unsplit model, for every cut and tested model type:
padded batches, chains, incremental decoding through per-stage KV caches, sliding / mixed local-global
attention (the tiny configs' windows are shorter than the sequences)."""

from __future__ import annotations

import pytest
import torch

from splitinfer.errors import ConfigError
from splitinfer.generation import in_process_generator, unsplit_generate
from splitinfer.models import (
    TINY_FAMILIES,
    adapters,
    load_model,
    run_chain,
    split_model,
    tiny_model,
    validate_cuts,
)

DECODERS = [f for f in TINY_FAMILIES if f != "bert"]
WINDOWED = [f for f in DECODERS if any(adapters.layer_windows(tiny_model(f).config))]


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def lm(request):
    return tiny_model(request.param, seed=0)


def padded_batch(seed=0, batch=3, length=24, vocab=256):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, :5] = 0  # left padding, as batched generation uses
    mask[2, :11] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


@torch.no_grad()
def reference(lm, ids, mask, pos):
    if lm.kind == "encoder":
        return lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits


def max_diff_on_real_tokens(out, ref, mask):
    return ((out - ref).abs() * mask[..., None]).max().item()


def test_every_cut_matches_unsplit_on_padded_batch(lm):
    ids, mask, pos = padded_batch()
    pos = None if lm.kind == "encoder" else pos
    ref = reference(lm, ids, mask, pos)
    for k in range(lm.num_layers + 1):
        stages = split_model(lm, [k])
        assert [s.start_layer for s in stages] == [0, k]
        out = run_chain(stages, ids, position_ids=pos, attention_mask=mask)
        assert max_diff_on_real_tokens(out, ref, mask) <= 1e-5, f"cut {k}"


@pytest.mark.parametrize("cuts", [[0, 4], [1, 3], [0, 2, 4], [1, 2, 3]])
def test_chains_match_unsplit(lm, cuts):
    ids, mask, pos = padded_batch(seed=1)
    pos = None if lm.kind == "encoder" else pos
    out = run_chain(split_model(lm, cuts), ids, position_ids=pos, attention_mask=mask)
    assert max_diff_on_real_tokens(out, reference(lm, ids, mask, pos), mask) <= 1e-5


@pytest.mark.parametrize("family", DECODERS)
def test_incremental_decoding_with_per_stage_caches(family):
    """Prefill then one token at a time through each stage's own KV cache == one full pass."""
    lm = tiny_model(family)
    ids = torch.randint(3, 256, (2, 30), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    ref = reference(lm, ids, mask, pos)
    stages = split_model(lm, [1, 3])
    caches = [s.new_cache() for s in stages]
    outs = [run_chain(stages, ids[:, :20], position_ids=pos[:, :20], attention_mask=mask[:, :20], caches=caches)]
    for t in range(20, 30):
        outs.append(run_chain(stages, ids[:, t:t + 1], position_ids=pos[:, t:t + 1],
                              attention_mask=mask[:, :t + 1], caches=caches))
    assert max_diff_on_real_tokens(torch.cat(outs, 1), ref, mask) <= 1e-5
    assert all(c.seq_len == 30 for c in caches if stages[caches.index(c)].end_layer > stages[caches.index(c)].start_layer)


def test_the_tested_types():
    assert len(DECODERS) >= 11 and {"qwen3", "gemma3_text", "phi3", "smollm3", "olmo2", "gpt_neox"} <= set(DECODERS)
    # local attention of every flavour: all layers (mistral, phi3, starcoder2), mixed (gemma2/3, qwen3, smollm3)
    assert {"mistral", "gemma3_text", "gemma2", "qwen3", "smollm3", "phi3", "starcoder2"} <= set(WINDOWED)


@pytest.mark.parametrize("family", WINDOWED)
def test_sliding_windows_are_applied(family):
    """The tiny configs' windows are shorter than the sequence; ignoring them would change the logits."""
    lm = tiny_model(family)
    windows = adapters.layer_windows(lm.config)
    ids = torch.randint(3, 256, (1, 24), generator=torch.Generator().manual_seed(3))
    assert max(w for w in windows if w) < ids.shape[1]
    ref = reference(lm, ids, torch.ones_like(ids), None)
    stages = split_model(lm, [2])
    assert [w for s in stages for w in s.layer_windows] == windows
    assert max_diff_on_real_tokens(run_chain(stages, ids), ref, torch.ones_like(ids)) <= 1e-5
    for s in stages:
        s.layer_windows = [None] * len(s.layer_windows)
    assert (run_chain(stages, ids) - ref).abs().max() > 1e-3


def test_mixed_local_global_layers_use_their_own_rotary():
    """Gemma 3's local layers rotate with a different RoPE base than its global ones."""
    lm = tiny_model("gemma3_text")
    assert adapters.layer_kinds(lm.config) == ["sliding_attention", "full_attention"] * 2
    ids = torch.randint(3, 256, (1, 12), generator=torch.Generator().manual_seed(5))
    ref = reference(lm, ids, torch.ones_like(ids), None)
    stages = split_model(lm, [1])
    assert max_diff_on_real_tokens(run_chain(stages, ids), ref, torch.ones_like(ids)) <= 1e-5
    for s in stages:
        s.layer_kinds = ["full_attention"] * len(s.layer_kinds)
    assert (run_chain(stages, ids) - ref).abs().max() > 1e-4


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_models_load_by_name(family):
    lm = load_model(f"tiny-{family}")
    assert lm.family == lm.model_type == lm.config.model_type
    assert (lm.num_layers, lm.hidden_size, lm.vocab_size) == (4, 64, 256)
    assert lm.fingerprint == tiny_model(family).fingerprint


@pytest.mark.parametrize("family, cuts", [(f, c) for f in ("llama", "gpt2") for c in ([0], [2], [4], [1, 3])]
                         + [(f, [1, 3]) for f in DECODERS if f not in ("llama", "gpt2")])
def test_split_greedy_generation_equals_unsplit(family, cuts):
    lm = tiny_model(family)
    ids = torch.randint(3, 256, (1, 7), generator=torch.Generator().manual_seed(4))
    ref = unsplit_generate(lm, ids, 12)
    res = in_process_generator(lm, cuts).generate(ids, 12)
    assert res.token_ids == ref
    payload = (ids.shape[1] + len(ref) - 1) * lm.hidden_size * 4  # fp32 hidden states, one per position
    assert payload <= res.bytes_up <= payload + 100 * len(ref)  # plus a small header per message


def test_bert_pooled_output():
    lm = tiny_model("bert")
    ids, mask, _ = padded_batch()
    mask = mask.flip(-1)  # encoders pad on the right; the pooler reads position 0
    ref = lm.model(input_ids=ids, attention_mask=mask).pooler_output
    out = run_chain(split_model(lm, [2], encoder_output="pooled"), ids, attention_mask=mask)
    assert (out - ref).abs().max().item() <= 1e-5
    with pytest.raises(ConfigError, match="encoder output"):
        split_model(lm, [2], encoder_output="cls")


@pytest.mark.parametrize("bad, msg", [
    ([-1], "out of range"), ([5], "out of range"), ([3, 2], "strictly increasing"), ([2, 2], "strictly increasing"),
    (["2"], "not an int"), ([2.0], "not an int"), ([True], "not an int"), ([], "empty"), ("2", "int or a list"),
])
def test_invalid_cuts_name_layer_count_and_range(bad, msg):
    lm = tiny_model("llama")
    with pytest.raises(ConfigError, match=msg) as e:
        split_model(lm, bad)
    assert "4 layers" in str(e.value) and "0..4" in str(e.value)


def test_validate_cuts_accepts_int_and_list():
    assert validate_cuts(0, 30) == [0]
    assert validate_cuts([1, 15, 30], 30) == [1, 15, 30]


def test_stage_accounting():
    lm = tiny_model("llama")  # untied head: every parameter lives in exactly one stage
    stages = split_model(lm, [1, 3])
    assert sum(s.num_parameters() for s in stages) == sum(p.numel() for p in lm.model.parameters())
    assert sum(s.param_bytes() for s in stages) == 4 * sum(p.numel() for p in lm.model.parameters())
    # 2 (K,V) x layers x kv_heads(2) x head_dim(16) x 4 bytes
    assert [s.kv_bytes_per_token() for s in stages] == [2 * 1 * 2 * 16 * 4, 2 * 2 * 2 * 16 * 4, 2 * 1 * 2 * 16 * 4]
    cache = stages[1].new_cache()
    run_chain(stages[:2], torch.randint(3, 256, (1, 5)), caches=[stages[0].new_cache(), cache])
    assert cache.nbytes() == 5 * stages[1].kv_bytes_per_token()
    cache.crop(3)
    assert cache.seq_len == 3 and cache.nbytes() == 3 * stages[1].kv_bytes_per_token()


@pytest.mark.parametrize("family", DECODERS)
def test_kv_bytes_per_token_is_what_the_cache_holds(family):
    lm = tiny_model(family)
    stages = split_model(lm, [1, 3])
    caches = [s.new_cache() for s in stages]
    run_chain(stages, torch.randint(3, 256, (1, 7)), caches=caches)
    assert [c.nbytes() for c in caches] == [7 * s.kv_bytes_per_token() for s in stages]


@pytest.mark.parametrize("family", ["gemma3_text", "granite", "gpt2"])
def test_embedding_hook_sees_the_embedding_table_rows(family):
    """The hook gets rows of get_input_embeddings().weight (what attacks and dχ-privacy reason about);
    family scaling (Gemma's sqrt(hidden), Granite's multiplier) and GPT-2's positions come after it."""
    lm = tiny_model(family)
    ids = torch.randint(3, 256, (1, 6))
    dev, _ = split_model(lm, [2])
    seen = []
    dev.embedding_hook = lambda h: seen.append(h) or h
    hooked = dev(ids)
    dev.embedding_hook = None
    assert torch.equal(seen[0][0], lm.model.get_input_embeddings().weight[ids[0]])
    assert torch.equal(hooked, dev(ids))


def test_embedding_hook_runs_on_first_stage_only():
    lm = tiny_model("llama")
    ids = torch.randint(3, 256, (1, 6))
    dev, srv = split_model(lm, [2])
    clean = dev(ids)
    dev.embedding_hook = lambda h: h * 0
    assert not torch.allclose(dev(ids), clean)
    srv.embedding_hook = lambda h: h * 0  # ignored: the server stage has no embeddings
    dev.embedding_hook = None
    assert torch.equal(dev(ids), clean)
