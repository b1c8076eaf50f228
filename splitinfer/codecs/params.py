"""PipelineParams: every knob of the composable codec, with type and range checks.

Headers arrive from the network, so every value is checked for its exact type and range before use;
nothing is ever eval'd or unpickled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from splitinfer.codecs.entropy import CODERS
from splitinfer.codecs.errors import CodecError
from splitinfer.codecs.lossless import METHODS
from splitinfer.codecs.quantize import GRANULARITIES, SCALE_FORMATS
from splitinfer.codecs.stepquant import STEP_RANGE
from splitinfer.codecs.tensors import WIRE_FLOATS

FLOAT_DTYPES = tuple(WIRE_FLOATS)


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool is an int subclass; a JSON true must not pass as 1


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "bits": (lambda v: v is None or (_is_int(v) and 2 <= v <= 8), "null or an int in 2..8"),
    "float_dtype": (lambda v: v in FLOAT_DTYPES, f"one of {FLOAT_DTYPES}"),
    "granularity": (lambda v: v in GRANULARITIES, f"one of {GRANULARITIES}"),
    "block": (lambda v: _is_int(v) and 1 <= v <= 65536, "an int in 1..65536"),
    "scale_format": (lambda v: v in SCALE_FORMATS, f"one of {SCALE_FORMATS}"),
    "outliers": (lambda v: _is_int(v) and 0 <= v <= 4096, "an int in 0..4096 (channels kept at 16 bit)"),
    "rotate": (lambda v: type(v) is bool, "true or false"),
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**63, "an int in 0..2**63-1"),
    "rot_block": (lambda v: _is_int(v) and 2 <= v <= 4096 and v & (v - 1) == 0, "a power of two in 2..4096"),
    "topk": (lambda v: v is None or (type(v) in (int, float) and 0 < v <= 1), "null or a fraction in (0, 1]"),
    "outlier_token_ratio": (lambda v: v is None or (type(v) in (int, float) and 1 <= v <= 1e6),
                            "null or a number in 1..1e6 (row max / median row max)"),
    "center": (lambda v: type(v) is bool, "true or false"),
    "step": (lambda v: v is None or (type(v) in (int, float) and STEP_RANGE[0] <= v <= STEP_RANGE[1]),
             f"null or a number in {STEP_RANGE[0]}..{STEP_RANGE[1]} (step / row RMS)"),
    "rans_groups": (lambda v: _is_int(v) and 0 <= v <= 51, "an int in 0..51 (0: codes go to the lossless stage)"),
    "coder": (lambda v: v in CODERS, f"one of {CODERS} (the compiled ANS coder, or the old plain-numpy rANS)"),
    "refs": (lambda v: type(v) is bool, "true or false (reference rows in a prefill, session codecs only)"),
    "pack": (lambda v: type(v) is bool, "true or false"),
    "lossless": (lambda v: v is None or v in METHODS, f"null or one of {METHODS}"),
    "level": (lambda v: _is_int(v) and 1 <= v <= 22, "an int in 1..22 (zstd level)"),
}


@dataclass(frozen=True)
class PipelineParams:
    """Stages run in this order: non-finite side channel -> outlier tokens -> centering -> outlier
    channels -> rotation -> top-k -> quantize (fixed-rate `bits`, entropy-coded `step`, or a cast to
    float_dtype when both are None) -> bit-pack -> lossless."""

    bits: int | None = None  # fixed-rate quantization to this many bits (None: see step)
    float_dtype: str = "fp32"  # wire dtype of unquantized values
    granularity: str = "block"  # quantization scale per "tensor", "token" (row) or "block"
    block: int = 32  # values per scale along the channel dim (granularity="block")
    scale_format: str = "fp16"  # "fp16" or "log8" (1 byte per scale, see quantize.py)
    outliers: int = 0  # channels with the largest |h| sent at 16 bit, zeroed before quantization
    rotate: bool = False  # seeded random Hadamard rotation before quantization
    seed: int = 0  # rotation seed (signs)
    rot_block: int = 256  # largest Hadamard block; the actual block also divides the row width
    topk: float | None = None  # keep this fraction of values per row (largest |value|)
    outlier_token_ratio: float | None = None  # rows with max|v| > ratio x median row max go in fp16
    center: bool = False  # subtract per-channel means (sent in fp16) when the message has >= 16 rows
    step: float | None = None  # entropy-coded quantization: round to step x row RMS (use with zstd)
    rans_groups: int = 0  # step codes: rANS with this many per-channel-group tables (0: off), see rans.py
    coder: str = "ans"  # rans_groups' entropy coder: "ans" (constriction, entropy.py) or "rans_py" (rans.py)
    refs: bool = False  # session codecs: a prefill row may be coded against an earlier row it names (refrows.py)
    pack: bool = True  # bit-pack codes; False keeps one code per byte (helps zstd's entropy stage)
    lossless: str | None = None  # "lz4" or "zstd" on every buffer, kept only where it shrinks
    level: int = 1  # zstd level (higher is slower and, on quantized activations, barely smaller)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PipelineParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CodecError(f"unknown codec params {unknown}; valid params: {sorted(known)}")
        for key, value in values.items():
            ok, allowed = _RULES[key]
            if not ok(value):
                raise CodecError(f"codec param {key}={value!r} is invalid: must be {allowed}")
        if values.get("bits") is not None and values.get("step") is not None:
            raise CodecError("codec params bits and step are exclusive: bits = fixed-rate quantization, step = "
                             "entropy-coded quantization; set one of them to null")
        if values.get("rans_groups") and values.get("step") is None:
            raise CodecError("codec param rans_groups entropy-codes step-quantized integers: it needs `step` "
                             "(set rans_groups=0 for fixed-rate `bits`)")
        if values.get("refs") and not (values.get("rans_groups") and values.get("coder", "ans") == "ans"):
            raise CodecError("codec param refs=true codes prefill rows against earlier rows inside the compiled rANS "
                             "model: it needs rans_groups > 0 and coder='ans' (e.g. ec25g_s:refs=true)")
        floats = ("topk", "outlier_token_ratio", "step")
        return cls(**{k: (float(v) if k in floats and v is not None else v) for k, v in values.items()})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def diff(self, base: PipelineParams) -> dict[str, Any]:
        """Params that differ from `base` (what a header carries next to the preset name)."""
        mine, theirs = self.as_dict(), base.as_dict()
        return {k: v for k, v in mine.items() if v != theirs[k]}
