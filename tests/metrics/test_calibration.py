"""Calibration: the fit recovers known roofline factors; the command runs on a tiny model and refuses bad cuts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from splitinfer.cli import main
from splitinfer.metrics.calibration import Timing, fit, predict
from splitinfer.metrics.hardware import load_hardware
from splitinfer.models.shapes import load_shape


def test_fit_recovers_the_factors_that_made_the_timings():
    shape = load_shape("smollm2_135m")
    truth = replace(load_hardware("this_machine"), compute_efficiency=0.3, memory_efficiency=0.4,
                    layer_overhead_us=105.0)
    timings = [Timing(c, ph, predict(shape, truth, Timing(c, ph, 1.0), 64, 128)) for c in (4, 12, 26, 30)
               for ph in ("prefill", "decode")]
    got = fit(shape, load_hardware("this_machine"), timings, 64, 128)
    for c in (8, 15, 22):  # held out
        for ph in ("prefill", "decode"):
            t = Timing(c, ph, predict(shape, truth, Timing(c, ph, 1.0), 64, 128))
            assert predict(shape, got, t, 64, 128) == pytest.approx(t.seconds, rel=0.1)


def test_calibrate_command_on_a_tiny_model(capsys, tmp_path):
    out = tmp_path / "cal.csv"
    assert main(["calibrate", "--model", "tiny-llama", "--fit-cuts", "1,4", "--check-cuts", "2", "--repeats", "1",
                 "--prompt-tokens", "8", "--context-tokens", "16", "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fitted this_machine" in text and "held-out decode: worst |error|" in text
    assert out.read_text().startswith("cut,phase,set,measured_ms,predicted_ms,error_pct")
    assert main(["calibrate", "--model", "tiny-llama", "--fit-cuts", "1,9"]) == 2
    assert "cut" in capsys.readouterr().err
