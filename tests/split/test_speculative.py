"""Speculative split decoding: exact greedy text, the sampling rule's distribution, KV rollback, γ choice."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from splitinfer.errors import ConfigError
from splitinfer.models import tiny_model
from splitinfer.split import (
    InProcessLink,
    MeteredLink,
    SamplingConfig,
    SimulatedLink,
    in_process_generator,
    split_pair,
)
from splitinfer.split.drafters import EarlyExitDrafter, NGramDrafter
from splitinfer.split.server import StepError, sampling_probs
from splitinfer.split.speculative import (
    GammaController,
    SpeculativeGenerator,
    expected_tokens,
    parse_speculate,
)

_MODELS: dict = {}


def _tiny(family: str):
    if family not in _MODELS:
        _MODELS[family] = tiny_model(family)
    return _MODELS[family]


@pytest.fixture(scope="module")
def lm():
    return _tiny("llama")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread is faster, and much faster on a busy machine."""


def _spec(lm, cut, drafter, gamma="auto", sampling=None, wrap=None):
    device, server = split_pair(lm, [cut], sampling=sampling)
    link = InProcessLink(server)
    return SpeculativeGenerator(lm, device, wrap(link) if wrap else link, drafter, gamma=gamma)


REPEATS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 5, 6, 7, 8, 9, 10, 11, 12, 13]])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("gamma", ["auto", 1, 4, 16])
def test_greedy_text_is_the_per_token_split_text(family, gamma):
    lm = _tiny(family)
    ids = REPEATS if family == "llama" else torch.randint(3, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    ref = in_process_generator(lm, [2]).generate(ids, 40, stop_at_eos=False)
    for drafter in (NGramDrafter(), EarlyExitDrafter(lm, 2)):
        res = _spec(lm, 2, drafter, gamma).generate(ids, 40, stop_at_eos=False)
        assert res.token_ids == ref.token_ids, (drafter.name, gamma)
        assert res.rounds == len(res.gammas) and res.rounds < 40
        assert sum(res.accepted_per_round) == res.accepted <= res.drafted


def test_drafts_save_round_trips_and_are_counted(lm):
    """A drafter that is always right (the model's own greedy text) emits γ+1 tokens per round trip."""
    ref = in_process_generator(lm, [2]).generate(REPEATS, 33, stop_at_eos=False).token_ids

    class Oracle:
        name, uses_hidden = "oracle", False

        def start(self, prompt_ids):
            self.n = len(prompt_ids)

        def propose(self, context, gamma):
            done = len(context) - self.n
            return ref[done:done + gamma]

    gen = _spec(lm, 2, Oracle(), gamma=4, wrap=lambda link: MeteredLink(SimulatedLink(link, bandwidth_bps=1e9,
                                                                                        sleep=False)))
    res = gen.generate(REPEATS, 33, stop_at_eos=False)
    assert res.token_ids == ref
    assert res.gammas == [4] * 6 + [1] and res.accepted == res.drafted == 25  # 1 + 6*5 + 2 = 33 tokens
    steps = gen.link.steps
    assert len(steps) == 8 and [s.tokens for s in steps[1:]] == [5] * 6 + [2]  # prefill + 7 rounds
    t = gen.link.traffic
    assert t.decode_msgs == 7 and t.up_decode_tokens == 6 * 5 + 2
    assert res.bytes_down == 4 * 33  # one int32 per emitted token, prefill's included
    assert len(gen.link.inner.delays) == 8  # the simulated network delayed each round trip once


def test_both_sides_roll_back_their_kv(lm):
    """After every round the device and server caches hold exactly the accepted positions."""
    class Wrong:  # always proposes junk after a correct-looking first token: forces rejections
        name, uses_hidden = "wrong", False

        def start(self, prompt_ids):
            pass

        def propose(self, context, gamma):
            return [(context[-1] * 31 + 7) % 256 for _ in range(gamma)]

    gen = _spec(lm, 2, Wrong(), gamma=3)
    seen = []
    gen.generate(REPEATS, 12, stop_at_eos=False,
                 on_token=lambda toks: seen.append((len(toks), gen.link.session.position)))
    ref = in_process_generator(lm, [2]).generate(REPEATS, 12, stop_at_eos=False).token_ids
    assert gen.generate(REPEATS, 12, stop_at_eos=False).token_ids == ref
    # the server holds the prompt plus every emitted token but the last (not yet through the stages)
    assert all(pos == REPEATS.shape[1] + n - 1 for n, pos in seen)


def test_verify_refuses_bad_drafts_and_changes_nothing(lm):
    device, server = split_pair(lm, [2])
    s = server.session()
    h = device.hidden(REPEATS)
    s.forward(h, 0)
    h2 = device.hidden(torch.tensor([[1, 2, 3]]))
    for draft, draft_p in (([], None), ([1] * 17, None), ([999, 1], None), ([1], None), ([1, 2], [0.5]),
                           ([1, 2], [0.0, 1.0])):
        with pytest.raises(StepError):
            s.verify(h2 if len(draft) != 1 else h2, s.position, draft, draft_p)
        assert s.position == REPEATS.shape[1]
        assert all(c.seq_len == REPEATS.shape[1] for c in s.caches)


class _TopTwo:
    """Drafts the target's most likely token, then its second most likely one (deterministic), so both
    acceptance and rejection happen often."""

    name, uses_hidden = "top2", False

    def __init__(self, lm):
        self.lm = lm

    def start(self, prompt_ids):
        pass

    def propose(self, context, gamma):
        logits = self.lm.model(torch.tensor([context])).logits[0, -1]
        order = torch.argsort(logits, descending=True).tolist()
        return [order[0], order[1]][:gamma]


@pytest.mark.slow
def test_sampling_keeps_the_output_distribution(lm):
    """Pearson χ² test of the joint law of the first three sampled tokens (prefill token, then one verify
    round with 2 drafts) against the model's own sampling distribution, over 600 seeds. The test fails
    falsely with probability 0.001 (its significance level)."""
    torch.manual_seed(0)
    cfg0 = SamplingConfig(temperature=1.0, top_k=4)
    prompt = [11, 42, 99, 7]
    with torch.no_grad():
        def law(ctx):
            return sampling_probs(lm.model(torch.tensor([ctx])).logits[0, -1], cfg0)

        expected = {}
        p0 = law(prompt)
        for a in torch.nonzero(p0).flatten().tolist():
            p1 = law(prompt + [a])
            for b in torch.nonzero(p1).flatten().tolist():
                p2 = law(prompt + [a, b])
                for c in torch.nonzero(p2).flatten().tolist():
                    expected[(a, b, c)] = float(p0[a] * p1[b] * p2[c])
    device, server = split_pair(lm, [2])
    gen = SpeculativeGenerator(lm, device, InProcessLink(server), _TopTwo(lm), gamma=2)
    counts: dict[tuple, int] = {}
    n, accepted, drafted = 600, 0, 0
    for seed in range(n):
        server.sampling = SamplingConfig(temperature=1.0, top_k=4, seed=seed)
        res = gen.generate(torch.tensor([prompt]), 3, stop_at_eos=False)
        key = tuple(res.token_ids)
        counts[key] = counts.get(key, 0) + 1
        accepted, drafted = accepted + res.accepted, drafted + res.drafted
    assert set(counts) <= set(expected)
    assert 0.2 < accepted / drafted < 0.8  # both branches of the rule ran many times
    cells = sorted(expected, key=expected.get)
    obs, exp, o_acc, e_acc = [], [], 0, 0.0
    for key in cells:  # pool the rarest cells until each pooled expected count is >= 5
        o_acc += counts.get(key, 0)
        e_acc += expected[key] * n
        if e_acc >= 5:
            obs.append(o_acc)
            exp.append(e_acc)
            o_acc, e_acc = 0, 0.0
    obs[-1] += o_acc
    exp[-1] += e_acc
    p_value = stats.chisquare(obs, [e * sum(obs) / sum(exp) for e in exp]).pvalue
    assert p_value > 1e-3, (p_value, len(obs))


def test_greedy_verify_needs_no_drafter_probability_and_replays_identically(lm):
    device, server = split_pair(lm, [2], sampling=SamplingConfig(temperature=0.8, seed=3))
    h = device.hidden(REPEATS)
    out = []
    for _ in range(2):
        s = server.session()
        s.forward(h, 0)
        x = device.hidden(torch.tensor([[4, 5, 6, 7]]), None)
        out.append((s.verify(x, s.position, [5, 6, 7]), s.position))
    assert out[0] == out[1]


def test_gamma_controller_pays_only_when_round_trips_are_dear():
    slow = GammaController()
    fast = GammaController()
    for _ in range(20):
        for n in (1, 2, 5, 9):
            slow.observe(n, 0.002 * n, 0.070 + 0.001 * n, n - 1, (n - 1) // 2)
            fast.observe(n, 0.002 * n, 0.0005 + 0.004 * n, n - 1, (n - 1) // 2)
    assert slow.choose(100) >= 3
    assert fast.choose(100) == 0
    assert GammaController(fixed=5).choose(3) == 2  # never drafts past the token budget
    assert expected_tokens(0.0, 4) == 1 and expected_tokens(1.0, 4) == 5
    assert abs(expected_tokens(0.5, 2) - 1.75) < 1e-12


@pytest.mark.parametrize("value,want", [("auto", "auto"), ("off", None), (None, None), ("0", None), ("3", 3),
                                        (16, 16)])
def test_parse_speculate(value, want):
    assert parse_speculate(value) == want


@pytest.mark.parametrize("value", ["17", "-1", "fast", 2.5, True])
def test_parse_speculate_refuses(value):
    with pytest.raises(ConfigError, match="speculate="):
        parse_speculate(value)


def test_ngram_drafter_looks_up_the_latest_match():
    d = NGramDrafter(max_ngram=3)
    assert d.propose([1, 2, 3, 9, 1, 2, 3, 8, 1, 2, 3], 2) == [8, 1]
    assert d.propose([1, 2, 3, 4], 3) == []
    assert d.propose([5, 6, 5], 4) == [6, 5]
    assert d.propose([7, 7, 7, 7], 2) == [7]  # what followed the latest earlier 3-gram
    assert d.propose([1, 2], 0) == []


@pytest.mark.slow
def test_real_model_greedy_text_is_the_per_token_split_text(real_model):
    prompt = ("Rewrite in the past tense: The cat sits on the mat and watches the birds. The cat sits on the "
              "mat every day.")
    ref = in_process_generator(real_model, [15]).generate(prompt, 16)
    for drafter in (NGramDrafter(), EarlyExitDrafter(real_model, 15)):
        res = _spec(real_model, 15, drafter, gamma=4).generate(prompt, 16)
        assert res.token_ids == ref.token_ids, drafter.name
        assert res.rounds + 1 <= len(ref.token_ids)
    assert res.drafted > 0
