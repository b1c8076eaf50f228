"""PipelineCodec: the composable codec behind every named preset except the Petals peer.

Encode runs the stages of PipelineParams in order; each stage that produces data appends buffers.
Decode first rebuilds the exact buffer layout from (params, shape, meta) alone, so a truncated,
missing, extra or mismatched buffer is a CodecError before any data is touched.

Buffers, in wire order (each only when its stage is on and has something to send):
  nonfinite_idx int64, nonfinite_val float32      positions/values of NaN and +-Inf
  row_idx int32, row_val fp16|fp32                outlier tokens (whole rows)
  means fp16                                      per-channel means (centering)
  outlier_idx int16|int32, outlier_val fp16|fp32  outlier channels
  topk_idx int16|int32                            column of each kept value
  scales | steps                                  see quantize.py / stepquant.py
  esc_pos uint32, esc_val int16                   rANS only: codes beyond int8, clamped in the stream (escapes.py)
  rans_side uint8, rans_tables uint8              rANS only: channel groups + predictors, tables (rans.py)
  codes (bit-packed) | codes (int8|int16) | rANS stream | values (float_dtype)
The non-finite side channel, outlier tokens, centering and step quantization are the shared stages of
stages.py (the session codecs run the same ones); its META is the header's meta vocabulary. A codec whose
rANS stream comes from the compiled coder (entropy.py, coder="ans") writes header version 3 (2: the
first compiled coder, whose group models spanned the whole residual range); a message with escaped codes
writes escapes.ESCAPED_FORMAT of its codec's version (1 -> 4, 3 -> 5), so a peer that predates escapes
refuses it (bad_codec).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from splitinfer.codecs import centering, entropy, escapes, rans, stages, stepquant, tokens
from splitinfer.codecs.base import FORMAT_TRIMMED, Codec, check_input, saturate_for, seal
from splitinfer.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits
from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.codecs.errors import CodecError
from splitinfer.codecs.lossless import compress, decompress
from splitinfer.codecs.outliers import (
    index_dtype,
    merge_outliers,
    num_outliers,
    outlier_value_dtype,
    split_outliers,
)
from splitinfer.codecs.params import PipelineParams
from splitinfer.codecs.quantize import QuantSpec, dequantize, quantize, scales_nbytes
from splitinfer.codecs.rotation import rotate, unrotate
from splitinfer.codecs.sparsify import kept_per_row, topk_merge, topk_split
from splitinfer.codecs.stages import checked_index, float_dtype
from splitinfer.codecs.tensors import WIRE_FLOATS, Buffer, from_bytes, rows_cols, to_bytes

# the header meta keys this codec may write (their types: stages.META)
_META = ("nonfinite", "outlier_rows", "row_dtype", "centered", "outlier_dtype", "scale_dtype", "code_dtype",
         "escapes", "value_dtype", "rans", "compressed")


class PipelineCodec(Codec):
    """Composable codec: outlier tokens -> centering -> outlier channels -> rotation -> top-k ->
    quantize (fixed-rate bits | entropy-coded step | cast) -> bit-pack -> lossless.

    `name` is the registry preset it came from; `overrides` the params that differ from that preset.
    """

    def __init__(self, params: PipelineParams, name: str = "pipeline", overrides: dict[str, Any] | None = None):
        self.params = params
        self.name = name
        self.overrides = dict(overrides or {})
        p = params
        self.plain_cast = (p.bits is None and p.step is None and not p.rotate and p.topk is None
                            and p.outliers == 0 and p.outlier_token_ratio is None and not p.center)
        self._spec = QuantSpec(p.bits, p.granularity, p.block) if p.bits is not None else None
        if p.rans_groups and p.coder == "ans":
            self.format_version = FORMAT_TRIMMED

    @property
    def format_versions(self) -> tuple[int, ...]:
        p = self.params
        return escapes.versions(self.format_version) if p.step is not None and p.rans_groups else (self.format_version,)

    # ------------------------------------------------------------------ encode
    def encode(self, x: torch.Tensor) -> EncodedTensor:
        check_input(x)
        p, meta = self.params, {}
        x = x.detach()
        parts: list[bytes] = []
        if x.numel() == 0:
            pass
        elif self.plain_cast:  # casts keep NaN/Inf natively
            parts.append(self._cast_bytes(x, meta))
        else:
            parts = self._encode_stages(x, meta)
        if p.lossless is not None:  # an entropy-coded stream (the last buffer) never shrinks: not tried
            parts, meta["compressed"] = self._compress(parts, skip_last="rans" in meta)
        header = self._new_header(x, meta)
        header["v"] = escapes.version(self.format_version, meta)
        return seal(header, parts)

    def _encode_stages(self, x: torch.Tensor, meta: dict[str, Any]) -> list[bytes]:
        p = self.params
        rows, cols = rows_cols(x.shape)
        v = x.reshape(rows, cols).to(torch.float32)
        owned = v.data_ptr() != x.data_ptr()  # stages below may write into v only if we own it
        parts: list[Buffer] = []
        v, new = stages.encode_nonfinite(v, meta, parts)
        owned |= new
        if p.outlier_token_ratio is not None:
            n_before = v.shape[0]
            v = stages.encode_outlier_rows(v, tokens.find_outlier_rows(v, p.outlier_token_ratio), meta, parts)
            owned |= v.shape[0] != n_before
        if p.center and v.shape[0] >= centering.MIN_ROWS:
            v, _ = stages.encode_means(v, meta, parts)
            owned = True

        if p.outliers:
            if not owned:
                v = v.clone()
            idx, values, v = split_outliers(v, num_outliers(p.outliers, cols))
            vdtype = outlier_value_dtype(values)
            if vdtype == torch.float32:
                meta["outlier_dtype"] = "float32"
            parts += [to_bytes(idx.to(index_dtype(cols))), to_bytes(values.to(vdtype))]

        if p.rotate:
            v = rotate(v, p.seed, p.rot_block)

        if p.topk is not None:
            v, idx = topk_split(v, kept_per_row(p.topk, cols))
            parts.append(to_bytes(idx.to(index_dtype(cols))))

        if self._spec is not None:
            codes, scale_bytes, stored = quantize(v, self._spec, p.scale_format)
            if stored == "float32" and p.granularity != "tensor":
                meta["scale_dtype"] = "float32"  # float16 fallback: a scale over/underflowed
            parts += [scale_bytes, (pack_bits(codes, p.bits) if p.pack else codes).tobytes()]
        elif p.step is not None:
            codes = stages.step_quantize(v, p.step, meta, parts)
            parts += self._entropy_code(codes, cols, meta)
        else:
            parts.append(self._cast_bytes(v, meta))
        return parts

    def _entropy_code(self, codes: np.ndarray, cols: int, meta: dict[str, Any]) -> list[Buffer]:
        """Step codes as bytes for the lossless stage, or through rANS when that is smaller (rans.py); codes
        beyond int8 go clamped through rANS with their exact values beside (escapes.py) when that is smaller."""
        p = self.params
        wide = meta.get("code_dtype") == "int16"
        plain = codes.astype(np.int16 if wide else np.int8).tobytes()
        if not p.rans_groups or codes.size < rans.MIN_VALUES or cols == 0:
            return [plain]
        escaped = escapes.split(codes) if wide else None
        if wide and escaped is None:
            return [plain]
        q, n_esc, esc = escaped or (codes, 0, [])
        side, tables, stream, info = entropy.static_coder(p.coder)[0](q.reshape(-1, cols), p.rans_groups)
        plain_size = len(compress(plain, p.lossless, p.level)) if p.lossless else len(plain)
        if len(side) + len(tables) + len(stream) + sum(map(len, esc)) >= plain_size:
            return [plain]
        meta["rans"] = info
        if n_esc:
            escapes.mark(meta, n_esc)
        return [*esc, side, tables, stream]

    def _cast_bytes(self, v: torch.Tensor, meta: dict[str, Any]) -> bytes:
        """v in float_dtype, or in float32 when that cast would turn a finite value into +-inf."""
        wire = WIRE_FLOATS[self.params.float_dtype]
        w = v.to(wire)
        if wire != v.dtype and wire != torch.float32 and int(w.isinf().sum()) != int(v.isinf().sum()):
            meta["value_dtype"] = "float32"
            w = v.to(torch.float32)
        return to_bytes(w)

    def _value_dtype(self, meta: dict[str, Any]) -> torch.dtype:
        return torch.float32 if meta.get("value_dtype") == "float32" else WIRE_FLOATS[self.params.float_dtype]

    def _compress(self, parts: list[bytes], skip_last: bool = False) -> tuple[list[bytes], list[int]]:
        out, flags = [], []
        for i, b in enumerate(parts):
            if skip_last and i == len(parts) - 1:
                out.append(b)
                flags.append(0)
                continue
            c = compress(b, self.params.lossless, self.params.level)
            keep = len(c) < len(b)
            out.append(c if keep else b)
            flags.append(int(keep))
        return out, flags

    # ------------------------------------------------------------------ decode
    def decode(self, enc: EncodedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        shape, in_dtype, meta = self._open(enc)
        out_dtype = dtype or in_dtype
        rows, cols = rows_cols(shape)
        numel = math.prod(shape)
        self._check_meta(meta, rows, numel)
        escapes.check_version(enc.header["v"], self.format_version, meta)
        layout = self._layout(rows, cols, numel, meta)
        raws = self._unwrap(enc.buffers, layout, meta)
        if numel == 0:
            return torch.empty(shape, dtype=out_dtype)
        p = self.params
        if self.plain_cast:
            v = from_bytes(raws["values"], self._value_dtype(meta)).reshape(shape)
            return (saturate_for(v.float(), out_dtype) if "value_dtype" in meta else v).to(out_dtype)

        n_rows = rows - meta.get("outlier_rows", 0)  # rows that went through quantization
        width = kept_per_row(p.topk, cols) if p.topk is not None else cols
        if self._spec is not None:
            codes = np.frombuffer(raws["codes"], dtype=np.uint8)
            if p.pack:
                codes = unpack_bits(codes, p.bits, n_rows * width)
            elif codes.size and int(codes.max()) >> p.bits:
                raise CodecError(f"codes buffer holds values >= 2**{p.bits}: corrupted data")
            v = dequantize(codes, raws["scales"], self._spec, self._scale_dtype(meta), n_rows, width)
        elif p.step is not None:
            steps = stages.read_steps(raws["steps"], n_rows, meta)
            if meta.get("rans"):
                codes = entropy.static_coder(p.coder)[1](raws["rans_side"], raws["rans_tables"], raws["codes"],
                                                         n_rows, width, p.rans_groups, *meta["rans"])
                if meta.get("escapes"):
                    codes = escapes.restore(codes, raws["esc_pos"], raws["esc_val"], meta["escapes"])
                codes = codes.reshape(-1)
            else:
                codes = np.frombuffer(raws["codes"], dtype=np.dtype(meta.get("code_dtype", "int8")))
            v = stepquant.dequantize_steps(codes, steps, n_rows, width)
        else:
            v = from_bytes(raws["values"], self._value_dtype(meta)).to(torch.float32).reshape(n_rows, width)

        if p.topk is not None:
            idx = checked_index(from_bytes(raws["topk_idx"], index_dtype(cols)), cols, "top-k")
            v = topk_merge(v, idx.reshape(n_rows, width), cols)
        if p.rotate:
            v = unrotate(v, p.seed, p.rot_block)
        if p.outliers:
            idx = checked_index(from_bytes(raws["outlier_idx"], index_dtype(cols)), cols, "outlier")
            vals = from_bytes(raws["outlier_val"], float_dtype(meta, "outlier_dtype"))
            v = merge_outliers(v, idx, vals.reshape(n_rows, -1))
        if meta.get("centered"):
            v = v + stages.read_means(raws["means"], cols)
        if meta.get("outlier_rows"):
            v = stages.restore_outlier_rows(v, stages.read_outlier_rows(raws["row_idx"], raws["row_val"], meta, rows,
                                                                        cols))
        v = saturate_for(v, out_dtype)
        if meta.get("nonfinite"):
            side = stages.read_nonfinite(raws["nonfinite_idx"], raws["nonfinite_val"], meta["nonfinite"], numel)
            v = stages.restore_nonfinite(v, side)
        return v.reshape(shape).to(out_dtype)

    def _scale_dtype(self, meta: dict[str, Any]) -> str:
        if self.params.granularity == "tensor" or meta.get("scale_dtype") == "float32":
            return "float32"
        return "log8" if self.params.scale_format == "log8" else "float16"

    def _layout(self, rows: int, cols: int, numel: int, meta: dict[str, Any]) -> list[tuple[str, int]]:
        """(buffer name, raw byte length) in wire order, derived from params + shape + meta alone."""
        p = self.params
        if numel == 0:
            return []
        fbytes = self._value_dtype(meta).itemsize
        if self.plain_cast:
            return [("values", numel * fbytes)]
        layout = []
        if meta.get("nonfinite"):
            layout += [("nonfinite_idx", 8 * meta["nonfinite"]), ("nonfinite_val", 4 * meta["nonfinite"])]
        n_out_rows = meta.get("outlier_rows", 0)
        if n_out_rows:
            rsz = 4 if meta.get("row_dtype") == "float32" else 2
            layout += [("row_idx", 4 * n_out_rows), ("row_val", n_out_rows * cols * rsz)]
        n_rows = rows - n_out_rows
        if meta.get("centered"):
            layout.append(("means", 2 * cols))
        isz = index_dtype(cols).itemsize
        if p.outliers:
            k = num_outliers(p.outliers, cols)
            vsz = 4 if meta.get("outlier_dtype") == "float32" else 2
            layout += [("outlier_idx", k * isz), ("outlier_val", n_rows * k * vsz)]
        width = cols
        if p.topk is not None:
            width = kept_per_row(p.topk, cols)
            layout.append(("topk_idx", n_rows * width * isz))
        n = n_rows * width
        if self._spec is not None:
            layout.append(("scales", scales_nbytes(self._spec, n_rows, width, self._scale_dtype(meta))))
            layout.append(("codes", packed_nbytes(n, p.bits) if p.pack else n))
        elif p.step is not None:
            layout.append(("steps", n_rows * (4 if meta.get("scale_dtype") == "float32" else 2)))
            if meta.get("escapes"):
                layout += list(zip(("esc_pos", "esc_val"), escapes.nbytes(meta["escapes"]), strict=True))
            if meta.get("rans"):
                lo, hi, n_words = meta["rans"]
                layout += [("rans_side", width), ("rans_tables", min(p.rans_groups, width) * (hi - lo + 1)),
                           ("codes", entropy.stream_nbytes(n, n_words, p.coder))]
            else:
                layout.append(("codes", n * (2 if meta.get("code_dtype") == "int16" else 1)))
        else:
            layout.append(("values", n * fbytes))
        return layout

    def _check_meta(self, meta: dict[str, Any], rows: int, numel: int) -> None:
        """Every meta key must be known, well-typed, and possible for this codec's params."""
        p = self.params
        stages.check_types(meta)
        for key in meta:
            if key not in _META:
                raise CodecError(f"header meta has unknown key {key!r} for codec {self.name!r}; known: {sorted(_META)}")
        allowed = {
            "nonfinite": not self.plain_cast and 0 < meta.get("nonfinite", 1) <= numel,
            "outlier_rows": p.outlier_token_ratio is not None and 0 < meta.get("outlier_rows", 1) <= rows,
            "row_dtype": meta.get("row_dtype") == "float32" and bool(meta.get("outlier_rows")),
            "centered": meta.get("centered") is True and p.center and (
                rows - meta.get("outlier_rows", 0) >= centering.MIN_ROWS),
            "outlier_dtype": meta.get("outlier_dtype") == "float32" and p.outliers > 0,
            "scale_dtype": meta.get("scale_dtype") == "float32" and (
                (self._spec is not None and p.granularity != "tensor") or p.step is not None),
            "code_dtype": meta.get("code_dtype") == "int16" and p.step is not None and "rans" not in meta,
            "escapes": "rans" in meta and escapes.valid_count(meta.get("escapes"), numel),
            "rans": p.rans_groups > 0 and p.step is not None and rans.valid_info(meta.get("rans"), numel),
            "value_dtype": meta.get("value_dtype") == "float32" and p.float_dtype != "fp32" and (
                self._spec is None and p.step is None),
            "compressed": p.lossless is not None,
        }
        for key in meta:
            if not allowed[key]:
                raise CodecError(f"header meta {key}={meta[key]!r} is not possible for codec {self!r}")

    def _unwrap(self, buffers: list[Buffer], layout: list[tuple[str, int]], meta: dict[str, Any]) -> dict[str, Buffer]:
        if len(buffers) != len(layout):
            raise CodecError(f"{self.name}: got {len(buffers)} buffers, header implies {len(layout)} "
                             f"({[name for name, _ in layout]})")
        flags = meta.get("compressed", [0] * len(layout))
        if not (len(flags) == len(layout) and all(type(f) is int and f in (0, 1) for f in flags)):
            raise CodecError(f"header meta compressed={flags!r} must list 0/1 for each of {len(layout)} buffers")
        raws: dict[str, Buffer] = {}
        for (name, expected), buf, flag in zip(layout, buffers, flags, strict=True):
            if flag:
                raws[name] = decompress(buf, self.params.lossless, expected)
            elif memoryview(buf).nbytes != expected:
                raise CodecError(f"{self.name}: buffer {name!r} has {memoryview(buf).nbytes} bytes, header "
                                 f"implies {expected}: truncated data or a header that does not match")
            else:
                raws[name] = buf
        return raws

