"""Tables and figures of the privacy-utility frontier from its Hydra sweep (conf/experiment/privacy_frontier*).

A recipe over the report: the jobs are read by `splitinfer.report.load_runs`, and the strongest attack of
each setting (cut, defense, strength) is the report's (`report.measures`: the highest token recovery over
the jobs that differ only in their attack, its PII recovery beside it). Utility is each job's own quality
on the held-out corpus through the defended split, with its 95 % interval.

    python experiments/privacy_defense_frontier/frontier.py multirun/privacy_frontier [--out DIR]

Writes frontier.csv (one row per setting), table.md and frontier_cut<cut>.png into --out (default: the
sweep folder).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from splitinfer.report.measures import LEAK, LEAK_ATTACK, LEAK_ATTACKS, LEAK_PARTIAL, LEAK_PII, configurations
from splitinfer.report.runs import load_runs, num

COLUMNS = ["cut", "defense", "strength", LEAK_ATTACK, LEAK, LEAK_PII, LEAK_PARTIAL, LEAK_ATTACKS,
           "delta_ppl_pct", "delta_ppl_pct_ci_low", "delta_ppl_pct_ci_high", "top1_agreement",
           "top1_agreement_ci_low", "top1_agreement_ci_high", "exact_match_rate", "exact_match_rate_ci_low",
           "exact_match_rate_ci_high", "eval_tokens"]


def strength(row: dict) -> str:
    """The defense's settings from the job's overrides (`defense.sigma=0.2`), '–' for none."""
    keys = [o.split("=", 1) for o in str(row.get("overrides", "")).split() if o.startswith("defense.")]
    return ", ".join(f"{k.removeprefix('defense.')}={v}" for k, v in keys) or "–"


def settings(sweep: str | Path) -> list[dict]:
    """One row per setting of the sweep, with the report's strongest attack (settings no attack has
    finished on are left out: a frontier point needs its leakage)."""
    rows = [{**r, "strength": strength(r)} for r in configurations(load_runs(sweep)) if num(r.get(LEAK)) is not None]
    return sorted(rows, key=lambda r: (r["cut"], r["defense"] != "none", r["defense"], r["strength"]))


def _ci(r: dict, key: str, scale: float = 1.0, spec: str = ".1f") -> str:
    v, lo, hi = (num(r.get(k)) for k in (key, f"{key}_ci_low", f"{key}_ci_high"))
    if v is None:
        return "–"
    text = format(scale * v, spec)
    return text if lo is None or hi is None else f"{text} [{format(scale * lo, spec)}, {format(scale * hi, spec)}]"


def table(rows: list[dict]) -> str:
    lines = ["| cut | defense | strength | strongest attack | tokens % | PII % | Δppl % [95 % CI] | "
             "top-1 % [95 % CI] | greedy EM % [95 % CI] | attacks run |", "|---" * 10 + "|"]
    for r in rows:
        pii = num(r.get(LEAK_PII))
        lines.append(f"| {r['cut']} | {r['defense']} | {r['strength']} | {r[LEAK_ATTACK]}"
                     f"{' (partial)' if r.get(LEAK_PARTIAL) else ''} | {100 * r[LEAK]:.1f} | "
                     f"{'–' if pii is None else f'{100 * pii:.1f}'} | {_ci(r, 'delta_ppl_pct', spec='+.1f')} | "
                     f"{_ci(r, 'top1_agreement', 100)} | {_ci(r, 'exact_match_rate', 100, '.0f')} | "
                     f"{r.get(LEAK_ATTACKS, '')} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> list[Path]:
    """Per cut: the strongest attack's token recovery against Δppl (with its 95 % interval) per defense."""
    from splitinfer.report.plots import pyplot

    plt, paths = pyplot(), []
    for cut in sorted({r["cut"] for r in rows}):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for i, name in enumerate(sorted({r["defense"] for r in rows if r["cut"] == cut})):
            pts = [r for r in rows if r["cut"] == cut and r["defense"] == name]
            x = [r["delta_ppl_pct"] for r in pts]
            err = [[max(0.0, r["delta_ppl_pct"] - r.get("delta_ppl_pct_ci_low", r["delta_ppl_pct"])) for r in pts],
                   [max(0.0, r.get("delta_ppl_pct_ci_high", r["delta_ppl_pct"]) - r["delta_ppl_pct"]) for r in pts]]
            ax.errorbar(x, [100 * r[LEAK] for r in pts], xerr=err, fmt="*" if name == "none" else "o",
                        ms=12 if name == "none" else 6, color=f"C{i}", capsize=3, label=name)
            for r in pts:
                ax.annotate(f"{r['strength']} ({r[LEAK_ATTACK]})", (r["delta_ppl_pct"], 100 * r[LEAK]), fontsize=6,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("Δppl % on held-out text (95 % CI; symlog)")
        ax.set_ylabel("strongest attack's token recovery (%)")
        ax.set_ylim(-3, 103)
        ax.axvline(5, color="grey", lw=0.8, ls="--")
        ax.axhline(10, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"cut {cut}: strongest adaptive attack vs utility loss (target: lower left)", fontsize=9)
        fig.tight_layout()
        paths.append(out / f"frontier_cut{cut}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="the sweep folder (multirun/privacy_frontier)")
    p.add_argument("--out", default=None, help="where the tables and figures go (default: the sweep folder)")
    args = p.parse_args(argv)
    out = Path(args.out or args.sweep)
    out.mkdir(parents=True, exist_ok=True)
    rows = settings(args.sweep)
    with open(out / "frontier.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "table.md").write_text(table(rows))
    plot(rows, out)
    print(table(rows), end="")
    print(f"{len(rows)} settings -> {out}/frontier.csv, table.md, frontier_cut*.png")
    return rows


if __name__ == "__main__":
    main()
