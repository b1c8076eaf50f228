"""One sweep job: a composed config in, a flat metrics dict out (also `metrics.json` + loggers).

The data path is the one in ARCHITECTURE.md: device stage -> defense -> codec -> server stage, in
process. What makes a sweep of dozens of jobs fast is reusing work that is exactly the same across jobs run
in one process (the basic launcher runs them all in one):

- the model, loaded once per model spec;
- the corpus windows/prompts, sampled once per (model, data spec);
- the `Reference` (`splitinfer.reference`): one unsplit pass over the corpus records the unsplit
  log-probs, the greedy continuations, and the hidden state at *every* cut (the output of the device stage
  at cut k is the input of layer k), so a job only runs codec + server stage;
- the per-layer timing profile (Neurosurgeon-style), shared by all cuts and codecs.

All of it is kept in `splitinfer.cache` memos; `splitinfer.cache.clear()` forgets it.

`reuse: false` is the naive way (reload, recompute the reference, run the device stage and a real
split generation per job); `scripts/bench_sweep.py` times both.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from splitinfer import cache
from splitinfer.data import Corpus, CorpusSpec
from splitinfer.errors import ConfigError
from splitinfer.metrics.bandwidth import bandwidth_metrics
from splitinfer.metrics.compute import LayerProfile, memory_metrics
from splitinfer.metrics.hardware import HardwareProfile, load_hardware, modelled_timings
from splitinfer.metrics.latency import LinkProfile, estimate_latency
from splitinfer.metrics.quality import QualityAccumulator, first_mismatch, generation_metrics
from splitinfer.progress import Heartbeat
from splitinfer.reference import Reference, compute_reference, get_corpus, get_profile, get_reference

__all__ = ["MetricOptions", "ModelSpec", "Reference", "compute_reference", "evaluate_split", "get_corpus",
           "get_reference", "run_job"]  # the reference helpers live in splitinfer.reference

log = logging.getLogger(__name__)

_MODELS = cache.memo("experiment.models")  # model spec name -> LoadedModel (cleared by splitinfer.cache.clear)

GROUPS = ("model", "split", "codec", "defense", "attack", "link", "hardware", "data", "logger", "experiment",
          "topology")


# ---------------------------------------------------------------------------------------------
# model spec: knows the layer count before loading, so a bad cut is refused in milliseconds
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """Which model a job cuts (built from `conf/model/*.yaml`). An entry with a `config:` block also has a
    shape (`splitinfer.models.shapes`); a `shape_only` one ships no weights: it is planned, never run."""

    name: str
    shape_only: bool = False
    published_params: float | None = None
    source: str = ""
    config: Any = field(default=None, compare=False, hash=False)

    def num_layers(self) -> int:
        if self.config is not None:
            return int(self.config["num_hidden_layers"])
        return num_layers_of(self.name)

    def require_weights(self) -> None:
        """A ConfigError for a shape-only entry: it can be planned, not run."""
        if self.shape_only:
            raise ConfigError(f"model {self.name!r} is a shape only (its weights do not ship offline): plan it with "
                              "`splitinfer plan --model ...` or `python -m splitinfer.run job=plan`, or run a "
                              "local copy with model=local model.name=/path/to/its/folder")

    def load(self, reuse: bool = True):
        self.require_weights()
        if reuse and self.name in _MODELS:
            return _MODELS[self.name]
        from splitinfer.models import load_model

        with Heartbeat(f"loading {self.name}", log):
            lm = load_model(self.name)
        if reuse:
            _MODELS[self.name] = lm
        return lm


def num_layers_of(name: str) -> int:
    """Layer count from the model's config alone (no weights are read)."""
    from splitinfer.models import peek_num_layers

    return peek_num_layers(name)


def check_cut(cut: Any, num_layers: int) -> int:
    from splitinfer.models import validate_cuts

    if isinstance(cut, str) and cut.strip().lstrip("-").isdigit():
        cut = int(cut)
    try:
        return validate_cuts([cut], num_layers)[0]
    except ValueError as e:
        raise ConfigError(f"split.cut={cut!r}: {e}") from None


# ---------------------------------------------------------------------------------------------
# one split, evaluated
# ---------------------------------------------------------------------------------------------
@dataclass
class MetricOptions:
    """Which metric families to compute and the lengths they assume (conf/metrics/*.yaml)."""

    quality: bool = True
    generation: bool = True
    timing: bool = True
    latency: bool = True
    prompt_tokens: int = 128  # TTFT is for a prompt this long
    context_tokens: int = 512  # device memory and decode timing at this context length
    profile_repeats: int = 3
    server_speedup: float = 1.0  # measured path only (no shape): the server is this many times faster than here
    device_weight_bits: int = 16  # the modelled device / server read their weights at these widths
    server_weight_bits: int = 16
    # lm-eval tasks run through each job's split (splitinfer.eval; needs the eval extra); None = none
    tasks: Any = None  # a list of task names or a comma-separated string, e.g. [splitinfer_mc]
    task_include: Any = ()  # extra folders of task YAMLs (the shipped splitinfer_mc is always found)
    task_limit: float | None = None  # examples per task (the first ones); None = all
    task_num_fewshot: int | None = None
    task_batch_size: int = 8


def job_placements(cfg) -> tuple:
    """The job's `placement` node as (device half, server half) `Placement`s (default CPU float32 each)."""
    from splitinfer.split.placement import Placement

    node = cfg.get("placement") or {}
    out = []
    for half in ("device_half", "server_half"):
        sub = node.get(half) or {}
        out.append(Placement.of(sub.get("device"), sub.get("dtype"), prefix=f"placement.{half}."))
    return tuple(out)


@torch.no_grad()
def evaluate_split(lm, cut: int, codec, defense, corpus: Corpus, ref: Reference, opts: MetricOptions,
                   *, reuse_hidden: bool = True, profile: LayerProfile | None = None,
                   seed: int = 0, placements: tuple | None = None) -> dict[str, Any]:
    """Bandwidth, quality, generation, memory and timing of one (cut, codec, defense), through the split
    path: the device half encodes, an in-process link carries and counts, the server half decodes.

    With `reuse_hidden` the device stage's output is the cached unsplit hidden state at the cut (exactly
    what the device stage computes; not usable when the defense changes the device stage itself)."""
    from splitinfer.split import InProcessLink, SplitGenerator, split_pair

    device_at, server_at = placements or (None, None)  # the `placement` node: each half's device and dtype
    device, server = split_pair(lm, [cut], codec=codec, defense=defense, placement=device_at,
                                server_placement=server_at)
    reuse_hidden = reuse_hidden and not device.acts_on_embeddings and device.placement.is_default
    link = InProcessLink(server)
    # what ran, from the objects themselves (not the config's labels)
    out: dict[str, Any] = {"codec_ran": device.codec.label,  # with its params
                           "defense_ran": getattr(defense, "name", None) or ("none" if defense is None else
                                                                             type(defense).__name__)}

    if opts.quality:
        acc = QualityAccumulator(seed=seed)
        for w in range(corpus.windows.shape[0]):
            ids = corpus.windows[w:w + 1]
            h = ref.window_hidden[cut][w:w + 1] if reuse_hidden else device.hidden(ids)
            received = link.carry(device.encode(h), "prefill")
            acc.add(ref.window_logprobs[w], server.logits(received)[0, :-1], ids[0, 1:])
        out.update(acc.result())

    if corpus.prompts.shape[0]:
        matched = []
        tp, g = corpus.prompts.shape[1], corpus.gen_tokens
        if reuse_hidden or not opts.generation:
            # Teacher-forced replay of greedy generation: the server receives the prompt message, then one
            # message per generated token, exactly as a real generation sends them; its argmax at each
            # step is the token split generation would pick, so the first mismatch is where it diverges.
            seqs = torch.cat([corpus.prompts, ref.gen_tokens[:, :-1]], dim=1)
            for p in range(corpus.prompts.shape[0]):
                device.reset()
                seq = ref.gen_hidden[cut][p:p + 1] if reuse_hidden else device.hidden(seqs[p:p + 1])
                parts = [seq[:, :tp]] + [seq[:, i:i + 1] for i in range(tp, tp + g - 1)]
                received = [link.carry(device.encode(part), "prefill" if i == 0 else "decode")
                            for i, part in enumerate(parts)]
                if opts.generation:
                    pred = server.logits(torch.cat(received, dim=1))[0, tp - 1:].argmax(-1)
                    matched.append(first_mismatch(pred, ref.gen_tokens[p]))
        else:
            gen = SplitGenerator(lm, device, link)
            traffic = link.traffic  # a generation resets its link: keep what every message moved
            for p in range(corpus.prompts.shape[0]):
                res = gen.generate(corpus.prompts[p:p + 1], g, stop_at_eos=False)
                traffic.merge(link.traffic)
                matched.append(first_mismatch(res.token_ids, ref.gen_tokens[p]))
            link.traffic = traffic
        if opts.generation:
            out.update(generation_metrics(matched, g))

    out.update(bandwidth_metrics(link.traffic, lm.hidden_size, encode_s=device.encode_s, decode_s=server.decode_s))
    out.update(memory_metrics(device.stage, server.stages[0], opts.context_tokens))
    if profile is not None:
        for side, figures in (("device", profile.device(cut)), ("server", profile.server(cut)),
                              ("whole", profile.whole())):
            out.update({f"{side}_{k}": v for k, v in figures.items()})
    return out


# ---------------------------------------------------------------------------------------------
# the Hydra job
# ---------------------------------------------------------------------------------------------
def _choices(cfg) -> dict[str, str]:
    """The option picked in each config group (from Hydra when running under it, else from the node)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        picked = dict(HydraConfig.get().runtime.choices)
    except (ValueError, ImportError):
        picked = {}
    out = {}
    for g in GROUPS:
        v = picked.get(g)
        node = cfg.get(g)
        if v is None and hasattr(node, "get"):
            v = node.get("name") or node.get("spec")
        out[g] = str(v) if v is not None else "none"
    return out


def _hydra_paths() -> tuple[Path | None, str | None, int | None]:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ValueError, ImportError):
        return None, None, None
    out_dir = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:
        # The folder the launcher actually made (re-resolving `${now:...}` in a worker could differ).
        return out_dir, out_dir.parent.name, int(hc.job.num)
    return out_dir, None, None


def _enabled(node) -> bool:
    """A defense/attack group is off when its config is null, has no `_target_`, or is named `none`."""
    return hasattr(node, "get") and "_target_" in node and node.get("name") != "none"


def _speculation(split_cfg) -> tuple[Any, str]:
    """split.speculate and split.drafter, checked before any model loads (issue 15)."""
    from splitinfer.split.drafters import DRAFTERS
    from splitinfer.split.speculative import parse_speculate

    speculate = parse_speculate(split_cfg.get("speculate"))
    drafter = str(split_cfg.get("drafter", "ngram"))
    if drafter not in DRAFTERS:
        raise ConfigError(f"split.drafter={drafter!r} is not one of {list(DRAFTERS)}")
    return speculate, drafter


def run_job(cfg, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one configured job; writes `metrics.json` in the job's folder and returns the metrics."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    t_start = time.perf_counter()
    hydra_dir, sweep_id, job_num = _hydra_paths()
    out = Path(out_dir) if out_dir is not None else (hydra_dir or Path.cwd())
    out.mkdir(parents=True, exist_ok=True)
    choices = _choices(cfg)

    # Validate everything cheap before any model loads.
    if str(cfg.get("job", "split")) == "plan":  # every cut of a shape, modelled: no weights, no corpus
        from splitinfer.plan import run_plan_job

        return run_plan_job(cfg, out)
    if str(cfg.get("job", "split")) != "split":
        raise ConfigError(f"job={cfg.get('job')!r} is not one of ['split', 'plan']")
    model_spec: ModelSpec = instantiate(cfg.model)
    model_spec.require_weights()
    num_layers = model_spec.num_layers()
    cut = check_cut(cfg.split.cut, num_layers)
    speculate, drafter = _speculation(cfg.split)
    corpus_spec: CorpusSpec = instantiate(cfg.data)
    corpus_spec.check()
    link: LinkProfile = instantiate(cfg.link)
    hardware: HardwareProfile = instantiate(cfg.hardware)
    server_hardware = load_hardware(str(cfg.get("server_hardware", "h100")))
    opts: MetricOptions = instantiate(cfg.metrics)
    placements = job_placements(cfg)  # checked before any weights load, like the rest
    if opts.tasks:  # task names and their data files on disk, before any model loads
        from splitinfer.eval.run import job_task_set

        job_task_set(opts.tasks, opts.task_include)
    reuse = bool(cfg.get("reuse", True))
    threads = cfg.get("threads")
    if threads:
        torch.set_num_threads(int(threads))

    group = cfg.get("group") or (f"{cfg.name}-{sweep_id}" if sweep_id else None)
    run_name = f"cut{cut}-{choices['codec']}" + (f"-{choices['defense']}" if choices["defense"] != "none" else "")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # Built before the logger: a bad codec or defense leaves no half-written job folder behind.
    codec = instantiate(cfg.codec) if cfg.get("codec") is not None else None
    defense = instantiate(cfg.defense) if choices["defense"] != "none" and _enabled(cfg.get("defense")) else None
    from splitinfer.topologies import job_topology  # single cut, relay or U-shape (conf/topology)

    topology, cuts = job_topology(cfg, cut, num_layers, codec=codec, defense=defense, speculate=speculate,
                                  tasks=opts.tasks)
    # Built in two steps: the resolved config must reach the logger as plain data, not be instantiated.
    make_logger = instantiate(cfg.logger, _partial_=True, _convert_="all")
    logger = make_logger(out_dir=str(out), group=group, job_type=str(cfg.get("job_type", "sweep")),
                         name=run_name, run_config=resolved)
    try:
        lm = model_spec.load(reuse=reuse)
        if not lm.is_causal_lm:
            raise ConfigError(f"model {lm.name!r} is an encoder ({lm.family}); sweeps need a causal LM")
        from splitinfer.split import bind_to

        defense = bind_to(defense, lm, cut)  # Fisher-shaped noise, trained adapters: need the model and cut
        codec = bind_to(codec, lm, cut)  # the learned bottleneck: fitted once per model and cut (cached)
        corpus = get_corpus(lm, corpus_spec, reuse)
        ref = get_reference(lm, corpus, reuse, disk=bool(cfg.get("disk_cache", False)))
        profile = (get_profile(lm, opts.prompt_tokens, opts.context_tokens, opts.profile_repeats, reuse)
                   if (opts.timing or opts.latency) and topology.kind == "single" else None)
        metrics: dict[str, Any] = {
            "name": cfg.name, **choices, "cut": cut, "num_layers": num_layers, "hidden_size": lm.hidden_size,
            "model_fingerprint": lm.fingerprint, "corpus_digest": corpus.digest, "job_num": job_num,
            "reuse": reuse, "torch_threads": torch.get_num_threads(), "group": group,
        }
        with Heartbeat(f"job {run_name}", log, start_line=False):
            if topology.kind == "single":
                metrics.update(evaluate_split(lm, cut, codec, defense, corpus, ref, opts, reuse_hidden=reuse,
                                              profile=profile, seed=int(cfg.get("seed", 0)), placements=placements))
            else:  # a relay or U-shape: per-hop bytes measured, latency modelled per hop (splitinfer.topologies)
                from splitinfer.topologies import evaluate_topology

                metrics.update(evaluate_topology(topology, lm, cuts, codec, corpus, ref, opts, hardware=hardware,
                                                 server_hardware=server_hardware, link=link,
                                                 seed=int(cfg.get("seed", 0))))
        if topology.kind == "single" and opts.latency and profile is not None and "up_bytes_per_token_decode" in metrics:
            metrics.update({"link_uplink_mbps": link.uplink_mbps, "link_downlink_mbps": link.downlink_mbps,
                            "link_rtt_ms": link.rtt_ms, "server_hardware": server_hardware.name,
                            "latency_prompt_tokens": opts.prompt_tokens})
            metrics.update(_modelled(lm, cut, hardware, server_hardware, opts))
            metrics.update(estimate_latency(metrics, link, None, opts.prompt_tokens, opts.server_speedup))
        if speculate is not None and corpus.prompts.shape[0]:
            from splitinfer.metrics.latency import estimate_modes
            from splitinfer.split.speculative import evaluate_speculative

            metrics.update(evaluate_speculative(lm, cut, corpus.prompts, corpus.gen_tokens, speculate=speculate,
                                                drafter=drafter, codec=codec, link_profile=link,
                                                reference=ref.gen_tokens))
            if "latency_prompt_tokens" in metrics:
                metrics.update(estimate_modes(metrics, link, None, opts.prompt_tokens, opts.server_speedup))
        if opts.tasks:
            from splitinfer.eval.run import job_task_metrics

            metrics.update(job_task_metrics(lm, cut, codec, defense, opts))
        if choices["attack"] != "none" and _enabled(cfg.get("attack")):
            from splitinfer.topologies import downlink_privacy, is_downlink_attack

            if is_downlink_attack(cfg.attack):  # what a U-shape server returns (checked: topology=ushape)
                metrics.update(downlink_privacy(cfg.attack, lm, cuts, codec, topology, corpus))
            else:  # the uplink payload at `cut`: a single cut's, a relay's first hop, a U-shape's uplink
                metrics.update(evaluate_attack(cfg, lm, cut, codec, defense, out_dir=out))
        if cfg.get("search") is not None:  # a trial of a search (hparams_search=...): objectives, constraints
            from splitinfer.objectives import trial_metrics

            metrics.update(trial_metrics(cfg.search, metrics))
        metrics["job_wall_s"] = time.perf_counter() - t_start
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str, allow_nan=True) + "\n")
        logger.log_dict(metrics)
    finally:
        logger.close()
    return metrics


def _modelled(lm, cut: int, device: HardwareProfile, server: HardwareProfile, opts: MetricOptions) -> dict:
    """The roofline's stage times for this model's shape on each side's hardware (`model_*` keys)."""
    from splitinfer.models.shapes import effective_bits, shape_from_config

    shape = shape_from_config(lm.config, name=lm.name)
    comps = shape.side(cut, "device")
    bits = effective_bits(opts.device_weight_bits, 32)  # below 16 bits: groups of 32 with a scale and zero point
    weights = shape.weight_bytes(comps, bits)  # at the modelled width, not this fp32 copy's
    return {"model_device_weight_bytes": weights,
            "model_device_memory_bytes": weights + shape.kv_bytes(comps, opts.context_tokens),
            **modelled_timings(shape, cut, device, server, prompt_tokens=opts.prompt_tokens,
                               context_tokens=opts.context_tokens, device_weight_bits=bits,
                               server_weight_bits=opts.server_weight_bits)}


def evaluate_attack(cfg, lm, cut: int, codec, defense, out_dir: Path | None = None) -> dict[str, Any]:
    """Run the configured attack on this job's split (`splitinfer.privacy.evaluate_privacy`: the payload it
    attacks is the split path's `DeviceHalf.observe`) and return its flat leakage metrics. Partial
    results are written to `out_dir` as each victim finishes."""
    from hydra.utils import instantiate

    from splitinfer.privacy import evaluate_privacy

    result = evaluate_privacy(lm, cut, attack=instantiate(cfg.attack), defense=defense, codec=codec,
                              seed=int(cfg.get("seed", 0)), out_dir=out_dir)
    return {k if k.startswith("privacy") else f"privacy/{k}": v for k, v in dict(result).items()}
