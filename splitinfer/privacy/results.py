"""Per-victim results of a privacy run, written as they are produced, and the metrics made from them.

With an output folder, `evaluate_privacy` appends one line per finished victim to
`privacy_victims.jsonl` and rewrites `privacy_partial.json` (the metrics over the victims done so far,
`"partial": true`) after each; a job that is stopped or killed keeps what it finished. When the run ends
`privacy.json` holds the final metrics (`partial` is true there only when the time budget ran out) and
the partial file is removed. A later run in the same folder with the same set-up (attack parameters,
defense, codec, cut, seed, model, victims) reuses the victims already done instead of attacking them
again, so a long run can be resumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from splitinfer.privacy.victims import PII_KINDS

RECORDS_NAME = "privacy_victims.jsonl"
PARTIAL_NAME = "privacy_partial.json"
FINAL_NAME = "privacy.json"


@dataclass
class VictimResult:
    """What the attack recovered of one victim."""

    index: int
    key: str  # hash of the victim's token ids: a resumed run reuses a result only for the same prompt
    locale: str
    tokens: int
    token_acc: float
    content_token_acc: float
    exact: float
    rouge_l: float
    pii: list[tuple[str, bool]] = field(default_factory=list)  # (kind, recovered whole) per item present
    invert_s: float = 0.0
    invert_cpu_s: float = 0.0
    verified: int = 0
    candidates: int = 0
    recovered: str = ""  # the recovered text (synthetic Faker data), for reading what leaked
    match_dist: float = float("nan")  # white-box: median relative distance of the chosen candidates


def victim_key(ids: torch.Tensor) -> str:
    return hashlib.sha1(ids.reshape(-1).long().numpy().tobytes()).hexdigest()[:16]


def fingerprint(parts: dict) -> str:
    """A short hash of everything that decides a victim's result (not the time budget)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _mean(xs) -> float:
    xs = [float(x) for x in xs if not math.isnan(float(x))]
    return float(sum(xs) / len(xs)) if xs else float("nan")


def aggregate(results: list[VictimResult], attack: str, victims: int) -> dict[str, float]:
    """The flat `privacy/<attack>/...` leakage metrics over the victims done (means over victims)."""
    p = f"privacy/{attack}"
    tokens = sum(r.tokens for r in results)
    invert_s = sum(r.invert_s for r in results)
    hits = [h for r in results for _, h in r.pii]
    out = {
        f"{p}/token_acc": _mean(r.token_acc for r in results),
        f"{p}/content_token_acc": _mean(r.content_token_acc for r in results),
        f"{p}/exact_match": _mean(r.exact for r in results),
        f"{p}/rouge_l": _mean(r.rouge_l for r in results),
        f"{p}/pii_recovery": _mean(float(h) for h in hits),
        f"{p}/victims_done": float(len(results)),
        f"{p}/victims": float(victims),
        f"{p}/invert_s": invert_s,
        f"{p}/invert_s_per_token": invert_s / tokens if tokens else float("nan"),
        # CPU seconds of this process: on a shared machine, what the attack costs on an idle core
        # (single-threaded torch) rather than how long it waited for one.
        f"{p}/invert_cpu_s": sum(r.invert_cpu_s for r in results),
    }
    for kind in PII_KINDS:
        kind_hits = [h for r in results for k, h in r.pii if k == kind]
        if kind_hits:
            out[f"{p}/pii_recovery/{kind}"] = _mean(float(h) for h in kind_hits)
    if any(r.candidates for r in results) and tokens:  # the white-box family (whitebox, adaptive, hybrid)
        out[f"{p}/verified_frac"] = sum(r.verified for r in results) / tokens
        out[f"{p}/candidates_per_token"] = sum(r.candidates for r in results) / tokens
        out[f"{p}/match_dist"] = _mean(r.match_dist for r in results)
    return out


def _write_json(path: Path, obj: dict) -> None:
    """Write via a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True, default=str) + "\n")
    os.replace(tmp, path)


class RunFiles:
    """The files of one run in `out_dir` (None: nothing is written, nothing resumed)."""

    def __init__(self, out_dir: Path | str | None, run_id: str, header: dict) -> None:
        self.dir = None if out_dir is None else Path(out_dir)
        self.run_id, self.header = run_id, header
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def earlier(self) -> dict[int, VictimResult]:
        """Results of this same set-up already in the folder, by victim index."""
        if self.dir is None or not (self.dir / RECORDS_NAME).exists():
            return {}
        out = {}
        for line in (self.dir / RECORDS_NAME).read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: that victim is simply redone
                continue
            if rec.get("run") == self.run_id:
                res = rec["result"]
                res["pii"] = [tuple(x) for x in res.get("pii", [])]
                out[int(res["index"])] = VictimResult(**res)
        return out

    def add(self, result: VictimResult, metrics: dict) -> None:
        """Record one finished victim and the metrics so far (`partial: true`)."""
        if self.dir is None:
            return
        with open(self.dir / RECORDS_NAME, "a") as f:
            f.write(json.dumps({"run": self.run_id, "result": asdict(result)}, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._write(PARTIAL_NAME, metrics, partial=True)

    def finish(self, metrics: dict, partial: bool) -> None:
        if self.dir is None:
            return
        self._write(FINAL_NAME, metrics, partial=partial)
        (self.dir / PARTIAL_NAME).unlink(missing_ok=True)

    def _write(self, name: str, metrics: dict, partial: bool) -> None:
        attack = self.header["attack"]["name"]
        _write_json(self.dir / name, {
            "partial": bool(partial),
            "victims_done": int(metrics.get(f"privacy/{attack}/victims_done", 0)),
            "victims": int(metrics.get(f"privacy/{attack}/victims", 0)),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "run": self.run_id, **self.header, "metrics": metrics,
        })
