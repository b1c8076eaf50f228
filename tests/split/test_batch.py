"""forward_batch: B sessions' steps as one forward equal B single steps (ragged lengths, sliding windows,
every tiny family), leave each session's cache as a single step would, and roll back on an error."""

from __future__ import annotations

import pytest
import torch

from splitinfer.models import split_model, tiny_model
from splitinfer.split import ServerSession, StepError
from splitinfer.split.batch import forward_batch, padding_mask

# llama: plain GQA; gemma3_text: mixed sliding/global layers (window 6 < the lengths here), per-kind RoPE;
# gpt2: learned positions, its own attention module; qwen3: sliding layers after global ones
FAMILIES = ("llama", "gemma3_text", "gpt2", "qwen3")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _pair(lm, cut, lengths, seed=0):
    """Two identical sets of sessions prefilled with the same random hidden states."""
    stages = split_model(lm, [cut])[1:]
    g = torch.Generator().manual_seed(seed)
    a, b = [ServerSession(stages) for _ in lengths], [ServerSession(stages) for _ in lengths]
    for s1, s2, n in zip(a, b, lengths, strict=True):
        if n:
            x = torch.randn(1, n, lm.hidden_size, generator=g)
            s1.forward(x, 0)
            s2.forward(x, 0)
    return a, b, g


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_steps_equal_single_steps(family):
    lm = tiny_model(family)
    lengths = [0, 1, 5, 9, 12, 12]  # a session with an empty cache, equal and unequal lengths
    single, batched, g = _pair(lm, 2, lengths)
    worst = 0.0
    for _ in range(4):
        x = torch.randn(len(lengths), 1, lm.hidden_size, generator=g)
        ref = torch.stack([s.forward(x[i:i + 1], s.position)[0, -1] for i, s in enumerate(single)])
        out = forward_batch(batched, x)
        assert out.shape == ref.shape
        worst = max(worst, (out - ref).abs().max().item())
    assert worst < 1e-4
    for s1, s2 in zip(single, batched, strict=True):  # each session's own state is what a single step leaves
        assert s2.position == s1.position
        for c1, c2 in zip(s1.caches, s2.caches, strict=True):
            assert c2.seq_len == c1.seq_len == s1.position
            for i in c1.keys:
                assert torch.allclose(c1.keys[i], c2.keys[i], atol=1e-5)
                assert torch.allclose(c1.values[i], c2.values[i], atol=1e-5)


def test_equal_lengths_need_no_mask_and_ragged_ones_are_left_padded():
    assert padding_mask([4, 4, 4], 1) is None
    m = padding_mask([1, 3], 1)
    assert m.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_two_stage_chain_and_multi_position_steps():
    lm = tiny_model("llama")
    stages = split_model(lm, [1, 3])[1:]  # two server stages: one BatchedKVCache per stage
    g = torch.Generator().manual_seed(3)
    single = [ServerSession(stages) for _ in range(3)]
    batched = [ServerSession(stages) for _ in range(3)]
    for s1, s2, n in zip(single, batched, (2, 6, 4), strict=True):
        x = torch.randn(1, n, lm.hidden_size, generator=g)
        s1.forward(x, 0)
        s2.forward(x, 0)
    x = torch.randn(3, 3, lm.hidden_size, generator=g)  # 3 positions each (e.g. equal prefill chunks)
    ref = torch.stack([s.forward(x[i:i + 1], s.position)[0, -1] for i, s in enumerate(single)])
    assert (forward_batch(batched, x) - ref).abs().max().item() < 1e-4


def test_a_failed_batch_rolls_every_session_back():
    lm = tiny_model("llama")
    _, sessions, g = _pair(lm, 2, [3, 5, 7])
    before = [(s.position, [c.seq_len for c in s.caches]) for s in sessions]
    sessions[2].caches = []  # broken state (as a closed session has): the forward fails midway
    with pytest.raises(Exception):  # noqa: B017 - whatever the broken session raises
        forward_batch(sessions, torch.randn(3, 1, lm.hidden_size, generator=g))
    for s, (pos, lens) in zip(sessions[:2], before[:2], strict=True):
        assert s.position == pos and [c.seq_len for c in s.caches] == lens
    with pytest.raises(StepError, match="twice"):
        forward_batch([sessions[0], sessions[0]], torch.randn(2, 1, lm.hidden_size))
    with pytest.raises(StepError, match="shape"):
        forward_batch(sessions[:2], torch.randn(3, 1, lm.hidden_size))
    limited = ServerSession(sessions[0].stages, max_tokens=1)
    limited.forward(torch.randn(1, 1, lm.hidden_size), 0)
    with pytest.raises(StepError, match="limit"):
        forward_batch([sessions[0], limited], torch.randn(2, 1, lm.hidden_size))
    assert sessions[0].position == before[0][0]


@pytest.mark.slow
def test_real_model_batched_logits_within_1e4(real_model):
    ids = [real_model.encode_prompt(t) for t in ("Hi.", "What is the capital of France?",
                                                  "Write a haiku about the sea and the wind at night.")]
    stages = split_model(real_model, [15])
    device, server = stages[0], stages[1:]
    single = [ServerSession(server) for _ in ids]
    batched = [ServerSession(server) for _ in ids]
    nxt = []
    with torch.no_grad():
        for s1, s2, x in zip(single, batched, ids, strict=True):
            h = device(x)
            s1.forward(h, 0)
            nxt.append(int(s2.forward(h, 0)[0, -1].argmax()))
        for _ in range(3):
            h = torch.cat([device(torch.tensor([[t]]), position_ids=torch.tensor([[s.position]]))
                           for t, s in zip(nxt, batched, strict=True)])
            ref = torch.stack([s.forward(h[i:i + 1], s.position)[0, -1] for i, s in enumerate(single)])
            out = forward_batch(batched, h)
            assert (out - ref).abs().max().item() < 1e-4
            assert out.argmax(-1).tolist() == ref.argmax(-1).tolist()
            nxt = out.argmax(-1).tolist()
