"""recommend: constraints on interval bounds, ties within noise, privacy only when measured."""

from __future__ import annotations

import pytest

from splitinfer.report import Constraints, ReportError, load_runs, recommend

from .fake_sweep import row, with_ci, write_sweep


@pytest.fixture
def rows(tmp_path):
    return load_runs(
        write_sweep(
            tmp_path / "sweep",
            [row(cut, codec) for codec in ("fp16", "int8", "int4") for cut in (0, 5, 10, 20, 30)],
        )
    )


def test_recommend_under_constraints(rows):
    rec = recommend(rows, "bytes")
    assert rec.best["codec"] == "int4"
    rec = recommend(rows, "bytes", Constraints(max_delta_ppl_pct=2.0))
    assert rec.best["codec"] == "int8" and "would be chosen" in rec.explanation
    rec = recommend(rows, "latency", Constraints(max_device_mb=160, max_delta_ppl_pct=0.5))
    assert rec.best["codec"] == "fp16" and rec.best["cut"] <= 4
    rec = recommend(rows, "bytes", Constraints(max_delta_ppl_pct=-1))
    assert rec.best is None and "No configuration meets" in rec.explanation


def test_recommend_for_another_link(rows):
    on_wifi = recommend(rows, "latency", link="wifi")
    on_3g = recommend(rows, "latency", link="3g")
    assert on_wifi.best["link"] == "wifi" and on_3g.best["tpot_s"] > on_wifi.best["tpot_s"]
    with pytest.raises(ReportError, match="not one of"):
        recommend(rows, "latency", link="carrier_pigeon")
    with pytest.raises(ReportError, match="attack"):
        recommend(rows, "bytes", Constraints(max_leakage=0.1))
    with pytest.raises(ReportError, match="tie tolerance"):
        recommend(rows, "bytes", tie_tolerance=float("nan"))


def _close_call(ec_tpot: float = 0.2000) -> list[dict]:
    """The new user's case: ec40 at +0.95 % (0.35..1.55) is 0.3 ms/token faster than int8 at +0.08 %."""
    return [
        with_ci(row(4, "ec40", delta_ppl_pct=0.95, tpot_s=ec_tpot), (0.35, 1.55)),
        with_ci(row(4, "int8", delta_ppl_pct=0.08, tpot_s=0.2003), (-0.05, 0.2)),
    ]


def test_max_delta_ppl_applies_to_the_upper_bound():
    rec = recommend(_close_call(), "latency", Constraints(max_delta_ppl_pct=1.0), tie_tolerance=0)
    assert rec.best["codec"] == "int8"
    assert "upper end of the 95 % bootstrap interval of |Δppl|" in rec.explanation
    assert "cut 4 + ec40 would be chosen" in rec.explanation
    assert "|Δppl| upper 95 % bound 1.55 % > 1 %" in rec.explanation
    assert "Δppl +0.08 % (95 % CI -0.05 to +0.20; |Δppl| ≤ 0.20 %)" in rec.explanation


def test_max_delta_ppl_without_intervals_says_it_used_the_point_estimate():
    old = [row(4, "ec40", delta_ppl_pct=0.95, tpot_s=0.2), row(4, "int8", delta_ppl_pct=0.08, tpot_s=0.25)]
    rec = recommend(old, "latency", Constraints(max_delta_ppl_pct=1.0))
    assert rec.best["codec"] == "ec40"  # nothing better to go on, but the output says so
    assert "2 of 2 configurations have no interval" in rec.explanation
    assert "interval unknown" in rec.explanation


def test_ties_within_noise_go_to_the_more_faithful_codec():
    rec = recommend(_close_call(), "latency")
    assert rec.best["codec"] == "int8" and rec.fastest["codec"] == "ec40"
    assert (
        "within the tie tolerance of 2 %" in rec.explanation
        and "8-bit over fewer than 8 bits" in rec.explanation
    )
    assert recommend(_close_call(), "latency", tie_tolerance=0).best["codec"] == "ec40"
    # a real gain (10 %) is not a tie
    assert recommend(_close_call(ec_tpot=0.18), "latency").best["codec"] == "ec40"
    # fp16 within 1 % of int8: fp16
    pair = [row(4, "int8", tpot_s=0.2000), row(4, "fp16", tpot_s=0.2019)]
    assert recommend(pair, "latency").best["codec"] == "fp16"
    # no defense before a defense, same codec
    pair = [row(4, "int8", tpot_s=0.2000, defense="gaussian"), row(4, "int8", tpot_s=0.2010)]
    assert recommend(pair, "latency").best["defense"] == "none"


def test_min_exact_match_applies_to_the_lower_bound():
    rs = [
        with_ci(row(4, "ec40", exact_match_rate=0.95, tpot_s=0.1), (0.1, 0.5), exact=(0.85, 1.0)),
        with_ci(row(4, "fp16", exact_match_rate=0.97, tpot_s=0.3), (-0.01, 0.01), exact=(0.93, 1.0)),
    ]
    rec = recommend(rs, "latency", Constraints(min_exact_match=0.9))
    assert rec.best["codec"] == "fp16" and "exact match lower 95 % bound 0.85 < 0.9" in rec.explanation
    assert "lower end of the 95 % interval" in rec.explanation


def test_no_attack_means_privacy_not_measured(rows):
    rec = recommend(rows, "latency")
    assert rec.best["cut"] == 0
    text = rec.explanation
    assert "all on the server beats every split" in text
    assert "Privacy was not measured" in text and "white-box inversion recovers 100 %" in text
    assert "nearest-embedding lookup reads the prompt back exactly" in text
    for claim in ("split for privacy", "stays on the device", "text never leaves"):
        assert claim not in text


def _attacked(tmp_path):
    rs = []
    for cut, wb, inv in ((0, 1.0, 0.92), (10, 1.0, 0.6), (20, 0.8, 0.3)):
        base = row(cut, "int8")
        rs.append(
            dict(
                base,
                attack="whitebox",
                **{
                    "privacy/whitebox/token_acc": wb,
                    "privacy/whitebox/pii_recovery": 1.0,
                    "privacy/whitebox/partial": False,
                },
            )
        )
        rs.append(
            dict(
                base,
                attack="learned_inverter",
                **{"privacy/learned_inverter/token_acc": inv, "privacy/learned_inverter/pii_recovery": 0.33},
            )
        )
    return load_runs(write_sweep(tmp_path / "priv", rs))


def test_leakage_is_the_strongest_attack(tmp_path):
    rows = _attacked(tmp_path)
    rec = recommend(rows, "latency")
    assert (
        rec.best["cut"] == 0 and rec.total == 3
    )  # jobs that differ only in the attack are one configuration
    assert "Privacy (measured)" in rec.explanation and "whitebox, recovers 100.0 %" in rec.explanation
    assert "not measured" not in rec.explanation
    # --max-leakage applies to the strongest attack, not to the weaker one that sorts first
    rec = recommend(rows, "latency", Constraints(max_leakage=0.9))
    assert rec.best["cut"] == 20 and "recovers 80.0 %" in rec.explanation
    assert "--max-leakage 0.9 was applied to the strongest attack's token recovery" in rec.explanation
    assert "tokens recovered by the strongest attack (whitebox) 1 > 0.9" in rec.explanation
    rec = recommend(rows, "latency", Constraints(max_leakage=0.7))
    assert rec.best is None
    # a named column instead
    rec = recommend(
        rows, "latency", Constraints(max_leakage=0.7, leakage_metric="privacy/learned_inverter/token_acc")
    )
    assert rec.best["cut"] == 10
    with pytest.raises(ReportError, match="not one of"):
        recommend(rows, "latency", Constraints(max_leakage=0.5, leakage_metric="privacy/nope/token_acc"))


def test_partially_attacked_sweep(tmp_path):
    rows = _attacked(tmp_path) + [row(30, "fp16", tpot_s=0.01)]
    rec = recommend(rows, "latency")
    assert rec.best["cut"] == 30
    assert "This configuration was not attacked" in rec.explanation
    rec = recommend(rows, "latency", Constraints(max_leakage=0.9))
    assert rec.best["cut"] == 20 and "leakage not measured" in rec.explanation
