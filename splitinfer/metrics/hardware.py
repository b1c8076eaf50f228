"""Hardware profiles and the roofline model (LLM-Viewer style): modelled time and energy of model parts.

A profile describes a device by what it is — peak FLOP/s per precision, memory bandwidth, memory one app
or model may use, sustained power, a fixed per-layer overhead, and efficiency factors (the fraction of
peak compute and bandwidth a real runtime reaches). The time of one component for some work is

    t = max(flops / (peak[precision] · compute_efficiency), bytes / (bandwidth · memory_efficiency))
        + layer_overhead

and its energy power × t. Profiles live in conf/hardware/*.yaml, each figure with its source; the
`this_machine` profile's efficiency factors and overhead are fitted by `splitinfer calibrate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from splitinfer.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "int8", "int4")


@dataclass(frozen=True)
class HardwareProfile:
    """One device or server, for the roofline model; see conf/hardware/*.yaml for each value's source."""

    name: str
    kind: str = "phone"  # phone | edge | server | cpu
    peak_tflops: dict[str, float] = field(default_factory=dict)  # per precision (int: TOPS)
    memory_bandwidth_gbs: float = 50.0
    memory_gb: float = 8.0  # what one app / model may use
    power_w: float = 5.0  # sustained power while computing
    layer_overhead_us: float = 0.0  # fixed cost per component call (kernel launches, thread wake-ups)
    compute_efficiency: float = 0.5  # fraction of peak FLOP/s reached on matmuls
    memory_efficiency: float = 0.7  # fraction of peak bandwidth reached streaming weights
    compute_precision: str = "fp16"  # what its runtime multiplies in (weight-only quantization dequantizes)
    source: str = ""

    def __post_init__(self) -> None:
        bad = sorted(set(self.peak_tflops) - set(PRECISIONS))
        if bad or not self.peak_tflops:
            raise ConfigError(f"hardware {self.name!r}: peak_tflops needs keys among {list(PRECISIONS)}, got "
                              f"{sorted(self.peak_tflops)}; fix conf/hardware/{self.name}.yaml")
        if self.compute_precision not in self.peak_tflops:
            raise ConfigError(f"hardware {self.name!r}: compute_precision {self.compute_precision!r} has no "
                              f"peak_tflops entry (it has {sorted(self.peak_tflops)})")
        if min(self.memory_bandwidth_gbs, self.memory_gb, self.compute_efficiency, self.memory_efficiency) <= 0 \
                or self.power_w < 0 or self.layer_overhead_us < 0:
            raise ConfigError(f"hardware {self.name!r}: bandwidth, memory and efficiencies must be > 0 and power, "
                              "overhead >= 0")

    def peak_flops(self, precision: str | None = None) -> float:
        """FLOP/s at `precision` (the profile's compute precision by default); a missing low precision falls
        back to the next higher one it lists (no int4 units: int4 runs at the int8 rate)."""
        p = precision or self.compute_precision
        order = list(PRECISIONS)
        for q in reversed(order[:order.index(p) + 1]) if p in order else []:
            if q in self.peak_tflops:
                return self.peak_tflops[q] * 1e12
        raise ConfigError(f"precision {p!r} is not one of {list(PRECISIONS)}")

    def time_s(self, flops: float, nbytes: float, calls: int = 1, precision: str | None = None) -> float:
        """Roofline time of work of `flops` and `nbytes` split over `calls` component calls."""
        compute = flops / (self.peak_flops(precision) * self.compute_efficiency)
        memory = nbytes / (self.memory_bandwidth_gbs * 1e9 * self.memory_efficiency)
        return max(compute, memory) + calls * self.layer_overhead_us * 1e-6

    def bound(self, flops: float, nbytes: float, precision: str | None = None) -> str:
        """'compute' or 'memory': which roof the work sits under."""
        compute = flops / (self.peak_flops(precision) * self.compute_efficiency)
        memory = nbytes / (self.memory_bandwidth_gbs * 1e9 * self.memory_efficiency)
        return "compute" if compute >= memory else "memory"

    def energy_j(self, seconds: float) -> float:
        return self.power_w * seconds


def load_hardware(name: str) -> HardwareProfile:
    """conf/hardware/NAME.yaml as a profile; a ConfigError naming the profiles if there is none."""
    from splitinfer.configs import build

    return build("hardware", name, HardwareProfile)


def side_time(shape, comps: list, hw: HardwareProfile, phase: str, *, tokens: int, context: int,
              weight_bits: float, kv_bits: int = 16, batch: int = 1, last_only: bool = False) -> dict[str, Any]:
    """Modelled seconds, FLOPs and bytes of `comps` (a `ModelShape.side`) on `hw` for one phase:
    'prefill' of `tokens` tokens, or 'decode' of one token per sequence for `batch` sequences at `context`."""
    flops = nbytes = seconds = 0.0
    for c in comps:
        if phase == "prefill":
            cost = shape.prefill_cost(c, tokens, weight_bits, kv_bits, last_only=last_only and c.name == "head")
        else:
            cost = shape.decode_cost(c, context, weight_bits, kv_bits, batch=batch)
        flops += cost.flops
        nbytes += cost.bytes
        seconds += hw.time_s(cost.flops, cost.bytes)
    return {"s": seconds, "flops": flops, "bytes": nbytes}


def modelled_timings(shape, cut: int, device: HardwareProfile, server: HardwareProfile, *, prompt_tokens: int,
                     context_tokens: int, device_weight_bits: float = 16, server_weight_bits: float = 16,
                     kv_bits: int = 16, clients: int = 1) -> dict[str, float]:
    """Modelled seconds per token of each side at `cut` (and of the whole model on either side), the flat
    `model_*` keys `estimate_latency` prefers to measured ones. Prefill is per prompt token (a prefill of
    `prompt_tokens`, the LM head on the last one only); decode is one step at `context_tokens`, the server's
    batched over `clients` sequences (its weights read once per step)."""
    T, C = prompt_tokens, context_tokens
    out: dict[str, float] = {}
    sides = {"device": (shape.side(cut, "device"), device, device_weight_bits, 1),
             "server": (shape.side(cut, "server"), server, server_weight_bits, clients),
             "all_device": (shape.components, device, device_weight_bits, 1),
             "all_server": (shape.components, server, server_weight_bits, clients)}
    for key, (comps, hw, bits, batch) in sides.items():
        pre = side_time(shape, comps, hw, "prefill", tokens=T, context=C, weight_bits=bits, kv_bits=kv_bits,
                        last_only=True)
        dec = side_time(shape, comps, hw, "decode", tokens=1, context=C, weight_bits=bits, kv_bits=kv_bits,
                        batch=batch)
        out[f"model_{key}_prefill_s_per_token"] = pre["s"] / T
        out[f"model_{key}_decode_s_per_token"] = dec["s"]
        out[f"model_{key}_decode_flops_per_token"] = dec["flops"] / batch
        out[f"model_{key}_decode_bytes_per_token"] = dec["bytes"] / batch
    out["model_device_power_w"] = device.power_w
    return out
