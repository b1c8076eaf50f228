"""A peer of another splitinfer version (another wire format) is told `bad_codec`, not `bad_tensor`."""

from __future__ import annotations

import torch

from splitinfer.codecs import build_codec
from splitinfer.transport import protocol as p

from .conftest import open_fields
from .test_bad_messages import assert_still_serving, env, expect


def _open(make_server, raw_client, lm, codec):
    srv = make_server(lm, [2], max_message_bytes=256 * 1024)
    c = raw_client(srv.url)
    rep = c.call("open", **open_fields(lm, codec=codec))
    assert rep["ok"], rep
    return c, rep["sid"]


def test_old_session_head_format_is_bad_codec(make_server, raw_client, tiny_lm):
    """An old client (coder='rans_py', session head format 1) stepping a session the server opened with the
    compiled coder (format 3): the reply says the formats differ, and the session still serves."""
    c, sid = _open(make_server, raw_client, tiny_lm, {"name": "ec37g_s", "coder": "ans"})
    old = build_codec("ec37g_s", coder="rans_py")
    x = torch.randn(1, 40, tiny_lm.hidden_size)
    rep = expect(c, [env("step", sid=sid, seq=1, start=0), *old.encode_step(x).to_frames()], p.BAD_CODEC)
    assert "format 1" in rep["msg"] and "format 3" in rep["msg"], rep
    new = build_codec("ec37g_s")
    rep = c.call("step", new.encode_step(x).to_frames(), sid=sid, seq=1, start=0)
    assert rep["ok"], rep
    assert_still_serving(c, tiny_lm)


def test_first_compiled_format_is_bad_codec(make_server, raw_client, tiny_lm):
    """A client of the first compiled coder (issue 28's format 2: one model over the whole residual range per
    group) stepping a session of format 3 (each group's model over its own support): its streams would decode
    to other residuals, so the head's format refuses it as bad_codec, naming both; the session still serves."""
    c, sid = _open(make_server, raw_client, tiny_lm, {"name": "ec37g_s", "coder": "ans"})
    frames = build_codec("ec37g_s").encode_step(torch.randn(1, 40, tiny_lm.hidden_size)).to_frames()
    head = bytearray(bytes(frames[0]))
    assert head[1] >> 5 == 3
    head[1] = (head[1] & 0x1F) | 2 << 5  # the same message as a format-2 peer labels it
    rep = expect(c, [env("step", sid=sid, seq=1, start=0), bytes(head), *frames[1:]], p.BAD_CODEC)
    assert "format 2" in rep["msg"] and "format 3" in rep["msg"], rep
    assert_still_serving(c, tiny_lm)


def test_unknown_session_head_format_is_bad_codec(make_server, raw_client, tiny_lm):
    """A head format no version speaks yet (0), or one this session's codec does not (7: refs=true with escapes):
    refused as bad_codec before any decoding."""
    c, sid = _open(make_server, raw_client, tiny_lm, {"name": "int8_s"})
    frames = build_codec("int8_s").encode_step(torch.randn(1, 3, tiny_lm.hidden_size)).to_frames()
    for fmt in (0, 7):
        head = bytearray(bytes(frames[0]))
        head[1] = (head[1] & 0x1F) | fmt << 5
        rep = expect(c, [env("step", sid=sid, seq=1, start=0), bytes(head), *frames[1:]], p.BAD_CODEC)
        assert f"format {fmt}" in rep["msg"], rep
    assert_still_serving(c, tiny_lm)


def test_a_session_with_reference_rows_over_zmq(make_server, raw_client, tiny_lm):
    """A session opened with refs=true: its prefill (reference rows, format 6) and one-token steps (the short head)
    are served; a client whose codec lacks refs is told bad_codec, naming both formats."""
    c, sid = _open(make_server, raw_client, tiny_lm, {"name": "ec25g_s", "refs": True})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 128, tiny_lm.hidden_size, generator=g)  # >= 4096 values: static tables, where references live
    for t in range(1, 64):
        x[:, t] += 0.6 * x[:, t - 1]  # drifting channels, as hidden states do
    x[:, 64:] = x[:, :64] + 0.2 * torch.randn(1, 64, tiny_lm.hidden_size, generator=g)  # repeats: references pay
    plain = build_codec("ec25g_s").encode_step(x).to_frames()
    rep = expect(c, [env("step", sid=sid, seq=1, start=0), *plain], p.BAD_CODEC)
    assert "format 3" in rep["msg"] and "format 6" in rep["msg"], rep
    enc = build_codec("ec25g_s", refs=True)
    msg = enc.encode_step(x)
    assert msg.header["format"] == 6 and msg.header["meta"]["rr"] >= 60
    rep = c.call("step", msg.to_frames(), sid=sid, seq=1, start=0)
    assert rep["ok"], rep
    step = enc.encode_step(torch.randn(1, 1, tiny_lm.hidden_size))
    assert len(step.head) <= 12
    rep = c.call("step", step.to_frames(), sid=sid, seq=2, start=128)
    assert rep["ok"], rep
    assert_still_serving(c, tiny_lm)


def test_escaped_codes_to_a_server_without_escapes_are_bad_codec(make_server, raw_client, tiny_lm, monkeypatch):
    """Codes beyond int8 travel escaped (codecs/escapes.py) in header version / head format 5 (compiled coder); a server
    that predates escapes (reads 1 to 3 only) answers bad_codec naming the format, and keeps serving."""
    from splitinfer.codecs import framing
    from splitinfer.codecs.pipeline import PipelineCodec

    x = torch.randn(1, 128, tiny_lm.hidden_size, generator=torch.Generator().manual_seed(0))  # 8192 values, 4 tables: rANS beats int16 + zstd
    x[0, :, 7] *= 25  # step 0.05 x row RMS: this channel's codes reach ~160
    spec = {"name": "ec25g_s", "step": 0.05, "rans_groups": 4, "coder": "ans"}
    msg = build_codec(spec).encode_step(x)
    assert msg.header["format"] == 5 and msg.header["meta"]["e"] > 0
    monkeypatch.setattr(framing, "FORMATS", (1, 2, 3))
    monkeypatch.setattr(PipelineCodec, "format_versions", property(lambda self: (self.format_version,)))
    c, sid = _open(make_server, raw_client, tiny_lm, spec)
    rep = expect(c, [env("step", sid=sid, seq=1, start=0), *msg.to_frames()], p.BAD_CODEC)
    assert "format 5 is not supported" in rep["msg"], rep
    plain = {**spec, "name": "ec25g"}
    enc = build_codec(plain).encode(x)
    assert enc.header["v"] == 5
    rep = c.call("open", **open_fields(tiny_lm, codec=plain))
    rep = expect(c, [env("step", sid=rep["sid"], seq=1, start=0), *enc.to_frames()], p.BAD_CODEC)
    assert "format version 5 is not supported" in rep["msg"], rep
    assert_still_serving(c, tiny_lm)
