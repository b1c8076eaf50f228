"""Neurosurgeon-style latency and energy of a cut (Kang et al., ASPLOS 2017), from measured parts.

    TTFT(cut) = T·(device_prefill(cut) + encode)·slowdown + T·up_bytes/uplink + RTT
                + T·(server_prefill(cut) + decode)/server_speedup + reply_bytes/downlink
    TPOT(cut) = the same for one token: every generated token makes a round trip, because the
                device must run its layers on the token the server just picked.

Baselines: all on the device (the whole model × slowdown, no network) and all on the server (token
ids up once, the server decodes alone and streams ids back: no round trip per token).
Energy on the device: compute FLOPs × pJ/FLOP + radio time × the Huang et al. (MobiSys 2012)
power model P = α·throughput + β (tail energy ignored). All inputs are flat metric keys, so
`report.py` can re-evaluate stored jobs for any link and device.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """The device against this machine: `slowdown` multiplies measured device time."""

    name: str
    slowdown: float = 1.0
    pj_per_flop: float = 30.0
    source: str = ""

    def __post_init__(self) -> None:
        if self.slowdown <= 0:
            raise ValueError(f"device {self.name!r}: slowdown must be > 0 (1 = as fast as this machine)")


TOKEN_ID_BYTES = 4


def estimate_latency(m: dict, link: LinkProfile, device: DeviceProfile, prompt_tokens: int,
                     server_speedup: float = 1.0, server_load=None) -> dict[str, float]:
    """Latency/energy of one job's cut under `link` and `device`, from its flat metrics `m`.

    `server_load` (a `splitinfer.metrics.serving.ServerLoad`: clients per server and, for a batching
    server, a measured batched-step profile) makes `tpot_s` the per-token latency of one of those
    clients; the single-client value stays in `tpot_unloaded_s`, and `server_tokens_per_s` is what the
    server gives all its clients together."""
    T = prompt_tokens
    rtt = link.rtt_ms / 1e3
    enc, dec = m.get("codec_encode_s_per_token", 0.0), m.get("codec_decode_s_per_token", 0.0)
    up_p, up_d = m["up_bytes_per_token_prefill"], m["up_bytes_per_token_decode"]
    down = m.get("down_bytes_per_token_decode", TOKEN_ID_BYTES)
    pj = device.pj_per_flop * 1e-12
    out = {
        "ttft_s": T * (m["device_prefill_s_per_token"] + enc) * device.slowdown + link.up_s(T * up_p) + rtt
        + T * (m["server_prefill_s_per_token"] + dec) / server_speedup + link.down_s(down),
        "tpot_s": (m["device_decode_s_per_token"] + enc) * device.slowdown + link.up_s(up_d) + rtt
        + (m["server_decode_s_per_token"] + dec) / server_speedup + link.down_s(down),
        "ttft_all_device_s": T * m["whole_prefill_s_per_token"] * device.slowdown,
        "tpot_all_device_s": m["whole_decode_s_per_token"] * device.slowdown,
        "ttft_all_server_s": link.up_s(T * TOKEN_ID_BYTES) + rtt + T * m["whole_prefill_s_per_token"] / server_speedup
        + link.down_s(TOKEN_ID_BYTES),
        "tpot_all_server_s": m["whole_decode_s_per_token"] / server_speedup + link.down_s(TOKEN_ID_BYTES),
        "energy_j_per_token": m["device_flops_per_token"] * pj + link.radio_j(up_d, down),
        "energy_all_device_j_per_token": m["whole_flops_per_token"] * pj,
        "energy_all_server_j_per_token": link.radio_j(0, TOKEN_ID_BYTES),
    }
    if server_load is not None:
        server_s = (m["server_decode_s_per_token"] + dec) / server_speedup
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
        round_s = (n * (m["device_decode_s_per_token"] + enc) * device.slowdown + link.up_s(up) + rtt
                   + n * (m["server_decode_s_per_token"] + dec) / server_speedup + link.down_s(per_round * down))
        out["tpot_speculative_split_s"] = round_s / per_round
    else:
        out["tpot_speculative_split_s"] = base["tpot_s"]
    out["ttft_speculative_split_s"] = base["ttft_s"]
    kv = m.get("device_kv_bytes_per_token", 0.0)
    out["ttft_handoff_s"] = (T * (m["device_prefill_s_per_token"] + enc) * device.slowdown
                             + link.up_s(T * (m["up_bytes_per_token_prefill"] + kv)) + rtt
                             + T * (m["server_prefill_s_per_token"] + dec) / server_speedup + link.down_s(down))
    out["tpot_handoff_s"] = m["whole_decode_s_per_token"] / server_speedup + link.down_s(TOKEN_ID_BYTES)
    for mode in MODES:
        out[f"speedup_{mode}_vs_per_token"] = base["tpot_s"] / out[f"tpot_{mode}_s"]
    return out
