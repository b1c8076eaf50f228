"""The unsplit reference a sweep job compares against, and the other exactly reusable work of a job.

One unsplit pass over the corpus records the unsplit log-probs, the greedy continuations and the hidden
state at *every* cut (the output of the device stage at cut k is the input of layer k), so a job only runs
codec + server stage. Kept in memory (`splitinfer.cache` memos `reference.corpora`, `reference.references`,
`reference.profiles`) and, for other processes, on disk under `cache.root()/reference/`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from splitinfer import cache
from splitinfer.data import Corpus, CorpusSpec
from splitinfer.metrics.compute import LayerProfile, profile_layers
from splitinfer.progress import Heartbeat

log = logging.getLogger(__name__)

# Registered in splitinfer.cache: cache.clear() empties them.
_CORPORA = cache.memo("reference.corpora")  # (fingerprint, CorpusSpec) -> Corpus
_REFERENCES = cache.memo("reference.references")  # (fingerprint, corpus digest) -> Reference
_PROFILES = cache.memo("reference.profiles")  # (fingerprint, prompt, context, repeats) -> LayerProfile


@dataclass
class Reference:
    """What the unsplit model does on a corpus: everything a job compares against or starts from."""

    window_hidden: list[torch.Tensor]  # [cut] -> (N, T, H): device-stage output at each cut
    window_logprobs: torch.Tensor  # (N, T-1, V) unsplit log-probs predicting tokens 1..T-1
    gen_hidden: list[torch.Tensor]  # [cut] -> (P, Tp+G-1, H) for prompt + greedy continuation
    gen_tokens: torch.Tensor  # (P, G) unsplit greedy continuation of each prompt


@torch.no_grad()
def _hidden_at_every_cut(lm, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One unsplit pass through single-layer stages; returns hidden at cuts 0..L and the logits."""
    from splitinfer.models import split_model

    stages = split_model(lm, list(range(lm.num_layers + 1)))  # embed | layer 0 | ... | norm+head
    hidden, h = [], ids
    for st in stages[:-1]:
        h = st(h)
        hidden.append(h)
    return hidden, stages[-1](h)


@torch.no_grad()
def unsplit_greedy(lm, prompts: torch.Tensor, gen_tokens: int) -> torch.Tensor:
    """Greedy continuations (P, G) from the unsplit model with a KV cache; EOS does not stop it, so
    every prompt contributes exactly G tokens."""
    from splitinfer.split import in_process_generator

    gen = in_process_generator(lm, [lm.num_layers])  # everything on the "device": the unsplit model
    out = [gen.generate(p[None], gen_tokens, stop_at_eos=False).token_ids for p in prompts]
    return torch.tensor(out, dtype=torch.long).reshape(len(prompts), gen_tokens)


def compute_reference(lm, corpus: Corpus) -> Reference:
    from tqdm.auto import tqdm

    with tqdm(total=3, desc=f"unsplit reference ({lm.name}, {corpus.num_tokens} tokens)", leave=False,
              disable=None) as bar:
        window_hidden, logits = _hidden_at_every_cut(lm, corpus.windows)
        window_logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        del logits
        bar.update()
        gen = unsplit_greedy(lm, corpus.prompts, corpus.gen_tokens)
        bar.update()
        seqs = torch.cat([corpus.prompts, gen[:, :-1]], dim=1)
        gen_hidden, _ = _hidden_at_every_cut(lm, seqs)
        bar.update()
    return Reference(window_hidden, window_logprobs, gen_hidden, gen)


def get_corpus(lm, spec: CorpusSpec, reuse: bool) -> Corpus:
    key = (lm.fingerprint, spec)
    if reuse and key in _CORPORA:
        return _CORPORA[key]
    corpus = spec.build(lm)
    if reuse:
        _CORPORA[key] = corpus
    return corpus


def reference_path(lm, corpus: Corpus) -> Path:
    return cache.root() / "reference" / f"{lm.fingerprint}-{corpus.digest}.safetensors"


def _save_reference(ref: Reference, path: Path) -> None:
    """Flat safetensors (no pickle): lists of per-cut tensors become `name.<index>` entries."""
    from safetensors.torch import save_file

    flat = {"window_logprobs": ref.window_logprobs, "gen_tokens": ref.gen_tokens}
    for name in ("window_hidden", "gen_hidden"):
        flat.update({f"{name}.{i}": t.contiguous() for i, t in enumerate(getattr(ref, name))})
    save_file(flat, str(path))


def _load_reference(path: Path) -> Reference:
    from safetensors.torch import load_file

    flat = load_file(str(path))
    lists = {name: [flat[f"{name}.{i}"] for i in range(sum(k.startswith(name + ".") for k in flat))]
             for name in ("window_hidden", "gen_hidden")}
    return Reference(lists["window_hidden"], flat["window_logprobs"], lists["gen_hidden"], flat["gen_tokens"])


def get_reference(lm, corpus: Corpus, reuse: bool, disk: bool = False) -> Reference:
    """The unsplit reference, from memory, else from the disk cache (when `disk`), else computed.

    The disk copy lets jobs in other processes (joblib workers, submitit/SLURM tasks, a later sweep)
    skip the unsplit pass; it is keyed by the model's fingerprint and the corpus' token digest."""
    key = (lm.fingerprint, corpus.digest)
    if reuse and key in _REFERENCES:
        return _REFERENCES[key]
    path = reference_path(lm, corpus)
    ref = None
    if reuse and disk and path.is_file():
        try:
            ref = _load_reference(path)
        except Exception as e:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
            log.warning("ignoring unreadable reference cache %s (%s)", path, e)
    if ref is None:
        with Heartbeat(f"unsplit reference of {lm.name} ({corpus.num_tokens} tokens, hidden state at every cut; "
                       "once per model and corpus)", log):
            ref = compute_reference(lm, corpus)
        if reuse and disk:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            _save_reference(ref, tmp)
            os.replace(tmp, path)  # atomic: parallel jobs never read half a file
    if reuse:
        _REFERENCES[key] = ref
    return ref


def get_profile(lm, prompt_tokens: int, context_tokens: int, repeats: int, reuse: bool) -> LayerProfile:
    key = (lm.fingerprint, prompt_tokens, context_tokens, repeats)
    if reuse and key in _PROFILES:
        return _PROFILES[key]
    with Heartbeat(f"timing every layer of {lm.name} (once per model)", log):
        prof = profile_layers(lm, prompt_tokens, context_tokens, repeats)
    if reuse:
        _PROFILES[key] = prof
    return prof
