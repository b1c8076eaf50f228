"""The registry: names, dict specs, overrides, headers -> codecs, and every conf/codec/*.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitinfer.codecs import (
    DEFAULT_CODEC,
    Codec,
    CodecError,
    available_codecs,
    build_codec,
    codec_from_header,
)

REQUIRED = ["fp32", "fp16", "bf16", "int8", "int8_token", "int4_b32", "int4_b32_outlier_lz4",
            "int3_b32_outlier_rot_lz4", "petals_blockwise8"]
CONF = Path(__file__).resolve().parents[2] / "conf" / "codec"


def test_required_names_and_default_are_available():
    names = available_codecs()
    assert set(REQUIRED) <= set(names)
    assert DEFAULT_CODEC in names and isinstance(build_codec(DEFAULT_CODEC), Codec)
    for bits in (8, 6, 5, 4, 3, 2):
        for group in ("tensor", "token", "b32"):
            assert f"int{bits}_{group}" in names


def test_dict_specs_overrides_and_spec_round_trip():
    a = build_codec("int4_b32", block=64)
    b = build_codec({"name": "int4_b32", "block": 64})
    c = build_codec({"name": "int4_b32", "params": {"block": 64}})
    assert a.overrides == b.overrides == c.overrides == {"block": 64}
    assert build_codec(a.spec()).overrides == {"block": 64}
    free = build_codec({"bits": 3, "rotate": True, "lossless": "lz4"})
    assert free.name == "pipeline" and free.spec() == {"name": "pipeline", "bits": 3, "rotate": True, "lossless": "lz4"}
    assert build_codec("int4_b32", block=32).overrides == {}  # an override equal to the preset is dropped
    assert build_codec(a) is a


def test_header_names_codec_and_params():
    codec = build_codec("int4_b32", block=64)
    enc = codec.encode(torch.randn(2, 128))
    assert enc.header["codec"] == "int4_b32" and enc.header["params"] == {"block": 64}
    assert enc.header["dtype"] == "float32" and enc.header["shape"] == [2, 128]
    rebuilt = codec_from_header(enc.header)
    assert rebuilt.spec() == codec.spec()


def test_bad_specs():
    with pytest.raises(CodecError, match="must be a name, a dict or a Codec"):
        build_codec(3)
    with pytest.raises(CodecError, match="not plain data"):
        build_codec({"name": "int8", "seed": object()})
    with pytest.raises(CodecError, match="rot_block=3 is invalid: must be a power of two"):
        build_codec("int4_b32", rot_block=3)
    with pytest.raises(CodecError, match="topk=0 is invalid"):
        build_codec("fp16", topk=0)


def test_petals_needs_no_params_and_is_optional():
    with pytest.raises(CodecError, match="takes no params"):
        build_codec("petals_blockwise8", bits=4)


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_codec_config_instantiates(path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    first = path.read_text().splitlines()[0]
    assert first == f"# python -m splitinfer.run codec={path.stem}"
    codec = instantiate(OmegaConf.load(path))
    assert isinstance(codec, Codec) and codec.name == path.stem
    x = torch.randn(1, 20, 576)
    if not getattr(codec, "bound", True):  # a learned codec: fitted per model and cut (test_codecs_learned)
        with pytest.raises(CodecError, match=r"bind\(lm, cut\)"):
            codec.encode(x)
        return
    assert codec.decode(codec.encode(x)).shape == x.shape


def test_config_with_params_dict():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"_target_": "splitinfer.codecs.build_codec", "spec": {"name": "int4_b32", "block": 64}})
    assert instantiate(cfg).overrides == {"block": 64}
    cfg = OmegaConf.create({"_target_": "splitinfer.codecs.build_codec", "spec": "int4_b32", "block": 16})
    assert instantiate(cfg).overrides == {"block": 16}


def test_conf_dir_has_the_default():
    assert (CONF / f"{DEFAULT_CODEC}.yaml").exists()
