"""Weight-only quantization of the device half with torchao: int8 per output row, int4 group-wise.

Phones run the early layers with 4- or 8-bit weights. This applies torchao's `IntxWeightOnlyConfig` to
every linear layer: int8 symmetric with one scale per output row (as llama.cpp's Q8_0), int4 asymmetric
with a scale and a zero point per `group_size` consecutive inputs (as torchao's own int4 weight-only
format and llama.cpp's Q4_1; on SmolLM2 it loses far less than symmetric int4, see
experiments/quantized_device_half), in layers 0..cut-1, and to the token embedding
(on its own copy when the LM head is tied to it, so the server half keeps the original matrix). On this
CPU torchao holds int4 codes unpacked in int8 storage and dequantizes in the matmul: the quality is the
format's, the speed and resident bytes are not a phone's, so memory is accounted in the format's packed
bytes (`ModelShape.weight_bytes`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from splitinfer.errors import ConfigError

WEIGHT_BITS = (4, 8)


def _torchao_config(bits: int, group_size: int):
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType

    if bits == 8:
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size),
                                mapping_type=MappingType.ASYMMETRIC)


@torch.no_grad()
def quantize_device_half(lm, cut: int, bits: int, group_size: int = 32, *, embeddings: bool = True):
    """A copy of `lm` whose device half at `cut` (the token embedding and layers 0..cut-1: every linear
    layer) holds `bits`-bit weights; the server half keeps the original weights, a tied LM head included."""
    from torchao.quantization import quantize_

    from splitinfer.models import validate_cuts
    from splitinfer.models.adapters import decoder_parts

    validate_cuts([cut], lm.num_layers)
    if bits not in WEIGHT_BITS:
        raise ConfigError(f"device weight bits {bits!r} is not one of {list(WEIGHT_BITS)} (16 = no quantization)")
    if bits == 4 and (group_size <= 0 or lm.hidden_size % group_size):
        raise ConfigError(f"group_size={group_size} does not divide the hidden size {lm.hidden_size}; pick a "
                          "divisor such as 32, 64 or 128")
    config = _torchao_config(bits, group_size)
    q = copy.copy(lm)
    q.model = copy.deepcopy(lm.model)
    parts = decoder_parts(q.model)
    for layer in list(parts.layers)[:cut]:
        quantize_(layer, config, filter_fn=lambda m, _fqn: isinstance(m, nn.Linear))
    if embeddings:
        emb = parts.embed
        if parts.head.weight is emb.weight:  # tied: the server's LM head keeps the original matrix
            emb.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
        holder = nn.ModuleDict({"embed": emb})
        quantize_(holder, config, filter_fn=lambda m, _fqn: isinstance(m, nn.Embedding))
    q.fingerprint = f"{lm.fingerprint}-w{bits}g{group_size}c{cut}"
    return q
