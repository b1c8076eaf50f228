"""The U-shaped split in one process: the device runs [0, a) and [b, L) with the head, the middle slice
[a, b) returns its hidden state through a downlink codec; greedy text equals the unsplit model's."""

from __future__ import annotations

import pytest
import torch

from splitinfer.errors import ConfigError
from splitinfer.models import tiny_model
from splitinfer.split import in_process_generator
from splitinfer.split.ushape import check_downlink_codec, check_ushape_cuts, in_process_ushape_generator


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def _prompt(seed: int, n: int = 9) -> torch.Tensor:
    return torch.randint(3, 256, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cuts", [(1, 3), (0, 2)])
def test_ushape_greedy_text_equals_unsplit(lm, cuts, one_torch_thread):
    unsplit = in_process_generator(lm, [lm.num_layers])  # the last stage is the norm and head only
    gen = in_process_ushape_generator(lm, list(cuts), codec="none")
    for seed in range(2):
        ids = _prompt(seed, 5 + 3 * seed)
        ref = unsplit.generate(ids, 10, stop_at_eos=False)
        out = gen.generate(ids, 10, stop_at_eos=False)
        assert out.token_ids == ref.token_ids, (cuts, seed)
        # the downlink carries one hidden state per position: as many bytes as the uplink with codec none
        assert out.bytes_down >= (ids.shape[1] + 9) * 64 * 4 and abs(out.bytes_down - out.bytes_up) < out.bytes_up // 10


def test_ushape_downlink_codec_is_its_own(lm, one_torch_thread):
    ids = _prompt(7)
    raw = in_process_ushape_generator(lm, [1, 3], codec="none").generate(ids, 6, stop_at_eos=False)
    small = in_process_ushape_generator(lm, [1, 3], codec="none", down_codec="int8").generate(ids, 6, stop_at_eos=False)
    assert small.bytes_up == raw.bytes_up and small.bytes_down < raw.bytes_down / 2


@pytest.mark.parametrize(("cuts", "says"), [([2], "needs two cuts"), ([1, 4], "leaves no layers on the device"),
                                            ([3, 1], "strictly increasing")])
def test_bad_ushape_cuts_are_one_clear_error(cuts, says):
    with pytest.raises(ConfigError, match=says):
        check_ushape_cuts(cuts, 4)


def test_a_session_codec_is_refused_on_the_downlink():
    from splitinfer.codecs import build_codec

    with pytest.raises(ConfigError, match="stateless"):
        check_downlink_codec(build_codec("int8_s"))
