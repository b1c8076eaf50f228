"""The `splitinfer` CLI: generate works end to end; bad input is one clear line, exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from splitinfer.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "generate" in capsys.readouterr().out


@pytest.mark.slow
def test_generate_in_process_answers(capsys, real_model):
    assert main(["generate", "--cut", "8", "--max-new-tokens", "12", "--stats", "What is the capital of France?"]) == 0
    out = capsys.readouterr()
    assert "Paris" in out.out and "uplink" in out.err


@pytest.mark.parametrize("args, msg", [
    (["generate", "--cut", "31", "hi"], "cut 31 is out of range; this model has 30 layers"),
    (["generate", "--cut", "a", "hi"], "--cut 'a' is not an int"),
    (["generate", "--model", "/no/such/model", "hi"], "never downloads"),
])
def test_generate_bad_input_is_one_line(args, msg, real_model):
    proc = subprocess.run([sys.executable, "-m", "splitinfer.cli", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert msg in proc.stderr and "Traceback" not in proc.stderr


def _weightless_model(tmp_path, layers: int = 4):
    """A model folder with a config.json and no weights: loading it fails, reading its layer count does not."""
    d = tmp_path / "weightless"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": layers}))
    return d


@pytest.mark.parametrize("args", [["--no-chat", ""], [""], ["  \n\t "], ["--no-chat", " "]])
def test_generate_refuses_an_empty_prompt_before_the_model(args, capsys):
    # The model does not exist: the prompt is refused first, in both chat and raw mode.
    assert main(["generate", "--model", "/no/such/model", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the prompt is empty" in err


def test_generate_refuses_a_bad_cut_before_loading_weights(tmp_path, capsys):
    model = _weightless_model(tmp_path)
    assert main(["generate", "--model", str(model), "--cut", "99", "hi"]) == 2
    err = capsys.readouterr().err
    assert "cut 99 is out of range; this model has 4 layers" in err and err.count("\n") == 1
    assert main(["generate", "--model", str(model), "--cut", "3,2", "hi"]) == 2
    assert "strictly increasing" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny-llama", "--max-new-tokens", "0", "hi"]) == 2
    assert "--max-new-tokens 0" in capsys.readouterr().err


def test_user_errors_and_bugs():
    """User errors are one line; a bug (an error raised in torch, numpy, ... or a RuntimeError) is not."""
    import numpy as np
    import torch

    from splitinfer.cli import CliError, is_user_error
    from splitinfer.codecs import CodecError, build_codec
    from splitinfer.errors import ConfigError, UserError
    from splitinfer.models import validate_cuts

    def caught(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the point is what was raised
            return e
        raise AssertionError("nothing raised")

    assert issubclass(CliError, UserError)
    assert is_user_error(ConfigError("x")) and is_user_error(CliError("x"))
    assert is_user_error(caught(lambda: build_codec("int9")))  # CodecError: a ValueError splitinfer defines
    assert isinstance(caught(lambda: build_codec("int9")), CodecError)
    assert is_user_error(caught(lambda: validate_cuts(99, 4)))  # `raise ValueError` in splitinfer's own code
    assert not is_user_error(caught(lambda: np.zeros(2).reshape(3)))  # numpy's ValueError: a bug
    assert not is_user_error(caught(lambda: torch.zeros(2) @ torch.zeros(3)))  # RuntimeError
    assert not is_user_error(caught(lambda: int("x")))  # raised here, not in splitinfer


def test_keygen_names_each_clients_files(tmp_path, capsys):
    assert main(["keygen", "--dir", str(tmp_path / "k"), "--client", "alice", "--client", "bob"]) == 0
    out = capsys.readouterr().out
    assert "{name}" not in out
    assert f"{tmp_path / 'k'}/alice.key_secret" in out and f"{tmp_path / 'k'}/bob.key_secret" in out
    assert main(["keygen", "--dir", str(tmp_path / "k"), "--client", "alice"]) == 2  # exists: one line, --force
    assert "--force" in capsys.readouterr().err
