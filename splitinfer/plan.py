"""Plan a split without weights: every cut of a model shape on a device and a server profile over a link.

For each cut the device's weight, KV and activation memory and whether it fits, modelled device and
server ms per token (prefill and decode; the server batching `clients` sequences), uplink bytes per
token, end-to-end TTFT and decode tokens/s, and the device's energy per token; then the recommended cut
under the constraints and why. Two baselines ride along: `all_server` (token ids up, the server runs
everything) and `all_device` (no network). Every figure is *modelled* (the roofline of
`splitinfer.metrics.hardware` on `splitinfer.models.shapes`), none measured. Used by `splitinfer plan`
and by the Hydra job `python -m splitinfer.run job=plan ...` (so it sweeps).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from splitinfer.errors import ConfigError
from splitinfer.metrics.hardware import HardwareProfile, modelled_timings
from splitinfer.metrics.latency import TOKEN_ID_BYTES, LinkProfile
from splitinfer.models.shapes import ModelShape, bits_of, effective_bits

COLUMNS = ("mode", "cut", "device_params", "device_weight_bytes", "device_kv_bytes", "device_act_bytes",
           "device_memory_bytes", "fits", "device_prefill_ms", "device_ms_per_token", "server_ms_per_token",
           "up_bytes_per_token", "ttft_ms", "e2e_ms_per_token", "decode_tokens_per_s", "device_mj_per_token",
           "device_bound", "dppl_ub_pct", "edge_memory_bytes", "edge_fits")  # edge_*: a relay row's edge
OBJECTIVES = ("latency", "energy")
WIRE_HEADER_BYTES = 16  # per message: codec header (scale, shape), an order of magnitude


@dataclass(frozen=True)
class PlanOptions:
    """What a plan assumes (conf/config.yaml `plan:`, or `splitinfer plan`'s flags)."""

    codec_bits: float = 8.0
    weight_bits: int = 4
    server_weight_bits: int = 16
    group_size: int = 32
    kv_bits: int = 16
    prompt_tokens: int = 512
    context_tokens: int = 1024
    clients: int = 1
    memory_budget_gb: float | None = None
    energy_budget_mj: float | None = None
    objective: str = "latency"
    max_delta_ppl: float | None = None  # a quality bound: only cuts measured within it (needs quality_csv)
    quality_csv: str | None = None  # measured quality per cut (experiments/quantized_device_half/results.csv)

    def __post_init__(self) -> None:
        for name in ("weight_bits", "server_weight_bits", "kv_bits"):
            bits_of(getattr(self, name))
        if not 0 < self.codec_bits <= 32:
            raise ConfigError(f"codec_bits={self.codec_bits}: give the bits per activation value on the wire, 0 < "
                              "bits <= 32 (e.g. 16 for fp16, 8 for int8, 3.4 for ec40)")
        if self.prompt_tokens < 1 or self.context_tokens < self.prompt_tokens or self.clients < 1:
            raise ConfigError(f"prompt_tokens={self.prompt_tokens}, context_tokens={self.context_tokens}, clients="
                              f"{self.clients}: need 1 <= prompt_tokens <= context_tokens and clients >= 1")
        if self.max_delta_ppl is not None and not self.quality_csv:
            raise ConfigError("max_delta_ppl needs quality_csv: a CSV of measured quality per cut (columns cut, "
                              "device_weights, delta_ppl_pct_ci_high; e.g. experiments/quantized_device_half/"
                              "results.csv)")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective={self.objective!r} is not one of {list(OBJECTIVES)}")


def _max_context(shape_config_max: int | None, opts: PlanOptions, name: str) -> None:
    if shape_config_max and opts.context_tokens > shape_config_max:
        raise ConfigError(f"context_tokens={opts.context_tokens} exceeds {name}'s max_position_embeddings "
                          f"({shape_config_max}); give a context of at most {shape_config_max} tokens")


def measured_quality(path: str, weight_bits: int) -> dict[int, float]:
    """Per cut, the largest upper end of the 95 % interval of |Δppl| measured at `weight_bits` device weights
    (rows whose device_weights starts with int<bits>, or fp32/fp16 for 16+) in a quality CSV."""
    import csv

    from splitinfer.errors import NotFoundError

    try:
        rows = list(csv.DictReader(open(path, newline="")))
    except OSError:
        raise NotFoundError(f"quality_csv {path!r} cannot be read; give a CSV written by "
                            "experiments/quantized_device_half/run.py") from None
    prefix = (f"int{weight_bits}",) if weight_bits < 16 else ("fp",)
    out: dict[int, float] = {}
    for r in rows:
        try:
            cut = int(r["cut"])
            bound = max(abs(float(r["delta_ppl_pct_ci_low"])), abs(float(r["delta_ppl_pct_ci_high"])))
        except (KeyError, ValueError):
            raise ConfigError(f"quality_csv {path!r} needs columns cut, device_weights, delta_ppl_pct_ci_low and "
                              "delta_ppl_pct_ci_high") from None
        if str(r.get("device_weights", "")).startswith(prefix):
            out[cut] = max(out.get(cut, 0.0), bound)
    return out


def plan_rows(shape: ModelShape, device: HardwareProfile, server: HardwareProfile, link: LinkProfile,
              opts: PlanOptions) -> list[dict[str, Any]]:
    """One row per cut 0..L (mode `split`) plus the `all_server` and `all_device` baselines."""
    T, C = opts.prompt_tokens, opts.context_tokens
    budget = (opts.memory_budget_gb if opts.memory_budget_gb is not None else device.memory_gb) * 1e9
    act_bytes = T * shape.hidden_size * 2 * 4  # prefill activations in flight: ~4 hidden-sized fp16 buffers
    up = shape.hidden_size * opts.codec_bits / 8 + WIRE_HEADER_BYTES
    rtt = link.rtt_ms / 1e3
    group = opts.group_size if opts.weight_bits < 16 else 0
    dev_bits = effective_bits(opts.weight_bits, group)  # what a decode step streams, scales included
    rows = []
    for cut in range(shape.num_layers + 1):
        comps = shape.side(cut, "device")
        t = modelled_timings(shape, cut, device, server, prompt_tokens=T, context_tokens=C,
                             device_weight_bits=dev_bits, server_weight_bits=opts.server_weight_bits,
                             kv_bits=opts.kv_bits, clients=opts.clients)
        dev_s, srv_s = t["model_device_decode_s_per_token"], t["model_server_decode_s_per_token"]
        e2e = dev_s + link.up_s(up) + rtt + srv_s + link.down_s(TOKEN_ID_BYTES)
        ttft = (T * t["model_device_prefill_s_per_token"] + link.up_s(T * up) + rtt
                + T * t["model_server_prefill_s_per_token"] + link.down_s(TOKEN_ID_BYTES))
        weights = shape.weight_bytes(comps, opts.weight_bits, group)
        kv = shape.kv_bytes(comps, C, opts.kv_bits)
        dec = shape.decode_cost(comps[-1], C, dev_bits, opts.kv_bits) if cut else None
        rows.append(_row("split", cut, shape.params(comps), weights, kv, act_bytes, budget,
                         T * t["model_device_prefill_s_per_token"], dev_s, srv_s, up, ttft, e2e,
                         device.energy_j(dev_s) + link.radio_j(up, TOKEN_ID_BYTES),
                         device.bound(dec.flops, dec.bytes) if dec else "memory"))
    t = modelled_timings(shape, 0, device, server, prompt_tokens=T, context_tokens=C,
                         device_weight_bits=dev_bits, server_weight_bits=opts.server_weight_bits,
                         kv_bits=opts.kv_bits, clients=opts.clients)
    srv = t["model_all_server_decode_s_per_token"]
    rows.append(_row("all_server", None, 0, 0.0, 0.0, 0.0, budget, 0.0, 0.0, srv, TOKEN_ID_BYTES,
                     link.up_s(T * TOKEN_ID_BYTES) + rtt + T * t["model_all_server_prefill_s_per_token"]
                     + link.down_s(TOKEN_ID_BYTES), srv + link.down_s(TOKEN_ID_BYTES),
                     link.radio_j(0, TOKEN_ID_BYTES), "-"))
    everything = shape.components
    dev = t["model_all_device_decode_s_per_token"]
    rows.append(_row("all_device", shape.num_layers, shape.total_params,
                     shape.weight_bytes(everything, opts.weight_bits, group),
                     shape.kv_bytes(everything, C, opts.kv_bits), act_bytes, budget,
                     T * t["model_all_device_prefill_s_per_token"], dev, 0.0, 0,
                     T * t["model_all_device_prefill_s_per_token"], dev, device.energy_j(dev), "-"))
    return rows


def _row(mode, cut, params, weights, kv, act, budget, dev_prefill_s, dev_s, srv_s, up, ttft_s, e2e_s, dev_j,
         bound) -> dict[str, Any]:
    memory = weights + kv + act
    return {"mode": mode, "cut": cut, "device_params": int(params), "device_weight_bytes": int(weights),
            "device_kv_bytes": int(kv), "device_act_bytes": int(act), "device_memory_bytes": int(memory),
            "fits": bool(memory <= budget), "device_prefill_ms": dev_prefill_s * 1e3,
            "device_ms_per_token": dev_s * 1e3, "server_ms_per_token": srv_s * 1e3,
            "up_bytes_per_token": float(up), "ttft_ms": ttft_s * 1e3, "e2e_ms_per_token": e2e_s * 1e3,
            "decode_tokens_per_s": 1e3 / (e2e_s * 1e3) if e2e_s > 0 else float("inf"),
            "device_mj_per_token": dev_j * 1e3, "device_bound": bound, "dppl_ub_pct": None,
            "edge_memory_bytes": None, "edge_fits": None}


def topology_rows(shape: ModelShape, device: HardwareProfile, server: HardwareProfile, link: LinkProfile,
                  opts: PlanOptions, *, relay: list[int] | None = None, ushape: list[int] | None = None,
                  edge: HardwareProfile | None = None, hop_link: LinkProfile | None = None) -> list[dict[str, Any]]:
    """A row (mode `relay` / `ushape`, cut "A,B") for a relay hop at `relay` = [A, B] (edge `edge`, edge ->
    server over `hop_link`) and a U-shape at `ushape` = [a, b]: the same columns as a cut's, modelled by
    `metrics.hops` with `codec_bits` per value on every crossing (the device's link carries hop 1 / both
    U-shape crossings)."""
    from splitinfer.metrics import hops

    T, C = opts.prompt_tokens, opts.context_tokens
    budget = (opts.memory_budget_gb if opts.memory_budget_gb is not None else device.memory_gb) * 1e9
    act_bytes = T * shape.hidden_size * 2 * 4
    up = shape.hidden_size * opts.codec_bits / 8 + WIRE_HEADER_BYTES
    group = opts.group_size if opts.weight_bits < 16 else 0
    dev_bits = effective_bits(opts.weight_bits, group)
    L, rows = shape.num_layers, []
    for kind, cuts in (("relay", relay), ("ushape", ushape)):
        if cuts is None:
            continue
        a, b = cuts
        if not 1 <= a < b < L:
            raise ConfigError(f"--{kind.replace('ushape', 'u-shape')} {a},{b}: give two cuts 1 <= A < B < {L} for "
                              f"{shape.name} ({L} layers)")
        if kind == "relay":
            if edge is None or hop_link is None:
                raise ConfigError("a relay plan needs the edge's hardware profile and the edge -> server link "
                                  "(--edge-hardware, --hop-link)")
            topo = hops.chain([a, b], [device, edge, server], [dev_bits, opts.server_weight_bits,
                                                               opts.server_weight_bits],
                              [link, hop_link], [(up, up), (up, up)], L)
        else:
            topo = hops.ushape([a, b], device, server, dev_bits, opts.server_weight_bits, link, (up, up), (up, up), L)
        t = hops.topology_latency(shape, topo, prompt_tokens=T, context_tokens=C, kv_bits=opts.kv_bits,
                                  clients=opts.clients)
        on_device = [c for seg in topo.segments if seg.where.startswith("device") for c in seg.components(shape)]
        dev_s = sum(v for k, v in t.items() if k.startswith("device") and k.endswith("_decode_s"))
        dev_pre = sum(v for k, v in t.items() if k.startswith("device") and k.endswith("_prefill_s"))
        srv_s = sum(t[f"{seg.where}_decode_s"] for seg in topo.segments if not seg.where.startswith("device"))
        dec = shape.decode_cost(on_device[-1], C, dev_bits, opts.kv_bits)
        rows.append(_row(kind, f"{a},{b}", shape.params(on_device), shape.weight_bytes(on_device, opts.weight_bits,
                                                                                        group),
                         shape.kv_bytes(on_device, C, opts.kv_bits), act_bytes, budget, dev_pre, dev_s, srv_s, up,
                         t["ttft_s"], t["tpot_s"], t["energy_j_per_token"], device.bound(dec.flops, dec.bytes)))
        if kind == "relay":  # the edge holds its slice too: its weights (server bits) and KV per client
            comps = topo.segments[1].components(shape)
            rows[-1]["edge_memory_bytes"] = int(shape.weight_bytes(comps, opts.server_weight_bits)
                                                + opts.clients * shape.kv_bytes(comps, C, opts.kv_bits))
            rows[-1]["edge_fits"] = rows[-1]["edge_memory_bytes"] <= edge.memory_gb * 1e9
    return rows


def topology_comparison(rows: list[dict[str, Any]], best: dict[str, Any] | None) -> str | None:
    """One line setting the relay / U-shape rows beside the recommended cut, on the same device link."""
    others = [r for r in rows if r["mode"] in ("relay", "ushape")]
    if not others:
        return None
    parts = [f"{'U-shape' if r['mode'] == 'ushape' else 'relay'} {r['cut']}: {r['e2e_ms_per_token']:.1f} ms/token, "
             f"TTFT {r['ttft_ms']:.0f} ms, device {r['device_memory_bytes'] / 1e9:.2f} GB, "
             f"{r['device_mj_per_token']:.1f} mJ/token"
             + (f", edge {r['edge_memory_bytes'] / 1e9:.2f} GB ({'fits' if r['edge_fits'] else 'does NOT fit'})"
                if r["edge_memory_bytes"] is not None else "") for r in others]
    head = (f"the recommended cut {best['cut']}: {best['e2e_ms_per_token']:.1f} ms/token, TTFT {best['ttft_ms']:.0f} "
            f"ms; " if best is not None else "")
    return "topologies on the same device link (modelled): " + head + "; ".join(parts)


def recommend(rows: list[dict[str, Any]], opts: PlanOptions) -> tuple[dict[str, Any] | None, str]:
    """The best split row under the constraints (fits the memory budget, within the energy budget and, with
    `max_delta_ppl`, measured within that quality bound) by the objective, and one paragraph saying why."""
    key = "e2e_ms_per_token" if opts.objective == "latency" else "device_mj_per_token"
    splits = [r for r in rows if r["mode"] == "split"]
    ok = [r for r in splits if r["fits"] and (opts.energy_budget_mj is None
                                               or r["device_mj_per_token"] <= opts.energy_budget_mj)
          and (opts.max_delta_ppl is None or (r["dppl_ub_pct"] is not None
                                              and r["dppl_ub_pct"] <= opts.max_delta_ppl))]
    base = {r["mode"]: r for r in rows if r["mode"] != "split"}
    if not ok:
        why = (f"no cut meets the constraints: the smallest device side (cut 0) needs "
               f"{splits[0]['device_memory_bytes'] / 1e9:.2f} GB"
               + (f" or more than {opts.energy_budget_mj} mJ/token" if opts.energy_budget_mj is not None else "")
               + (f", or none measured within |Δppl| <= {opts.max_delta_ppl} %" if opts.max_delta_ppl is not None
                  else "")
               + f"; all-server runs at {base['all_server']['e2e_ms_per_token']:.1f} ms/token")
        return None, why
    best = min(ok, key=lambda r: (r[key], r["cut"]))
    dev = base["all_device"]
    why = (f"cut {best['cut']} minimises {key} ({best[key]:.2f}) among the {len(ok)} of {len(splits)} cuts that meet the constraints "
           f"(device {best['device_memory_bytes'] / 1e9:.2f} GB"
           + (f", <= {opts.energy_budget_mj} mJ/token" if opts.energy_budget_mj is not None else "")
           + (f", measured |Δppl| <= {best['dppl_ub_pct']:.2f} % (95 % upper bound; limit {opts.max_delta_ppl})"
              if opts.max_delta_ppl is not None else "")
           + f"): {best['e2e_ms_per_token']:.1f} ms/token = device {best['device_ms_per_token']:.1f} + server "
           f"{best['server_ms_per_token']:.1f} + link; all-server {base['all_server']['e2e_ms_per_token']:.1f} "
           f"ms/token, all-on-device {dev['e2e_ms_per_token']:.1f} ms/token"
           + ("" if dev["fits"] else f" (does not fit: {dev['device_memory_bytes'] / 1e9:.2f} GB)"))
    return best, why


def format_table(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """The rows as a Markdown-style table, CSV or JSON."""
    if fmt == "json":
        return json.dumps(rows, indent=1)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    cols = ("mode", "cut", "device_params", "device_memory_bytes", "fits", "device_ms_per_token",
            "server_ms_per_token", "up_bytes_per_token", "ttft_ms", "e2e_ms_per_token", "device_mj_per_token")

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        if isinstance(v, int) and not isinstance(v, bool) and v >= 10**6:
            return f"{v / 1e6:.0f}M"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def make_plan(model: str, hardware: str, server_hardware: str, link: str, opts: PlanOptions, *,
              relay: list[int] | None = None, ushape: list[int] | None = None, edge_hardware: str | None = None,
              hop_link: str | None = None) -> tuple[ModelShape, list[dict[str, Any]], dict[str, Any] | None, str]:
    """Load the shape and profiles by name, check the context, and plan every cut (and, when given, a relay
    hop at `relay` = [A, B] via `edge_hardware` and `hop_link`, and a U-shape at `ushape` = [a, b])."""
    from splitinfer.configs import build
    from splitinfer.metrics.hardware import load_hardware
    from splitinfer.models.shapes import load_shape

    dev, srv = load_hardware(hardware), load_hardware(server_hardware)
    lp = build("link", link, LinkProfile)
    shape = load_shape(model)
    _max_context(shape.max_positions, opts, shape.name)
    rows = plan_rows(shape, dev, srv, lp, opts)
    if relay is not None or ushape is not None:
        rows += topology_rows(shape, dev, srv, lp, opts, relay=relay, ushape=ushape,
                              edge=load_hardware(edge_hardware) if relay is not None else None,
                              hop_link=build("link", hop_link, LinkProfile) if relay is not None else None)
    quality = measured_quality(opts.quality_csv, opts.weight_bits) if opts.quality_csv else {}
    for r in rows:
        r["dppl_ub_pct"] = quality.get(r["cut"]) if r["mode"] == "split" else None
    server_need = shape.weight_bytes(shape.components, opts.server_weight_bits) + \
        opts.clients * shape.kv_bytes(shape.components, opts.context_tokens, opts.kv_bits)
    if server_need > srv.memory_gb * 1e9 and not any(r["fits"] for r in rows if r["mode"] != "all_server"):
        raise ConfigError(f"{shape.name} at {opts.context_tokens} tokens x {opts.clients} clients fits neither "
                          f"{dev.name} ({dev.memory_gb} GB) nor {srv.name} ({srv.memory_gb} GB, needs "
                          f"{server_need / 1e9:.1f} GB); give a shorter context, fewer clients or fewer weight bits")
    best, why = recommend(rows, opts)
    compared = topology_comparison(rows, best)
    return shape, rows, best, why + (f"\n{compared}" if compared else "")


def run_plan_job(cfg, out: Path) -> dict[str, Any]:
    """The Hydra form (`python -m splitinfer.run job=plan model=llama3_1_8b hardware=... link=...`): writes
    plan.csv and metrics.json (the recommended row's figures, flat) in the job's folder."""
    import time

    t0 = time.perf_counter()
    model = _model_choice(cfg)
    opts = PlanOptions(**{k: v for k, v in dict(cfg.plan).items()})
    hw = str(cfg.hardware.name)
    link = str(cfg.link.name)
    shape, rows, best, why = make_plan(model, hw, str(cfg.get("server_hardware", "h100")), link, opts,
                                       **_topology_args(cfg))
    (out / "plan.csv").write_text(format_table(rows, "csv"))
    metrics: dict[str, Any] = {"name": cfg.name, "job": "plan", "model": shape.name, "hardware": hw,
                               "server_hardware": str(cfg.get("server_hardware")), "link": link,
                               "num_layers": shape.num_layers, "total_params": shape.total_params,
                               **{f"plan_{k}": v for k, v in asdict(opts).items()}, "recommendation": why,
                               "figures": "modelled"}
    if best is not None:
        metrics.update({f"best_{k}": v for k, v in best.items()})
    metrics["job_wall_s"] = time.perf_counter() - t0
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str) + "\n")
    print(why)
    return metrics


def _topology_args(cfg) -> dict[str, Any]:
    """make_plan's relay / U-shape arguments from the job's `topology` node (cuts [split.cut, cut_b])."""
    topo = cfg.get("topology")
    kind = str(topo.get("kind", "single")) if topo is not None else "single"
    if kind == "single":
        return {}
    for key in ("hop_codec", "down_codec"):
        if topo.get(key) is not None:
            raise ConfigError(f"topology.{key}={topo.get(key)!r} with job=plan: a plan models every crossing at "
                              "plan.codec_bits; leave it null and set plan.codec_bits")
    cuts = [int(cfg.split.cut), int(topo.cut_b)]
    if kind == "relay":
        return {"relay": cuts, "edge_hardware": str(topo.edge_hardware), "hop_link": str(topo.hop_link)}
    return {"ushape": cuts}


def _model_choice(cfg) -> str:
    """The shape the job names: a conf/model entry with a `config:` block, else model.name (a folder)."""
    if cfg.model.get("config") is None:
        return str(cfg.model.name)
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices["model"])
    except (ValueError, ImportError, KeyError):
        return str(cfg.model.name)
