"""Half-precision split generation against the unsplit model in the same precision, per prompt.

    python scripts/check_half_precision.py                                   # SmolLM2, cut 15, bf16 on CPU
    python scripts/check_half_precision.py --device cuda --dtype float16 --out experiments/serving_throughput/x.md

Both halves run on `--device` in `--dtype` (`in_process_generator(placement=..., server_placement=...)`,
the split path users run), greedy, `--tokens` new tokens per prompt; the reference is the whole model
cast the same way (`split.placement.place_module` on a copy) through transformers' `generate`. For each
of the 8 prompts: identical, or the first position where the tokens differ and the reference's logit
margin there (top-1 minus top-2 logit of the unsplit model at that position: a small margin means a
near-tie that rounding can flip). Exit status 0 either way; the table is the result.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_serving import PROMPTS  # noqa: E402

from splitinfer.generation import in_process_generator  # noqa: E402
from splitinfer.models import load_model  # noqa: E402
from splitinfer.split.placement import Placement, place_module  # noqa: E402


@torch.no_grad()
def margin_at(model, ids: torch.Tensor, placement: Placement) -> float:
    """Top-1 minus top-2 logit of `model` for the token after `ids`."""
    logits = model(ids.to(placement.device)).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cut", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    placement = Placement.of(args.device, args.dtype)
    lm = load_model(args.model)
    ref = copy.deepcopy(lm.model)
    place_module(ref, placement)
    gen = in_process_generator(lm, [args.cut], placement=placement, server_placement=placement)
    lines = [f"{args.model} cut {args.cut}, both halves {placement.name} vs the unsplit model {placement.name}, "
             f"greedy, {args.tokens} new tokens",
             "", "| prompt | split = unsplit | first differing position | unsplit margin there (logits) |",
             "|---|---|---|---|"]
    same = 0
    for i, text in enumerate(PROMPTS):
        ids = lm.encode_prompt(text)
        got = gen.generate(ids, args.tokens, stop_at_eos=False).token_ids
        eos = sorted(lm.eos_token_ids) or [0]
        want = ref.generate(ids.to(placement.device), attention_mask=torch.ones_like(ids).to(placement.device),
                            max_new_tokens=args.tokens, do_sample=False, eos_token_id=None,
                            pad_token_id=eos[0])[0, ids.shape[1]:].tolist()
        if got == want:
            same += 1
            lines.append(f"| {i} | yes | - | - |")
            continue
        k = next(j for j, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
        m = margin_at(ref, torch.cat([ids, torch.tensor([want[:k]], dtype=ids.dtype)], 1), placement)
        lines.append(f"| {i} | no | {k} (split {got[k]}, unsplit {want[k]}) | {m:.3f} |")
    lines.append(f"\n{same}/{len(PROMPTS)} prompts identical")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
