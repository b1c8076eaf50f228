"""Bytes on the wire, from the codec's real encoded size, per direction and per phase."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

FP32_BYTES = 4
# The server answers every step with one token id (what `InProcessLink` and the transport send back).
TOKEN_REPLY_BYTES = 4


def transmit(codec, hidden: torch.Tensor) -> tuple[torch.Tensor, int, float, float]:
    """Encode and decode one message as the wire would; returns (decoded, wire bytes, enc s, dec s).

    With `codec=None` the raw fp32 tensor is the payload (no header, no copy)."""
    if codec is None:
        return hidden, hidden.numel() * FP32_BYTES, 0.0, 0.0
    t0 = time.perf_counter()
    enc = codec.encode(hidden)
    t1 = time.perf_counter()
    out = codec.decode(enc)
    t2 = time.perf_counter()
    return out.to(torch.float32).reshape(hidden.shape), int(enc.nbytes), t1 - t0, t2 - t1


@dataclass
class ByteCounter:
    """Uplink bytes of prefill messages (a whole prompt) and decode messages (one token each)."""

    hidden_size: int
    prefill_bytes: int = 0
    prefill_tokens: int = 0
    prefill_msgs: int = 0
    decode_bytes: int = 0
    decode_tokens: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0
    coded_tokens: int = 0

    def add(self, nbytes: int, tokens: int, phase: str, enc_s: float = 0.0, dec_s: float = 0.0) -> None:
        if phase == "prefill":
            self.prefill_bytes += nbytes
            self.prefill_tokens += tokens
            self.prefill_msgs += 1
        elif phase == "decode":
            self.decode_bytes += nbytes
            self.decode_tokens += tokens
        else:
            raise ValueError(f"phase={phase!r} is not 'prefill' or 'decode'")
        self.encode_s += enc_s
        self.decode_s += dec_s
        self.coded_tokens += tokens

    def result(self) -> dict[str, float]:
        fp32 = self.hidden_size * FP32_BYTES
        out: dict[str, float] = {"fp32_bytes_per_token": fp32}
        if self.prefill_tokens:
            up = self.prefill_bytes / self.prefill_tokens
            out.update(up_bytes_per_token_prefill=up, up_ratio_vs_fp32_prefill=up / fp32,
                       down_bytes_per_token_prefill=TOKEN_REPLY_BYTES * self.prefill_msgs / self.prefill_tokens,
                       prompt_tokens_mean=self.prefill_tokens / self.prefill_msgs)
        if self.decode_tokens:
            up = self.decode_bytes / self.decode_tokens
            out.update(up_bytes_per_token_decode=up, up_ratio_vs_fp32_decode=up / fp32,
                       down_bytes_per_token_decode=float(TOKEN_REPLY_BYTES))
        if self.coded_tokens:
            out.update(codec_encode_s_per_token=self.encode_s / self.coded_tokens,
                       codec_decode_s_per_token=self.decode_s / self.coded_tokens)
        return out
