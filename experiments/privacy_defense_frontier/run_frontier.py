"""Privacy-utility frontier of the defenses against attackers that know them (issue 16).

For each cut, each defense at a few strengths: utility on held-out public text (Δppl % with its 95 %
interval, KL, top-1 agreement, greedy exact match; `splitinfer.privacy.evaluate.defense_utility`) and,
for each attack, leakage on Faker victims (English and Japanese; `evaluate_privacy`), plus costs. Every
job goes through the split path (`DeviceHalf.observe`). Rows are appended to `rows.jsonl` as they finish
(a killed run keeps them; a rerun skips finished rows and each attack resumes its victims), then
`--plot-only` writes `frontier.csv`, `table.md` and one figure per cut.

    nice -n 5 python experiments/privacy_defense_frontier/run_frontier.py --cuts 8      # one cut
    python experiments/privacy_defense_frontier/run_frontier.py --plot-only
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (defense name, parameter, strengths); the trained ones use the recipe in TRAIN.
GRID = {
    "none": (None, [None]),
    "gaussian": ("sigma", [0.05, 0.2, 0.5]),
    "dchi": ("eta", [2000.0, 500.0, 200.0]),
    "fisher_noise": ("sigma", [0.05, 0.2, 0.5]),
    "nopeek": ("lam", [0.3, 1.0, 3.0]),
    "secret_adapter": ("gamma", [0.1, 0.3, 1.0]),
    "secret_permutation": (None, [None]),  # no strength: a secret channel permutation, exact utility
}
# The new defenses first: a run stopped early still has them.
RUN_ORDER = ["none", "secret_adapter", "nopeek", "fisher_noise", "gaussian", "dchi", "secret_permutation"]
TRAIN = {"rank": 32, "steps": 12, "train_budget_s": 120.0, "train_seqs": 24, "seq_len": 32, "batch_seqs": 1,
         "lr": 0.02}
INVERTER = {"arch": "gru", "width": 256, "layers": 1, "train_budget_s": 30.0, "max_steps": 30,
            "max_train_tokens": 4096}
WHITEBOX = {"noisy_max_candidates": 128, "probe_tokens": 1024}
# Which attacks run against which defense. Against noise defenses the hybrid is the white-box search
# (L2, the maximum-likelihood distance for isotropic noise; Fisher-weighted for fisher_noise) plus the
# inverter's candidates, so plain `whitebox` runs only as the control (no defense) and against the
# secret-weight defenses (grey-box: the public device weights).
# `hybrid_map` is the hybrid with the MAP choice (`lm_map`: Gaussian likelihood in the attack's metric,
# scale measured on the attacker's own text, times the LM prior); on an exact payload it is the hybrid.
ATTACKS = {"none": ["whitebox", "learned_inverter", "hybrid"],
           "nopeek": ["whitebox", "learned_inverter", "hybrid", "hybrid_map"],
           "secret_adapter": ["whitebox", "learned_inverter", "hybrid", "hybrid_map"],
           # the known attack on permutations: recover the secret from the device's traffic, then white-box
           "secret_permutation": ["whitebox", "learned_inverter", "permutation_recovery"]}
DEFAULT_ATTACKS = ["learned_inverter", "hybrid", "hybrid_map"]
# The runs the figures and the strongest-attack table show: r3/r4 supersede r1/r2 (candidate cap 24, short
# adapter recipe); their rows stay in frontier.csv and table.md (README: "Runs").
SHOWN_RUNS = ("r3", "r4", "r5", "r6", "floor")


def _cand_cap(defense: str, attack: str, aspec: dict) -> int | None:
    """Candidates verified per position at most (None: exhaustive; the inverter verifies none)."""
    if attack == "learned_inverter":
        return None
    if attack == "permutation_recovery":  # exact (uncapped) search once the permutation is verified
        return aspec["whitebox"].get("max_candidates")
    if defense == "none":  # an exact payload: only max_candidates caps it
        return aspec.get("max_candidates")
    return aspec.get("max_candidates") or aspec.get("noisy_max_candidates", 512)


def attack_spec(name: str) -> dict:
    if name == "learned_inverter":
        return {"name": name, **INVERTER}
    if name == "hybrid":
        return {"name": name, **WHITEBOX, "inverter": INVERTER, "top_k": 16}
    if name == "hybrid_map":
        return {**attack_spec("hybrid"), "lm_map": True}
    if name == "permutation_recovery":
        return {"name": name, "whitebox": dict(WHITEBOX)}
    return {"name": name, **WHITEBOX}


def defense_spec(name: str, strength, train: dict | None = None) -> dict | None:
    if name == "none":
        return None
    key, _ = GRID[name]
    spec = {"name": name} if key is None else {"name": name, key: strength}
    if name in ("nopeek", "secret_adapter"):
        spec.update(train or TRAIN)
    return spec


def run(args) -> None:
    import torch

    from splitinfer.models import load_model
    from splitinfer.privacy import evaluate_privacy
    from splitinfer.privacy.evaluate import defense_utility

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = set()
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["cut"], r["defense"], str(r["strength"]), r["attack"]))
    lm = load_model(args.model)
    defenses = args.defenses.split(",") if args.defenses else RUN_ORDER
    greybox = {int(c) for c in args.greybox_cuts.split(",") if c}
    # Rounds: every defense's middle strength, then the strongest, then the weakest (a run stopped early
    # still has a point of every defense).
    settings = [("none", None)] + [(name, GRID[name][1][k]) for k in (1, 2, 0) for name in defenses
                                   if name != "none" and k < len(GRID[name][1])]
    if args.strengths:  # round 2: chosen strengths of the chosen defenses (the control only with "none")
        picked = [float(v) for v in args.strengths.split(",")]
        settings = [(n, None) for n in defenses if n == "none"] + [(n, v) for n in defenses if n != "none"
                                                                   for v in picked]
    suffix = (f"-max{args.max_candidates}" if args.max_candidates else "") + (
        f"-noisymax{args.noisy_max_candidates}" if args.noisy_max_candidates else "")
    train = {**TRAIN, **({"steps": args.train_steps, "train_budget_s": args.train_budget} if args.train_steps
                         else {}), **args.train_set}
    for cut in [int(c) for c in args.cuts.split(",")]:
        for name, strength in settings:
            if True:
                spec = defense_spec(name, strength, train)
                attacks = ATTACKS.get(name, DEFAULT_ATTACKS)
                if name != "none" and cut not in greybox:
                    attacks = [a for a in attacks if a != "whitebox"]
                if args.attacks:
                    attacks = [a for a in attacks if a in args.attacks.split(",")]
                todo = [a for a in attacks if (cut, name, str(strength), a) not in done]
                if not todo:
                    continue
                t0 = time.perf_counter()
                util = defense_utility(lm, cut, spec, windows=args.util_windows, prompts=args.util_prompts)
                util["utility/seconds"] = time.perf_counter() - t0
                logging.info("utility cut %d %s %s: dppl %+.1f %% [%+.1f, %+.1f], top-1 %.1f %%", cut, name, strength,
                             util.get("utility/delta_ppl_pct", float("nan")),
                             util.get("utility/delta_ppl_pct_ci_low", float("nan")),
                             util.get("utility/delta_ppl_pct_ci_high", float("nan")),
                             100 * util.get("utility/top1_agreement", float("nan")))
                for attack in todo:
                    folder = Path(args.runs) / f"cut{cut}-{name}-{strength}-{attack}{suffix}"
                    t1 = time.perf_counter()
                    aspec = attack_spec(attack)
                    search = aspec.get("whitebox", aspec)  # permutation_recovery: its white-box search
                    if args.max_candidates and attack != "learned_inverter":
                        search["max_candidates"] = args.max_candidates
                    if args.noisy_max_candidates and attack != "learned_inverter":
                        search["noisy_max_candidates"] = args.noisy_max_candidates
                    m = evaluate_privacy(lm, cut, attack=aspec, defense=spec, victims=args.victims,
                                         max_tokens=args.victim_tokens, chat=False, utility=False, out_dir=folder,
                                         time_budget_s=args.control_budget if name == "none" and attack != "learned_inverter"
                                         else args.attack_budget)
                    if aspec["name"] != attack:  # hybrid_map reports as hybrid: its own column names
                        m = {k.replace(f"privacy/{aspec['name']}/", f"privacy/{attack}/"): v for k, v in m.items()}
                    row = {"cut": cut, "defense": name, "strength": strength, "attack": attack,
                           "job_s": time.perf_counter() - t1, "run": args.run_tag,
                           "max_candidates": args.max_candidates if attack != "learned_inverter" else None,
                           "cand_cap": _cand_cap(name, attack, aspec),
                           "train_steps": spec.get("steps") if spec else None,
                           "train_recipe": ({k: spec[k] for k in TRAIN if k in spec} if spec and "steps" in spec
                                            else None), **util, **m}
                    with open(rows_path, "a") as f:
                        f.write(json.dumps(row, default=float) + "\n")
                    logging.info("row cut %d %s %s %s: tokens %.1f %%, PII %.1f %%, dppl %+.1f %%", cut, name,
                                 strength, attack, 100 * m.get(f"privacy/{attack}/token_acc", float("nan")),
                                 100 * m.get(f"privacy/{attack}/pii_recovery", float("nan")),
                                 util.get("utility/delta_ppl_pct", float("nan")))


COLUMNS = [
    ("run", "run", "{}"), ("cut", "cut", "{}"), ("defense", "defense", "{}"), ("strength", "strength", "{}"),
    ("privacy/defense/steps_done", "train steps", "{:.0f}"), ("attack", "attack", "{}"),
    ("cand_cap", "cand. cap", "{:.0f}"), ("token_acc", "tokens %", "pct"), ("exact_match", "exact %", "pct"),
    ("rouge_l", "ROUGE-L %", "pct"),
    ("pii_recovery", "PII %", "pct"), ("match_dist", "match dist", "{:.3f}"),
    ("utility/delta_ppl_pct", "Δppl %", "dppl"), ("utility/kl_mean", "KL", "{:.4f}"),
    ("utility/top1_agreement", "top-1 %", "pct"), ("utility/exact_match_rate", "greedy EM %", "pct"),
    ("privacy/dcor", "dCor", "{:.3f}"), ("privacy/defense/train_s", "defense train s", "{:.0f}"),
    ("prepare_s", "attack prep s", "{:.0f}"), ("invert_s_per_token", "invert s/tok", "{:.3f}"),
    ("victims_done", "victims", "{:.0f}"), ("partial", "partial", "{}"),
]


def _get(row: dict, key: str):
    if key in row:
        return row[key]
    return row.get(f"privacy/{row['attack']}/{key}")


def _fmt(row: dict, key: str, how: str) -> str:
    v = _get(row, key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if how == "pct":
        return f"{100 * v:.1f}"
    if how == "dppl":
        lo, hi = row.get("utility/delta_ppl_pct_ci_low"), row.get("utility/delta_ppl_pct_ci_high")
        return f"{v:+.1f} [{lo:+.1f}, {hi:+.1f}]" if lo is not None else f"{v:+.1f}"
    return how.format(v)


def load_rows(out: Path) -> list[dict]:
    path = out / "rows.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    # Rows written before the recipe was recorded: the recipe of a row of the same run and setting whose
    # utility is bit-identical (the same adapter, measured once for all of that setting's attacks).
    same = lambda r: (r.get("run"), r["cut"], r["defense"], str(r["strength"]),  # noqa: E731
                      r.get("privacy/defense/steps_done"), r.get("utility/delta_ppl_pct"))
    recipes = {same(r): r["train_recipe"] for r in rows if r.get("train_recipe")}
    for r in rows:
        if not r.get("train_recipe") and same(r) in recipes:
            r["train_recipe"] = recipes[same(r)]
    latest = {}
    for r in rows:  # a rerun of the same row replaces the earlier one
        r.setdefault("run", "r1")  # rows of the first run carry no tag
        if "cand_cap" not in r:  # rows before the cap was recorded ran WHITEBOX's noisy_max_candidates = 24
            r["cand_cap"] = _cand_cap(r["defense"], r["attack"], {**WHITEBOX, "noisy_max_candidates": 24,
                                                                    "max_candidates": r.get("max_candidates")})
        latest[(*_setting(r), r["attack"], r["cand_cap"])] = r
    order = {name: i for i, name in enumerate(GRID)}
    return sorted(latest.values(), key=lambda r: (r["cut"], order.get(r["defense"], 99), float(r["strength"] or 0),
                                                   r.get("privacy/defense/steps_done") or 0, r["attack"]))


def _max_pii(pii: dict, r: dict) -> str:
    v, attack = pii.get(_setting(r), (None, None))
    if v is None:
        return "–"
    own = _get(r, "pii_recovery")
    return f"{100 * v:.1f}" + ("" if attack == r["attack"] or own == v else f" ({attack})")


def _strength(r: dict) -> str:
    return "–" if r["strength"] is None else f"{r['strength']:g}"


def _recipe(r: dict) -> str:
    """The trained defenses' recipe apart from its step count and CPU cap ('' for rows before it was
    recorded and for untrained defenses)."""
    recipe = {k: v for k, v in (r.get("train_recipe") or {}).items() if k not in ("steps", "train_budget_s")}
    return json.dumps(recipe, sort_keys=True) if recipe else ""


def _setting(r: dict) -> tuple:
    return r["cut"], r["defense"], str(r["strength"]), r.get("privacy/defense/steps_done"), _recipe(r)


def strongest(rows: list[dict]) -> dict:
    """(cut, defense, strength, train steps) -> the attack with the highest token recovery (ties: PII)."""
    best = {}
    for r in rows:
        key = _setting(r)
        cand = (_get(r, "token_acc") or 0.0, _get(r, "pii_recovery") or 0.0)
        if key not in best or cand > best[key][0]:
            best[key] = (cand, r)
    return {k: v[1] for k, v in best.items()}


def max_pii(rows: list[dict]) -> dict:
    """(setting) -> (the highest PII recovery of any attack, that attack): the PII figure the target is held
    to, which need not come from the attack with the most tokens."""
    out = {}
    for r in rows:
        v = _get(r, "pii_recovery")
        if v is not None and (_setting(r) not in out or v > out[_setting(r)][0]):
            out[_setting(r)] = (v, r["attack"])
    return out


def plot(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    best = strongest(rows)
    pii = max_pii(rows)
    for cut in sorted({r["cut"] for r in rows}):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for name in GRID:
            pts = sorted(((r["utility/delta_ppl_pct"], r) for (c, d, *_), r in best.items() if c == cut and d == name),
                         key=lambda p: p[0])
            if not pts:
                continue
            x = [max(p[0], 0.01) for p in pts]
            for ax, key in zip(axes, ("token_acc", "pii_recovery"), strict=True):
                # tokens: the strongest attack's; PII: the highest of any attack on that setting
                who = [p[1]["attack"] if key == "token_acc" else pii.get(_setting(p[1]), (0, p[1]["attack"]))[1]
                       for p in pts]
                y = [100 * ((_get(p[1], key) if key == "token_acc" else pii.get(_setting(p[1]), (None,))[0]) or 0.0)
                     for p in pts]
                style = {"marker": "*", "markersize": 14, "linestyle": "none"} if name == "none" else {"marker": "o"}
                if GRID[name][0] is None and name != "none":  # one point (no strength): an open diamond
                    style = {"marker": "D", "markersize": 10, "linestyle": "none", "fillstyle": "none", "mew": 2}
                ax.plot(x, y, label=name, **style)
                for xi, yi, p, att in zip(x, y, pts, who, strict=True):
                    if name != "none":
                        steps = p[1].get("privacy/defense/steps_done")
                        ax.annotate(f"{_strength(p[1])}{'' if steps is None else f' ({steps:.0f} st)'}\n"
                                    f"{att[:6]}", (xi, yi), fontsize=6,
                                    textcoords="offset points", xytext=(3, 3))
        for r in rows:  # the control under a candidate cap: what the capped search gets with no defense
            if r["cut"] == cut and r["defense"] == "none" and r.get("cand_cap") is not None:
                for ax, key in zip(axes, ("token_acc", "pii_recovery"), strict=True):
                    ax.axhline(100 * (_get(r, key) or 0.0), color="C0", lw=0.8, ls="-.",
                               label=f"none, {r['attack']} capped at {r['cand_cap']:.0f} candidates")
        for ax, what in zip(axes, ("token recovery %", "PII recovery %"), strict=True):
            ax.set_xscale("log")
            ax.set_xlabel("Δppl % on held-out text (log; Δppl ≤ 0.01, e.g. none, plotted at 0.01)")
            ax.set_ylabel(f"strongest attack's {what}" if "token" in what else "highest PII recovery % of any attack")
            ax.set_ylim(-3, 103)
            ax.axvline(5, color="grey", lw=0.8, ls="--")
            ax.axhline(10 if "token" in what else 5, color="grey", lw=0.8, ls=":")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"SmolLM2-135M cut {cut}: strongest adaptive attack vs utility loss (target: lower left of "
                     "the dashed/dotted lines)", fontsize=9)
        fig.tight_layout()
        path = out / f"frontier_cut{cut}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    paths.append(_plot_all(best, out, plt))
    return paths


def _plot_all(best: dict, out: Path, plt) -> Path:
    """Every setting of every cut: the strongest attack's token recovery against the server's top-1
    agreement with the unsplit model (utility that the reply depends on). A defense that bites would sit
    in the upper left; the empty middle shows as the points hugging the diagonal band."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    markers = {4: "o", 8: "s", 15: "^"}
    for i, name in enumerate(GRID):
        for cut, marker in markers.items():
            pts = [r for (c, d, *_), r in best.items() if c == cut and d == name]
            if pts:
                ax.scatter([100 * r["utility/top1_agreement"] for r in pts], [100 * (_get(r, "token_acc") or 0.0)
                                                                             for r in pts],
                           color=f"C{i}", marker=marker, s=60 if name == "none" else 30,
                           label=f"{name}" if cut == 8 or not any(c2 == 8 and d2 == name for c2, d2, *_ in best)
                           else None)
    for cut, marker in markers.items():
        ax.scatter([], [], color="grey", marker=marker, label=f"cut {cut}")
    ax.axhline(10, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("server's top-1 agreement with the unsplit model, held-out text (%)")
    ax.set_ylabel("strongest attack's token recovery (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("SmolLM2-135M, all cuts and settings: leakage vs what the server still predicts", fontsize=9)
    fig.tight_layout()
    path = out / "frontier_all.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_tables(rows: list[dict], shown: list[dict], out: Path) -> None:
    """frontier.csv and table.md's first table: every row of every run; the strongest-attack table: the
    runs shown (`--show-runs`)."""
    with open(out / "frontier.csv", "w", newline="") as f:
        keys = sorted({k for r in rows for k in r if not isinstance(r[k], dict | list)})
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in keys})
    lines = ["| " + " | ".join(c[1] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r, k, h) for k, _, h in COLUMNS) + " |" for r in rows]
    best, pii = strongest(shown), max_pii(shown)
    lines += ["", f"Strongest attack per setting (runs {', '.join(sorted({r['run'] for r in shown}))}; "
              "tokens and PII of the attack with the most tokens; max PII: the highest PII of any attack):", "",
              "| run | cut | defense | strength | train steps | strongest attack | cand. cap | victims | tokens % | "
              "PII % | max PII % | Δppl % [95 % CI] | top-1 % |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in shown:
        if best.get(_setting(r)) is r:
            lines.append(f"| {r['run']} | {r['cut']} | {r['defense']} | {r['strength']} | "
                         f"{_fmt(r, 'privacy/defense/steps_done', '{:.0f}')} | {r['attack']} | {_fmt(r, 'cand_cap', '{:.0f}')} | "
                         f"{_fmt(r, 'victims_done', '{:.0f}')} | {_fmt(r, 'token_acc', 'pct')} | {_fmt(r, 'pii_recovery', 'pct')} | "
                         f"{_max_pii(pii, r)} | "
                         f"{_fmt(r, 'utility/delta_ppl_pct', 'dppl')} | {_fmt(r, 'utility/top1_agreement', 'pct')} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--runs", default="outputs/privacy_defense_frontier/runs",
                   help="per-attack folders (per-victim results; a rerun resumes from them)")
    p.add_argument("--cuts", default="4,8,15")
    p.add_argument("--defenses", default=None, help=f"comma list of {list(GRID)} (default: all)")
    p.add_argument("--attacks", default=None, help="only these attacks")
    p.add_argument("--victims", type=int, default=20)
    p.add_argument("--victim-tokens", type=int, default=24)
    p.add_argument("--attack-budget", type=float, default=None, help="seconds per attack job (default: none)")
    p.add_argument("--control-budget", type=float, default=150.0,
                   help="seconds for the exhaustive white-box searches without a defense (the control; they are "
                        "exact, so fewer victims still say 100 %%: the row says how many)")
    p.add_argument("--greybox-cuts", default="8",
                   help="cuts where plain (grey-box) whitebox also runs against the trained defenses")
    p.add_argument("--util-windows", type=int, default=12)
    p.add_argument("--util-prompts", type=int, default=8)
    p.add_argument("--strengths", default=None,
                   help="comma list of strengths for every chosen defense instead of GRID's rounds")
    p.add_argument("--train-steps", type=int, default=None,
                   help=f"optimizer steps of the trained defenses (default {TRAIN['steps']})")
    p.add_argument("--train-budget", type=float, default=TRAIN["train_budget_s"],
                   help="CPU seconds cap of each trained adapter with --train-steps")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a key of the trained defenses' recipe {sorted(TRAIN)} (repeatable)")
    p.add_argument("--max-candidates", type=int, default=None,
                   help="cap the white-box family's candidates per position on exact payloads too (the control "
                        "with the same cap as the noisy rows' noisy_max_candidates)")
    p.add_argument("--noisy-max-candidates", type=int, default=None,
                   help=f"candidates per position on a noisy payload (default {WHITEBOX['noisy_max_candidates']})")
    p.add_argument("--run-tag", default="r1", help="which run a row comes from (the README says what each was)")
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--show-runs", default=",".join(SHOWN_RUNS),
                   help="comma list of run tags in the figures and the strongest-attack table, or 'all' "
                        "(every row stays in frontier.csv and the first table of table.md)")
    args = p.parse_args(argv)
    overrides = {}
    for item in args.train_set:
        key, _, value = item.partition("=")
        if key not in TRAIN or not value:
            p.error(f"--train-set {item!r}: use KEY=VALUE with KEY one of {sorted(TRAIN)}")
        try:
            overrides[key] = type(TRAIN[key])(value)
        except ValueError:
            p.error(f"--train-set {item!r}: {key} must be a {type(TRAIN[key]).__name__} like {TRAIN[key]!r}")
    args.train_set = overrides
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.plot_only:
        run(args)
    rows = load_rows(Path(args.out))
    shown = [r for r in rows if args.show_runs == "all" or r["run"] in args.show_runs.split(",")]
    if rows:
        write_tables(rows, shown, Path(args.out))
    if shown:
        plot(shown, Path(args.out))


if __name__ == "__main__":
    main()
