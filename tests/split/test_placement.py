"""Devices and precision per half, on CPU: bad devices and dtypes refused in one line, stages copied (tied
weights included) rather than moved, KV bytes from the dtype, a bf16 split equal to the bf16 unsplit model
(the served case: tests/transport/test_placement_served.py)."""

from __future__ import annotations

import pytest
import torch

from splitinfer.errors import ConfigError
from splitinfer.generation import in_process_generator
from splitinfer.models import split_model, tiny_model
from splitinfer.split.placement import Placement, check_runs, place_module, resolve_device, resolve_dtype
from splitinfer.split.server import ServerHalf

BF16 = Placement(torch.device("cpu"), torch.bfloat16)


def test_devices_and_dtypes_are_checked_with_one_clear_line():
    assert resolve_device("cpu") == torch.device("cpu") and resolve_dtype("bf16") is torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"no CUDA GPU is visible.*visible: cpu"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="server_device 'cuda:1'.*--server-device cpu"):
            Placement.of("cuda:1", "float32", prefix="server_")
    with pytest.raises(ConfigError, match="'tpu' is not a device splitinfer runs on: give cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="'float64' is not supported: choose one of float32, bfloat16, float16"):
        resolve_dtype("float64")
    for dt in ("float32", "bfloat16", "float16"):  # every dtype computes on this CPU
        check_runs(torch.device("cpu"), resolve_dtype(dt))


def test_placing_copies_the_stages_and_each_half_owns_its_tied_weights():
    lm = tiny_model("llama", tie_word_embeddings=True)
    embed = lm.model.get_input_embeddings().weight
    assert lm.model.lm_head.weight is embed
    server = ServerHalf(split_model(lm, [2])[1:], placement=BF16)
    head = server.stages[-1].lm_head.weight
    assert head.dtype is torch.bfloat16 and embed.dtype is torch.float32 and head.data_ptr() != embed.data_ptr()
    assert lm.model.model.layers[3].mlp.up_proj.weight.dtype is torch.float32  # the model keeps its weights
    # buffers (rotary inverse frequencies) stay float32 as transformers computes them; parameters take the dtype
    assert server.stages[0].rotary_emb.inv_freq.dtype is torch.float32
    fp32 = ServerHalf(split_model(lm, [2])[1:])
    assert fp32.stages[0].layers[0] is lm.model.model.layers[2]  # already placed: no copy
    assert server.kv_bytes_per_token() * 2 == fp32.kv_bytes_per_token()
    s = server.session()
    s.forward(torch.randn(1, 5, lm.hidden_size), 0)
    assert s.cache_bytes() == 5 * server.kv_bytes_per_token()
    assert all(k.dtype is torch.bfloat16 for c in s.caches for k in c.keys.values())


def test_bf16_split_generation_matches_the_bf16_unsplit_model():
    """Both halves in bf16 against the whole model cast the same way (`place_module`), greedy."""
    import copy

    lm = tiny_model("qwen2")
    ref = copy.deepcopy(lm)
    place_module(ref.model, BF16)
    ids = torch.randint(3, 250, (1, 6), generator=torch.Generator().manual_seed(1))
    gen = in_process_generator(lm, [2], placement=BF16, server_placement=BF16)
    got = gen.generate(ids, 8, stop_at_eos=False).token_ids
    want = ref.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                              pad_token_id=0, eos_token_id=None)[0, ids.shape[1]:].tolist()
    assert got == want
