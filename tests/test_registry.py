"""One registry helper: attacks, defenses and codecs refuse unknown names the same way."""

from __future__ import annotations

import pytest

from splitinfer.errors import ConfigError
from splitinfer.registry import Registry


def test_registry_lookup_register_and_closest_match():
    r = Registry("widget", {"alpha": 1, "beta": 2}, example="widget=alpha")
    assert r.get("alpha") == 1 and r.names() == ["alpha", "beta"] and "beta" in r and len(r) == 2
    r.register("gamma", 3)
    assert r.get("gamma") == 3
    with pytest.raises(ValueError, match="twice"):
        r.register("gamma", 4)
    with pytest.raises(ConfigError, match=r"unknown widget 'alpah'\. Did you mean 'alpha'\?.*widget=alpha"):
        r.get("alpah")


def test_parts_share_the_registry_error():
    from splitinfer.codecs import build_codec
    from splitinfer.privacy import build_attack, build_defense

    with pytest.raises(ConfigError, match="Did you mean 'gaussian'"):
        build_defense("gausian")
    with pytest.raises(ConfigError, match="Did you mean 'whitebox'"):
        build_attack("whitebx")
    with pytest.raises(ValueError, match="Did you mean int8"):
        build_codec("int9")


def test_a_module_attribute_entry_is_imported_on_first_lookup():
    """Explicit registration without an import cycle: the fitted defenses are listed in DEFENSES by
    "module:Class" and imported when first looked up."""
    from splitinfer.privacy.defenses import DEFENSES, Defense

    r = Registry("thing", {"ordered": "collections:OrderedDict"})
    from collections import OrderedDict

    assert r.get("ordered") is OrderedDict and r["ordered"] is OrderedDict
    for name in ("fisher_noise", "nopeek", "secret_adapter"):
        cls = DEFENSES.get(name)
        assert issubclass(cls, Defense) and cls.name == name

