"""Fixtures for task evaluation: lm-eval's own `hf` model on the real model's checkpoint (the outside
reference), computed once per session; a served half started as `splitinfer serve` in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

pytest.importorskip("lm_eval")

_ENV = dict(os.environ)  # as the session started: a test's monkeypatched cache folder must not reach the server
LIMIT = 10  # examples of splitinfer_mc per run: 40 loglikelihood requests


def hf_evaluate(lm, tasks, limit=LIMIT) -> dict:
    """lm-eval's `hf` model (float32, CPU) on the local Hugging Face copy of `lm`, with samples."""
    import lm_eval

    from splitinfer.eval.run import hf_checkpoint

    return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_checkpoint(lm)},dtype=float32,device=cpu",
                                   tasks=tasks.build(), task_manager=tasks.task_manager, limit=limit,
                                   batch_size=8, log_samples=True, bootstrap_iters=0, verbosity="WARNING")


def responses(result: dict, task: str) -> dict[tuple[int, int], object]:
    """(doc_id, request index) -> the model's raw response (loglikelihood pair, rolling float or text)."""
    return {(s["doc_id"], i): r[0] for s in result["samples"][task] for i, r in enumerate(s["resps"])}


@pytest.fixture(scope="session")
def mc_tasks():
    from splitinfer.eval.tasks import task_set

    return task_set("splitinfer_mc")


@pytest.fixture(scope="session")
def hf_mc(real_model, mc_tasks) -> dict:
    return hf_evaluate(real_model, mc_tasks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_url():
    """`splitinfer serve --cut 15` on a loopback port (stopped at the end of the module)."""
    port = _free_port()
    env = dict(_ENV, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "splitinfer.cli", "serve", "--cut", "15", "--port", str(port),
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line: dict = {}
    t = threading.Thread(target=lambda: line.setdefault("l", proc.stdout.readline()), daemon=True)
    t.start()
    t.join(90)
    try:
        assert f"tcp://127.0.0.1:{port}" in line.get("l", ""), line
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)
