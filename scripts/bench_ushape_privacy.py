"""U-shape downlink privacy rows: how much of the answer a server infers from the hidden state it returns.

    python scripts/bench_ushape_privacy.py                           # SmolLM2, a=4, b in 8,15,22,26,29
    python scripts/bench_ushape_privacy.py --b 15,26 --down-codec none --csv experiments/topologies/ushape_downlink.csv

For each (a, b) the device generates greedily through an in-process U-shape (the served path is the same
code), then the attacks of `splitinfer.privacy.downlink` run on exactly the downlink payload: the public
tail [b, L) + head (an honest-but-curious server holds the public weights) and the logit lens at layer
b. Prints one row per (cuts, attack) with the share of answer tokens recovered and its Wilson interval.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROMPTS = ["What is the capital of France?", "Name three primary colors.", "Write a haiku about rain.",
           "What is 12 times 7?", "Who wrote Hamlet?", "Give a synonym for happy.",
           "Why is the sky blue?", "Translate 'good morning' to Spanish."]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--a", type=int, default=4, help="the device's first cut (default 4)")
    ap.add_argument("--b", default="8,15,22,26,29", help="the server's last layers, comma list (default 8,15,22,26,29)")
    ap.add_argument("--tokens", type=int, default=16, help="answer tokens per prompt (default 16)")
    ap.add_argument("--up-codec", default="int8")
    ap.add_argument("--down-codec", default="int8")
    ap.add_argument("--csv", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    from splitinfer.models import load_model
    from splitinfer.privacy.downlink import downlink_leakage

    torch.set_num_threads(1)
    lm = load_model(args.model)
    rows = []
    for b in (int(x) for x in args.b.split(",")):
        for r in downlink_leakage(lm, [args.a, b], PROMPTS, args.tokens, up_codec=args.up_codec,
                                  down_codec=args.down_codec):
            rows.append(r.as_dict())
            d = rows[-1]
            print(f"cuts {d['a']},{d['b']:>2}  {d['attack']:<12} {d['recovered']:>4}/{d['tokens']:<4} answer tokens "
                  f"= {100 * d['accuracy']:5.1f} % [{100 * d['ci_low']:.1f}, {100 * d['ci_high']:.1f}]", flush=True)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        from splitinfer.report.tables import write_csv

        write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
