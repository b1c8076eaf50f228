"""A secret channel permutation (exact utility through the split path) and the attack that recovers it."""

import pytest
import torch

from splitinfer.errors import ConfigError
from splitinfer.models import split_model, tiny_model
from splitinfer.privacy import (
    PermutationRecovery,
    SecretPermutation,
    build_attack,
    build_defense,
    evaluate_privacy,
)
from splitinfer.privacy.attacks import AttackContext
from splitinfer.privacy.attacks.permutation import align_paired, align_statistics
from splitinfer.privacy.evaluate import defense_utility
from splitinfer.split import in_process_generator, split_pair, unsplit_generate


def _ids(lm, n=12, seed=0):
    return torch.randint(3, lm.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


def test_payload_is_a_secret_permutation_of_the_device_output(tiny_llama):
    d = build_defense("secret_permutation")
    dev, _ = split_model(tiny_llama, [2])
    with torch.no_grad():
        h = dev(_ids(tiny_llama))
    y = d(h)
    perm = d.permutation(tiny_llama.hidden_size)
    assert torch.equal(y, h[..., perm]) and not torch.equal(y, h)
    assert torch.equal(d.server_entry(y), h)
    assert not torch.equal(d.with_seed(1).permutation(tiny_llama.hidden_size), perm)  # the seed is the secret
    assert torch.equal(d.with_noise_seed(5).permutation(tiny_llama.hidden_size), perm)  # no noise: same secret


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_split_path_with_the_folded_server_is_exact(family):
    lm = tiny_model(family)
    ids = _ids(lm, 10, seed=3)
    device, server = split_pair(lm, [1], defense=SecretPermutation(seed=4))
    with torch.no_grad():
        sent = device.observe(ids)
        assert not torch.allclose(sent, device.hidden(ids))  # the wire carries permuted channels
        assert torch.allclose(server.logits(sent), lm.model(ids).logits, atol=1e-5)
    out = in_process_generator(lm, [1], defense=SecretPermutation(seed=4)).generate(ids, 6)
    assert out.token_ids == unsplit_generate(lm, ids, 6)[: len(out.token_ids)] and len(out.token_ids) >= 1


def test_utility_is_exact_and_a_remote_device_refuses_it(tiny_llama):
    u = defense_utility(tiny_llama, 2, "secret_permutation", windows=2, prompts=2, seq_len=16, prompt_tokens=8,
                        gen_tokens=4)
    assert u["utility/delta_ppl_pct"] == pytest.approx(0.0, abs=1e-6)
    assert u["utility/top1_agreement"] == 1.0
    from splitinfer.transport.client import remote_generator

    with pytest.raises(ConfigError, match="secret_permutation.*serve"):
        remote_generator(tiny_llama, [2], "tcp://127.0.0.1:9", defense="secret_permutation")


def test_alignment_recovers_a_permutation():
    g = torch.Generator().manual_seed(0)
    # channels with distinct spreads and means (as a real model's are), in a shuffled order
    scales = torch.linspace(0.5, 5.0, 64)[torch.randperm(64, generator=g)]
    shifts = torch.linspace(-6.0, 6.0, 64)[torch.randperm(64, generator=g)]
    public = [torch.randn(50, 64, generator=g) * scales + shifts for _ in range(40)]
    perm = torch.randperm(64, generator=g)
    observed = [(torch.randn(50, 64, generator=g) * scales + shifts)[:, perm] for _ in range(40)]
    assert (align_statistics(observed, public) == perm).float().mean() > 0.95  # unpaired: same distribution
    rows = torch.cat(public)
    assert torch.equal(align_paired(rows[:, perm], rows), perm)  # paired: exact


@pytest.fixture(scope="module")
def channelled_llama():
    """A tiny Llama whose residual channels differ in scale and offset, as a trained model's do (a randomly
    initialised one has statistically identical channels: nothing to align, and the attack says so)."""
    lm = tiny_model("llama")
    g = torch.Generator().manual_seed(7)
    h = lm.hidden_size
    with torch.no_grad():
        emb = lm.model.get_input_embeddings().weight
        emb.mul_(torch.linspace(0.2, 3.0, h)[torch.randperm(h, generator=g)])
        emb.add_(torch.linspace(-2.0, 2.0, h)[torch.randperm(h, generator=g)])
    lm.fingerprint = "tiny-llama-channelled"
    return lm


def test_naive_attacks_fail_and_the_alignment_attack_recovers_everything(channelled_llama):
    lm = channelled_llama
    kw = {"defense": "secret_permutation", "victims": 2, "max_tokens": 10, "chat": False, "seed": 0}
    plain = evaluate_privacy(lm, 2, attack={"name": "whitebox", "noisy_max_candidates": 16}, utility=False, **kw)
    attack = build_attack({"name": "permutation_recovery", "refine_prompts": 3, "refine_tokens": 12})
    m = evaluate_privacy(lm, 2, attack=attack, **kw)
    assert m["privacy/utility/delta_ppl_pct"] == pytest.approx(0.0, abs=1e-6)
    assert plain["privacy/whitebox/token_acc"] < 0.5  # the public coordinates are wrong
    assert torch.equal(attack.estimate, SecretPermutation(seed=0).permutation(lm.hidden_size))
    assert m["privacy/permutation_recovery/verified"] == 1.0
    assert m["privacy/permutation_recovery/token_acc"] == 1.0


def test_identical_channels_leave_nothing_to_align(tiny_llama):
    """On a randomly initialised model the channels cannot be told apart: the attack does not verify a
    permutation and says so (no silently exact-looking result)."""
    attack = build_attack({"name": "permutation_recovery", "refine_prompts": 2, "refine_tokens": 8,
                           "refine_rounds": 1})
    m = evaluate_privacy(tiny_llama, 2, attack=attack, defense="secret_permutation", victims=1, max_tokens=8,
                         chat=False, utility=False)
    assert m["privacy/permutation_recovery/verified"] == 0.0
    assert m["privacy/permutation_recovery/token_acc"] < 0.5


def test_permutation_recovery_config_errors(tiny_llama):
    for bad in ({"refine_tokens": 1}, {"reference_prompts": "many"}, {"refine_rounds": -1}, {"whitebox": 3}):
        with pytest.raises(ConfigError):
            PermutationRecovery(**bad)
    ctx = AttackContext(lm=tiny_llama, cut=2, observe=lambda ids: ids, aux_ids=[])
    with pytest.raises(ConfigError, match="traffic"):
        PermutationRecovery().prepare(ctx)


def test_alignment_verifies_behind_a_lossy_codec(channelled_llama):
    """Behind int8 no row is bit-exact: rows count as reproduced within 3x the codec's own error."""
    attack = build_attack({"name": "permutation_recovery", "refine_prompts": 3, "refine_tokens": 12})
    m = evaluate_privacy(channelled_llama, 2, attack=attack, defense="secret_permutation", codec="int8", victims=2,
                         max_tokens=10, chat=False, utility=False)
    assert torch.equal(attack.estimate, SecretPermutation(seed=0).permutation(channelled_llama.hidden_size))
    assert m["privacy/permutation_recovery/verified"] == 1.0
    assert m["privacy/permutation_recovery/reproduce_tol"] > attack.whitebox.match_tol
    assert m["privacy/permutation_recovery/token_acc"] >= 0.9


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_folded_server_weights_equal_the_entry_hook_and_give_the_secret_away(family):
    """The defense's claim (a server with folded weights computes the public output on the permuted
    payload) checked on real folding, and the weight-matching attack that reads the secret off them."""
    from splitinfer.privacy.folding import fold_permutation, match_folded_weights
    from splitinfer.split import install_server_entry

    lm = tiny_model(family)
    d = SecretPermutation(seed=11)
    dev, srv = split_model(lm, [1])
    perm = d.permutation(lm.hidden_size)
    folded = fold_permutation(srv, perm)
    with torch.no_grad():
        y = d(dev(_ids(lm, 9)))
        want = lm.model(_ids(lm, 9)).logits
        assert torch.allclose(folded(y), want, atol=1e-5)
        assert torch.allclose(install_server_entry(srv, d)(y), want, atol=1e-5)
        assert not torch.allclose(split_model(lm, [1])[1](y), want, atol=1e-2)  # public weights: garbage
    assert torch.equal(match_folded_weights(srv, folded), perm)


def test_folding_refuses_what_it_cannot_fold():
    from splitinfer.privacy.folding import fold_permutation

    lm = tiny_model("gpt2")
    with pytest.raises(ConfigError, match="Llama-style|RMSNorm"):
        fold_permutation(split_model(lm, [1])[1], torch.arange(lm.hidden_size))
    with pytest.raises(ConfigError, match="server stage"):
        fold_permutation(split_model(tiny_model("llama"), [1])[0], torch.arange(64))
