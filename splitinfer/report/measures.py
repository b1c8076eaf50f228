"""Derived measures the report and the recommendation share.

- **Quality bound** (`abs_dppl_ub_pct`): the upper end of the 95 % bootstrap interval of |Δppl|,
  max(|ci_low|, |ci_high|). Signed Δppl is not used to rank anything: on a finite corpus a lossy codec can
  show Δppl = -0.9 % by chance, which would rank it above a lossless one. Jobs from before the intervals
  were recorded fall back to |Δppl| (the point estimate) and say so (`abs_dppl_ub_source` = "point").
- **Codec fidelity tier**, for tie-breaks: fp32 (lossless) > fp16/bf16 > 8-bit > fewer bits > top-k
  sparsification; within a tier, more nominal bits per value first.
- **Leakage** of a configuration: the strongest attack run on it (highest token recovery), across jobs that
  differ only in the attack.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def num(v: Any) -> float | None:
    """`v` as a finite float, or None (missing, NaN, a bool, a string)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


CI_METRICS = ("delta_ppl_pct", "kl_mean", "top1_agreement", "exact_match_rate")
QUALITY_BOUND = "abs_dppl_ub_pct"
QUALITY_BOUND_SOURCE = "abs_dppl_ub_source"  # "ci95" (from the interval) or "point" (no interval recorded)
QUALITY_BOUND_LABEL = "|Δppl| upper 95 % bound (%)"
QUALITY_BOUND_TEXT = (
    "the upper end of the 95 % bootstrap interval of |Δppl|, max(|ci_low|, |ci_high|), "
    "so a lossy codec cannot look better than a lossless one by a lucky negative Δppl"
)

LEAK = "leakage_token_acc"
LEAK_ATTACK = "leakage_attack"
LEAK_PII = "leakage_pii_recovery"
LEAK_PARTIAL = "leakage_partial"
LEAK_ATTACKS = "leakage_attacks"

# What the project's own privacy experiment found (experiments/privacy_leakage_vs_cut/README.md).
PRIVACY_EXPERIMENT = "experiments/privacy_leakage_vs_cut"
PRIVACY_NOT_MEASURED = (
    "Privacy was not measured: no attack ran in this sweep, so nothing here says how much of the prompt "
    "the server can rebuild from the payload. A split alone is not a privacy measure: in this project's "
    f"experiment ({PRIVACY_EXPERIMENT}) white-box inversion recovers 100 % of the prompt's tokens and PII at "
    "every cut tested (0, 1, 4, 8, 15, 22, 29), and still >= 91 % of the tokens with Gaussian noise of "
    "0.3 x RMS. Sweep with attack=whitebox to measure it for your configuration."
)

# Leakage metrics of splitinfer.privacy (`privacy/<attack>/<metric>`, `privacy/dcor`), most telling first;
# utility, timing and bookkeeping columns under privacy/ are not leakage.
# (a U-shape's downlink rows, `privacy/downlink/<attack>/answer_token_acc`, are the answer's leakage: a column,
# never the prompt's headline leakage, which reads `privacy/<attack>/token_acc` only)
LEAKAGE_SUFFIXES = ("/token_acc", "/content_token_acc", "/rouge_l", "/pii_recovery", "/exact_match", "dcor",
                    "/answer_token_acc")

# Fields that identify a configuration, apart from the attack run against it.
CONFIG_KEYS = (
    "name",
    "model",
    "data",
    "hardware",
    "server_hardware",
    "device",  # jobs written before the `device` group became `hardware`
    "device_slowdown",
    "link",
    "topology",  # single / relay / ushape (conf/topology); jobs from before it have none
    "topology_cuts",
    "split",
    "defense",
    "codec",
    "cut",
)


def ci(row: dict, key: str) -> tuple[float, float] | None:
    """The stored 95 % interval of `key` (`key_ci_low`, `key_ci_high`), or None when the job has none."""
    lo, hi = num(row.get(f"{key}_ci_low")), num(row.get(f"{key}_ci_high"))
    return None if lo is None or hi is None else (min(lo, hi), max(lo, hi))


def quality_bound(row: dict) -> tuple[float | None, str | None]:
    """(upper 95 % bound of |Δppl| in %, "ci95"); (|Δppl|, "point") without an interval; else (None, None)."""
    point = num(row.get("delta_ppl_pct"))
    interval = ci(row, "delta_ppl_pct")
    if interval is not None:
        return max(abs(interval[0]), abs(interval[1]), abs(point) if point is not None else 0.0), "ci95"
    if point is not None:
        return abs(point), "point"
    return None, None


def lower_bound(row: dict, key: str) -> tuple[float | None, str | None]:
    """(lower 95 % bound of `key`, "ci95"), or (the point value, "point") without an interval."""
    interval = ci(row, key)
    if interval is not None:
        return interval[0], "ci95"
    v = num(row.get(key))
    return (v, "point") if v is not None else (None, None)


@dataclass(frozen=True)
class Fidelity:
    """How close a codec is to lossless: lower `tier` is closer; `bits` is the nominal bits per value."""

    tier: int
    bits: float
    label: str

    def key(self) -> tuple[int, float]:
        return self.tier, -self.bits


TIER_LABELS = ("lossless (fp32)", "16-bit float", "8-bit", "fewer than 8 bits", "sparsified (top-k)")


def codec_fidelity(codec: Any, row: dict | None = None) -> Fidelity:
    """The fidelity tier of a codec name: fp32 > fp16/bf16 > 8-bit > fewer bits > top-k sparsification.

    Read from the preset name's grammar (`int{bits}_...`, `ec{NN}`, `top{k}_...`); an unknown name falls
    back to the job's measured bits per value (from `up_ratio_vs_fp32_prefill`), else counts as < 8 bits.
    """
    name = str(codec or "fp32").lower()
    if name.startswith("top"):
        return Fidelity(4, 0.0, TIER_LABELS[4])
    if name in ("fp32", "none", "pipeline", "identity", "null") or name.startswith("fp32"):
        return Fidelity(0, 32.0, TIER_LABELS[0])
    if name.startswith(("fp16", "bf16")):
        return Fidelity(1, 16.0, TIER_LABELS[1])
    m = re.match(r"int(\d+)", name) or re.search(r"blockwise(\d+)", name)
    if m:
        bits = float(m.group(1))
        return Fidelity(2 if bits >= 8 else 3, bits, TIER_LABELS[2] if bits >= 8 else TIER_LABELS[3])
    if re.match(r"ec\d+", name):  # entropy-coded step quantiser: 2.4-4.2 bits per value measured
        return Fidelity(3, 3.0, TIER_LABELS[3])
    ratio = num((row or {}).get("up_ratio_vs_fp32_prefill"))
    if ratio is not None:
        bits = 32 * ratio
        tier = 0 if bits >= 31.5 else 1 if bits >= 15.5 else 2 if bits >= 7.5 else 3
        return Fidelity(tier, round(bits, 1), TIER_LABELS[tier])
    return Fidelity(3, 0.0, TIER_LABELS[3])


def privacy_columns(rows: Sequence[dict]) -> list[str]:
    """Leakage columns present in `rows`, ordered by LEAKAGE_SUFFIXES (so [0] is the headline one)."""
    keys = {
        k
        for r in rows
        for k in r
        if k.startswith("privacy")
        and "/utility/" not in k
        and k.endswith(LEAKAGE_SUFFIXES)
        and num(r.get(k)) is not None
    }
    rank = {suf: i for i, suf in enumerate(LEAKAGE_SUFFIXES)}
    return sorted(keys, key=lambda k: (min(rank[s] for s in LEAKAGE_SUFFIXES if k.endswith(s)), k))


def task_columns(rows: Sequence[dict]) -> list[str]:
    """Task metrics in `rows` (`task/<task>/<metric>` from splitinfer.eval: the split's value, with
    `_ci_low/_ci_high`, `_unsplit` and `_delta` with its paired interval), in first-seen order."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k.startswith("task/") and f"{k}_delta" in r and k not in keys]
    return keys


def with_interval(row: dict, key: str, spec: str = ".3f") -> str:
    """`row[key]` and its stored 95 % interval, e.g. `0.650 [0.502, 0.798]` (spec "+.3f": signed); "" without
    a value."""
    v = num(row.get(key))
    if v is None:
        return ""
    iv = ci(row, key)
    return format(v, spec) + (f" [{format(iv[0], spec)}, {format(iv[1], spec)}]" if iv else "")


def task_facts(row: dict) -> list[str]:
    """One phrase per task metric of a job: `splitinfer_mc acc 0.650 [0.502, 0.798], Δ -0.025
    [-0.075, +0.000] vs unsplit (paired 95 % CI)`."""
    out = []
    for k in task_columns([row]):
        if num(row.get(k)) is None:
            continue
        text = f"{k.removeprefix('task/').replace('/', ' ')} {with_interval(row, k)}"
        if num(row.get(f"{k}_delta")) is not None:
            text += f", Δ {with_interval(row, f'{k}_delta', '+.3f')} vs unsplit (paired 95 % CI)"
        out.append(text)
    return out


def topology_label(r: dict) -> str:
    """'cut 8' for a single cut (and jobs from before topologies), 'relay 8,20' / 'U-shape 8,26' otherwise."""
    kind = str(r.get("topology") or "single")
    if kind in ("single", "None"):
        return f"cut {r.get('cut')}"
    return f"{'U-shape' if kind == 'ushape' else kind} {r.get('topology_cuts', r.get('cut'))}"


def config_key(row: dict) -> tuple:
    """What identifies a configuration apart from the attack: the config choices plus the job's Hydra
    overrides other than `attack...`."""
    ov = tuple(o for o in str(row.get("overrides", "")).split() if not o.lstrip("+~").startswith("attack"))
    return tuple(str(row.get(k)) for k in CONFIG_KEYS) + ov


def _strongest(rows: Sequence[dict]) -> dict[str, Any] | None:
    """The attack with the highest token recovery over `rows` (jobs of one configuration)."""
    best = None
    attacks = set()
    for r in rows:
        for k in r:
            if not (k.startswith("privacy/") and k.endswith("/token_acc")) or k.count("/") != 2:
                continue
            acc = num(r.get(k))
            if acc is None:
                continue
            attack = k.split("/")[1]
            attacks.add(attack)
            pii = num(r.get(f"privacy/{attack}/pii_recovery"))
            cand = (acc, pii if pii is not None else -1.0)
            if best is None or cand > best[0]:
                best = (cand, attack, pii, bool(r.get(f"privacy/{attack}/partial", False)))
    if best is None:
        return None
    (acc, _), attack, pii, partial = best
    return {
        LEAK: acc,
        LEAK_ATTACK: attack,
        LEAK_PII: pii,
        LEAK_PARTIAL: partial,
        LEAK_ATTACKS: ",".join(sorted(attacks)),
    }


def annotate(rows: list[dict]) -> None:
    """Add the quality bound to every row and the strongest attack's leakage to every row of a configuration
    that was attacked (jobs differing only in `attack` are one configuration). Idempotent."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        bound, source = quality_bound(r)
        if bound is not None:
            r[QUALITY_BOUND], r[QUALITY_BOUND_SOURCE] = bound, source
        groups.setdefault(config_key(r), []).append(r)
    for group in groups.values():
        leak = _strongest(group)
        for r in group:
            for k in (LEAK, LEAK_ATTACK, LEAK_PII, LEAK_PARTIAL, LEAK_ATTACKS):
                r.pop(k, None)
            if leak is not None:
                r.update({k: v for k, v in leak.items() if v is not None})


def configurations(rows: Sequence[dict]) -> list[dict]:
    """One row per configuration (the first job of each; annotate() has put the strongest attack on all)."""
    seen: dict[tuple, dict] = {}
    for r in rows:
        seen.setdefault(config_key(r), r)
    return list(seen.values())


def ci_note(rows: Sequence[dict]) -> str:
    """One sentence on how many configurations have a quality interval."""
    quality = [r for r in rows if r.get(QUALITY_BOUND_SOURCE)]
    if not quality:
        return "No job recorded Δppl, so there is no quality bound."
    missing = sum(1 for r in quality if r[QUALITY_BOUND_SOURCE] != "ci95")
    if not missing:
        return f"All {len(quality)} jobs have a 95 % bootstrap interval for Δppl."
    return (
        f"{missing} of {len(quality)} jobs have no Δppl interval (metrics from an older splitinfer): for "
        "them the interval is unknown and the bound falls back to the point estimate |Δppl|, which "
        "noise can move by more than the differences between codecs."
    )
