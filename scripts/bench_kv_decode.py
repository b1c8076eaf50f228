"""Decode cost against context length: ms per generated token at short and long contexts, with the
preallocated KV cache (`splitinfer.models.KVCache`) and with the old cache that `torch.cat`-ed every step.

    python scripts/bench_kv_decode.py                                   # SmolLM2, cut 15, contexts 64 and 2048
    python scripts/bench_kv_decode.py --model tiny-llama --contexts 16,256 --steps 8 --csv /tmp/kv.csv

It runs the split path users run (`in_process_generator`, no codec, greedy): a prompt of `context`
random token ids, then `--steps` decode steps; the figure is the median of the decode steps' wall time
(`GenerationResult.decode_s`). Both caches run in this one process, alternating per repeat, so the
ratio long/short and old/new is measured under the same load. One torch thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splitinfer.models import KVCache, load_model  # noqa: E402
from splitinfer.models.partition import Stage  # noqa: E402
from splitinfer.split import in_process_generator  # noqa: E402


class ConcatKVCache(KVCache):
    """The cache before issue 24: every update concatenated the whole past with the new positions."""

    def __init__(self) -> None:
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx in self.k:
            key_states = torch.cat([self.k[layer_idx], key_states], dim=-2)
            value_states = torch.cat([self.v[layer_idx], value_states], dim=-2)
        self.k[layer_idx], self.v[layer_idx] = key_states, value_states
        return key_states, value_states

    @property
    def seq_len(self) -> int:
        return next((int(t.shape[-2]) for t in self.k.values()), 0)

    def crop(self, length: int) -> None:
        self.k = {i: t[..., :length, :] for i, t in self.k.items()}
        self.v = {i: t[..., :length, :] for i, t in self.v.items()}


CACHES = {"concat (before)": ConcatKVCache, "preallocated (after)": KVCache}


def decode_ms(lm, cut: int, context: int, steps: int, cache_cls) -> float:
    original = Stage.new_cache
    Stage.new_cache = lambda self: None if self.kind == "encoder" else cache_cls()
    try:
        gen = in_process_generator(lm, [cut])
        ids = torch.randint(0, lm.vocab_size, (1, context), generator=torch.Generator().manual_seed(context))
        res = gen.generate(ids, steps + 1, chat=False, stop_at_eos=False)
    finally:
        Stage.new_cache = original
    return 1e3 * statistics.median(res.decode_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cut", type=int, default=15)
    ap.add_argument("--contexts", default="64,2048")
    ap.add_argument("--steps", type=int, default=32, help="decode steps timed per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per (cache, context); the median is kept")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    lm = load_model(args.model)
    contexts = [int(c) for c in args.contexts.split(",")]
    runs: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):
        for name, cls in CACHES.items():
            for ctx in contexts:
                runs.setdefault((name, ctx), []).append(decode_ms(lm, args.cut, ctx, args.steps, cls))
    rows = [{"cache": name, "context": ctx, "decode_ms_per_token": statistics.median(v)}
            for (name, ctx), v in runs.items()]
    short, long_ = min(contexts), max(contexts)
    print(f"{args.model} cut {args.cut}: median decode ms/token over {args.steps} steps x {args.repeats} runs")
    print(f"| cache | {' | '.join(f'ctx {c}' for c in contexts)} | ctx {long_} / ctx {short} |")
    print("|---|" + "---|" * (len(contexts) + 1))
    for name in CACHES:
        ms = {r["context"]: r["decode_ms_per_token"] for r in rows if r["cache"] == name}
        print(f"| {name} | {' | '.join(f'{ms[c]:.2f}' for c in contexts)} | {ms[long_] / ms[short]:.2f}x |")
    if args.csv:
        from splitinfer.report.tables import write_csv

        write_csv(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
