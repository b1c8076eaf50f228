"""The U-shape's downlink privacy rows: what the server infers about the answer from what it returns."""

from __future__ import annotations

import pytest
import torch

from splitinfer.models import tiny_model
from splitinfer.privacy.downlink import attack_logits, downlink_leakage, downlink_payload


def test_public_tail_on_the_downlink_recovers_the_greedy_answer_and_the_logit_lens_less(one_torch_thread):
    lm = tiny_model("llama")
    prompts = [torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    rows = {r.attack: r for r in downlink_leakage(lm, [1, 2], prompts, 8, up_codec="none", down_codec="none")}
    assert rows["public_tail"].tokens == 24 and rows["public_tail"].recovered == 24  # the public weights replay it
    assert rows["logit_lens"].recovered < 24  # layer 2 of 4 is not the answer yet
    assert rows["public_tail"].as_dict()["ci_low"] < 1.0


def test_downlink_payload_is_what_the_u_shape_server_returns(one_torch_thread):
    lm = tiny_model("llama")
    ids = torch.randint(3, 256, (1, 7), generator=torch.Generator().manual_seed(4))
    h = downlink_payload(lm, [1, 3], ids)
    assert h.shape == (1, 7, lm.hidden_size)
    with pytest.raises(ValueError, match="not one of"):
        attack_logits(lm, [1, 3], h, "oracle")
