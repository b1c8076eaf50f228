"""What a U-shaped split's server can infer about the answer from what it computes and returns.

In a U-shape (`splitinfer.split.ushape`) the server never sees a token id or a logit: it returns the
hidden state after layer b and the device runs [b, L) with the head and samples. But an honest-but-
curious server holds the public weights, so it can compute what the device computes. Two attacks on
exactly the downlink payload (the slice's output after the downlink codec, every position of the
device's prompt and answer, teacher-forced as the steps computed them):

- `public_tail`: run the public layers [b, L) + final norm + head on it and take the argmax, i.e.
  replay the device's tail (recovers the greedy answer whenever the tail's weights are public);
- `logit_lens`: the final norm and head applied straight to layer b's state (nostalgebraist's logit
  lens): what leaks from the slice's output without running any further layer.

The score is the share of answer tokens whose position's top-1 equals the token the device emitted,
with a Wilson interval. (The uplink carries the prompt's hidden states as in a single cut; the privacy
evaluation's attacks cover it, `splitinfer.privacy.evaluate`.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.models import LoadedModel, split_model
from splitinfer.split.ushape import check_downlink_codec, check_ushape_cuts, in_process_ushape_generator
from splitinfer.split.wire import resolve_codec
from splitinfer.stats import wilson_interval

ATTACKS = ("public_tail", "logit_lens")


@dataclass(frozen=True)
class DownlinkAttack:
    """conf/attack/downlink.yaml: the attacks on what a U-shape server returns, run by a `topology=ushape`
    sweep job on its corpus prompts (`privacy.evaluate.evaluate_downlink`); the uplink is attacked as a
    single cut's payload by the other attack options."""

    name: str = "downlink"
    attacks: tuple[str, ...] = ATTACKS

    def __post_init__(self) -> None:
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad or not self.attacks:
            from splitinfer.errors import ConfigError

            raise ConfigError(f"attack.attacks={list(self.attacks)}: each must be one of {list(ATTACKS)} "
                              "(the downlink attacks of splitinfer.privacy.downlink)")


@dataclass
class DownlinkRow:
    """One (cuts, codec, attack) row: answer tokens the attack recovered out of those the device emitted."""

    a: int
    b: int
    down_codec: str
    attack: str
    recovered: int
    tokens: int

    @property
    def accuracy(self) -> float:
        return self.recovered / self.tokens if self.tokens else float("nan")

    def as_dict(self) -> dict:
        lo, hi = wilson_interval(self.recovered, self.tokens)
        return {"a": self.a, "b": self.b, "down_codec": self.down_codec, "attack": self.attack,
                "recovered": self.recovered, "tokens": self.tokens, "accuracy": round(self.accuracy, 4),
                "ci_low": round(lo, 4), "ci_high": round(hi, 4)}


@torch.no_grad()
def downlink_payload(lm: LoadedModel, cuts, ids: torch.Tensor, up_codec=None, down_codec=None) -> torch.Tensor:
    """The U-shape server's returned hidden state for every position of `ids` (1, T, H), after the
    downlink codec: the device stage [0, a), the uplink codec, the server's slice [a, b), the downlink codec."""
    a, b = check_ushape_cuts(cuts, lm.num_layers)
    head, middle, _ = split_model(lm, [a, b])
    up, down = resolve_codec(up_codec), check_downlink_codec(down_codec)
    h = head(ids)
    h = up.decode(EncodedTensor.from_frames(up.encode(h).to_frames())).to(torch.float32).reshape(h.shape)
    h = middle(h)
    return down.decode(EncodedTensor.from_frames(down.encode(h).to_frames())).to(torch.float32).reshape(h.shape)


@torch.no_grad()
def attack_logits(lm: LoadedModel, cuts, hidden: torch.Tensor, attack: str) -> torch.Tensor:
    """The attack's logits (1, T, V) from the downlink payload."""
    a, b = check_ushape_cuts(cuts, lm.num_layers)
    tail = split_model(lm, [a, b])[2]
    if attack == "public_tail":
        return tail(hidden)
    if attack == "logit_lens":
        from splitinfer.models import adapters

        return adapters.finish_logits(tail.config, tail.lm_head(tail.norm(hidden)))
    raise ValueError(f"attack {attack!r} is not one of {ATTACKS}")


def downlink_leakage(lm: LoadedModel, cuts, prompts, max_new_tokens: int = 16, *, up_codec=None,
                     down_codec=None, attacks=ATTACKS) -> list[DownlinkRow]:
    """For each attack, the answer tokens it recovers from the downlink over `prompts` (texts or ids)."""
    a, b = check_ushape_cuts(cuts, lm.num_layers)
    gen = in_process_ushape_generator(lm, [a, b], codec=up_codec, down_codec=down_codec)
    down = gen.link.down_codec
    counts = dict.fromkeys(attacks, 0)
    total = 0
    for prompt in prompts:
        res = gen.generate(prompt, max_new_tokens, stop_at_eos=False)
        ids = lm.encode_prompt(prompt) if isinstance(prompt, str) else prompt.reshape(1, -1)
        full = torch.cat([ids, torch.tensor([res.token_ids[:-1]], dtype=ids.dtype)], dim=1)
        hidden = downlink_payload(lm, [a, b], full, gen.device.codec, down)
        answer = torch.tensor(res.token_ids)
        first = ids.shape[1] - 1  # the position whose output is the first answer token
        for attack in attacks:
            pred = attack_logits(lm, [a, b], hidden, attack)[0, first:].argmax(-1)
            counts[attack] += int((pred == answer).sum())
        total += len(res.token_ids)
    name = getattr(down, "name", "none")
    return [DownlinkRow(a, b, name, attack, counts[attack], total) for attack in attacks]
