"""Model families as adapters: what splitinfer needs to know to cut a Hugging Face model into stages.

A decoder-only causal LM of the standard shape needs no code here. `decoder_parts(model)` finds its
pieces by role, not by name: the token embedding (`get_input_embeddings()`), an optional learned
position table (a second `nn.Embedding` beside it, GPT-2's `wpe`), the `ModuleList` of
`num_hidden_layers` decoder layers, the rotary embedding, the one remaining module with weights (the
final norm, whatever it is called: `norm`, `ln_f`, `final_layer_norm`, `final_layernorm`) and the head
(`get_output_embeddings()`). The rest is read from the config by convention: `layer_types` /
`sliding_window` (local attention, per layer), a rotary embedding that takes a `layer_type` (Gemma 3's
local and global RoPE), an `embed_scale` on the embedding module (Gemma), `embedding_multiplier` and
`logits_scaling` (Granite), `final_logit_softcapping` (Gemma 2/3), and the name under which a layer
takes its cache (`cache`, `layer_past`, ...) from its signature.

A model type outside `TINY_CONFIGS` (whose tiny models the test suite checks) is checked once per
process before its weights load: a small random model of its own class, shrunk from its own config,
must split exactly (`models.verify.verify_decoder`), or it is refused with one clear line.

Everything family-specific that remains lives in this module: `ENCODER_TYPES` (BERT, split by
`EncoderStage`), `TINY_CONFIGS` (the tiny test models) and the config conventions above.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from splitinfer.errors import ConfigError

# Encoders, split by partition.EncoderStage (bidirectional, no KV cache).
ENCODER_TYPES = ("bert",)
# The attention kinds a decoder layer may have (config.layer_types); anything else (linear attention,
# chunked attention, mamba blocks) is not the standard stack.
ATTENTION_KINDS = ("full_attention", "sliding_attention")

_LLAMA_LIKE = dict(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                   tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_SMALL_WINDOW = 6  # shorter than the tests' sequences, so local attention is exercised

# model_type -> config kwargs of its tiny random test model (4 layers, hidden 64, vocab 256). These are
# the tested types; `tiny_model(name)` / `load_model("tiny-<name>")` build them.
TINY_CONFIGS: dict[str, dict] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": dict(_LLAMA_LIKE, sliding_window=16),
    "gpt2": dict(vocab_size=256, n_embd=64, n_layer=4, n_head=4, n_positions=512,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "bert": dict(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=512, pad_token_id=0),
    # layers 2, 3 slide (max_window_layers=2), layers 0, 1 attend globally
    "qwen3": dict(_LLAMA_LIKE, head_dim=16, use_sliding_window=True, sliding_window=_SMALL_WINDOW,
                  max_window_layers=2),
    # mixed local / global layers with separate RoPE bases, scaled embeddings, soft-capped logits
    "gemma3_text": dict(_LLAMA_LIKE, head_dim=16, query_pre_attn_scalar=16, sliding_window=_SMALL_WINDOW,
                        layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                     "full_attention"], final_logit_softcapping=5.0),
    "gemma2": dict(_LLAMA_LIKE, head_dim=16, query_pre_attn_scalar=16, sliding_window=_SMALL_WINDOW,
                   final_logit_softcapping=5.0, attn_logit_softcapping=20.0),
    "phi3": dict(_LLAMA_LIKE, sliding_window=_SMALL_WINDOW),
    # no RoPE in layer 3 (every 4th); sliding window on the NoPE layers
    "smollm3": dict(_LLAMA_LIKE, use_sliding_window=True, sliding_window=_SMALL_WINDOW),
    "olmo2": _LLAMA_LIKE,
    "gpt_neox": dict(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=512, tie_word_embeddings=False,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "granite": dict(_LLAMA_LIKE, embedding_multiplier=4.0, logits_scaling=2.0, residual_multiplier=0.5,
                    attention_multiplier=0.2),
    "starcoder2": dict(_LLAMA_LIKE, sliding_window=_SMALL_WINDOW),
    "phi": dict(_LLAMA_LIKE, partial_rotary_factor=0.5),
}
TESTED_TYPES = tuple(TINY_CONFIGS)
DECODER_TYPES = tuple(t for t in TESTED_TYPES if t not in ENCODER_TYPES)


def supported_text() -> str:
    """One phrase naming what splitinfer splits, for error messages."""
    return (f"splitinfer splits decoder-only causal LMs with the standard stack (token embeddings, decoder layers, "
            f"final norm, rotary or learned positions, LM head; tested: {', '.join(DECODER_TYPES)}) and the "
            f"{'/'.join(ENCODER_TYPES)} encoder")


def attn_implementation(config) -> str:
    """SDPA, except for models whose attention soft-caps its logits (Gemma 2), which SDPA cannot."""
    return "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"


def kind_of(config) -> str:
    """'decoder' or 'encoder' for a model config, or a ConfigError naming what is supported.

    Reads only the config, so an unsupported architecture is refused before any weights load."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    mt = getattr(config, "model_type", None)
    if mt in ENCODER_TYPES:
        return "encoder"
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"model type {mt!r} is an encoder-decoder, which cannot be cut into a chain of layer "
                          f"stages; {supported_text()}")
    if mt not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"model type {mt!r} has no causal-LM class in transformers; {supported_text()}")
    if getattr(config, "sub_configs", None):
        raise ConfigError(f"model type {mt!r} is a composite (multimodal) model; split its text-only decoder "
                          f"instead (e.g. gemma3_text for gemma3). {supported_text()}")
    kinds = getattr(config, "layer_types", None)
    if isinstance(kinds, list | tuple):
        odd = sorted({k for k in kinds if k not in ATTENTION_KINDS})
        if odd:
            raise ConfigError(f"model type {mt!r} has layers of kind {odd}; only {list(ATTENTION_KINDS)} layers are "
                              f"the standard stack. {supported_text()}")
    return "decoder"


# -- the decoder stack ------------------------------------------------------------------------------
@dataclass
class DecoderParts:
    """The modules a decoder-only causal LM is made of, found by role."""

    embed: nn.Embedding
    positions: nn.Embedding | None  # learned absolute positions added to the token embeddings (GPT-2)
    layers: nn.ModuleList
    rotary: nn.Module | None
    norm: nn.Module
    head: nn.Module


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def decoder_parts(model: nn.Module) -> DecoderParts:
    """Find the standard stack in a causal LM, or raise a ConfigError saying what is missing or extra."""
    cfg = model.config
    mt = cfg.model_type
    base = model.base_model
    n = int(cfg.num_hidden_layers)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    children = list(base.named_children())
    layers = [m for _, m in children if isinstance(m, nn.ModuleList) and len(m) == n]
    rotary = [m for name, m in children if "rotary" in name.lower() or "Rotary" in type(m).__name__]
    positions = [m for _, m in children if isinstance(m, nn.Embedding) and m is not embed]
    known = {id(m) for m in (embed, *layers, *rotary, *positions)}
    rest = [name for name, m in children if id(m) not in known and _has_params(m)]
    problem = None
    if not isinstance(embed, nn.Embedding):
        problem = f"its token embedding is a {type(embed).__name__}, not an nn.Embedding"
    elif not isinstance(head, nn.Linear):
        problem = "it has no linear LM head"
    elif len(layers) != 1:
        problem = f"it has {len(layers)} lists of {n} decoder layers in {type(base).__name__}, not one"
    elif len(rotary) > 1 or len(positions) > 1:
        problem = "it has more than one rotary or position embedding"
    elif len(rest) != 1:
        problem = f"besides embeddings and layers its {type(base).__name__} holds {rest or 'no'} weighted modules, " \
                  "not exactly one final norm"
    if problem:
        raise ConfigError(f"model type {mt!r} lacks the standard decoder stack: {problem}. {supported_text()}")
    return DecoderParts(embed=embed, positions=positions[0] if positions else None, layers=layers[0],
                        rotary=rotary[0] if rotary else None, norm=getattr(base, rest[0]), head=head)


def layer_windows(config) -> list[int | None]:
    """Each layer's sliding window (None: global attention), from `layer_types` or `sliding_window`."""
    n = int(config.num_hidden_layers)
    window = getattr(config, "sliding_window", None) or None
    kinds = getattr(config, "layer_types", None)
    if isinstance(kinds, list | tuple) and len(kinds) >= n:
        return [window if k == "sliding_attention" else None for k in kinds[:n]]
    if window and getattr(config, "use_sliding_window", True):
        return [int(window)] * n
    return [None] * n


def layer_kinds(config) -> list[str]:
    """Each layer's attention kind (what a per-kind rotary embedding is asked for)."""
    n = int(config.num_hidden_layers)
    kinds = getattr(config, "layer_types", None)
    if isinstance(kinds, list | tuple) and len(kinds) >= n:
        return list(kinds[:n])
    return ["sliding_attention" if w else "full_attention" for w in layer_windows(config)]


def rotary_takes_kind(rotary: nn.Module | None) -> bool:
    """Whether the rotary embedding computes per-kind positions (`rotary(x, pos, layer_type)`)."""
    return rotary is not None and "layer_type" in inspect.signature(rotary.forward).parameters


def layer_call_names(layer: nn.Module) -> tuple[str, set[str]]:
    """The keyword a decoder layer takes its KV cache under, and its named parameters."""
    params = set(inspect.signature(layer.forward).parameters)
    for name in ("cache", "past_key_values", "layer_past", "past_key_value"):
        if name in params:
            return name, params
    return "cache", params


def embed_tokens(embed: nn.Embedding, config, ids: torch.Tensor, hook=None) -> torch.Tensor:
    """Token embeddings as the model's forward makes them. `hook` sees the raw embedding-table rows
    (what `get_input_embeddings().weight` holds) before any family scaling."""
    h = nn.Embedding.forward(embed, ids)  # the raw lookup, even for a scaled-embedding subclass
    if hook is not None:
        h = hook(h)
    scale = getattr(embed, "embed_scale", None)  # Gemma's ScaledWordEmbedding
    if isinstance(scale, torch.Tensor | float | int):
        h = h * (scale.to(embed.weight.dtype) if isinstance(scale, torch.Tensor) else scale)
    mult = getattr(config, "embedding_multiplier", None)  # Granite
    if mult is not None:
        h = h * mult
    return h


def finish_logits(config, logits: torch.Tensor) -> torch.Tensor:
    """What a causal LM does to its head's output: Granite's scaling, Gemma's soft-capping."""
    scaling = getattr(config, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def final_norm_and_head(lm) -> tuple[nn.Module, nn.Module]:
    """(final norm, LM head) of a loaded causal LM, for the logit lens."""
    if not lm.is_causal_lm:
        raise ConfigError(f"the logit lens needs a causal LM with an LM head; {lm.name!r} is a {lm.family} encoder")
    parts = decoder_parts(lm.model)
    return parts.norm, parts.head


# -- shrinking a config (verification on a small random copy) ---------------------------------------
def shrink_config(config, keep_layers: list[int], *, head_dim: int | None = None, heads: int | None = None,
                  mlp: int = 16, vocab: int = 64, window: int | None = None):
    """A copy of `config` for a small random model of the same classes: the layers `keep_layers` (their
    per-layer settings kept), `heads` heads of `head_dim` (defaults: unchanged), a `mlp`-wide MLP, a
    `vocab`-token vocabulary and, if the model has one, a `window`-token sliding window."""
    cfg = copy.deepcopy(config)
    n = int(config.num_hidden_layers)
    old_heads = int(cfg.num_attention_heads)
    old_hd = getattr(cfg, "head_dim", None) or int(cfg.hidden_size) // old_heads
    new_heads = heads or old_heads
    hd = head_dim or old_hd
    kv = getattr(cfg, "num_key_value_heads", None)
    if heads is not None:
        cfg.num_attention_heads = heads
        if kv is not None:
            cfg.num_key_value_heads = heads if int(kv) == old_heads else 1
    if hasattr(cfg, "head_dim"):
        cfg.head_dim = hd
    cfg.hidden_size = new_heads * hd
    for name in ("intermediate_size", "n_inner"):
        if hasattr(cfg, name):
            setattr(cfg, name, mlp)
    cfg.vocab_size = vocab
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v >= vocab:
            setattr(cfg, name, None)
    for name, value in list(vars(cfg).items()):  # per-layer settings: layer_types, no_rope_layers, ...
        if isinstance(value, list) and len(value) == n and name != "keep_layers":
            setattr(cfg, name, [value[i] for i in keep_layers])
    cfg.num_hidden_layers = len(keep_layers)
    if window is not None and getattr(cfg, "sliding_window", None):
        cfg.sliding_window = window
    return cfg


def random_model(config, seed: int = 0) -> nn.Module:
    """A randomly initialised fp32 model of `config` in eval mode (the right class for its kind)."""
    from transformers import AutoModel, AutoModelForCausalLM

    config._attn_implementation = attn_implementation(config)
    cls = AutoModel if kind_of(config) == "encoder" else AutoModelForCausalLM
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls.from_config(config)
    model = model.to(torch.float32).eval()
    model.requires_grad_(False)
    return model
