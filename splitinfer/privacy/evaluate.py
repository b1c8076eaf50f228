"""`evaluate_privacy`: run one attack against one (cut, defense, codec) and return flat metrics."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from splitinfer.models import LoadedModel, split_model
from splitinfer.privacy.attacks import Attack, AttackContext, NoAttack, build_attack, check_cut
from splitinfer.privacy.defenses import Defense, NoDefense, build_defense
from splitinfer.privacy.metrics import distance_correlation, pii_recovered, rouge_l, token_accuracy
from splitinfer.privacy.victims import PII_KINDS, Victim, aux_corpus, victim_set

ATTACKER_SEED_OFFSET = 10_007  # the attacker's own noise draws never equal the victim's


def resolve_codec(codec):
    """None, a codec object (encode/decode), or a name/dict for `splitinfer.codecs.build_codec`."""
    if codec is None or (hasattr(codec, "encode") and hasattr(codec, "decode")):
        return codec
    from splitinfer.codecs import build_codec  # imported late: codecs are optional for privacy runs

    return build_codec(codec)


def payload_fn(dev, defense: Defense, codec) -> Callable[[torch.Tensor], torch.Tensor]:
    """ids -> what the server decodes: the split path's `DeviceHalf.observe`, i.e.
    codec.decode(codec.encode(defense(dev(ids)))) with exactly the code `generate` and `serve` use."""
    from splitinfer.split import DeviceHalf

    return DeviceHalf(dev, codec=codec, defense=defense).observe


def _as_victims(lm: LoadedModel, victims, seed: int) -> list[Victim]:
    if victims is None:
        return victim_set(lm, 4, seed=seed)
    if isinstance(victims, int) and not isinstance(victims, bool):
        return victim_set(lm, victims, seed=seed)
    out = []
    for v in victims:
        if isinstance(v, Victim):
            out.append(v)
        elif isinstance(v, str):
            ids = lm.encode_prompt(v)
            from splitinfer.privacy.victims import _masks

            scored, content = _masks(lm, v, ids, True)
            out.append(Victim(text=v, ids=ids, scored=scored, content=content))
        elif isinstance(v, torch.Tensor):
            ids = v.reshape(1, -1).long()
            ones = torch.ones(ids.shape[1], dtype=torch.bool)
            out.append(Victim(text="", ids=ids, scored=ones, content=ones))
        else:
            raise ValueError(f"victim {v!r}: give texts, token-id tensors or Victim objects")
    return out


def _aux_ids(lm: LoadedModel, aux_texts: Sequence[str] | None, seed: int, seq_len: int = 64) -> list[torch.Tensor]:
    if lm.tokenizer is None:
        g = torch.Generator().manual_seed(seed + 5)
        return [torch.randint(3, lm.vocab_size, (1, seq_len), generator=g) for _ in range(256)]
    texts = aux_corpus() if aux_texts is None else list(aux_texts)
    out = []
    for t in texts:
        ids = lm.tokenizer(t, return_tensors="pt")["input_ids"]
        for s in range(0, ids.shape[1] - 1, seq_len):
            out.append(ids[:, s: s + seq_len])
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(out), generator=g).tolist()
    return [out[i] for i in order]


@torch.no_grad()
def utility_cost(lm: LoadedModel, cut: int, observe, victims: list[Victim]) -> dict[str, float]:
    """What the defense + codec cost the model: Δperplexity and top-1 agreement with the clean model."""
    dev, srv = split_model(lm, [cut])
    nll_clean = nll_def = agree = n = 0.0
    for v in victims:
        ids = v.ids
        if ids.shape[1] < 2:
            continue
        clean = srv(dev(ids)).float()[0, :-1]
        noisy = srv(observe(ids)).float()[0, :-1]
        tgt = ids[0, 1:]
        nll_clean += float(torch.nn.functional.cross_entropy(clean, tgt, reduction="sum"))
        nll_def += float(torch.nn.functional.cross_entropy(noisy, tgt, reduction="sum"))
        agree += float((clean.argmax(-1) == noisy.argmax(-1)).sum())
        n += len(tgt)
    if not n:
        return {}
    ppl_clean, ppl_def = math.exp(nll_clean / n), math.exp(nll_def / n)
    return {"privacy/utility/ppl_clean": ppl_clean, "privacy/utility/ppl": ppl_def,
            "privacy/utility/delta_ppl": ppl_def - ppl_clean, "privacy/utility/top1_agreement": agree / n}


def evaluate_privacy(
    lm: LoadedModel,
    cut: int,
    *,
    attack: str | dict | Attack,
    defense: str | dict | Defense | None = None,
    codec=None,
    victims=None,
    aux_texts: Sequence[str] | None = None,
    time_budget_s: float | None = None,
    seed: int = 0,
    utility: bool = True,
) -> dict[str, float | bool]:
    """Attack the payload of `lm` cut at `cut` and return flat metrics keyed `privacy/<attack>/...`.

    Names are checked and the cut validated before any work. With `time_budget_s` the attack stops
    when the budget runs out: its figures then cover only the victims it finished and
    `privacy/<attack>/partial` is True (never a silently lower number).
    """
    t0 = time.perf_counter()
    attack = build_attack(attack)
    defense = build_defense(defense)
    cut = check_cut(lm, cut)
    if time_budget_s is None:
        time_budget_s = getattr(attack, "time_budget_s", None)
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s={time_budget_s!r}: must be > 0 seconds or None (no limit)")
    codec = resolve_codec(codec)
    deadline = None if time_budget_s is None else t0 + float(time_budget_s)
    victims = _as_victims(lm, victims, seed)

    # The victim's device: its own stage and noise seeded by `seed`. The attacker: the same public
    # weights, defense kind and codec, but its own noise draws.
    observe_victim = payload_fn(split_model(lm, [cut])[0], defense.with_seed(seed), codec)
    observe_attacker = payload_fn(split_model(lm, [cut])[0], defense.with_seed(seed + ATTACKER_SEED_OFFSET), codec)

    p = f"privacy/{attack.name}"
    out: dict[str, float | bool] = {}
    payloads = [observe_victim(v.ids) for v in victims]
    embeds = [lm.model.get_input_embeddings()(v.ids)[0] for v in victims]
    with torch.no_grad():
        dcor = [distance_correlation(e, y[0]) for e, y in zip(embeds, payloads, strict=True) if e.shape[0] > 2]
    out["privacy/dcor"] = float(sum(dcor) / len(dcor)) if dcor else float("nan")
    if utility and lm.is_causal_lm:
        observe_utility = payload_fn(split_model(lm, [cut])[0], defense.with_seed(seed + 1), codec)
        out.update(utility_cost(lm, cut, observe_utility, victims))
    if isinstance(attack, NoAttack):
        out[f"{p}/partial"] = False
        return out

    ctx = AttackContext(lm=lm, cut=cut, observe=observe_attacker, aux_ids=_aux_ids(lm, aux_texts, seed),
                        seed=seed, deadline=deadline, noiseless=isinstance(defense, NoDefense) and codec is None)
    t_prep, c_prep = time.perf_counter(), time.process_time()
    attack.prepare(ctx)
    prepare_s, prepare_cpu_s = time.perf_counter() - t_prep, time.process_time() - c_prep
    c_inv = time.process_time()
    partial = deadline is not None and time.perf_counter() > deadline

    accs, content_accs, exact, rouges, invert_s, tokens = [], [], [], [], 0.0, 0
    pii_hits: dict[str, list[bool]] = {k: [] for k in PII_KINDS}
    verified = candidates = 0
    for v, y in zip(victims, payloads, strict=True):
        if partial:
            break
        inv = attack.invert(y, deadline=deadline)
        if not inv.complete:
            partial = True
            break
        invert_s += inv.seconds
        tokens += v.num_tokens
        verified += inv.verified
        candidates += inv.candidates
        true = v.ids[0]
        accs.append(token_accuracy(inv.ids, true, v.scored))
        content_accs.append(token_accuracy(inv.ids, true, v.content))
        exact.append(float(accs[-1] == 1.0))
        pred_text, true_text = lm.decode(inv.ids.clamp_min(0).tolist()), lm.decode(true.tolist())
        rouges.append(rouge_l(pred_text, true_text))
        # Items cut off by a truncated prompt are not in the payload: they are not counted.
        present = [item for item, there in zip(v.pii, pii_recovered(true_text, v.pii), strict=True) if there]
        for (kind, _), hit in zip(present, pii_recovered(pred_text, present), strict=True):
            pii_hits[kind].append(hit)

    invert_cpu_s = time.process_time() - c_inv

    def mean(xs):
        xs = [x for x in xs if not math.isnan(x)]
        return float(sum(xs) / len(xs)) if xs else float("nan")

    all_pii = [h for hs in pii_hits.values() for h in hs]
    out.update({
        f"{p}/token_acc": mean(accs),
        f"{p}/content_token_acc": mean(content_accs),
        f"{p}/exact_match": mean(exact),
        f"{p}/rouge_l": mean(rouges),
        f"{p}/pii_recovery": mean([float(h) for h in all_pii]),
        f"{p}/victims_done": float(len(accs)),
        f"{p}/victims": float(len(victims)),
        f"{p}/prepare_s": prepare_s,
        f"{p}/invert_s": invert_s,
        f"{p}/time_s": prepare_s + invert_s,
        f"{p}/invert_s_per_token": invert_s / tokens if tokens else float("nan"),
        # CPU seconds of this process: on a shared machine, what the attack costs on an idle core
        # (single-threaded torch) rather than how long it waited for one.
        f"{p}/prepare_cpu_s": prepare_cpu_s,
        f"{p}/invert_cpu_s": invert_cpu_s,
        f"{p}/partial": bool(partial),
    })
    for kind, hits in pii_hits.items():
        if hits:
            out[f"{p}/pii_recovery/{kind}"] = mean([float(h) for h in hits])
    if attack.name == "whitebox" and tokens:
        out[f"{p}/verified_frac"] = verified / tokens
        out[f"{p}/candidates_per_token"] = candidates / tokens
    for key in ("train_tokens", "train_steps", "collect_seconds"):
        if hasattr(attack, key):
            out[f"{p}/{key}"] = float(getattr(attack, key))
    return out
