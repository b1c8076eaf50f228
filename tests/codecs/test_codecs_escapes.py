"""Escaped step codes (codecs/escapes.py): codes beyond int8 keep a message entropy-coded, decode exactly as the
int16 path did, and corrupted or forged escape metadata is one CodecError; a peer without escapes refuses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitinfer.codecs import CodecError, CodecFormatError, EncodedTensor, build_codec, escapes, framing
from splitinfer.codecs.base import seal
from splitinfer.codecs.encoded import StepMessage
from splitinfer.codecs.escapes import ESCAPED_FORMAT
from splitinfer.codecs.pipeline import PipelineCodec
from splitinfer.codecs.session import MODES

STEP = 0.15  # x row RMS: codes reach sqrt(576) / 0.15 = 160 in a row dominated by one channel


def _wire(msg):
    return EncodedTensor.from_frames([bytes(memoryview(f)) for f in msg.to_frames()])


def spiky(rows: int = 256, cols: int = 576, seed: int = 0) -> torch.Tensor:
    """Hidden-state-like rows (each channel drifts: 0.6 x its previous value plus noise) with one channel 25x
    wider: where it peaks, its code exceeds 127 (not an outlier token: every row has the wide channel)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(rows, cols, generator=g)
    for t in range(1, rows):
        noise[t] += 0.6 * noise[t - 1]
    noise[:, 7] *= 25
    return noise[None]


def _messages(name: str, coder: str, parts: list[torch.Tensor]) -> tuple[list, list[torch.Tensor]]:
    """Encode the parts with a fresh codec (session steps for `_s`), decode each with another fresh one."""
    enc, dec = build_codec(name, step=STEP, coder=coder), build_codec(name, step=STEP, coder=coder)
    if name.endswith("_s"):
        msgs = [enc.encode_step(x) for x in parts]
        return msgs, [dec.decode(_wire(m)) for m in msgs]
    msgs = [enc.encode(x) for x in parts]
    return msgs, [dec.decode(m) for m in msgs]


def _escape_count(msg) -> int:
    meta = msg.header["meta"]
    return meta.get("e", meta.get("escapes", 0))


def _parts(name: str) -> list[torch.Tensor]:
    x = spiky(224)
    if not name.endswith("_s"):
        return [x[:, :200]]
    return [x[:, :200]] + [x[:, i:i + 1] for i in range(200, 224)]  # a prefill, then one-token steps


@pytest.mark.parametrize("coder", ["ans", "rans_py"])
@pytest.mark.parametrize("name", ["ec25g", "ec25g_s"])
def test_codes_beyond_int8_stay_entropy_coded_and_decode_as_the_int16_path(name, coder, monkeypatch):
    parts = _parts(name)
    msgs, ys = _messages(name, coder, parts)
    monkeypatch.setattr(escapes, "split", lambda q: None)  # the int16 path of before: codes as int16, zstd
    wide_msgs, wide_ys = _messages(name, coder, parts)
    monkeypatch.undo()
    for y, w in zip(ys, wide_ys, strict=True):
        assert torch.equal(y, w)  # every escaped code came back exactly
    escaped = [m for m in msgs if _escape_count(m)]
    assert escaped and _escape_count(msgs[0]) > 0 and not any(_escape_count(m) for m in wide_msgs)
    base = 3 if coder == "ans" else 1
    for m in msgs:
        version = m.header.get("format") if name.endswith("_s") else m.header["v"]
        assert version == (ESCAPED_FORMAT[base] if _escape_count(m) else base)
    if name.endswith("_s"):  # the prefill went through fresh tables, escaped one-token steps through the model
        assert MODES[msgs[0].header["code"] % 4] == "r"
        assert {MODES[m.header["code"] % 4] for m in escaped[1:]} == {"a"}
    else:
        assert "rans" in msgs[0].header["meta"] and "code_dtype" in wide_msgs[0].header["meta"]
    bits = 8 * msgs[0].nbytes / parts[0].numel()
    wide_bits = 8 * wide_msgs[0].nbytes / parts[0].numel()
    assert bits < wide_bits - 1.0  # the cliff: ~6.7 bits as int16 + zstd, ~4.6 entropy-coded


def test_a_session_follows_clamped_codes_on_both_halves():
    """After an escaped step the next steps are still predicted from the previous row (the clamped one, on
    both halves): they cost what steps without escapes cost, and repeat / replay still decode alike."""
    x = spiky(232, seed=3)
    enc, dec, replay = (build_codec("ec25g_s", step=STEP) for _ in range(3))
    msgs = [enc.encode_step(p) for p in [x[:, :200]] + [x[:, i:i + 1] for i in range(200, 232)]]
    ys = [dec.decode(_wire(m)) for m in msgs]
    assert sum(bool(_escape_count(m)) for m in msgs[1:]) >= 3
    assert all(MODES[m.header["code"] % 4] == "a" for m in msgs[1:])
    assert torch.equal(dec.decode(_wire(msgs[-1])), ys[-1])  # an exact repeat of the last step
    assert all(torch.equal(replay.decode(_wire(m)), y) for m, y in zip(msgs, ys, strict=True))


@pytest.mark.parametrize(("coder", "fmt"), [("ans", 5), ("rans_py", 4)])
def test_the_generic_session_codec_carries_a_pipelines_escapes(coder, fmt):
    """ecNNg with outlier channels runs behind the session head as the generic SessionCodec: the pipeline's
    escaped message keeps its version as the head format and decodes as the pipeline does."""
    x = spiky(64)
    x[0, :, 9] = 0.8 * x[0, :, 7].flip(0)  # a second wide channel: the one outlier channel takes only one
    spec = {"step": STEP, "outliers": 1, "coder": coder}
    msg = build_codec("ec25g_s", **spec).encode_step(x)
    assert msg.header["format"] == fmt and msg.header["meta"]["escapes"] > 0
    pipeline = build_codec("ec25g", **spec)
    assert torch.equal(build_codec("ec25g_s", **spec).decode(_wire(msg)), pipeline.decode(pipeline.encode(x)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 30), cols=st.integers(1, 80), n_spikes=st.integers(0, 12),
       seed=st.integers(0, 2**31 - 1))
def test_split_and_restore_are_inverse(rows, cols, n_spikes, seed):
    rng = np.random.default_rng(seed)
    q = rng.integers(-127, 128, (rows, cols))
    spots = rng.choice(q.size, min(n_spikes, q.size), replace=False)
    q.reshape(-1)[spots] = rng.choice([-1, 1], spots.size) * rng.integers(128, 32768, spots.size)
    out = escapes.split(q)
    n = int((np.abs(q) > 127).sum())
    if n == 0 or n > escapes.MAX_SHARE * q.size:
        assert out is None
        return
    clamped, count, (pos, val) = out
    assert count == n and int(np.abs(clamped).max()) <= 127 and len(pos) + len(val) == 6 * n
    assert np.array_equal(escapes.restore(clamped.astype(np.int8), pos, val, n), q)


# ----------------------------------------------------------------------------- corrupted or forged metadata
def _escaped_pipeline_message():
    codec = build_codec("ec25g", step=STEP)
    msg = codec.encode(spiky(64))
    assert msg.header["meta"]["escapes"] >= 2
    return codec, msg


def _forge(msg, meta=None, v=None, buffers=None):
    """The message with other meta / version / buffers, re-sealed (a forged or broken encoder: the CRC passes)."""
    header = {k: val for k, val in msg.header.items() if k != "crc"}
    header["meta"] = {**header["meta"], **(meta or {})}
    header["meta"] = {k: val for k, val in header["meta"].items() if val is not None}
    if v is not None:
        header["v"] = v
    return seal(header, list(buffers if buffers is not None else msg.buffers))


def _with_escape_buffers(msg, pos: np.ndarray, val: np.ndarray):
    i = len(msg.buffers) - 5  # esc_pos, esc_val, rans_side, rans_tables, stream
    bufs = list(msg.buffers)
    bufs[i:i + 2] = [pos.astype("<u4").tobytes(), val.astype("<i2").tobytes()]
    return _forge(msg, meta={"escapes": int(pos.size)}, buffers=bufs)


def test_corrupted_escape_metadata_is_one_codec_error():
    codec, msg = _escaped_pipeline_message()
    n = msg.header["meta"]["escapes"]
    i = len(msg.buffers) - 5
    assert msg.header["meta"]["compressed"][i:i + 2] == [0, 0]  # a few bytes: zstd never shrinks them
    pos = np.frombuffer(bytes(msg.buffers[i]), "<u4").astype(np.int64)
    val = np.frombuffer(bytes(msg.buffers[i + 1]), "<i2").astype(np.int64)
    assert np.array_equal(_with_escape_buffers(msg, pos, val).buffers[i], msg.buffers[i])  # the forger is faithful
    assert torch.equal(codec.decode(_with_escape_buffers(msg, pos, val)), codec.decode(msg))
    cases = {
        "increase strictly": (pos[::-1], val[::-1]),
        "stay below": (np.append(pos[:-1], 64 * 576), val),
        "beyond": (pos, np.where(np.arange(n) == 0, 5, val)),
        "do not hold clamped codes": (pos + 1, val),
        "signs": (pos, -val),
    }
    for match, (p, v) in cases.items():
        with pytest.raises(CodecError, match=match):
            codec.decode(_with_escape_buffers(msg, p, v))
    bad_meta = [({"escapes": n + 1}, "bytes"), ({"escapes": 0}, "not possible"), ({"escapes": -3}, "not possible"),
                ({"escapes": True}, "must be a int"), ({"escapes": 10**9}, "not possible"),
                ({"escapes": None}, "format version 5 with meta escapes=None")]
    for meta, match in bad_meta:
        with pytest.raises(CodecError, match=match):
            codec.decode(_forge(msg, meta=meta))
    with pytest.raises(CodecError, match="format version 3 with meta escapes"):
        codec.decode(_forge(msg, v=3))
    plain = build_codec("ec25", step=STEP)  # no entropy coder: escapes are not possible
    with pytest.raises(CodecError, match="not supported"):
        plain.decode(_forge(msg, meta={}))


def test_corrupted_escapes_of_a_session_step_are_one_codec_error():
    enc = build_codec("ec25g_s", step=STEP)
    x = spiky(201, seed=5)
    x[0, 200, 7] = 40.0  # 40 / (0.15 x the row's RMS 1.94): code 137
    enc.encode_step(x[:, :200])
    msg = enc.encode(x[:, 200:])  # a key message: decodes on its own
    n = msg.header["meta"]["e"]
    assert n >= 1 and msg.header["format"] == 5
    i = len(msg.buffers) - 3  # steps, esc_pos, esc_val, codes (a key one-token message: bytes or zstd)

    def forged(pos, val, meta=None, fmt=5):
        from splitinfer.codecs.framing import full_header

        bufs = list(msg.buffers)
        bufs[i:i + 2] = [np.asarray(pos).astype("<u4").tobytes(), np.asarray(val).astype("<i2").tobytes()]
        h = {**msg.header, "meta": {**msg.header["meta"], **(meta or {})}}
        crc = seal(full_header(enc.name, enc.overrides, h, fmt), bufs).header["crc"]
        return _wire(StepMessage.build(1, h["dtype"], 0, h["shape"], crc, h["meta"], bufs, h["code"], fmt))

    pos = np.frombuffer(bytes(msg.buffers[i]), "<u4")
    val = np.frombuffer(bytes(msg.buffers[i + 1]), "<i2")
    dec = build_codec("ec25g_s", step=STEP)
    assert torch.equal(dec.decode(forged(pos, val)), dec.decode(_wire(msg)))
    for p, v, match in [(pos + 576, val, "stay below"), (pos, val // 200, "beyond"), (pos, -val, "signs")]:
        with pytest.raises(CodecError, match=match):
            dec.decode(forged(p, v))
    with pytest.raises(CodecError, match="bytes"):
        dec.decode(forged(pos, val, meta={"e": n + 1}))
    with pytest.raises(CodecError, match="format version 3 with meta escapes"):
        dec.decode(forged(pos, val, fmt=3))
    with pytest.raises(CodecError, match="not possible"):
        dec.decode(forged(pos, val, meta={"e": 0}))


# ----------------------------------------------------------------------------- a peer that predates escapes
def test_a_peer_without_escapes_refuses_them_as_another_format(monkeypatch):
    """Before escapes a peer read header versions 1-3 and session head formats 1-3: a message with escapes
    (4/5) is a CodecFormatError (the server's bad_codec), a message without them is read as before."""
    x = spiky(64)
    msg = build_codec("ec25g", step=STEP).encode(x)
    step = build_codec("ec25g_s", step=STEP).encode_step(x)
    quiet = build_codec("ec25g_s", step=STEP).encode_step(x[:, :, 8:])  # no wide channel: no escapes
    monkeypatch.setattr(PipelineCodec, "format_versions", property(lambda self: (self.format_version,)))
    monkeypatch.setattr(framing, "FORMATS", (1, 2, 3))
    with pytest.raises(CodecFormatError, match="format version 5 is not supported"):
        build_codec("ec25g", step=STEP).decode(msg)
    with pytest.raises(CodecFormatError, match="session head format 5 is not supported"):
        _wire(step)
    assert quiet.header["format"] == 3 and build_codec("ec25g_s", step=STEP).decode(_wire(quiet)).shape == (1, 64, 568)


@pytest.mark.slow
def test_real_hidden_states_with_escapes_decode_as_the_int16_path(real_model, monkeypatch):
    """SmolLM2 at cut 4 on a licenses window at step 0.15: the prefill (and some steps) escape codes
    (the cliff of experiments/codec_rate_distortion/issue28/bisect.md) and decode exactly as int16 did."""
    from splitinfer.data import load_texts

    ids = real_model.tokenizer(load_texts("licenses")[0], return_tensors="pt").input_ids[:, :232]
    with torch.no_grad():
        x = real_model.model(ids, output_hidden_states=True).hidden_states[4]
    parts = [x[:, :200]] + [x[:, i:i + 1] for i in range(200, x.shape[1])]
    msgs, ys = _messages("ec25g_s", "ans", parts)
    monkeypatch.setattr(escapes, "split", lambda q: None)
    wide_msgs, wide_ys = _messages("ec25g_s", "ans", parts)
    assert _escape_count(msgs[0]) > 0 and all(torch.equal(y, w) for y, w in zip(ys, wide_ys, strict=True))
    assert msgs[0].nbytes < wide_msgs[0].nbytes
