"""Quality of a weight-quantized device half on the real SmolLM2-135M-Instruct, alone and with an activation codec.

    python experiments/quantized_device_half/run.py            # cuts 8, 15, 22; int8 and int4 (g32) weights
    python experiments/quantized_device_half/run.py --cuts 8 --bits 4 --codecs none

For each cut x device weight precision x activation codec: Δperplexity, KL(unsplit‖split) and top-1
agreement against the unsplit model, each with its paired-bootstrap 95 % interval. Quantization: torchao's
`IntxWeightOnlyConfig` (`splitinfer.models.quantize`: int8 symmetric per row, int4 asymmetric per group of 32) (the library's
`QualityAccumulator`, through `experiment.evaluate_split`: the device half runs its quantized layers, an
in-process link carries the codec's frames, the server half runs the original weights). Device weight
bytes are the quantized format's (`ModelShape.weight_bytes`). Writes results.csv / results.md here.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def weight_mb(shape, comps, bits: int, group_size: int, keep_embeddings: bool) -> float:
    """The device half's weights in the format's packed bytes (an unquantized embedding counted at fp16)."""
    group = group_size if bits == 4 else 0
    if keep_embeddings and bits < 32:
        return (shape.weight_bytes(comps[:1], 16) + shape.weight_bytes(comps[1:], bits, group)) / 1e6
    return shape.weight_bytes(comps, bits, group) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuts", default="8,15,22")
    ap.add_argument("--bits", default="8,4")
    ap.add_argument("--codecs", default="none,int8", help="activation codecs (conf/codec names; none = fp32)")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--windows", type=int, default=24, help="corpus windows of 128 tokens")
    ap.add_argument("--seed", type=int, default=1, help="corpus seed (1: not the sweeps' default windows)")
    ap.add_argument("--keep-embeddings", action="store_true",
                    help="quantize the decoder layers only; the token embedding stays at full precision")
    ap.add_argument("--name", default="results", help="output files NAME.csv / NAME.md")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    torch.set_num_threads(1)

    from splitinfer.codecs import build_codec
    from splitinfer.data import CorpusSpec
    from splitinfer.experiment import MetricOptions, evaluate_split, get_corpus, get_reference
    from splitinfer.models import load_model
    from splitinfer.models.quantize import quantize_device_half
    from splitinfer.models.shapes import shape_from_config

    lm = load_model("smollm2-135m-instruct")
    shape = shape_from_config(lm.config, name=lm.name)
    corpus = get_corpus(lm, CorpusSpec(num_windows=args.windows, window_tokens=128, num_prompts=1,
                                              gen_tokens=2, seed=args.seed), reuse=True)
    ref = get_reference(lm, corpus, reuse=True, disk=True)
    opts = MetricOptions(generation=False, timing=False, latency=False)
    rows = []
    for cut in [int(c) for c in args.cuts.split(",")]:
        comps = shape.side(cut, "device")
        for bits in [32] + [int(b) for b in args.bits.split(",")]:
            model = lm if bits == 32 else quantize_device_half(lm, cut, bits, args.group_size,
                                                               embeddings=not args.keep_embeddings)
            for codec_name in args.codecs.split(","):
                if bits == 32 and codec_name == "none":
                    continue  # the unsplit model itself
                codec = None if codec_name == "none" else build_codec(codec_name)
                m = evaluate_split(model, cut, codec, None, corpus, ref, opts, reuse_hidden=False)
                row = {"cut": cut, "device_weights": "fp32" if bits == 32 else f"int{bits}" + (
                    f"_g{args.group_size}" if bits == 4 else "") + ("_layers_only" if args.keep_embeddings and bits < 32
                                                                    else ""), "codec": codec_name,
                       "device_weight_mb": weight_mb(shape, comps, bits, args.group_size, args.keep_embeddings),
                       **{k: m[k] for k in ("delta_ppl_pct", "delta_ppl_pct_ci_low", "delta_ppl_pct_ci_high",
                                            "kl_mean", "kl_mean_ci_low", "kl_mean_ci_high", "top1_agreement",
                                            "top1_agreement_ci_low", "top1_agreement_ci_high", "eval_tokens")}}
                rows.append(row)
                print(f"cut {cut:2d} {row['device_weights']:8s} codec {codec_name:5s} "
                      f"dppl {row['delta_ppl_pct']:+.2f} % [{row['delta_ppl_pct_ci_low']:+.2f}, "
                      f"{row['delta_ppl_pct_ci_high']:+.2f}]  KL {row['kl_mean']:.4f}  top-1 "
                      f"{row['top1_agreement']:.3f} [{row['top1_agreement_ci_low']:.3f}, "
                      f"{row['top1_agreement_ci_high']:.3f}]  device weights {row['device_weight_mb']:.1f} MB",
                      flush=True)
            del model
    out = Path(args.out)
    with open(out / f"{args.name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| cut | device weights | codec | device weights MB | Δppl % [95 % CI] | KL [95 % CI] | top-1 [95 % CI] |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cut']} | {r['device_weights']} | {r['codec']} | {r['device_weight_mb']:.1f} | "
                     f"{r['delta_ppl_pct']:+.2f} [{r['delta_ppl_pct_ci_low']:+.2f}, {r['delta_ppl_pct_ci_high']:+.2f}] | "
                     f"{r['kl_mean']:.4f} [{r['kl_mean_ci_low']:.4f}, {r['kl_mean_ci_high']:.4f}] | "
                     f"{r['top1_agreement']:.3f} [{r['top1_agreement_ci_low']:.3f}, {r['top1_agreement_ci_high']:.3f}] |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
