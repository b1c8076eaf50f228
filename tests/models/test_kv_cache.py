"""The KV cache grows geometrically (no torch.cat per step) and holds what concatenation would."""

from __future__ import annotations

import torch

from splitinfer.models import KVCache


def test_kv_cache_grows_geometrically_and_returns_what_concatenation_would():
    cache, ref_k = KVCache(), None
    g = torch.Generator().manual_seed(0)
    reallocs, last_buf = 0, None
    for t in [5] + [1] * 60:
        k = torch.randn(1, 2, t, 4, generator=g)
        out_k, out_v = cache.update(k, -k, 0)
        ref_k = k if ref_k is None else torch.cat([ref_k, k], -2)
        assert torch.equal(out_k, ref_k) and torch.equal(out_v, -ref_k)
        buf = out_k.data_ptr()  # a view of the cache's buffer from position 0: moves only when it grows
        reallocs += buf != last_buf
        last_buf = buf
    assert reallocs <= 4 and cache.seq_len == 65 and cache.nbytes() == 2 * 65 * 2 * 4 * 4
    assert cache.capacity_bytes() <= 2 * cache.nbytes()
    cache.crop(10)
    assert cache.seq_len == 10 and torch.equal(cache.keys[0], ref_k[..., :10, :])
    out_k, _ = cache.update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4), 0)
    assert torch.equal(out_k[..., :10, :], ref_k[..., :10, :]) and out_k.shape[-2] == 11


def test_a_tensor_set_from_outside_is_used_as_is_and_never_written():
    """A hand-off upload or a shared prefix (privacy.attacks.whitebox expands one) goes in without a copy;
    the first append copies it, so the caller's tensor keeps its values even after a crop."""
    prefix = torch.randn(1, 2, 6, 4)
    cache = KVCache()
    cache.keys[0], cache.values[0] = prefix.expand(3, -1, -1, -1), prefix.expand(3, -1, -1, -1)
    assert cache.seq_len == 6 and cache.keys[0].data_ptr() == prefix.data_ptr()
    before = prefix.clone()
    cache.crop(4)
    k, _ = cache.update(torch.zeros(3, 2, 1, 4), torch.zeros(3, 2, 1, 4), 0)
    assert torch.equal(prefix, before) and k.shape == (3, 2, 5, 4) and torch.equal(k[1, :, :4], prefix[0, :, :4])
