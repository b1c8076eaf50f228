"""Weight-only int8 / int4 device halves (torchao): the formats' levels, only the device half changes."""

from __future__ import annotations

import pytest
import torch

from splitinfer.errors import ConfigError
from splitinfer.models import split_model, tiny_model
from splitinfer.models.adapters import decoder_parts
from splitinfer.models.quantize import quantize_device_half


def _dense(w: torch.Tensor) -> torch.Tensor:
    return w.dequantize() if hasattr(w, "dequantize") else w


def test_only_the_device_half_changes_and_a_tied_head_is_kept():
    lm = tiny_model("llama", tie_word_embeddings=True)
    q = quantize_device_half(lm, 2, 4, group_size=16)
    orig, new = decoder_parts(lm.model), decoder_parts(q.model)
    w = _dense(new.layers[0].mlp.up_proj.weight)
    assert not torch.equal(orig.layers[0].mlp.up_proj.weight, w)
    # int4 group-wise: within each group of 16 inputs at most 16 levels, multiples of one scale
    groups = w.reshape(-1, 16)
    assert max(len(torch.unique(g)) for g in groups) <= 16
    assert torch.equal(orig.layers[2].mlp.up_proj.weight, new.layers[2].mlp.up_proj.weight)
    assert torch.equal(orig.head.weight, new.head.weight)  # the server's LM head: original weights
    assert not torch.equal(orig.embed.weight, _dense(new.embed.weight))
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    ref, out = lm.model(ids).logits, q.model(ids).logits
    assert not torch.allclose(ref, out) and (ref - out).abs().mean() < 0.5 * ref.abs().mean()
    dev, srv = split_model(q, [2])  # a split of the quantized copy is exact against its own forward
    assert torch.allclose(srv(dev(ids)), out, atol=1e-5)


def test_int8_is_closer_than_int4_and_bad_bits_are_refused():
    lm = tiny_model("llama")
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(2))
    ref = lm.model(ids).logits
    err = {b: (quantize_device_half(lm, 4, b, group_size=16).model(ids).logits - ref).abs().mean() for b in (8, 4)}
    assert 0 < err[8] < err[4]
    row = _dense(decoder_parts(quantize_device_half(lm, 1, 8).model).layers[0].self_attn.q_proj.weight)[0]
    assert len(torch.unique(row)) <= 255
    with pytest.raises(ConfigError, match="device weight bits 3"):
        quantize_device_half(lm, 2, 3)
    with pytest.raises(ConfigError, match="group_size=48 does not divide"):
        quantize_device_half(lm, 2, 4, group_size=48)
