"""The decode-latency ratio of every wait mode, from saved `scripts/bench_transport.py --csv` runs.

`load` reads one run's CSV (the rows `transport.loadgen` writes: `decode_ratio_per_prompt`, the median of
per-prompt split / unsplit ratios, and its bootstrap `per_prompt_ci95`); `plot_decode_ratio` draws one group
per codec x wait mode and one bar per run, with the 1.03 target as a line
(`experiments/transport_latency/plot.py` is the recipe).
"""

from __future__ import annotations

import csv
from pathlib import Path

from splitinfer.report.style import pyplot

TARGET = 1.03
WAIT_ORDER = {"-": 0, "block": 1, "busy": 2, "warm": 3, "early": 4}


def load(path: Path) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(codec, wait) -> (median per-prompt ratio, CI low, CI high); the in-process row is ("in-process", "-")."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["wait"] == "-":
                key = ("in-process", "-")
            else:
                key = ("int8" if row["codec"].startswith("default") else row["codec"], row["wait"])
            lo, hi = (float(v) for v in row["per_prompt_ci95"].strip("[]").split(","))
            out[key] = (float(row["decode_ratio_per_prompt"]), lo, hi)
    return out


def plot_decode_ratio(runs: list[Path], out: Path) -> None:
    """One bar per run (named by its file, `run_<date>_<HHMM>.csv`) in each codec x wait-mode group."""
    plt = pyplot()
    data = {p.stem.removeprefix("run_"): load(p) for p in runs}
    keys = list(dict.fromkeys(k for d in data.values() for k in d))
    keys.sort(key=lambda k: (k[0] != "in-process", k[0], WAIT_ORDER.get(k[1], 9)))
    width = 0.8 / len(data)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    for i, (name, d) in enumerate(data.items()):
        xs = [j + (i - (len(data) - 1) / 2) * width for j, k in enumerate(keys) if k in d]
        vals = [d[k] for k in keys if k in d]
        ax.bar(xs, [v[0] - 1 for v in vals], width, bottom=1,
               yerr=[[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]], capsize=2,
               label=f"{name[:10]} {name[11:13]}:{name[13:15]}" if len(name) == 15 else name)
    ax.axhline(TARGET, color="k", ls="--", lw=1)
    ax.text(len(keys) - 0.5, TARGET + 0.002, "target 1.03", ha="right", va="bottom", fontsize=8)
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set_xticks(range(len(keys)), [f"{c}\n{w}" if w != "-" else c for c, w in keys], fontsize=8)
    ax.set_ylabel("decode latency, split / unsplit\n(median of per-prompt ratios, 95 % CI)")
    ax.set_title("SmolLM2-135M cut 15 over tcp://127.0.0.1 vs transformers generate, by wait mode")
    ax.legend(fontsize=8, title="run", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
