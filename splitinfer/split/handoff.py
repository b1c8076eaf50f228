"""The hand-off baseline: the device prefills, sends its layers' KV cache once, and the server continues alone.

    gen = handoff_generator(lm, 15)                              # in-process
    gen = HandoffGenerator(lm, device, SimulatedLink(InProcessLink(server), ...), server_device_stage)
    res = gen.generate(prompt, 32)                               # res.bytes_up: prefill message + KV cache

No round trip per token: after the one upload the server runs the device's layers too (their weights are
the public model's) on the tokens it generates and streams the ids back. The latency ceiling of any split
mode, at the price of handing the server the device layers' keys and values of the whole prompt.
"""

from __future__ import annotations

import time

import torch

from splitinfer.errors import ConfigError
from splitinfer.models import KVCache, LoadedModel, split_model
from splitinfer.split.device import DeviceHalf
from splitinfer.split.link import TOKEN_REPLY_BYTES, InProcessLink
from splitinfer.split.server import ServerHalf
from splitinfer.split.speculative import SpeculativeResult, _network_s


def kv_message_bytes(cache: KVCache | None) -> int:
    """Bytes of the device cache on the wire: its raw keys and values (float32 as computed)."""
    return 0 if cache is None else cache.nbytes()


class HandoffGenerator:
    """Generates with the hand-off baseline: one message up (prefill hidden states + the device KV cache),
    then the server decodes alone; the ids stream back (4 bytes each, no round trip per token)."""

    def __init__(self, lm: LoadedModel, device: DeviceHalf, link, server_device_stage) -> None:
        if not lm.is_causal_lm:
            raise ConfigError(f"model {lm.name!r} is an encoder ({lm.family}); generation needs a causal LM")
        self.lm = lm
        self.device = device
        self.link = link
        self.server_device_stage = server_device_stage  # the device's layers, run on the server after hand-off
        self.last_upload: KVCache | None = None

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens: int = 32, *, chat: bool = True,
                 stop_at_eos: bool = True) -> SpeculativeResult:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r}: must be an int >= 1")
        ids = self.lm.encode_prompt(prompt, chat=chat) if isinstance(prompt, str) else prompt
        if ids.dim() == 1:
            ids = ids[None]
        link = self.link
        link.reset()
        self.device.reset()
        eos = self.lm.eos_token_ids if stop_at_eos else set()
        cache = self.device.new_cache()
        net0 = _network_s(link)
        t0 = time.perf_counter()
        enc = self.device.encode(self.device.hidden(ids, cache))
        up0 = link.bytes_up
        hidden = link.carry(enc, "prefill")  # counted by the innermost link
        kv_bytes = kv_message_bytes(cache)
        self.last_upload = cache  # the KV cache the server received (what `invert_handoff_kv` attacks)
        link.traffic.up_prefill_bytes += kv_bytes
        server_cache = KVCache()  # what the server holds after the upload: the device's keys and values
        server_cache.keys = {i: k.clone() for i, k in cache.keys.items()}
        server_cache.values = {i: v.clone() for i, v in cache.values.items()}
        session = link.session
        token = session.step(hidden, 0)
        link.traffic.down_bytes += TOKEN_REPLY_BYTES
        delay_for = getattr(link, "delay_for", None)
        network = delay_for(link.bytes_up - up0, TOKEN_REPLY_BYTES) if delay_for else 0.0
        if delay_for and getattr(link, "sleep", False) and network > 0:
            time.sleep(network)
        prefill_s = time.perf_counter() - t0
        res = SpeculativeResult("", [token], ids.shape[1], 0, 0, prefill_s, rounds=0)
        pos = ids.shape[1]
        while len(res.token_ids) < max_new_tokens and token not in eos:
            t = time.perf_counter()
            h = self.server_device_stage(torch.tensor([[token]]), cache=server_cache)
            token = session.step(h, pos)
            link.traffic.down_bytes += TOKEN_REPLY_BYTES
            pos += 1
            res.token_ids.append(token)
            res.decode_s.append(time.perf_counter() - t)
        if delay_for:  # the streamed ids' serialisation (no round trip: they follow the first one)
            network += (len(res.token_ids) - 1) * TOKEN_REPLY_BYTES * 8 / getattr(link, "downlink_bps", float("inf"))
        res.network_s = network if not getattr(link, "sleep", False) else _network_s(link) - net0
        res.text = self.lm.decode(res.token_ids)
        res.bytes_up, res.bytes_down = link.bytes_up, link.bytes_down
        return res


def handoff_generator(lm: LoadedModel, cut: int, codec=None, wrap=None) -> HandoffGenerator:
    """Cut `lm` at `cut`; the server gets the rest and, after the hand-off, a stage of the device's layers.
    `wrap(link)` may put a SimulatedLink around the in-process link."""
    stages = split_model(lm, [cut])
    server_stages = split_model(lm, [cut])  # the server's own copy of the device layers (same public weights)
    device = DeviceHalf(stages[0], codec=codec)
    link = InProcessLink(ServerHalf(stages[1:], codec=device.codec))
    return HandoffGenerator(lm, device, wrap(link) if wrap else link, server_stages[0])


# -- what the hand-off leaks -------------------------------------------------------------------------
class _Stop(Exception):
    pass


@torch.no_grad()
def first_layer_value_table(lm: LoadedModel, chunk: int = 4096) -> torch.Tensor:
    """(V, kv_heads * head_dim): layer 0's value vector for every vocabulary token.

    Layer 0's value at a position is v_proj(norm(embedding(token))): a function of that position's token
    alone (no position, no context), so a Kerckhoffs attacker with the public weights tabulates it once.
    The MLP of layer 0 is skipped (a pre-hook stops the layer once attention has filled the cache)."""
    from splitinfer.models import adapters

    stage = split_model(lm, [1])[0] if lm.num_layers > 1 else split_model(lm, [])[0]
    mlp = getattr(adapters.decoder_parts(lm.model).layers[0], "mlp", None)

    def stop(*_):
        raise _Stop

    hook = mlp.register_forward_pre_hook(stop) if mlp is not None else None
    rows = []
    try:
        for s in range(0, lm.vocab_size, chunk):
            ids = torch.arange(s, min(s + chunk, lm.vocab_size))[:, None]
            cache = KVCache()
            try:
                stage(ids, cache=cache)
            except _Stop:
                pass
            v = cache.values[min(cache.values)]  # (n, kv_heads, 1, head_dim)
            rows.append(v[:, :, 0].reshape(len(ids), -1).float())
    finally:
        if hook is not None:
            hook.remove()
    return torch.cat(rows)


@torch.no_grad()
def invert_handoff_kv(cache: KVCache, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Recover the prompt from the KV cache the device uploads at hand-off (batch 1).

    Each position's layer-0 value is matched against `table` (`first_layer_value_table`) by L2 distance:
    no search, no left-to-right order. Returns (token ids (T,), relative distance of each match: ~1e-7
    for an exact match, ~1 when the payload is not a layer-0 value)."""
    layer = min(cache.values)
    v = cache.values[layer][0].float()  # (kv_heads, T, head_dim)
    rows = v.permute(1, 0, 2).reshape(v.shape[1], -1)  # (T, kv_heads * head_dim)
    d = torch.cdist(rows, table)
    best = d.min(-1)
    return best.indices, best.values / rows.norm(dim=-1).clamp_min(1e-12)
