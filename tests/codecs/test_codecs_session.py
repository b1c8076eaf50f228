"""Session codecs (`<preset>_s`): the binary step framing, context-adaptive coding across steps, and the
session's step order (repeats, replays, rollbacks, key messages), in memory and through a real server."""

from __future__ import annotations

import pytest
import torch

from splitinfer.codecs import CodecError, EncodedTensor, build_codec
from splitinfer.codecs.encoded import StepMessage
from splitinfer.codecs.framing import unpack_head
from splitinfer.codecs.session import MODES, AdaptiveStepCodec, SessionCodec

C = 576


def stream(seed: int = 0, steps: int = 24, prompt: int = 40, cols: int = C):
    """Hidden-state-like rows: a per-channel offset, channel-dependent spreads, a slow drift between
    tokens and a first (sink-like) row 50x larger. Yields a prompt message, then one-token steps."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.randn(cols, generator=g) * 3
    spread = 0.3 + torch.rand(cols, generator=g) * 2
    rows, state = [], torch.zeros(cols)
    for _ in range(prompt + steps):
        state = 0.6 * state + torch.randn(cols, generator=g)
        rows.append(offset + spread * state)
    h = torch.stack(rows)[None]
    h[0, 0] *= 50
    return [h[:, :prompt]] + [h[:, i:i + 1] for i in range(prompt, prompt + steps)]


def send(enc, dec, x):
    msg = enc.encode_step(x)
    return msg, dec.decode(EncodedTensor.from_frames([bytes(memoryview(f)) for f in msg.to_frames()]))


@pytest.mark.parametrize("name", ["fp16_s", "int8_s", "ec37g_s", "int4_b32_outlier_lz4_s"])
def test_session_steps_reconstruct_like_the_preset_with_a_few_bytes_of_framing(name):
    enc, dec, preset = build_codec(name), build_codec(name), build_codec(name[:-2])
    assert enc is not dec and enc.spec() == {"name": name}
    for x in stream():
        msg, y = send(enc, dec, x)
        assert isinstance(msg, StepMessage) and y.dtype == x.dtype and y.shape == x.shape
        if x.shape[1] == 1 and isinstance(dec, AdaptiveStepCodec):
            # a one-token step is centred on the session's means (the preset cannot centre one token)
            m = dec.decoder_means
            assert torch.equal(y, preset.decode(preset.encode(x - m)) + m)
        else:
            assert torch.equal(y, preset.decode(preset.encode(x)))  # same reconstruction, fewer bytes
        if x.shape[1] == 1:
            assert msg.nbytes < preset.encode(x).nbytes
            assert len(msg.head) <= 24
    if name == "fp16_s":  # one-token fp16 step: framing <= 2 % of the 1152-byte payload
        assert len(msg.head) / (2 * C) <= 0.02


def same(dec, x):
    """What a one-token step of ec37g_s reconstructs: ec37g on the token centred on the session's means."""
    ref, m = build_codec("ec37g"), dec.decoder_means
    return ref.decode(ref.encode(x - m)) + m


def bits(msgs, numel):
    return sum(m.nbytes for m in msgs) * 8 / numel


def test_adaptive_decode_steps_cost_what_prefill_costs():
    enc, dec = build_codec("ec37g_s"), build_codec("ec37g_s")
    assert isinstance(enc, AdaptiveStepCodec)
    parts = stream(steps=48, prompt=256)
    msgs = [send(enc, dec, x)[0] for x in parts]
    modes = [MODES[m.header["code"] % 4] for m in msgs]
    assert modes[0] == "r" and set(modes[1:]) == {"a"}  # fresh tables once, the session's model after
    prefill, decode = bits(msgs[:1], parts[0].numel()), bits(msgs[1:], C * (len(parts) - 1))
    static = build_codec("ec37g")  # the same integers, each step coded on its own
    alone = bits([static.encode(x) for x in parts[1:]], C * (len(parts) - 1))
    assert decode <= prefill + 0.3 and decode < alone - 1.0, (prefill, decode, alone)


def test_replay_into_a_fresh_codec_rebuilds_the_state_and_repeats_are_idempotent():
    enc, dec = build_codec("ec37g_s"), build_codec("ec37g_s")
    frames, outs = [], []
    for x in stream(seed=1):
        msg, y = send(enc, dec, x)
        frames.append([bytes(f) for f in msg.to_frames()])
        outs.append(y)
    again = build_codec("ec37g_s")  # the server after a restart: same frames, same order
    for f, y in zip(frames, outs, strict=True):
        assert torch.equal(again.decode(EncodedTensor.from_frames(f)), y)
    # an exact repeat of a recent step (re-sent after a failure past the decode) decodes the same, and
    # leaves the state where it was
    assert torch.equal(again.decode(EncodedTensor.from_frames(frames[-1])), outs[-1])
    assert torch.equal(again.decode(EncodedTensor.from_frames(frames[-3])), outs[-3])
    nxt = stream(seed=1, steps=25)[-1]
    assert torch.equal(again.decode(enc.encode_step(nxt)), same(again, nxt))


def test_out_of_order_foreign_and_corrupted_steps_are_refused_without_touching_the_state():
    enc, dec = build_codec("ec37g_s"), build_codec("ec37g_s")
    parts = stream(seed=2, steps=6)
    msgs = [enc.encode_step(x) for x in parts]
    dec.decode(msgs[0])
    with pytest.raises(CodecError, match="expects step 1"):
        dec.decode(msgs[2])  # step 1 was lost
    other = build_codec("ec37g_s")
    other.encode_step(parts[0] * 2)
    with pytest.raises(CodecError):
        dec.decode(other.encode_step(parts[1]))  # step 1 of another session: a different checksum
    head, *bufs = [bytearray(memoryview(f)) for f in msgs[1].to_frames()]
    for i in range(len(bufs)):
        bad = [bytes(b) for b in bufs]
        bad[i] = bytes(b ^ 1 for b in bufs[i][:1]) + bad[i][1:]
        with pytest.raises(CodecError):
            dec.decode(EncodedTensor.from_frames([bytes(head), *bad]))
    for pos in range(1, len(head)):
        flipped = bytearray(head)
        flipped[pos] ^= 0x10
        with pytest.raises(CodecError):
            dec.decode(EncodedTensor.from_frames([bytes(flipped), *map(bytes, bufs)]))
    for i, m in enumerate(msgs[1:], 1):  # the state survived every refusal
        assert torch.equal(dec.decode(m), same(dec, parts[i]))


def test_key_messages_and_forks_leave_the_session_alone_and_rollback_resyncs():
    enc, dec = build_codec("ec37g_s"), build_codec("ec37g_s")
    parts = stream(seed=3, steps=14)
    for x in parts[:4]:
        send(enc, dec, x)
    key = enc.encode(parts[4])  # e.g. a rehearsal on the live instance
    assert unpack_head(key.head)["flags"] == 1
    dec.decode(key)
    fork = enc.fork()
    fork.encode_step(parts[4])
    assert torch.equal(send(enc, dec, parts[4])[1], same(dec, parts[4]))
    # speculative rollback: both halves forget step 4, the encoder sends something else as step 4
    enc.rollback(4)
    dec.rollback(4)
    assert enc.step_index == 4
    _, y = send(enc, dec, parts[5])
    assert torch.equal(y, same(dec, parts[5]))
    for x in parts[6:]:
        send(enc, dec, x)
    with pytest.raises(CodecError, match="roll back"):
        enc.rollback(0)  # only the last few steps are kept


def test_session_formats_do_not_mix():
    plain = build_codec("ec37g")
    with pytest.raises(CodecError, match="decode_any"):
        build_codec("ec37g_s").decode(plain.encode(torch.ones(1, 2, 8)))
    msg = build_codec("int8_s").encode(torch.ones(1, 2, 8))
    assert isinstance(build_codec("int8_s"), SessionCodec)
    with pytest.raises(CodecError):
        build_codec("fp16_s").decode(msg)  # another preset's buffers: the checksum differs
    with pytest.raises(CodecError):
        plain.decode(msg)


# ----------------------------------------------------------------------------- through a real server
IDS = torch.tensor([[5, 17, 33, 42, 91, 7, 12, 3]])
N = 14


@pytest.fixture(scope="module")
def tiny_lm():
    from splitinfer.models import tiny_model

    return tiny_model("llama")


def test_adaptive_session_through_a_restarted_server_replays_to_the_same_tokens(tiny_lm):
    from splitinfer.split import MeteredLink, in_process_generator
    from splitinfer.transport import SplitServer, remote_generator

    expected = in_process_generator(tiny_lm, [2], codec="ec37g_s").generate(IDS, N, stop_at_eos=False)
    servers = [SplitServer(tiny_lm, [2], port=0, poll_ms=20).start()]
    port = servers[0].port

    def restart(n):
        if n == 6:
            servers[-1].stop()
            servers.append(SplitServer(tiny_lm, [2], port=port, poll_ms=20).start())

    gen = remote_generator(tiny_lm, [2], servers[0].url, codec="ec37g_s", timeout_s=2)
    gen.link = MeteredLink(gen.link, on_step=lambda r: restart(r.index + 1))
    try:
        res = gen.generate(IDS, N, stop_at_eos=False)
        link = gen.link.inner
        assert res.token_ids == expected.token_ids
        assert link.replays == 1 and servers[-1].stats.steps == 6 + (N - 6)
        heads = [unpack_head(frames[0]) for _, frames, _ in link.history]
        assert [h["seq"] for h in heads] == list(range(N)) and all(h["flags"] == 0 for h in heads)
        assert {MODES[h["code"] % 4] for h in heads[1:]} == {"a"}  # decode steps: the session's model
        again = gen.generate(IDS, N, stop_at_eos=False)  # a new generation: new session, fresh state
        assert again.token_ids == expected.token_ids
    finally:
        gen.link.close()
        for s in servers:
            s.stop()


def test_licenses_corpus_is_deterministic_english_text():
    from splitinfer.data import license_texts, load_texts

    texts = load_texts("licenses")
    assert texts == license_texts() and len(texts) >= 5 and min(map(len, texts)) >= 500
    assert len(set(texts)) == len(texts) and any("copyright" in t.lower() for t in texts)


def test_a_repeated_token_is_predicted_from_its_earlier_row():
    enc, dec = build_codec("ec37g_s"), build_codec("ec37g_s")
    parts = stream(seed=5, steps=4)
    for x in parts:
        send(enc, dec, x)
    again = parts[0][:, 7:8] + 0.01  # the 8th prompt token, nearly unchanged (a shallow cut, same token)
    msg, y = send(enc, dec, again)
    assert msg.header["meta"].get("p") is not None and torch.equal(y, same(dec, again))
    fresh = send(enc, dec, parts[-1] * 0.5 + 1.0)[0]  # something new: no reference, more bytes
    assert "p" not in fresh.header["meta"] and msg.nbytes < 0.6 * fresh.nbytes
