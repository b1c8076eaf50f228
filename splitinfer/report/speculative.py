"""Speculative split decoding against the other ways to generate (experiments/speculative_split): one row
per generation (`row_of`: timing from the run, network seconds from the link's own accounting), and the
per (cut, link, mode, prompt kind) summary with the speed-up over per-token split and its paired bootstrap
interval over prompts (`summarize`, `splitinfer.stats.bootstrap_ratio`); these read and write
`scripts/bench_speculative.py`'s CSVs, draw its figure (`rebuild`: summary and figure from results.csv) and
run no model. The benchmark itself, which runs the model, is `splitinfer.metrics.speculative_bench`.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from splitinfer.report import tables
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
    if rows:
        tables.write_csv(rows, path, float_format=".6g")


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


