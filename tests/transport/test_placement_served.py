"""A bf16 server half (SplitServer on its own placement) serves an fp32 device half over tcp: the same
tokens as the same bf16 engine in-process, greedy and seeded sampling (sampling reads CPU float32 logits).

`SPLITINFER_TEST_SERVER_DEVICE` / `SPLITINFER_TEST_SERVER_DTYPES` (scripts/gpu_check.sh: cuda, bfloat16 and
float16) run the same checks with the server half there; by default cpu and bfloat16."""

from __future__ import annotations

import os

import pytest
import torch

from splitinfer.generation import SamplingConfig, in_process_generator
from splitinfer.models import tiny_model
from splitinfer.split.placement import Placement

SERVER_DEVICE = os.environ.get("SPLITINFER_TEST_SERVER_DEVICE", "cpu")
SERVER_DTYPES = os.environ.get("SPLITINFER_TEST_SERVER_DTYPES", "bfloat16").split(",")


@pytest.mark.parametrize("dtype", SERVER_DTYPES)
def test_half_precision_server_serves_an_fp32_device_over_tcp(make_server, dtype):
    lm = tiny_model("llama")
    srv = make_server(lm, [2], device=SERVER_DEVICE, dtype=dtype)
    placement = Placement.of(SERVER_DEVICE, dtype)
    assert srv.info()["placement"] == {"device": str(placement.device), "dtype": dtype}
    from splitinfer.transport import remote_generator

    ids = torch.randint(3, 250, (1, 7), generator=torch.Generator().manual_seed(0))
    for sampling in (SamplingConfig(), SamplingConfig(0.9, 0, 0.95, 11)):
        remote = remote_generator(lm, [2], srv.url, codec="none", sampling=sampling, timeout_s=5)
        try:
            served = remote.generate(ids, 10, stop_at_eos=False).token_ids
        finally:
            remote.link.close()
        local = in_process_generator(lm, [2], sampling=sampling, server_placement=placement)
        assert served == local.generate(ids, 10, stop_at_eos=False).token_ids
    assert remote.device.stage.embed_tokens.weight.dtype is torch.float32
