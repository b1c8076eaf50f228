"""Long privacy runs are visible (bars on a terminal, a line per victim everywhere), bounded (time budget),
keep what they finished (partial files after every victim) and resume; utility is in percent."""

import fcntl
import json
import logging
import math
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from splitinfer.privacy import WhiteBoxInversion, evaluate_privacy
from splitinfer.privacy.results import FINAL_NAME, PARTIAL_NAME, RECORDS_NAME

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"batch_size": 24, "max_batch_size": 96, "probe_tokens": 256}


class StopAfter(WhiteBoxInversion):
    """The white-box attack, interrupted (as by Ctrl-C) when it starts the victim after `n`."""

    def __init__(self, n: int, **kw) -> None:
        super().__init__(**kw)
        self.n, self.calls = n, 0

    def invert(self, payload, deadline=None):
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt
        return super().invert(payload, deadline)


def test_utility_cost_is_percent_of_clean_perplexity(tiny_llama):
    m = evaluate_privacy(tiny_llama, 0, attack="none", defense={"name": "gaussian", "sigma": 3.0}, victims=2)
    assert "privacy/utility/delta_ppl" not in m
    ppl, clean = m["privacy/utility/ppl"], m["privacy/utility/ppl_clean"]
    assert abs(ppl - clean) > 1e-3  # the noise changes the perplexity (a random model: either way)
    assert m["privacy/utility/delta_ppl_pct"] == pytest.approx(100 * (ppl / clean - 1))
    for k in ("delta_ppl_pct", "kl_mean", "top1_agreement"):  # each figure with its interval
        assert m[f"privacy/utility/{k}_ci_low"] <= m[f"privacy/utility/{k}"] <= m[f"privacy/utility/{k}_ci_high"], k


def test_a_line_per_finished_victim(tiny_llama, caplog):
    caplog.set_level(logging.INFO, logger="splitinfer.privacy")
    evaluate_privacy(tiny_llama, 2, attack=WhiteBoxInversion(**SMALL), victims=3, utility=False)
    lines = [r.getMessage() for r in caplog.records if "victim" in r.getMessage()]
    assert [line.split(":")[1].split("(")[0].strip() for line in lines] == ["victim 1/3", "victim 2/3",
                                                                            "victim 3/3"]
    assert "tokens 100.0 %" in lines[0] and "ETA" in lines[0] and "ETA" not in lines[-1]


def test_interrupted_run_keeps_finished_victims_and_resumes(tiny_llama, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        evaluate_privacy(tiny_llama, 2, attack=StopAfter(1, **SMALL), victims=3, utility=False, out_dir=tmp_path)
    saved = json.loads((tmp_path / PARTIAL_NAME).read_text())
    assert saved["partial"] is True and saved["victims_done"] == 1 and saved["victims"] == 3
    assert saved["metrics"]["privacy/whitebox/token_acc"] == 1.0
    assert saved["metrics"]["privacy/whitebox/partial"] is True
    assert not (tmp_path / FINAL_NAME).exists()
    assert len((tmp_path / RECORDS_NAME).read_text().splitlines()) == 1

    # Another set-up in the same folder reuses nothing; the same one picks up where it stopped.
    other = StopAfter(0, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        evaluate_privacy(tiny_llama, 3, attack=other, victims=3, utility=False, out_dir=tmp_path)
    assert other.calls == 1
    again = StopAfter(99, **SMALL)
    m = evaluate_privacy(tiny_llama, 2, attack=again, victims=3, utility=False, out_dir=tmp_path)
    assert again.calls == 2  # victims 2 and 3 only
    assert m["privacy/whitebox/victims_resumed"] == 1.0 and m["privacy/whitebox/victims_done"] == 3.0
    assert m["privacy/whitebox/token_acc"] == 1.0 and m["privacy/whitebox/partial"] is False
    final = json.loads((tmp_path / FINAL_NAME).read_text())
    assert final["partial"] is False and final["victims_done"] == 3
    assert not (tmp_path / PARTIAL_NAME).exists()


def test_time_budget_leaves_a_readable_partial_result(tiny_llama, tmp_path):
    # 8 victims x 64 tokens, 3 candidates a round, no LM prior: seconds of work, far more than the budget.
    attack = WhiteBoxInversion(batch_size=3, max_batch_size=3, probe_tokens=64, use_gradient=False, use_lm_prior=False)
    m = evaluate_privacy(tiny_llama, 4, attack=attack, victims=8, max_tokens=64, time_budget_s=0.3, utility=False,
                         out_dir=tmp_path)
    saved = json.loads((tmp_path / FINAL_NAME).read_text())
    assert m["privacy/whitebox/partial"] is True and saved["partial"] is True
    assert saved["victims_done"] == int(m["privacy/whitebox/victims_done"]) < 8 and saved["victims"] == 8
    lines = (tmp_path / RECORDS_NAME).read_text().splitlines() if saved["victims_done"] else []
    assert len(lines) == saved["victims_done"]


def test_run_size_comes_from_the_attack_config(tiny_llama):
    from splitinfer.privacy import build_attack

    attack = build_attack({"name": "whitebox", "victims": 2, "victim_tokens": 5, "time_budget_s": 60, **SMALL})
    m = evaluate_privacy(tiny_llama, 2, attack=attack, utility=False)
    assert m["privacy/whitebox/victims"] == 2.0
    assert m["privacy/whitebox/invert_s_per_token"] * 10 == pytest.approx(m["privacy/whitebox/invert_s"])
    with pytest.raises(ValueError, match="victim_tokens"):
        build_attack("whitebox", victim_tokens=1)
    with pytest.raises(ValueError, match="victims"):
        build_attack("whitebox", victims=0)


SCRIPT = """
import torch
from splitinfer.models import tiny_model
from splitinfer.privacy import evaluate_privacy
torch.set_num_threads(1)
lm = tiny_model("llama")
evaluate_privacy(lm, 2, attack={"name": "whitebox", "batch_size": 24, "max_batch_size": 96,
                 "probe_tokens": 256}, victims=2, max_tokens=64, utility=False)
evaluate_privacy(lm, 2, attack={"name": "learned_inverter", "width": 32, "max_steps": 30,
                 "negatives": 64}, victims=1, utility=False)
"""


def _run(stderr_tty: bool) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", SCRIPT]
    if not stderr_tty:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=True).stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a real terminal's size
    chunks: list[bytes] = []

    def read():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=slave, timeout=300)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode(errors="replace")


def test_progress_is_visible_with_and_without_a_terminal():
    tty = _run(stderr_tty=True)
    for desc in ("whitebox cut 2", "whitebox tokens", "inverter: train"):
        assert desc in tty, desc
    assert "2/2" in tty and ("victim/s" in tty or "s/victim" in tty)  # the victim bar with its rate
    assert "\r" in tty
    piped = _run(stderr_tty=False)
    assert "\r" not in piped  # no bars in a log file
    assert "whitebox cut 2: victim 1/2" in piped and "whitebox cut 2: victim 2/2" in piped
    assert "learned_inverter cut 2: 30 steps" in piped


def test_hydra_job_writes_partial_files_and_logs_victims(tmp_path):
    run_dir = tmp_path / "job"
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "splitinfer.run", "model=tiny_llama", "split.cut=2", "data=smoke",
                           "logger=jsonl", "attack=whitebox", "attack.victims=2", "metrics=latency_only",
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "whitebox cut 2: victim 2/2" in proc.stdout + proc.stderr
    saved = json.loads((run_dir / FINAL_NAME).read_text())
    assert saved["partial"] is False and saved["victims_done"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["privacy/whitebox/token_acc"] == saved["metrics"]["privacy/whitebox/token_acc"] == 1.0
    assert not math.isnan(metrics["privacy/dcor"])


class SeesContext(WhiteBoxInversion):
    def prepare(self, ctx):
        self.noiseless = ctx.noiseless
        super().prepare(ctx)


@pytest.mark.parametrize("codec,defense,exact", [(None, None, True), ("fp32", None, True), ("int8", None, False),
                                                 (None, {"name": "gaussian", "sigma": 0.01}, False)])
def test_attacker_accepts_only_exact_matches_on_an_exact_payload(tiny_llama, codec, defense, exact):
    """A lossless codec (fp32) leaves the payload exact: the ratio test (which misreads the attention-sink
    row) must stay off, as without a codec."""
    attack = SeesContext(**SMALL)
    m = evaluate_privacy(tiny_llama, 2, attack=attack, codec=codec, defense=defense, victims=2, utility=False)
    assert attack.noiseless is exact
    if exact:
        assert m["privacy/whitebox/verified_frac"] == 1.0 and m["privacy/whitebox/token_acc"] == 1.0
