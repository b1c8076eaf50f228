"""Split generation: the device half drives the server half through a link.

The device prefills the prompt through its stage and sends the codec message across the link; it gets
the next token id back, and every later step sends one token's message. Each side keeps its own KV
cache. A long prompt goes as several chunk messages when the link asks for it (`link.max_chunk_tokens`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from splitinfer.errors import ConfigError
from splitinfer.models import LoadedModel, split_model
from splitinfer.split.device import DeviceHalf, install_server_entry
from splitinfer.split.link import InProcessLink
from splitinfer.split.placement import Placement
from splitinfer.split.server import SamplingConfig, ServerHalf
from splitinfer.split.wire import resolve_codec


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    bytes_up: int
    bytes_down: int
    prefill_s: float
    decode_s: list[float] = field(default_factory=list)

    @property
    def decode_s_per_token(self) -> float:
        return sum(self.decode_s) / len(self.decode_s) if self.decode_s else float("nan")


class SplitGenerator:
    """Generates text with the device half here and the server half behind a link."""

    def __init__(self, lm: LoadedModel, device: DeviceHalf, link) -> None:
        if not lm.is_causal_lm:
            raise ConfigError(f"model {lm.name!r} is an encoder ({lm.family}); generation needs a causal LM")
        if not isinstance(device, DeviceHalf):
            raise TypeError(f"device must be a DeviceHalf, got {type(device).__name__}")
        self.lm = lm
        self.device = device
        self.link = link

    @property
    def device_stage(self):
        return self.device.stage

    def _send(self, hidden: torch.Tensor, start: int) -> int:
        chunk = getattr(self.link, "max_chunk_tokens", None)
        n = hidden.shape[1]
        per = chunk(hidden) if callable(chunk) and n > 1 else n
        token = -1
        for offset in range(0, n, per):
            part = hidden if per >= n else hidden[:, offset:offset + per]
            token = self.link.step(self.device.encode(part), start + offset)
        return token

    def _prompt_ids(self, prompt: str | torch.Tensor, max_new_tokens: int, chat: bool) -> torch.Tensor:
        """Check a generation's arguments; the prompt as (1, T) ids (a string goes through the tokenizer)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r}: must be an int >= 1")
        if isinstance(prompt, str) and not prompt.strip():
            raise ConfigError("the prompt is empty: give some text to continue")
        ids = self.lm.encode_prompt(prompt, chat=chat) if isinstance(prompt, str) else prompt
        if ids.dim() == 1:
            ids = ids[None]
        if ids.shape[0] != 1 or ids.shape[1] == 0:
            raise ConfigError(f"prompt ids must have shape (1, T>0), got {tuple(ids.shape)}")
        return ids

    @torch.no_grad()
    def generate(self, prompt: str | torch.Tensor, max_new_tokens: int = 32, *, chat: bool = True,
                 stop_at_eos: bool = True, on_token=None) -> GenerationResult:
        """Generate up to `max_new_tokens`; `on_token(token_ids_so_far)` is called after each token."""
        ids = self._prompt_ids(prompt, max_new_tokens, chat)
        self.link.reset()
        self.device.reset()
        cache = self.device.new_cache()
        eos = self.lm.eos_token_ids if stop_at_eos else set()

        t0 = time.perf_counter()
        token = self._send(self.device.hidden(ids, cache), 0)
        prefill_s = time.perf_counter() - t0
        tokens, decode_s = [token], []
        if on_token is not None:
            on_token(tokens)
        pos = ids.shape[1]
        while len(tokens) < max_new_tokens and token not in eos:
            t0 = time.perf_counter()
            hidden = self.device.hidden(torch.tensor([[token]]), cache)
            token = self.link.step(self.device.encode(hidden), pos)
            decode_s.append(time.perf_counter() - t0)
            tokens.append(token)
            if on_token is not None:
                on_token(tokens)
            pos += 1
        return GenerationResult(self.lm.decode(tokens), tokens, ids.shape[1], self.link.bytes_up,
                                self.link.bytes_down, prefill_s, decode_s)


def split_pair(lm: LoadedModel, cuts, codec=None, defense=None, sampling: SamplingConfig | None = None, *,
               placement: Placement | None = None,
               server_placement: Placement | None = None) -> tuple[DeviceHalf, ServerHalf]:
    """Cut `lm` at `cuts` into a device half (first stage) and a server half (the rest of the chain),
    each on its own device and dtype (`placement`, `server_placement`; default CPU float32)."""
    stages = split_model(lm, cuts)
    cut = stages[0].end_layer
    device = DeviceHalf(stages[0], codec=bind_to(resolve_codec(codec), lm, cut),
                        defense=bind_to(defense, lm, cut), placement=placement)
    install_server_entry(stages[1], device.defense)  # a defense the server's weights are folded with
    return device, ServerHalf(stages[1:], codec=device.codec, sampling=sampling, placement=server_placement)


def bind_to(part, lm: LoadedModel, cut: int):
    """A part that depends on the model and the cut — a defense (Fisher-shaped noise, trained adapters) or a
    codec (the learned bottleneck): they have `bind` and `bound` — bound to them; anything else (or None)
    as it is."""
    if part is not None and not getattr(part, "bound", True):
        return part.bind(lm, cut)
    return part


def in_process_generator(lm: LoadedModel, cuts, codec=None, sampling: SamplingConfig | None = None,
                         defense=None, *, placement: Placement | None = None,
                         server_placement: Placement | None = None) -> SplitGenerator:
    """Cut `lm` and wire the halves together in this process (the quickest way to try a split); each half
    on its own device and dtype when asked."""
    device, server = split_pair(lm, cuts, codec, defense, sampling, placement=placement,
                                server_placement=server_placement)
    return SplitGenerator(lm, device, InProcessLink(server))


@torch.no_grad()
def unsplit_generate(lm: LoadedModel, ids: torch.Tensor, max_new_tokens: int, *, streamer=None) -> list[int]:
    """Greedy tokens from the unsplit model via transformers' own `generate` (the reference)."""
    eos = sorted(lm.eos_token_ids) or None
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=False, eos_token_id=eos, pad_token_id=eos[0] if eos else 0, streamer=streamer)
    return out[0, ids.shape[1]:].tolist()
