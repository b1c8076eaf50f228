"""Real bit-packing: n codes of `bits` bits each take ceil(n*bits/8) bytes (+1 byte per extra plane).

Widths 1, 2, 4 and 8 pack directly, little-endian within a byte (for 4 bits: byte = lo | hi << 4),
using shifts and ors on machine words (2 codes per uint16, 4 per uint32) or np.packbits for 1 bit.
Other widths are split into bit planes of those widths, lowest bits first: 3 = 2 + 1, 5 = 4 + 1,
6 = 4 + 2, 7 = 4 + 2 + 1. The layout is fixed, so it does not depend on the machine's byte order.
numpy does the work because its integer casts are several times faster than torch's on one core.
"""

from __future__ import annotations

import numpy as np

from splitinfer.codecs.errors import CodecError

_PLANES = {1: (1,), 2: (2,), 3: (2, 1), 4: (4,), 5: (4, 1), 6: (4, 2), 7: (4, 2, 1), 8: (8,)}


def packed_nbytes(n: int, bits: int) -> int:
    return sum((n * w + 7) // 8 for w in _PLANES[bits])


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes (values < 2**bits) -> uint8 array of packed_nbytes(n, bits) bytes."""
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    planes, shift = [], 0
    for w in _PLANES[bits]:
        plane = flat if len(_PLANES[bits]) == 1 else (flat >> shift) & ((1 << w) - 1)
        planes.append(_pack_plane(plane, w))
        shift += w
    return planes[0] if len(planes) == 1 else np.concatenate(planes)


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of pack_bits: packed uint8 bytes -> n uint8 codes."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size != packed_nbytes(n, bits):
        raise CodecError(f"packed codes hold {packed.size} bytes; {n} codes of {bits} bits need "
                         f"{packed_nbytes(n, bits)}")
    if len(_PLANES[bits]) == 1:
        return _unpack_plane(packed, bits, n)
    out = np.zeros(n, dtype=np.uint8)
    offset, shift = 0, 0
    for w in _PLANES[bits]:
        size = (n * w + 7) // 8
        out |= _unpack_plane(packed[offset: offset + size], w, n) << shift
        offset, shift = offset + size, shift + w
    return out


def _pack_plane(c: np.ndarray, w: int) -> np.ndarray:
    if w == 8:
        return c
    if w == 4:
        word = _pad_to(c, 2).view("<u2")
        return (word | (word >> 4)).astype(np.uint8)
    if w == 2:
        word = _pad_to(c, 4).view("<u4")
        return (word | (word >> 6) | (word >> 12) | (word >> 18)).astype(np.uint8)
    return np.packbits(c, bitorder="little")


def _unpack_plane(p: np.ndarray, w: int, n: int) -> np.ndarray:
    if w == 8:
        return p
    if w == 4:
        word = p.astype("<u2")
        return ((word | (word << 4)) & 0x0F0F).view(np.uint8)[:n]
    if w == 2:
        word = p.astype("<u4")
        return ((word | (word << 6) | (word << 12) | (word << 18)) & 0x03030303).view(np.uint8)[:n]
    return np.unpackbits(p, count=n, bitorder="little")


def _pad_to(flat: np.ndarray, multiple: int) -> np.ndarray:
    rem = flat.size % multiple
    if rem == 0:
        return flat
    return np.concatenate([flat, np.zeros(multiple - rem, dtype=flat.dtype)])
