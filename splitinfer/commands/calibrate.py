"""`splitinfer calibrate`: time this machine's stages of a real model (SmolLM2 by default), fit the
`this_machine` hardware profile's efficiency factors and per-layer overhead on some cuts, and print
predicted against measured, with the error, on held-out cuts (decode and prefill). Figures are measured
(times) and modelled (predictions); run it on a quiet machine."""

from __future__ import annotations

import argparse

HELP = ("time real stages at several cuts, fit this_machine's roofline factors on some cuts and print predicted "
        "vs measured (with the error) on the others")


def _cuts(text: str) -> list[int]:
    from splitinfer.errors import ConfigError

    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"cuts {text!r}: give comma-separated layer indices, e.g. 4,12,26,30") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct", help="the model to time (weights are loaded)")
    p.add_argument("--hardware", default="this_machine", help="the conf/hardware profile to fit (this_machine)")
    p.add_argument("--fit-cuts", default="4,12,26,30", help="cuts the factors are fitted on (4,12,26,30)")
    p.add_argument("--check-cuts", default="8,15,22", help="held-out cuts the error is reported on (8,15,22)")
    p.add_argument("--prompt-tokens", type=int, default=64, help="prefill length (64)")
    p.add_argument("--context-tokens", type=int, default=128, help="decode context (128)")
    p.add_argument("--repeats", type=int, default=9, help="fastest of this many timings (9)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1, as the sweeps use)")
    p.add_argument("--csv", default=None, help="also write the predicted/measured table here")


def main(args: argparse.Namespace) -> int:
    import torch

    from splitinfer.metrics.calibration import fit, predict, time_device_stages
    from splitinfer.metrics.hardware import load_hardware
    from splitinfer.models import load_model, validate_cuts
    from splitinfer.models.shapes import shape_from_config

    hw = load_hardware(args.hardware)
    fit_cuts, check_cuts = _cuts(args.fit_cuts), _cuts(args.check_cuts)
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    for c in fit_cuts + check_cuts:
        validate_cuts([c], lm.num_layers)
    shape = shape_from_config(lm.config, name=lm.name)
    T, C = args.prompt_tokens, args.context_tokens
    timings = time_device_stages(lm, sorted(set(fit_cuts + check_cuts)), T, C, args.repeats)
    fitted = fit(shape, hw, [t for t in timings if t.cut in fit_cuts], T, C)
    print(f"fitted {hw.name} on cuts {fit_cuts} ({lm.name}, fp32, {args.threads} thread(s), prompt {T}, "
          f"context {C}): compute_efficiency {fitted.compute_efficiency:.3f}, memory_efficiency "
          f"{fitted.memory_efficiency:.3f}, layer_overhead_us {fitted.layer_overhead_us:.1f}")
    rows = []
    for t in timings:
        pred = predict(shape, fitted, t, T, C)
        rows.append({"cut": t.cut, "phase": t.phase, "set": "fit" if t.cut in fit_cuts else "held-out",
                     "measured_ms": t.seconds * 1e3, "predicted_ms": pred * 1e3,
                     "error_pct": (pred / t.seconds - 1) * 100})
    print("\n| cut | phase | set | measured ms (measured) | predicted ms (modelled) | error % |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cut']} | {r['phase']} | {r['set']} | {r['measured_ms']:.2f} | {r['predicted_ms']:.2f} | "
              f"{r['error_pct']:+.1f} |")
    held = [r for r in rows if r["set"] == "held-out" and r["phase"] == "decode"]
    worst = max((abs(r["error_pct"]) for r in held), default=float("nan"))
    print(f"\nheld-out decode: worst |error| {worst:.1f} % over cuts {[r['cut'] for r in held]} (target: within 30 %)")
    if args.csv:
        from splitinfer.report.tables import write_csv

        write_csv(rows, args.csv)
    return 0
