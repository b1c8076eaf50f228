"""Model shapes without weights: exact parameter counts, FLOPs and bytes moved per layer and phase.

A shape is the model built from its config alone on the meta device (nothing is allocated or
downloaded), so the 1-8B models the field studies can be planned on a laptop. Parameters are counted
on that meta model (tied embeddings once, biases and norms included); FLOPs and bytes follow the
LLM-Viewer convention (Yuan et al., 2024): 2 FLOPs per weight per token for every matmul, attention
scores and values 2·2·heads·head_dim FLOPs per attended position, a sliding-window layer attending to
at most its window; a decode step reads every weight once plus the KV cache it attends to.

Components are indexed as the stages are: 0 = embeddings, 1..L = decoder layers, L+1 = final norm + LM
head, so the device half at cut k is components [0, k] and the server half [k+1, L+1].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from splitinfer.errors import ConfigError

PRECISION_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "int4": 4}


def bits_of(precision: str | int) -> int:
    """Bits per value of a precision name (`fp16`, `int4`, ...) or a bit count; a ConfigError otherwise."""
    if isinstance(precision, int) and precision in PRECISION_BITS.values():
        return precision
    if str(precision).isdigit() and int(precision) in PRECISION_BITS.values():
        return int(precision)
    if str(precision) in PRECISION_BITS:
        return PRECISION_BITS[str(precision)]
    raise ConfigError(f"precision {precision!r} is not one of {sorted(PRECISION_BITS)} (or their bit counts "
                      f"{sorted(set(PRECISION_BITS.values()))})")


def effective_bits(bits: float, group_size: int = 0) -> float:
    """Bits per weight a group-wise format stores: the codes plus a 16-bit scale and a 16-bit zero point per
    `group_size` weights (int4 g32: 4 + 1 = 5 bits); 16 bits and wider carry no scales."""
    return bits + (32 / group_size if bits < 16 and group_size else 0)


@dataclass(frozen=True)
class Component:
    """One stage-sized piece of a model: its parameters, its matmul weights and its attention."""

    name: str
    params: int  # unique parameters it holds (a tied LM head holds none of its own)
    matmul_params: int  # weights multiplied per token (2 FLOPs each); includes a tied head's weight
    vector_params: int  # norms and biases (kept in 16 bits when weights are quantized)
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    window: int | None = None  # sliding window; None = global attention
    lookup_values: int = 0  # embedding values read per token (a lookup, no FLOPs)

    def attended(self, position: int) -> int:
        """Positions a query at `position` (0-based) attends to."""
        return position + 1 if self.window is None else min(position + 1, self.window)

    def kv_values_per_token(self) -> int:
        return 2 * self.kv_heads * self.head_dim


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes moved by some work; adds up."""

    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)


@dataclass
class ModelShape:
    """A model's shape: components in stage order, from a config alone (see module docstring)."""

    name: str
    model_type: str
    hidden_size: int
    vocab_size: int
    components: list[Component]
    source: str = ""
    max_positions: int | None = None  # the config's max_position_embeddings

    @property
    def num_layers(self) -> int:
        return len(self.components) - 2

    @property
    def total_params(self) -> int:
        return sum(c.params for c in self.components)

    def check_cut(self, cut: int) -> int:
        if not isinstance(cut, int) or not 0 <= cut <= self.num_layers:
            raise ConfigError(f"cut {cut!r} is outside 0..{self.num_layers} for {self.name} "
                              f"({self.num_layers} layers); pick a cut in that range")
        return cut

    def side(self, cut: int, which: str) -> list[Component]:
        """The device half's components at `cut` (embeddings + layers 0..cut-1) or the server half's."""
        self.check_cut(cut)
        return self.components[:cut + 1] if which == "device" else self.components[cut + 1:]

    def params(self, comps: list[Component]) -> int:
        return sum(c.params for c in comps)

    def weight_bytes(self, comps: list[Component], weight_bits: int, group_size: int = 0) -> float:
        """Bytes the weights take: matmul weights (and the embedding table) at `weight_bits`, vectors in
        16 bits; group-wise quantization adds a 16-bit scale and zero point per `group_size` weights. A server half
        whose LM head is tied to the device's embedding holds its own copy of that matrix."""
        bits = effective_bits(weight_bits, group_size)
        return sum(max(c.params - c.vector_params, c.matmul_params) * bits / 8 + c.vector_params * 2
                   for c in comps)  # max(): a tied head needs its own copy of the matrix

    def kv_bytes_per_token(self, comps: list[Component], kv_bits: int = 16) -> float:
        return sum(c.kv_values_per_token() for c in comps) * kv_bits / 8

    def kv_bytes(self, comps: list[Component], context: int, kv_bits: int = 16) -> float:
        """KV cache bytes at `context` tokens (a sliding-window layer keeps only its window)."""
        return sum(c.kv_values_per_token() * (context if c.window is None else min(context, c.window))
                   for c in comps) * kv_bits / 8

    def decode_cost(self, c: Component, context: int, weight_bits: float, kv_bits: int = 16,
                    act_bits: int = 16, batch: int = 1) -> Cost:
        """One decode step of `batch` sequences at `context` tokens of context through component `c`: the
        weights are read once per step, each sequence's KV cache once."""
        attended = c.attended(context)
        flops = batch * (2.0 * c.matmul_params + 4.0 * c.heads * c.head_dim * attended)
        weights = c.matmul_params * weight_bits / 8 + c.vector_params * 2
        if c.lookup_values:  # an embedding lookup reads one row per token, not the table
            weights = batch * c.lookup_values * weight_bits / 8
        kv = batch * c.kv_values_per_token() * (attended + 1) * kv_bits / 8  # read the cache, write one
        acts = batch * 2 * self.hidden_size * act_bits / 8
        return Cost(flops, weights + kv + acts)

    def prefill_cost(self, c: Component, tokens: int, weight_bits: float, kv_bits: int = 16,
                     act_bits: int = 16, last_only: bool = False) -> Cost:
        """A prefill of `tokens` tokens through `c` (the LM head only for the last token when `last_only`)."""
        n = 1 if last_only else tokens
        w = tokens if c.window is None else min(c.window, tokens)  # sum of attended(p) over p < tokens
        attended = (w * (w + 1) // 2 + (tokens - w) * w) if c.heads else 0
        flops = 2.0 * c.matmul_params * n + 4.0 * c.heads * c.head_dim * attended
        weights = c.matmul_params * weight_bits / 8 + c.vector_params * 2
        if c.lookup_values:
            weights = tokens * c.lookup_values * weight_bits / 8
        kv = tokens * c.kv_values_per_token() * kv_bits / 8 * 2  # written once, read back once
        acts = tokens * 2 * self.hidden_size * act_bits / 8
        return Cost(flops, weights + kv + acts)


def _meta_model(config):
    from transformers import AutoModelForCausalLM

    from splitinfer.models import adapters

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, attn_implementation=adapters.attn_implementation(config))


def _numel(params) -> tuple[int, int, int]:
    """(all, matrices, vectors) element counts of parameters."""
    ps = list(params)
    return (sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.dim() >= 2),
            sum(p.numel() for p in ps if p.dim() < 2))


def shape_from_config(config: Any, name: str | None = None, source: str = "") -> ModelShape:
    """The shape of a decoder-only model from its Hugging Face config (an object or a config.json dict)."""
    from splitinfer.models import adapters

    if isinstance(config, dict):
        config = _config_from_dict(config)
    if adapters.kind_of(config) != "decoder":
        raise ConfigError(f"model type {config.model_type!r} is an encoder; shapes are for decoder-only models")
    model = _meta_model(config)
    parts = adapters.decoder_parts(model)
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    windows = adapters.layer_windows(config)
    embed_all = _numel(parts.embed.parameters())
    pos = _numel(parts.positions.parameters()) if parts.positions is not None else (0, 0, 0)
    comps = [Component("embed", embed_all[0] + pos[0], 0, embed_all[2] + pos[2], lookup_values=hidden)]
    for i, layer in enumerate(parts.layers):
        n, mat, vec = _numel(layer.parameters())
        comps.append(Component(f"layer{i}", n, mat, vec, heads, kv_heads, head_dim, windows[i]))
    tied = parts.head.weight is parts.embed.weight
    norm = _numel(parts.norm.parameters())
    head = _numel(parts.head.parameters())
    comps.append(Component("head", norm[0] + (0 if tied else head[0]), head[1], norm[2] + head[2]))
    label = name or getattr(config, "_name_or_path", "") or config.model_type
    return ModelShape(label, str(config.model_type), hidden, int(config.vocab_size), comps, source,
                      getattr(config, "max_position_embeddings", None))


def _config_from_dict(d: dict):
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    d = dict(d)
    mt = d.pop("model_type", None)
    if mt not in CONFIG_MAPPING:
        from splitinfer.models.adapters import supported_text

        raise ConfigError(f"config.json has model_type {mt!r}, which this transformers does not know; "
                          f"{supported_text()}")
    return AutoConfig.for_model(mt, **d)


def load_shape(spec: str) -> ModelShape:
    """A shape from a conf/model entry with a `config:` block (`llama3_1_8b`, or its `name:`), a folder
    holding a config.json (weights not needed), or a config.json file."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.is_file() and path.suffix == ".json":
        try:
            cfg = json.loads(path.read_text())
        except ValueError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); give a Hugging Face config.json") from None
        if isinstance(cfg.get("text_config"), dict) and cfg.get("model_type") == "gemma3":
            cfg = {"model_type": "gemma3_text", **cfg["text_config"]}
        return shape_from_config(cfg, name=path.parent.name, source=str(path))
    from splitinfer.configs import available, load_node

    nodes = {stem: load_node("model", stem) for stem in available("model")}
    shapes = {stem: n for stem, n in nodes.items() if isinstance(n.get("config"), dict)}
    for stem, node in shapes.items():
        if spec in (stem, node.get("name")):
            return shape_from_config(node["config"], name=str(node.get("name", stem)),
                                     source=str(node.get("source", f"conf/model/{stem}.yaml")))
    raise ConfigError(f"unknown model shape {spec!r}: give one of {list(shapes)} (conf/model entries with a config "
                      "block) or a folder holding a config.json")
