"""`splitinfer generate --defense`: the configured defense runs on the device, before the codec."""

from __future__ import annotations

import pytest

from splitinfer.cli import main


def test_defense_flags_are_checked_before_the_model_loads(capsys):
    assert main(["generate", "--model", "tiny-llama", "--cut", "2", "--defense", "gausian", "hi"]) == 2
    err = capsys.readouterr().err
    assert "gausian" in err and "gaussian" in err and "\n" == err[-1] and err.count("\n") == 1
    assert main(["generate", "--model", "tiny-llama", "--cut", "2", "--defense-param", "sigma=1", "hi"]) == 2
    assert "needs --defense" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny-llama", "--cut", "2", "--defense", "gaussian",
                 "--defense-param", "sigma", "hi"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


@pytest.mark.slow
def test_defense_changes_what_the_real_model_answers(capsys):
    args = ["generate", "--cut", "15", "--max-new-tokens", "6", "What is the capital of France?"]
    assert main(args) == 0
    clean = capsys.readouterr().out
    assert main([*args, "--defense", "gaussian", "--defense-param", "sigma=2.0"]) == 0
    noisy = capsys.readouterr().out
    assert clean.strip() and noisy.strip() and noisy != clean
    assert main([*args, "--defense", "gaussian", "--defense-param", "sigma=2.0"]) == 0
    assert capsys.readouterr().out == noisy  # seeded: the same defense gives the same answer
