"""Envelope parsing, field validation and payload decoding, without sockets."""

from __future__ import annotations

import json

import msgpack
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitinfer.transport import protocol as p
from splitinfer.transport.payload import RawCodec, build_session_codec, decode_hidden


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_raw_codec_round_trip(dtype):
    x = torch.randn(1, 3, 8).to(dtype)
    c = RawCodec()
    enc = c.encode(x)
    assert enc.nbytes == len(enc.header_bytes()) + x.numel() * x.element_size()
    y = decode_hidden(c, enc.to_frames(), hidden_size=8, max_tokens=3)
    assert y.dtype == torch.float32 and torch.equal(y, x.float())


def test_decode_hidden_limits_tokens_before_decoding():
    enc = RawCodec().encode(torch.zeros(1, 5, 8))
    with pytest.raises(p.ProtocolError) as e:
        decode_hidden(RawCodec(), enc.to_frames(), hidden_size=8, max_tokens=4)
    assert e.value.code == p.BAD_TENSOR and "T <= 4" in e.value.message


def test_session_codec_specs():
    assert isinstance(build_session_codec(None), RawCodec)
    assert isinstance(build_session_codec({"name": "none"}), RawCodec)
    with pytest.raises(p.ProtocolError) as e:
        build_session_codec({"name": "definitely_not_a_codec"})
    assert e.value.code == p.BAD_CODEC


def test_field_validators_name_the_bad_value():
    with pytest.raises(p.ProtocolError, match=r"'seq'=True must be an int in \[1, "):
        p.get_int({"seq": True}, "seq", 1)
    with pytest.raises(p.ProtocolError, match="unknown field"):
        p.check_keys({"v": 1, "zzz": 0}, ("v",), "ping")
    with pytest.raises(p.ProtocolError, match="must be a non-empty string"):
        p.get_str({"sid": "x" * 1000}, "sid", max_len=64)
    assert p.sampling_from_wire({}) == {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}


def test_envelope_round_trip_and_size():
    env = p.request("step", 7, sid="a" * 24, seq=3, start=40)
    data = p.pack(env)
    assert p.unpack(data) == env and len(data) < 80
    reply = p.pack(p.ok_reply(7, tok=12345, pos=41, seq=3))
    assert len(reply) < 40  # the downlink per token


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_unpack_only_raises_protocol_errors(data):
    try:
        env = p.unpack(data)
    except p.ProtocolError as e:
        assert e.code == p.BAD_FRAME
    else:
        assert isinstance(env, dict)


@settings(max_examples=200, deadline=None)
@given(header=st.dictionaries(st.sampled_from(["codec", "v", "params", "dtype", "shape", "meta", "crc"]),
                              st.one_of(st.integers(-5, 10**12), st.text(max_size=8), st.none(),
                                        st.lists(st.integers(-2, 70), max_size=4), st.just({}))),
       buf=st.binary(max_size=600))
def test_decode_hidden_only_raises_protocol_errors(header, buf):
    frames = [json.dumps(header).encode(), buf]
    try:
        x = decode_hidden(RawCodec(), frames, hidden_size=64, max_tokens=8)
    except p.ProtocolError as e:
        assert e.code in (p.BAD_TENSOR, p.BAD_CODEC)
    else:
        assert x.shape[0] == 1 and x.shape[2] == 64


def test_msgpack_extension_types_refused():
    data = msgpack.packb({"v": 1, "op": "ping", "rid": msgpack.ExtType(5, b"\x00" * 10)})
    with pytest.raises(p.ProtocolError):
        p.unpack(data)
