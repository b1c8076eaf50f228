"""MeteredLink records each step of any link (bytes each way, phase, wall time) without changing the
tokens; timed_unsplit_generate gives transformers' tokens with per-token times."""

from __future__ import annotations

import pytest
import torch

from splitinfer.generation import in_process_generator, unsplit_generate
from splitinfer.models import tiny_model
from splitinfer.split import TOKEN_REPLY_BYTES, MeteredLink, SimulatedLink, timed_unsplit_generate

IDS = torch.tensor([[3, 14, 15, 92, 65]])


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def test_metered_link_records_every_step_and_keeps_the_tokens(lm):
    plain = in_process_generator(lm, [2]).generate(IDS, 6, stop_at_eos=False)
    gen = in_process_generator(lm, [2])
    seen = []
    gen.link = MeteredLink(gen.link, on_step=seen.append)
    res = gen.generate(IDS, 6, stop_at_eos=False)
    assert res.token_ids == plain.token_ids
    steps = gen.link.steps
    assert seen == steps and [r.index for r in steps] == list(range(6))
    assert [(r.start, r.tokens, r.phase) for r in steps] == [(0, 5, "prefill")] + [(5 + i, 1, "decode")
                                                                                  for i in range(5)]
    # the bytes are the inner link's own count, step by step
    assert sum(r.up_bytes for r in steps) == gen.link.bytes_up == gen.link.traffic.bytes_up > 0
    assert all(r.down_bytes == TOKEN_REPLY_BYTES for r in steps)
    assert steps[0].up_bytes > steps[1].up_bytes == steps[-1].up_bytes
    assert len(gen.link.wall_s) == 6 and all(w > 0 for w in gen.link.wall_s)
    gen.generate(IDS, 2, stop_at_eos=False)  # generate resets the link: records start again
    assert [r.index for r in gen.link.steps] == [0, 1]


def test_metered_link_wraps_a_wrapper_and_passes_attributes_through(lm):
    gen = in_process_generator(lm, [2])
    sim = SimulatedLink(gen.link, bandwidth_bps=1e6, rtt_s=0.0, sleep=False)
    gen.link = MeteredLink(sim)
    gen.generate(IDS, 3, stop_at_eos=False)
    assert gen.link.simulated_s == sim.simulated_s > 0  # an attribute of the inner link
    assert len(gen.link.steps) == 3


def test_timed_unsplit_generate_gives_the_reference_tokens_and_times(lm):
    tokens, prefill_s, decode_s = timed_unsplit_generate(lm, IDS, 5)
    assert tokens == unsplit_generate(lm, IDS, 5)
    assert prefill_s > 0 and len(decode_s) == len(tokens) - 1 and all(d > 0 for d in decode_s)



def test_a_speculative_step_is_recorded_as_decode(lm):
    """A verify step carries x and the drafts (several positions) but is a decode step, as Traffic counts it."""
    from splitinfer.split import InProcessLink, split_pair
    from splitinfer.split.drafters import NGramDrafter
    from splitinfer.split.speculative import SpeculativeGenerator

    device, server = split_pair(lm, [2])
    link = MeteredLink(InProcessLink(server))
    repeats = torch.tensor([[5, 6, 7, 8, 9, 10, 5, 6, 7, 8, 9, 10, 5, 6, 7]])
    SpeculativeGenerator(lm, device, link, NGramDrafter(), gamma=4).generate(repeats, 12, stop_at_eos=False)
    spec = [r for r in link.steps if r.drafted]
    assert spec, "the n-gram drafter proposed nothing on a repeating prompt"
    assert all(r.phase == "decode" and r.tokens == r.drafted + 1 for r in spec)
    assert [r.phase for r in link.steps].count("prefill") == 1
    assert link.traffic.up_decode_tokens == sum(r.tokens for r in link.steps[1:])
