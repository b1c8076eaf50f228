"""Modelled latency and device energy of a topology: layer segments on hardware, a link per crossing.

A step walks the segments in order; between two segments it crosses a link (one way: bytes / that
direction's bandwidth + half the link's RTT). Three shapes (`splitinfer.split.middle`, `split.ushape`):

    single  device [0,c) ─up─▶ server [c,L)+head ─token down─▶ device
    relay   device [0,A) ─hop 1 up─▶ edge [A,B) ─hop 2 up─▶ server [B,L)+head ─token down hop 2, hop 1─▶ device
    ushape  device [0,a) ─up─▶ server [a,b) ─hidden down─▶ device [b,L)+head   (the device samples)

TTFT = the prompt through every segment and crossing; TPOT = one token the same way. With one cut this is
`metrics.latency.estimate_latency` without the codec's compute. Stage times are the roofline of
`metrics.hardware` on the model's shape (modelled); the bytes per crossing are what the caller gives:
measured through the real codecs in a sweep job (`splitinfer.topologies`), modelled in `splitinfer plan`.
Device energy: its segments' time x its power, plus its radio on the crossings it sends or receives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from splitinfer.metrics.hardware import HardwareProfile, modelled_timings, side_time
from splitinfer.metrics.latency import TOKEN_ID_BYTES, LinkProfile


@dataclass(frozen=True)
class Segment:
    """Layers [first, last) of the model on one machine; `embed` / `head` add the embeddings / norm + head."""

    where: str  # a label: device, edge, server, device_tail
    first: int
    last: int
    hardware: HardwareProfile
    weight_bits: float
    embed: bool = False
    head: bool = False

    def components(self, shape) -> list:
        comps = shape.components  # [embeddings, layer 0, ..., layer L-1, norm + head]
        return ([comps[0]] if self.embed else []) + comps[self.first + 1:self.last + 1] + \
            ([comps[-1]] if self.head else [])


@dataclass(frozen=True)
class Crossing:
    """One way over a link: `per_token_*` bytes per position of a prefill / decode message, plus
    `per_message` bytes per message (a token id reply)."""

    name: str  # hop1, hop2, hop1_reply, downlink (a U-shape's return), ...
    link: LinkProfile
    direction: str  # up (towards the server) or down (towards the device)
    per_token_prefill: float = 0.0
    per_token_decode: float = 0.0
    per_message: float = 0.0
    device_radio: bool = False  # the device's radio sends or receives it (counts in its energy)

    def seconds(self, nbytes: float) -> float:
        wire = self.link.up_s(nbytes) if self.direction == "up" else self.link.down_s(nbytes)
        return wire + self.link.rtt_ms / 2e3


@dataclass(frozen=True)
class Topology:
    kind: str  # single | relay | ushape
    cuts: tuple[int, ...]
    segments: tuple[Segment, ...]
    crossings: tuple[Crossing, ...]


def chain(cuts, hardware: list[HardwareProfile], bits: list[float], links: list[LinkProfile],
          up_bytes: list[tuple[float, float]], num_layers: int) -> Topology:
    """A chain device [0,c0) -> ... -> [ck,L)+head: `hardware`/`bits` per segment, `links`/`up_bytes`
    ((prefill, decode) bytes per position) per hop; the token comes back over every hop."""
    cuts = list(cuts)
    bounds = [0, *cuts, num_layers]
    edges = ["edge"] if len(cuts) == 2 else [f"edge{i + 1}" for i in range(len(cuts) - 1)]
    names = ["device", *edges, "server"]
    segs = tuple(Segment(names[i], bounds[i], bounds[i + 1], hardware[i], bits[i], embed=i == 0,
                         head=i == len(cuts)) for i in range(len(cuts) + 1))
    ups = [Crossing(f"hop{i + 1}", links[i], "up", *up_bytes[i], device_radio=i == 0) for i in range(len(cuts))]
    downs = [Crossing(f"hop{i + 1}_reply", links[i], "down", per_message=TOKEN_ID_BYTES, device_radio=i == 0)
             for i in reversed(range(len(cuts)))]
    return Topology("single" if len(cuts) == 1 else "relay", tuple(cuts), segs, tuple(ups + downs))


def ushape(cuts, device: HardwareProfile, server: HardwareProfile, device_bits: float, server_bits: float,
           link: LinkProfile, up_bytes: tuple[float, float], down_bytes: tuple[float, float],
           num_layers: int) -> Topology:
    """device [0,a) -up-> server [a,b) -down (hidden states)-> device [b,L)+head, over one link."""
    a, b = cuts
    segs = (Segment("device", 0, a, device, device_bits, embed=True), Segment("server", a, b, server, server_bits),
            Segment("device_tail", b, num_layers, device, device_bits, head=True))
    return Topology("ushape", (a, b), segs, (Crossing("hop1", link, "up", *up_bytes, device_radio=True),
                                             Crossing("downlink", link, "down", *down_bytes, device_radio=True)))


def topology_latency(shape, topo: Topology, *, prompt_tokens: int, context_tokens: int, kv_bits: int = 16,
                     clients: int = 1) -> dict[str, Any]:
    """Modelled TTFT, TPOT and device energy per token of `topo` (module docstring), with each segment's and
    crossing's share: `<segment>_decode_s`, `<crossing>_decode_s`, `<crossing>_bytes_per_token_decode`."""
    T, C = prompt_tokens, context_tokens
    out: dict[str, Any] = {}
    ttft = tpot = device_s = radio_j = 0.0
    for seg in topo.segments:
        comps = seg.components(shape)
        on_device = seg.where.startswith("device")
        batch = 1 if on_device else clients
        pre = side_time(shape, comps, seg.hardware, "prefill", tokens=T, context=C, weight_bits=seg.weight_bits,
                        kv_bits=kv_bits, last_only=True)["s"]
        dec = side_time(shape, comps, seg.hardware, "decode", tokens=1, context=C, weight_bits=seg.weight_bits,
                        kv_bits=kv_bits, batch=batch)["s"]
        out[f"{seg.where}_decode_s"] = dec
        out[f"{seg.where}_prefill_s"] = pre
        ttft, tpot = ttft + pre, tpot + dec
        if on_device:
            device_s += dec
    for c in topo.crossings:
        dec_bytes = c.per_token_decode + c.per_message
        pre_s, dec_s = c.seconds(T * c.per_token_prefill + c.per_message), c.seconds(dec_bytes)
        out[f"{c.name}_decode_s"] = dec_s
        out[f"{c.name}_bytes_per_token_decode"] = dec_bytes
        ttft, tpot = ttft + pre_s, tpot + dec_s
        if c.device_radio:
            radio_j += c.link.radio_j(dec_bytes if c.direction == "up" else 0.0,
                                      dec_bytes if c.direction == "down" else 0.0)
    out.update(ttft_s=ttft, tpot_s=tpot, energy_j_per_token=device_s * topo.segments[0].hardware.power_w + radio_j,
               latency_source="modelled")
    return out


def baselines(shape, device: HardwareProfile, server: HardwareProfile, link: LinkProfile, device_bits: float,
              server_bits: float, *, prompt_tokens: int, context_tokens: int) -> dict[str, float]:
    """All on the device (no network) and all on the server (token ids up once, ids streamed back), modelled:
    the `*_all_device_s` / `*_all_server_s` keys of `metrics.latency.estimate_latency`."""
    T = prompt_tokens
    t = modelled_timings(shape, 0, device, server, prompt_tokens=T, context_tokens=context_tokens,
                         device_weight_bits=device_bits, server_weight_bits=server_bits)
    return {"ttft_all_device_s": T * t["model_all_device_prefill_s_per_token"],
            "tpot_all_device_s": t["model_all_device_decode_s_per_token"],
            "ttft_all_server_s": link.up_s(T * TOKEN_ID_BYTES) + link.rtt_ms / 1e3
            + T * t["model_all_server_prefill_s_per_token"] + link.down_s(TOKEN_ID_BYTES),
            "tpot_all_server_s": t["model_all_server_decode_s_per_token"] + link.down_s(TOKEN_ID_BYTES)}
