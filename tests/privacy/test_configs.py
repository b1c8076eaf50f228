"""Every attack/defense config composes and instantiates to the documented object."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from splitinfer.privacy import ATTACKS, DEFENSES, Attack, Defense

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_configs_instantiate(name):
    path = CONF / "attack" / f"{name}.yaml"
    assert path.read_text().startswith("#") and "python -m splitinfer.run" in path.read_text()
    obj = instantiate(OmegaConf.load(path))
    assert isinstance(obj, Attack) and obj.name == name


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_defense_configs_instantiate(name):
    path = CONF / "defense" / f"{name}.yaml"
    assert "python -m splitinfer.run" in path.read_text()
    obj = instantiate(OmegaConf.load(path))
    assert isinstance(obj, Defense) and obj.name == name


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - {"none"}))
def test_attack_config_defaults_are_bounded(name):
    """A plain `attack=<name>` job is a quick run: a few short victims under a time budget of at most
    2 min; the config's comment says how to run the full version."""
    text = (CONF / "attack" / f"{name}.yaml").read_text()
    cfg = OmegaConf.load(CONF / "attack" / f"{name}.yaml")
    assert 0 < cfg.time_budget_s <= 120
    assert cfg.victims <= 4 and cfg.victim_tokens <= 64
    assert "attack.victims=4 attack.victim_tokens=null" in text or "attack.train_budget_s=" in text
    obj = instantiate(cfg)
    assert (obj.time_budget_s, obj.victims, obj.victim_tokens) == (cfg.time_budget_s, cfg.victims,
                                                                   cfg.victim_tokens)
