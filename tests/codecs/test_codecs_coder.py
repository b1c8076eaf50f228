"""The compiled entropy coder (constriction's ANS, entropy.py) against the old plain-numpy rANS (rans.py):
the same models, so identical decoded tensors; fewer or equal bits; a versioned wire an old peer refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitinfer.codecs import CodecError, EncodedTensor, build_codec, entropy, rans
from splitinfer.codecs.registry import wire_spec
from splitinfer.split.wire import codec_spec

PRESETS = ("ec25g", "ec37g", "ec40g")


def _wire(msg):
    return EncodedTensor.from_frames([bytes(memoryview(f)) for f in msg.to_frames()])


def _hidden(rows: int, cols: int = 576, seed: int = 0) -> torch.Tensor:
    """Hidden-state-like rows (per-channel offsets and spreads, drift, a 50x sink row, one NaN)."""
    g = torch.Generator().manual_seed(seed)
    offset, spread = torch.randn(cols, generator=g) * 3, 0.3 + torch.rand(cols, generator=g) * 2
    h = offset + spread * torch.cumsum(torch.randn(rows, cols, generator=g), 0) * 0.4
    h[0] *= 50
    if rows > 2:
        h[2, 5] = float("nan")
    return h[None]


def _steps(x: torch.Tensor, prompt: int) -> list[torch.Tensor]:
    return [x[:, :prompt]] + [x[:, i:i + 1] for i in range(prompt, x.shape[1])]


def assert_same_decoding(name: str, parts: list[torch.Tensor]) -> dict[str, int]:
    """Every part through the compiled and the old coder (pipeline: key messages; `_s`: one session each):
    bit-identical tensors. Returns the bytes of each coder."""
    new, old = build_codec(name), build_codec(name, coder="rans_py")
    assert new.format_version == 3 or name.endswith("_s")
    new_dec, old_dec = build_codec(name), build_codec(name, coder="rans_py")
    sizes = {"ans": 0, "rans_py": 0}
    for x in parts:
        if name.endswith("_s"):
            m_new, m_old = new.encode_step(x), old.encode_step(x)
            y_new, y_old = new_dec.decode(_wire(m_new)), old_dec.decode(_wire(m_old))
            assert m_new.header["code"] == m_old.header["code"]  # same mode chosen: same model
        else:
            m_new, m_old = new.encode(x), old.encode(x)
            y_new, y_old = new.decode(m_new), old.decode(m_old)
        assert torch.equal(y_new.nan_to_num(7.0), y_old.nan_to_num(7.0)) and y_new.isnan().sum() == x.isnan().sum()
        sizes["ans"] += m_new.nbytes
        sizes["rans_py"] += m_old.nbytes
    return sizes


@pytest.mark.parametrize("name", PRESETS)
def test_pipeline_codecs_decode_identically_with_either_coder(name):
    parts = [_hidden(rows, seed=rows) for rows in (8, 40, 256)]
    sizes = assert_same_decoding(name, parts)
    assert sizes["ans"] <= sizes["rans_py"]  # 64 lanes' 256 bytes of final states are gone


@pytest.mark.parametrize("name", ["ec37g_s", "ec25g_s"])
def test_session_codecs_decode_identically_with_either_coder(name):
    x = _hidden(72, seed=3)
    parts = _steps(x, 40) + [x[:, 1:64]]  # prefill, one-token steps (adaptive model), a big message (tables)
    assert_same_decoding(name, parts)
    enc = build_codec(name)
    modes = {enc.encode_step(p).header["code"] % 4 for p in parts}
    assert {2, 3} <= modes  # the adaptive model and fresh static tables both ran


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 40), cols=st.integers(1, 200), scale=st.sampled_from([0.0, 0.3, 3.0, 40.0]),
       groups=st.integers(1, 51), seed=st.integers(0, 2**31 - 1))
def test_static_streams_round_trip_and_match_the_old_coder(rows, cols, scale, groups, seed):
    rng = np.random.default_rng(seed)
    q = np.clip(np.rint(rng.laplace(0, scale, (rows, cols)) * rng.uniform(0.1, 1, cols)), -128, 127).astype(np.int8)
    side, tables, stream, info = entropy.encode_static(q, groups)
    old_side, old_tables, _, old_info = rans.encode(q, groups)
    assert (side, tables, info[:2]) == (old_side, old_tables, old_info[:2])  # same model on the wire
    assert len(stream) == entropy.stream_nbytes(q.size, info[2], "ans")
    assert np.array_equal(entropy.decode_static(side, tables, stream, rows, cols, groups, *info), q)


def test_a_corrupted_ans_stream_is_a_codec_error():
    q = np.clip(np.rint(np.random.default_rng(1).laplace(0, 4, (64, 96))), -128, 127).astype(np.int8)
    side, tables, stream, info = entropy.encode_static(q, 8)
    for bad in (stream[:-4], stream + b"\0\0\0\1", stream[:-1]):
        with pytest.raises(CodecError):
            entropy.decode_static(side, tables, bad, 64, 96, 8, info[0], info[1], len(bad) // 4)


def test_an_old_peer_refuses_the_new_format_with_a_clear_message():
    x = _hidden(64)
    new_msg = build_codec("ec37g").encode(x)
    assert new_msg.header["v"] == 3 and build_codec("ec37g", coder="rans_py").encode(x).header["v"] == 1
    old_peer = build_codec("ec37g", coder="rans_py")  # reads only what the coder before issue 28 wrote
    forged = EncodedTensor({**new_msg.header, "params": {"coder": "rans_py"}}, new_msg.buffers)
    with pytest.raises(CodecError, match="format version 3 is not supported"):
        old_peer.decode(forged)
    a, b = build_codec("ec37g_s"), build_codec("ec37g_s", coder="rans_py")
    with pytest.raises(CodecError, match="session head format 3 but this codec speaks format 1"):
        b.decode(_wire(a.encode_step(x)))
    # the open spec names the coder: a peer without the `coder` param refuses the session (bad_codec)
    assert wire_spec(a) == codec_spec(a) == {"name": "ec37g_s", "coder": "ans"} and a.spec() == {"name": "ec37g_s"}
    assert build_codec(codec_spec(a)).spec() == {"name": "ec37g_s"}
    assert codec_spec(build_codec("int8_s")) == {"name": "int8_s"}
    with pytest.raises(CodecError, match="coder='huffman' is invalid: must be one of"):
        build_codec("ec37g", coder="huffman")


@pytest.mark.slow
def test_real_hidden_states_decode_identically_with_either_coder(real_model):
    """SmolLM2 hidden states of pydoc text at a shallow, a middle and the last cut: a 200-token prefill
    and 24 one-token steps through ec37g_s, and the prefill through ec37g, with both coders."""
    from splitinfer.data import load_texts

    ids = real_model.tokenizer(load_texts("pydoc")[3], return_tensors="pt").input_ids[:, :224]
    with torch.no_grad():
        hs = real_model.model(ids, output_hidden_states=True).hidden_states
    for cut in (1, 15, 29):
        x = hs[cut]
        assert_same_decoding("ec37g_s", _steps(x, 200))
        assert_same_decoding("ec37g", [x[:, :200]])


def test_readmes_corpus_is_deterministic_and_held_out():
    """The second held-out corpus the codecs are reported on (never tuned on): installed packages' READMEs."""
    from splitinfer.data import license_texts, load_texts, readme_texts

    texts = load_texts("readmes")
    assert texts == readme_texts() and len(texts) >= 20 and min(map(len, texts)) >= 2000
    assert len(set(texts)) == len(texts) and not set(texts) & set(license_texts())
    assert any("pip install" in t for t in texts)


@pytest.mark.parametrize(("name", "digest"), [("ec37g", "336af114431fc683"), ("ec25g_s", "f11982dd981418f7"),
                                              ("ec37g:rans_py", "6ddf275723e583cd")])
def test_prefill_bytes_are_those_of_the_coder_before_the_speedups(name, digest):
    """The prefill speed-ups (int16 prediction weights, in-place unpredict, one-histogram grouping, one pass
    for the channel histograms, the table-driven unpredict) change no byte: the digests are those of the code
    before them (main at 42a2719) on the same seeded input. The compiled coder's two (ec37g, ec25g_s) changed
    once, with wire format 3 (each group's model over its own support, entropy.static_models): main at
    4aba7ad had 0e751b5f03cec044 and 2a3e7cd5644b2ed0; their model bytes are still rans_py's (unchanged
    digest, and test_static_streams_round_trip_and_match_the_old_coder)."""
    import hashlib

    g = torch.Generator().manual_seed(28)
    x = torch.randn(1, 256, 576, generator=g) * torch.rand(576, generator=g) * 3 + torch.randn(576, generator=g)
    x = x.cumsum(1) / 8  # tokens drift: every prediction weight 0..4 gets used
    x[0, 0] *= 40  # an attention-sink-like row
    base, _, coder = name.partition(":")
    codec = build_codec(base, **({"coder": coder} if coder else {}))
    msg = codec.encode(x)
    assert hashlib.sha256(b"".join(bytes(b) for b in msg.buffers)).hexdigest()[:16] == digest
    assert torch.equal(codec.decode(msg), build_codec(base, coder="rans_py").decode(
        build_codec(base, coder="rans_py").encode(x)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 60), cols=st.integers(1, 120), scale=st.sampled_from([0.0, 0.5, 4.0, 60.0]),
       groups=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_group_models_over_their_own_support_cost_no_more_than_over_the_whole_range(rows, cols, scale, groups, seed):
    """Wire format 3 codes each group over the residuals its table holds (entropy.static_models); format 2
    coded every group over the message's whole range lo..hi. Same symbols, same frequencies: the trimmed
    stream is at most one 32-bit word longer (constriction's fixed-point rounding), and usually no longer."""
    rng = np.random.default_rng(seed)
    q = np.clip(np.rint(np.cumsum(rng.laplace(0, scale, (rows, cols)), 0) * rng.uniform(0, 1, cols)),
                -128, 127).astype(np.int8)
    side, tables, stream, info = entropy.encode_static(q, groups)
    _, g, res, _, freq, lo, _ = rans.static_model(q, groups)
    whole = entropy.encode_groups(res - lo, entropy.group_channels(g, freq.shape[0]), entropy.models(freq))
    assert info[2] <= whole.size + 1
    models, first, last = entropy.static_models(freq)
    assert len(models) == freq.shape[0] and bool((freq[:, :first.min()] == 0).all())
    for k in range(freq.shape[0]):  # each model spans exactly its table's present symbols
        present = np.flatnonzero(freq[k])
        assert (first[k], last[k]) == (present[0], present[-1])
    assert np.array_equal(entropy.decode_static(side, tables, stream, rows, cols, groups, *info), q)
