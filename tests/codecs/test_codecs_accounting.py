"""Byte accounting: nbytes is exactly what the frames hold, and buffer sizes are the true packed sizes."""

from __future__ import annotations

import json
import math

import msgpack
import pytest
import torch

from splitinfer.codecs import EncodedTensor, available_codecs, build_codec, decode_any


def _x(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", available_codecs())
def test_nbytes_is_exactly_the_frames(name):
    enc = build_codec(name).encode(_x(3, 40, 96))
    frames = enc.to_frames()
    header = json.dumps(enc.header, separators=(",", ":")).encode()
    assert frames[0] == header
    assert enc.nbytes == sum(len(f) for f in frames) == len(header) + sum(len(b) for b in enc.buffers)
    assert enc.bits_per_value() == enc.nbytes * 8 / (3 * 40 * 96)
    assert build_codec(name).bits_per_value(enc) == enc.bits_per_value()


@pytest.mark.parametrize("name, shape, buffer_bytes", [
    ("fp32", (4, 64), [4 * 256]),
    ("fp16", (4, 64), [2 * 256]),
    ("int8_token", (4, 64), [4 * 2, 256]),  # fp16 scale per row + one byte per value
    ("int8_tensor", (4, 64), [4, 256]),  # one fp32 scale
    ("int4_b32", (4, 64), [8 * 2, 128]),  # 8 blocks x fp16 scale, two 4-bit codes per byte
    ("int4_b32", (3, 70), [9 * 2, 105]),  # partial last block; 210 codes -> 105 bytes
    ("int2_b32", (4, 64), [8 * 2, 64]),  # four 2-bit codes per byte
    ("int3_b64", (4, 64), [4 * 2, 64 + 32]),  # 2-bit plane + 1-bit plane = 3 bits per value
    ("int6_b64", (4, 64), [4 * 2, 128 + 64]),  # 4-bit plane + 2-bit plane
    # 8 outlier channels: int16 indices + fp16 values; log8 scales: fp32 reference + 1 byte per block
    ("int3_b64_outlier_rot_log8", (4, 576), [8 * 2, 4 * 8 * 2, 4 + 4 * 9, 4 * 576 * 3 // 8]),
    ("top10_fp16", (4, 64), [4 * 7 * 2, 4 * 7 * 2]),  # ceil(6.4) = 7 kept: int16 indices + fp16 values
])
def test_exact_buffer_sizes(name, shape, buffer_bytes):
    enc = build_codec(name).encode(_x(*shape))
    assert [len(b) for b in enc.buffers] == buffer_bytes


def test_outlier_token_and_centering_buffers():
    x = _x(1, 32, 64)
    x[0, 0] *= 500  # an attention-sink-like token
    enc = build_codec("int8").encode(x)  # int8 = int8_b64_tc
    assert enc.header["meta"] == {"outlier_rows": 1, "centered": True}
    # row index int32 + the row in fp16; fp16 channel means; 31 rows x 1 block fp16 scales; codes
    assert [len(b) for b in enc.buffers] == [4, 64 * 2, 64 * 2, 31 * 2, 31 * 64]


def test_one_token_decode_step_has_no_outlier_rows_or_means():
    enc = build_codec("int8").encode(_x(1, 1, 576) * 100)
    assert enc.header["meta"] == {}
    assert [len(b) for b in enc.buffers] == [9 * 2, 576]


def test_bits_per_value_of_the_4bit_block_codec_on_a_hidden_state():
    enc = build_codec("int4_b32").encode(_x(1, 256, 576))
    payload = 256 * 576 // 2 + 256 * 18 * 2
    assert sum(len(b) for b in enc.buffers) == payload
    assert math.isclose(enc.bits_per_value(), 4.5 + 8 * len(enc.to_frames()[0]) / (256 * 576))


def test_lossless_stage_keeps_a_buffer_only_where_it_shrinks():
    x = torch.linspace(1.1, 9.7, 8)[:, None].expand(8, 64)  # distinct scales, constant codes
    enc = build_codec("int8_token_lz4").encode(x)
    assert enc.header["meta"]["compressed"] == [0, 1]  # 16 bytes of scales stay raw, constant codes shrink
    assert len(enc.buffers[1]) < 8 * 64


def test_header_is_plain_data_and_survives_msgpack():
    x = _x(2, 33, 40)
    x[0, 0, 0] = float("nan")
    for name in ("int8", "ec40", "int3_b64_outlier_rot_log8_tc", "petals_blockwise8", "top10_fp16"):
        enc = build_codec(name).encode(x)
        header = msgpack.unpackb(msgpack.packb(enc.header))
        assert header == json.loads(json.dumps(enc.header)) == enc.header
        y = decode_any(EncodedTensor(header, [bytes(b) for b in enc.buffers]))
        assert y.shape == x.shape


def test_frames_are_zero_copy_friendly():
    enc = build_codec("int8").encode(_x(2, 64))
    frames = enc.to_frames()
    back = EncodedTensor.from_frames([memoryview(f) for f in frames])
    assert all(isinstance(b, memoryview) for b in back.buffers)
    assert torch.equal(decode_any(back), decode_any(enc))
