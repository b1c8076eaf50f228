"""Regressions for what the hostile-input fuzzer found (each was an `internal` error or a reply the
client could not match), pinned down as plain deterministic cases."""

from __future__ import annotations

import json

import msgpack
import pytest

from splitinfer.transport import SplitServer
from splitinfer.transport import protocol as p
from splitinfer_testing.reliability.harness import Dealer

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def served(lm):
    srv = SplitServer(lm, [2], port=0, poll_ms=20, max_message_bytes=65536).start()
    try:
        with Dealer(srv.url) as d:
            rep = d.call("open", fingerprint=lm.fingerprint, cuts=[2], hidden=lm.hidden_size, codec={"name": "none"})
            assert rep["ok"], rep
            yield srv, d, rep["sid"]
    finally:
        srv.stop()


def deep_envelope(key: str, depth: int, opener: bytes) -> bytes:
    base = {"v": 1, "op": "ping", "rid": 7}
    base.pop(key, None)
    raw = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in base.items())
    return bytes([0x80 | (len(base) + 1)]) + raw + msgpack.packb(key) + opener * depth + b"\x00"


@pytest.mark.parametrize("key", ["v", "op", "rid", "sid"])
@pytest.mark.parametrize("opener", [b"\x91", b"\x81\xa1a"], ids=["lists", "maps"])
def test_deeply_nested_envelope_is_a_bad_frame(served, key, opener):
    # ~1000 levels fit in 4 KiB; repr() of them in an error message used to raise RecursionError
    _, d, _ = served
    for depth in (9, 1000, 1015):
        d.send([deep_envelope(key, depth, opener)])
        rep = d.recv()
        assert rep is not None and rep["code"] == p.BAD_FRAME, (depth, rep)


def test_deeply_nested_codec_header_is_a_bad_tensor(served, lm):
    # json.loads raises RecursionError (not a ValueError) on deep nesting
    _, d, sid = served
    header = '{"codec": "none", "v": 1, "params": {}, "dtype": "float32", "shape": ' + "[" * 20000 + "]" * 20000 + "}"
    rep = d.call("step", [header.encode(), b"\0" * 4 * lm.hidden_size], sid=sid, seq=1, start=0)
    assert rep is not None and rep["code"] == p.BAD_TENSOR, rep
    ok = d.call("step", [json.dumps({"codec": "none", "v": 1, "params": {}, "dtype": "float32",
                                     "shape": [1, 1, lm.hidden_size], "meta": {}}).encode(),
                         b"\0" * 4 * lm.hidden_size], sid=sid, seq=1, start=0)
    assert ok["ok"] and ok["pos"] == 1, ok


@pytest.mark.parametrize("case", ["too_large", "too_many_frames"])
def test_size_refusals_echo_the_request_id(served, case):
    # A client drops replies whose rid is not its request's, so a refusal without the rid reached it
    # only as a timeout.
    srv, d, sid = served
    env = p.pack(p.request("step", 4242, sid=sid, seq=9, start=0))
    frames = [env, b"x" * 40000, b"y" * 40000] if case == "too_large" else [env, *[b"z"] * (p.MAX_FRAMES + 1)]
    d.send(frames)
    rep = d.recv()
    assert rep is not None and rep["rid"] == 4242, rep
    assert rep["code"] == (p.TOO_LARGE if case == "too_large" else p.BAD_FRAME), rep
