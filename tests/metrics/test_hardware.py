"""Hardware profiles and the roofline: hand-made numbers, every shipped profile, modelled latency keys."""

from __future__ import annotations

import pytest

from splitinfer.configs import available
from splitinfer.errors import ConfigError
from splitinfer.metrics.hardware import HardwareProfile, load_hardware, modelled_timings
from splitinfer.metrics.latency import LinkProfile, estimate_latency
from splitinfer.models.shapes import load_shape

HW = HardwareProfile("toy", peak_tflops={"fp32": 1.0, "fp16": 2.0, "int8": 4.0}, memory_bandwidth_gbs=10.0,
                     layer_overhead_us=100.0, compute_efficiency=0.5, memory_efficiency=0.5, source="hand-made")


def test_roofline_is_the_larger_roof_plus_overhead():
    # fp16 at 2 TFLOP/s x 0.5 = 1e12 FLOP/s; 10 GB/s x 0.5 = 5e9 B/s
    assert HW.time_s(1e12, 0) == pytest.approx(1.0 + 1e-4)
    assert HW.time_s(1e9, 5e9) == pytest.approx(1.0 + 1e-4)  # memory-bound
    assert HW.bound(1e9, 5e9) == "memory" and HW.bound(1e13, 1) == "compute"
    assert HW.peak_flops("int4") == 4e12  # no int4 units: the int8 rate
    assert HW.energy_j(2.0) == pytest.approx(10.0)  # default 5 W


def test_every_shipped_profile_loads_and_cites_sources():
    names = available("hardware")
    assert {"snapdragon_8_gen3", "dimensity_9300", "apple_a17_pro", "tensor_g3", "jetson_orin_nano",
            "raspberry_pi_5", "l4", "a100", "h100", "cpu_server", "this_machine"} <= set(names)
    for name in names:
        hw = load_hardware(name)
        assert hw.source and hw.peak_flops() > 0


def test_bad_profiles_are_one_clear_line():
    with pytest.raises(ConfigError, match="hardware 'iphone' is not one of .*apple_a17_pro"):
        load_hardware("iphone")
    with pytest.raises(ConfigError, match="peak_tflops needs keys"):
        HardwareProfile("x", peak_tflops={"fp64": 1.0})


def test_8b_decode_on_an_h100_is_memory_bound_at_the_datasheet_bandwidth():
    s = load_shape("llama3_1_8b")
    h100 = load_hardware("h100")
    t = modelled_timings(s, 0, load_hardware("snapdragon_8_gen3"), h100, prompt_tokens=16, context_tokens=64)
    weights = s.weight_bytes(s.components[1:], 16)  # a decode step reads one embedding row, not the table
    floor = weights / (h100.memory_bandwidth_gbs * 1e9 * h100.memory_efficiency)
    assert floor < t["model_all_server_decode_s_per_token"] < floor * 1.1
    # the device half grows with the cut and the server half shrinks
    t8 = modelled_timings(s, 8, load_hardware("snapdragon_8_gen3"), h100, prompt_tokens=16, context_tokens=64)
    assert t8["model_device_decode_s_per_token"] > t["model_device_decode_s_per_token"]
    assert t8["model_server_decode_s_per_token"] < t["model_server_decode_s_per_token"]


def test_batching_amortises_the_weights():
    s, h100 = load_shape("llama3_2_1b"), load_hardware("h100")
    one = modelled_timings(s, 4, HW, h100, prompt_tokens=8, context_tokens=64, clients=1)
    many = modelled_timings(s, 4, HW, h100, prompt_tokens=8, context_tokens=64, clients=32)
    assert many["model_server_decode_s_per_token"] < 32 * one["model_server_decode_s_per_token"] / 4


def test_estimate_latency_prefers_modelled_times():
    s = load_shape("llama3_2_1b")
    m = {"up_bytes_per_token_prefill": 4096.0, "up_bytes_per_token_decode": 4096.0,
         **modelled_timings(s, 4, load_hardware("snapdragon_8_gen3"), load_hardware("h100"), prompt_tokens=8,
                            context_tokens=64)}
    link = LinkProfile("t", 8.0, 8.0, 10.0)
    r = estimate_latency(m, link, None, 8)
    assert r["latency_source"] == "modelled"
    assert r["tpot_s"] == pytest.approx(m["model_device_decode_s_per_token"] + 4096e-6 + 0.01
                                        + m["model_server_decode_s_per_token"] + 4e-6)
    assert r["energy_j_per_token"] == pytest.approx(6.0 * m["model_device_decode_s_per_token"])
