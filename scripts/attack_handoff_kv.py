"""What the hand-off leaks: recover the prompt from the KV cache the device uploads once after prefill.

    python scripts/attack_handoff_kv.py --victims 20 --cuts 4 8 15 --out experiments/speculative_split/handoff_leak

Kerckhoffs attacker (the server, with the public weights). The hand-off uploads every device layer's keys
and values; layer 0's value at each position is v_proj(norm(embedding(token))), a function of that
position's token alone, so each position is matched against a table of all vocabulary tokens
(splitinfer.split.handoff.invert_handoff_kv). The cache attacked is the one the split path's device stage
fills at each cut. Victims: splitinfer.privacy's Faker prompts (en_US and ja_JP, PII items). Writes
kv_attack.csv (one row per victim x cut) and summary.csv (per cut, Wilson 95 % intervals).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

from splitinfer.stats import wilson_interval


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--victims", type=int, default=20)
    ap.add_argument("--cuts", type=int, nargs="+", default=[4, 8, 15])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="experiments/speculative_split/handoff_leak")
    ap.add_argument("--payload-budget", type=float, default=0.0,
                    help="also run the project's white-box attack on the per-token split's hidden-state "
                         "payload of the same victims, this many seconds per cut (0: skip); payload.csv")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from splitinfer.models import load_model, split_model
    from splitinfer.privacy.metrics import pii_recovered, token_accuracy
    from splitinfer.privacy.victims import victim_set
    from splitinfer.split.handoff import first_layer_value_table, invert_handoff_kv

    lm = load_model(args.model)
    t0 = time.process_time()
    table = first_layer_value_table(lm)
    table_s = time.process_time() - t0
    print(f"value table {tuple(table.shape)} in {table_s:.1f} s CPU", file=sys.stderr)
    victims = victim_set(lm, args.victims, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for cut in args.cuts:
        device = split_model(lm, [cut])[0]
        for i, v in enumerate(victims):
            cache = device.new_cache()
            with torch.no_grad():
                device(v.ids, cache=cache)
            t = time.process_time()
            rec, rel = invert_handoff_kv(cache, table)
            cpu = time.process_time() - t
            true = v.ids[0]
            text = lm.decode(rec[v.content].tolist())
            pii = pii_recovered(text, v.pii)
            rows.append({"cut": cut, "victim": i, "locale": v.locale, "tokens": int(v.scored.sum()),
                         "correct": int(((rec == true) & v.scored).sum()),
                         "token_acc": token_accuracy(rec, true, v.scored),
                         "content_token_acc": token_accuracy(rec, true, v.content),
                         "exact_match": int(bool((rec == true)[v.scored].all())),
                         "pii_items": len(pii), "pii_recovered": sum(pii),
                         "max_rel_dist": float(rel.max()), "kv_bytes": cache.nbytes(), "attack_cpu_s": cpu})
        done = [r for r in rows if r["cut"] == cut]
        print(f"cut {cut}: {sum(r['correct'] for r in done)}/{sum(r['tokens'] for r in done)} tokens, "
              f"{sum(r['pii_recovered'] for r in done)}/{sum(r['pii_items'] for r in done)} PII", file=sys.stderr)
    with open(out / "kv_attack.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = []
    for cut in args.cuts:
        done = [r for r in rows if r["cut"] == cut]
        k, n = sum(r["correct"] for r in done), sum(r["tokens"] for r in done)
        pk, pn = sum(r["pii_recovered"] for r in done), sum(r["pii_items"] for r in done)
        em = sum(r["exact_match"] for r in done)
        summary.append({"cut": cut, "victims": len(done), "tokens": n, "token_acc": k / n,
                        "token_acc_lo": wilson_interval(k, n)[0], "token_acc_hi": wilson_interval(k, n)[1],
                        "exact_match": em / len(done), "exact_match_lo": wilson_interval(em, len(done))[0],
                        "pii_recovery": pk / pn if pn else float("nan"),
                        "pii_lo": wilson_interval(pk, pn)[0], "pii_hi": wilson_interval(pk, pn)[1],
                        "max_rel_dist": max(r["max_rel_dist"] for r in done),
                        "kv_bytes_per_prompt_token": sum(r["kv_bytes"] for r in done) / n,
                        "attack_cpu_s_per_prompt": sum(r["attack_cpu_s"] for r in done) / len(done),
                        "table_cpu_s": table_s})
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    if args.payload_budget > 0:
        from splitinfer.privacy.evaluate import evaluate_privacy

        prows = []
        for cut in args.cuts:
            m = evaluate_privacy(lm, cut, attack="whitebox", victims=victims, utility=False,
                                 time_budget_s=args.payload_budget, seed=args.seed)
            prows.append({"cut": cut, **{k.split("/", 2)[-1]: v for k, v in m.items()
                                         if k.startswith("privacy/whitebox/") and k.count("/") == 2}})
            print(prows[-1], file=sys.stderr)
            with open(out / "payload.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=sorted({k for r in prows for k in r}, key=str))
                w.writeheader()
                w.writerows(prows)
    for s in summary:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
