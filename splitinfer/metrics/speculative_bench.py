"""The speculative-split benchmark that scripts/bench_speculative.py is a recipe for; these run the model.

- `run_benchmark`: every mode (per-token split, speculative with each drafter, hand-off, unsplit) per prompt x
  cut x link; writes OUT/results.csv after each prompt, summary.csv, acceptance.csv (`acceptance_table`) and
  the figure, and prints the tables.
- `ngram_study`, `adapter_study`: acceptance counts of the n-gram drafter and the early-exit adapters'
  agreement (no timing).

The rows, summaries, CSVs, tables and figure they write are `splitinfer.report.speculative`'s (which runs no
model), as `metrics.codec_bench` is to `report.codec_rd`.
"""

from __future__ import annotations

from pathlib import Path

from splitinfer.report.speculative import (
    ngram_summary_lines,
    plot_tokens_per_s,
    print_tables,
    row_of,
    summarize,
    unsplit_rows,
    write_csv,
)
from splitinfer.report.tables import (
    write_csv as write_csv_plain,  # the studies' files: Python's own number format
)


def adapter_study(lm, cuts: list[int], heldout_tokens: int, out: Path) -> list[dict]:
    """Top-1 agreement of each early-exit head with the full model, teacher-forced on held-out text (the
    installed packages' license files: not the pydoc text the adapters are fitted on), Wilson 95 %
    intervals, and the MLP-minus-ridge difference with a paired bootstrap interval over 128-token windows.
    Writes OUT/adapter_agreement.csv."""
    import time

    import torch

    from splitinfer.data import load_texts, tokenize
    from splitinfer.models import adapters
    from splitinfer.split.drafters import cuts_and_final_hidden, fit_adapters, load_or_train_mlp_adapters
    from splitinfer.stats import bootstrap_interval, wilson_interval

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ridge = fit_adapters(lm, cuts)
    mlp = load_or_train_mlp_adapters(lm, cuts)
    print(f"adapters ready in {time.perf_counter() - t0:.0f} s", flush=True)
    stream: list[int] = []
    for text in load_texts("licenses"):
        stream.extend(tokenize(lm, text))
        if len(stream) >= heldout_tokens:
            break
    window = 128
    n = len(stream) // window
    ids = torch.tensor(stream[: n * window]).reshape(n, window)
    xs, y = cuts_and_final_hidden(lm, cuts, ids)
    rows = []
    head = adapters.decoder_parts(lm.model).head

    @torch.no_grad()
    def top1(z):  # z: normed hidden states (N, H) in the final norm's output space
        return torch.cat([adapters.finish_logits(lm.config, head(z[i:i + 512])).argmax(-1)
                          for i in range(0, len(z), 512)])

    target = top1(y)
    for cut in cuts:
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
    write_csv_plain(rows, out / "adapter_agreement.csv")
    return rows


def ngram_study(lm, cut: int, sizes: list[int], gamma: int, max_new_tokens: int, sets: list[tuple],
                out: Path) -> list[dict]:
    """Acceptance counts of prompt lookup for each min n-gram size: greedy generation through the split
    path with the in-process link (no network, no timing) at a fixed gamma, so the counts do not depend on
    this machine's speed; every setting must give the same tokens (greedy text is the drafter's no matter).
    `sets`: (name, [(kind, text), ...]). Writes OUT/ngram_min.csv and prints the per-set summary."""
    from splitinfer.split import InProcessLink, split_pair
    from splitinfer.split.drafters import NGramDrafter
    from splitinfer.split.speculative import SpeculativeGenerator

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for set_name, prompts in sets:
        for pi, (kind, text) in enumerate(prompts):
            tokens = None
            for n in sizes:
                device, server = split_pair(lm, [cut])
                gen = SpeculativeGenerator(lm, device, InProcessLink(server),
                                           NGramDrafter(max_ngram=max(3, n), min_ngram=n), gamma=gamma)
                res = gen.generate(text, max_new_tokens, stop_at_eos=False)
                if tokens is None:
                    tokens = res.token_ids
                drafting = sum(1 for g in res.gammas if g)
                rows.append({"set": set_name, "prompt": pi, "kind": kind, "min_ngram": n, "max_ngram": max(3, n),
                             "gamma": gamma, "tokens": len(res.token_ids), "rounds": res.rounds,
                             "rounds_with_draft": drafting, "drafted": res.drafted, "accepted": res.accepted,
                             "same_tokens": int(res.token_ids == tokens)})
                print(rows[-1], flush=True)
    write_csv_plain(rows, out / "ngram_min.csv")
    for line in ngram_summary_lines(rows, [s for s, _ in sets], sizes):
        print(line)
    return rows


def run_benchmark(lm, prompts: list[tuple], cuts: list[int], links: dict, drafters: list[str],
                  max_new_tokens: int, max_gamma: int, out: Path) -> None:
    """Every mode for every prompt x cut x link (`links`: name -> LinkProfile); writes OUT/results.csv
    after each prompt (partial results survive an interrupted run), summary.csv, acceptance.csv and the
    figure, and prints the tables."""
    import time

    from splitinfer.split import InProcessLink, MeteredLink, SimulatedLink, SplitGenerator, split_pair
    from splitinfer.split.drafters import EarlyExitDrafter, NGramDrafter, fit_adapters
    from splitinfer.split.handoff import handoff_generator
    from splitinfer.split.metered import timed_unsplit_generate
    from splitinfer.split.speculative import SpeculativeGenerator

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    adapters = fit_adapters(lm, cuts) if "early_exit" in drafters else {}
    print(f"early-exit adapters for cuts {cuts}: {time.perf_counter() - t0:.1f} s (cached after the first run)",
          flush=True)
    handoffs, spec_gens = {}, {}  # spec: (cut, link, drafter) -> generator, kept so adaptive gamma learns

    def spec_gen(cut, link_name, drafter):
        key = (cut, link_name, drafter)
        if key not in spec_gens:
            device, server = split_pair(lm, [cut])
            d = NGramDrafter() if drafter == "ngram" else EarlyExitDrafter(lm, cut, adapters[cut])
            link = SimulatedLink.from_profile(InProcessLink(server), links[link_name], sleep=False)
            spec_gens[key] = SpeculativeGenerator(lm, device, link, d, gamma="auto", max_gamma=max_gamma)
        return spec_gens[key]

    rows, texts = [], {}
    for pi, (kind, text) in enumerate(prompts):
        ids = lm.encode_prompt(text)
        base = {"prompt": pi, "kind": kind, "prompt_tokens": ids.shape[1]}
        ref_ids, pre_s, dec_s = timed_unsplit_generate(lm, ids, max_new_tokens)
        for cut in cuts:
            device, server = split_pair(lm, [cut])
            gen = SplitGenerator(lm, device, MeteredLink(InProcessLink(server)))
            res = gen.generate(ids, max_new_tokens)
            ref = res.token_ids
            texts[(pi, cut)] = ids[0].tolist() + ref
            # one run serves every link: the same delay SimulatedLink.delay_for adds, from each step's bytes
            for name, prof in links.items():
                delays = [prof.rtt_ms / 1e3 + prof.up_s(r.up_bytes) + prof.down_s(r.down_bytes) for r in gen.link.steps]
                rows.append({**base, "cut": cut, **row_of(res, "per_token", name, delays), "same_text": True})
            if cut not in handoffs:
                handoffs[cut] = handoff_generator(lm, cut)
            h = handoffs[cut].generate(ids, max_new_tokens)
            for name, prof in links.items():
                for drafter in drafters:
                    g = spec_gen(cut, name, drafter)
                    r = g.generate(ids, max_new_tokens)
                    rows.append({**base, "cut": cut, **row_of(r, f"spec_{drafter}", name, g.link.delays),
                                 "same_text": r.token_ids == ref})
                # hand-off: one upload (prefill + KV cache), then the ids stream back: no round trip per token
                first = prof.rtt_ms / 1e3 + prof.up_s(h.bytes_up) + prof.down_s(4)
                delays = [first] + [prof.down_s(4)] * (len(h.token_ids) - 1)
                rows.append({**base, "cut": cut, **row_of(h, "handoff", name, delays), "same_text": h.token_ids == ref})
                for mode in ("all_server", "all_device"):
                    rows.append(unsplit_rows({**base, "cut": cut}, mode, name, prof, ids.shape[1], ref_ids, pre_s,
                                             dec_s, ref_ids == ref))
        write_csv(out / "results.csv", rows)  # partial results survive an interrupted run
        print(f"prompt {pi + 1}/{len(prompts)} ({kind}) done at {time.perf_counter() - t0:.0f} s", flush=True)

    summary = summarize(rows, cuts, list(links))
    write_csv(out / "summary.csv", summary)
    acc = acceptance_table(lm, cuts, adapters, texts) if adapters else []
    write_csv(out / "acceptance.csv", acc)
    print_tables(summary, acc)
    plot_tokens_per_s(summary, links, out / "tokens_per_s_vs_rtt.png")
    print(f"wrote {out}/results.csv, summary.csv, acceptance.csv, tokens_per_s_vs_rtt.png in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)


def acceptance_table(lm, cuts, adapters, texts) -> list[dict]:
    """Teacher-forced top-1 agreement with the full model of the bare logit lens and of the fitted adapter
    at each cut, on the benchmark's own prompts + per-token-split continuations (not the fitting text)."""
    import torch

    from splitinfer.split.drafters import EarlyExitDrafter, cuts_and_final_hidden
    from splitinfer.stats import wilson_interval

    out = []
    with torch.no_grad():
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
