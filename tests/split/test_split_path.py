"""The split path: device half -> defense -> codec -> link -> codec -> server half, in one place."""

from __future__ import annotations

import pytest
import torch

from splitinfer.errors import ConfigError
from splitinfer.models import split_model, tiny_model
from splitinfer.privacy.defenses import DChiPrivacy, GaussianNoise
from splitinfer.privacy.evaluate import payload_fn
from splitinfer.split import (
    TOKEN_REPLY_BYTES,
    DeviceHalf,
    InProcessLink,
    RawCodec,
    ServerHalf,
    SimulatedLink,
    SplitGenerator,
    in_process_generator,
    phase_of,
    split_pair,
)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def test_no_codec_means_raw_bytes_counted_with_their_header(lm):
    gen = in_process_generator(lm, [2])
    assert isinstance(gen.device.codec, RawCodec)
    res = gen.generate(torch.randint(3, 256, (1, 6)), 4, stop_at_eos=False)
    raw = RawCodec()
    prefill = raw.encode(torch.zeros(1, 6, lm.hidden_size)).nbytes
    step = raw.encode(torch.zeros(1, 1, lm.hidden_size)).nbytes
    assert res.bytes_up == prefill + 3 * step and prefill > 6 * lm.hidden_size * 4
    assert res.bytes_down == 4 * TOKEN_REPLY_BYTES
    t = gen.link.traffic
    assert (t.up_prefill_tokens, t.prefill_msgs, t.up_decode_tokens, t.decode_msgs) == (6, 1, 3, 3)


def test_codec_bytes_are_the_encoded_message_and_tokens_match_unsplit_without_codec(lm):
    ids = torch.randint(3, 256, (1, 7))
    plain = in_process_generator(lm, [lm.num_layers]).generate(ids, 6, stop_at_eos=False).token_ids
    assert in_process_generator(lm, [2]).generate(ids, 6, stop_at_eos=False).token_ids == plain
    gen = in_process_generator(lm, [2], codec="int8")
    res = gen.generate(ids, 3, stop_at_eos=False)
    h = gen.device.hidden(ids)
    assert gen.link.traffic.up_prefill_bytes == gen.device.codec.encode(h).nbytes
    assert res.bytes_up < in_process_generator(lm, [2]).generate(ids, 3, stop_at_eos=False).bytes_up


def test_phase_of():
    assert phase_of(0, 1) == "prefill" and phase_of(5, 3) == "prefill" and phase_of(5, 1) == "decode"


def test_payload_defense_reaches_generation_and_is_reproducible(lm):
    ids = torch.randint(3, 256, (1, 8))
    clean = in_process_generator(lm, [2]).generate(ids, 8, stop_at_eos=False).token_ids
    noisy_gen = in_process_generator(lm, [2], defense=GaussianNoise(sigma=3.0, seed=1))
    noisy = noisy_gen.generate(ids, 8, stop_at_eos=False).token_ids
    assert noisy != clean  # the defense is on the path (sigma 3 x RMS changes the answer)
    assert noisy_gen.generate(ids, 8, stop_at_eos=False).token_ids == noisy  # reset rewinds the noise


def test_embedding_defense_is_installed_on_the_device_stage(lm):
    device, server = split_pair(lm, [2], defense=DChiPrivacy(eta=1.0, seed=0))
    assert device.acts_on_embeddings and device.stage.embedding_hook is not None
    ids = torch.randint(3, 256, (1, 5))
    clean = DeviceHalf(split_model(lm, [2])[0]).observe(ids)
    assert not torch.equal(device.observe(ids), clean)


def test_in_process_payload_equals_the_privacy_evaluators(lm):
    """What the in-process server decodes is, bit for bit, what the privacy evaluator attacks."""
    ids = torch.randint(3, 256, (1, 9))
    defense = GaussianNoise(sigma=0.2, seed=5)
    device, server = split_pair(lm, [2], codec="int8", defense=defense.with_seed(5))
    link = InProcessLink(server)
    device.reset()
    received = link.carry(device.encode(device.hidden(ids)))
    attacked = payload_fn(split_model(lm, [2])[0], defense.with_seed(5), device.codec)(ids)
    assert torch.equal(received, attacked)


def test_served_payload_equals_the_privacy_evaluators(lm):
    """A real SplitServer on a loopback socket decodes exactly the payload the evaluator attacks, for the
    same seed, defense and codec; the server needs no change for a defense."""
    from splitinfer.split import ServerHalf
    from splitinfer.transport import SplitServer, remote_generator

    seen = []

    class Recording(ServerHalf):  # the engine seam (SplitServer(engine=...)): what the server decoded
        def decode(self, enc, codec=None):
            hidden = super().decode(enc, codec)
            seen.append(hidden.clone())
            return hidden

    engine = Recording(split_model(lm, [2])[1:], last_position_only=True)
    srv = SplitServer(lm, [2], port=0, poll_ms=20, engine=engine).start()
    try:
        ids = torch.randint(3, 256, (1, 9))
        defense = GaussianNoise(sigma=0.2, seed=11)
        gen = remote_generator(lm, [2], srv.url, codec="int8", defense=defense)
        try:
            gen.generate(ids, 3, stop_at_eos=False)
        finally:
            gen.link.close()
    finally:
        srv.stop()
    attacked = payload_fn(split_model(lm, [2])[0], GaussianNoise(sigma=0.2).with_seed(11), "int8")(ids)
    assert torch.equal(seen[0], attacked)
    clean = payload_fn(split_model(lm, [2])[0], None, "int8")(ids)
    assert not torch.equal(seen[0], clean)


def test_simulated_link_wraps_any_link(lm):
    device, server = split_pair(lm, [2])
    link = SimulatedLink(InProcessLink(server), bandwidth_bps=1e6, rtt_s=0.01, sleep=False)
    res = SplitGenerator(lm, device, link).generate(torch.tensor([[4, 5, 6]]), 3, stop_at_eos=False)
    assert link.simulated_s == pytest.approx(3 * 0.01 + res.bytes_up * 8 / 1e6 + res.bytes_down * 8 / 1e6)


def test_halves_refuse_the_wrong_stages(lm):
    stages = split_model(lm, [1, 3])
    with pytest.raises(ConfigError, match="first stage"):
        DeviceHalf(stages[1])
    with pytest.raises(ConfigError, match="last one"):
        ServerHalf(stages[:2])
    with pytest.raises(ConfigError, match="empty"):
        in_process_generator(lm, [2]).generate("   ", 3)
