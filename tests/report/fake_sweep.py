"""Synthetic metrics.json rows and sweep folders for the report tests (no model runs)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

BYTES = {"fp32": 2304.0, "fp16": 1200.0, "int8": 650.0, "ec40": 400.0, "int4": 350.0, "int3": 300.0}
BAD = {"fp32": 0.0, "fp16": 0.0, "int8": 1.0, "ec40": 2.0, "int4": 4.0, "int3": 5.0}


def row(cut: int, codec: str, **kw) -> dict:
    """One job's metrics as `splitinfer.run` writes them (older layout: no `_ci_` keys unless given)."""
    nbytes, bad = BYTES[codec], BAD[codec]
    r = {
        "name": "synthetic",
        "cut": cut,
        "codec": codec,
        "defense": "none",
        "attack": "none",
        "link": "4g_lte",
        "device": "phone",
        "num_layers": 30,
        "up_bytes_per_token_prefill": nbytes - 100,
        "up_bytes_per_token_decode": nbytes,
        "up_ratio_vs_fp32_decode": nbytes / 2304,
        "delta_ppl_pct": bad * (1 + cut / 10),
        "kl_mean": bad / 100,
        "top1_agreement": 1 - bad / 100,
        "exact_match_rate": 1.0 if bad == 0 else 0.5,
        "device_memory_bytes": 100e6 + cut * 15e6,
        "device_prefill_s_per_token": 0.001 * cut,
        "server_prefill_s_per_token": 0.001 * (30 - cut),
        "whole_prefill_s_per_token": 0.03,
        "device_decode_s_per_token": 0.01 * cut,
        "server_decode_s_per_token": 0.01 * (30 - cut),
        "whole_decode_s_per_token": 0.3,
        "down_bytes_per_token_decode": 4.0,
        "device_flops_per_token": 1e7 * cut,
        "whole_flops_per_token": 3e8,
        "device_slowdown": 2.0,
        "latency_prompt_tokens": 64,
        "tpot_s": 0.01 * cut * 2 + nbytes * 8 / 5.85e6 + 0.07 + 0.01 * (30 - cut),
        "ttft_s": 1.0 + cut / 10,
        "tpot_all_device_s": 0.6,
        "tpot_all_server_s": 0.3,
        "ttft_all_device_s": 4.0,
        "ttft_all_server_s": 2.0,
        "energy_j_per_token": 0.01,
    }
    r.update(kw)
    return r


def with_ci(
    r: dict,
    dppl: tuple[float, float],
    kl: tuple[float, float] | None = None,
    exact: tuple[float, float] | None = None,
) -> dict:
    """`r` with bootstrap intervals, as the current metrics write them."""
    r = dict(r, delta_ppl_pct_ci_low=dppl[0], delta_ppl_pct_ci_high=dppl[1], eval_tokens=2048)
    if kl:
        r.update(kl_mean_ci_low=kl[0], kl_mean_ci_high=kl[1])
    if exact:
        r.update(exact_match_rate_ci_low=exact[0], exact_match_rate_ci_high=exact[1])
    return r


def write_sweep(d: Path, rows: Iterable[dict]) -> Path:
    """One job folder per row under `d`."""
    for n, r in enumerate(rows):
        (d / str(n)).mkdir(parents=True, exist_ok=True)
        (d / str(n) / "metrics.json").write_text(json.dumps(r))
    return d
