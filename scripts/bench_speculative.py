"""Speculative split decoding against per-token split, hand-off, all-on-server and all-on-device.

    python scripts/bench_speculative.py                     # default: 5 links x cuts 4 8 15 22, 6 prompts
    python scripts/bench_speculative.py --links 4g_lte loopback --cuts 15 --max-new-tokens 32 --prompts 2

Every split mode runs through the split path (DeviceHalf -> SimulatedLink(InProcessLink(ServerHalf))):
the link moves the real codec frames, counts them and adds each round trip's simulated network time
(rtt + bytes / bandwidth of conf/link/*.yaml) without sleeping it; compute is this machine's wall clock
(device and server on the same CPU, one after the other). Modes:
  per_token        SplitGenerator: one round trip per token
  spec_ngram       SpeculativeGenerator, prompt-lookup drafter, adaptive gamma
  spec_early_exit  SpeculativeGenerator, early-exit head + fitted adapter at the cut, adaptive gamma
  handoff          device prefills, uploads its KV cache once, the server decodes alone
  all_server       token ids up once, the whole model on the server, ids streamed back
  all_device       the whole model on the device, no network
Per-token split's text is the reference: every other mode's greedy tokens are compared with it.
Writes results.csv (one row per prompt x cut x link x mode), summary.csv, acceptance.csv and a figure.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

from splitinfer.report.speculative import (
    load_results,
    plot_tokens_per_s,
    print_tables,
    row_of,
    summarize,
    write_csv,
)
from splitinfer.stats import bootstrap_interval

PROMPTS = [  # (kind, text): chat requests and input-grounded ones (the answer reuses the input)
    ("chat", "What are three simple tips for staying healthy?"),
    ("grounded", "Fix the bug in this Python function and return the corrected code only:\n```python\n"
                 "def average(numbers):\n    total = 0\n    for n in numbers:\n        total += n\n"
                 "    return total / len(number)\n```"),
    ("chat", "Explain what a neural network is in simple terms."),
    ("grounded", "Rewrite the following paragraph in the past tense: The team walks to the station every "
                 "morning. They buy coffee at the small shop, read the news on the train and arrive at the "
                 "office before nine. In the evening they walk home along the river."),
    ("chat", "Write a short poem about the sea."),
    ("grounded", "Summarise this text in two sentences: The city council approved a plan to build a new "
                 "public library in the town centre. The library will have a children's section, a cafe "
                 "and a room for community events. Construction starts next spring and should take two "
                 "years. The council said the plan is paid for by a grant from the national government."),
]
HELDOUT_PROMPTS = [  # the n-gram study's held-out set: never used to choose a setting before that study
    ("chat", "Give me two ideas for a rainy Sunday afternoon with children."),
    ("grounded", "Translate the variable names in this code to English and return the code only:\n```python\n"
                 "def calcola_media(numeri):\n    somma = sum(numeri)\n    return somma / len(numeri)\n```"),
    ("chat", "Why is the sky blue? Answer in three sentences."),
    ("grounded", "Correct the spelling mistakes in this sentence and return it: Yesterday I recieved a leter "
                 "from my freind who lives in a beatiful vilage near the mountains."),
    ("chat", "What should I pack for a three-day hiking trip?"),
    ("grounded", "Turn this list into one sentence: apples, two loaves of bread, a litre of milk, six eggs, "
                 "butter, and a bag of rice."),
]


def adapter_study(args) -> int:
    """Top-1 agreement of each early-exit head with the full model, teacher-forced on held-out text (the
    installed packages' license files: not the pydoc text the adapters are fitted on), Wilson 95 %
    intervals, and the MLP-minus-ridge difference with a paired bootstrap interval over 128-token windows."""
    from splitinfer.data import load_texts, tokenize
    from splitinfer.models import load_model
    from splitinfer.split.drafters import cuts_and_final_hidden, fit_adapters, load_or_train_mlp_adapters
    from splitinfer.stats import wilson_interval

    lm = load_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ridge = fit_adapters(lm, args.cuts)
    mlp = load_or_train_mlp_adapters(lm, args.cuts)
    print(f"adapters ready in {time.perf_counter() - t0:.0f} s", flush=True)
    stream: list[int] = []
    for text in load_texts("licenses"):
        stream.extend(tokenize(lm, text))
        if len(stream) >= args.heldout_tokens:
            break
    window = 128
    n = len(stream) // window
    ids = torch.tensor(stream[: n * window]).reshape(n, window)
    xs, y = cuts_and_final_hidden(lm, args.cuts, ids)
    rows = []
    from splitinfer.models import adapters

    head = adapters.decoder_parts(lm.model).head

    @torch.no_grad()
    def top1(z):  # z: normed hidden states (N, H) in the final norm's output space
        return torch.cat([adapters.finish_logits(lm.config, head(z[i:i + 512])).argmax(-1)
                          for i in range(0, len(z), 512)])

    target = top1(y)
    for cut in args.cuts:
        x = xs[cut]  # norm(h_cut): what EarlyExitDrafter.logits feeds its adapter
        hits = {}
        with torch.no_grad():
            heads = (("logit_lens", x), ("ridge", x @ ridge[cut][0] + ridge[cut][1]), ("mlp", mlp[cut](x)))
        for name, z in heads:
            hits[name] = (top1(z) == target).float()
            k, m = int(hits[name].sum()), len(target)
            lo, hi = wilson_interval(k, m)
            rows.append({"cut": cut, "head": name, "agree": k, "tokens": m, "agreement": k / m, "lo": lo, "hi": hi})
        diff = (hits["mlp"] - hits["ridge"]).reshape(n, window).sum(1).numpy()
        lo, hi = bootstrap_interval(diff / window, "mean", seed=0)  # over 128-token windows
        rows.append({"cut": cut, "head": "mlp_minus_ridge", "agree": int(diff.sum()), "tokens": n * window,
                     "agreement": float(diff.sum()) / (n * window), "lo": lo, "hi": hi})
        for r in rows[-4:]:
            print(r, flush=True)
    with open(out / "adapter_agreement.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return 0


def ngram_study(args) -> int:
    """Acceptance counts of prompt lookup for each min n-gram size: greedy generation through the split
    path with the in-process link (no network, no timing) at a fixed gamma, so the counts do not depend on
    this machine's speed; every setting must give the same tokens (greedy text is the drafter's no matter)."""
    from splitinfer.models import load_model
    from splitinfer.split import InProcessLink, split_pair
    from splitinfer.split.drafters import NGramDrafter
    from splitinfer.split.speculative import SpeculativeGenerator

    sizes = args.ngram_study or [1, 2, 3]
    lm = load_model(args.model)
    cut = args.cuts[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    sets = [("benchmark", PROMPTS[: args.prompts]), ("heldout", HELDOUT_PROMPTS)]
    for set_name, prompts in sets:
        for pi, (kind, text) in enumerate(prompts):
            tokens = None
            for n in sizes:
                device, server = split_pair(lm, [cut])
                gen = SpeculativeGenerator(lm, device, InProcessLink(server),
                                           NGramDrafter(max_ngram=max(3, n), min_ngram=n), gamma=args.gamma)
                res = gen.generate(text, args.max_new_tokens, stop_at_eos=False)
                if tokens is None:
                    tokens = res.token_ids
                drafting = sum(1 for g in res.gammas if g)
                rows.append({"set": set_name, "prompt": pi, "kind": kind, "min_ngram": n, "max_ngram": max(3, n),
                             "gamma": args.gamma, "tokens": len(res.token_ids), "rounds": res.rounds,
                             "rounds_with_draft": drafting, "drafted": res.drafted, "accepted": res.accepted,
                             "same_tokens": int(res.token_ids == tokens)})
                print(rows[-1], flush=True)
    with open(out / "ngram_min.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("set,kind,min_ngram: round trips per decoded token, acceptance, accepted per drafted round, drafted/token")
    for set_name, _ in sets:
        for kind in ("chat", "grounded", "all"):
            for n in sizes:
                rs = [r for r in rows if r["set"] == set_name and r["min_ngram"] == n and kind in ("all", r["kind"])]
                dec = sum(r["tokens"] - 1 for r in rs)
                dr, acc, rd = (sum(r[k] for r in rs) for k in ("drafted", "accepted", "rounds_with_draft"))
                print(f"{set_name},{kind},{n}: {sum(r['rounds'] for r in rs) / dec:.3f}, "
                      f"{acc / dr if dr else float('nan'):.3f} ({acc}/{dr}), {acc / rd if rd else float('nan'):.2f}, "
                      f"{dr / dec:.2f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cuts", type=int, nargs="+", default=[4, 8, 15, 22])
    ap.add_argument("--links", nargs="+", default=["3g", "4g_lte", "5g", "wifi", "loopback"])
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="use the first N prompts")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-gamma", type=int, default=8)
    ap.add_argument("--drafters", nargs="+", default=["ngram", "early_exit"], choices=("ngram", "early_exit"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="experiments/speculative_split")
    ap.add_argument("--from-csv", action="store_true",
                    help="only rebuild summary.csv and the figure from OUT/results.csv (e.g. of an interrupted run)")
    ap.add_argument("--ngram-study", nargs="*", type=int, metavar="MIN_N",
                    help="no timing: acceptance counts of the n-gram drafter for these min n-gram sizes "
                         "(default 1 2 3) at a fixed gamma, benchmark and held-out prompts; OUT/ngram_min.csv")
    ap.add_argument("--gamma", type=int, default=4, help="fixed gamma of --ngram-study")
    ap.add_argument("--adapter-study", action="store_true",
                    help="no timing: teacher-forced top-1 agreement with the full model on held-out text "
                         "(licenses) of the logit lens, the ridge adapter and the distilled MLP adapter per cut; "
                         "OUT/adapter_agreement.csv")
    ap.add_argument("--heldout-tokens", type=int, default=2048)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.ngram_study is not None:
        return ngram_study(args)
    if args.adapter_study:
        return adapter_study(args)
    if args.from_csv:
        return rebuild(Path(args.out), args.links)

    from splitinfer.models import load_model
    from splitinfer.report.runs import load_link
    from splitinfer.split import InProcessLink, MeteredLink, SimulatedLink, SplitGenerator, split_pair
    from splitinfer.split.drafters import EarlyExitDrafter, NGramDrafter, fit_adapters
    from splitinfer.split.handoff import handoff_generator
    from splitinfer.split.metered import timed_unsplit_generate
    from splitinfer.split.speculative import SpeculativeGenerator

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model)
    links = {name: load_link(name) for name in args.links}
    t0 = time.perf_counter()
    adapters = fit_adapters(lm, args.cuts) if "early_exit" in args.drafters else {}
    print(f"early-exit adapters for cuts {args.cuts}: {time.perf_counter() - t0:.1f} s (cached after the first run)",
          flush=True)

    def simulated(link, profile):
        return SimulatedLink.from_profile(link, profile, sleep=False)

    def per_token_gen(cut):
        device, server = split_pair(lm, [cut])
        return SplitGenerator(lm, device, MeteredLink(InProcessLink(server)))

    handoffs = {}

    def handoff_gen(cut):
        if cut not in handoffs:
            handoffs[cut] = handoff_generator(lm, cut)
        return handoffs[cut]

    spec_gens = {}  # (cut, link, drafter) -> generator, kept across prompts so adaptive gamma learns

    def spec_gen(cut, link_name, drafter):
        key = (cut, link_name, drafter)
        if key not in spec_gens:
            device, server = split_pair(lm, [cut])
            d = NGramDrafter() if drafter == "ngram" else EarlyExitDrafter(lm, cut, adapters[cut])
            spec_gens[key] = SpeculativeGenerator(lm, device, simulated(InProcessLink(server), links[link_name]),
                                                  d, gamma="auto", max_gamma=args.max_gamma)
        return spec_gens[key]

    rows, texts = [], {}
    prompts = PROMPTS[: args.prompts]
    for pi, (kind, text) in enumerate(prompts):
        ids = lm.encode_prompt(text)
        base = {"prompt": pi, "kind": kind, "prompt_tokens": ids.shape[1]}
        ref_ids, pre_s, dec_s = timed_unsplit_generate(lm, ids, args.max_new_tokens)
        for cut in args.cuts:
            gen = per_token_gen(cut)
            res = gen.generate(ids, args.max_new_tokens)
            ref = res.token_ids
            texts[(pi, cut)] = ids[0].tolist() + ref
            # one run serves every link: the same delay SimulatedLink.delay_for adds, from each step's bytes
            for name, prof in links.items():
                delays = [prof.rtt_ms / 1e3 + prof.up_s(r.up_bytes) + prof.down_s(r.down_bytes) for r in gen.link.steps]
                rows.append({**base, "cut": cut, **row_of(res, "per_token", name, delays), "same_text": True})
            h = handoff_gen(cut).generate(ids, args.max_new_tokens)
            for name, prof in links.items():
                for drafter in args.drafters:
                    g = spec_gen(cut, name, drafter)
                    r = g.generate(ids, args.max_new_tokens)
                    rows.append({**base, "cut": cut, **row_of(r, f"spec_{drafter}", name, g.link.delays),
                                 "same_text": r.token_ids == ref})
                # hand-off: one upload (prefill + KV cache), then the ids stream back: no round trip per token
                first = prof.rtt_ms / 1e3 + prof.up_s(h.bytes_up) + prof.down_s(4)
                delays = [first] + [prof.down_s(4)] * (len(h.token_ids) - 1)
                rows.append({**base, "cut": cut, **row_of(h, "handoff", name, delays), "same_text": h.token_ids == ref})
                n = len(ref_ids)
                srv_first = prof.rtt_ms / 1e3 + prof.up_s(4 * ids.shape[1]) + prof.down_s(4)
                srv_net = srv_first + (n - 1) * prof.down_s(4)
                for mode, net, first in (("all_server", srv_net, srv_first), ("all_device", 0.0, 0.0)):
                    rows.append({**base, "cut": cut, "mode": mode, "link": name, "tokens": n,
                                 "ttft_s": pre_s + first, "decode_s": sum(dec_s) + net - first,
                                 "total_s": pre_s + sum(dec_s) + net,
                                 "decode_tok_s": (n - 1) / (sum(dec_s) + net - first),
                                 "up_bytes_per_token": 4 * ids.shape[1] / n if mode == "all_server" else 0.0,
                                 "down_bytes_per_token": 4.0 if mode == "all_server" else 0.0,
                                 "round_trips": 1 if mode == "all_server" else 0, "drafted": 0, "accepted": 0,
                                 "acceptance": float("nan"), "mean_accepted": float("nan"),
                                 "same_text": ref_ids == ref})
        write_csv(out / "results.csv", rows)  # partial results survive an interrupted run
        print(f"prompt {pi + 1}/{len(prompts)} ({kind}) done at {time.perf_counter() - t0:.0f} s", flush=True)

    write_csv(out / "results.csv", rows)
    summary = summarize(rows, args.cuts, list(links))
    write_csv(out / "summary.csv", summary)
    acc = acceptance_table(lm, args.cuts, adapters, texts) if adapters else []
    write_csv(out / "acceptance.csv", acc)
    print_tables(summary, acc)
    plot_tokens_per_s(summary, links, out / "tokens_per_s_vs_rtt.png")
    print(f"wrote {out}/results.csv, summary.csv, acceptance.csv, tokens_per_s_vs_rtt.png in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def rebuild(out: Path, link_names) -> int:
    from splitinfer.report.runs import load_link

    rows = load_results(out / "results.csv")
    links = {n: load_link(n) for n in link_names if any(r["link"] == n for r in rows)}
    cuts = sorted({r["cut"] for r in rows})
    summary = summarize(rows, cuts, list(links))
    write_csv(out / "summary.csv", summary)
    print_tables(summary, [])
    plot_tokens_per_s(summary, links, out / "tokens_per_s_vs_rtt.png")
    print(f"rebuilt {out}/summary.csv and the figure from {len(rows)} rows")
    return 0


@torch.no_grad()
def acceptance_table(lm, cuts, adapters, texts) -> list[dict]:
    """Teacher-forced top-1 agreement with the full model of the bare logit lens and of the fitted adapter
    at each cut, on the benchmark's own prompts + per-token-split continuations (not the fitting text)."""
    from splitinfer.split.drafters import EarlyExitDrafter, cuts_and_final_hidden
    from splitinfer.stats import wilson_interval

    out = []
    for cut in cuts:
        agree = {"logit_lens": 0, "adapter": 0}
        n = 0
        for (_, c), seq in texts.items():
            if c != cut:
                continue
            xs, y = cuts_and_final_hidden(lm, [cut], torch.tensor([seq]))
            d = EarlyExitDrafter(lm, cut, adapters[cut])
            target = d.head(y).argmax(-1)
            w, b = adapters[cut]
            agree["logit_lens"] += int((d.head(xs[cut]).argmax(-1) == target).sum())
            agree["adapter"] += int((d.head(xs[cut] @ w + b).argmax(-1) == target).sum())
            n += len(seq)
        for name, k in agree.items():
            lo, hi = wilson_interval(k, n)
            out.append({"cut": cut, "drafter": name, "tokens": n, "top1_agreement": k / n, "ci_low": lo,
                        "ci_high": hi})
    return out


if __name__ == "__main__":
    sys.exit(main())
