"""The `splitinfer` CLI: generate works end to end; bad input is one clear line, exit status 2."""

from __future__ import annotations

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
