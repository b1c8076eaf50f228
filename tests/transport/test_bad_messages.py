"""Every kind of bad message gets an error reply with its code, and the server keeps serving."""

from __future__ import annotations

import json

import msgpack
import pytest
import torch
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitinfer.transport import protocol as p
from splitinfer.transport.payload import RawCodec

from .conftest import open_fields


def hidden_frames(lm, n=2, dtype=torch.float32):
    return RawCodec().encode(torch.randn(1, n, lm.hidden_size, dtype=dtype)).to_frames()


def raw_frames(header: dict, buf: bytes) -> list:
    return [json.dumps(header).encode(), buf]


@pytest.fixture
def served(make_server, raw_client, tiny_lm):
    srv = make_server(tiny_lm, [2], max_message_bytes=256 * 1024)
    c = raw_client(srv.url)
    rep = c.call("open", **open_fields(tiny_lm))
    assert rep["ok"], rep
    return srv, c, rep["sid"]


def assert_still_serving(c, tiny_lm, sid=None):
    assert c.call("ping")["ok"]
    if sid is not None:  # the session is untouched: its next step still works
        rep = c.call("step", hidden_frames(tiny_lm, 1), sid=sid, seq=1, start=0)
        assert rep["ok"] and rep["pos"] == 1, rep


def expect(c, frames, code):
    c.send(frames)
    rep = c.recv()
    assert rep is not None, f"no reply (expected {code})"
    assert rep["ok"] is False and rep["code"] == code, rep
    assert isinstance(rep["msg"], str) and rep["msg"]
    return rep


def env(op="ping", **fields):
    return p.pack(p.request(op, 99, **fields))


def test_malformed_frames(served, tiny_lm):
    _, c, sid = served
    expect(c, [b"\xc1\xc1not msgpack"], p.BAD_FRAME)
    expect(c, [msgpack.packb([1, 2, 3])], p.BAD_FRAME)
    expect(c, [msgpack.packb({1: 2})], p.BAD_FRAME)  # non-str keys
    expect(c, [b"\x81\xa1a" * 900 + b"\xc0"], p.BAD_FRAME)  # maps nested 900 deep
    expect(c, [msgpack.packb({"v": 1, "op": "ping", "rid": msgpack.ExtType(1, b"x")})], p.BAD_FRAME)
    expect(c, [b"x" * (p.MAX_ENVELOPE_BYTES + 1)], p.BAD_FRAME)
    expect(c, [env()] + [b"a"] * p.MAX_FRAMES, p.BAD_FRAME)
    expect(c, [env("info"), b"unexpected payload"], p.BAD_FRAME)
    expect(c, [b""], p.BAD_FRAME)  # looks like a REQ delimiter with nothing after it
    assert_still_serving(c, tiny_lm, sid)


def test_version_op_and_fields(served, tiny_lm):
    _, c, sid = served
    expect(c, [p.pack({"v": 2, "op": "ping", "rid": 1})], p.BAD_VERSION)
    expect(c, [p.pack({"op": "ping", "rid": 1})], p.BAD_VERSION)
    expect(c, [env("launch_missiles")], p.UNKNOWN_OP)
    expect(c, [p.pack({"v": 1, "op": "ping", "rid": "one"})], p.BAD_FIELD)
    expect(c, [p.pack({"v": 1, "op": "ping", "rid": True})], p.BAD_FIELD)
    expect(c, [env("ping", extra=1)], p.BAD_FIELD)
    expect(c, [env("step", seq=1, start=0), *hidden_frames(tiny_lm)], p.BAD_FIELD)  # no sid
    expect(c, [env("step", sid=sid, seq=-1, start=0), *hidden_frames(tiny_lm)], p.BAD_FIELD)
    expect(c, [env("step", sid=sid, seq=1, start=2**40), *hidden_frames(tiny_lm)], p.BAD_FIELD)
    expect(c, [env("step", sid=sid, seq=1, start=0, logprob="yes"), *hidden_frames(tiny_lm)], p.BAD_FIELD)
    expect(c, [env("open", **open_fields(tiny_lm, sampling={"temperature": -1.0}))], p.BAD_FIELD)
    expect(c, [env("open", **open_fields(tiny_lm, sampling={"temperature": float("nan")}))], p.BAD_FIELD)
    expect(c, [env("open", **open_fields(tiny_lm, sampling={"top_k": 1.5}))], p.BAD_FIELD)
    expect(c, [env("open", **open_fields(tiny_lm, sampling={"evil": 1}))], p.BAD_FIELD)
    expect(c, [env("open", **open_fields(tiny_lm, cuts="2"))], p.BAD_FIELD)
    expect(c, [env("open", **open_fields(tiny_lm, codec="none"))], p.BAD_FIELD)
    assert_still_serving(c, tiny_lm, sid)


def test_model_cut_and_codec_refused_at_open(served, tiny_lm):
    srv, c, sid = served
    rep = expect(c, [env("open", **open_fields(tiny_lm, fingerprint="0" * 16))], p.MODEL_MISMATCH)
    assert tiny_lm.fingerprint in rep["msg"]
    rep = expect(c, [env("open", **open_fields(tiny_lm, cuts=[3]))], p.CUT_MISMATCH)
    assert "[2]" in rep["msg"]
    expect(c, [env("open", **open_fields(tiny_lm, hidden=tiny_lm.hidden_size + 1))], p.MODEL_MISMATCH)
    expect(c, [env("open", **open_fields(tiny_lm, codec={"name": "no_such_codec"}))], p.BAD_CODEC)
    expect(c, [env("open", **open_fields(tiny_lm, codec={"name": "fp32", "bits": "x" * 100}))], p.BAD_CODEC)
    assert srv.session_count == 1
    assert_still_serving(c, tiny_lm, sid)


def test_wrong_shape_dtype_and_values(served, tiny_lm):
    _, c, sid = served
    H = tiny_lm.hidden_size
    step = env("step", sid=sid, seq=1, start=0)
    for shape in ([1, 2, H + 1], [2, 1, H], [1, 0, H], [1, 2], [1, 10**9, H]):
        n = max(1, torch.Size(shape).numel()) if shape[1:2] != [10**9] else 4
        hdr = {"codec": "none", "v": 1, "params": {}, "dtype": "float32", "shape": shape, "meta": {}}
        expect(c, [step, *raw_frames(hdr, b"\0" * 4 * n)], p.BAD_TENSOR)
    hdr = {"codec": "none", "v": 1, "params": {}, "dtype": "int32", "shape": [1, 1, H], "meta": {}}
    expect(c, [step, *raw_frames(hdr, b"\0" * 4 * H)], p.BAD_TENSOR)
    hdr = {"codec": "none", "v": 1, "params": {}, "dtype": "float32", "shape": [1, 1, H], "meta": {}}
    expect(c, [step, *raw_frames(hdr, b"\0" * (4 * H - 1))], p.BAD_TENSOR)  # truncated buffer
    expect(c, [step, json.dumps(hdr).encode()], p.BAD_TENSOR)  # no buffer
    expect(c, [step, b"{not json", b"\0" * 4 * H], p.BAD_TENSOR)
    expect(c, [step, b"[" * 60000, b"\0" * 4 * H], p.BAD_TENSOR)  # nested past Python's recursion limit
    expect(c, [step], p.BAD_TENSOR)  # no payload at all
    nan = torch.full((1, 1, H), float("nan"))
    expect(c, [step, *RawCodec().encode(nan).to_frames()], p.BAD_TENSOR)
    inf = torch.zeros(1, 1, H, dtype=torch.float16)
    inf[0, 0, 3] = float("inf")
    expect(c, [step, *RawCodec().encode(inf).to_frames()], p.BAD_TENSOR)
    assert_still_serving(c, tiny_lm, sid)


def test_wrong_codec_in_step(served, tiny_lm):
    _, c, sid = served
    hdr = {"codec": "fp16", "v": 1, "params": {}, "dtype": "float32", "shape": [1, 1, tiny_lm.hidden_size],
           "meta": {}}
    expect(c, [env("step", sid=sid, seq=1, start=0), *raw_frames(hdr, b"\0" * 2 * tiny_lm.hidden_size)],
           p.BAD_CODEC)
    hdr.update(codec="none", params={"evil": 1})
    expect(c, [env("step", sid=sid, seq=1, start=0), *raw_frames(hdr, b"\0" * 4 * tiny_lm.hidden_size)],
           p.BAD_CODEC)
    assert_still_serving(c, tiny_lm, sid)


def test_unknown_session_seq_and_position(served, tiny_lm):
    _, c, sid = served
    expect(c, [env("step", sid="f" * 24, seq=1, start=0), *hidden_frames(tiny_lm)], p.UNKNOWN_SESSION)
    expect(c, [env("close", sid="nope")], p.UNKNOWN_SESSION)
    expect(c, [env("step", sid=sid, seq=2, start=0), *hidden_frames(tiny_lm)], p.BAD_SEQ)
    expect(c, [env("step", sid=sid, seq=1, start=5), *hidden_frames(tiny_lm)], p.BAD_POSITION)
    assert_still_serving(c, tiny_lm, sid)
    # seq 1 is now applied: a retry at another start is refused, a skipped seq too
    expect(c, [env("step", sid=sid, seq=1, start=3), *hidden_frames(tiny_lm)], p.BAD_SEQ)
    expect(c, [env("step", sid=sid, seq=3, start=1), *hidden_frames(tiny_lm)], p.BAD_SEQ)


def test_oversized_messages(served, raw_client, tiny_lm):
    srv, c, sid = served
    cap = srv.max_message_bytes
    # Frames each under ZMQ_MAXMSGSIZE, together over the cap: an error reply.
    expect(c, [env("step", sid=sid, seq=1, start=0), b"x" * (cap // 2), b"y" * (cap // 2 + 10)], p.TOO_LARGE)
    # One frame over ZMQ_MAXMSGSIZE: libzmq drops that connection before the server sees the message.
    bad = raw_client(srv.url)
    bad.send([env(), b"z" * (cap + 1)])
    assert bad.recv(timeout_ms=500) is None
    assert_still_serving(c, tiny_lm, sid)
    assert raw_client(srv.url).call("ping")["ok"]


def test_req_socket_and_router_prefix(served, raw_client):
    srv, _, _ = served
    req = raw_client(srv.url, zmq.REQ)
    rep = req.call("info")
    assert rep["ok"] and rep["cuts"] == [2] and rep["protocol"] == p.PROTOCOL_VERSION


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_random_bytes_never_break_the_server(make_server, raw_client, tiny_lm, frames):
    srv = _fuzz_server(make_server, tiny_lm)
    c = raw_client(srv.url)
    c.send(frames)
    rep = c.recv(timeout_ms=2000)
    if rep is not None:
        assert rep["ok"] is False or frames[0] in (b"",) or rep.get("rid") is not None
    assert c.call("ping")["ok"]
    c.close()


_FUZZ = {}


def _fuzz_server(make_server, lm):
    # one server for all hypothesis examples (make_server is function-scoped; keep the first one alive)
    srv = _FUZZ.get("srv")
    if srv is None or not srv.serving:
        from splitinfer.transport import SplitServer

        srv = _FUZZ["srv"] = SplitServer(lm, [2], port=0, poll_ms=20).start()
    return srv


@pytest.fixture(autouse=True, scope="module")
def _stop_fuzz_server():
    yield
    if "srv" in _FUZZ:
        _FUZZ.pop("srv").stop()
