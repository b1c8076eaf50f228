"""`splitinfer serve` / `keygen` / `generate --server`, and the Hydra server config."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from splitinfer.transport.serve_cmd import CONF_DIR, compose_config

from .conftest import free_port


def test_hydra_config_and_overrides():
    cfg = compose_config(str(CONF_DIR), "default", ["port=6001", "cut=10", "host=0.0.0.0", "max_sessions=3"])
    assert (cfg.port, cfg.cuts(), cfg.host, cfg.limits().max_sessions) == (6001, [10], "0.0.0.0", 3)
    assert compose_config(str(CONF_DIR), "default", []).port == 5555
    with pytest.raises(ValueError, match="overrides"):
        compose_config(str(CONF_DIR), "default", ["no_such_key=1"])


def test_flags_win_over_config():
    from splitinfer.cli import build_parser
    from splitinfer.transport.server import config_from_args

    args = build_parser().parse_args(["serve", "--port", "7000", "--model", "tiny-llama", "cut=3", "port=1"])
    cfg = config_from_args(args, compose_config(args.config_dir, args.config_name, args.overrides))
    assert (cfg.port, cfg.model, cfg.cuts()) == (7000, "tiny-llama", [3])


def test_rehearse_and_wake_early_settings_from_config_override_and_flag():
    from splitinfer.cli import build_parser
    from splitinfer.transport.server import config_from_args

    def cfg_of(*argv):
        args = build_parser().parse_args(["serve", *argv])
        return config_from_args(args, compose_config(args.config_dir, args.config_name, args.overrides))

    assert cfg_of().rehearse is True  # conf/server/default.yaml
    assert cfg_of("rehearse=false").rehearse is False
    assert cfg_of("--no-rehearse", "rehearse=true").rehearse is False  # the flag wins
    assert cfg_of("--rehearse", "rehearse=false").rehearse is True
    srv = cfg_of("--model", "tiny-llama", "--cut", "2", "--port", "0", "--busy-poll-ms", "5",
                 "--no-rehearse", "wake_early_ms=2").build()
    assert (srv.rehearse, srv.busy_poll_s, srv._waiter.wake_early_s) == (False, 0.005, 0.002)
    args = build_parser().parse_args(["generate", "hi", "--server", "tcp://127.0.0.1:1", "--no-rehearse",
                                      "--wake-early-ms", "3"])
    assert (args.no_rehearse, args.wake_early_ms) == (True, 3.0)


def test_keygen_command(tmp_path):
    from splitinfer.cli import main

    assert main(["keygen", "--dir", str(tmp_path / "k"), "--client", "alice"]) == 0
    assert (tmp_path / "k" / "allowed_clients" / "alice.key").is_file()
    assert (tmp_path / "k" / "server.key_secret").is_file()


def _readline(proc, timeout=90) -> str:
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("line", proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return out.get("line", "")


@pytest.mark.slow
def test_serve_and_generate_commands_on_the_real_model(real_model):
    from splitinfer.generation import unsplit_generate

    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    serve = subprocess.Popen([sys.executable, "-m", "splitinfer.cli", "serve", "--cut", "15", "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = _readline(serve)
        assert f"tcp://127.0.0.1:{port}" in line, line
        prompt = "What is the capital of France?"
        out = subprocess.run([sys.executable, "-m", "splitinfer.cli", "generate", "--server",
                              f"tcp://127.0.0.1:{port}", "--codec", "fp32", "--max-new-tokens", "12", prompt],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        ids = real_model.encode_prompt(prompt)
        assert out.stdout.strip() == real_model.decode(unsplit_generate(real_model, ids, 12)).strip()
    finally:
        serve.terminate()
        serve.wait(20)
    assert serve.returncode == 0
