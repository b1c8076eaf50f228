"""splitinfer.progress: a long step is never silent (a line at its start, one every few seconds, one at
its end), and a sweep says at the end what it did, whatever the launcher."""

from __future__ import annotations

import logging
import pickle
import threading

import pytest

from splitinfer.progress import Heartbeat


def test_a_heartbeat_speaks_while_the_block_runs(caplog):
    caplog.set_level(logging.INFO)
    log = logging.getLogger("splitinfer.test_progress")
    beat_seen = threading.Event()

    class Spy(logging.Handler):
        def emit(self, record):
            if "  ... unsplit reference" in record.getMessage():
                beat_seen.set()

    spy = Spy()
    log.addHandler(spy)
    try:
        with Heartbeat("unsplit reference", log, every=0.01, status=lambda: "3 of 4 jobs done"):
            assert beat_seen.wait(10), "no heartbeat line while the block ran"
    finally:
        log.removeHandler(spy)
    lines = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert lines[0] == "unsplit reference ..."
    assert any(m.startswith("  ... unsplit reference: ") and m.endswith(", 3 of 4 jobs done") for m in lines)
    assert lines[-1].startswith("unsplit reference: done in ") and lines[-1].endswith("3 of 4 jobs done")


def test_a_failed_block_stops_its_heartbeat_without_a_done_line(caplog):
    caplog.set_level(logging.INFO)
    log = logging.getLogger("splitinfer.test_progress")
    with pytest.raises(RuntimeError), Heartbeat("step", log, every=60):
        raise RuntimeError("boom")
    assert not any(t.name == "heartbeat: step" for t in threading.enumerate())
    assert [r.getMessage() for r in caplog.records if r.name == log.name] == ["step ..."]


def test_the_sweep_progress_callback_pickles_and_sums_up(tmp_path, capsys):
    """Process launchers (joblib) pickle the callbacks into each worker; the end line counts metrics.json."""
    from omegaconf import OmegaConf

    from splitinfer.run import SweepProgress

    cfg = OmegaConf.create({"name": "t", "hydra": {"sweeper": {"params": {"split.cut": "0,1,2"}},
                                                    "overrides": {"task": []}, "sweep": {"dir": str(tmp_path)}}})
    cb = SweepProgress()
    cb.on_multirun_start(cfg)
    assert cb.total == 3
    pickle.loads(pickle.dumps(cb))
    for job in ("0", "1"):
        (tmp_path / job).mkdir()
        (tmp_path / job / "metrics.json").write_text("{}")
    cb.on_multirun_end(cfg)
    out = capsys.readouterr().out
    assert "sweep done: 2 of 3 jobs, 1 without metrics.json (failed: see their folders' logs) in " in out
    assert f"report it: splitinfer report {tmp_path}" in out


def test_the_sweep_help_counts_what_the_default_sweep_runs():
    from splitinfer.commands.sweep import HELP, describe_sweep
    from splitinfer.configs import load_node

    params = load_node("experiment", "default_sweep")["hydra"]["sweeper"]["params"]
    assert params["split.cut"] == "range(0,31,2)"  # if this changes, the help below follows it
    assert describe_sweep() == "16 cuts (0..30 step 2) x 3 codecs (fp16,int8,ec40) = 48 jobs"
    assert describe_sweep() in HELP and "31 cuts" not in HELP
