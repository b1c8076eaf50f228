"""The topologies on the real model (SmolLM2-135M, 30 layers), servers in threads on loopback: a relay
chain device [0,8) -> edge [8,20) -> cloud [20,30) gives the in-process chain's greedy text, and a
U-shape with the server on [4,26) gives the unsplit model's."""

from __future__ import annotations

import pytest

from splitinfer.split import in_process_generator
from splitinfer.transport.relay import RelayEngine, ask_info
from splitinfer.transport.topology import UShapeEngine, connect

PROMPTS = ["What is the capital of France?", "Name three primary colors.", "Write a haiku about rain.",
           "What is 12 times 7?", "Who wrote Hamlet?", "Give a synonym for happy.",
           "Why is the sky blue?", "Translate 'good morning' to Spanish."]


@pytest.mark.slow
def test_relay_and_ushape_on_smollm2(real_model, make_server, one_torch_thread):
    lm = real_model
    cloud = make_server(lm, [20])
    edge = make_server(lm, [8, 20], engine=RelayEngine(lm, [8, 20], cloud.url, ask_info(cloud.url)))
    u = make_server(lm, [4, 26], engine=UShapeEngine(lm, [4, 26]))
    chain_ref = in_process_generator(lm, [8, 20])
    unsplit = in_process_generator(lm, [lm.num_layers])
    relay = connect(lm, [8, 20], edge.url, codec="none", timeout_s=30, retries=0)
    ushape = connect(lm, [4, 26], u.url, codec="none", u_shape=True, timeout_s=30, retries=0)
    try:
        for text in PROMPTS[::2]:  # the 8 prompts, 16 tokens: scripts/check_topologies.py (~4x longer)
            assert relay.generate(text, 6).token_ids == chain_ref.generate(text, 6).token_ids, text
        for text in PROMPTS[1::3]:
            assert ushape.generate(text, 6).token_ids == unsplit.generate(text, 6).token_ids, text
    finally:
        relay.link.close()
        ushape.link.close()
