"""`splitinfer recommend MULTIRUN_DIR`: pick the cut and codec that minimise latency (or bytes) under
constraints, and say why (the rules: `splitinfer.report.recommend`)."""

from __future__ import annotations

import argparse

HELP = (
    "recommend the cut + codec minimising latency/bytes under memory, Δppl, leakage and link constraints "
    "(quality limits apply to the confidence bound; ties within noise go to the more faithful codec)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", help="the multirun folder of a sweep")
    p.add_argument(
        "--objective",
        default="latency",
        choices=("latency", "ttft", "bytes", "energy"),
        help="what to minimise: per-token latency (default), time to first token, uplink bytes per "
        "token, device energy per token",
    )
    p.add_argument(
        "--max-device-mb", type=float, default=None, help="device memory budget (weights + KV cache)"
    )
    p.add_argument(
        "--max-delta-ppl",
        type=float,
        default=None,
        help="largest acceptable |Δperplexity| in %%, checked against the upper end of the job's 95 %% "
        "bootstrap interval (the point estimate for jobs without one; the output says which)",
    )
    p.add_argument(
        "--min-exact-match",
        type=float,
        default=None,
        help="smallest greedy exact-match rate (0..1), checked against the lower end of its 95 %% interval",
    )
    p.add_argument(
        "--max-leakage",
        type=float,
        default=None,
        help="largest acceptable share of prompt tokens recovered by the strongest attack run (0..1; "
        "needs a sweep with attack=...)",
    )
    p.add_argument(
        "--leakage-metric",
        default=None,
        help="apply --max-leakage to this privacy/<attack>/<metric> column instead of the strongest "
        "attack's token recovery",
    )
    p.add_argument(
        "--tie-tolerance",
        type=float,
        default=None,
        help="configurations within this fraction of the best objective are tied and the tie goes to "
        "the more faithful codec (fp32 > fp16 > 8-bit > fewer bits); default 0.02",
    )
    p.add_argument(
        "--link", default=None, help="re-evaluate latency for this conf/link profile (e.g. 3g, wifi)"
    )
    p.add_argument(
        "--slowdown", type=float, default=None, help="device slow-down factor against this machine"
    )
    p.add_argument(
        "--clients-per-server",
        type=int,
        default=None,
        help="score per-token latency as one of this many clients of one server sees it, and say how "
        "many phones per server the chosen cut takes (model: splitinfer.metrics.serving)",
    )
    p.add_argument(
        "--batch-profile",
        default=None,
        help="CSV (batch,step_s) of the server's batched decode step, e.g. "
        "experiments/serving_throughput/batch_profile.csv; 'none' = a server without batching "
        "(default: that file if it exists, else none)",
    )


def main(args: argparse.Namespace) -> int:
    from splitinfer.report import TIE_TOLERANCE, Constraints, load_runs, recommend

    rows = load_runs(args.sweep_dir)
    load = server_load(getattr(args, "clients_per_server", None), getattr(args, "batch_profile", None))
    rec = recommend(
        rows,
        args.objective,
        Constraints(
            args.max_device_mb,
            args.max_delta_ppl,
            args.max_leakage,
            args.leakage_metric,
            args.min_exact_match,
        ),
        link=args.link,
        slowdown=args.slowdown,
        tie_tolerance=TIE_TOLERANCE if args.tie_tolerance is None else args.tie_tolerance,
        server_load=load,
    )
    print(rec.explanation)
    return 0 if rec.best is not None else 1


def server_load(clients: int | None, profile: str | None):
    """The ServerLoad for --clients-per-server / --batch-profile (None without --clients-per-server)."""
    from pathlib import Path

    from splitinfer.errors import ConfigError
    from splitinfer.metrics.serving import BatchProfile, ServerLoad

    if clients is None:
        if profile is not None:
            raise ConfigError("--batch-profile needs --clients-per-server N (how many clients share a server)")
        return None
    default = Path(__file__).resolve().parents[2] / "experiments" / "serving_throughput" / "batch_profile.csv"
    if profile is None:
        profile = str(default) if default.is_file() else "none"
    return ServerLoad(clients, None if profile.lower() == "none" else BatchProfile.from_csv(profile))
