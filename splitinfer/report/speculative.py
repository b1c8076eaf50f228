"""Speculative split decoding against the other ways to generate (experiments/speculative_split): one row
per generation (`row_of`: timing from the run, network seconds from the link's own accounting), and the
per (cut, link, mode, prompt kind) summary with the speed-up over per-token split and its paired bootstrap
interval over prompts (`summarize`, `splitinfer.stats.bootstrap_ratio`); these read and write
`scripts/bench_speculative.py`'s CSVs and run no model.

Below them, the benchmark that script is a recipe for (these run the model): `run_benchmark` (every mode
per prompt x cut x link, with `acceptance_table`), `rebuild` (summary and figure from results.csv),
`ngram_study` and `adapter_study` (acceptance counts and adapter agreement, no timing).
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from splitinfer.report.plots import pyplot
from splitinfer.stats import bootstrap_ratio

MODES = ("per_token", "spec_ngram", "spec_early_exit", "handoff", "all_server", "all_device")
TEXT_COLUMNS = ("kind", "mode", "link")


def row_of(res, mode: str, link_name: str, delays: list[float] | None = None) -> dict:
    """Timing and traffic of one generation. Network seconds come from the link's own accounting."""
    n = len(res.token_ids)
    if delays is not None:  # the simulated network seconds of each round trip (the first is the prefill's)
        network, first = sum(delays), delays[0]
    else:
        network, first = res.network_s, res.first_network_s
    ttft = res.prefill_s + first
    decode = sum(res.decode_s) + network - first
    return {"mode": mode, "link": link_name, "tokens": n, "ttft_s": ttft, "decode_s": decode,
            "total_s": ttft + decode, "decode_tok_s": (n - 1) / decode if decode > 0 and n > 1 else float("nan"),
            "up_bytes_per_token": res.bytes_up / n, "down_bytes_per_token": res.bytes_down / n,
            "round_trips": 1 + getattr(res, "rounds", n - 1),
            "drafted": getattr(res, "drafted", 0), "accepted": getattr(res, "accepted", 0),
            "acceptance": getattr(res, "acceptance_rate", float("nan")),
            "mean_accepted": getattr(res, "mean_accepted", float("nan"))}


def load_results(path: Path) -> list[dict]:
    """results.csv back as typed rows (bools, ints, floats; kind, mode and link stay text)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k not in TEXT_COLUMNS:
                r[k] = v == "True" if v in ("True", "False") else (int(v) if v.lstrip("-").isdigit() else float(v))
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    """rows as CSV, floats to 6 significant digits (what load_results reads back)."""
    if not rows:
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def summarize(rows: list[dict], cuts, links) -> list[dict]:
    """Per cut x link x mode x prompt kind: decode tokens/s (all prompts' tokens over their time), TTFT,
    bytes/token, acceptance; speed-up over per-token split with a paired bootstrap interval over prompts."""
    out = []
    for cut in cuts:
        for link in links:
            base = {(r["prompt"]): r for r in rows if r["cut"] == cut and r["link"] == link and r["mode"] == "per_token"}
            for mode in MODES:
                for kind in ("all", "chat", "grounded"):
                    sel = [r for r in rows if r["cut"] == cut and r["link"] == link and r["mode"] == mode
                           and (kind == "all" or r["kind"] == kind)]
                    if not sel:
                        continue
                    tok = sum(r["tokens"] - 1 for r in sel)
                    dec = sum(r["decode_s"] for r in sel)
                    sp, lo, hi = bootstrap_ratio([base[r["prompt"]]["decode_s"] / max(1, base[r["prompt"]]["tokens"] - 1)
                                                  for r in sel], [r["decode_s"] / max(1, r["tokens"] - 1) for r in sel])
                    drafted = sum(r["drafted"] for r in sel)
                    out.append({"cut": cut, "link": link, "mode": mode, "kind": kind, "prompts": len(sel),
                                "decode_tok_s": tok / dec, "speedup_vs_per_token": sp, "speedup_ci_low": lo,
                                "speedup_ci_high": hi, "ttft_s": statistics.median(r["ttft_s"] for r in sel),
                                "up_bytes_per_token": sum(r["up_bytes_per_token"] * r["tokens"] for r in sel)
                                / sum(r["tokens"] for r in sel),
                                "down_bytes_per_token": sum(r["down_bytes_per_token"] * r["tokens"] for r in sel)
                                / sum(r["tokens"] for r in sel),
                                "round_trips_per_token": sum(r["round_trips"] for r in sel)
                                / sum(r["tokens"] for r in sel),
                                "acceptance": sum(r["accepted"] for r in sel) / drafted if drafted else float("nan"),
                                "drafted": drafted,
                                "mean_accepted": (statistics.mean(r["mean_accepted"] for r in sel)
                                                  if mode.startswith("spec") else float("nan")),
                                "same_text": f"{sum(bool(r['same_text']) for r in sel)}/{len(sel)}"})
    return out


def print_tables(summary: list[dict], acc: list[dict]) -> None:
    """The summary and the early-exit agreement as aligned text tables."""
    print("\ncut link      mode             kind      tok/s  speedup [95% CI]     TTFT s  up B/tok  RT/tok  accept  same")
    for r in summary:
        print(f"{r['cut']:>3} {r['link']:<9} {r['mode']:<16} {r['kind']:<8} {r['decode_tok_s']:6.1f}  "
              f"{r['speedup_vs_per_token']:5.2f} [{r['speedup_ci_low']:.2f}, {r['speedup_ci_high']:.2f}]  "
              f"{r['ttft_s']:6.3f}  {r['up_bytes_per_token']:8.0f}  {r['round_trips_per_token']:6.2f}  "
              f"{r['acceptance']:6.3f}  {r['same_text']}")
    print("\nearly-exit top-1 agreement with the full model (teacher-forced, benchmark texts)")
    for r in acc:
        print(f"cut {r['cut']:>2} {r['drafter']:<11} {r['top1_agreement']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
              f"({r['tokens']} tokens)")


def plot_tokens_per_s(summary: list[dict], links: dict, path: Path) -> None:
    """Decode tokens/s against the link's round-trip time, one panel per cut, one line per mode."""
    plt = pyplot()

    cuts = sorted({r["cut"] for r in summary})
    fig, axes = plt.subplots(1, len(cuts), figsize=(4.2 * len(cuts), 3.6), sharey=True, squeeze=False)
    rtt = {name: p.rtt_ms for name, p in links.items()}
    for ax, cut in zip(axes[0], cuts, strict=True):
        for mode in MODES:
            pts = sorted((rtt[r["link"]], r["decode_tok_s"]) for r in summary
                         if r["cut"] == cut and r["mode"] == mode and r["kind"] == "all")
            if pts:
                ax.plot([max(p[0], 0.05) for p in pts], [p[1] for p in pts], marker="o", label=mode)
        ax.set_xscale("log")
        ax.set_title(f"cut {cut}")
        ax.set_xlabel("round-trip time (ms, log)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("decode tokens/s")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# The benchmark itself (`scripts/bench_speculative.py` is its recipe): these run the model.

def _write_plain(path: Path, rows: list[dict]) -> None:
    """rows as CSV with Python's own number formatting (the studies' files)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


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
    _write_plain(out / "adapter_agreement.csv", rows)
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
    _write_plain(out / "ngram_min.csv", rows)
    for line in ngram_summary_lines(rows, [s for s, _ in sets], sizes):
        print(line)
    return rows


def ngram_summary_lines(rows: list[dict], set_names: list[str], sizes: list[int]) -> list[str]:
    """Per set, prompt kind and min n-gram: round trips per decoded token, acceptance, accepted per
    drafted round, drafted per token."""
    lines = ["set,kind,min_ngram: round trips per decoded token, acceptance, accepted per drafted round, "
             "drafted/token"]
    for set_name in set_names:
        for kind in ("chat", "grounded", "all"):
            for n in sizes:
                rs = [r for r in rows if r["set"] == set_name and r["min_ngram"] == n and kind in ("all", r["kind"])]
                dec = sum(r["tokens"] - 1 for r in rs)
                if not dec:  # no prompt of this kind (e.g. --prompts 1: no grounded one) or nothing decoded
                    continue
                dr, acc, rd = (sum(r[k] for r in rs) for k in ("drafted", "accepted", "rounds_with_draft"))
                lines.append(f"{set_name},{kind},{n}: {sum(r['rounds'] for r in rs) / dec:.3f}, "
                             f"{acc / dr if dr else float('nan'):.3f} ({acc}/{dr}), "
                             f"{acc / rd if rd else float('nan'):.2f}, {dr / dec:.2f}")
    return lines


def unsplit_rows(base: dict, mode: str, link_name: str, prof, prompt_len: int, ref_ids: list, pre_s: float,
                 dec_s: list[float], same_text: bool) -> dict:
    """One all_server or all_device row: the unsplit run's compute plus, for all_server, the token ids up
    once and each id streamed back (modelled network seconds from the link profile)."""
    n = len(ref_ids)
    srv_first = prof.rtt_ms / 1e3 + prof.up_s(4 * prompt_len) + prof.down_s(4)
    net, first = ((srv_first + (n - 1) * prof.down_s(4), srv_first) if mode == "all_server" else (0.0, 0.0))
    return {**base, "mode": mode, "link": link_name, "tokens": n,
            "ttft_s": pre_s + first, "decode_s": sum(dec_s) + net - first,
            "total_s": pre_s + sum(dec_s) + net,
            "decode_tok_s": (n - 1) / (sum(dec_s) + net - first),
            "up_bytes_per_token": 4 * prompt_len / n if mode == "all_server" else 0.0,
            "down_bytes_per_token": 4.0 if mode == "all_server" else 0.0,
            "round_trips": 1 if mode == "all_server" else 0, "drafted": 0, "accepted": 0,
            "acceptance": float("nan"), "mean_accepted": float("nan"), "same_text": same_text}


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


def rebuild(out: Path, link_names) -> None:
    """summary.csv and the figure again from OUT/results.csv (e.g. of an interrupted run)."""
    from splitinfer.report.runs import load_link

    rows = load_results(out / "results.csv")
    links = {n: load_link(n) for n in link_names if any(r["link"] == n for r in rows)}
    summary = summarize(rows, sorted({r["cut"] for r in rows}), list(links))
    write_csv(out / "summary.csv", summary)
    print_tables(summary, [])
    plot_tokens_per_s(summary, links, out / "tokens_per_s_vs_rtt.png")
    print(f"rebuilt {out}/summary.csv and the figure from {len(rows)} rows")


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
