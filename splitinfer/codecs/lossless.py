"""Lossless back ends (lz4 required, zstd optional) for already-quantized byte buffers.

lz4 on raw fp32/fp16 activations saves nothing (measured ratio 1.00); it only pays after quantization.
zstd's Huffman stage also exploits the skewed distribution of unpacked quantization codes.
"""

from __future__ import annotations

from splitinfer.codecs.encoded import Buffer
from splitinfer.codecs.errors import CodecError

METHODS = ("lz4", "zstd")
# lz4 cannot expand data by more than ~255x; a header claiming more is lying (or a decompression bomb).
_LZ4_MAX_RATIO = 255


def compress(data: bytes, method: str, level: int) -> bytes:
    if method == "lz4":
        import lz4.block

        return lz4.block.compress(data, store_size=False)
    if method == "zstd":
        zstd = _zstd()
        # Quantized activations are noise to an LZ matcher: short matches cost more than the literals
        # they replace, so ask for long matches only and let the Huffman stage do the work (~4x faster
        # than zstd's defaults, and 0.15 (level 1) to 0.6 (level 3) bit per value smaller on step codes).
        params = zstd.ZstdCompressionParameters.from_level(level, min_match=7)
        return zstd.ZstdCompressor(compression_params=params).compress(data)
    raise CodecError(f"unknown lossless method {method!r}; choose one of {METHODS}")


def decompress(data: Buffer, method: str, expected_len: int) -> bytes:
    """Decompress and check the result is exactly `expected_len` bytes (derived from the header)."""
    data = bytes(data)
    if method == "lz4":
        import lz4.block

        if expected_len > _LZ4_MAX_RATIO * len(data) + 64:
            raise CodecError(f"lz4 buffer of {len(data)} bytes cannot hold the {expected_len} bytes the "
                             "header announces: header and buffers do not match")
        try:
            out = lz4.block.decompress(data, uncompressed_size=expected_len) if expected_len else b""
        except lz4.block.LZ4BlockError as e:
            raise CodecError(f"corrupted or truncated lz4 buffer ({len(data)} bytes): {e}") from e
    elif method == "zstd":
        zstd = _zstd()
        try:
            size = zstd.frame_content_size(data)
            if size != expected_len:
                raise CodecError(f"zstd frame holds {size} bytes but the header announces {expected_len}")
            out = zstd.ZstdDecompressor().decompress(data, max_output_size=expected_len)
        except zstd.ZstdError as e:
            raise CodecError(f"corrupted or truncated zstd buffer ({len(data)} bytes): {e}") from e
    else:
        raise CodecError(f"unknown lossless method {method!r}; choose one of {METHODS}")
    if len(out) != expected_len:
        raise CodecError(f"{method} buffer decompressed to {len(out)} bytes, header announces {expected_len}")
    return out


def _zstd():
    try:
        import zstandard
    except ImportError as e:
        raise CodecError("lossless='zstd' needs the optional package zstandard: pip install "
                         "'splitinfer[zstd]' (or use lossless='lz4')") from e
    return zstandard
