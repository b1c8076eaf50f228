#!/usr/bin/env python
"""Rate-distortion benchmark of the activation codecs on the real model (SmolLM2-135M-Instruct).

A thin recipe over the library: for every cut k and codec, `splitinfer.experiment.evaluate_split` sends the
hidden state at the cut through the split path (one message per window, as a prefill sends it, and one
message per generated token of two prompts, as decode steps send it) and compares the server's output
with the unsplit model on the same windows a sweep job with `data=pydoc data.num_windows=N
data.window_tokens=T data.seed=S` scores, so the figures here and a sweep's agree exactly: bits per value
(true wire bytes incl. header; prefill and one-token messages), Δperplexity % with its paired-bootstrap
95 % interval, KL(ref || codec) of the next-token distribution, top-1 agreement. The encode+decode
throughput (MB/s of fp32 input, one core) is this script's own timing.

Every codec runs on two corpora: `pydoc` (the default, what the presets were tuned on) and `licenses`
(the installed packages' LICENSE texts, held out). `step_us` is the median encode+decode time of a
one-token step on one core (for session codecs `<preset>_s`: a step of a live session, after a
32-token prompt, coded with the session's adaptive state).

    python scripts/bench_codecs.py                       # full run (~20 min on 2 shared cores)
    python scripts/bench_codecs.py --quick               # smoke run (~1 min)
    python scripts/bench_codecs.py --cuts 15 --codecs int8_token,petals_blockwise8 --n-windows 2
    python scripts/bench_codecs.py --corpora pydoc,licenses,readmes --cuts 1,2,...,29   # the issue-28 run
    python scripts/bench_codecs.py --speed --codecs ec37g_s,ec37g_s:coder=rans_py,ec37g,ec37g:coder=rans_py,int8
    python scripts/bench_codecs.py --bisect ec25g_s --corpora readmes,licenses --cuts 1,2,...,29 --n-windows 16

`--bisect FAMILY` finds, per corpus and cut, the coarsest step of the family (`ec25g_s:step=0.29`, ...) whose
Δppl upper 95 % bound is <= --max-dppl: the unsplit model runs once per window (its hidden states at every
cut are kept), each tried step is one `evaluate` on them, the step is galloped / halved on a 0.02 grid from
the previous cut's answer, and each measured row is appended to the CSV at once (`--reuse CSV` takes rows
already measured on the same corpus digest instead of measuring them again). The table then lists, per cut,
the best passing step with its interval and every step tried. The chosen row is one of the rows tried, so
its interval is slightly optimistic (a few tries per cut, the best one kept).

A codec is a preset name, optionally with params: `NAME:key=value:...` (values as JSON, e.g.
`ec37g:coder=rans_py` is ec37g through the old plain-numpy rANS). `--speed` skips quality: per cut, the
encode/decode MB/s of one 256-token window and the one-token step time of every codec, measured in turns
in one process (so the compiled and the old coder are compared under the same load), as a table.

Writes a CSV, a markdown table and a rate-distortion plot (bits per value vs Δperplexity, one panel
per cut). Figures, not timed tests: throughput depends on the machine and its load.
"""

from __future__ import annotations

import argparse
import csv
import functools
import logging
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from splitinfer.codecs import DEFAULT_CODEC, build_codec  # noqa: E402

log = logging.getLogger("bench_codecs")

DEFAULT_CUTS = (1, 8, 15, 22, 29)
DEFAULT_CODECS = (
    "petals_blockwise8", "int8", "int8_s", "ec37g", "ec25g_s", "ec30g_s", "ec34g_s", "ec37g_s",
)
DEFAULT_CORPORA = ("pydoc", "licenses")
QUICK_CODECS = ("fp16", "petals_blockwise8", "int8", "int4_b64_outlier_rot_log8_tc", "ec40")
COLUMNS = ("corpus", "cut", "codec", "bits_per_value", "bits_per_value_1tok", "ratio_vs_fp32", "ratio_vs_fp16",
           "delta_ppl_pct", "delta_ppl_ci_lo", "delta_ppl_ci_hi", "kl_nats",
           "top1_agree", "rel_l2_err", "step_us", "encdec_MBps", "encdec_MBps_median", "enc_MBps", "dec_MBps", "ppl_ref",
           "ppl", "wire_bytes", "values", "tokens", "corpus_digest")


# ----------------------------------------------------------------------------- the library's evaluation
def codec_spec_arg(name: str) -> str | dict:
    """`NAME` or `NAME:key=value:...` (values parsed as JSON, else kept as strings) -> a build_codec spec."""
    import json

    if ":" not in name:
        return name
    base, *pairs = name.split(":")
    spec: dict = {"name": base}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--codecs entry {name!r}: {pair!r} is not key=value (e.g. ec37g:coder=rans_py)")
        try:
            spec[key] = json.loads(value)
        except json.JSONDecodeError:
            spec[key] = value
    return spec


def corpus_spec(args: argparse.Namespace, source: str = "pydoc"):
    """The windows a sweep job with `data=<source> data.num_windows=N data.window_tokens=T data.seed=S`
    scores, plus 2 prompts whose generated tokens go as one-token (decode) messages."""
    from splitinfer.data import CorpusSpec

    return CorpusSpec(source=source, num_windows=args.n_windows, window_tokens=args.seq_len, num_prompts=2,
                      prompt_tokens=32, gen_tokens=17, seed=args.seed)


def evaluate(lm, cut: int, codec, corpus, ref, seed: int) -> dict[str, float]:
    """One (cut, codec) through the split path, exactly as a sweep job measures it
    (`splitinfer.experiment.evaluate_split`), renamed to this benchmark's CSV columns."""
    from splitinfer.experiment import MetricOptions, evaluate_split

    m = evaluate_split(lm, cut, codec, None, corpus, ref, MetricOptions(generation=False, timing=False,
                                                                         latency=False), seed=seed)
    h = lm.hidden_size
    values = corpus.windows.numel() * h
    bits = m["up_bytes_per_token_prefill"] * 8 / h
    return {"bits_per_value": bits, "bits_per_value_1tok": m["up_bytes_per_token_decode"] * 8 / h,
            "ratio_vs_fp32": 32 / bits, "ratio_vs_fp16": 16 / bits, "wire_bytes": round(bits * values / 8),
            "values": values, "tokens": corpus.windows.numel(), "corpus_digest": corpus.digest,
            "delta_ppl_pct": m["delta_ppl_pct"],
            "delta_ppl_ci_lo": m["delta_ppl_pct_ci_low"], "delta_ppl_ci_hi": m["delta_ppl_pct_ci_high"],
            "kl_nats": m["kl_mean"], "top1_agree": m["top1_agreement"], "ppl_ref": m["ppl_unsplit"],
            "ppl": m["ppl_split"]}


def throughput(codec, h: torch.Tensor, repeats: int) -> dict[str, float]:
    """Encode / decode / round-trip MB/s of fp32 input (1e6 bytes): best of `repeats` runs (the figure
    least disturbed by other processes, as timeit reports) and the median."""
    mb = h.numel() * 4 / 1e6
    codec.decode(codec.encode(h))  # warm caches
    enc_t, dec_t, both_t = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        enc = codec.encode(h)
        t1 = time.perf_counter()
        codec.decode(enc)
        t2 = time.perf_counter()
        enc_t.append(t1 - t0)
        dec_t.append(t2 - t1)
        both_t.append(t2 - t0)
    return {"enc_MBps": mb / min(enc_t), "dec_MBps": mb / min(dec_t), "encdec_MBps": mb / min(both_t),
            "encdec_MBps_median": mb / statistics.median(both_t)}


def step_time(codec, prompt: torch.Tensor, steps: torch.Tensor) -> float:
    """Median seconds of encode + decode of one one-token step on this thread. A session codec runs a
    real session (a fresh encoder and decoder instance, the prompt first), so the step pays for its
    adaptive state as in a generation; other codecs code each token on its own."""
    session = hasattr(codec, "encode_step")
    enc, dec = (build_codec(codec.spec()), build_codec(codec.spec())) if session else (codec, codec)
    times = []
    for rnd in range(2):  # round 0 warms up
        if session:
            enc.reset()
            dec.reset()
            dec.decode(enc.encode_step(prompt))
        for i in range(steps.shape[1]):
            x = steps[:, i:i + 1]
            t0 = time.perf_counter()
            m = enc.encode_step(x) if session else enc.encode(x)
            dec.decode(m)
            if rnd:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> list[dict]:
    from splitinfer.experiment import compute_reference
    from splitinfer.models import load_model

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    lm = load_model(args.model)
    bad = [k for k in args.cuts if not 1 <= k < lm.num_layers]
    if bad:
        raise SystemExit(f"--cuts {bad} out of range: cuts must be in 1..{lm.num_layers - 1}")
    codecs = {name: build_codec(codec_spec_arg(name)) for name in args.codecs}
    rows = []
    for source in args.corpora:
        if source == "pydoc_heldout":  # the pydoc topics the learned codecs are not fitted on
            from splitinfer.codecs.learned import heldout_corpus

            corpus = heldout_corpus(lm, args.n_windows, args.seq_len, args.seed)
        else:
            corpus = corpus_spec(args, source).build(lm)
        log.info("%s: %d windows x %d tokens, cuts %s, %d codecs (%.0f s so far)", source,
                 *corpus.windows.shape, args.cuts, len(args.codecs), time.perf_counter() - t_start)
        ref = compute_reference(lm, corpus)

        k0 = args.cuts[0]  # the split path with no codec must reproduce the unsplit model
        sanity = evaluate(lm, k0, None, corpus, ref, args.seed)
        log.info("sanity: split at cut %d without codec vs unsplit: KL = %.2e", k0, sanity["kl_nats"])
        if sanity["kl_nats"] > 1e-6:
            raise SystemExit(f"split path does not reproduce the unsplit model (KL = {sanity['kl_nats']:.2e})")

        for cut in args.cuts:
            h = ref.window_hidden[cut]
            gen = ref.gen_hidden[cut][:1]  # prompt + generated tokens of prompt 0: the step timing
            for name in codecs:
                codec = build_codec(codec_spec_arg(name))  # fresh: a session codec's state must not leak across runs
                t0 = time.perf_counter()
                learned = hasattr(codec, "bind")
                if learned:  # learned bottleneck: fitted (or loaded from the cache) for this model and cut
                    codec.bind(lm, cut)
                row = {"corpus": source, "cut": cut, "codec": name,
                       **evaluate(lm, cut, codec, corpus, ref, args.seed)}
                h2 = torch.cat([codec.decode(codec.encode(h[w:w + 1])).float() for w in range(h.shape[0])])
                row["rel_l2_err"] = float((h2 - h).norm() / h.norm())
                if not (learned or args.no_timing):
                    torch.set_num_threads(1)  # throughput is quoted for one core
                    row.update(throughput(codec, h[:1], args.repeats))
                    row["step_us"] = 1e6 * step_time(codec, gen[:, :32], gen[:, 32:])
                    torch.set_num_threads(args.threads)
                else:
                    row["step_us"] = float("nan")
                rows.append(row)
                log.info("%s cut %2d %-16s %6.3f / %6.3f bits  Δppl %+7.3f%% [%+.3f, %+.3f]  KL %.5f  step %5.0f us "
                         "(%.1f s)", source, cut, name, row["bits_per_value"], row["bits_per_value_1tok"],
                         row["delta_ppl_pct"], row["delta_ppl_ci_lo"], row["delta_ppl_ci_hi"], row["kl_nats"],
                         row["step_us"], time.perf_counter() - t0)
    log.info("done in %.0f s", time.perf_counter() - t_start)
    return rows


def run_speed(args: argparse.Namespace) -> list[dict]:
    """Timing only, on one core: per cut, one window of pydoc hidden states (prefill MB/s) and the one-token
    steps of a generated continuation (step µs). The codecs take turns per cut and repeat (`--repeats`
    rounds of `throughput`), so every codec sees the same load."""
    from splitinfer.experiment import compute_reference
    from splitinfer.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    corpus = corpus_spec(args, "pydoc").build(lm)
    ref = compute_reference(lm, corpus)
    torch.set_num_threads(1)
    rows = []
    for cut in args.cuts:
        h, gen = ref.window_hidden[cut][:1], ref.gen_hidden[cut][:1]
        for name in args.codecs:
            codec = build_codec(codec_spec_arg(name))
            row = {"cut": cut, "codec": name, **throughput(codec, h, args.repeats),
                   "step_us": 1e6 * step_time(codec, gen[:, :32], gen[:, 32:])}
            rows.append(row)
            log.info("cut %2d %-28s enc %7.1f  dec %7.1f MB/s  step %5.0f us", cut, name, row["enc_MBps"],
                     row["dec_MBps"], row["step_us"])
    return rows


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


# ----------------------------------------------------------------------------- the step per cut, bisected
def step_grid(lo: float, hi: float, res: float) -> list[float]:
    """The steps a bisection may try: lo, lo + res, ..., hi (rounded to 0.001 so names stay short)."""
    n = int(round((hi - lo) / res))
    return [round(lo + i * res, 3) for i in range(n + 1)]


def bisect_step(passes, grid: list[float], start: int, max_evals: int) -> tuple[int | None, int | None]:
    """The largest grid index whose step `passes(step)` (Δppl upper bound within the target), assuming
    finer steps pass: gallop from `start` by 3 until a pass and a fail bracket the answer, then halve the
    bracket; at most `max_evals` calls. -> (largest passing index seen, smallest failing index seen).
    Each call is a real measurement: the answer is a measured row, not an interpolation."""
    ok, bad, i, evals = None, None, min(max(start, 0), len(grid) - 1), 0
    while evals < max_evals:
        evals += 1
        if passes(grid[i]):
            ok = i
        else:
            bad = i
        if ok is not None and bad is not None:
            if bad - ok <= 1:
                break
            i = (ok + bad) // 2
        elif ok is not None:
            if ok == len(grid) - 1:
                break
            i = min(ok + 3, len(grid) - 1)
        else:
            if bad == 0:
                break
            i = max(bad - 3, 0)
    return ok, bad


def family_spec(family: str, step: float) -> str:
    """`ec25g_s` + step 0.27 -> `ec25g_s:step=0.27` (the preset with its step replaced; see codec_spec_arg)."""
    return f"{family}:step={step:g}"


def codec_key(name: str) -> tuple:
    """What decides a codec's reconstruction and bits: its class and params (`ec30g_s:step=0.25` and
    `ec25g_s` are the same codec)."""
    codec = build_codec(codec_spec_arg(name))
    params = getattr(codec, "params", None) or getattr(getattr(codec, "inner", None), "params", None)
    return type(codec).__name__, params if params is not None else name


def reusable_rows(path: Path | None) -> dict[tuple, dict]:
    """Rows of an earlier run's CSV by (corpus digest, cut, codec_key): the evaluation is deterministic (same
    windows, seed and code path), so a point measured before need not be measured again. The digest is the
    windows' (data.Corpus.digest): `licenses` and `readmes` are built from the installed packages, so another
    environment gives other windows, and a row without a digest is never reused."""
    if path is None:
        return {}
    out = {}
    for r in read_csv(path):
        if "delta_ppl_ci_hi" in r and r.get("corpus_digest"):
            out[(r["corpus_digest"], r["cut"], codec_key(r["codec"]))] = r
    return out


def _bisect_point(lm, source, corpus, ref, cut, family, args, out, f, rows, step: float) -> bool:
    """One measured (cut, family at `step`) row, appended to `rows` and the CSV -> whether it meets the target.
    A row of --reuse with the same codec, corpus, cut and token count is taken instead of measuring again."""
    name = family_spec(family, step)
    t0 = time.perf_counter()
    old = args.reused.get((corpus.digest, cut, codec_key(name)))
    row = ({**old, "codec": name} if old else
           {"corpus": source, "cut": cut, "codec": name, "step_us": float("nan"),
            **evaluate(lm, cut, build_codec(codec_spec_arg(name)), corpus, ref, args.seed)})
    rows.append(row)
    out.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    f.flush()
    log.info("%s cut %2d %-22s %6.3f / %6.3f bits  Δppl %+7.3f%% [%+.3f, %+.3f]  (%s)", source, cut, name,
             row["bits_per_value"], row["bits_per_value_1tok"], row["delta_ppl_pct"], row["delta_ppl_ci_lo"],
             row["delta_ppl_ci_hi"], "reused" if old else f"{time.perf_counter() - t0:.1f} s")
    return row["delta_ppl_ci_hi"] <= args.max_dppl


def run_bisect(args: argparse.Namespace) -> list[dict]:
    """Per corpus, cut and codec family: bisect the step to the coarsest one whose Δppl upper 95 % bound is
    <= --max-dppl. The unsplit model runs once per corpus window (compute_reference keeps the hidden state
    at every cut), every evaluation is `evaluate` (the split path on those cached states), and each measured
    row is appended to the CSV as it comes, so a run cut short keeps what it measured."""
    from splitinfer.experiment import compute_reference
    from splitinfer.models import load_model

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    lm = load_model(args.model)
    grid = step_grid(*args.step_range, args.step_res)
    args.reused = reusable_rows(args.reuse)
    rows: list[dict] = []
    new_file = not args.csv.exists()
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("a", newline="") as f:
        out = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new_file:
            out.writeheader()
        for source in args.corpora:
            corpus = corpus_spec(args, source).build(lm)
            ref = compute_reference(lm, corpus)
            log.info("%s: %d windows x %d tokens, reference done (%.0f s so far)", source, *corpus.windows.shape,
                     time.perf_counter() - t_start)
            for family in args.bisect:
                start = grid.index(min(grid, key=lambda s: abs(s - args.step_start)))
                for cut in args.cuts:
                    point = functools.partial(_bisect_point, lm, source, corpus, ref, cut, family, args, out, f, rows)
                    ok, _ = bisect_step(point, grid, start, args.max_evals)
                    start = ok if ok is not None else 0  # the next cut starts from this cut's answer
    log.info("done in %.0f s", time.perf_counter() - t_start)
    return rows


# ----------------------------------------------------------------------------- outputs
def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


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
    """One row per (corpus digest, cut, codec): a --reuse run appends the rows it took again."""
    seen: dict[tuple, dict] = {}
    for r in rows:
        seen.setdefault((r.get("corpus_digest", r.get("corpus")), r["cut"], r["codec"]), r)
    return list(seen.values())


def bound_table(rows: list[dict], max_dppl: float = 1.0, max_bits: float = 3.5) -> str:
    """Per corpus, one line per cut: the codec with the fewest max(prefill, decode) bits whose Δppl upper 95 %
    bound is <= max_dppl (the --bisect result), with its interval, and the count of cuts at <= max_bits."""
    lines = [f"| corpus | cut | best codec within Δppl upper bound ≤ {max_dppl} % | max(prefill, decode) bits | "
             "prefill / decode bits | Δppl % [95 % CI] | KL (nats) | steps tried (bits: pass ✓ / miss ✗) |",
             "|---|---|---|---|---|---|---|---|"]
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


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return [{k: (v if k in ("codec", "corpus", "corpus_digest") else float(v) if "." in v or "e" in v or "n" in v else int(v))
                 for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def _xval(r: dict) -> float:
    """The worse of the prefill and the decode figure: what a generation must budget for."""
    return max(r["bits_per_value"], r.get("bits_per_value_1tok", 0))


def plot(rows: list[dict], path: Path, metric: str = "delta_ppl_pct") -> None:
    """One panel per cut: wire bits per value against Δppl (symlog axis, negatives shown) or KL (log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuts", type=lambda s: [int(c) for c in s.split(",")], default=None,
                   help=f"comma-separated cuts (default {','.join(map(str, DEFAULT_CUTS))})")
    p.add_argument("--codecs", type=lambda s: s.split(","), default=None,
                   help="comma-separated codec names (default: a curated set incl. fp16 and petals_blockwise8)")
    p.add_argument("--n-windows", type=int, default=None, help="windows of the corpus (default 8)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per window (default 256)")
    p.add_argument("--seed", type=int, default=0, help="corpus sampling seed (the sweep's data.seed)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model spec (default: the bundled SmolLM2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the model (codec timing uses 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed encode+decode repeats per (cut, codec)")
    p.add_argument("--out-dir", type=Path, default=REPO / "experiments" / "codec_rate_distortion")
    p.add_argument("--csv", type=Path, default=None, help="CSV path (default OUT_DIR/results.csv)")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default OUT_DIR/rate_distortion.png)")
    p.add_argument("--from-csv", type=Path, default=None, help="skip the run: tables and plots from this CSV")
    p.add_argument("--corpora", type=lambda s: s.split(","), default=None,
                   help=f"comma-separated data sources (default {','.join(DEFAULT_CORPORA)}; --quick: pydoc; "
                        "pydoc_heldout: the pydoc topics the learned codecs are not fitted on)")
    p.add_argument("--no-timing", action="store_true", help="quality and bits only (learned codecs are never timed)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 windows x 128 tokens, cuts 1,15,29, 5 codecs")
    p.add_argument("--bisect", type=lambda s: s.split(","), default=None,
                   help="codec families (e.g. ec25g_s): per corpus and cut, bisect the step to the coarsest whose "
                        "Δppl upper 95 %% bound is <= --max-dppl; rows are appended to the CSV as measured")
    p.add_argument("--max-dppl", type=float, default=1.0, help="--bisect target: Δppl upper 95 %% bound (%%)")
    p.add_argument("--step-range", type=lambda s: tuple(float(v) for v in s.split(",")), default=(0.15, 0.5),
                   help="--bisect: lo,hi of the steps tried (x row RMS)")
    p.add_argument("--step-res", type=float, default=0.02, help="--bisect: step resolution")
    p.add_argument("--step-start", type=float, default=0.27, help="--bisect: first step tried at the first cut")
    p.add_argument("--reuse", type=Path, default=None, help="--bisect: an earlier run's CSV; its rows of the "
                   "same codec, corpus, cut and token count are taken instead of measured again")
    p.add_argument("--max-evals", type=int, default=4, help="--bisect: evaluations per (corpus, cut, family)")
    p.add_argument("--speed", action="store_true", help="timing only (no quality): MB/s and step µs per codec, "
                                                         "side by side, as a table (OUT_DIR/speed.md)")
    a = p.parse_args(argv)
    a.cuts = a.cuts or ([1, 15, 29] if a.quick else list(DEFAULT_CUTS))
    a.corpora = a.corpora or (["pydoc"] if a.quick else list(DEFAULT_CORPORA))
    a.codecs = a.codecs or list(QUICK_CODECS if a.quick else DEFAULT_CODECS)
    a.n_windows = a.n_windows or (2 if a.quick else 8)
    a.seq_len = a.seq_len or (128 if a.quick else 256)
    suffix = "_quick" if a.quick else ""
    a.csv = a.csv or a.out_dir / f"results{suffix}.csv"
    a.plot = a.plot or a.out_dir / f"rate_distortion{suffix}.png"
    return a


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.speed:
        table = speed_table(run_speed(args))
        path = args.out_dir / "speed.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table + "\n")
        print(table + f"\n\nwrote {path}")
        return
    if args.from_csv:  # redo the tables and figures of an earlier run
        rows = read_csv(args.from_csv)
    elif args.bisect:
        run_bisect(args)
        rows = read_csv(args.csv)  # with the rows of earlier (partial) runs appended to the same CSV
    else:
        rows = run(args)
        write_csv(rows, args.csv)
    if args.bisect or any("step=" in r["codec"] for r in rows):  # a --bisect CSV: one table, steps per cut
        table = bound_table(dedupe(rows), args.max_dppl)
        args.csv.with_suffix(".md").write_text(table + "\n")
        print(table + f"\n\nwrote {args.csv.with_suffix('.md')}")
        return
    table = markdown_table(rows) + "\n\n" + target_table(rows)
    args.csv.with_suffix(".md").write_text(table + "\n")
    plot(rows, args.plot)
    kl_plot = args.plot.with_name(args.plot.stem + "_kl" + args.plot.suffix)
    plot(rows, kl_plot, metric="kl_nats")
    print(table)
    print(f"\nwrote {args.csv}, {args.csv.with_suffix('.md')}, {args.plot}, {kl_plot}")


if __name__ == "__main__":
    main()
