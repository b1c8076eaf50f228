"""Tables, CSV and figures of the codec rate-distortion benchmark (`scripts/bench_codecs.py`).

Reads and writes rows only (one dict per corpus, cut and codec, as `splitinfer.metrics.codec_bench` measures
them); runs no model. `COLUMNS` is the CSV layout; `markdown_table` and `target_table` summarise a run,
`bound_table` a `--bisect` run, `speed_table` a `--speed` run; `plot` draws wire bits per value against
Δperplexity (or KL), one panel per corpus and cut.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from splitinfer.codecs import DEFAULT_CODEC
from splitinfer.report.style import pyplot

COLUMNS = ("corpus", "cut", "codec", "bits_per_value", "bits_per_value_1tok", "ratio_vs_fp32", "ratio_vs_fp16",
           "delta_ppl_pct", "delta_ppl_ci_lo", "delta_ppl_ci_hi", "kl_nats",
           "top1_agree", "rel_l2_err", "step_us", "encdec_MBps", "encdec_MBps_median", "enc_MBps", "dec_MBps", "ppl_ref",
           "ppl", "wire_bytes", "values", "tokens", "corpus_digest", "tuned_on",
           "wire_format")


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(_csv_row(r))



def write_markdown(table: str, path: Path) -> Path:
    """`table` and a newline to `path` (its folder made if needed) -> path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")
    return path


def _csv_row(row: dict) -> dict:
    return {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}


@contextmanager
def csv_appender(path: Path) -> Iterator[Callable[[dict], None]]:
    """A function that appends one row to the CSV at `path` and flushes it (the header first when the file is
    new), so a run cut short keeps what it measured."""
    new_file = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        out = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new_file:
            out.writeheader()

        def append(row: dict) -> None:
            out.writerow(_csv_row(row))
            f.flush()

        yield append


def _corpora(rows: list[dict]) -> list[str]:
    return sorted({r.get("corpus", "pydoc") for r in rows}, key=lambda c: (c != "pydoc", c))


def markdown_table(rows: list[dict]) -> str:
    """Per corpus, one line per codec: prefill and decode bits per value (mean over cuts), Δppl % with its
    95 % interval at every cut, worst KL and top-1, the one-token step time (median over cuts)."""
    out = []
    for corpus in _corpora(rows):
        here = [r for r in rows if r.get("corpus", "pydoc") == corpus]
        cuts = sorted({r["cut"] for r in here})
        by = {(r["codec"], r["cut"]): r for r in here}
        names = sorted({r["codec"] for r in here}, key=lambda n: -statistics.mean(
            by[(n, c)]["bits_per_value"] for c in cuts if (n, c) in by))
        head = ["codec", "bits/value prefill", "bits/value decode", *[f"Δppl % cut {c}" for c in cuts],
                "max KL (nats)", "min top-1", "1-token step µs (1 core)"]
        lines = [f"**{corpus}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for n in names:
            rs = [by[(n, c)] for c in cuts if (n, c) in by]
            cells = [f"`{n}`", f"{statistics.mean(r['bits_per_value'] for r in rs):.3f}",
                     f"{statistics.mean(r['bits_per_value_1tok'] for r in rs):.3f}"]
            cells += [(f"{by[(n, c)]['delta_ppl_pct']:+.2f} [{by[(n, c)]['delta_ppl_ci_lo']:+.2f}, "
                       f"{by[(n, c)]['delta_ppl_ci_hi']:+.2f}]") if (n, c) in by else "" for c in cuts]
            cells += [f"{max(r['kl_nats'] for r in rs):.5f}", f"{min(r['top1_agree'] for r in rs):.4f}",
                      f"{statistics.median(r['step_us'] for r in rs):.0f}" if all("step_us" in r for r in rs) else ""]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def target_table(rows: list[dict], max_bits: float = 3.5, max_dppl: float = 1.0) -> str:
    """Per corpus and cut: the smallest codec whose prefill AND decode bits are <= max_bits and whose Δppl
    upper 95 % bound is <= max_dppl, else the nearest misses, next to the Petals peer."""
    lines = [f"| corpus | cut | smallest codec: prefill and decode ≤ {max_bits} bits/value, Δppl upper 95 % bound "
             f"≤ {max_dppl} % | bits/value prefill / decode | Δppl % [95 % CI] | KL (nats) | "
             "petals_blockwise8 bits / Δppl % |", "|---|---|---|---|---|---|---|"]

    def fmt(r):
        return (f"{r['bits_per_value']:.3f} / {r['bits_per_value_1tok']:.3f}",
                f"{r['delta_ppl_pct']:+.2f} [{r['delta_ppl_ci_lo']:+.2f}, {r['delta_ppl_ci_hi']:+.2f}]",
                f"{r['kl_nats']:.4f}")

    def small(r):
        return max(r["bits_per_value"], r["bits_per_value_1tok"]) <= max_bits

    for corpus in _corpora(rows):
        for cut in sorted({r["cut"] for r in rows if r.get("corpus", "pydoc") == corpus}):
            here = [r for r in rows if r["cut"] == cut and r.get("corpus", "pydoc") == corpus]
            peer = next((r for r in here if r["codec"] == "petals_blockwise8"), None)
            peer_s = f"{peer['bits_per_value']:.3f} / {peer['delta_ppl_pct']:+.2f}" if peer else ""
            ok = sorted((r for r in here if small(r) and r["delta_ppl_ci_hi"] <= max_dppl),
                        key=lambda r: max(r["bits_per_value"], r["bits_per_value_1tok"]))
            if ok:
                lines.append(f"| {corpus} | {cut} | `{ok[0]['codec']}` | " + " | ".join(fmt(ok[0])) + f" | {peer_s} |")
                continue
            best = min((r for r in here if small(r)), default=None, key=lambda r: r["delta_ppl_ci_hi"])
            good = min((r for r in here if r["delta_ppl_ci_hi"] <= max_dppl), default=None,
                       key=lambda r: max(r["bits_per_value"], r["bits_per_value_1tok"]))
            for label, r in ((f"none; best ≤ {max_bits} bits", best), (f"none; smallest ≤ {max_dppl} %", good)):
                if r is not None:
                    lines.append(f"| {corpus} | {cut} | {label}: `{r['codec']}` | " + " | ".join(fmt(r))
                                 + f" | {peer_s} |")
    return "\n".join(lines)


def dedupe(rows: list[dict]) -> list[dict]:
    """One row per (corpus digest, cut, codec, tuning corpus): a --reuse run appends the rows it took again,
    and a later row (a newer measurement appended to the same CSV) wins over an earlier one."""
    seen: dict[tuple, dict] = {}
    for r in rows:
        seen[r.get("corpus_digest", r.get("corpus")), r["cut"], r["codec"], r.get("tuned_on", "")] = r
    return list(seen.values())


def bound_table(rows: list[dict], max_dppl: float = 1.0, max_bits: float = 3.5) -> str:
    """Per corpus, one line per cut: the codec with the fewest max(prefill, decode) bits whose Δppl upper 95 %
    bound is <= max_dppl (the --bisect result), with its interval, and the count of cuts at <= max_bits."""
    lines = [f"| corpus | cut | best codec within Δppl upper bound ≤ {max_dppl} % | max(prefill, decode) bits | "
             "prefill / decode bits | Δppl % [95 % CI] | KL (nats) | steps tried (bits: pass ✓ / miss ✗) |",
             "|---|---|---|---|---|---|---|---|"]
    rows = [r for r in rows if not r.get("tuned_on")]  # held-out checks: heldout_table
    for corpus in _corpora(rows):
        here = [r for r in rows if r.get("corpus", "pydoc") == corpus]
        met = 0
        cuts = sorted({r["cut"] for r in here})
        for cut in cuts:
            rs = sorted((r for r in here if r["cut"] == cut), key=_xval)
            ok = [r for r in rs if r["delta_ppl_ci_hi"] <= max_dppl]
            tried = ", ".join(f"{r['codec'].split('step=')[-1]} ({_xval(r):.2f} "
                              f"{'✓' if r['delta_ppl_ci_hi'] <= max_dppl else '✗'})" for r in rs)
            if not ok:
                lines.append(f"| {corpus} | {cut} | none | | | | | {tried} |")
                continue
            b = ok[0]
            met += _xval(b) <= max_bits
            lines.append(f"| {corpus} | {cut} | `{b['codec']}` | **{_xval(b):.2f}** | {b['bits_per_value']:.2f} / "
                         f"{b['bits_per_value_1tok']:.2f} | {b['delta_ppl_pct']:+.2f} [{b['delta_ppl_ci_lo']:+.2f}, "
                         f"{b['delta_ppl_ci_hi']:+.2f}] | {b['kl_nats']:.4f} | {tried} |")
        lines.append(f"| {corpus} | all | ≤ {max_bits} bits within the bound at {met} of {len(cuts)} cuts | | | | | |")
    return "\n".join(lines)


def heldout_table(rows: list[dict], max_dppl: float = 1.0, max_bits: float = 3.5,
                  tuning: list[dict] | None = None) -> str:
    """The held-out check of a step table (`--bisect FAMILY --tune-on CORPUS`): per held-out corpus and cut, the
    step chosen on the tuning corpus (with its Δppl upper bound there), the bits and Δppl it gives on text it
    was not tuned on, and whether it keeps the bound; a count per corpus. `tuning`: the tuning run's rows when
    they are not in `rows` (`--steps-from`). "" when there are no check rows."""
    checks = [r for r in rows if r.get("tuned_on")]
    if not checks:
        return ""
    tuned = {(r["cut"], _step_of(r["codec"])): r for r in (tuning if tuning is not None else rows)  # by step:
             if r.get("corpus") == checks[0]["tuned_on"] and not r.get("tuned_on")}  # --steps-family's too
    lines = [f"| corpus | cut | step chosen on {checks[0]['tuned_on']} (its Δppl upper bound there) | max(prefill, "
             "decode) bits | prefill / decode bits | Δppl % [95 % CI] | KL (nats) | within the bound |",
             "|---|---|---|---|---|---|---|---|"]
    for corpus in _corpora(checks):
        here = sorted((r for r in checks if r["corpus"] == corpus), key=lambda r: r["cut"])
        ok = [r["delta_ppl_ci_hi"] <= max_dppl for r in here]
        small = [o and _xval(r) <= max_bits for o, r in zip(ok, here, strict=True)]
        for r, o in zip(here, ok, strict=True):
            t = tuned.get((r["cut"], _step_of(r["codec"])))
            there = f" ({t['delta_ppl_ci_hi']:+.2f})" if t else ""
            lines.append(f"| {corpus} | {r['cut']} | `{r['codec']}`{there} | **{_xval(r):.2f}** | "
                         f"{r['bits_per_value']:.2f} / {r['bits_per_value_1tok']:.2f} | {r['delta_ppl_pct']:+.2f} "
                         f"[{r['delta_ppl_ci_lo']:+.2f}, {r['delta_ppl_ci_hi']:+.2f}] | {r['kl_nats']:.4f} | "
                         f"{'✓' if o else '✗'} |")
        lines.append(f"| {corpus} | all | within the bound at {sum(ok)} of {len(here)} cuts; within it at "
                     f"≤ {max_bits} bits at {sum(small)} | | | | | |")
    return "\n".join(lines)


def _step_of(name: str) -> str | None:
    return name.split("step=")[1].split(":")[0] if "step=" in name else None


def bisect_tables(rows: list[dict], max_dppl: float = 1.0, tuning: list[dict] | None = None) -> str:
    """The tables of a --bisect CSV: `bound_table` of the bisected rows (if any), then `heldout_table` if it has
    checks (`tuning`: the rows of the run its steps came from, when that is another CSV)."""
    rows = dedupe(rows)
    bisected = [r for r in rows if not r.get("tuned_on")]
    tables = (bound_table(bisected, max_dppl) if bisected else "", heldout_table(rows, max_dppl, tuning=tuning))
    return "\n\n".join(t for t in tables if t)


_TEXT_COLUMNS = ("codec", "corpus", "corpus_digest", "tuned_on", "wire_format")


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return [{k: (v if k in _TEXT_COLUMNS else float(v) if "." in v or "e" in v or "n" in v else int(v))
                 for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def _xval(r: dict) -> float:
    """The worse of the prefill and the decode figure: what a generation must budget for."""
    return max(r["bits_per_value"], r.get("bits_per_value_1tok", 0))


def plot(rows: list[dict], path: Path, metric: str = "delta_ppl_pct") -> None:
    """One panel per cut: wire bits per value against Δppl (symlog axis, negatives shown) or KL (log)."""
    plt = pyplot()
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    panels = [(c, k) for c in _corpora(rows) for k in sorted({r["cut"] for r in rows
                                                              if r.get("corpus", "pydoc") == c})]
    cuts = panels
    names = sorted({r["codec"] for r in rows})
    ncols = min(5, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.0 * nrows), squeeze=False)
    cmap = plt.get_cmap("tab20")
    markers = "osD^v<>pP*hX"
    for ax, (corpus, cut) in zip(axes.flat, panels, strict=False):
        here = {r["codec"]: r for r in rows if r["cut"] == cut and r.get("corpus", "pydoc") == corpus}
        for suffix, ls in (("", "-"), ("g", ":"), ("g_s", "--")):  # each ecNN family is one curve
            family = sorted((n for n in here if re.fullmatch(rf"ec\d+{suffix}", n)),
                            key=lambda n: _xval(here[n]))
            if len(family) > 1:
                ax.plot([_xval(here[n]) for n in family], [here[n][metric] for n in family],
                        color="grey", lw=0.8, ls=ls, zorder=1)
        for i, n in enumerate(names):
            if n not in here:
                continue
            r = here[n]
            x = _xval(r)
            if metric == "delta_ppl_pct" and "delta_ppl_ci_hi" in r:  # the 95 % interval
                ax.vlines(x, r["delta_ppl_ci_lo"], r["delta_ppl_ci_hi"], color=cmap(i % 20), lw=1.0, zorder=2)
            ax.scatter(x, r[metric], color=cmap(i % 20), marker=markers[i % len(markers)], s=46,
                       label=n, edgecolors="black" if n in ("petals_blockwise8", DEFAULT_CODEC) else "none",
                       zorder=3)
        ax.set_xscale("log", base=2)
        ax.set_xlim(2.0, 40.0)
        ax.set_xticks([2, 3, 4, 6, 8, 16, 32])
        ax.get_xaxis().set_major_formatter(FormatStrFormatter("%g"))
        ax.get_xaxis().set_minor_formatter(NullFormatter())
        ax.axvline(3.5, color="green", lw=0.8, ls="--")
        if metric == "delta_ppl_pct":
            ax.set_yscale("symlog", linthresh=0.1)
            ax.set_ylim(-1.0, 500.0)
            ax.axhline(1.0, color="green", lw=0.8, ls="--")
            ax.axhline(0.0, color="black", lw=0.5)
            ax.fill_between([2.0, 3.5], -1.0, 1.0, color="green", alpha=0.08, zorder=0)
            ax.set_ylabel("Δ perplexity vs unsplit model (%)")
        else:
            ax.set_yscale("log")
            ax.set_ylabel("KL(unsplit ‖ split) of next token (nats)")
        ax.set_title(f"{corpus}, cut {cut}", fontsize=9)
        ax.set_xlabel("bits per value, max of prefill and decode")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(cuts):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(7, len(labels)), fontsize=8, frameon=False)
    what = ("Δ perplexity (green: target ≤ 3.5 bits/value at ≤ 1 %)" if metric == "delta_ppl_pct"
            else "KL divergence of the next-token distribution")
    fig.suptitle(f"Activation codecs on SmolLM2-135M-Instruct: wire size vs {what}; "
                 "outlined: default codec and the Petals peer", fontsize=10)
    fig.tight_layout(rect=(0, 0.03 + 0.025 * math.ceil(len(labels) / 7), 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)



def speed_table(rows: list[dict]) -> str:
    """One line per codec: prefill encode / decode MB/s (best of the repeats, median over cuts) and the
    one-token step µs (median over the steps, then over cuts)."""
    lines = ["| codec | encode MB/s | decode MB/s | encode+decode MB/s | 1-token step µs (encode+decode) | cuts |",
             "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["codec"] for r in rows):
        rs = [r for r in rows if r["codec"] == name]
        med = {k: statistics.median(r[k] for r in rs) for k in ("enc_MBps", "dec_MBps", "encdec_MBps", "step_us")}
        lines.append(f"| `{name}` | {med['enc_MBps']:.0f} | {med['dec_MBps']:.0f} | {med['encdec_MBps']:.0f} | "
                     f"{med['step_us']:.0f} | {','.join(str(r['cut']) for r in rs)} |")
    return "\n".join(lines)

