"""`evaluate_privacy`: run one attack against one (cut, defense, codec) and return flat metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from splitinfer import cache
from splitinfer.errors import ConfigError
from splitinfer.models import LoadedModel, split_model
from splitinfer.privacy.attacks import Attack, AttackContext, NoAttack, build_attack, check_cut
from splitinfer.privacy.defenses import Defense, NoDefense, build_defense
from splitinfer.privacy.metrics import distance_correlation, pii_recovered, rouge_l, token_accuracy
from splitinfer.privacy.progress import bar, eta, say
from splitinfer.privacy.results import RunFiles, VictimResult, aggregate, fingerprint, victim_key
from splitinfer.privacy.victims import Victim, aux_corpus, victim_set

log = logging.getLogger(__name__)
ATTACKER_SEED_OFFSET = 10_007  # the attacker's own noise draws never equal the victim's
# The victim device's other requests the server sees (`AttackContext.traffic`): how many, and their seed
# offset (never the victims themselves).
TRAFFIC_PROMPTS = 64
TRAFFIC_SEED_OFFSET = 424_243
DEFAULT_VICTIMS = 4  # when neither the call nor the attack's config says how many


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


def _as_victims(lm: LoadedModel, victims, seed: int, max_tokens: int | None = None,
                chat: bool = True) -> list[Victim]:
    if victims is None:
        victims = DEFAULT_VICTIMS
    if isinstance(victims, int) and not isinstance(victims, bool):
        if victims < 1:
            raise ConfigError(f"victims={victims!r}: give at least 1 (a count, texts, token ids or Victims)")
        return victim_set(lm, victims, seed=seed, chat=chat, max_tokens=max_tokens)
    out = []
    for v in victims:
        if isinstance(v, Victim):
            out.append(v)
        elif isinstance(v, str):
            ids = lm.encode_prompt(v, chat=chat)
            from splitinfer.privacy.victims import _masks

            scored, content = _masks(lm, v, ids, chat)
            out.append(Victim(text=v, ids=ids, scored=scored, content=content))
        elif isinstance(v, torch.Tensor):
            ids = v.reshape(1, -1).long()
            ones = torch.ones(ids.shape[1], dtype=torch.bool)
            out.append(Victim(text="", ids=ids, scored=ones, content=ones))
        else:
            raise ConfigError(f"victim {v!r}: give texts, token-id tensors or Victim objects")
    if max_tokens is not None:
        out = [v if v.num_tokens <= max_tokens else Victim(
            text=v.text, ids=v.ids[:, :max_tokens], pii=v.pii, locale=v.locale,
            scored=None if v.scored is None else v.scored[:max_tokens],
            content=None if v.content is None else v.content[:max_tokens]) for v in out]
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


# split_quality's keys -> utility_cost's (the names the privacy sweeps' saved rows use)
_VICTIM_UTILITY_KEYS = {"ppl_unsplit": "ppl_clean", "ppl_split": "ppl"}


@torch.no_grad()
def utility_cost(lm: LoadedModel, cut: int, observe, victims: list[Victim], defense=None) -> dict[str, float]:
    """What the defense + codec cost the model on the victims' own text (`metrics.quality.split_quality`):
    perplexity with and without them, Δperplexity in percent of the clean perplexity (the unit the sweeps
    use), KL and top-1 agreement, each with its 95 % interval. Keys `privacy/utility/<metric>`.
    `defense`: the one behind `observe`, for a defense the server's weights are folded with."""
    from splitinfer.metrics.quality import split_quality
    from splitinfer.split import install_server_entry

    dev, srv = split_model(lm, [cut])
    clean_srv = split_model(lm, [cut])[1]
    install_server_entry(srv, defense)
    res = split_quality(lambda ids: clean_srv(dev(ids)), lambda ids: srv(observe(ids)), [v.ids for v in victims])
    return {f"privacy/utility/{_VICTIM_UTILITY_KEYS.get(k, k)}": float(v) for k, v in res.items()}  # flat floats


_UTILITY_REF = cache.memo("privacy.utility_ref")  # (model, set-up) -> unsplit greedy continuations


@torch.no_grad()
def defense_utility(lm: LoadedModel, cut: int, defense=None, codec=None, *, windows: int = 16, seq_len: int = 64,
                    prompts: int = 8, prompt_tokens: int = 24, gen_tokens: int = 16, seed: int = 0) -> dict:
    """Utility of a defense (+ codec) on held-out public text, through the split path (`DeviceHalf`):
    Δperplexity % vs the unsplit model, KL(unsplit ‖ defended) per token and top-1 agreement, each with
    its paired-bootstrap 95 % interval, and greedy exact match of `gen_tokens`-token continuations
    (teacher-forced replay, Wilson interval): `metrics.quality.split_quality`. Held-out text: the fifth of
    the auxiliary corpus the trained defenses never see (`trained.public_sequences(split="heldout")`).
    Keys: `utility/<metric>`."""
    from splitinfer.metrics.quality import split_quality
    from splitinfer.privacy.trained import public_sequences
    from splitinfer.split import DeviceHalf, install_server_entry
    from splitinfer.split.generator import unsplit_generate

    defense = build_defense(defense).with_seed(seed).bind(lm, cut)
    codec = resolve_codec(codec)
    dev, srv = split_model(lm, [cut])
    install_server_entry(srv, defense)
    half = DeviceHalf(dev, codec=codec, defense=defense.with_noise_seed(seed + 1))
    seqs = public_sequences(lm, windows + prompts, seq_len, split="heldout", seed=seed)
    starts = [ids[:, :prompt_tokens] for ids in seqs[windows:]]
    memo = (lm.fingerprint, windows, prompts, seq_len, prompt_tokens, gen_tokens, seed)
    if memo not in _UTILITY_REF:  # the unsplit model's greedy continuations, once per model and set-up
        _UTILITY_REF[memo] = [unsplit_generate(lm, p, gen_tokens) for p in starts]
    res = split_quality(lambda ids: lm.model(ids).logits, lambda ids: srv(half.observe(ids)), seqs[:windows],
                        seed=seed, prompts=starts, continuations=_UTILITY_REF[memo], gen_tokens=gen_tokens)
    return {f"utility/{k}": v for k, v in res.items()}


def _hydra_output_dir() -> Path | None:
    """The running Hydra job's output folder, when there is one (the job's partial results go there)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        folder = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - no Hydra, or a composed config without a run: nothing to write to
        return None
    return Path(folder) if folder else None


@torch.no_grad()
def exact_payload(lm: LoadedModel, cut: int, defense: Defense, codec, observe, seed: int = 0) -> bool:
    """Whether the payload is the device stage's output bit for bit (no defense, a lossless codec such as
    fp32). The attacker can check this itself (it knows the set-up); it then accepts only exact matches."""
    if not isinstance(defense, NoDefense):
        return False
    if codec is None:
        return True
    ids = torch.randint(0, lm.vocab_size, (1, 16), generator=torch.Generator().manual_seed(seed + 3))
    return torch.equal(observe(ids).float(), split_model(lm, [cut])[0](ids).float())


def _describe_codec(codec) -> str | None:
    if codec is None:
        return None
    return str(getattr(codec, "name", None) or getattr(codec, "spec", None) or type(codec).__name__)


def _attack_victim(lm: LoadedModel, attack: Attack, index: int, v: Victim, y: torch.Tensor,
                   deadline: float | None) -> VictimResult | None:
    """Invert one payload and score it; None when the time budget ran out before it was done."""
    c0 = time.process_time()
    inv = attack.invert(y, deadline=deadline)
    cpu = time.process_time() - c0
    if not inv.complete:
        return None
    true = v.ids[0]
    acc = token_accuracy(inv.ids, true, v.scored)
    pred_text, true_text = lm.decode(inv.ids.clamp_min(0).tolist()), lm.decode(true.tolist())
    # Items cut off by a truncated prompt are not in the payload: they are not counted.
    present = [item for item, there in zip(v.pii, pii_recovered(true_text, v.pii), strict=True) if there]
    pii = [(kind, hit) for (kind, _), hit in zip(present, pii_recovered(pred_text, present), strict=True)]
    return VictimResult(index=index, key=victim_key(v.ids), locale=v.locale, tokens=v.num_tokens, token_acc=acc,
                        content_token_acc=token_accuracy(inv.ids, true, v.content), exact=float(acc == 1.0),
                        rouge_l=rouge_l(pred_text, true_text), pii=pii, invert_s=inv.seconds, invert_cpu_s=cpu,
                        verified=inv.verified, candidates=inv.candidates, recovered=pred_text,
                        match_dist=inv.match_dist)


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
    max_tokens: int | None = None,
    chat: bool | None = None,
    out_dir: Path | str | None = None,
) -> dict[str, float | bool]:
    """Attack the payload of `lm` cut at `cut` and return flat metrics keyed `privacy/<attack>/...`.

    Names are checked and the cut validated before any work. `victims`, `max_tokens`, `chat` and
    `time_budget_s` default to the attack's config (`victims`, `victim_tokens`, `victim_chat`,
    `time_budget_s`), then to 4 whole prompts in the chat template with no time limit. With a time budget
    the attack stops when it runs out: its figures then cover only the victims it finished and
    `privacy/<attack>/partial` is True (never a silently lower number). Progress: a bar per victim and
    per token or training step on a terminal, one line per finished victim always. With `out_dir` (under
    Hydra: the job's folder when not given) each finished victim is written at once and a later run in
    the same folder resumes (see `splitinfer.privacy.results`).
    """
    t0 = time.perf_counter()
    attack = build_attack(attack)
    defense = build_defense(defense)
    cut = check_cut(lm, cut)
    if time_budget_s is None:
        time_budget_s = attack.time_budget_s
    if time_budget_s is not None and (isinstance(time_budget_s, bool) or not time_budget_s > 0):
        raise ConfigError(f"time_budget_s={time_budget_s!r}: must be > 0 seconds or None (no limit)")
    if max_tokens is None:
        max_tokens = attack.victim_tokens
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2):
        raise ConfigError(f"max_tokens={max_tokens!r}: must be an integer >= 2 or None (whole prompts)")
    chat = attack.victim_chat if chat is None else chat
    chat = True if chat is None else bool(chat)
    codec = resolve_codec(codec)
    deadline = None if time_budget_s is None else t0 + float(time_budget_s)
    victims = _as_victims(lm, attack.victims if victims is None else victims, seed, max_tokens, chat)

    # The victim's device: its own stage and noise seeded by `seed`. The attacker: the same public
    # weights, defense kind and codec, but its own noise draws.
    # Defenses that depend on the model (Fisher-shaped noise, trained adapters) are bound here: a trained
    # adapter's seed is its secret, so the attacker's copy is trained with its own secret.
    victim_defense = defense.with_seed(seed).bind(lm, cut)
    attacker_defense = defense.with_seed(seed + ATTACKER_SEED_OFFSET).bind(lm, cut)
    observe_victim = payload_fn(split_model(lm, [cut])[0], victim_defense, codec)
    observe_attacker = payload_fn(split_model(lm, [cut])[0], attacker_defense, codec)

    p = f"privacy/{attack.name}"
    out: dict[str, float | bool] = {}
    for key, value in getattr(victim_defense, "train_info", {}).items():
        out[f"privacy/defense/{key}"] = value
    payloads = [observe_victim(v.ids) for v in victims]
    embeds = [lm.model.get_input_embeddings()(v.ids)[0] for v in victims]
    with torch.no_grad():
        dcor = [distance_correlation(e, y[0]) for e, y in zip(embeds, payloads, strict=True) if e.shape[0] > 2]
    out["privacy/dcor"] = float(sum(dcor) / len(dcor)) if dcor else float("nan")
    if utility and lm.is_causal_lm:
        observe_utility = payload_fn(split_model(lm, [cut])[0], victim_defense.with_noise_seed(seed + 1), codec)
        out.update(utility_cost(lm, cut, observe_utility, victims, victim_defense))

    header = {"attack": attack.describe(), "defense": defense.describe(), "codec": _describe_codec(codec),
              "cut": cut, "seed": seed, "model": getattr(lm, "fingerprint", None) or lm.name,
              "victim_keys": [victim_key(v.ids) for v in victims]}
    files = RunFiles(out_dir if out_dir is not None else _hydra_output_dir(), fingerprint(header), header)
    if isinstance(attack, NoAttack):
        out[f"{p}/partial"] = False
        files.finish(out, partial=False)
        return out

    done = {i: r for i, r in files.earlier().items() if i < len(victims) and r.key == header["victim_keys"][i]}
    if done:
        say(log, "%s cut %d: resuming, %d of %d victims already done in %s", attack.name, cut, len(done),
            len(victims), files.dir)
    t_prep, c_prep = time.perf_counter(), time.process_time()
    if len(done) < len(victims):
        memo: list = []

        def traffic() -> list[torch.Tensor]:
            """The victim device's other requests, as the server receives them (computed once)."""
            if not memo:
                others = victim_set(lm, TRAFFIC_PROMPTS, seed=seed + TRAFFIC_SEED_OFFSET, chat=chat,
                                    max_tokens=max_tokens)
                memo.append([observe_victim(o.ids) for o in others])
            return memo[0]

        ctx = AttackContext(lm=lm, cut=cut, observe=observe_attacker, aux_ids=_aux_ids(lm, aux_texts, seed),
                            seed=seed, deadline=deadline, defense=attacker_defense,
                            setup_key=fingerprint({**{k: v for k, v in header.items() if k != "attack"},
                                                   "attacker_defense": attacker_defense.describe(),
                                                   "attacker_seed": seed + ATTACKER_SEED_OFFSET}),
                            noiseless=exact_payload(lm, cut, defense, codec, observe_attacker, seed),
                            traffic=traffic, chat=chat, max_tokens=max_tokens,
                            codec_lossless=exact_payload(lm, cut, NoDefense(), codec,
                                                         payload_fn(split_model(lm, [cut])[0], None, codec), seed))
        attack.prepare(ctx)
    prepare_s, prepare_cpu_s = time.perf_counter() - t_prep, time.process_time() - c_prep
    partial = deadline is not None and time.perf_counter() > deadline

    def metrics(results: list[VictimResult], partial: bool) -> dict[str, float | bool]:
        m = {**out, **aggregate(results, attack.name, len(victims)), f"{p}/prepare_s": prepare_s,
             f"{p}/prepare_cpu_s": prepare_cpu_s, f"{p}/partial": bool(partial),
             f"{p}/victims_resumed": float(len(done))}
        m[f"{p}/time_s"] = prepare_s + m[f"{p}/invert_s"]
        for key in ("train_tokens", "train_steps", "collect_seconds"):
            if hasattr(attack, key):
                m[f"{p}/{key}"] = float(getattr(attack, key))
        for key, value in getattr(attack, "report", {}).items():  # an attack's own diagnostics
            m[f"{p}/{key}"] = float(value)
        return m

    results: list[VictimResult] = []
    t_loop = time.perf_counter()
    label = f"{attack.name} cut {cut}"
    with logging_redirect_tqdm(), bar(total=len(victims), desc=label, unit="victim") as progress:
        for i, (v, y) in enumerate(zip(victims, payloads, strict=True)):
            if i in done:
                results.append(done[i])
                progress.update(1)
                continue
            if partial:
                break
            r = _attack_victim(lm, attack, i, v, y, deadline)
            if r is None:
                partial = True
                say(log, "%s: time budget of %.0f s ran out during victim %d/%d; figures cover the %d done "
                    "(partial)", label, time_budget_s, i + 1, len(victims), len(results))
                break
            results.append(r)
            files.add(r, metrics(results, partial=True))
            progress.update(1)
            new = len(results) - len(done)
            left = sum(1 for j in range(i + 1, len(victims)) if j not in done)
            say(log, "%s: victim %d/%d (%s, %d tokens) in %.1f s: tokens %.1f %%, PII %d/%d%s", label, i + 1,
                len(victims), v.locale, v.num_tokens, r.invert_s, 100 * r.token_acc, sum(h for _, h in r.pii),
                len(r.pii), "; " + eta(new, new + left, time.perf_counter() - t_loop) if left else "")
    partial = partial or len(results) < len(victims)
    final = metrics(results, partial)
    files.finish(final, partial=partial)
    return final


def evaluate_downlink(lm: LoadedModel, cuts, prompts, attack, *, up_codec=None, down_codec=None,
                      max_new_tokens: int = 16) -> dict[str, float]:
    """What a U-shape server infers about the answer from the hidden states it returns (`privacy.downlink`),
    as flat metrics beside the uplink's: `downlink/<attack>/answer_token_acc` with its Wilson interval
    (`_ci_low`, `_ci_high`) and `downlink/<attack>/answer_tokens`. `attack` is a `DownlinkAttack`."""
    from splitinfer.privacy.downlink import downlink_leakage

    out: dict[str, float] = {}
    for row in downlink_leakage(lm, cuts, prompts, max_new_tokens, up_codec=up_codec, down_codec=down_codec,
                                attacks=tuple(attack.attacks)):
        d = row.as_dict()
        key = f"downlink/{row.attack}/answer_token_acc"
        out.update({key: d["accuracy"], f"{key}_ci_low": d["ci_low"], f"{key}_ci_high": d["ci_high"],
                    f"downlink/{row.attack}/answer_tokens": d["tokens"]})
    return out
