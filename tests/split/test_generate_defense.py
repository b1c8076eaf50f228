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


def test_a_model_dependent_defense_is_bound_in_process_and_over_zeromq(tmp_path, monkeypatch):
    """fisher_noise needs the model and the cut: `generate` binds it on both paths (in-process and the
    device half of a remote split), and the noise changes the payload the server decodes."""
    monkeypatch.setenv("SPLITINFER_CACHE", str(tmp_path))
    import torch

    from splitinfer.models import tiny_model
    from splitinfer.privacy.defenses import build_defense
    from splitinfer.split import in_process_generator
    from splitinfer.transport import SplitServer, remote_generator

    lm = tiny_model("llama")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    defense = build_defense("fisher_noise", sigma=0.5, fisher_seqs=2)
    assert not defense.bound
    gen = in_process_generator(lm, [2], defense=defense)
    assert gen.device.defense.bound and gen.device.defense.name == "fisher_noise"
    clean = in_process_generator(lm, [2]).device
    assert not torch.equal(gen.device.observe(ids), clean.observe(ids))
    noisy = gen.generate(ids, 4, stop_at_eos=False).token_ids
    with SplitServer(lm, [2], port=0) as server:
        remote = remote_generator(lm, [2], server.url, defense=build_defense("fisher_noise", sigma=0.5,
                                                                              fisher_seqs=2))
        assert remote.device.defense.bound
        assert remote.generate(ids, 4, stop_at_eos=False).token_ids == noisy  # same seed, same noise
        remote.link.close()


@pytest.mark.slow
def test_stats_say_which_defense_ran_and_progress_comes_before_the_answer(capsys, real_model):
    from splitinfer.commands.generate import default_threads

    args = ["generate", "--cut", "15", "--max-new-tokens", "4", "--stats", "What is the capital of France?"]
    assert main([*args, "--defense", "gaussian", "--defense-param", "sigma=0.5", "--defense-param", "seed=3",
                 "--progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    progress = [line for line in err if line.startswith("splitinfer generate: ")]
    assert [line.rsplit(": ", 1)[-1].split(" ")[0] for line in progress] == \
        ["importing", "loading", "splitting", "generating"], progress  # in order, before any token
    assert "sigma=0.5" in err[-1] and "seed=3" in err[-1] and err[-1].startswith("[defense: gaussian ("), err[-1]
    assert f"codec: none; {default_threads()} torch thread" in err[-1]
    assert main(args) == 0  # not a terminal and no --progress: no progress lines; no defense: says so
    err = capsys.readouterr().err.splitlines()
    assert not any(line.startswith("splitinfer generate: ") for line in err)
    assert err[-1].startswith("[defense: none; codec: none;"), err[-1]
