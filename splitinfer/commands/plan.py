"""`splitinfer plan`: where to cut a model for a device, a server and a link, from its shape alone (no weights
are loaded; every figure is modelled by the roofline). The logic: `splitinfer.plan`."""

from __future__ import annotations

import argparse

HELP = ("model every cut of a model shape (no weights) on a device and a server hardware profile over a link: "
        "memory, fits, ms/token, uplink bytes, energy; recommends a cut")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama3_1_8b",
                   help="a conf/model entry with a shape (llama3_1_8b, qwen2_5_7b, ...) or a folder holding a "
                        "config.json (default llama3_1_8b)")
    p.add_argument("--hardware", default="snapdragon_8_gen3", help="the device's conf/hardware profile")
    p.add_argument("--server-hardware", default="h100", help="the server's conf/hardware profile")
    p.add_argument("--link", default="5g", help="a conf/link profile (3g, 4g_lte, 5g, wifi, loopback)")
    p.add_argument("--codec-bits", type=float, default=8.0, help="bits per activation value on the wire (8)")
    p.add_argument("--weight-bits", type=int, default=4, help="device weight bits: 4 (group-wise), 8 or 16 (4)")
    p.add_argument("--server-weight-bits", type=int, default=16, help="server weight bits (16)")
    p.add_argument("--group-size", type=int, default=32, help="int4 group size (32)")
    p.add_argument("--kv-bits", type=int, default=16, help="KV cache bits (16)")
    p.add_argument("--prompt-tokens", type=int, default=512, help="prompt length for TTFT (512)")
    p.add_argument("--context-tokens", type=int, default=1024, help="context for decode and the KV cache (1024)")
    p.add_argument("--clients", type=int, default=1, help="sequences the server batches per decode step (1)")
    p.add_argument("--memory-budget-gb", type=float, default=None,
                   help="device memory budget (default: the profile's memory_gb)")
    p.add_argument("--energy-budget-mj", type=float, default=None, help="most device mJ per token allowed")
    p.add_argument("--quality-csv", default=None,
                   help="measured quality per cut (e.g. experiments/quantized_device_half/results.csv)")
    p.add_argument("--max-delta-ppl", type=float, default=None,
                   help="only cuts measured within this |Δppl| %% (95 %% upper bound) at --weight-bits; needs --quality-csv")
    p.add_argument("--relay", default=None, metavar="A,B",
                   help="also cost a relay hop: device [0,A) -> edge [A,B) -> server [B,L) (--edge-hardware, --hop-link)")
    p.add_argument("--u-shape", default=None, metavar="A,B",
                   help="also cost a U-shape: device [0,A) -> server [A,B) -> device [B,L) + head, over --link")
    p.add_argument("--edge-hardware", default=None,
                   help="a relay's edge: a conf/hardware profile (with --relay; default jetson_orin_nano)")
    p.add_argument("--hop-link", default=None,
                   help="a relay's edge -> server conf/link profile (with --relay; default metro_fiber)")
    p.add_argument("--objective", default="latency", choices=("latency", "energy"), help="what to minimise")
    p.add_argument("--format", default="table", choices=("table", "csv", "json"), help="output format")


def main(args: argparse.Namespace) -> int:
    from splitinfer.plan import PlanOptions, format_table, make_plan

    opts = PlanOptions(codec_bits=args.codec_bits, weight_bits=args.weight_bits,
                       server_weight_bits=args.server_weight_bits, group_size=args.group_size,
                       kv_bits=args.kv_bits, prompt_tokens=args.prompt_tokens,
                       context_tokens=args.context_tokens, clients=args.clients,
                       memory_budget_gb=args.memory_budget_gb, energy_budget_mj=args.energy_budget_mj,
                       objective=args.objective, max_delta_ppl=args.max_delta_ppl, quality_csv=args.quality_csv)
    if args.relay is None and (args.edge_hardware or args.hop_link):
        from splitinfer.errors import ConfigError

        raise ConfigError("--edge-hardware and --hop-link describe a relay's edge and second hop: add --relay A,B")
    shape, rows, best, why = make_plan(args.model, args.hardware, args.server_hardware, args.link, opts,
                                       relay=_cuts(args.relay, "--relay"), ushape=_cuts(args.u_shape, "--u-shape"),
                                       edge_hardware=args.edge_hardware or "jetson_orin_nano",
                                       hop_link=args.hop_link or "metro_fiber")
    if args.format == "table":
        print(f"{shape.name}: {shape.total_params / 1e9:.2f}B parameters, {shape.num_layers} layers; device "
              f"{args.hardware} ({args.weight_bits}-bit weights), server {args.server_hardware}, link {args.link}, "
              f"{args.codec_bits:g} bits/value on the wire; all figures MODELLED (roofline), none measured\n")
    print(format_table(rows, args.format))
    if args.format == "table":
        print(f"\nrecommended: {why}")
    return 0


def _cuts(text: str | None, flag: str) -> list[int] | None:
    """'8,20' -> [8, 20]; a ConfigError naming the flag for anything else."""
    if text is None:
        return None
    from splitinfer.errors import ConfigError

    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give two cuts A,B (e.g. {flag} 8,20)") from None
    return [a, b]
