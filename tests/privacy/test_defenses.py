"""Defenses are seeded, deterministic, scaled as documented, and attach where they act."""

import pytest
import torch

from splitinfer.models import split_model
from splitinfer.privacy import DChiPrivacy, GaussianNoise, NoDefense, attach_defense, build_defense


def test_same_seed_same_noise_and_reset():
    h = torch.randn(2, 5, 64)
    for make in (lambda s: GaussianNoise(0.1, seed=s), lambda s: DChiPrivacy(50.0, seed=s)):
        a, b, c = make(3), make(3), make(4)
        first = a(h)
        assert torch.equal(first, b(h))
        assert not torch.equal(first, c(h))
        assert not torch.equal(a(h), first)  # the generator advances between calls
        a.reset()
        assert torch.equal(a(h), first)
        g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
        assert torch.equal(a(h, generator=g1), c(h, generator=g2))  # an explicit generator wins


def test_gaussian_noise_is_relative_to_token_rms():
    h = torch.randn(1, 200, 256) * torch.logspace(0, 3, 200)[None, :, None]  # very different token scales
    noisy = GaussianNoise(0.2, seed=0)(h)
    rel = (noisy - h).norm(dim=-1) / h.norm(dim=-1)
    assert rel.mean().item() == pytest.approx(0.2, rel=0.05)
    assert torch.equal(GaussianNoise(0.0)(h), h)


def test_dchi_noise_norm_follows_eta():
    h = torch.zeros(1, 400, 64)
    for eta in (10.0, 100.0):
        norms = DChiPrivacy(eta, seed=1)(h).norm(dim=-1)
        assert norms.mean().item() == pytest.approx(64 / eta, rel=0.05)  # E||z|| = H / eta


def test_attach_defense_on_embeddings_or_payload(tiny_llama):
    dev, _ = split_model(tiny_llama, [2])
    ids = torch.tensor([[5, 6, 7, 8]])
    clean = dev(ids)
    post = attach_defense(dev, DChiPrivacy(20.0, seed=0))
    assert dev.embedding_hook is not None
    assert torch.equal(post(clean), clean)
    assert not torch.allclose(dev(ids), clean)
    post = attach_defense(dev, GaussianNoise(0.5, seed=0))
    assert dev.embedding_hook is None
    assert torch.equal(dev(ids), clean)
    assert not torch.allclose(post(clean), clean)
    attach_defense(dev, NoDefense())
    assert dev.embedding_hook is None


def test_bad_defense_inputs():
    with pytest.raises(ValueError, match=r"unknown defense 'laplace'.*dchi.*gaussian.*none"):
        build_defense("laplace")
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(-1)
    with pytest.raises(ValueError, match="eta"):
        DChiPrivacy(0)
    assert isinstance(build_defense(None), NoDefense)
    assert build_defense({"name": "gaussian", "sigma": 0.3}).sigma == 0.3
