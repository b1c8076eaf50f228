"""Attacks on tiny random models: exact white-box recovery, a learned inverter above chance."""

import time

import pytest
import torch

from splitinfer.models import split_model, tiny_model
from splitinfer.privacy import LearnedInverter, WhiteBoxInversion, build_attack, evaluate_privacy
from splitinfer.privacy.attacks import AttackContext, check_cut


def _context(lm, cut, seed=0, n_aux=0):
    dev, _ = split_model(lm, [cut])
    g = torch.Generator().manual_seed(seed + 100)
    aux = [torch.randint(3, lm.vocab_size, (1, 32), generator=g) for _ in range(n_aux)]
    return dev, AttackContext(lm=lm, cut=cut, observe=lambda ids: dev(ids).detach(), aux_ids=aux, seed=seed,
                              noiseless=True)


@pytest.mark.parametrize("family,cut", [("llama", 0), ("llama", 2), ("llama", 4), ("gpt2", 3)])
def test_whitebox_recovers_prompt_exactly(family, cut, tiny_llama):
    lm = tiny_llama if family == "llama" else tiny_model(family)
    dev, ctx = _context(lm, cut)
    attack = WhiteBoxInversion(batch_size=24, max_batch_size=96, probe_tokens=256)
    attack.prepare(ctx)
    ids = torch.randint(3, lm.vocab_size, (1, 12), generator=torch.Generator().manual_seed(cut))
    with torch.no_grad():
        inv = attack.invert(dev(ids))
    assert inv.complete
    assert torch.equal(inv.ids, ids[0])
    assert inv.verified == 12  # every position confirmed by an exact match


def test_whitebox_candidate_limit_and_deadline(tiny_llama):
    dev, ctx = _context(tiny_llama, 2)
    ids = torch.randint(3, 256, (1, 10), generator=torch.Generator().manual_seed(5))
    attack = WhiteBoxInversion(batch_size=3, max_batch_size=3, max_candidates=3, probe_tokens=64,
                               use_lm_prior=False, use_gradient=False)
    attack.prepare(ctx)
    with torch.no_grad():
        y = dev(ids)
        limited = attack.invert(y)
        assert limited.candidates <= 3 * 10
        late = attack.invert(y, deadline=time.perf_counter() - 1)
    assert not late.complete and (late.ids == -1).all()


def test_learned_inverter_beats_chance(tiny_llama):
    dev, ctx = _context(tiny_llama, 1, n_aux=160)
    attack = LearnedInverter(arch="linear", train_budget_s=6.0, negatives=128, lr=1e-2)
    attack.prepare(ctx)
    ids = torch.randint(3, 256, (4, 32), generator=torch.Generator().manual_seed(42))
    with torch.no_grad():
        acc = torch.cat([(attack.invert(dev(ids[i: i + 1])).ids == ids[i]) for i in range(4)]).float().mean()
    assert attack.train_steps > 0
    assert acc > 10 / 256  # chance is 1/256


@pytest.mark.parametrize("arch", ["gru", "transformer"])
def test_learned_inverter_architectures_run(arch, tiny_llama):
    dev, ctx = _context(tiny_llama, 2, n_aux=8)
    attack = LearnedInverter(arch=arch, width=32, train_budget_s=5.0, negatives=64, max_steps=3)
    attack.prepare(ctx)
    assert attack.train_steps == 3
    out = attack.invert(dev(torch.tensor([[4, 5, 6]])).detach())
    assert out.ids.shape == (3,)


def test_evaluate_privacy_flat_metrics(tiny_llama):
    m = evaluate_privacy(tiny_llama, 2, attack="whitebox", victims=2, seed=0)
    assert m["privacy/whitebox/token_acc"] == 1.0
    assert m["privacy/whitebox/exact_match"] == 1.0
    assert m["privacy/whitebox/partial"] is False
    assert 0.0 < m["privacy/dcor"] <= 1.0
    assert m["privacy/utility/delta_ppl_pct"] == pytest.approx(0.0, abs=1e-3)
    assert m["privacy/utility/top1_agreement"] == 1.0
    for key, value in m.items():
        assert key.startswith("privacy/") and isinstance(value, float | bool), key
    base = evaluate_privacy(tiny_llama, 0, attack="nearest_embedding", victims=2)
    assert base["privacy/nearest_embedding/token_acc"] == 1.0  # cut 0: the payload is the embedding
    lens = evaluate_privacy(tiny_llama, 4, attack="logit_lens", victims=2, utility=False)
    assert 0.0 <= lens["privacy/logit_lens/token_acc"] <= 1.0


def test_defense_lowers_leakage_and_costs_utility(tiny_llama):
    m = evaluate_privacy(tiny_llama, 0, attack="nearest_embedding", defense={"name": "gaussian", "sigma": 3.0},
                         victims=2)
    assert m["privacy/nearest_embedding/token_acc"] < 1.0
    assert m["privacy/utility/top1_agreement"] < 1.0


def test_time_budget_reports_partial(tiny_llama):
    slow = WhiteBoxInversion(batch_size=3, max_batch_size=3, probe_tokens=64, use_gradient=False, use_lm_prior=False)
    m = evaluate_privacy(tiny_llama, 4, attack=slow, victims=8, max_tokens=64, time_budget_s=0.2, utility=False)
    assert m["privacy/whitebox/partial"] is True
    assert m["privacy/whitebox/victims_done"] < 8


def test_bad_inputs_fail_before_work(tiny_llama, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown attack 'sipit'.*learned_inverter.*whitebox"):
        evaluate_privacy(tiny_llama, 2, attack="sipit")
    with pytest.raises(ValueError, match=r"unknown defense 'blur'.*gaussian"):
        evaluate_privacy(tiny_llama, 2, attack="whitebox", defense="blur")
    import splitinfer.privacy.evaluate as ev

    def no_work(*a, **k):
        raise AssertionError("work started before the cut was checked")

    monkeypatch.setattr(ev, "split_model", no_work)
    with pytest.raises(ValueError, match=r"4 layers.*0\.\.4"):
        evaluate_privacy(tiny_llama, 7, attack="whitebox")
    with pytest.raises(ValueError, match="not an int"):
        check_cut(tiny_llama, "3")
    with pytest.raises(ValueError, match="time_budget_s"):
        build_attack("whitebox", time_budget_s=-1)
    with pytest.raises(ValueError, match="max_steps"):
        build_attack("learned_inverter", max_steps=0)
    with pytest.raises(ValueError, match="arch"):
        build_attack({"name": "learned_inverter", "arch": "lstm"})
    with pytest.raises(ValueError, match="causal"):
        WhiteBoxInversion().prepare(AttackContext(tiny_model("bert"), 1, observe=lambda i: i))
