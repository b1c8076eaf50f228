"""What `secret_permutation` asks of the server: weights folded with the permutation, and why they give it away.

`fold_permutation(stage, perm)` returns a copy of a server stage (Llama-style decoder layers: RMSNorm,
q/k/v/o and gate/up/down projections; Llama, Qwen2/3, Mistral, SmolLM2...) whose weights read and write the
residual stream in the permuted order: norm weights and the output rows of o_proj/down_proj permuted, the
input columns of q/k/v/gate/up and of the head permuted. On a payload permuted by `perm` it computes what
the public stage computes on the unpermuted one, which is what `SecretPermutation.server_entry` stands for
(`tests/privacy/test_permutation.py` checks the two agree).

`match_folded_weights(public, folded)` is the attack a server holding those weights can run without any
traffic: each permuted input column of the first layer's q_proj is matched to its public column (a linear
assignment on their distances), which recovers the permutation exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from splitinfer.errors import ConfigError

READS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
WRITES = ("self_attn.o_proj", "mlp.down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm")


def _sub(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        if not hasattr(module, part):
            raise ConfigError(f"fold_permutation supports Llama-style layers (RMSNorm; q/k/v/o, gate/up/down "
                              f"projections); this layer has no {path!r}")
        module = getattr(module, part)
    return module


def _check_norm(norm: nn.Module) -> None:
    if getattr(norm, "bias", None) is not None or getattr(norm, "weight", None) is None:
        raise ConfigError(f"fold_permutation needs RMSNorm-style norms with a weight and no bias; got {type(norm).__name__}")


@torch.no_grad()
def fold_permutation(stage: nn.Module, perm: torch.Tensor) -> nn.Module:
    """A copy of a (server) decoder stage whose weights take the residual stream with channel j carrying
    public channel `perm[j]`."""
    if getattr(stage, "is_first", False):
        raise ConfigError("fold_permutation folds a server stage (one after the cut), not the first stage")
    folded = copy.deepcopy(stage)
    folded.entry_hook = None
    for layer in folded.layers:
        for path in NORMS:
            norm = _sub(layer, path)
            _check_norm(norm)
            norm.weight.copy_(norm.weight[perm])
        for path in READS:
            lin = _sub(layer, path)
            lin.weight.copy_(lin.weight[:, perm])
        for path in WRITES:
            lin = _sub(layer, path)
            lin.weight.copy_(lin.weight[perm, :])
            if lin.bias is not None:
                lin.bias.copy_(lin.bias[perm])
    if folded.is_last:
        _check_norm(folded.norm)
        folded.norm.weight.copy_(folded.norm.weight[perm])
        folded.lm_head.weight.copy_(folded.lm_head.weight[:, perm])
    return folded


@torch.no_grad()
def match_folded_weights(public: nn.Module, folded: nn.Module) -> torch.Tensor:
    """The permutation, read off folded weights: est[j] = the public channel folded column j carries."""
    from splitinfer.privacy.attacks.permutation import assign

    if not len(public.layers):
        raise ConfigError("match_folded_weights needs a stage with at least one layer")
    w_pub = _sub(public.layers[0], READS[0]).weight.float()
    w_fold = _sub(folded.layers[0], READS[0]).weight.float()
    return assign(torch.cdist(w_fold.T, w_pub.T))
