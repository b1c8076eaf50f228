"""Named codec presets, `build_codec`, and rebuilding a codec from a received header.

Fixed-rate presets follow one grammar so they read as their recipe:
    int{bits}_{tensor|token|b<block>}[_outlier][_rot][_log8][_tc][_unpacked][_lz4|_zstd]
e.g. int4_b32_outlier_lz4 = 4-bit codes, one fp16 scale per 32 values, 8 outlier channels in fp16,
bit-packed, then lz4; `_tc` adds outlier tokens (fp16 rows) and per-channel centering.
Entropy-coded presets are ec{NN}: values rounded to NN/100 x their row's RMS, outlier tokens in fp16,
centering, zstd (see stepquant.py); ec{NN}g sends the same integers through a grouped rANS coder
with per-channel prediction instead (see rans.py): identical reconstruction, fewer bits. Any preset can be tweaked: build_codec("int4_b32", block=64) or
build_codec({"name": "int4_b32", "block": 64}); a dict without a name is a free-form pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch

from splitinfer.codecs.base import Codec
from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.codecs.errors import CodecError
from splitinfer.codecs.params import PipelineParams
from splitinfer.codecs.petals import PetalsBlockwise8Codec
from splitinfer.codecs.pipeline import PipelineCodec

OUTLIER_CHANNELS = 8  # "_outlier": SmolLM2 has 2-4 massive channels per layer; 8 leaves margin
OUTLIER_TOKEN_RATIO = 8.0  # "_tc"/ec: the attention sink is 15-300x the median token's max |h|

_PRESETS: dict[str, dict[str, Any]] = {
    "pipeline": {},  # base of free-form dict specs; equal to fp32
    "fp32": {},
    "fp16": {"float_dtype": "fp16"},
    "bf16": {"float_dtype": "bf16"},
    "fp16_lz4": {"float_dtype": "fp16", "lossless": "lz4"},
    "top10_fp16": {"topk": 0.1, "float_dtype": "fp16"},
    "top25_int8_token": {"topk": 0.25, "bits": 8, "granularity": "token"},
}
_PEERS = {"petals_blockwise8": PetalsBlockwise8Codec}
_TC = {"outlier_token_ratio": OUTLIER_TOKEN_RATIO, "center": True}


def _int_preset(bits: int, group: str, *, outlier: bool = False, rot: bool = False, log8: bool = False,
                tc: bool = False, unpacked: bool = False, lossless: str | None = None) -> None:
    params: dict[str, Any] = {"bits": bits}
    if group in ("tensor", "token"):
        params["granularity"] = group
    else:
        params["block"] = int(group[1:])
    name = f"int{bits}_{group}"
    for flag, suffix, extra in (
        (outlier, "outlier", {"outliers": OUTLIER_CHANNELS}),
        (rot, "rot", {"rotate": True}),
        (log8, "log8", {"scale_format": "log8"}),
        (tc, "tc", _TC),
        (unpacked, "unpacked", {"pack": False}),
        (lossless, lossless, {"lossless": lossless}),
    ):
        if flag:
            name += f"_{suffix}"
            params.update(extra)
    _PRESETS[name] = params


for _bits in (8, 6, 5, 4, 3, 2):
    for _group in ("tensor", "token", "b32", "b64"):
        _int_preset(_bits, _group)
    for _group in ("b32", "b64"):
        _int_preset(_bits, _group, outlier=True)
        _int_preset(_bits, _group, outlier=True, rot=True)
        _int_preset(_bits, _group, outlier=True, rot=True, log8=True)
        _int_preset(_bits, _group, outlier=True, rot=True, log8=True, tc=True)
        _int_preset(_bits, _group, tc=True)
        _int_preset(_bits, _group, outlier=True, tc=True)
for _bits in (8, 4):
    _int_preset(_bits, "token", lossless="lz4")
    _int_preset(_bits, "b32", outlier=True, lossless="lz4")
    _int_preset(_bits, "b32", outlier=True, lossless="zstd")
    _int_preset(_bits, "b32", outlier=True, unpacked=True, lossless="zstd")
for _bits in (4, 3, 2):
    _int_preset(_bits, "b32", outlier=True, rot=True, lossless="lz4")
for _nn in (15, 20, 25, 30, 34, 37, 40, 45, 50, 60):
    _PRESETS[f"ec{_nn}"] = {"step": _nn / 100, **_TC, "lossless": "zstd"}
RANS_GROUPS = 8  # "ec{NN}g": 8 frequency tables; 6-12 are within 0.005 bit of each other on SmolLM2
for _nn in (20, 25, 28, 30, 32, 34, 37, 38, 40):
    _PRESETS[f"ec{_nn}g"] = {"step": _nn / 100, **_TC, "lossless": "zstd", "rans_groups": RANS_GROUPS}
_PRESETS["int8"] = dict(_PRESETS["int8_b64_tc"])  # the project default, see DEFAULT_CODEC

# int8 = 8-bit codes, one fp16 scale per 64 values, attention-sink token in fp16, per-channel centering.
# Measured on SmolLM2 at cuts 1-29: 8.32-8.43 bits per value, Δppl -0.003..+0.06 %, KL <= 1e-4 nats
# (3-23x below the Petals peer at 4 % more bytes), ~720 MB/s encode+decode on one core
# (experiments/codec_rate_distortion).
DEFAULT_CODEC = "int8"


SESSION_SUFFIX = "_s"  # "<preset>_s": the session wire format (session.py); adaptive coding for ecNNg_s
SESSION_CODECS = ("fp16_s", "int8_s", "ec25g_s", "ec30g_s", "ec34g_s", "ec37g_s", "ec40g_s")


def session_codecs() -> list[str]:
    """The session presets the benchmark and docs use (any preset name + "_s" builds one)."""
    return list(SESSION_CODECS)


def available_codecs() -> list[str]:
    """Every name build_codec accepts (petals_blockwise8 needs the optional bitsandbytes)."""
    return sorted([*_PRESETS, *_PEERS])


def learned_codecs() -> list[str]:
    """The learned-bottleneck presets (codecs/learned.py). Not in available_codecs(): they encode only once
    bound to a model and cut (`build_codec(name).bind(lm, cut)`)."""
    from splitinfer.codecs.learned import LEARNED_PRESETS

    return sorted(LEARNED_PRESETS)


def build_codec(spec: str | Mapping[str, Any] | Codec = DEFAULT_CODEC, **overrides: Any) -> Codec:
    """Build a codec from a preset name, a dict {"name": preset, **params} (or {"name", "params": {...}}),
    or a dict of params alone (a free-form pipeline). Keyword overrides win over the spec's params."""
    if isinstance(spec, Codec):
        return build_codec(spec.spec(), **overrides) if overrides else spec
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, Mapping):
        params = {str(k): v for k, v in spec.items()}
        name = params.pop("name", "pipeline")
        nested = params.pop("params", None)
        if nested is not None:
            if not isinstance(nested, Mapping):
                raise CodecError(f"codec spec 'params' must be a mapping, got {type(nested).__name__}")
            params.update({str(k): v for k, v in nested.items()})
    else:
        raise CodecError(f"codec spec must be a name, a dict or a Codec, got {type(spec).__name__}")
    params.update(overrides)
    if not isinstance(name, str):
        raise CodecError(f"codec name must be a string, got {name!r}")
    params_json = json.dumps(params, sort_keys=True, allow_nan=False, default=_no_json)
    from splitinfer.codecs.learned import LEARNED_PRESETS, LearnedCodec

    if name in LEARNED_PRESETS:  # a fresh instance: it is bound to one (model, cut) with bind(lm, cut)
        return LearnedCodec(name, json.loads(params_json))
    base = name[: -len(SESSION_SUFFIX)]
    if name.endswith(SESSION_SUFFIX) and (base in _PRESETS or base in _PEERS):
        from splitinfer.codecs.session import build_session

        return build_session(_build(base, params_json), name)  # a fresh instance: it may hold session state
    if params.get("refs"):
        raise CodecError(f"codec param refs=true needs the session format (reference rows are a session codec's "
                         f"prefill coding): use {name}_s, e.g. {{'name': '{name}_s', 'refs': true}}")
    return _build(name, params_json)


def _no_json(value: Any) -> Any:
    raise CodecError(f"codec param value {value!r} is not plain data (str/int/float/bool/None)")


@lru_cache(maxsize=256)
def _build(name: str, params_json: str) -> Codec:
    params = json.loads(params_json)
    if name in _PEERS:
        return _PEERS[name](name, params)
    if name not in _PRESETS:
        raise CodecError(_unknown_codec_message(name))
    base = PipelineParams.from_mapping(_PRESETS[name])
    full = PipelineParams.from_mapping({**_PRESETS[name], **params})
    return PipelineCodec(full, name=name, overrides=full.diff(base))


NAME_GRAMMAR = ("int{2..8}_{tensor|token|b32|b64}[_outlier][_rot][_log8][_tc][_lz4|_zstd], fp32, fp16, bf16, "
                "top10_fp16, ec15..ec60, ec20g/ec25g/ec28g/ec30g/ec32g/ec34g/ec37g/ec38g/ec40g, petals_blockwise8; "
                "any of them + _s for the session wire format (e.g. ec37g_s)")
LIST_COMMAND = 'python -c "from splitinfer.codecs import available_codecs; print(available_codecs())"'


def _unknown_codec_message(name: str) -> str:
    """One short line: the nearest names, the naming grammar, and where the full list is."""
    from splitinfer.registry import closest

    near = closest(name, available_codecs())
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    return (f"unknown codec {name!r}.{hint} Names: {NAME_GRAMMAR} (not every combination exists; "
            f"all {len(available_codecs())}: {LIST_COMMAND}), or a dict {{'name': <preset>, **params}} for a "
            "custom pipeline.")


def codec_from_header(header: Mapping[str, Any]) -> Codec:
    """The codec that decodes `header`: name checked against the registry, every param checked for
    type and range (nothing is eval'd or unpickled)."""
    if not isinstance(header, Mapping):
        raise CodecError(f"header must be a dict, got {type(header).__name__}")
    name, params = header.get("codec"), header.get("params", {})
    if not isinstance(name, str):
        raise CodecError(f"header has no codec name (got {name!r})")
    if not isinstance(params, dict) or "name" in params or "params" in params:
        raise CodecError(f"header params must be a dict of codec params, got {params!r}")
    codec = build_codec({"name": name, **params})
    if codec.overrides != params:
        raise CodecError(f"header params {params!r} are not in canonical form (expected {codec.overrides!r})")
    return codec


def wire_spec(codec: Any) -> dict[str, Any]:
    """The spec a session sends at open: `codec.spec()`, plus the entropy coder of a codec that has one.

    `coder` names the rANS stream format (entropy.py); a peer from before the compiled coder does not know
    the param and refuses the session at open (`bad_codec`: "unknown codec params ['coder']") instead of
    failing on the first step. A current peer builds the same codec from either form."""
    spec = dict(codec.spec() if hasattr(codec, "spec") else {"name": codec.name})
    params = getattr(codec, "params", None)
    if isinstance(params, PipelineParams) and params.rans_groups:
        spec.setdefault("coder", params.coder)
    return spec


def decode_any(enc: EncodedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Decode an EncodedTensor with whatever codec its header names."""
    if not isinstance(enc, EncodedTensor):
        raise CodecError(f"decode_any expects an EncodedTensor, got {type(enc).__name__}")
    return codec_from_header(enc.header).decode(enc, dtype)
