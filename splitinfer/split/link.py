"""Links move codec messages from the device half to the server half and count what they moved.

A link's `step(enc, start)` carries one step's message up and the next token back. The bytes it counts
are the frames it carried: the codec's header + buffers up, the reply down. In-process and simulated
links reply with the token id alone (`TOKEN_REPLY_BYTES`); the ZeroMQ link counts its real frames.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch

from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.split.server import ServerHalf, ServerSession

TOKEN_REPLY_BYTES = 4  # an int32 token id: the in-process reply (the ZeroMQ link counts its own frames)


def phase_of(start: int, tokens: int) -> str:
    """A message that starts a sequence or carries several positions is prefill; one token is decode."""
    return "prefill" if start == 0 or tokens > 1 else "decode"


@dataclass
class Traffic:
    """What a link moved, by direction and phase (prefill: a prompt or chunk; decode: one token)."""

    up_prefill_bytes: int = 0
    up_prefill_tokens: int = 0
    prefill_msgs: int = 0
    up_decode_bytes: int = 0
    up_decode_tokens: int = 0
    decode_msgs: int = 0
    down_bytes: int = 0

    def add_up(self, nbytes: int, tokens: int, phase: str) -> None:
        if phase == "prefill":
            self.up_prefill_bytes += nbytes
            self.up_prefill_tokens += tokens
            self.prefill_msgs += 1
        elif phase == "decode":
            self.up_decode_bytes += nbytes
            self.up_decode_tokens += tokens
            self.decode_msgs += 1
        else:
            raise ValueError(f"phase={phase!r} is not 'prefill' or 'decode'")

    def merge(self, other: Traffic) -> Traffic:
        """Add what `other` counted to this one (e.g. several generations through one link)."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def bytes_up(self) -> int:
        return self.up_prefill_bytes + self.up_decode_bytes

    @property
    def messages(self) -> int:
        return self.prefill_msgs + self.decode_msgs


class Link(Protocol):
    """Carries a device step's codec message to the server side and brings back the next token id."""

    traffic: Traffic

    @property
    def bytes_up(self) -> int: ...
    @property
    def bytes_down(self) -> int: ...
    def step(self, enc: EncodedTensor, start: int) -> int: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


def tokens_of(enc: EncodedTensor) -> int:
    """Positions a step's message carries: T of its (1, T, H) shape."""
    shape = enc.header.get("shape") or [1, 1, 1]
    return int(shape[1]) if len(shape) == 3 else 1


@dataclass(frozen=True)
class VerifyRequest:
    """A speculative step's message: the codec message for [x, d1..dγ] plus the drafted ids (and their
    drafter probabilities). Passed through `step` by link wrappers, so each counts and delays it as it does
    any step (SimulatedLink, MeteredLink); the innermost link runs `verify` and returns k+1 token ids."""

    enc: EncodedTensor
    draft: tuple[int, ...]
    draft_p: tuple[float, ...] | None = None

    @property
    def header(self) -> dict:
        return self.enc.header

    def extra_bytes(self) -> int:
        """Bytes the draft adds to the message: an int32 id (and a float32 probability) per drafted token."""
        return 4 * len(self.draft) * (1 if self.draft_p is None else 2)


class InProcessLink:
    """A link with no network: the frames cross as the wire would carry them (header re-parsed), counted.

    `carry(enc)` moves a message without a step (teacher-forced evaluation); `step(enc, start)` runs a
    generation step in the server's session and returns the sampled token.
    """

    def __init__(self, server: ServerHalf) -> None:
        self.server = server
        self.traffic = Traffic()
        self.session: ServerSession = server.session()

    @property
    def bytes_up(self) -> int:
        return self.traffic.bytes_up

    @property
    def bytes_down(self) -> int:
        return self.traffic.down_bytes

    @property
    def messages(self) -> int:
        return self.traffic.messages

    def carry(self, enc: EncodedTensor, phase: str = "prefill") -> torch.Tensor:
        """Move one message to the server and decode it there; returns the server's hidden state."""
        frames = enc.to_frames()
        self.traffic.add_up(sum(memoryview(f).nbytes for f in frames), tokens_of(enc), phase)
        return self.server.decode(EncodedTensor.from_frames(frames))

    def step(self, enc: EncodedTensor, start: int) -> int:
        if isinstance(enc, VerifyRequest):
            return self.verify(enc.enc, start, enc.draft, enc.draft_p)
        hidden = self.carry(enc, phase_of(start, tokens_of(enc)))
        token = self.session.step(hidden, start)
        self.traffic.down_bytes += TOKEN_REPLY_BYTES
        return token

    def verify(self, enc: EncodedTensor, start: int, draft, draft_p=None) -> list[int]:
        """A speculative step (`ServerSession.verify`): one message up (hidden states of [x, d1..dγ] and
        the drafted ids), the accepted drafts plus the server's next token back; counted as decode."""
        hidden = self.carry(enc, "decode")
        self.traffic.up_decode_bytes += 4 * len(draft) * (1 if draft_p is None else 2)
        tokens = self.session.verify(hidden, start, list(draft), draft_p)
        self.traffic.down_bytes += TOKEN_REPLY_BYTES * len(tokens)
        return tokens

    def reset(self) -> None:
        self.session = self.server.session()
        self.traffic = Traffic()

    def close(self) -> None:
        pass


class LinkWrapper:
    """Base of links that wrap another link (simulated network, metering): counts, reset, close and every
    other attribute (codec, session, info(), max_chunk_tokens, ...) are the inner link's."""

    def __init__(self, inner) -> None:
        self.inner = inner

    @property
    def traffic(self) -> Traffic:
        return self.inner.traffic

    @property
    def bytes_up(self) -> int:
        return self.inner.bytes_up

    @property
    def bytes_down(self) -> int:
        return self.inner.bytes_down

    def reset(self) -> None:
        self.inner.reset()

    def close(self) -> None:
        self.inner.close()

    def verify(self, enc: EncodedTensor, start: int, draft, draft_p=None) -> list[int]:
        """A speculative step, through this wrapper's `step` (so it is counted and delayed like any step)."""
        return self.step(VerifyRequest(enc, tuple(draft), None if draft_p is None else tuple(draft_p)), start)

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (copy/unpickle): don't recurse
            raise AttributeError(name)
        return getattr(self.inner, name)
