"""Activation codecs: compress the hidden state at the cut into a JSON header plus byte buffers.

    codec = build_codec("int8")        # DEFAULT_CODEC; or "ec40", "int4_b32_outlier_lz4", {"name": ..., **params}
    enc = codec.encode(h)              # EncodedTensor; enc.nbytes = true wire bytes (header + buffers)
    frames = enc.to_frames()           # [compact JSON header, *buffers] for ZeroMQ multipart
    h2 = decode_any(EncodedTensor.from_frames(frames))   # the codec is rebuilt from the header alone

decode() returns the dtype recorded in the header (the input's) unless dtype= is given. NaN and +-Inf
come back exactly where they were. Every failure to decode faithfully (truncation, corruption, a header
that does not match its buffers, bad params) raises CodecError (a ValueError); a CRC-32 over header and
buffers catches flipped bits. Buffers are little-endian (the byte order of x86 and ARM hosts).

Header: {"codec": preset name, "v": 1 (2 for rANS streams of the compiled coder; 3 / 4 for a message of those
with escaped codes beyond int8, escapes.py), "params": {params that differ from the preset}, "dtype", "shape", "meta": {data-dependent choices, e.g. "outlier_rows": 1}, "crc"}.

One module per idea, imports pointing one way (tests/codecs/test_codecs_imports.py): errors; tensors (the one
dtype table, shape limits, tensor <-> bytes); framing (the session head) <- encoded (EncodedTensor,
StepMessage, the frame-format dispatch) <- base (Codec, header checks, checksum); params (every knob,
validated); stages (the stages the pipeline and session codecs share, and META, their one metadata schema);
pipeline (the composable codec); tokens / centering / outliers / rotation / sparsify (stages before
quantization), quantize (fixed-rate bits), stepquant (entropy-coded steps), escapes (step codes beyond int8
beside the entropy-coded int8 ones), rans (the static models and the
old plain-numpy coder), entropy (the compiled ANS coder, constriction), bitpack, lossless (lz4, zstd), raw
("none": the tensor's bytes), petals (the bitsandbytes peer), registry (names, build_codec, wire_spec),
session + adaptive (`<preset>_s`: the session wire format, a few bytes of binary framing per step, and for
ecNNg_s context-adaptive coding across a session's steps; see session.py).
"""

from splitinfer.codecs.base import Codec
from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.codecs.errors import CodecError, CodecFormatError
from splitinfer.codecs.params import PipelineParams
from splitinfer.codecs.petals import PetalsBlockwise8Codec
from splitinfer.codecs.pipeline import PipelineCodec
from splitinfer.codecs.raw import RawCodec
from splitinfer.codecs.registry import (
    DEFAULT_CODEC,
    available_codecs,
    build_codec,
    codec_from_header,
    decode_any,
    session_codecs,
    wire_spec,
)
from splitinfer.codecs.session import AdaptiveStepCodec, SessionCodec

__all__ = [
    "DEFAULT_CODEC",
    "Codec",
    "CodecError",
    "CodecFormatError",
    "EncodedTensor",
    "PetalsBlockwise8Codec",
    "PipelineCodec",
    "PipelineParams",
    "RawCodec",
    "available_codecs",
    "build_codec",
    "codec_from_header",
    "decode_any",
    "session_codecs",
    "wire_spec",
    "AdaptiveStepCodec",
    "SessionCodec",
]
