"""Every config group composes and instantiates; bad input fails early with a clear message."""

from __future__ import annotations

import warnings

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

from splitinfer.data import CorpusSpec, EmptyCorpusError
from splitinfer.metrics.hardware import HardwareProfile
from splitinfer.metrics.latency import LinkProfile

from .conftest import CONF, TINY, compose, run_cli

GROUPS_OWNED = ("model", "split", "link", "hardware", "data", "metrics", "logger")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_config_composes():
    cfg = compose()
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.split.cut == 15 and cfg.link.name == "4g_lte" and cfg.hardware.name == "snapdragon_8_gen3"
    assert cfg.server_hardware == "h100" and cfg.job == "split"
    assert cfg.logger.wandb.mode in ("offline", "disabled", "online")


@pytest.mark.parametrize("group", GROUPS_OWNED)
def test_every_option_of_every_group_instantiates(group, tmp_path):
    for option in _options(group):
        overrides = [f"{group}={option}"]
        if (group, option) in (("model", "local"), ("data", "text"), ("data", "jsonl")):
            overrides.append(f"{group}.{'name' if group == 'model' else 'path'}=/some/path")
        cfg = compose(overrides)
        node = cfg[group]
        if group == "split":
            assert isinstance(node.cut, int)
            continue
        if group == "logger":
            logger = instantiate(node, _partial_=True, _convert_="all")(out_dir=str(tmp_path / option))
            logger.close()
            assert (tmp_path / option / "metrics.jsonl").exists()
            continue
        obj = instantiate(node)
        if group == "link":
            assert isinstance(obj, LinkProfile) and obj.source, f"link {option} must document its source"
        if group == "hardware":
            assert isinstance(obj, HardwareProfile) and obj.source, f"hardware {option} must document its source"
            assert obj.peak_flops() > 0 and obj.memory_bandwidth_gbs > 0
        if group == "data":
            assert isinstance(obj, CorpusSpec)


@pytest.mark.parametrize("group", ["codec", "defense", "attack"])
def test_other_packages_groups_instantiate(group):
    """conf/codec, conf/defense, conf/attack belong to other packages; whatever exists must build."""
    options = _options(group)
    if not options:
        pytest.skip(f"conf/{group} is not in this checkout yet")
    for option in options:
        cfg = compose(["model=tiny_llama", f"{group}={option}"])
        if "_target_" in cfg[group]:
            assert instantiate(cfg[group]) is not None or cfg[group].get("name") == "none"


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_experiments_compose_and_document_their_command(experiment):
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_") and f"experiment={experiment}" in text
    cfg = compose([f"experiment={experiment}"], hydra_cfg=True)
    assert cfg.name == experiment
    assert "split.cut" in cfg.hydra.sweeper.params


def test_sweep_job_count():
    from splitinfer.run import count_jobs

    assert count_jobs(["split.cut=range(0,31)", "codec=fp16,int8,int4_b32"]) == 93
    assert count_jobs([], {"split.cut": "range(0,31)", "link": "3g,wifi"}) == 62
    assert count_jobs(["split.cut=1,2"], {"split.cut": "range(0,31)"}) == 2


def test_unknown_option_lists_choices():
    with pytest.raises(MissingConfigException) as e:
        compose(["link=carrier_pigeon"])
    assert "4g_lte" in str(e.value) and "wifi" in str(e.value)


def test_unknown_option_on_the_command_line(tmp_path):
    r = run_cli(["model=gpt5"], tmp_path, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "smollm2_135m" in r.stderr and "tiny_llama" in r.stderr and "Traceback" not in r.stderr


def _defaults_groups() -> list[str]:
    import yaml

    entries = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    return [next(iter(e)) for e in entries if isinstance(e, dict)]


def test_every_group_is_required():
    """No `optional` group: a typo in one must not silently drop it (codec=int9 used to send raw fp32)."""
    groups = _defaults_groups()
    assert {"codec", "defense", "attack"} <= set(groups)
    assert not [g for g in groups if g.startswith("optional")], groups


@pytest.mark.parametrize("group", [g for g in _defaults_groups() if g != "experiment"] + ["experiment",
                                                                                          "hydra/launcher"])
def test_unknown_option_of_each_group_is_one_clear_line(group):
    """The group, the bad value, the closest option and every option; single values and sweep lists."""
    from splitinfer.errors import ConfigError
    from splitinfer.run import check_command_line

    choices = _options(group) if group != "hydra/launcher" else ["basic", "joblib", "slurm", "submitit_local"]
    good = choices[-1]
    bad = good + "x"
    for argv in ([f"{group}={bad}"], ["-m", f"{group}={good},{bad}"], ["-m", f"{group}=choice({good},{bad})"]):
        with pytest.raises(ConfigError) as e:
            check_command_line(argv)
        msg = str(e.value)
        assert "\n" not in msg
        assert msg.startswith(f"{group}={bad}: no such option in config group '{group}'")
        assert f"Did you mean {group}={good}?" in msg
        assert all(c in msg for c in choices)
    check_command_line([f"{group}={good}"])  # an existing option passes
    check_command_line(["-m", f"{group}={','.join(choices[:2])}"])


def test_a_required_group_cannot_be_null():
    from splitinfer.errors import ConfigError
    from splitinfer.run import check_command_line

    with pytest.raises(ConfigError, match=r"codec=null: the config group 'codec' needs an option.*fp32"):
        check_command_line(["codec=null"])
    check_command_line(["experiment=null", "split.cut=3", "hydra.run.dir=x"])  # not a group / nullable


def test_unknown_option_in_a_sweep_fails_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", *TINY, "split.cut=1,2", "codec=int8,int9", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "codec=int9: no such option in config group 'codec'. Did you mean codec=int8?" in r.stderr
    assert not sweep.exists()
    # An experiment's sweeper params are checked too (in the sweep process, before it launches a job).
    r = run_cli(["-m", "experiment=smoke", 'hydra.sweeper.params.codec="fp16,int9"', f"hydra.sweep.dir={sweep}"],
                tmp_path, timeout=60)
    assert r.returncode == 2 and "codec=int9: no such option" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not sweep.exists()


def test_splitinfer_sweep_refuses_unknown_options(tmp_path, capsys):
    from splitinfer.cli import main

    for argv in (["--experiment", "smok"], ["--launcher", "jobib"], ["codec=fp16,int9"]):
        assert main(["sweep", "--out", str(tmp_path / "sw"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("splitinfer sweep: error: ") and err.count("\n") == 1 and "Did you mean" in err
    assert not (tmp_path / "sw").exists()


def test_invalid_cut_refused_before_the_model_loads(tmp_path):
    from splitinfer import cache, experiment

    cfg = compose(["split.cut=31", "logger=jsonl"])  # the real model: 30 layers
    with pytest.raises(ValueError, match=r"split.cut=31.*0\.\.30"):
        experiment.run_job(cfg, out_dir=tmp_path)
    assert not cache.memos().get("experiment.models")  # refused before the weights loaded (no wall-clock bound: CI is noisy)
    r = run_cli([*TINY, "split.cut=-1"], tmp_path, timeout=60)
    assert r.returncode == 2 and "split.cut=-1" in r.stderr and "0..4" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "outputs").exists(), "a refused job must not leave an empty folder behind"


def test_empty_corpus_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    from splitinfer.experiment import run_job

    cfg = compose([*TINY, "data=text", f"data.path={empty}"])
    with pytest.raises(EmptyCorpusError, match="has no text"):
        run_job(cfg, out_dir=tmp_path / "job")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_job(compose([*TINY, "data=jsonl", "data.path=/no/such.jsonl"]), out_dir=tmp_path / "job2")


def test_wandb_failure_falls_back_to_jsonl(tmp_path, monkeypatch):
    import wandb

    def broken_init(*a, **k):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", broken_init)
    from splitinfer.experiment import run_job

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = run_job(compose([*TINY, "logger=wandb", "metrics.quality=false", "metrics.generation=false"]),
                    out_dir=tmp_path)
    assert any("W&B logging is off" in str(w.message) for w in caught)
    assert (tmp_path / "metrics.jsonl").read_text().count('"kind": "metrics"') == 1
    assert m["cut"] == 2


@pytest.mark.parametrize("launcher, target", [
    ("basic", "BasicLauncher"), ("joblib", "JoblibLauncher"), ("submitit_local", "LocalLauncher"),
    ("slurm", "SlurmLauncher"),
])
def test_launchers_compose(launcher, target):
    cfg = compose([f"hydra/launcher={launcher}"], hydra_cfg=True)
    assert cfg.hydra.launcher._target_.endswith(target)
