"""A sweep job's topology (conf/topology): one cut, a relay hop or a U-shape, on the same link budget.

    python -m splitinfer.run topology=relay split.cut=8 topology.cut_b=20 topology.hop_link=metro_fiber
    python -m splitinfer.run topology=ushape split.cut=8 topology.cut_b=26
    python -m splitinfer.run -m experiment=topologies            # the three side by side

`single` is the ordinary job (`experiment.evaluate_split`). For `relay` and `ushape` a job measures, through
the same in-process pieces `splitinfer serve`/`generate` use (`split.middle.in_process_chain`,
`split.ushape.in_process_ushape_generator`) and the real codecs:
- quality: the corpus windows teacher-forced through every piece with a codec round trip per crossing
  (Δppl, KL, top-1 with their intervals, as a single cut's) and greedy generation against the unsplit
  model (exact match with its interval);
- bytes per token of every crossing (`hop1_*`, `hop2_*` for a relay; `hop1_*` = the uplink and
  `downlink_*` for a U-shape), by phase, measured; the unprefixed `up_bytes_per_token_*` keys are what
  the device's own radio sends (hop 1), so `recommend` compares topologies on the device's link;
- latency and device energy modelled per segment and crossing (`metrics.hops`): the job's `hardware`
  (device), `topology.edge_hardware` (a relay's middle hop), `server_hardware`, the job's `link` for the
  device's hop and `topology.hop_link` for the relay's edge -> server hop. Codec compute is not in it.
`metrics.timing` (this machine's measured per-layer profile) is a single cut's figure: not run here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from splitinfer.errors import ConfigError

KINDS = ("single", "relay", "ushape")


@dataclass(frozen=True)
class TopologySpec:
    """conf/topology/*.yaml. The first cut is always `split.cut`; `cut_b` is a relay's second cut (the edge
    runs [split.cut, cut_b), the server from cut_b) or the end of a U-shape server's slice [split.cut, cut_b)."""

    kind: str = "single"
    name: str = ""  # the option's name (conf/topology/<name>.yaml), reported as the job's `topology`
    cut_b: int | None = None
    hop_codec: str | None = None  # relay: hop 2's conf/codec option; null = the job's codec
    hop_link: str | None = None  # relay: the edge -> server conf/link option
    edge_hardware: str | None = None  # relay: the edge's conf/hardware profile
    down_codec: str | None = None  # ushape: the downlink's conf/codec option; null = the job's codec

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"topology.kind={self.kind!r} is not one of {list(KINDS)} (conf/topology/*.yaml)")
        if self.kind != "single" and self.cut_b is None:
            raise ConfigError(f"topology={self.kind} needs topology.cut_b (its second cut), e.g. topology.cut_b=20")
        if self.kind == "relay" and (not self.hop_link or not self.edge_hardware):
            raise ConfigError("topology=relay needs topology.hop_link (a conf/link option for edge -> server) and "
                              "topology.edge_hardware (a conf/hardware profile), e.g. topology.hop_link=metro_fiber "
                              "topology.edge_hardware=jetson_orin_nano")

    def cuts(self, cut: int, num_layers: int) -> list[int]:
        """The job's cuts ([cut] for a single cut), checked against the model's layer count."""
        if self.kind == "single":
            return [cut]
        b, top = self.cut_b, num_layers - 1
        if type(b) is not int or not cut < b <= top:
            what = ("the server's slice [split.cut, cut_b) must leave the device at least one layer before the head"
                    if self.kind == "ushape" else "the edge runs [split.cut, cut_b) and the server at least one layer")
            raise ConfigError(f"topology.cut_b={b!r} with split.cut={cut}: give {cut} < cut_b <= {top} for this "
                              f"{num_layers}-layer model ({what})")
        if cut < 1:
            raise ConfigError(f"topology={self.kind} with split.cut={cut}: the device must run at least one layer "
                              "(split.cut >= 1) so a middle slice holds no embeddings")
        return [cut, b]

    def codec_names(self) -> list[str | None]:
        """conf/codec options this topology adds (hop 2's or the downlink's); None = the job's codec."""
        return [self.hop_codec] if self.kind == "relay" else [self.down_codec] if self.kind == "ushape" else []


def build_codec(name: str | None, default):
    """conf/codec/NAME.yaml built (the job's codec when None); a session codec is refused."""
    if name is None:
        codec = default
    else:
        from hydra.utils import instantiate

        from splitinfer.configs import load_node

        codec = instantiate(load_node("codec", str(name)))
    if hasattr(codec, "encode_step"):
        raise ConfigError(f"codec {getattr(codec, 'name', name)!r} is a session codec (state across steps); relay and "
                          "U-shape jobs code each teacher-forced window alone: give a stateless one (drop '_s')")
    return codec


def job_topology(cfg, cut: int, num_layers: int, *, codec, defense, speculate, tasks) -> tuple[TopologySpec, list[int]]:
    """The job's `topology` node (absent = a single cut) and its cuts, checked before any weights load."""
    from hydra.utils import instantiate

    node = cfg.get("topology")
    spec = instantiate(node) if node is not None else TopologySpec()
    if is_downlink_attack(cfg.get("attack")):
        if spec.kind != "ushape":
            raise ConfigError(f"attack=downlink attacks what a U-shape server returns; this job's topology is "
                              f"{spec.kind}: add topology=ushape (or pick an uplink attack, e.g. attack=logit_lens)")
        downlink_attack(cfg.attack)  # its options, checked before any weights load
    if spec.kind == "single":
        return spec, [cut]
    for on, what in ((defense is not None, "a defense (use defense=none)"),
                     (speculate is not None, "split.speculate (use off)"), (bool(tasks), "metrics.tasks (use null)")):
        if on:
            raise ConfigError(f"topology={spec.kind} jobs do not run {what}: it is a single-cut measurement")
    for name in [None, *spec.codec_names()]:  # the job's, a hop's or the downlink's codec: stateless, known
        build_codec(name, codec)
    if spec.kind == "relay":
        from splitinfer.configs import load_node

        load_node("link", str(spec.hop_link))
        load_node("hardware", str(spec.edge_hardware))
    return spec, spec.cuts(cut, num_layers)


def is_downlink_attack(node) -> bool:
    """Whether the job's `attack` node is conf/attack/downlink.yaml's kind (`privacy.downlink.DownlinkAttack`)."""
    return hasattr(node, "get") and str(node.get("_target_", "")).endswith("downlink.DownlinkAttack")


def downlink_attack(node):
    """The `DownlinkAttack` of an attack node (built directly: its ConfigError stays one line)."""
    from omegaconf import OmegaConf

    from splitinfer.privacy.downlink import DownlinkAttack

    fields = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
    return DownlinkAttack(**{**fields, "attacks": tuple(fields.get("attacks", ()))})


def downlink_privacy(attack_node, lm, cuts: list[int], codec, spec: TopologySpec, corpus) -> dict[str, Any]:
    """A U-shape job's downlink rows (`privacy.evaluate.evaluate_downlink`) on its corpus prompts, with the
    job's uplink codec and its downlink codec: flat `privacy/downlink/<attack>/answer_token_acc` (+ interval)."""
    from splitinfer.privacy.evaluate import evaluate_downlink

    prompts = [corpus.prompts[p:p + 1] for p in range(corpus.prompts.shape[0])]
    if not prompts:
        raise ConfigError("attack=downlink needs generation prompts: give data.num_prompts >= 1")
    result = evaluate_downlink(lm, cuts, prompts, downlink_attack(attack_node), up_codec=codec,
                               down_codec=build_codec(spec.down_codec, codec), max_new_tokens=corpus.gen_tokens)
    return {f"privacy/{k}": v for k, v in result.items()}


def _roundtrip(codec, h: torch.Tensor) -> torch.Tensor:
    """`h` as the far side decodes it: encoded, cut into wire frames, decoded."""
    from splitinfer.codecs.encoded import EncodedTensor

    enc = codec.encode(h)
    return codec.decode(EncodedTensor.from_frames(enc.to_frames())).to(torch.float32).reshape(h.shape)


@torch.no_grad()
def _window_quality(lm, cuts: list[int], codecs: list, corpus, ref, seed: int) -> dict[str, Any]:
    """Δppl / KL / top-1 of the topology on the corpus windows: each piece in turn, a codec per crossing."""
    from splitinfer.metrics.quality import QualityAccumulator
    from splitinfer.models import split_model

    stages = split_model(lm, cuts)[1:]  # the pieces after the device's first one
    acc = QualityAccumulator(seed=seed)
    for w in range(corpus.windows.shape[0]):
        h = ref.window_hidden[cuts[0]][w:w + 1]
        # relay: edge [A, B) after hop 1, server [B, L) + head after hop 2; U-shape: server [a, b) after the
        # uplink, the device's tail [b, L) + head after the downlink
        for codec, stage in zip(codecs, stages, strict=True):
            h = stage(_roundtrip(codec, h))
        acc.add(ref.window_logprobs[w], h[0, :-1], corpus.windows[w, 1:])
    return acc.result()


def _generate(lm, kind: str, cuts: list[int], codecs: list, corpus, ref) -> tuple[dict[str, Any], list]:
    """Greedy generation on the corpus prompts through the in-process topology: exact-match metrics and the
    traffic of every crossing [(name, Traffic, down bytes by phase or None)]."""
    from splitinfer.metrics.quality import first_mismatch, generation_metrics
    from splitinfer.split.generator import SplitGenerator
    from splitinfer.split.link import Traffic

    if kind == "relay":
        from splitinfer.split.middle import in_process_chain

        device, link, hop_links = in_process_chain(lm, cuts, codecs)
        gen = SplitGenerator(lm, device, link)
    else:
        from splitinfer.split.ushape import in_process_ushape_generator

        gen = in_process_ushape_generator(lm, cuts, codec=codecs[0], down_codec=codecs[1])
        hop_links = None
    totals: list[Traffic] = []
    down_by_phase = {"prefill": 0, "decode": 0}
    matched = []
    for p in range(corpus.prompts.shape[0]):
        res = gen.generate(corpus.prompts[p:p + 1], corpus.gen_tokens, stop_at_eos=False)
        matched.append(first_mismatch(res.token_ids, ref.gen_tokens[p]))
        links = hop_links() if hop_links is not None else [gen.link.inner]
        totals = totals or [Traffic() for _ in links]
        for t, lk in zip(totals, links, strict=True):
            t.merge(lk.traffic)
        if hop_links is None:
            for phase, n in gen.link.inner.down_by_phase.items():
                down_by_phase[phase] += n
    names = [f"hop{i + 1}" for i in range(len(totals))]
    crossings = [(n, t, None) for n, t in zip(names, totals, strict=True)]
    if kind == "ushape":
        crossings[0] = ("hop1", totals[0], down_by_phase)
    return generation_metrics(matched, corpus.gen_tokens), crossings


def _bytes(crossings: list, hidden_size: int) -> dict[str, Any]:
    """Per crossing `<name>_up_bytes_per_token_{prefill,decode}` (and a U-shape's `downlink_*`), measured."""
    from splitinfer.metrics.bandwidth import bandwidth_metrics

    out: dict[str, Any] = {"hops": len(crossings)}
    for name, traffic, down in crossings:
        figures = bandwidth_metrics(traffic, hidden_size)
        if down is not None:  # a U-shape's reply is the hidden state (`downlink_*` below), not a token id
            figures = {k: v for k, v in figures.items() if not k.startswith("down_")}
        out.update({f"{name}_{k}": v for k, v in figures.items() if "bytes" in k or "ratio" in k})
        if name == "hop1":  # what the device's radio sends: the keys every report reads
            out.update({k: v for k, v in figures.items() if k.startswith(("up_", "fp32_"))})
        if down is not None:
            pre_tok, dec_tok = traffic.up_prefill_tokens, traffic.up_decode_tokens
            out["downlink_bytes_per_token_prefill"] = down["prefill"] / pre_tok if pre_tok else None
            out["downlink_bytes_per_token_decode"] = down["decode"] / dec_tok if dec_tok else None
            out["down_bytes_per_token_decode"] = out["downlink_bytes_per_token_decode"]
    return out


def modelled(spec: TopologySpec, shape, cuts: list[int], m: dict, *, hardware, server_hardware, link, opts) -> dict:
    """`metrics.hops.topology_latency` from the measured bytes in `m` (this module's docstring)."""
    from splitinfer.configs import build
    from splitinfer.metrics import hops
    from splitinfer.metrics.hardware import load_hardware
    from splitinfer.metrics.latency import LinkProfile
    from splitinfer.models.shapes import effective_bits

    dev_bits = effective_bits(opts.device_weight_bits, 32)
    srv_bits = opts.server_weight_bits
    L = shape.num_layers
    if spec.kind == "relay":
        edge = load_hardware(spec.edge_hardware)
        hop2 = build("link", spec.hop_link, LinkProfile)
        topo = hops.chain(cuts, [hardware, edge, server_hardware], [dev_bits, srv_bits, srv_bits], [link, hop2],
                          [(m["hop1_up_bytes_per_token_prefill"], m["hop1_up_bytes_per_token_decode"]),
                           (m["hop2_up_bytes_per_token_prefill"], m["hop2_up_bytes_per_token_decode"])], L)
        extra = {"edge_hardware": edge.name, "hop2_link": hop2.name}
    else:
        topo = hops.ushape(cuts, hardware, server_hardware, dev_bits, srv_bits, link,
                           (m["hop1_up_bytes_per_token_prefill"], m["hop1_up_bytes_per_token_decode"]),
                           (m["downlink_bytes_per_token_prefill"], m["downlink_bytes_per_token_decode"]), L)
        extra = {}
    out = hops.topology_latency(shape, topo, prompt_tokens=opts.prompt_tokens, context_tokens=opts.context_tokens)
    out.update(hops.baselines(shape, hardware, server_hardware, link, dev_bits, srv_bits,
                              prompt_tokens=opts.prompt_tokens, context_tokens=opts.context_tokens))
    return {**extra, "hop1_link": link.name, "server_hardware": server_hardware.name,
            "latency_prompt_tokens": opts.prompt_tokens, **{f"model_{k}" if k.endswith(("_decode_s", "_prefill_s")) else k: v
                                                            for k, v in out.items()}}


def evaluate_topology(spec: TopologySpec, lm, cuts: list[int], codec, corpus, ref, opts, *, hardware,
                      server_hardware, link, seed: int = 0) -> dict[str, Any]:
    """The metrics of a relay or U-shape job (this module's docstring)."""
    from splitinfer.models.shapes import shape_from_config

    codecs = [build_codec(None, codec), build_codec(spec.codec_names()[0], codec)]
    out: dict[str, Any] = {"topology": spec.kind, "topology_cuts": ",".join(map(str, cuts)),
                           "codec_ran": getattr(codecs[0], "label", None),
                           ("hop2_codec" if spec.kind == "relay" else "down_codec"): getattr(codecs[1], "name", None)}
    if opts.quality:
        out.update(_window_quality(lm, cuts, codecs, corpus, ref, seed))
    if corpus.prompts.shape[0]:
        gen_metrics, crossings = _generate(lm, spec.kind, cuts, codecs, corpus, ref)
        if opts.generation:
            out.update(gen_metrics)
        out.update(_bytes(crossings, lm.hidden_size))
        if opts.latency:
            shape = shape_from_config(lm.config, name=lm.name)
            out.update(modelled(spec, shape, cuts, out, hardware=hardware, server_hardware=server_hardware,
                                link=link, opts=opts))
    return out
