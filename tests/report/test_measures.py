"""Quality bound, codec fidelity tiers, and strongest-attack leakage per configuration."""

from __future__ import annotations

from splitinfer.report.measures import (
    LEAK,
    LEAK_ATTACK,
    LEAK_PII,
    QUALITY_BOUND,
    QUALITY_BOUND_SOURCE,
    annotate,
    ci_note,
    codec_fidelity,
    configurations,
    quality_bound,
)

from .fake_sweep import row, with_ci


def test_quality_bound_is_the_upper_end_of_the_abs_interval():
    lucky = with_ci(row(5, "int3", delta_ppl_pct=-0.86), (-1.5, -0.2))
    assert quality_bound(lucky) == (1.5, "ci95")
    straddles = with_ci(row(5, "int8", delta_ppl_pct=0.08), (-0.05, 0.21))
    assert quality_bound(straddles) == (0.21, "ci95")
    old = row(5, "int8", delta_ppl_pct=-0.3)  # metrics from before the intervals: unknown, point fallback
    assert quality_bound(old) == (0.3, "point")
    assert quality_bound({"cut": 1}) == (None, None)


def test_annotate_tolerates_old_metrics_and_says_so():
    rows = [row(0, "fp16"), with_ci(row(5, "int8"), (0.0, 0.2)), {"cut": 3, "codec": "int8"}]
    annotate(rows)
    assert rows[0][QUALITY_BOUND_SOURCE] == "point" and rows[1][QUALITY_BOUND_SOURCE] == "ci95"
    assert QUALITY_BOUND not in rows[2]
    assert "1 of 2 jobs have no Δppl interval" in ci_note(rows)
    assert "All 1 jobs" in ci_note(rows[1:2])


def test_codec_fidelity_order():
    names = [
        "top10_fp16",
        "ec40",
        "int3_b64_outlier_rot_log8_tc",
        "int4_b32",
        "int6_b64_tc",
        "int8_token",
        "petals_blockwise8",
        "int8",
        "bf16",
        "fp16",
        "fp32",
    ]
    ranked = sorted(names, key=lambda n: codec_fidelity(n).key())
    assert ranked[:3] == ["fp32", "bf16", "fp16"] or ranked[:3] == ["fp32", "fp16", "bf16"]
    tiers = [codec_fidelity(n).tier for n in ranked]
    assert tiers == sorted(tiers) and tiers[0] == 0 and tiers[-1] == 4
    assert (
        codec_fidelity("int6_b64_tc").key() < codec_fidelity("int4_b32").key() < codec_fidelity("ec40").key()
    )
    assert {codec_fidelity(n).tier for n in ("int8", "int8_token", "petals_blockwise8")} == {2}
    # an unknown name falls back to the measured bits per value
    assert codec_fidelity("my_codec", {"up_ratio_vs_fp32_prefill": 0.5}).tier == 1
    assert codec_fidelity("my_codec").tier == 3


def test_strongest_attack_across_jobs_of_one_configuration():
    wb = row(
        10,
        "int8",
        attack="whitebox",
        **{"privacy/whitebox/token_acc": 1.0, "privacy/whitebox/pii_recovery": 1.0},
    )
    inv = row(
        10,
        "int8",
        attack="learned_inverter",
        **{"privacy/learned_inverter/token_acc": 0.75, "privacy/learned_inverter/pii_recovery": 0.33},
    )
    other = row(20, "int8", attack="learned_inverter", **{"privacy/learned_inverter/token_acc": 0.5})
    clean = row(30, "int8")
    rows = [inv, wb, other, clean]
    annotate(rows)
    assert inv[LEAK] == wb[LEAK] == 1.0 and inv[LEAK_ATTACK] == "whitebox" and inv[LEAK_PII] == 1.0
    assert other[LEAK] == 0.5 and other[LEAK_ATTACK] == "learned_inverter"
    assert LEAK not in clean
    assert len(configurations(rows)) == 3
