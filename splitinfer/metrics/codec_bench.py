"""The codec rate-distortion benchmark's measurements (`scripts/bench_codecs.py`), on a loaded model.

For every cut and codec, `evaluate` sends the hidden state at the cut through the split path exactly as a
sweep job does (`splitinfer.experiment.evaluate_split`) and renames its figures to the benchmark's CSV
columns (`splitinfer.report.codec_rd.COLUMNS`): bits per value (prefill and one-token messages), Δppl % with
its paired-bootstrap 95 % interval, KL, top-1 agreement. `throughput` and `step_time` time encode+decode on
the calling thread. `run` is the rate-distortion run, `run_speed` the timing-only run, `run_bisect` the search
of the coarsest step of a codec family per cut (`bisect_step`) whose Δppl upper bound meets a target.

`args` is the benchmark's options (an `argparse.Namespace` from the script, or any object with the same
attributes: cuts, codecs, corpora, n_windows, seq_len, seed, threads, repeats, no_timing, and for
`run_bisect` bisect, step_range, step_res, step_start, max_evals, max_dppl). The caller loads the model.
"""

from __future__ import annotations

import functools
import json
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from splitinfer.codecs import build_codec
from splitinfer.errors import ConfigError

log = logging.getLogger("bench_codecs")

def load(args: Any):
    """The model of a benchmark run (`args.model`, seeded, with `args.threads` torch threads)."""
    from splitinfer.models import load_model

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    return load_model(args.model)


def codec_spec_arg(name: str) -> str | dict:
    """`NAME` or `NAME:key=value:...` (values parsed as JSON, else kept as strings) -> a build_codec spec."""
    if ":" not in name:
        return name
    base, *pairs = name.split(":")
    spec: dict = {"name": base}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--codecs entry {name!r}: {pair!r} is not key=value (e.g. ec37g:coder=rans_py)")
        try:
            spec[key] = json.loads(value)
        except json.JSONDecodeError:
            spec[key] = value
    return spec


def corpus_spec(args: Any, source: str = "pydoc"):
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
            "wire_format": codec.wire_format if codec is not None else "",
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



def run(lm, args: Any) -> list[dict]:
    """Every corpus x cut x codec: `evaluate`, the reconstruction error of the windows and (unless
    args.no_timing, never for learned codecs) `throughput` and `step_time` on one core. Checks first that the
    split path without a codec reproduces the unsplit model."""
    from splitinfer.experiment import compute_reference

    t_start = time.perf_counter()
    bad = [k for k in args.cuts if not 1 <= k < lm.num_layers]
    if bad:
        raise ConfigError(f"--cuts {bad} out of range: cuts must be in 1..{lm.num_layers - 1}")
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
            raise RuntimeError(f"split path does not reproduce the unsplit model (KL = {sanity['kl_nats']:.2e})")

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


def run_speed(lm, args: Any) -> list[dict]:
    """Timing only, on one core: per cut, one window of pydoc hidden states (prefill MB/s) and the one-token
    steps of a generated continuation (step µs). The codecs take turns per cut and repeat (`--repeats`
    rounds of `throughput`), so every codec sees the same load."""
    from splitinfer.experiment import compute_reference

    torch.set_num_threads(args.threads)
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


def reusable_rows(rows: list[dict]) -> dict[tuple, dict]:
    """Rows of an earlier run's CSV (`report.codec_rd.read_csv`) by (corpus digest, cut, codec_key, wire format):
    the evaluation is deterministic (same windows, seed and code path), so a point measured before need not be
    measured again. The digest is the windows' (data.Corpus.digest): `licenses` and `readmes` are built from the
    installed packages, so another environment gives other windows; the wire format is the one the row was
    measured under (`Codec.wire_format`): a newer format has other bytes. A row without either is never reused."""
    out = {}
    for r in rows:
        if "delta_ppl_ci_hi" in r and r.get("corpus_digest") and r.get("wire_format"):
            out[(r["corpus_digest"], r["cut"], codec_key(r["codec"]), r["wire_format"])] = r
    return out


def _bisect_point(lm, source, corpus, ref, cut, family, args, reused, record, step: float,
                  tuned_on: str = "") -> bool:
    """One measured (cut, family at `step`) row, handed to `record` -> whether it meets args.max_dppl.
    A row of --reuse with the same codec, corpus, cut, windows and wire format is taken instead of measuring
    again. `tuned_on`: the corpus the step was chosen on (a held-out check row), "" for a bisection row."""
    name = family_spec(family, step)
    t0 = time.perf_counter()
    codec = build_codec(codec_spec_arg(name))  # fresh: a session codec's state must not leak across runs
    old = reused.get((corpus.digest, cut, codec_key(name), codec.wire_format))
    row = ({**old, "codec": name} if old else
           {"corpus": source, "cut": cut, "codec": name, "step_us": float("nan"),
            **evaluate(lm, cut, codec, corpus, ref, args.seed)})
    row["tuned_on"] = tuned_on
    record(row)
    log.info("%s cut %2d %-22s %6.3f / %6.3f bits  Δppl %+7.3f%% [%+.3f, %+.3f]  (%s)", source, cut, name,
             row["bits_per_value"], row["bits_per_value_1tok"], row["delta_ppl_pct"], row["delta_ppl_ci_lo"],
             row["delta_ppl_ci_hi"], "reused" if old else f"{time.perf_counter() - t0:.1f} s")
    return row["delta_ppl_ci_hi"] <= args.max_dppl


def run_bisect(lm, args: Any, record: Callable[[dict], None], reused: dict[tuple, dict],
               tuning: list[dict] | None = None) -> None:
    """Per corpus, cut and codec family: bisect the step to the coarsest one whose Δppl upper 95 % bound is
    <= --max-dppl. The unsplit model runs once per corpus window (compute_reference keeps the hidden state
    at every cut), every evaluation is `evaluate` (the split path on those cached states), and each measured
    row goes to `record` as it comes (the script appends it to the CSV, so a run cut short keeps what it
    measured). `reused`: `reusable_rows` of an earlier run, taken instead of measured again.

    With `args.tune_on` (a corpus), the bisection runs on that corpus only, and every corpus of args.corpora
    is then measured once per cut at the step `tuned_steps` takes from those rows (rows with `tuned_on` set):
    the held-out check of a step table tuned on other text. With `tuning` (the rows of an earlier tuning
    run, `--steps-from CSV`) nothing is bisected: the steps come from those rows, those of `args.steps_family`
    where it is set (e.g. the steps ec25g_s chose, measured with ec25g_s:refs=true). With `args.own_steps` each
    corpus is measured at the steps its own rows of `tuning` chose (an oracle table replayed with another
    family), recorded as bisection rows."""
    t_start = time.perf_counter()
    if (getattr(args, "steps_family", None) or getattr(args, "own_steps", False)) and tuning is None:
        raise ConfigError("--steps-family and --own-steps take their steps from an earlier run: add --steps-from CSV")
    grid = step_grid(*args.step_range, args.step_res)
    tune_on = getattr(args, "tune_on", None)
    rows = list(tuning or [])
    if tuning is None:
        for source in [tune_on] if tune_on else args.corpora:
            corpus, ref = _reference(lm, args, source, t_start)
            for family in args.bisect:
                start = grid.index(min(grid, key=lambda s: abs(s - args.step_start)))
                for cut in args.cuts:
                    point = functools.partial(_bisect_point, lm, source, corpus, ref, cut, family, args, reused,
                                              lambda r: (rows.append(r), record(r)))
                    ok, _ = bisect_step(point, grid, start, args.max_evals)
                    start = ok if ok is not None else 0  # the next cut starts from this cut's answer
    from_family = getattr(args, "steps_family", None)
    if tuning is not None and getattr(args, "own_steps", False):
        for source in args.corpora:
            own = [r for r in rows if r.get("corpus") == source]
            if not own:
                raise ConfigError(f"--own-steps: the --steps-from CSV has no rows of corpus {source!r} (it has "
                                  f"{sorted({r.get('corpus') for r in rows})}); drop it from --corpora")
            corpus, ref = _reference(lm, args, source, t_start)
            for family in args.bisect:
                _, chosen = tuned_steps(own, [from_family or family], args.cuts, args.max_dppl)
                for (_, cut), step in chosen.items():
                    _bisect_point(lm, source, corpus, ref, cut, family, args, reused, record, step)
    elif tune_on or tuning is not None:
        chosen = {}
        for family in args.bisect:
            tune_on, steps = tuned_steps(rows, [from_family or family], args.cuts, args.max_dppl)
            chosen.update({(family, cut): step for (_, cut), step in steps.items()})
        for source in (c for c in args.corpora if c != tune_on):
            corpus, ref = _reference(lm, args, source, t_start)
            for (family, cut), step in chosen.items():
                _bisect_point(lm, source, corpus, ref, cut, family, args, reused, record, step, tuned_on=tune_on)
    log.info("done in %.0f s", time.perf_counter() - t_start)


def tuned_steps(rows: list[dict], families: list[str], cuts: list[int],
                max_dppl: float) -> tuple[str, dict[tuple[str, int], float]]:
    """The step table of a tuning run: from its bisection rows (one corpus), per family and cut, the coarsest
    step whose Δppl upper bound is <= max_dppl, or the finest step tried where none is. -> (the tuning corpus,
    {(family, cut): step}). ConfigError when the rows are not one corpus's bisection or lack a cut."""
    rows = [r for r in rows if not r.get("tuned_on")]
    corpora = sorted({r["corpus"] for r in rows})
    if len(corpora) != 1:
        raise ConfigError(f"--steps-from: the tuning rows must be one corpus's --bisect run, found corpora "
                          f"{corpora}; run --bisect FAMILY --corpora pydoc first")
    chosen = {}
    for family in families:
        for cut in cuts:
            steps = {float(r["codec"].split("step=")[1]): r["delta_ppl_ci_hi"] <= max_dppl for r in rows
                     if r["cut"] == cut and r["codec"].startswith(family + ":step=")}
            if not steps:
                raise ConfigError(f"--steps-from: no {family} row at cut {cut} in the tuning run (cuts there: "
                                  f"{sorted({r['cut'] for r in rows})}); tune that cut first or drop it from --cuts")
            passing = [s for s, ok in steps.items() if ok]
            chosen[family, cut] = max(passing) if passing else min(steps)
    return corpora[0], chosen


def _reference(lm, args: Any, source: str, t_start: float):
    from splitinfer.experiment import compute_reference

    corpus = corpus_spec(args, source).build(lm)
    ref = compute_reference(lm, corpus)
    log.info("%s: %d windows x %d tokens, reference done (%.0f s so far)", source, *corpus.windows.shape,
             time.perf_counter() - t_start)
    return corpus, ref
