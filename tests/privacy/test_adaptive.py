"""Defenses that need the model (Fisher-shaped noise, trained adapters) and the attacks that know them."""

import pytest
import torch

from splitinfer.errors import ConfigError
from splitinfer.models import split_model
from splitinfer.privacy import (
    AdaptiveWhiteBox,
    FisherNoise,
    HybridInversion,
    NoPeek,
    SecretAdapter,
    WhiteBoxInversion,
    build_attack,
    build_defense,
    evaluate_privacy,
    server_fisher,
)
from splitinfer.privacy.attacks import AttackContext
from splitinfer.privacy.evaluate import defense_utility
from splitinfer.privacy.trained import dcor_loss
from splitinfer.split import DeviceHalf

RECIPE = {"rank": 8, "steps": 30, "train_seqs": 16, "seq_len": 16, "batch_seqs": 4, "lr": 0.01}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITINFER_CACHE", str(tmp_path / "cache"))


def _ids(lm, n=12, seed=0):
    return torch.randint(3, lm.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


def test_bindable_defenses_refuse_to_run_unbound(tiny_llama):
    dev, _ = split_model(tiny_llama, [2])
    for d in (FisherNoise(0.1), SecretAdapter(0.3, **RECIPE), NoPeek(1.0, **RECIPE)):
        assert not d.bound
        with pytest.raises(ConfigError, match="bind"):
            DeviceHalf(dev, defense=d)
    for bad in ({"name": "fisher_noise", "sigma": -1}, {"name": "nopeek", "lam": "x"},
                {"name": "secret_adapter", "gamma": 0.3, "steps": 0}):
        with pytest.raises(ConfigError):
            build_defense(bad)



def test_a_cached_fisher_or_adapter_file_is_never_unpickled_as_code(tiny_llama, tmp_path):
    """Cache files may be copied in by hand: loading one runs no pickled code, and a bad one is one clear line."""
    import pickle

    fisher = server_fisher(tiny_llama, 2)  # writes the Fisher file, then a trained adapter writes its own
    SecretAdapter(0.3, **{**RECIPE, "steps": 2}).bind(tiny_llama, 2)
    files = sorted((tmp_path / "cache" / "privacy").glob("*.pt"))
    assert {f.name.split("-")[0] for f in files} == {"fisher", "adapter"}
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for f in files:
        f.write_bytes(pickle.dumps({"state": Payload(), "info": {}}))
    with pytest.raises(ConfigError, match="not one this version wrote.*delete it"):
        server_fisher(tiny_llama, 2)
    with pytest.raises(ConfigError, match="cached adapter .* delete it"):
        SecretAdapter(0.3, **{**RECIPE, "steps": 2}).bind(tiny_llama, 2)
    assert not marker.exists() and fisher.shape == (tiny_llama.hidden_size,)

def test_fisher_noise_energy_and_shape(tiny_llama, tmp_path):
    fisher = server_fisher(tiny_llama, 2)
    assert fisher.shape == (tiny_llama.hidden_size,) and (fisher >= 0).all()
    assert list((tmp_path / "cache" / "privacy").glob("fisher-*.pt"))  # cached per model and cut
    d = FisherNoise(0.2, seed=1).bind(tiny_llama, 2)
    h = torch.randn(1, 400, tiny_llama.hidden_size) * 3
    noise = d(h) - h
    rel = noise.norm(dim=-1) / h.norm(dim=-1)
    assert rel.mean().item() == pytest.approx(0.2, rel=0.1)  # same total energy as gaussian at sigma
    big = torch.randn(1, 4000, tiny_llama.hidden_size)
    std = ((d(big) - big) / big.pow(2).mean(-1, keepdim=True).sqrt()).std(dim=(0, 1))
    assert torch.allclose(std, 0.2 * d.shape, rtol=0.1)  # per-dimension std = sigma x shape
    order = fisher.argsort()
    assert (d.shape[order].diff() <= 1e-6).all()  # more noise where the server half is less sensitive
    assert d.shape.max() / d.shape.min() <= 10.0 + 1e-4  # max_ratio
    assert torch.equal(FisherNoise(0.2, seed=1).bind(tiny_llama, 2)(h), d.with_seed(1)(h))


def test_secret_adapter_keeps_deviation_and_output(tiny_llama):
    dev, srv = split_model(tiny_llama, [2])
    d = SecretAdapter(0.5, **RECIPE).bind(tiny_llama, 2)
    info = d.train_info
    assert info["steps_done"] == 30 and not info["cached"]
    assert info["rel_deviation"] == pytest.approx(0.5, abs=0.2)
    ids = _ids(tiny_llama, 24)
    with torch.no_grad():
        h = dev(ids)
        ref = torch.log_softmax(srv(h), -1)
        kl_trained = (ref.exp() * (ref - torch.log_softmax(srv(d(h)), -1))).sum(-1).mean()
        untrained = SecretAdapter(0.5, **{**RECIPE, "steps": 1}).bind(tiny_llama, 2)  # same secret, 1 step
        kl_untrained = (ref.exp() * (ref - torch.log_softmax(srv(untrained(h)), -1))).sum(-1).mean()
    assert kl_trained < kl_untrained  # training moved the deviation where the server half cares less
    again = SecretAdapter(0.5, **RECIPE).bind(tiny_llama, 2)
    assert again.train_info["cached"] and torch.equal(again(h), d(h))  # cached per model/cut/recipe/seed
    other = d.with_seed(7)
    assert other.bound and not torch.allclose(other(h), d(h))  # another secret, another adapter
    # deterministic through the split path (the real wire uses the same DeviceHalf)
    assert torch.allclose(DeviceHalf(split_model(tiny_llama, [2])[0], defense=d).observe(ids), d(h), atol=1e-5)


def test_nopeek_lowers_distance_correlation(tiny_llama):
    dev, _ = split_model(tiny_llama, [1])
    strong = NoPeek(10.0, **{**RECIPE, "steps": 40}).bind(tiny_llama, 1)
    ids = torch.cat([_ids(tiny_llama, 16, s) for s in range(6)])
    with torch.no_grad():
        h = dev(ids)
        emb = tiny_llama.model.get_input_embeddings()(ids)
        before = torch.stack([dcor_loss(e[1:], x[1:]) for e, x in zip(emb, h, strict=True)]).mean()
        after = torch.stack([dcor_loss(e[1:], x[1:]) for e, x in zip(emb, strong(h), strict=True)]).mean()
    assert after < before - 0.02


def _ctx(lm, cut, defense, seed=0):
    dev, _ = split_model(lm, [cut])
    g = torch.Generator().manual_seed(seed + 100)
    aux = [torch.randint(3, lm.vocab_size, (1, 24), generator=g) for _ in range(40)]
    observe = DeviceHalf(dev, defense=defense).observe
    return AttackContext(lm=lm, cut=cut, observe=observe, aux_ids=aux, seed=seed, defense=defense)


def test_greybox_whitebox_reports_how_far_matches_get_and_surrogate_closes_the_gap(tiny_llama):
    victim = SecretAdapter(0.5, **RECIPE).bind(tiny_llama, 2)
    ids = _ids(tiny_llama, 10, seed=4)
    y = DeviceHalf(split_model(tiny_llama, [2])[0], defense=victim).observe(ids)
    grey = WhiteBoxInversion(batch_size=24, max_batch_size=96, probe_tokens=128, noisy_max_candidates=64)
    grey.prepare(_ctx(tiny_llama, 2, victim.with_seed(99)))
    inv = grey.invert(y)
    assert inv.match_dist > 0.05  # public weights: no exact match under the secret adapter
    # An attacker holding the same adapter (the secret leaked) verifies exactly again: the surrogate path works.
    leaked = AdaptiveWhiteBox(metric="l2", batch_size=24, max_batch_size=96, probe_tokens=128)
    leaked.prepare(_ctx(tiny_llama, 2, victim))
    inv2 = leaked.invert(y)
    assert torch.equal(inv2.ids, ids[0]) and inv2.match_dist < 1e-3
    with pytest.raises(ConfigError, match="metric"):
        build_attack({"name": "adaptive_whitebox", "metric": "cosine"})


def test_hybrid_and_adaptive_attacks_through_evaluate_privacy(tiny_llama, tmp_path):
    spec = {"name": "hybrid", "top_k": 8, "noisy_max_candidates": 32, "probe_tokens": 128,
            "inverter": {"arch": "linear", "train_budget_s": 5, "max_steps": 20, "negatives": 128}}
    assert isinstance(build_attack(spec), HybridInversion)
    m = evaluate_privacy(tiny_llama, 2, attack=spec, defense={"name": "fisher_noise", "sigma": 0.05}, victims=2,
                         max_tokens=10, out_dir=tmp_path / "h")
    assert not m["privacy/hybrid/partial"]
    assert 0.0 <= m["privacy/hybrid/token_acc"] <= 1.0 and m["privacy/hybrid/train_steps"] == 20
    assert m["privacy/hybrid/match_dist"] >= 0
    # the control: no defense, the adaptive white-box is exact
    m = evaluate_privacy(tiny_llama, 2, attack={"name": "adaptive_whitebox", "probe_tokens": 128}, victims=2,
                         max_tokens=10)
    assert m["privacy/adaptive_whitebox/token_acc"] == 1.0
    m = evaluate_privacy(tiny_llama, 2, attack="none", defense={"name": "secret_adapter", "gamma": 0.3, **RECIPE},
                         victims=2, max_tokens=10)
    assert m["privacy/defense/steps_done"] == 30 and "privacy/utility/delta_ppl_pct" in m


def test_defense_utility_has_intervals(tiny_llama):
    clean = defense_utility(tiny_llama, 2, None, windows=4, prompts=2, seq_len=32, prompt_tokens=8, gen_tokens=4)
    assert clean["utility/delta_ppl_pct"] == 0.0 and clean["utility/top1_agreement"] == 1.0
    assert clean["utility/exact_match_rate"] == 1.0
    noisy = defense_utility(tiny_llama, 2, {"name": "gaussian", "sigma": 1.0}, windows=4, prompts=2, seq_len=32,
                            prompt_tokens=8, gen_tokens=4)
    assert noisy["utility/kl_mean"] > 0
    assert noisy["utility/delta_ppl_pct_ci_low"] <= noisy["utility/delta_ppl_pct"] <= noisy["utility/delta_ppl_pct_ci_high"]


def test_hydra_job_with_a_trained_defense_and_the_hybrid_reaches_the_report(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from splitinfer.report.measures import LEAK, LEAK_ATTACK, annotate

    root = Path(__file__).resolve().parents[2]
    run_dir = tmp_path / "job"
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "SPLITINFER_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "splitinfer.run", "model=tiny_llama", "split.cut=2", "data=smoke",
                           "logger=jsonl", "metrics=latency_only", "defense=secret_adapter", "defense.steps=5",
                           "defense.seq_len=16", "defense.train_seqs=8", "attack=hybrid", "attack.victims=2",
                           "attack.victim_tokens=8", "attack.inverter.max_steps=5", f"hydra.run.dir={run_dir}"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["defense_ran"] == "secret_adapter" and metrics["privacy/defense/steps_done"] == 5
    assert 0.0 <= metrics["privacy/hybrid/token_acc"] <= 1.0 and "privacy/hybrid/match_dist" in metrics
    annotate([metrics])
    assert metrics[LEAK_ATTACK] == "hybrid" and metrics[LEAK] == metrics["privacy/hybrid/token_acc"]


def test_map_choice_weighs_distance_against_the_prior():
    from splitinfer.privacy.attacks.whitebox import map_choice

    dist = torch.tensor([1.0, 1.1, float("inf"), 5.0])
    logp = torch.log(torch.tensor([0.01, 0.9, 0.99, 0.09]))
    assert map_choice(dist, logp, coef=1.0) == 1  # near-equal distances: the likelier token
    assert map_choice(dist, logp, coef=1000.0) == 0  # a clear distance gap wins over the prior
    assert map_choice(dist, logp, coef=0.0) == 1  # never an unverified candidate (inf), however likely
    with pytest.raises(ConfigError, match="use_lm_prior"):
        build_attack({"name": "adaptive_whitebox", "lm_map": True, "use_lm_prior": False})
    with pytest.raises(ConfigError, match="lm_map"):
        build_attack({"name": "hybrid", "lm_map": "yes"})


@pytest.mark.parametrize("defense", [{"name": "gaussian", "sigma": 0.3}, {"name": "secret_adapter", "gamma": 0.3,
                                                                          **RECIPE}])
def test_lm_map_is_calibrated_on_the_attackers_own_copy(tiny_llama, defense):
    ids = _ids(tiny_llama, 10, seed=4)
    d = build_defense(defense).with_seed(0).bind(tiny_llama, 2)
    dev, _ = split_model(tiny_llama, [2])
    y = d(dev(ids))
    atk = AdaptiveWhiteBox(lm_map=True, batch_size=24, max_batch_size=96, probe_tokens=128,
                           noisy_max_candidates=48)
    attacker = build_defense(defense).with_seed(99).bind(tiny_llama, 2)
    ctx = AttackContext(tiny_llama, 2, lambda x: attacker(dev(x)), aux_ids=[_ids(tiny_llama, 32, seed=s)
                                                                           for s in range(8)],
                        defense=attacker)
    atk.prepare(ctx)
    # the right token's squared distance on the attacker's own text sets the likelihood's scale
    assert atk.map_coef is not None and atk.map_coef > 0
    inv = atk.invert(y)
    assert inv.complete and (inv.ids >= 0).all()
    exact = AdaptiveWhiteBox(lm_map=True, probe_tokens=128)
    exact.prepare(AttackContext(tiny_llama, 2, dev, aux_ids=ctx.aux_ids, noiseless=True))
    assert exact.map_coef is None and torch.equal(exact.invert(dev(ids)).ids, ids[0])  # exact stays exact
