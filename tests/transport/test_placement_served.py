"""A bf16 server half (SplitServer on its own placement) serves an fp32 device half over tcp: the same
tokens as the same bf16 engine in-process, greedy and seeded sampling (sampling reads CPU float32 logits)."""

from __future__ import annotations

import torch

from splitinfer.generation import SamplingConfig, in_process_generator
from splitinfer.models import tiny_model
from splitinfer.split.placement import Placement

BF16 = Placement(torch.device("cpu"), torch.bfloat16)


def test_bf16_server_serves_an_fp32_device_over_tcp(make_server):
    lm = tiny_model("llama")
    srv = make_server(lm, [2], dtype="bfloat16")
    assert srv.info()["placement"] == {"device": "cpu", "dtype": "bfloat16"}
    from splitinfer.transport import remote_generator

    ids = torch.randint(3, 250, (1, 7), generator=torch.Generator().manual_seed(0))
    for sampling in (SamplingConfig(), SamplingConfig(0.9, 0, 0.95, 11)):
        remote = remote_generator(lm, [2], srv.url, codec="none", sampling=sampling, timeout_s=5)
        try:
            served = remote.generate(ids, 10, stop_at_eos=False).token_ids
        finally:
            remote.link.close()
        local = in_process_generator(lm, [2], sampling=sampling, server_placement=BF16)
        assert served == local.generate(ids, 10, stop_at_eos=False).token_ids
    assert remote.device.stage.embed_tokens.weight.dtype is torch.float32
