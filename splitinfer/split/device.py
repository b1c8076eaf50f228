"""The device half of the split path: its stage, the defense, the codec.

`hidden(ids)` runs the device stage; `encode(hidden)` applies the defense and the codec and returns the
codec message that goes on the wire. Embedding-level defenses (dχ-privacy) are installed on the stage
itself; payload-level ones (Gaussian noise) are applied to its output before the codec.
`observe(ids)` is what an honest-but-curious server decodes from this device: the privacy evaluator
attacks exactly that.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from splitinfer.errors import ConfigError
from splitinfer.models import KVCache, Stage
from splitinfer.split.placement import Placement, place_stages
from splitinfer.split.wire import resolve_codec


def _identity(h: torch.Tensor) -> torch.Tensor:
    return h


def install_defense(stage: Stage, defense) -> Callable[[torch.Tensor], torch.Tensor]:
    """Install `defense` on the device stage; return the function to apply to every payload.

    `defense` is None, a `splitinfer.privacy` defense (it says whether it acts on the embeddings or on
    the payload), or any callable hidden -> hidden (applied to the payload)."""
    if defense is None:
        stage.embedding_hook = None
        return _identity
    if hasattr(defense, "acts_on"):
        from splitinfer.privacy.defenses import attach_defense

        return attach_defense(stage, defense)
    if not callable(defense):
        raise ConfigError(f"defense {defense!r} is not a splitinfer defense or a callable hidden -> hidden")
    stage.embedding_hook = None
    return defense


def install_server_entry(stage: Stage, defense) -> Stage:
    """Give the server's first stage what a defense that needs the server's cooperation provisions on it
    (`defense.server_entry`, e.g. the weights folded with a secret channel permutation) as its
    `entry_hook`; any other defense leaves it with the public weights. Returns the stage."""
    stage.entry_hook = getattr(defense, "server_entry", None) if defense is not None else None
    return stage


class DeviceHalf:
    """The device's part of the split path: ids -> device stage -> defense -> codec message.

    `placement` puts the stage on a torch device and dtype (a copy when it is not there already, see
    `split.placement`); what goes to the defense and the codec is float32 on the CPU either way, so the
    wire carries what the codec says whatever the device computes in."""

    def __init__(self, stage: Stage, codec=None, defense=None, placement: Placement | None = None) -> None:
        if not stage.is_first:
            raise ConfigError("the device half must hold the chain's first stage")
        self.placement = placement or Placement()
        stage = place_stages([stage], self.placement)[0]
        self.stage = stage
        self.codec = resolve_codec(codec)
        self.defense = defense
        self._protect = install_defense(stage, defense)
        self.encode_s = 0.0  # seconds spent encoding payloads (codec cost on the device)

    @property
    def acts_on_embeddings(self) -> bool:
        """True when the defense changes the device stage itself (cached clean hidden states won't do)."""
        return getattr(self.defense, "acts_on", "payload") == "embedding"

    def new_cache(self) -> KVCache | None:
        return self.stage.new_cache()

    def reset(self) -> None:
        """Rewind the defense's noise stream (a new generation draws the same noise as the last one) and
        start the codec's session state afresh (a new generation opens a new server session)."""
        if hasattr(self.defense, "reset"):
            self.defense.reset()
        if hasattr(self.codec, "reset"):
            self.codec.reset()

    @torch.no_grad()
    def hidden(self, ids: torch.Tensor, cache: KVCache | None = None, *, position_ids=None,
               attention_mask=None) -> torch.Tensor:
        """The device stage's output for `ids` (embedding defenses included), float32 on the CPU."""
        if self.placement.is_default:
            return self.stage(ids, position_ids=position_ids, attention_mask=attention_mask, cache=cache)
        dev = self.placement.device
        h = self.stage(ids.to(dev), position_ids=None if position_ids is None else position_ids.to(dev),
                       attention_mask=None if attention_mask is None else attention_mask.to(dev), cache=cache)
        return h.to("cpu", torch.float32)

    @staticmethod
    def rollback(cache: KVCache | None, position: int) -> None:
        """Forget the device cache's positions from `position` on (drafts the server rejected)."""
        if cache is not None:
            cache.crop(position)

    @torch.no_grad()
    def encode(self, hidden: torch.Tensor):
        """Defense, then codec: the message that goes on the wire (an EncodedTensor)."""
        h = self._protect(hidden)
        t0 = time.perf_counter()
        # a session codec (codecs/session.py) codes each step against the state of the earlier ones
        enc = self.codec.encode_step(h) if hasattr(self.codec, "encode_step") else self.codec.encode(h)
        self.encode_s += time.perf_counter() - t0
        return enc

    @torch.no_grad()
    def observe(self, ids: torch.Tensor) -> torch.Tensor:
        """What the server decodes from this device for `ids`: decode(encode(defense(stage(ids))))."""
        enc = self.encode(self.hidden(ids))
        return self.codec.decode(enc).to(torch.float32).reshape(enc.header["shape"])
