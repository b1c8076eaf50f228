"""`splitinfer eval`: lm-evaluation-harness tasks through a split, against the unsplit model.

    splitinfer eval --tasks splitinfer_mc --cut 15 --codec ec37g_s
    splitinfer eval --tasks mytask --include_path ./tasks --cut 8 --codec int4_b32 --server tcp://HOST:PORT

lm-eval's own arguments (`--tasks`, `--include_path`, `--num_fewshot`, `--limit`, `--batch_size`,
`--output_path`, `--log_samples`) plus the split's (`--model`, `--cut`, `--codec`, `--defense`, `--server`).
Prints lm-eval's table for the split, then each metric beside the unsplit model's with Δ and its paired
interval; `--output_path` gets lm-eval's results JSON (with the comparison under "splitinfer").
"""

from __future__ import annotations

import argparse
import json
import time

from splitinfer.errors import ConfigError

HELP = "evaluate lm-eval tasks (offline, local files) through a split; prints Δ vs unsplit with intervals"


def add_arguments(p: argparse.ArgumentParser) -> None:
    lm = p.add_argument_group("lm-eval's arguments")
    lm.add_argument("--tasks", required=True, help="comma-separated task names (splitinfer_mc ships with splitinfer)")
    lm.add_argument("--include_path", "--include-path", action="append", default=[], metavar="DIR",
                    help="a folder of task YAMLs (repeatable); relative data_files are read next to each YAML")
    lm.add_argument("--num_fewshot", "--num-fewshot", type=int, default=None)
    lm.add_argument("--limit", type=float, default=None,
                    help="examples per task (a fraction when below 1), the first ones")
    lm.add_argument("--batch_size", "--batch-size", type=int, default=8, help="default: %(default)s")
    lm.add_argument("--output_path", "--output-path", default=None,
                    help="folder (or .json file) for lm-eval's results JSON")
    lm.add_argument("--log_samples", "--log-samples", action="store_true",
                    help="also write every example's requests and responses (lm-eval's samples files)")
    lm.add_argument("--max_length", "--max-length", type=int, default=None,
                    help="longest input in tokens (default: the model's)")
    lm.add_argument("--seed", type=int, default=0, help="lm-eval's seeds (few-shot sampling) and the bootstrap's")
    sp = p.add_argument_group("the split")
    sp.add_argument("--model", default="smollm2-135m-instruct",
                    help="bundled model name, local HF directory or .gguf file (default: %(default)s)")
    sp.add_argument("--cut", default="15", help="layer index k (device runs layers 0..k-1); a comma list for a chain")
    sp.add_argument("--codec", default="none", help="activation codec (default: none = raw fp32)")
    sp.add_argument("--defense", default=None, help="privacy defense on the device, as in `splitinfer generate`")
    sp.add_argument("--defense-param", action="append", default=[], metavar="KEY=VALUE",
                    help="a defense parameter, repeatable (e.g. sigma=0.1)")
    sp.add_argument("--server", default=None, help="tcp://HOST:PORT of a `splitinfer serve` with the same --cut")
    sp.add_argument("--no-baseline", action="store_true", help="skip the unsplit baseline (no Δ column)")
    sp.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def check_arguments(args: argparse.Namespace):
    """Everything cheap, before the model loads: tasks (names, data files), cut, codec, defense, settings.
    Returns (task set, cuts, codec, defense, settings)."""
    from splitinfer.commands.generate import build_defense_arg, parse_cuts
    from splitinfer.eval import require_lm_eval
    from splitinfer.eval.run import EvalSettings
    from splitinfer.models import peek_num_layers, validate_cuts
    from splitinfer.split import resolve_codec

    require_lm_eval()
    from splitinfer.eval.tasks import task_set

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: give a number of threads >= 1 (or leave it out)")
    limit = args.limit
    if limit is not None and limit >= 1:
        if limit != int(limit):
            raise ConfigError(f"--limit {limit:g}: give a whole number of examples, or a fraction below 1")
        limit = int(limit)
    if args.max_length is not None and args.max_length < 2:
        raise ConfigError(f"--max_length {args.max_length}: give at least 2 tokens (or leave it out)")
    settings = EvalSettings(num_fewshot=args.num_fewshot, limit=limit, batch_size=args.batch_size,
                            max_length=args.max_length, seed=args.seed)
    try:
        cuts = validate_cuts(parse_cuts(args.cut), peek_num_layers(args.model))
    except ValueError as e:
        raise ConfigError(f"--cut {args.cut}: {e}") from None
    codec = resolve_codec(args.codec)
    defense = build_defense_arg(args)
    tasks = task_set(args.tasks, args.include_path)
    for t in tasks.local.values():
        t.check()
    return tasks, cuts, codec, defense, settings


def main(args: argparse.Namespace) -> int:
    tasks, cuts, codec, defense, settings = check_arguments(args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval.utils import make_table

    from splitinfer.eval.compare import format_table
    from splitinfer.eval.run import evaluate_tasks
    from splitinfer.models import load_model

    t0 = time.perf_counter()
    lm = load_model(args.model)
    ev = evaluate_tasks(lm, tasks, cut=";".join(map(str, cuts)), codec=codec, defense=defense, server=args.server,
                        settings=settings, baseline=not args.no_baseline)
    total = time.perf_counter() - t0
    result = dict(ev.result)
    samples = result.pop("samples", {})
    print(f"{ev.description}; limit {settings.limit}, num_fewshot {settings.num_fewshot}, "
          f"batch_size {settings.batch_size}")
    print(make_table(result))
    if not args.no_baseline:
        base = "cached" if ev.baseline.get("cached") else f"{ev.baseline.get('seconds', 0):.1f} s"
        print(f"split vs unsplit ({lm.name}), paired over the same examples:")
        print(format_table(ev.rows))
        print()
    per_token = ev.bytes_up / ev.scored_tokens if ev.scored_tokens else float("nan")
    print(f"split evaluation {ev.split_seconds:.1f} s, unsplit baseline "
          f"{base if not args.no_baseline else 'skipped'}, total {total:.1f} s; "
          f"uplink {ev.bytes_up / 1e6:.2f} MB ({per_token:.0f} B/token over {ev.scored_tokens} tokens)")
    if args.output_path:
        write_results(args.output_path, result, samples if args.log_samples else None, ev)
    return 0


def write_results(output_path: str, result: dict, samples: dict | None, ev) -> None:
    """lm-eval's results JSON (and samples files) through its own EvaluationTracker, with the comparison
    to the unsplit model under the key "splitinfer"."""
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=output_path)
    tracker.general_config_tracker.model_name_sanitized = "splitinfer"
    result = {**result, "splitinfer": {"split": ev.description, "comparison": ev.rows, "bytes_up": ev.bytes_up,
                                       "scored_tokens": ev.scored_tokens, "split_seconds": ev.split_seconds,
                                       "baseline_cached": bool(ev.baseline.get("cached"))}}
    json.dumps(result, default=str)  # fail here, not half-way through writing
    tracker.save_results_aggregated(results=result, samples=samples)
    for task in samples or {}:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    print(f"wrote lm-eval's results JSON under {output_path}")
