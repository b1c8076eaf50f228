"""`recommend`: the cut + codec minimising an objective under constraints, and why.

Honesty rules (see README "Reading the results"):
- Quality constraints apply to the noise-proof end of the 95 % interval: `--max-delta-ppl` to the upper
  bound of |Δppl|, `--min-exact-match` to the lower bound of the exact-match rate. Jobs without an
  interval (older metrics) fall back to the point estimate, and the explanation says so.
- Ties within noise go to the more faithful, simpler configuration: every feasible configuration whose
  objective is within `tie_tolerance` (default 2 %) of the best counts as tied, and among the tied the
  most faithful codec wins (fp32 > fp16/bf16 > 8-bit > fewer bits > top-k; more nominal bits first), then
  no defense before a defense, then the lower objective.
- Privacy is quoted only when it was measured (the strongest attack = highest token recovery); otherwise
  the explanation says it was not measured and that a split alone does not protect the prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from splitinfer.report.measures import (
    LEAK,
    LEAK_ATTACK,
    LEAK_PARTIAL,
    LEAK_PII,
    PRIVACY_NOT_MEASURED,
    QUALITY_BOUND_SOURCE,
    QUALITY_BOUND_TEXT,
    ci,
    codec_fidelity,
    config_key,
    lower_bound,
    privacy_columns,
    quality_bound,
    task_facts,
    topology_label,
)
from splitinfer.report.runs import ReportError, load_link, num, with_latency
from splitinfer.report.tables import small

OBJECTIVES = {
    "latency": ("tpot_s", "per-token latency", "s"),
    "ttft": ("ttft_s", "time to first token", "s"),
    "bytes": ("up_bytes_per_token_decode", "uplink bytes per generated token", "B"),
    "energy": ("energy_j_per_token", "device energy per token", "J"),
}
TIE_TOLERANCE = 0.02
TIE_RULE = (
    "configurations within {tol:g} % of the best objective count as tied, and a tie goes to the more "
    "faithful codec (fp32 > fp16/bf16 > 8-bit > fewer bits > top-k), then to no defense"
)


@dataclass
class Constraints:
    """Limits a recommended configuration must meet; None = no limit."""

    max_device_mb: float | None = None
    max_delta_ppl_pct: float | None = None
    max_leakage: float | None = None
    leakage_metric: str | None = None  # default: the strongest attack's token recovery (`leakage_token_acc`)
    min_exact_match: float | None = None

    def check(self, r: dict) -> list[str]:
        """Reasons this row fails (empty = it satisfies every constraint)."""
        fails = []
        if self.max_device_mb is not None:
            mb = num(r.get("device_memory_mb"))
            if mb is None or mb > self.max_device_mb:
                fails.append(
                    f"device memory {'not measured' if mb is None else f'{mb:.1f} MB'} > "
                    f"{self.max_device_mb:g} MB"
                )
        if self.max_delta_ppl_pct is not None:
            bound, source = quality_bound(r)
            if bound is None:
                fails.append("Δppl not measured")
            elif bound > self.max_delta_ppl_pct:
                what = (
                    "|Δppl| upper 95 % bound" if source == "ci95" else "|Δppl| (point estimate, no interval)"
                )
                fails.append(f"{what} {bound:.2f} % > {self.max_delta_ppl_pct:g} %")
        if self.min_exact_match is not None:
            low, source = lower_bound(r, "exact_match_rate")
            if low is None:
                fails.append("exact match not measured")
            elif low < self.min_exact_match:
                what = "exact match lower 95 % bound" if source == "ci95" else "exact match (no interval)"
                fails.append(f"{what} {low:.2f} < {self.min_exact_match:g}")
        if self.max_leakage is not None:
            key = self.leakage_metric or LEAK
            v = num(r.get(key))
            if v is None:
                fails.append("leakage not measured (no attack ran on this configuration)")
            elif v > self.max_leakage:
                what = (
                    f"tokens recovered by the strongest attack ({r.get(LEAK_ATTACK)})" if key == LEAK else key
                )
                fails.append(f"{what} {v:.3g} > {self.max_leakage:g}")
        return fails


@dataclass
class Recommendation:
    best: dict | None
    explanation: str
    feasible: int
    total: int
    # the feasible configuration with the lowest objective (the tie rule may have chosen another)
    fastest: dict | None = None
    notes: list[str] = field(default_factory=list)


def _merged_configs(rows: list[dict]) -> list[dict]:
    """One row per configuration; privacy columns are the worst (highest) over its jobs (one per attack)."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        k = config_key(r)
        if k not in groups:
            groups[k] = dict(r)
            continue
        m = groups[k]
        for col, v in r.items():
            if col.startswith("privacy/") and num(v) is not None and (num(m.get(col)) is None or v > m[col]):
                m[col] = v
    return list(groups.values())


def tie_key(r: dict) -> tuple:
    """Order among tied configurations: most faithful codec, then no defense."""
    return codec_fidelity(r.get("codec"), r).key(), str(r.get("defense", "none")) not in ("none", "None")


def choose(rows: list[dict], key: str, tol: float = TIE_TOLERANCE) -> tuple[dict, dict, list[dict]]:
    """(chosen, lowest-objective, tied) among `rows`: the tie rule of this module's docstring."""
    lowest = min(rows, key=lambda r: (r[key], tie_key(r)))
    limit = lowest[key] + tol * abs(lowest[key]) + 1e-12
    tied = [r for r in rows if r[key] <= limit]
    return min(tied, key=lambda r: (tie_key(r), r[key])), lowest, tied


def _value(v: float, unit: str) -> str:
    """An objective value with its unit: 0.2003 s, 650 B, 0.0123 J."""
    return f"{v:.4f} s" if unit == "s" else f"{v:.0f} B" if unit == "B" else f"{v:.3g} {unit}"


def topology_statement(rows: list[dict], key: str, what: str, unit: str) -> str | None:
    """With several topologies among `rows` (one link): the best of each by `key`, on the same device link."""
    best: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: (r[key], tie_key(r))):
        best.setdefault(str(r.get("topology") or "single"), r)
    if len(best) < 2:
        return None
    parts = [f"{topology_label(r)} + {r.get('codec')} {_value(r[key], unit)}" for r in best.values()]
    return f"By topology, the lowest {what} of each on this link: " + "; ".join(parts) + "."


def _describe(r: dict) -> str:
    return f"{topology_label(r)} + {r.get('codec')}" + (
        f" + {r['defense']}" if str(r.get("defense", "none")) not in ("none", "None") else ""
    )


def _dppl_text(r: dict) -> str | None:
    v = num(r.get("delta_ppl_pct"))
    if v is None:
        return None
    interval = ci(r, "delta_ppl_pct")
    if interval is None:
        return f"Δppl {small(v, sign=True)} % (interval unknown: older metrics)"
    bound, _ = quality_bound(r)
    lo, hi = (small(x, sign=True) for x in interval)
    return f"Δppl {small(v, sign=True)} % (95 % CI {lo} to {hi}; |Δppl| ≤ {small(bound)} %)"


def downlink_statement(r: dict) -> str | None:
    """A U-shape job's downlink rows (attack=downlink): how much of the ANSWER its server recovers, measured."""
    parts = []
    for attack in ("public_tail", "logit_lens"):
        key = f"privacy/downlink/{attack}/answer_token_acc"
        if num(r.get(key)) is not None:
            lo, hi = num(r.get(f"{key}_ci_low")), num(r.get(f"{key}_ci_high"))
            span = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else ""
            parts.append(f"{attack.replace('_', ' ')} {100 * r[key]:.1f} %{span}")
    if not parts:
        return None
    return ("Downlink (measured, attack=downlink): from the hidden states it returns, the U-shape's server "
            "recovers this share of the answer's tokens (95 % Wilson interval): " + "; ".join(parts) + ".")


def privacy_statement(best: dict, attacked_any: bool, constraints: Constraints) -> str:
    """What the sweep measured about the recommended configuration's privacy, and nothing more."""
    down = downlink_statement(best)
    text = _prompt_privacy(best, attacked_any, constraints)
    if down is None:
        return text
    return f"{down} As for the prompt: " + text.replace("no attack ran in this sweep", "no attack on the uplink (the "
                                                        "prompt's payload) ran in this sweep")


def _prompt_privacy(best: dict, attacked_any: bool, constraints: Constraints) -> str:
    acc = num(best.get(LEAK))
    if acc is not None:
        pii = num(best.get(LEAK_PII))
        text = (
            f"Privacy (measured): the strongest attack run on this configuration, {best.get(LEAK_ATTACK)}, "
            f"recovers {100 * acc:.1f} % of the prompt's tokens"
            + (f" and {100 * pii:.0f} % of its PII items" if pii is not None else "")
            + "."
        )
        if best.get(LEAK_PARTIAL):
            text += " That attack ran out of time (partial): the figure covers only the victims it finished."
        if constraints.max_leakage is not None:
            metric = constraints.leakage_metric or "the strongest attack's token recovery"
            text += f" --max-leakage {constraints.max_leakage:g} was applied to {metric}."
        return text
    text = PRIVACY_NOT_MEASURED
    if attacked_any:
        text = "This configuration was not attacked (other jobs of the sweep were). " + text
    if best.get("cut") == 0:
        text += (
            " At cut 0 the payload is the token embeddings themselves: a nearest-embedding lookup reads the "
            "prompt back exactly."
        )
    return text


def recommend(
    rows: list[dict],
    objective: str = "latency",
    constraints: Constraints | None = None,
    link: str | None = None,
    slowdown: float | None = None,
    tie_tolerance: float = TIE_TOLERANCE,
    server_load=None,
) -> Recommendation:
    """The (cut, codec) minimising `objective` under `constraints`, with the reasons (module docstring).

    `server_load` (`splitinfer.metrics.serving.ServerLoad`: clients per server, batching profile or
    None) scores per-token latency as one of that many clients sees it, and says how many clients per
    server the chosen cut takes (`serving_statement`)."""
    from splitinfer.report.measures import annotate

    if objective not in OBJECTIVES:
        raise ReportError(f"objective {objective!r} is not one of {sorted(OBJECTIVES)}")
    if not (tie_tolerance >= 0 and math.isfinite(tie_tolerance)):
        raise ReportError(f"tie tolerance {tie_tolerance!r} must be a fraction >= 0 (e.g. 0.02 for 2 %)")
    c = constraints or Constraints()
    rows = [dict(r) for r in rows]
    annotate(rows)  # rows from load_runs already carry these; hand-built rows get them here
    attacked_any = any(num(r.get(LEAK)) is not None for r in rows)
    if c.max_leakage is not None:
        priv = privacy_columns(rows)
        if not attacked_any and not priv:
            raise ReportError(
                "--max-leakage needs jobs run with an attack (attack=whitebox in the sweep); these "
                "have no privacy/* leakage columns"
            )
        if c.leakage_metric is not None and c.leakage_metric not in priv + [LEAK]:
            raise ReportError(f"leakage metric {c.leakage_metric!r} is not one of {[LEAK, *priv]}")
    costed = [r for r in rows if str(r.get("topology") or "single") not in ("single", "None")]
    if costed and link is not None and slowdown is None:  # relay / U-shape jobs: costed per hop when they ran
        rows = [r for r in rows if str(r.get("link")) == link]
        if not rows:
            raise ReportError(f"no job of this sweep ran on link {link!r}; relay and U-shape jobs are costed per hop "
                              f"when they run, not re-costed here: sweep with link={link}")
    elif link is not None or slowdown is not None:
        lp = load_link(link) if link else None
        if lp is None:
            links = {str(r.get("link")) for r in rows}
            if len(links) != 1:
                raise ReportError(f"the sweep has several links {sorted(links)}; name one with --link")
            lp = load_link(links.pop())
        rows = with_latency(rows, lp, slowdown)
    elif len({str(r.get("link")) for r in rows}) > 1 and objective in ("latency", "ttft", "energy"):
        raise ReportError(
            "the sweep has several links; choose one with --link "
            f"({sorted({str(r.get('link')) for r in rows})})"
        )
    if server_load is not None:
        rows = [with_server_load(r, server_load) for r in rows]
    key, what, unit = OBJECTIVES[objective]
    configs = _merged_configs(rows)
    scored = [r for r in configs if num(r.get(key)) is not None]
    if not scored:
        raise ReportError(
            f"no job has {key!r}; was metrics.{'latency' if objective != 'bytes' else 'generation'} off?"
        )
    notes = _constraint_notes(c, scored)
    feasible = [r for r in scored if not c.check(r)]
    if not feasible:
        closest = min(scored, key=lambda r: (len(c.check(r)), r[key]))
        lines = [
            f"No configuration meets the constraints ({len(scored)} tried). Closest: {_describe(closest)}, "
            f"which fails: {'; '.join(c.check(closest))}. Relax a constraint or sweep more codecs.",
            *notes,
        ]
        return Recommendation(None, "\n".join(lines), 0, len(scored), None, notes)
    best, lowest, tied = choose(feasible, key, tie_tolerance)
    runs = (
        "only the embeddings"
        if best["cut"] == 0
        else "embeddings + layer 0"
        if best["cut"] == 1
        else f"embeddings + layers 0..{best['cut'] - 1}"
    )
    if str(best.get("topology") or "single") not in ("single", "None"):
        runs += f", then {topology_label(best)} (splitinfer.topologies)"
    lines = [
        f"Recommended: cut {best['cut']} (the device runs {runs}) with codec {best['codec']}"
        + (f", defense {best['defense']}" if str(best.get("defense", "none")) not in ("none", "None") else "")
        + f" on {best.get('link')}."
    ]
    if config_key(best) == config_key(lowest):
        lines.append(
            f"It has the lowest {what} ({_value(best[key], unit)}) of the {len(feasible)} of {len(scored)} "
            "configurations that meet the constraints."
        )
    else:
        gain = 100 * (best[key] - lowest[key]) / abs(best[key]) if best[key] else 0.0
        lines.append(
            f"Its {what} is {_value(best[key], unit)}; {_describe(lowest)} is lower "
            f"({_value(lowest[key], unit)}, {gain:.2f} % less), but within the tie tolerance of "
            f"{100 * tie_tolerance:g} %, so the tie goes to the more faithful or simpler configuration "
            f"({codec_fidelity(best.get('codec'), best).label}"
            f" over {codec_fidelity(lowest.get('codec'), lowest).label}). Rule: "
            + TIE_RULE.format(tol=100 * tie_tolerance)
            + "."
        )
    facts = []
    for k, label, fmt in (
        ("up_bytes_per_token_decode", "uplink", "{:.0f} B/token"),
        ("up_ratio_vs_fp32_decode", "vs fp32", "{:.3f}x"),
    ):
        if num(best.get(k)) is not None:
            facts.append(f"{label} {fmt.format(best[k])}")
    if _dppl_text(best):
        facts.append(_dppl_text(best))
    for k, label, fmt in (
        ("kl_mean", "KL", "{:.2g} nats/token"),
        ("exact_match_rate", "greedy exact match", "{:.2f}"),
        ("device_memory_mb", "device memory", "{:.1f} MB"),
        ("ttft_s", "TTFT", "{:.3f} s"),
        ("tpot_s", "per token", "{:.3f} s"),
    ):
        if num(best.get(k)) is not None:
            facts.append(f"{label} {fmt.format(best[k])}")
    if c.leakage_metric and num(best.get(c.leakage_metric)) is not None:
        facts.append(f"{c.leakage_metric} {best[c.leakage_metric]:.3g} (leakage)")
    facts += task_facts(best)
    if facts:
        lines.append("Its figures: " + ", ".join(facts) + ".")
    lines += notes
    if objective in ("latency", "ttft") and num(best.get("tpot_all_device_s")) is not None:
        k2 = "tpot" if objective == "latency" else "ttft"
        dev, srv = best[f"{k2}_all_device_s"], best[f"{k2}_all_server_s"]
        beaten = [
            name for name, v in (("all on the server", srv), ("all on the device", dev)) if v < best[key]
        ]
        lines.append(
            f"Baselines on this link: all on the device {1e3 * dev:.3g} ms, all on the server {1e3 * srv:.3g} ms "
            "(modelled; all on the server streams its tokens, so its per-token figure is server compute + one token id down) - "
            + (
                f"{' and '.join(beaten)} {'beat' if len(beaten) > 1 else 'beats'} every split, so a split "
                f"costs {what} here; split only for another reason (device memory, server load), and not "
                "for privacy unless an attack shows the payload protects the prompt."
                if beaten
                else "the split beats both."
            )
        )
    if objective in ("latency", "ttft") and modes_statement(best):
        lines.append(modes_statement(best))
    if server_load is not None:
        lines.append(serving_statement(best, server_load))
    lines.append(privacy_statement(best, attacked_any, c))
    active = [
        n
        for n, v in (
            ("device memory", c.max_device_mb),
            ("Δppl", c.max_delta_ppl_pct),
            ("leakage", c.max_leakage),
            ("exact match", c.min_exact_match),
        )
        if v is not None
    ]
    if active:
        unconstrained, _, _ = choose(scored, key, tie_tolerance)
        if config_key(unconstrained) != config_key(best):
            lines.append(
                f"Without the constraints ({', '.join(active)}) {_describe(unconstrained)} would be "
                f"chosen ({_value(unconstrained[key], unit)}) but fails: "
                + "; ".join(c.check(unconstrained))
                + "."
            )
        else:
            lines.append(
                f"The constraints ({', '.join(active)}) do not bind: this is also the unconstrained choice."
            )
    rest = sorted(
        (r for r in feasible if config_key(r) != config_key(best)), key=lambda r: (r[key], tie_key(r))
    )
    if rest:
        lines.append(f"Runner-up: {_describe(rest[0])} ({_value(rest[0][key], unit)}).")
    if topology_statement(feasible, key, what, unit):
        lines.append(topology_statement(feasible, key, what, unit))
    return Recommendation(best, "\n".join(lines), len(feasible), len(scored), lowest, notes)


def modes_statement(best: dict) -> str | None:
    """The other ways to run this cut (issue 15), when the job measured them (split.speculate on):
    speculative split decoding and the hand-off baseline, per token, beside per-token split."""
    spec, hand = num(best.get("tpot_speculative_split_s")), num(best.get("tpot_handoff_s"))
    per = num(best.get("tpot_per_token_split_s"))
    if spec is None or hand is None or per is None:
        return None
    acc = num(best.get("spec_acceptance"))
    return (f"Modes at this cut: per-token split {per:.3f} s per token, speculative split ({best.get('spec_drafter')} "
            f"drafts{f', {acc:.0%} accepted' if acc is not None else ''}, "
            f"{best.get('spec_tokens_per_round', float('nan')):.2f} tokens per round trip) {spec:.3f} s, "
            f"hand-off (device KV cache uploaded once, then the server alone) {hand:.3f} s.")


def _server_step_s(r: dict) -> float | None:
    s = num(r.get("server_decode_s_per_token"))
    return None if s is None else s + (num(r.get("codec_decode_s_per_token")) or 0.0)


def with_server_load(r: dict, load) -> dict:
    """A row whose `tpot_s` is one of `load.clients` clients' (the single-client value kept in
    `tpot_unloaded_s`); rows without the server's step time are left as they are."""
    tpot, server_s = num(r.get("tpot_s")), _server_step_s(r)
    if tpot is None or server_s is None:
        return r
    loaded = load.tpot(tpot, server_s)
    return {**r, "tpot_unloaded_s": tpot, "tpot_s": loaded, "server_clients": load.clients,
            "server_tokens_per_s": load.clients / loaded}


def serving_statement(best: dict, load, slack: float = 0.10) -> str:
    """How the chosen cut fares with `load.clients` clients per server, and how many it takes."""
    from splitinfer.metrics.serving import clients_per_server

    alone, server_s = num(best.get("tpot_unloaded_s")), _server_step_s(best)
    if alone is None or server_s is None:
        return "Server load: these jobs have no server step time (metrics.timing off), so it was not modelled."
    how = (f"a batching server (step profile: {load.profile.source or 'given'})" if load.profile is not None
           else "a server running steps one after another")
    budget = alone * (1 + slack)
    many = clients_per_server(alone, server_s, budget, load.profile)
    serial = clients_per_server(alone, server_s, budget, None)
    return (f"Server load: with {load.clients} clients per server on {how}, each gets {best['tpot_s']:.3f} s per "
            f"token (alone: {alone:.3f} s) and the server {best['server_tokens_per_s']:.0f} tokens/s in all. "
            f"Phones per server at this cut within {100 * slack:g} % of a lone client's per-token latency: "
            f"{many} with this server, {serial} without batching (the server's step is "
            f"{1e3 * server_s:.1f} ms of the {1e3 * alone:.1f} ms per token; model: splitinfer.metrics.serving).")


def _constraint_notes(c: Constraints, rows: list[dict]) -> list[str]:
    """Which bound each quality constraint was applied to, and for how many configurations it was unknown."""
    notes = []
    if c.max_delta_ppl_pct is not None:
        known = [r for r in rows if r.get(QUALITY_BOUND_SOURCE)]
        point = sum(1 for r in known if r[QUALITY_BOUND_SOURCE] != "ci95")
        text = (
            f"Quality bound applied: --max-delta-ppl {c.max_delta_ppl_pct:g} was checked against "
            f"{QUALITY_BOUND_TEXT}."
        )
        if point:
            text += (
                f" {point} of {len(known)} configurations have no interval (metrics from an older "
                "splitinfer): "
                "the interval is unknown, so for them the point estimate |Δppl| was used, which noise can "
                "push under the limit."
            )
        notes.append(text)
    if c.min_exact_match is not None:
        point = sum(1 for r in rows if lower_bound(r, "exact_match_rate")[1] == "point")
        text = (
            f"--min-exact-match {c.min_exact_match:g} was checked against the lower end of the 95 % interval "
            "of the greedy exact-match rate."
        )
        if point:
            text += f" {point} configurations have no interval: their point value was used."
        notes.append(text)
    return notes
