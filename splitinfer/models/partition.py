"""Cut a model into contiguous stages at layer indices, each with its own KV cache.

`cuts=[k]` gives a device stage (embeddings + layers 0..k-1) and a server stage (layers k..L-1 + final
norm + head); more cuts give a chain (device -> edge -> cloud). The stages reuse the model's own
modules (no weight copies) and call its decoder layers directly, so composing the stages reproduces
the unsplit model exactly.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence

import torch
from torch import nn

from splitinfer.errors import ConfigError
from splitinfer.models import adapters
from splitinfer.models.loaded import LoadedModel


def validate_cuts(cuts: object, num_layers: int) -> list[int]:
    """Check cut indices before any work is done; return them as a list of ints.

    A cut k puts layers 0..k-1 before it, so 0 <= k <= L, and a chain's cuts must increase strictly.
    """
    valid = f"this model has {num_layers} layers, so every cut must be an int in 0..{num_layers}"
    if isinstance(cuts, bool) or not isinstance(cuts, int | Sequence) or isinstance(cuts, str | bytes):
        raise ConfigError(f"cuts must be an int or a list of ints, got {cuts!r}; {valid}")
    seq = [cuts] if isinstance(cuts, int) else list(cuts)
    if not seq:
        raise ConfigError(f"cuts is empty; give at least one cut. {valid}")
    out = []
    for c in seq:
        if isinstance(c, bool) or not isinstance(c, int):
            raise ConfigError(f"cut {c!r} is not an int; {valid}")
        if not 0 <= c <= num_layers:
            raise ConfigError(f"cut {c} is out of range; {valid}")
        out.append(int(c))
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise ConfigError(f"cuts {out} must be strictly increasing (device -> edge -> cloud); {valid}")
    return out


class _LayerTensors(MutableMapping):
    """`KVCache.keys` / `.values`: layer -> the filled part of its buffer (a view). Setting a layer's tensor
    adopts it as that layer's content without copying; the cache copies it before it ever writes."""

    def __init__(self, cache: KVCache, bufs: dict[int, torch.Tensor]) -> None:
        self._cache, self._bufs = cache, bufs

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self._bufs[layer][..., :self._cache._len[layer], :]

    def __setitem__(self, layer: int, t: torch.Tensor) -> None:
        self._bufs[layer] = t
        self._cache._len[layer] = int(t.shape[-2])
        self._cache._borrowed.add(layer)

    def __delitem__(self, layer: int) -> None:
        del self._bufs[layer]

    def __iter__(self):
        return iter(self._bufs)

    def __len__(self) -> int:
        return len(self._bufs)


class KVCache:
    """Keys and values of one stage's layers, duck-typed to what transformers' attention calls.

    Each layer's keys and values live in a buffer with room to spare, grown geometrically (doubled), so
    a decode step writes its one position in place instead of copying the whole cache (`torch.cat` every
    step made a long answer's copying quadratic). `update` returns views of the filled part; `crop`
    only moves the length back. `keys` / `values` map each layer to those views; a tensor set there (a
    hand-off upload, a shared prefix) is used as it is until the first write, which copies it.
    """

    MIN_CAPACITY = 16  # positions allocated for a layer's first update at least

    def __init__(self) -> None:
        self._k: dict[int, torch.Tensor] = {}
        self._v: dict[int, torch.Tensor] = {}
        self._len: dict[int, int] = {}
        self._borrowed: set[int] = set()  # layers whose tensors were set from outside: copy before writing

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        n = self._len.get(layer_idx, 0)
        t = key_states.shape[-2]
        k_buf, v_buf = self._k.get(layer_idx), self._v.get(layer_idx)
        if (k_buf is None or layer_idx in self._borrowed or k_buf.shape[-2] < n + t
                or k_buf.shape[:-2] != key_states.shape[:-2] or k_buf.dtype != key_states.dtype
                or k_buf.device != key_states.device):
            k_buf = self._grow(k_buf, key_states, n, n + t)
            v_buf = self._grow(v_buf, value_states, n, n + t)
            self._k[layer_idx], self._v[layer_idx] = k_buf, v_buf
            self._borrowed.discard(layer_idx)
        k_buf[..., n:n + t, :] = key_states
        v_buf[..., n:n + t, :] = value_states
        self._len[layer_idx] = n + t
        return k_buf[..., :n + t, :], v_buf[..., :n + t, :]

    def _grow(self, buf: torch.Tensor | None, like: torch.Tensor, keep: int, need: int) -> torch.Tensor:
        """A buffer for at least `need` positions (double the old one's room), holding its first `keep`."""
        old = 0 if buf is None else buf.shape[-2]
        cap = max(need, 2 * old, self.MIN_CAPACITY)
        new = like.new_empty(*like.shape[:-2], cap, like.shape[-1])
        if keep:
            new[..., :keep, :] = buf[..., :keep, :]
        return new

    @property
    def keys(self) -> MutableMapping[int, torch.Tensor]:
        return _LayerTensors(self, self._k)

    @keys.setter
    def keys(self, d: dict[int, torch.Tensor]) -> None:
        self._k, self._len = {}, {}
        for i, t in d.items():
            self.keys[i] = t

    @property
    def values(self) -> MutableMapping[int, torch.Tensor]:
        return _LayerTensors(self, self._v)

    @values.setter
    def values(self, d: dict[int, torch.Tensor]) -> None:
        self._v = {}
        for i, t in d.items():
            self.values[i] = t

    @property
    def seq_len(self) -> int:
        for n in self._len.values():
            return n
        return 0

    def nbytes(self) -> int:
        """Bytes of the positions held (what the session's context costs at this dtype)."""
        return sum(t.numel() * t.element_size() for d in (self.keys, self.values) for t in d.values())

    def tensors(self) -> list[torch.Tensor]:
        """The buffers holding the keys and values (what a freed cache must release)."""
        return [*self._k.values(), *self._v.values()]

    def capacity_bytes(self) -> int:
        """Bytes allocated, spare room included (at most about twice `nbytes` once past MIN_CAPACITY)."""
        return sum(t.numel() * t.element_size() for d in (self._k, self._v) for t in d.values())

    def crop(self, length: int) -> None:
        """Keep only the first `length` positions (used to roll back a step)."""
        for i, n in self._len.items():
            self._len[i] = min(n, max(0, int(length)))


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
            raise ConfigError(
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
        self.kind = lm.kind
        self.index = index
        self.start_layer = start
        self.end_layer = end
        self.is_first = index == 0
        self.is_last = is_last
        self.hidden_size = lm.hidden_size
        self.vocab_size = lm.vocab_size
        self.config = lm.config
        # Optional device-side hook on the token embeddings (first stage only), e.g. a dχ-privacy
        # defense that perturbs embeddings before layer 0: a callable (B,T,H) -> (B,T,H). It sees the
        # rows of the embedding table (`get_input_embeddings().weight`), before any family scaling.
        self.embedding_hook = None
        # Optional server-side hook on the incoming hidden state (later stages only): what a server
        # provisioned with transformed weights amounts to, e.g. the inverse of a secret channel
        # permutation (`splitinfer.privacy.SecretPermutation.server_entry`); None = the public weights.
        self.entry_hook = None
        self.sdpa = getattr(lm.config, "_attn_implementation", None) == "sdpa"

    # -- accounting ---------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in _unique_params(self))

    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in _unique_params(self))

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype this stage computes (and caches keys and values) in: its floating weights' dtype."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    def kv_bytes_per_token(self, dtype_bytes: int | None = None) -> int:
        """Bytes of K and V one token adds to this stage's cache (all its layers); by default at the
        stage's compute dtype (4 in float32, 2 in bfloat16/float16)."""
        if dtype_bytes is None:
            dtype_bytes = self.compute_dtype.itemsize
        n = self.end_layer - self.start_layer
        if self.kind == "encoder" or n == 0:
            return 0
        cfg = self.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return 2 * n * heads * head_dim * dtype_bytes

    def new_cache(self) -> KVCache | None:
        return None if self.kind == "encoder" else KVCache()

    def extra_repr(self) -> str:
        return f"index={self.index}, layers=[{self.start_layer}, {self.end_layer}), last={self.is_last}"

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


class DecoderStage(Stage):
    """A piece of any decoder-only causal LM with the standard stack (see `splitinfer.models.adapters`):
    Llama, Qwen2/3, Mistral, Gemma 2/3, Phi, Phi-3, SmolLM2/3, OLMo 2, GPT-2, GPT-NeoX, Granite, StarCoder2...

    Per-layer sliding windows (`layer_windows`) and per-kind rotary positions follow the config; the
    first stage adds learned absolute positions where the model has them (GPT-2)."""

    def __init__(self, lm, index, start, end, is_last):
        super().__init__(lm, index, start, end, is_last)
        parts = adapters.decoder_parts(lm.model)
        self.embed_tokens = parts.embed if self.is_first else None
        self.embed_positions = parts.positions if self.is_first else None
        self.layers = nn.ModuleList(parts.layers[start:end])
        self.rotary_emb = parts.rotary if len(self.layers) else None
        self.norm = parts.norm if is_last else None
        self.lm_head = parts.head if is_last else None
        self.layer_windows = adapters.layer_windows(lm.config)[start:end]
        self.layer_kinds = adapters.layer_kinds(lm.config)[start:end]
        self._rope_by_kind = adapters.rotary_takes_kind(self.rotary_emb)
        self._calls = [adapters.layer_call_names(layer) for layer in self.layers]

    @property
    def sliding_window(self) -> int | None:
        """The widest sliding window among this stage's layers (None: all attend globally)."""
        return max((w for w in self.layer_windows if w), default=None)

    def forward(self, x, *, position_ids=None, attention_mask=None, cache=None):
        batch, q_len = x.shape[:2]
        past = cache.seq_len if cache is not None else 0
        position_ids = self._positions(batch, q_len, past, position_ids, x.device)
        if self.is_first:
            h = adapters.embed_tokens(self.embed_tokens, self.config, x, self.embedding_hook)
            if self.embed_positions is not None:
                h = h + self.embed_positions(position_ids)
        else:
            h = x if self.entry_hook is None else self.entry_hook(x)
        if len(self.layers):
            masks, rope = {}, {}
            for i, layer in enumerate(self.layers):
                window, kind = self.layer_windows[i], self.layer_kinds[i]
                if window not in masks:
                    masks[window] = decoder_mask(attention_mask, batch, q_len, past, h.dtype, h.device, window,
                                                 self.sdpa)
                cache_name, params = self._calls[i]
                kwargs = {"attention_mask": masks[window], cache_name: cache}
                if self.rotary_emb is not None:
                    key = kind if self._rope_by_kind else None
                    if key not in rope:
                        rope[key] = (self.rotary_emb(h, position_ids, kind) if self._rope_by_kind
                                     else self.rotary_emb(h, position_ids))
                    kwargs["position_embeddings"] = rope[key]
                if "position_ids" in params:
                    kwargs["position_ids"] = position_ids
                if "use_cache" in params:
                    kwargs["use_cache"] = cache is not None
                h = layer(h, **kwargs)
        if self.is_last:
            h = adapters.finish_logits(self.config, self.lm_head(self.norm(h)))
        return h


class EncoderStage(Stage):
    """BERT-style encoders: bidirectional, no KV cache; the last stage returns the encoder output
    (or the pooled embedding with `output="pooled"`)."""

    def __init__(self, lm, index, start, end, is_last, output: str = "last_hidden"):
        super().__init__(lm, index, start, end, is_last)
        if output not in ("last_hidden", "pooled"):
            raise ConfigError(f"encoder output {output!r} is not one of 'last_hidden', 'pooled'")
        self.output = output
        self.embeddings = lm.model.embeddings if self.is_first else None
        self.layers = nn.ModuleList(lm.model.encoder.layer[start:end])
        self.pooler = lm.model.pooler if is_last else None

    def forward(self, x, *, position_ids=None, attention_mask=None, cache=None):
        if self.is_first:
            word = self.embeddings.word_embeddings(x)
            if self.embedding_hook is not None:
                word = self.embedding_hook(word)
            h = self.embeddings(inputs_embeds=word, position_ids=position_ids)
        else:
            h = x if self.entry_hook is None else self.entry_hook(x)
        batch, q_len = h.shape[:2]
        if len(self.layers):
            mask = causal_mask(attention_mask, batch, q_len, 0, h.dtype, h.device, causal=False)
            for layer in self.layers:
                h = layer(h, attention_mask=mask)
        if self.is_last and self.output == "pooled":
            if self.pooler is None:
                raise ConfigError("this encoder has no pooler; use output='last_hidden'")
            h = self.pooler(h)
        return h


# Stage classes by adapter kind.
STAGE_CLASSES = {"decoder": DecoderStage, "encoder": EncoderStage}


def split_model(lm: LoadedModel, cuts: int | Sequence[int], *, encoder_output: str = "last_hidden") -> list[Stage]:
    """Cut `lm` at `cuts` into len(cuts)+1 stages that together compute exactly what the model does."""
    cuts = validate_cuts(cuts, lm.num_layers)
    bounds = [0, *cuts, lm.num_layers]
    cls = STAGE_CLASSES[lm.kind]
    stages = []
    for i in range(len(bounds) - 1):
        is_last = i == len(bounds) - 2
        kwargs = {"output": encoder_output} if lm.kind == "encoder" else {}
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
