"""One forward through the server stages for the steps of many `ServerSession`s at once.

A decoder's decode step (one token) is bound by reading the weights: running B sessions' steps as one
(B, 1, H) batch reads them once instead of B times. Each session keeps its own KV cache, position,
sampling settings and random stream (`sample_token` is seeded by (seed, position), so what else is in
the batch never changes a session's draw).

Ragged lengths: padding + mask. Steps of different lengths (decode steps, prompt chunks) are
right-aligned in a left-padded (B, T, H) batch. For each stage a `BatchedKVCache` wraps the sessions' own
`KVCache`s. When a layer hands it the batch's new keys/values, each row's real positions are appended to
its session's cache (so the session's cache is exactly what an unbatched step leaves) and the layer gets
a left-padded (B, heads, max_len + T, head_dim) copy (each row's past and new keys right-aligned) plus a
padding mask. Left padding keeps every row's queries and its keys at the same relative distances as in
the unbatched step, so causal masks and sliding windows stay right, padded queries never reach a real
row's attention, and `LastPositionHead` (h[:, -1:]) reads each row's real last position.

Why not a concatenated (paged) cache: the layers are the model family's own Hugging Face modules,
which take one dense (B, heads, L, d) key tensor and an additive mask; a paged cache would need our
own attention kernel per family. The padded copy costs one pass over the sessions' KV bytes per step
(the sessions' own caches append in place, `KVCache`); with SmolLM2-135M at
cut 15 that is ~23 KB per cached token (15 layers x 2 x 3 KV heads x 64 x 4 B), small next to the
~330 MB of server weights a step reads while contexts stay at a few hundred tokens (measured in
experiments/serving_throughput/).

Rows of equal length get no mask at all, which is what the unbatched decode step does (SDPA without a
mask), so a batch of sessions at the same position computes the same attention as B single steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from splitinfer.split.errors import StepError

if TYPE_CHECKING:  # ServerHalf.forward_batch calls this module: a runtime import back would be a cycle
    from splitinfer.split.server import ServerSession


class BatchedKVCache:
    """The KV caches of one stage of B sessions, seen by that stage's layers as one batch cache.

    Row i has `lengths[i]` cached positions and `new[i]` real new ones, the last `new[i]` of the batch's
    T query positions (rows are left-padded); only those are appended to the session's cache."""

    def __init__(self, caches: Sequence, lengths: Sequence[int], new: Sequence[int] | None = None) -> None:
        self.caches = list(caches)
        self.lengths = [int(n) for n in lengths]
        self.new = None if new is None else [int(t) for t in new]
        self.max_len = max(self.lengths)

    @property
    def seq_len(self) -> int:
        """The padded past length every row sees (the longest session's)."""
        return self.max_len

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        b, heads, t, d = key_states.shape
        if b != len(self.caches):
            raise StepError(f"batched cache of {len(self.caches)} sessions got keys for {b}")
        new = self.new or [t] * b
        if all(n == self.max_len for n in self.lengths) and all(x == t for x in new):  # no padding
            ks, vs = zip(*(c.update(key_states[i:i + 1], value_states[i:i + 1], layer_idx)
                           for i, c in enumerate(self.caches)), strict=True)
            return torch.cat(ks), torch.cat(vs)
        out_k = key_states.new_zeros(b, heads, self.max_len + t, d)
        out_v = value_states.new_zeros(b, value_states.shape[1], self.max_len + t, value_states.shape[-1])
        for i, c in enumerate(self.caches):
            k, v = c.update(key_states[i:i + 1, :, t - new[i]:], value_states[i:i + 1, :, t - new[i]:], layer_idx)
            n = k.shape[-2]
            out_k[i, :, -n:] = k[0]
            out_v[i, :, -n:] = v[0]
        return out_k, out_v


def padding_mask(lengths: Sequence[int], q_len: int, new: Sequence[int] | None = None) -> torch.Tensor | None:
    """(B, max_len + q_len) 1/0 mask of the left-padded batch (row i: `lengths[i]` cached positions,
    then its `new[i]` real new ones, right-aligned); None when no row is padded."""
    max_len = max(lengths)
    new = list(new) if new is not None else [q_len] * len(lengths)
    if all(n == max_len for n in lengths) and all(t == q_len for t in new):
        return None
    mask = torch.ones(len(lengths), max_len + q_len, dtype=torch.long)
    for i, (n, t) in enumerate(zip(lengths, new, strict=True)):
        mask[i, :max_len + q_len - n - t] = 0
    return mask


def _stack_left_padded(hiddens: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """(1, T_i, H) steps as one (B, max T, H) batch, each right-aligned (zeros before); and the T_i."""
    new = [int(h.shape[1]) for h in hiddens]
    t = max(new)
    if all(x == t for x in new):
        return torch.cat(list(hiddens)), new
    out = hiddens[0].new_zeros(len(hiddens), t, hiddens[0].shape[-1])
    for i, h in enumerate(hiddens):
        out[i, t - new[i]:] = h[0]
    return out, new


@torch.no_grad()
def forward_batch(sessions: Sequence[ServerSession], hidden) -> torch.Tensor:
    """Run the stages once for B sessions' steps, every session from its own position; returns each
    step's last-position logits, (B, V). `hidden` is a (B, T, H) tensor (every step T positions) or a
    list of B (1, T_i, H) steps of any lengths (decode steps and prefill chunks of different sessions:
    each is right-aligned in a left-padded batch, and only its real positions reach its cache). Each
    session's caches and position advance exactly as `session.forward(step, session.position)` would; on
    an error every session is rolled back to where it was and the error raised (the caller reruns the
    steps one by one, so one bad session fails alone)."""
    sessions = list(sessions)
    if not sessions:
        raise StepError("forward_batch needs at least one session")
    first = sessions[0]
    if isinstance(hidden, torch.Tensor):
        if hidden.dim() != 3 or hidden.shape[0] != len(sessions):
            raise StepError(f"hidden states must have shape ({len(sessions)}, T, {first.hidden_size}), "
                            f"got {tuple(hidden.shape)}")
        hidden = list(hidden.split(1))
    if len(hidden) != len(sessions) or any(h.dim() != 3 or h.shape[0] != 1 or h.shape[-1] != first.hidden_size
                                           for h in hidden):
        raise StepError(f"give one (1, T, {first.hidden_size}) step per session ({len(sessions)}), got "
                        f"{[tuple(h.shape) for h in hidden]}")
    if len({id(s) for s in sessions}) != len(sessions):
        raise StepError("a session appears twice in one batch; run its steps one after another")
    stages = first.stages
    for s in sessions:
        if len(s.stages) != len(stages) or any(a is not b for a, b in zip(s.stages, stages, strict=True)):
            raise StepError("sessions in one batch must run the same stage objects")
    if any(h.shape[1] == 0 for h in hidden):
        raise StepError("a step must carry at least one position")
    starts = [s.position for s in sessions]
    for s, start, h in zip(sessions, starts, hidden, strict=True):
        if s.max_tokens is not None and start + h.shape[1] > s.max_tokens:
            raise StepError(f"session would hold {start + h.shape[1]} tokens, over its limit of {s.max_tokens}")
    placement = first.placement
    h, new = _stack_left_padded(hidden)
    t = h.shape[1]
    offsets = torch.tensor([t - x for x in new])[:, None]
    pos = (torch.tensor(starts)[:, None] + torch.arange(t)[None] - offsets).clamp_(min=0)
    mask = padding_mask(starts, t, new)
    dev = placement.device
    pos = pos.to(dev)
    mask = None if mask is None else mask.to(dev)
    h = h.to(dev, placement.dtype)
    ragged = any(x != t for x in new)
    try:
        for j, stage in enumerate(stages):
            cache = BatchedKVCache([s.caches[j] for s in sessions], starts, new if ragged else None)
            h = stage(h, position_ids=pos, attention_mask=mask, cache=cache)
    except BaseException:
        for s, start in zip(sessions, starts, strict=True):
            s.rollback(start)
        raise
    for s, x in zip(sessions, new, strict=True):
        s.position += x
    return h[:, -1]
