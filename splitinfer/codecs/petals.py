"""The peer codec: bitsandbytes' blockwise dynamic 8-bit quantization, as Petals/hivemind ship hidden
states (hivemind CompressionType.BLOCKWISE_8BIT).

Wire contents mirror hivemind's serialisation: float32 absmax per block of 4096 values, the float32
256-entry dynamic codebook (1 KiB per tensor), and one uint8 code per value; hivemind's two int64
length prefixes are replaced by our header. Optional dependency: pip install 'splitinfer[petals]'.
NaN/Inf go through the same exact side channel as the pipeline codecs (bitsandbytes alone would turn
a whole 4096-value block into NaN).
"""

from __future__ import annotations

import math
import warnings

import torch

from splitinfer.codecs.base import Codec, check_input, saturate_for, seal
from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.codecs.errors import CodecError

BLOCKSIZE = 4096  # hivemind's BlockwiseQuantization.EXTRA_PARAMS
CODEBOOK_SIZE = 256


def _bnb():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import bitsandbytes.functional as F
    except ImportError as e:
        raise CodecError("codec 'petals_blockwise8' needs the optional package bitsandbytes: "
                         "pip install 'splitinfer[petals]'") from e
    return F


class PetalsBlockwise8Codec(Codec):
    """bitsandbytes quantize_blockwise (dynamic 8-bit map, blocks of 4096) -> ~8.01 bits per value."""

    def __init__(self, name: str = "petals_blockwise8", overrides: dict | None = None):
        if overrides:
            raise CodecError(f"petals_blockwise8 takes no params, got {sorted(overrides)}")
        self.name, self.overrides = name, {}
        self._F = _bnb()

    def encode(self, x: torch.Tensor) -> EncodedTensor:
        check_input(x)
        meta: dict = {}
        v = x.detach().reshape(-1).to(torch.float32)
        parts: list[bytes] = []
        finite = torch.isfinite(v)
        if not bool(finite.all()):
            bad = (~finite).nonzero().reshape(-1)
            meta["nonfinite"] = bad.numel()
            parts += [bad.numpy().tobytes(), v[bad].numpy().tobytes()]
            v = torch.where(finite, v, torch.zeros((), dtype=v.dtype))
        if v.numel():
            codes, state = self._F.quantize_blockwise(v, blocksize=BLOCKSIZE)
            parts += [state.absmax.to(torch.float32).numpy().tobytes(),
                      state.code.to(torch.float32).numpy().tobytes(), codes.numpy().tobytes()]
        return seal(self._new_header(x, meta), parts)

    def decode(self, enc: EncodedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        shape, in_dtype, meta = self._open(enc)
        numel = math.prod(shape)
        n_bad = meta.get("nonfinite", 0)
        if set(meta) - {"nonfinite"} or type(n_bad) is not int or not 0 <= n_bad <= numel:
            raise CodecError(f"header meta {meta!r} is invalid for petals_blockwise8")
        sizes = ([8 * n_bad, 4 * n_bad] if n_bad else []) + (
            [4 * -(-numel // BLOCKSIZE), 4 * CODEBOOK_SIZE, numel] if numel else [])
        got = [memoryview(b).nbytes for b in enc.buffers]
        if got != sizes:
            raise CodecError(f"petals_blockwise8: buffer sizes {got} do not match the {sizes} implied by "
                             f"shape {list(shape)}: truncated data or mismatched header")
        out = torch.zeros(numel, dtype=torch.float32)
        if numel:
            absmax, code, codes = (torch.frombuffer(bytearray(b), dtype=t) for b, t in
                                   zip(enc.buffers[-3:], (torch.float32, torch.float32, torch.uint8), strict=True))
            if not bool(torch.isfinite(absmax).all() & torch.isfinite(code).all()):
                raise CodecError("petals_blockwise8: non-finite absmax or codebook: corrupted data")
            out = self._F.dequantize_blockwise(codes, absmax=absmax, code=code, blocksize=BLOCKSIZE)
            out = saturate_for(out.to(torch.float32).reshape(-1), dtype or in_dtype)
        if n_bad:
            bad = torch.frombuffer(bytearray(enc.buffers[0]), dtype=torch.int64)
            if int(bad.min()) < 0 or int(bad.max()) >= numel:
                raise CodecError("petals_blockwise8: non-finite indices out of range: corrupted data")
            out[bad] = torch.frombuffer(bytearray(enc.buffers[1]), dtype=torch.float32)
        return out.reshape(shape).to(dtype or in_dtype)
