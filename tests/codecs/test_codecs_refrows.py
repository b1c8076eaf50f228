"""Reference rows and the compact step head (codecs/refrows.py, refs=true): the same tensors as without them in
fewer bytes, a session that follows them on both halves, clear errors for bad params, forged buffers and peers
that do not know them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from splitinfer.codecs import CodecError, CodecFormatError, EncodedTensor, build_codec, framing, refrows
from splitinfer.codecs.base import seal
from splitinfer.codecs.encoded import StepMessage
from splitinfer.codecs.framing import full_header
from splitinfer.codecs.session import MODES


def _wire(msg):
    return EncodedTensor.from_frames([bytes(memoryview(f)) for f in msg.to_frames()])


def repeating(rows: int = 256, cols: int = 576, seed: int = 0) -> torch.Tensor:
    """Hidden-state-like rows (each channel drifts: 0.6 x its previous value plus noise) in which every other
    row after the first 64 comes back close to one of the earlier rows (a repeated token at a shallow cut)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    for t in range(1, rows):
        x[t] += 0.6 * x[t - 1]
    src = torch.randint(0, 64, (rows,), generator=g)
    for t in range(64, rows, 2):
        x[t] = x[src[t]] + 0.05 * torch.randn(cols, generator=g)
    return x[None]


def test_reference_rows_decode_to_the_same_tensor_in_fewer_bytes():
    x = repeating()
    plain, refs = build_codec("ec25g_s").encode(x), build_codec("ec25g_s", refs=True).encode(x)
    y_plain = build_codec("ec25g_s").decode(_wire(plain))
    y_refs = build_codec("ec25g_s", refs=True).decode(_wire(refs))
    assert torch.equal(y_refs, y_plain)  # the codec's own reconstruction, bit for bit
    assert MODES[refs.header["code"] % 4] == "r" and refs.header["format"] == 6
    assert refs.header["meta"]["rr"] >= 90  # ~96 near-copies, plus any row the search finds worth it
    assert refs.nbytes < 0.93 * plain.nbytes  # measured 0.89 (plain: zstd, which finds no exact repeats)


def test_a_session_with_reference_rows_and_compact_heads_follows_on_both_halves():
    """Prefill with references, then one-token steps (some predicted from a history row, the byte in the head):
    the same tensors as the codec without refs, shorter heads, and a replay into a new session decodes alike."""
    x = repeating(288, seed=1)
    parts = [x[:, :256]] + [x[:, i:i + 1] for i in range(256, 288)]
    out = {}
    for refs in (False, True):
        enc, dec = build_codec("ec25g_s", refs=refs), build_codec("ec25g_s", refs=refs)
        msgs = [enc.encode_step(p) for p in parts]
        out[refs] = (msgs, [dec.decode(_wire(m)) for m in msgs])
    (plain, ys_plain), (msgs, ys) = out[False], out[True]
    assert all(torch.equal(a, b) for a, b in zip(ys, ys_plain, strict=True))
    assert {m.header["format"] for m in msgs} == {6} and {m.header["format"] for m in plain} == {3}
    assert any("p" in m.header["meta"] for m in msgs[1:]), "no one-token step named a history row"
    for m, old in zip(msgs[1:], plain[1:], strict=True):  # magic, bits, seq, ndim, shape, crc, code (+ row byte)
        assert len(m.head) == 11 + ("p" in m.header["meta"]) and set(m.header["meta"]) <= {"p"}
        assert len(old.head) == 13 + (len(json.dumps(old.header["meta"], separators=(",", ":"))) if old.header["meta"] else 0)
    replay = build_codec("ec25g_s", refs=True)
    assert all(torch.equal(replay.decode(_wire(m)), y) for m, y in zip(msgs, ys, strict=True))


@pytest.mark.parametrize(("spec", "match"), [
    ({"name": "ec25g", "refs": True}, "needs the session format"),
    ({"name": "ec25g_s", "refs": True, "coder": "rans_py"}, "coder='ans'"),
    ({"name": "int8_s", "refs": True}, "rans_groups > 0"),
    ({"name": "ec25g_s", "refs": 1}, "true or false"),
    ({"name": "ec25g_s", "refs": True, "outliers": 8}, "needs the adaptive session codec"),
])
def test_refs_where_they_cannot_work_is_a_clear_error(spec, match):
    with pytest.raises(CodecError, match=match):
        build_codec(spec)


def test_a_peer_without_reference_rows_refuses_them_as_another_format(monkeypatch):
    msg = build_codec("ec25g_s", refs=True).encode_step(repeating(128))
    with pytest.raises(CodecFormatError, match="session head format 6 but this codec speaks format 3"):
        build_codec("ec25g_s").decode(_wire(msg))
    with pytest.raises(CodecFormatError, match="format 3 but this codec speaks format 6"):
        build_codec("ec25g_s", refs=True).decode(_wire(build_codec("ec25g_s").encode_step(repeating(128))))
    monkeypatch.setattr(framing, "FORMATS", (1, 2, 3, 4, 5))  # a peer from before references
    with pytest.raises(CodecFormatError, match="session head format 6 is not supported"):
        _wire(msg)


def _forged(enc, msg, back: bytes, rr: int):
    """msg with its reference-row buffer and count replaced, sealed with a valid checksum (a forger's message)."""
    bufs = list(msg.buffers)
    bufs[-4] = back
    h = {**msg.header, "meta": {**msg.header["meta"], "rr": rr}}
    crc = seal(full_header(enc.name, enc.overrides, h, h["format"]), bufs).header["crc"]
    return _wire(StepMessage.build(1, h["dtype"], 0, h["shape"], crc, h["meta"], bufs, h["code"], h["format"]))


def test_forged_reference_rows_are_one_codec_error():
    enc, dec = build_codec("ec25g_s", refs=True), build_codec("ec25g_s", refs=True)
    x = repeating(128)
    msg = enc.encode(x)
    back = np.frombuffer(bytes(msg.buffers[-4]), dtype=np.uint8).copy()
    rr = msg.header["meta"]["rr"]
    assert rr == np.count_nonzero(back) and torch.equal(dec.decode(_forged(enc, msg, back.tobytes(), rr)),
                                                        dec.decode(_wire(msg)))  # the forger is faithful
    early = back.copy()
    early[1] = 2  # row 1 names row -1
    for bad, n, match in [(early.tobytes(), int(np.count_nonzero(early)), "before the message's first"),
                          (back[:-1].tobytes(), rr, "bytes"),
                          (back.tobytes(), rr + 1, "names"),
                          (back.tobytes(), 0, "not possible"),
                          (back.tobytes(), 128, "not possible")]:
        with pytest.raises(CodecError, match=match):
            dec.decode(_forged(enc, msg, bad, n))


@pytest.mark.parametrize("frame", [
    bytes((framing.MAGIC, 6 << 5 | 1 << 3, 0, 0x80, 5, 0, 0, 0, 0, 0)),  # a short shape of 0 dims
    bytes((framing.MAGIC, 6 << 5 | 1 << 3, 0, 0x83, 5, 0, 0, 0, 0, 0x12)),  # a reference byte cut off
])
def test_a_malformed_compact_head_is_one_codec_error(frame):
    with pytest.raises(CodecError, match="dims|reference row"):
        framing.unpack_head(frame)


def test_the_search_finds_the_near_copies():
    x = repeating(160, 64, seed=4)[0]
    q = torch.round(x / 0.25).to(torch.int16).numpy()
    back = refrows.choose(q, q)  # against "no prediction": any close earlier row helps
    assert back is not None
    rows = np.flatnonzero(back)
    assert set(range(64, 160, 2)) <= set(rows.tolist())
    assert (back[rows] <= rows).all()


@pytest.mark.slow
def test_real_hidden_states_decode_alike_with_reference_rows(real_model):
    """SmolLM2 at cut 1 on a licenses window (repeated tokens): a prefill and one-token steps decode to the same
    tensors with and without references, the prefill in fewer bytes."""
    from splitinfer.data import load_texts

    ids = real_model.tokenizer(load_texts("licenses")[0], return_tensors="pt").input_ids[:, :272]
    with torch.no_grad():
        x = real_model.model(ids, output_hidden_states=True).hidden_states[1]
    parts = [x[:, :256]] + [x[:, i:i + 1] for i in range(256, x.shape[1])]
    out = {}
    for refs in (False, True):
        enc, dec = build_codec("ec25g_s", refs=refs), build_codec("ec25g_s", refs=refs)
        msgs = [enc.encode_step(p) for p in parts]
        out[refs] = (msgs, [dec.decode(_wire(m)) for m in msgs])
    assert all(torch.equal(a, b) for a, b in zip(out[False][1], out[True][1], strict=True))
    assert out[True][0][0].header["meta"]["rr"] > 50
    assert out[True][0][0].nbytes < 0.97 * out[False][0][0].nbytes  # measured 0.95 (the plain prefill: zstd)
    assert sum(m.nbytes for m in out[True][0][1:]) < sum(m.nbytes for m in out[False][0][1:])
