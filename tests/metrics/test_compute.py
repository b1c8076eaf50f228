"""Per-layer profile and memory accounting on a tiny model."""

from __future__ import annotations

import pytest

from splitinfer.metrics.compute import memory_metrics, profile_layers
from splitinfer.models import split_model, tiny_model


def test_profile_splits_into_device_and_server():
    lm = tiny_model("llama")
    prof = profile_layers(lm, prompt_tokens=8, context_tokens=16, repeats=1)
    assert len(prof.prefill_s) == len(prof.decode_s) == lm.num_layers + 2  # embed, layers, head
    for cut in range(lm.num_layers + 1):
        d, s, w = prof.device(cut), prof.server(cut), prof.whole()
        assert d["decode_s_per_token"] + s["decode_s_per_token"] == pytest.approx(w["decode_s_per_token"])
        assert d["flops_per_token"] + s["flops_per_token"] == pytest.approx(w["flops_per_token"])
    assert prof.device(0)["flops_per_token"] == 0  # an embedding lookup


def test_memory_is_weights_plus_kv_cache():
    lm = tiny_model("llama")
    dev, srv = split_model(lm, [3])
    m = memory_metrics(dev, srv, context_tokens=100)
    assert m["device_memory_bytes"] == dev.param_bytes() + 100 * dev.kv_bytes_per_token()
    assert m["device_kv_bytes_per_token"] == 3 * 2 * 2 * 16 * 4  # layers * (K,V) * kv heads * head_dim * fp32
