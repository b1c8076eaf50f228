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
    from splitinfer.transport.server_config import config_from_args

    args = build_parser().parse_args(["serve", "--port", "7000", "--model", "tiny-llama", "cut=3", "port=1"])
    cfg = config_from_args(args, compose_config(args.config_dir, args.config_name, args.overrides))
    assert (cfg.port, cfg.model, cfg.cuts()) == (7000, "tiny-llama", [3])


def test_every_server_setting_has_a_config_key_and_a_generated_flag():
    """ServerConfig is the one definition: each field is a key of conf/server/default.yaml and a flag of
    `splitinfer serve`; a key=value override and a flag reach the built server, the flag winning."""
    import argparse
    import dataclasses

    import yaml

    from splitinfer.cli import build_parser
    from splitinfer.transport.server import DEFAULT_MAX_MESSAGE_BYTES
    from splitinfer.transport.server_config import DEFAULT_MAX_MESSAGE_BYTES as CONFIG_MAX
    from splitinfer.transport.server_config import ServerConfig, add_server_arguments, config_from_args
    from splitinfer.transport.sessions import SessionLimits

    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    keys = set(yaml.safe_load((CONF_DIR / "default.yaml").read_text())) - {"_target_"}
    assert keys == fields
    assert ServerConfig().limits() == SessionLimits() and CONFIG_MAX == DEFAULT_MAX_MESSAGE_BYTES

    def cfg_of(*argv):
        args = build_parser().parse_args(["serve", *argv])
        return config_from_args(args, compose_config(args.config_dir, args.config_name, args.overrides))

    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    assert set(vars(parser.parse_args([]))) == fields
    assert cfg_of().batching is True and cfg_of("batching=false").batching is False
    assert cfg_of("--batching", "batching=false").batching is True  # the flag wins
    srv = cfg_of("--model", "tiny-llama", "--cut", "2", "--port", "0", "--no-batching", "step_token_budget=64",
                 "--dtype", "bfloat16", "--max-tokens", "99").build()
    assert (srv.batching, srv.step_token_budget, srv.limits.max_tokens_per_session) == (False, 64, 99)
    assert srv.info()["placement"] == {"device": "cpu", "dtype": "bfloat16"}


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


def test_serve_needs_its_config_file(tmp_path):
    """No silent fallback to built-in defaults: a missing server config is a clear error."""
    from splitinfer.errors import NotFoundError

    with pytest.raises(NotFoundError, match=r"default\.yaml does not exist"):
        compose_config(str(tmp_path), "default", [])
    (tmp_path / "edge.yaml").write_text((CONF_DIR / "default.yaml").read_text())
    with pytest.raises(NotFoundError, match="configs there: edge"):
        compose_config(str(tmp_path), "default", ["port=1"])
    assert compose_config(str(tmp_path), "edge", ["port=6002"]).port == 6002


@pytest.mark.parametrize("argv", [["--port", "99999"], ["--port", "-1"], ["--port", "http"]])
def test_serve_refuses_a_port_flag_outside_0_65535(argv, capsys):
    from splitinfer.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", "tiny-llama", *argv])
    assert e.value.code == 2
    assert "0..65535 (0 = any free port)" in capsys.readouterr().err.splitlines()[-1]


def test_serve_refuses_a_bad_port_or_cut_from_the_config_before_loading(tmp_path, capsys):
    from splitinfer.cli import main

    model = tmp_path / "weightless"  # a config.json and no weights: loading would fail, peeking does not
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 4}')
    assert main(["serve", "--model", str(model), "port=70000"]) == 2
    assert "port 70000 is out of range" in capsys.readouterr().err
    assert main(["serve", "--model", str(model), "--port", "0", "--cut", "9"]) == 2
    err = capsys.readouterr().err
    assert "cut 9 is out of range; this model has 4 layers" in err and err.count("\n") == 1


def test_no_import_cycle_in_transport():
    """Imports inside splitinfer.transport (function-level ones too) form no cycle; serve_cmd -> server only."""
    import ast
    from pathlib import Path

    import splitinfer.transport as transport

    root = Path(transport.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).with_suffix("")
        name = ".".join(["splitinfer.transport", *[p for p in rel.parts if p != "__init__"]])
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d.startswith("splitinfer.transport.")}
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for d in graph[start]:
            if d == goal or (d not in seen and (seen.add(d) or reaches(d, goal, seen))):
                return True
        return False

    assert "splitinfer.transport.server" in graph["splitinfer.transport.serve_cmd"]
    cycles = [m for m in graph if reaches(m, m, set())]
    assert not cycles, f"import cycles through {cycles}"


@pytest.mark.parametrize("argv,says", [
    (["serve", "--model", "tiny-llama", "--cut", "2", "--port", "0", "--dtype", "int8"],
     "dtype 'int8' is not supported: choose one of float32, bfloat16, float16"),
    (["serve", "--model", "tiny-llama", "--cut", "2", "--port", "0", "device=tpu"],
     "device 'tpu' is not a device splitinfer runs on"),
    (["generate", "hi", "--model", "tiny-llama", "--cut", "2", "--dtype", "float64"],
     "dtype 'float64' is not supported"),
    (["generate", "hi", "--model", "tiny-llama", "--cut", "2", "--server", "tcp://127.0.0.1:1",
      "--server-dtype", "bfloat16"], "with --server the server process has its own"),
    *([] if __import__("torch").cuda.is_available() else [
        (["serve", "--model", "tiny-llama", "--cut", "2", "--port", "0", "--device", "cuda"],
         "no CUDA GPU is visible to this process"),
        (["generate", "hi", "--model", "tiny-llama", "--cut", "2", "--server-device", "cuda:0"],
         "server_device 'cuda:0': no CUDA GPU is visible")]),
])
def test_bad_devices_and_dtypes_get_one_line_before_loading(argv, says, capsys):
    from splitinfer.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


def test_a_server_on_another_checkpoint_is_one_line(make_server, real_model, capsys):
    from splitinfer.cli import main
    from splitinfer.models import tiny_model

    srv = make_server(tiny_model("llama"), [2])
    assert main(["generate", "hi", "--cut", "2", "--server", srv.url, "--codec", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "model_mismatch" in err and "load the same model" in err and err.count("\n") == 1, err
