#!/usr/bin/env python
"""Rate-distortion benchmark of the activation codecs on the real model (SmolLM2-135M-Instruct).

A recipe: per cut and codec, `splitinfer.metrics.codec_bench` sends the hidden state at the cut through the
split path exactly as a sweep job with `data=pydoc data.num_windows=N data.window_tokens=T data.seed=S` does
(so the figures agree): bits per value (true wire bytes incl. header; prefill and one-token messages),
Δperplexity % with its paired-bootstrap 95 % interval, KL(ref || codec) of the next token, top-1 agreement,
and times encode+decode (MB/s of fp32 input; `step_us`: median of a one-token step, in a live session after a
32-token prompt for session codecs `<preset>_s`; one core). Corpora: `pydoc` (default; the presets were tuned
on it) and `licenses` (the installed packages' LICENSE texts, held out). `splitinfer.report.codec_rd` writes
the CSV, a markdown table and rate-distortion plots (bits per value vs Δppl and vs KL, one panel per cut).

    python scripts/bench_codecs.py                       # full run (~20 min on 2 shared cores)
    python scripts/bench_codecs.py --quick               # smoke run (~1 min)
    python scripts/bench_codecs.py --cuts 15 --codecs int8_token,petals_blockwise8 --n-windows 2
    python scripts/bench_codecs.py --corpora pydoc,licenses,readmes --cuts 1,2,...,29   # the issue-28 run
    python scripts/bench_codecs.py --speed --codecs ec37g_s,ec37g_s:coder=rans_py,ec37g,ec37g:coder=rans_py,int8
    python scripts/bench_codecs.py --bisect ec25g_s --tune-on pydoc --corpora readmes,licenses --cuts 1,2,...,29

`--bisect FAMILY` finds, per corpus and cut, the coarsest step of the family (`ec25g_s:step=0.29`, ...) whose
Δppl upper 95 % bound is <= --max-dppl (galloped / halved on a grid from the previous cut's answer; each row is
appended to the CSV as measured; `--reuse CSV` takes rows of the same corpus digest instead). The table lists,
per cut, the best passing step and every step tried (the best of a few tries: its interval is optimistic).
`--tune-on pydoc` chooses the steps on pydoc alone, then measures each --corpora entry once per cut at them
(`--steps-from CSV`: the steps of such a run, no bisection; `--steps-family ec25g_s`: the steps that family chose,
measured with the --bisect family, e.g. ec25g_s:refs=true; `--own-steps`: each corpus at its own rows' steps).

A codec is a preset name, optionally with params: `NAME:key=value:...` (values as JSON, e.g.
`ec37g:coder=rans_py` is ec37g through the old plain-numpy rANS). `--speed` skips quality: per cut, the
encode/decode MB/s of one 256-token window and the one-token step time of every codec, measured in turns
in one process (so the compiled and the old coder are compared under the same load), as a table.
Figures, not timed tests: throughput depends on the machine and its load.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core: numpy's BLAS (rANS grouping) takes no second

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from splitinfer.errors import ConfigError  # noqa: E402
from splitinfer.metrics import codec_bench  # noqa: E402
from splitinfer.report import codec_rd  # noqa: E402

DEFAULT_CUTS = (1, 8, 15, 22, 29)
DEFAULT_CODECS = ("petals_blockwise8", "int8", "int8_s", "ec37g", "ec25g_s", "ec25g_s:refs=true", "ec30g_s",
                  "ec37g_s")
DEFAULT_CORPORA = ("pydoc", "licenses")
QUICK_CODECS = ("fp16", "petals_blockwise8", "int8", "int4_b64_outlier_rot_log8_tc", "ec40")


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
    p.add_argument("--reuse", type=Path, help="--bisect: an earlier CSV whose same points are taken, not measured")
    p.add_argument("--max-evals", type=int, default=4, help="--bisect: evaluations per (corpus, cut, family)")
    p.add_argument("--tune-on", help="--bisect on this corpus only, then each --corpora entry at its steps")
    p.add_argument("--steps-from", type=Path, help="--bisect: the steps of this tuning run's CSV; no bisection")
    p.add_argument("--steps-family", help="--steps-from: the family whose steps to take (default: --bisect's)")
    p.add_argument("--own-steps", action="store_true", help="--steps-from: each corpus at its own rows' steps")
    p.add_argument("--speed", action="store_true", help="timing only: MB/s and step µs per codec (OUT_DIR/speed.md)")
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


def measure(args: argparse.Namespace) -> list[dict]:
    """The rows of a run (written to args.csv as they come for --bisect, at the end otherwise) or of --from-csv."""
    if args.from_csv:  # redo the tables and figures of an earlier run
        return codec_rd.read_csv(args.from_csv)
    if args.bisect:
        reused = codec_bench.reusable_rows(codec_rd.read_csv(args.reuse) if args.reuse else [])
        tuning = codec_rd.read_csv(args.steps_from) if args.steps_from else None
        with codec_rd.csv_appender(args.csv) as record:
            codec_bench.run_bisect(codec_bench.load(args), args, record, reused, tuning)
        return codec_rd.read_csv(args.csv)  # with the rows of earlier (partial) runs appended to the same CSV
    rows = codec_bench.run(codec_bench.load(args), args)
    codec_rd.write_csv(rows, args.csv)
    return rows


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        if args.speed:
            table = codec_rd.speed_table(codec_bench.run_speed(codec_bench.load(args), args))
            path = codec_rd.write_markdown(table, args.out_dir / "speed.md")
            print(table + f"\n\nwrote {path}")
            return
        rows = measure(args)
    except ConfigError as e:  # a bad --cuts or --codecs entry: its one line, no traceback
        raise SystemExit(str(e)) from None
    md = args.csv.with_suffix(".md")
    if args.bisect or any("step=" in r["codec"] for r in rows):  # a --bisect CSV: one table, steps per cut
        tuning = codec_rd.read_csv(args.steps_from) if args.steps_from else None
        table = codec_rd.bisect_tables(rows, args.max_dppl, tuning)
        print(table + f"\n\nwrote {codec_rd.write_markdown(table, md)}")
        return
    table = codec_rd.markdown_table(rows) + "\n\n" + codec_rd.target_table(rows)
    codec_rd.write_markdown(table, md)
    kl_plot = args.plot.with_name(args.plot.stem + "_kl" + args.plot.suffix)
    codec_rd.plot(rows, args.plot)
    codec_rd.plot(rows, kl_plot, metric="kl_nats")
    print(table)
    print(f"\nwrote {args.csv}, {md}, {args.plot}, {kl_plot}")


if __name__ == "__main__":
    main()
