"""Privacy benchmark on the real model: leakage against the cut per attack, and the privacy-utility
frontier over defense strength. Writes CSV (one row per job, appended as each job ends, so an
interrupted run keeps what it measured), a PNG per plot and a README with the table (`splitinfer.report.privacy_leakage`).

    python scripts/bench_privacy.py                  # quick: cuts 1 and 8, ~1.5 min -> outputs/privacy_bench/
    python scripts/bench_privacy.py --full --tag X   # the experiment's set-up -> experiments/privacy_leakage_vs_cut/
    python scripts/bench_privacy.py --plot-only --full   # redraw the experiment from its CSVs

Utility cost is `delta_ppl_pct`: Δperplexity in percent of the clean perplexity (the sweeps' unit).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from splitinfer.report.privacy_leakage import COLUMNS, attack_spec, defense_spec, plot_and_table, row_from

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "privacy_leakage_vs_cut"
QUICK_OUT = ROOT / "outputs" / "privacy_bench"
# Defaults of the two set-ups; any flag given on the command line wins. `quick` finishes in about
# 1.5 min on the 2-core machine (2 victims x 32 tokens; whitebox, nearest_embedding and logit_lens at
# cuts 1 and 8; at most 45 s per job); `full` is what experiments/privacy_leakage_vs_cut/ ran (hours).
PRESETS = {
    "quick": {"cuts": "1,8", "attacks": "nearest_embedding,logit_lens,whitebox", "max_tokens": 32,
              "parts": "cut", "inverter_budget": 15.0, "job_budget": 45.0, "out": QUICK_OUT},
    "full": {"cuts": "0,1,4,8,15,22,29", "attacks": "nearest_embedding,logit_lens,learned_inverter,whitebox",
             "max_tokens": 48, "parts": "t32,cut,defense,codec", "inverter_budget": 40.0, "job_budget": 900.0,
             "out": OUT},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true",
                   help="the experiment's set-up and folder (hours); default: a quick run into outputs/privacy_bench/")
    p.add_argument("--cuts", default=None, help="cuts for leakage vs depth (quick: 1,8; full: 0,1,4,8,15,22,29)")
    p.add_argument("--attacks", default=None, help="quick: nearest_embedding,logit_lens,whitebox; full: + learned_inverter")
    p.add_argument("--victims", type=int, default=2, help="private prompts (alternating en_US / ja_JP)")
    p.add_argument("--max-tokens", type=int, default=None, help="truncate each prompt to this many tokens (32; full 48)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template (adds ~20 tokens)")
    p.add_argument("--t32-cut", type=int, default=15, help="cut of the timed 32-token whitebox job; -1 skips")
    p.add_argument("--parts", default=None, help="which parts to run (quick: cut; full: t32,cut,defense,codec)")
    p.add_argument("--tag", default="", help="CSV name suffix, so parallel runs write separate files")
    p.add_argument("--inverter-budget", type=float, default=None, help="learned inverter seconds per cut (15; full 40)")
    p.add_argument("--inverter-arch", default="gru")
    p.add_argument("--inverter-steps", type=int, default=None, help="optimizer steps (the budget still caps)")
    p.add_argument("--defense-cut", type=int, default=8, help="cut for the privacy-utility frontier")
    p.add_argument("--defenses", default="gaussian:0.05,gaussian:0.3,dchi:2000,dchi:500",
                   help="name:strength (gaussian sigma, dchi eta); '' skips the frontier")
    p.add_argument("--codecs", default="", help="codecs measured as defenses at --defense-cut, e.g. int8,int4_b32")
    p.add_argument("--whitebox-max-candidates", type=int, default=512,
                   help="per-position candidate limit for whitebox under a defense (noisy payload)")
    p.add_argument("--job-budget", type=float, default=None,
                   help="time budget per job (s; 45, full 900); partial rows marked")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="output folder (quick: outputs/privacy_bench; full: "
                   "experiments/privacy_leakage_vs_cut)")
    p.add_argument("--append", action="store_true", help="append to the CSV instead of starting it anew")
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)
    for key, value in PRESETS["full" if args.full else "quick"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def run(args) -> None:
    import torch

    from splitinfer.models import load_model
    from splitinfer.privacy import evaluate_privacy, victim_set

    torch.set_num_threads(args.threads)
    t_run = time.perf_counter()
    lm = load_model()
    victims = victim_set(lm, args.victims, seed=args.seed, chat=args.chat, max_tokens=args.max_tokens)
    parts = set(args.parts.split(","))
    print(f"model {lm.name}: {lm.num_layers} layers; victims: "
          + ", ".join(f"{v.locale} {v.num_tokens} tok" for v in victims), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"privacy{'_' + args.tag if args.tag else ''}.csv"
    new = not (args.append and path.exists())
    with open(path, "w" if new else "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()

        def job(part, cut, attack, defense, strength, codec=None, victims=victims):
            t = time.perf_counter()
            spec = attack_spec(attack, defense != "none" or codec is not None, args.inverter_arch,
                               args.inverter_budget, args.inverter_steps, args.whitebox_max_candidates)
            m = evaluate_privacy(lm, cut, attack=spec, defense=defense_spec(defense, strength), codec=codec,
                                 victims=victims, time_budget_s=args.job_budget, seed=args.seed)
            row = row_from(part, cut, attack, defense, strength, codec or "fp32", m, victims)
            w.writerow(row)
            f.flush()
            print(f"{part:8s} cut={cut:2d} {attack:18s} {defense}:{strength} codec={codec or 'fp32'} "
                  f"acc={row['token_acc']:.3f} pii={row['pii_recovery']:.2f} rougeL={row['rouge_l']:.3f} "
                  f"dcor={row['dcor']:.3f} partial={row['partial']} ({time.perf_counter() - t:.0f} s, "
                  f"{time.perf_counter() - t_run:.0f} s in all)", flush=True)

        attacks = [a for a in args.attacks.split(",") if a]
        if "t32" in parts and args.t32_cut >= 0 and "whitebox" in attacks:
            short = victim_set(lm, 2, seed=args.seed, chat=False, max_tokens=32)
            job("t32", args.t32_cut, "whitebox", "none", 0.0, victims=short)
        if "cut" in parts:
            for cut in [int(c) for c in args.cuts.split(",") if c]:
                for attack in attacks:
                    job("cut", cut, attack, "none", 0.0)
        if "defense" in parts:
            for spec in [s for s in args.defenses.split(",") if s]:
                name, strength = spec.split(":")
                for attack in attacks:
                    job("defense", args.defense_cut, attack, name, float(strength))
        if "codec" in parts:
            for codec in [c for c in args.codecs.split(",") if c]:
                for attack in attacks:
                    job("codec", args.defense_cut, attack, "none", 0.0, codec=codec)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.plot_only:
        run(args)
    plot_and_table(args.out, experiment=Path(args.out).resolve() == OUT.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
