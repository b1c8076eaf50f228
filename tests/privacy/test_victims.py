"""The synthetic private prompts are deterministic, hold their PII, and never overlap the aux corpus."""

import torch

from splitinfer.privacy import aux_corpus, private_prompts, victim_set


def test_private_prompts_deterministic_with_pii():
    a, b = private_prompts(6, seed=0), private_prompts(6, seed=0)
    assert a == b
    assert private_prompts(6, seed=1) != a
    assert {loc for _, loc, _ in a} == {"en_US", "ja_JP"}
    for text, _, pii in a:
        assert {k for k, _ in pii} == {"name", "phone", "address", "email", "date", "medical"}
        assert all(value in text for _, value in pii)


def test_aux_corpus_never_holds_victims():
    aux = set(aux_corpus(50))
    victims = private_prompts(20, seed=0)
    assert not any(t in aux for t, _, _ in victims)
    assert len(aux) > 50


def test_victims_without_tokenizer_are_random_ids(tiny_llama):
    vs = victim_set(tiny_llama, 3, seed=0, max_tokens=10)
    assert len(vs) == 3 and all(v.ids.shape == (1, 10) for v in vs)
    assert not torch.equal(vs[0].ids, vs[1].ids)
