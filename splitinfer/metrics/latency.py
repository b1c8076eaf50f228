"""Neurosurgeon-style latency and energy of a cut (Kang et al., ASPLOS 2017).

    TTFT(cut) = T·(device_prefill(cut) + encode) + T·up_bytes/uplink + RTT
                + T·(server_prefill(cut) + decode) + reply_bytes/downlink
    TPOT(cut) = the same for one token: every generated token makes a round trip, because the
                device must run its layers on the token the server just picked.

Each side's stage time is *modelled* when the metrics carry the roofline keys `model_*`
(`splitinfer.metrics.hardware.modelled_timings`: each side's hardware profile applied to the model's
shape), else *measured* on this machine and scaled by a `DeviceProfile`'s slowdown (the server by
`server_speedup`). `latency_source` says which. Baselines: all on the device (no network) and all on the
server (token ids up once, the server decodes alone and streams ids back: no round trip per token).
Energy on the device: modelled, the device's power × its compute time; measured, compute FLOPs ×
pJ/FLOP; plus radio time × the Huang et al. (MobiSys 2012) power model P = α·throughput + β (tail
energy ignored). All inputs are flat metric keys, so `report.py` can re-evaluate stored jobs for any link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LinkProfile:
    """A network between device and server; see conf/link/*.yaml for each value's source."""

    name: str
    uplink_mbps: float
    downlink_mbps: float
    rtt_ms: float
    tx_mw_per_mbps: float = 0.0  # α_u of the radio power model
    rx_mw_per_mbps: float = 0.0  # α_d
    base_mw: float = 0.0  # β: radio power while active
    source: str = ""

    def __post_init__(self) -> None:
        if self.uplink_mbps <= 0 or self.downlink_mbps <= 0 or self.rtt_ms < 0:
            raise ValueError(f"link {self.name!r}: bandwidths must be > 0 Mbit/s and rtt_ms >= 0")

    def up_s(self, nbytes: float) -> float:
        return nbytes * 8 / (self.uplink_mbps * 1e6)

    def down_s(self, nbytes: float) -> float:
        return nbytes * 8 / (self.downlink_mbps * 1e6)

    def radio_j(self, up_bytes: float, down_bytes: float) -> float:
        up_w = (self.tx_mw_per_mbps * self.uplink_mbps + self.base_mw) / 1e3
        down_w = (self.rx_mw_per_mbps * self.downlink_mbps + self.base_mw) / 1e3
        return self.up_s(up_bytes) * up_w + self.down_s(down_bytes) * down_w


@dataclass(frozen=True)
class DeviceProfile:
    """How measured device time scales when no roofline is given: `slowdown` multiplies this machine's
    measured device time (`splitinfer report --slowdown`); hardware profiles (`metrics.hardware`) replace
    it in every job."""

    name: str
    slowdown: float = 1.0
    pj_per_flop: float = 30.0
    source: str = ""

    def __post_init__(self) -> None:
        if self.slowdown <= 0:
            raise ValueError(f"device {self.name!r}: slowdown must be > 0 (1 = as fast as this machine)")


TOKEN_ID_BYTES = 4


def side_times(m: dict, device: DeviceProfile | None = None, server_speedup: float = 1.0) -> dict[str, Any]:
    """Seconds per token of each side and phase (dp, dd: device prefill/decode; sp, sd: server; adp, add:
    the whole model on the device; asp, asd: on the server), the device's compute energy per decoded
    token, and whether they are 'modelled' (roofline keys present) or 'measured'."""
    if "model_device_decode_s_per_token" in m:
        t = {k: m[f"model_{side}_{phase}_s_per_token"] for k, side, phase in (
            ("dp", "device", "prefill"), ("dd", "device", "decode"), ("sp", "server", "prefill"),
            ("sd", "server", "decode"), ("adp", "all_device", "prefill"), ("add", "all_device", "decode"),
            ("asp", "all_server", "prefill"), ("asd", "all_server", "decode"))}
        power = m.get("model_device_power_w", 0.0)
        return {**t, "device_j": power * t["dd"], "all_device_j": power * t["add"], "source": "modelled"}
    slow = device.slowdown if device is not None else 1.0
    pj = (device.pj_per_flop if device is not None else 30.0) * 1e-12
    return {"dp": m["device_prefill_s_per_token"] * slow, "dd": m["device_decode_s_per_token"] * slow,
            "sp": m["server_prefill_s_per_token"] / server_speedup,
            "sd": m["server_decode_s_per_token"] / server_speedup,
            "adp": m["whole_prefill_s_per_token"] * slow, "add": m["whole_decode_s_per_token"] * slow,
            "asp": m["whole_prefill_s_per_token"] / server_speedup,
            "asd": m["whole_decode_s_per_token"] / server_speedup,
            "device_j": m["device_flops_per_token"] * pj, "all_device_j": m["whole_flops_per_token"] * pj,
            "source": "measured"}


def estimate_latency(m: dict, link: LinkProfile, device: DeviceProfile | None, prompt_tokens: int,
                     server_speedup: float = 1.0, server_load=None) -> dict[str, Any]:
    """Latency/energy of one job's cut under `link`, from its flat metrics `m` (modelled stage times when
    `m` has them, else measured ones scaled by `device`; see the module docstring).

    `server_load` (a `splitinfer.metrics.serving.ServerLoad`: clients per server and, for a batching
    server, a measured batched-step profile) makes `tpot_s` the per-token latency of one of those
    clients; the single-client value stays in `tpot_unloaded_s`, and `server_tokens_per_s` is what the
    server gives all its clients together."""
    T = prompt_tokens
    rtt = link.rtt_ms / 1e3
    enc, dec = m.get("codec_encode_s_per_token", 0.0), m.get("codec_decode_s_per_token", 0.0)
    up_p, up_d = m["up_bytes_per_token_prefill"], m["up_bytes_per_token_decode"]
    down = m.get("down_bytes_per_token_decode", TOKEN_ID_BYTES)
    t = side_times(m, device, server_speedup)
    out: dict[str, Any] = {
        "ttft_s": T * (t["dp"] + enc) + link.up_s(T * up_p) + rtt + T * (t["sp"] + dec) + link.down_s(down),
        "tpot_s": t["dd"] + enc + link.up_s(up_d) + rtt + t["sd"] + dec + link.down_s(down),
        "ttft_all_device_s": T * t["adp"],
        "tpot_all_device_s": t["add"],
        "ttft_all_server_s": link.up_s(T * TOKEN_ID_BYTES) + rtt + T * t["asp"] + link.down_s(TOKEN_ID_BYTES),
        "tpot_all_server_s": t["asd"] + link.down_s(TOKEN_ID_BYTES),
        "energy_j_per_token": t["device_j"] + link.radio_j(up_d, down),
        "energy_all_device_j_per_token": t["all_device_j"],
        "energy_all_server_j_per_token": link.radio_j(0, TOKEN_ID_BYTES),
        "latency_source": t["source"],
    }
    if server_load is not None:
        server_s = t["sd"] + dec
        out["tpot_unloaded_s"] = out["tpot_s"]
        out["tpot_s"] = server_load.tpot(out["tpot_s"], server_s)
        out["server_clients"] = server_load.clients
        out["server_tokens_per_s"] = server_load.clients / out["tpot_s"]
    out["speedup_vs_device"] = out["tpot_all_device_s"] / out["tpot_s"]
    out["speedup_vs_server"] = out["tpot_all_server_s"] / out["tpot_s"]
    return out


MODES = ("per_token_split", "speculative_split", "handoff", "all_device", "all_server")


def estimate_modes(m: dict, link: LinkProfile, device: DeviceProfile, prompt_tokens: int,
                   server_speedup: float = 1.0) -> dict[str, float]:
    """TTFT and time per output token of every way to run the model, from one job's flat metrics `m`
    (those `estimate_latency` reads), so `recommend` can compare them under any link and device:

    - per_token_split: one round trip per token (`estimate_latency`'s tpot_s);
    - speculative_split: a round sends the last token and γ drafts (`spec_positions_per_round` = γ+1
      positions through both sides, `spec_up_bytes_per_round` up) and yields `spec_tokens_per_round`
      tokens (accepted drafts + the server's own); TPOT = round time / tokens per round. The server's
      γ+1 positions are costed as γ+1 decode steps (an upper bound: a batched forward is cheaper). Without
      spec_* metrics (no `split.speculate` run) it equals per_token_split;
    - handoff: the device prefills and uploads its prompt hidden states and its KV cache once
      (`device_kv_bytes_per_token` per prompt token); the server then decodes alone;
    - all_device, all_server: as in `estimate_latency`.
    Keys: ttft_<mode>_s, tpot_<mode>_s, speedup_<mode>_vs_per_token."""
    base = estimate_latency(m, link, device, prompt_tokens, server_speedup)
    t = side_times(m, device, server_speedup)
    T = prompt_tokens
    rtt = link.rtt_ms / 1e3
    enc, dec = m.get("codec_encode_s_per_token", 0.0), m.get("codec_decode_s_per_token", 0.0)
    down = m.get("down_bytes_per_token_decode", TOKEN_ID_BYTES)
    out = {"ttft_per_token_split_s": base["ttft_s"], "tpot_per_token_split_s": base["tpot_s"],
           "ttft_all_device_s": base["ttft_all_device_s"], "tpot_all_device_s": base["tpot_all_device_s"],
           "ttft_all_server_s": base["ttft_all_server_s"], "tpot_all_server_s": base["tpot_all_server_s"]}
    per_round = m.get("spec_tokens_per_round")
    if per_round and per_round > 0:
        n = m.get("spec_positions_per_round", 1.0)
        up = m.get("spec_up_bytes_per_round", n * m["up_bytes_per_token_decode"])
        round_s = (n * (t["dd"] + enc) + link.up_s(up) + rtt + n * (t["sd"] + dec) + link.down_s(per_round * down))
        out["tpot_speculative_split_s"] = round_s / per_round
    else:
        out["tpot_speculative_split_s"] = base["tpot_s"]
    out["ttft_speculative_split_s"] = base["ttft_s"]
    kv = m.get("device_kv_bytes_per_token", 0.0)
    out["ttft_handoff_s"] = (T * (t["dp"] + enc) + link.up_s(T * (m["up_bytes_per_token_prefill"] + kv)) + rtt
                             + T * (t["sp"] + dec) + link.down_s(down))
    out["tpot_handoff_s"] = t["asd"] + link.down_s(TOKEN_ID_BYTES)
    for mode in MODES:
        out[f"speedup_{mode}_vs_per_token"] = base["tpot_s"] / out[f"tpot_{mode}_s"]
    return out
