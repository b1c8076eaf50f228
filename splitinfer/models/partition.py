"""Cut a model into contiguous stages at layer indices, each with its own KV cache.

`cuts=[k]` gives a device stage (embeddings + layers 0..k-1) and a server stage (layers k..L-1 + final
norm + head); more cuts give a chain (device -> edge -> cloud). The stages reuse the model's own
modules (no weight copies) and call its decoder layers directly, so composing the stages reproduces
the unsplit model exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from splitinfer.models.loading import LoadedModel


def validate_cuts(cuts: object, num_layers: int) -> list[int]:
    """Check cut indices before any work is done; return them as a list of ints.

    A cut k puts layers 0..k-1 before it, so 0 <= k <= L, and a chain's cuts must increase strictly.
    """
    valid = f"this model has {num_layers} layers, so every cut must be an int in 0..{num_layers}"
    if isinstance(cuts, bool) or not isinstance(cuts, int | Sequence) or isinstance(cuts, str | bytes):
        raise ValueError(f"cuts must be an int or a list of ints, got {cuts!r}; {valid}")
    seq = [cuts] if isinstance(cuts, int) else list(cuts)
    if not seq:
        raise ValueError(f"cuts is empty; give at least one cut. {valid}")
    out = []
    for c in seq:
        if isinstance(c, bool) or not isinstance(c, int):
            raise ValueError(f"cut {c!r} is not an int; {valid}")
        if not 0 <= c <= num_layers:
            raise ValueError(f"cut {c} is out of range; {valid}")
        out.append(int(c))
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"cuts {out} must be strictly increasing (device -> edge -> cloud); {valid}")
    return out


class KVCache:
    """Keys and values of one stage's layers, duck-typed to what transformers' attention calls."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx in self.keys:
            key_states = torch.cat([self.keys[layer_idx], key_states], dim=-2)
            value_states = torch.cat([self.values[layer_idx], value_states], dim=-2)
        self.keys[layer_idx] = key_states
        self.values[layer_idx] = value_states
        return key_states, value_states

    @property
    def seq_len(self) -> int:
        for k in self.keys.values():
            return int(k.shape[-2])
        return 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.keys, self.values) for t in d.values())

    def crop(self, length: int) -> None:
        """Keep only the first `length` positions (used to roll back a step)."""
        for d in (self.keys, self.values):
            for i, t in d.items():
                d[i] = t[..., :length, :]


def causal_mask(
    attention_mask: torch.Tensor | None,
    batch: int,
    q_len: int,
    past: int,
    dtype: torch.dtype,
    device: torch.device,
    sliding_window: int | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Additive 4-D mask (B, 1, q_len, past+q_len): causal, optional sliding window, padding.

    A query always sees itself, so rows of padding tokens never turn into NaN (their outputs are
    garbage nobody reads; real tokens never attend to them).
    """
    kv_len = past + q_len
    q_pos = torch.arange(past, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    allowed = k_pos <= q_pos if causal else torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if sliding_window:
        allowed = allowed & ((q_pos - k_pos) < sliding_window)
    allowed = allowed[None, None].expand(batch, 1, q_len, kv_len)
    if attention_mask is not None:
        if attention_mask.shape != (batch, kv_len):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected (batch={batch}, "
                f"past+current={kv_len}): give the padding mask over all positions seen so far"
            )
        allowed = allowed & attention_mask[:, None, None, :].bool()
    allowed = allowed | (k_pos == q_pos)[None, None]
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def decoder_mask(attention_mask, batch, q_len, past, dtype, device, sliding_window=None, sdpa=True):
    """The mask a causal stage passes to its layers, or None when plain causal attention is exact.

    With no padding, no binding sliding window, and either one query (a decode step) or no past (a
    prefill), transformers' SDPA path uses `is_causal` / no mask, which is what the unsplit model does
    and faster than an explicit additive mask. Other attention backends always get the explicit mask.
    """
    window_binds = bool(sliding_window) and past + q_len > sliding_window
    if sdpa and attention_mask is None and not window_binds and (q_len == 1 or past == 0):
        return None
    return causal_mask(attention_mask, batch, q_len, past, dtype, device, sliding_window)


class Stage(nn.Module):
    """One contiguous piece of a model: optional embeddings, layers [start, end), optional head."""

    def __init__(self, lm: LoadedModel, index: int, start: int, end: int, is_last: bool) -> None:
        super().__init__()
        self.family = lm.family
        self.index = index
        self.start_layer = start
        self.end_layer = end
        self.is_first = index == 0
        self.is_last = is_last
        self.hidden_size = lm.hidden_size
        self.vocab_size = lm.vocab_size
        self.config = lm.config
        # Optional device-side hook on the token embeddings (first stage only), e.g. a dχ-privacy
        # defense that perturbs embeddings before layer 0: a callable (B,T,H) -> (B,T,H).
        self.embedding_hook = None
        self.sdpa = getattr(lm.config, "_attn_implementation", None) == "sdpa"

    # -- accounting ---------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in _unique_params(self))

    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in _unique_params(self))

    def kv_bytes_per_token(self, dtype_bytes: int = 4) -> int:
        """Bytes of K and V one token adds to this stage's cache (all its layers)."""
        n = self.end_layer - self.start_layer
        if self.family == "bert" or n == 0:
            return 0
        cfg = self.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return 2 * n * heads * head_dim * dtype_bytes

    def new_cache(self) -> KVCache | None:
        return None if self.family == "bert" else KVCache()

    def extra_repr(self) -> str:
        return f"index={self.index}, layers=[{self.start_layer}, {self.end_layer}), last={self.is_last}"

    def _embedded(self, h: torch.Tensor) -> torch.Tensor:
        return self.embedding_hook(h) if self.embedding_hook is not None else h

    def _positions(self, batch, q_len, past, position_ids, device):
        if position_ids is None:
            return torch.arange(past, past + q_len, device=device)[None].expand(batch, q_len)
        return position_ids


def _unique_params(module: nn.Module):
    seen = set()
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield p


class LlamaStage(Stage):
    """Llama-style decoders: SmolLM2, Llama, Qwen2, Mistral (rotary positions)."""

    def __init__(self, lm, index, start, end, is_last):
        super().__init__(lm, index, start, end, is_last)
        base = lm.model.model
        self.embed_tokens = base.embed_tokens if self.is_first else None
        self.layers = nn.ModuleList(base.layers[start:end])
        self.rotary_emb = base.rotary_emb
        self.norm = base.norm if is_last else None
        self.lm_head = lm.model.lm_head if is_last else None
        cfg = lm.config
        use_sw = getattr(cfg, "use_sliding_window", True)
        self.sliding_window = getattr(cfg, "sliding_window", None) if use_sw else None

    def forward(self, x, *, position_ids=None, attention_mask=None, cache=None):
        h = self._embedded(self.embed_tokens(x)) if self.is_first else x
        batch, q_len = h.shape[:2]
        past = cache.seq_len if cache is not None else 0
        position_ids = self._positions(batch, q_len, past, position_ids, h.device)
        if len(self.layers):
            mask = decoder_mask(attention_mask, batch, q_len, past, h.dtype, h.device, self.sliding_window, self.sdpa)
            pos_emb = self.rotary_emb(h, position_ids)
            for layer in self.layers:
                h = layer(h, attention_mask=mask, position_ids=position_ids, cache=cache,
                          use_cache=cache is not None, position_embeddings=pos_emb)
        if self.is_last:
            h = self.lm_head(self.norm(h))
        return h


class GPT2Stage(Stage):
    """GPT-2: learned absolute positions, added in the first stage only."""

    def __init__(self, lm, index, start, end, is_last):
        super().__init__(lm, index, start, end, is_last)
        base = lm.model.transformer
        self.wte = base.wte if self.is_first else None
        self.wpe = base.wpe if self.is_first else None
        self.layers = nn.ModuleList(base.h[start:end])
        self.ln_f = base.ln_f if is_last else None
        self.lm_head = lm.model.lm_head if is_last else None

    def forward(self, x, *, position_ids=None, attention_mask=None, cache=None):
        batch, q_len = x.shape[:2]
        past = cache.seq_len if cache is not None else 0
        position_ids = self._positions(batch, q_len, past, position_ids, x.device)
        h = self._embedded(self.wte(x)) + self.wpe(position_ids) if self.is_first else x
        if len(self.layers):
            mask = decoder_mask(attention_mask, batch, q_len, past, h.dtype, h.device, sdpa=self.sdpa)
            for layer in self.layers:
                h = layer(h, cache=cache, attention_mask=mask, use_cache=cache is not None)
        if self.is_last:
            h = self.lm_head(self.ln_f(h))
        return h


class BertStage(Stage):
    """BERT-style encoders: bidirectional, no KV cache; the last stage returns the encoder output
    (or the pooled embedding with `output="pooled"`)."""

    def __init__(self, lm, index, start, end, is_last, output: str = "last_hidden"):
        super().__init__(lm, index, start, end, is_last)
        if output not in ("last_hidden", "pooled"):
            raise ValueError(f"encoder output {output!r} is not one of 'last_hidden', 'pooled'")
        self.output = output
        self.embeddings = lm.model.embeddings if self.is_first else None
        self.layers = nn.ModuleList(lm.model.encoder.layer[start:end])
        self.pooler = lm.model.pooler if is_last else None

    def forward(self, x, *, position_ids=None, attention_mask=None, cache=None):
        if self.is_first:
            word = self._embedded(self.embeddings.word_embeddings(x))
            h = self.embeddings(inputs_embeds=word, position_ids=position_ids)
        else:
            h = x
        batch, q_len = h.shape[:2]
        if len(self.layers):
            mask = causal_mask(attention_mask, batch, q_len, 0, h.dtype, h.device, causal=False)
            for layer in self.layers:
                h = layer(h, attention_mask=mask)
        if self.is_last and self.output == "pooled":
            if self.pooler is None:
                raise ValueError("this encoder has no pooler; use output='last_hidden'")
            h = self.pooler(h)
        return h


STAGE_CLASSES = {"llama": LlamaStage, "gpt2": GPT2Stage, "bert": BertStage}


def split_model(lm: LoadedModel, cuts: int | Sequence[int], *, encoder_output: str = "last_hidden") -> list[Stage]:
    """Cut `lm` at `cuts` into len(cuts)+1 stages that together compute exactly what the model does."""
    cuts = validate_cuts(cuts, lm.num_layers)
    bounds = [0, *cuts, lm.num_layers]
    cls = STAGE_CLASSES[lm.family]
    stages = []
    for i in range(len(bounds) - 1):
        is_last = i == len(bounds) - 2
        kwargs = {"output": encoder_output} if lm.family == "bert" else {}
        stages.append(cls(lm, i, bounds[i], bounds[i + 1], is_last, **kwargs).eval())
    return stages


@torch.no_grad()
def run_chain(stages: Sequence[Stage], input_ids, *, position_ids=None, attention_mask=None, caches=None):
    """Run a chain of stages in-process (no codec); returns the last stage's output."""
    h = input_ids
    for i, stage in enumerate(stages):
        cache = caches[i] if caches is not None else None
        h = stage(h, position_ids=position_ids, attention_mask=attention_mask, cache=cache)
    return h
