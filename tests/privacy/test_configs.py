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
