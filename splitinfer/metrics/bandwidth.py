"""Bytes on the wire per token, from what a link of the split path moved (`splitinfer.split.Traffic`)."""

from __future__ import annotations

from splitinfer.split.link import TOKEN_REPLY_BYTES, Traffic

FP32_BYTES = 4


def bandwidth_metrics(traffic: Traffic, hidden_size: int, *, encode_s: float = 0.0,
                      decode_s: float = 0.0) -> dict[str, float]:
    """Uplink bytes per token of prefill messages (a whole prompt) and of decode messages (one token
    each), the downlink reply per token, ratios to raw fp32, and the codec's time per token."""
    fp32 = hidden_size * FP32_BYTES
    out: dict[str, float] = {"fp32_bytes_per_token": fp32}
    t = traffic
    if t.up_prefill_tokens:
        up = t.up_prefill_bytes / t.up_prefill_tokens
        out.update(up_bytes_per_token_prefill=up, up_ratio_vs_fp32_prefill=up / fp32,
                   down_bytes_per_token_prefill=TOKEN_REPLY_BYTES * t.prefill_msgs / t.up_prefill_tokens,
                   prompt_tokens_mean=t.up_prefill_tokens / t.prefill_msgs)
    if t.up_decode_tokens:
        up = t.up_decode_bytes / t.up_decode_tokens
        out.update(up_bytes_per_token_decode=up, up_ratio_vs_fp32_decode=up / fp32,
                   down_bytes_per_token_decode=float(TOKEN_REPLY_BYTES))
    coded = t.up_prefill_tokens + t.up_decode_tokens
    if coded:
        out.update(codec_encode_s_per_token=encode_s / coded, codec_decode_s_per_token=decode_s / coded)
    return out
