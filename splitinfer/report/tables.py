"""The Pareto frontier, the CSV and the Markdown tables of a report."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from splitinfer.report.measures import (
    LEAK,
    LEAK_ATTACK,
    QUALITY_BOUND,
    QUALITY_BOUND_SOURCE,
    ci,
    config_key,
    configurations,
    task_columns,
    topology_label,
    with_interval,
)
from splitinfer.report.runs import num


def _fmt(spec: str) -> Callable[[dict, str], str]:
    def cell(r: dict, key: str) -> str:
        v = r.get(key, "")
        if v in ("", None):
            return ""
        try:
            return spec.format(v)
        except (ValueError, TypeError):
            return str(v)

    return cell


def small(v: float, sign: bool = False) -> str:
    """Two decimals, or two significant digits below 0.01 (fp16's +0.0013 % is not +0.00)."""
    return format(v, ("+" if sign else "") + (".2f" if v == 0 or abs(v) >= 0.01 else ".2g"))


def _with_ci(r: dict, key: str) -> str:
    """The value and, when the job recorded one, its 95 % interval: `+0.08 [-0.05, +0.21]`."""
    v = num(r.get(key))
    if v is None:
        return ""
    interval = ci(r, key)
    text = small(v, sign=True)
    return text + (f" [{small(interval[0], True)}, {small(interval[1], True)}]" if interval else " [no CI]")


def _bound(r: dict, key: str) -> str:
    v = num(r.get(key))
    if v is None:
        return ""
    return small(v) + ("" if r.get(QUALITY_BOUND_SOURCE) == "ci95" else " (point)")


def task_table_columns(rows: Sequence[dict]) -> list[tuple[str, str, Callable[[dict, str], str]]]:
    """Two columns per task metric: the split's value [95 % CI] and Δ vs unsplit [paired 95 % CI]."""
    cols: list[tuple[str, str, Callable[[dict, str], str]]] = []
    for k in task_columns(rows):
        label = k.removeprefix("task/").replace("/", " ")
        cols += [(k, f"{label} [95% CI]", with_interval),
                 (f"{k}_delta", f"Δ {label} vs unsplit [95% CI]", lambda r, key: with_interval(r, key, "+.3f"))]
    return cols


def _pct(r: dict, key: str) -> str:
    v = num(r.get(key))
    return "" if v is None else f"{100 * v:.1f}"


# (column, header, cell formatter) for the Markdown tables; missing columns are skipped.
TABLE_COLUMNS: list[tuple[str, str, Callable[[dict, str], str]]] = [
    ("cut", "cut", _fmt("{:d}")),
    ("topology", "topology", lambda r, _k: topology_label(r)),  # single cut, relay A,B or U-shape a,b
    ("codec", "codec", _fmt("{}")),
    ("defense", "defense", _fmt("{}")),
    ("attack", "attack", _fmt("{}")),
    ("link", "link", _fmt("{}")),
    ("up_bytes_per_token_prefill", "up B/tok prefill", _fmt("{:.0f}")),
    ("up_bytes_per_token_decode", "up B/tok decode", _fmt("{:.0f}")),
    ("up_ratio_vs_fp32_decode", "vs fp32", _fmt("{:.3f}")),
    ("hop2_up_bytes_per_token_decode", "hop 2 B/tok decode", _fmt("{:.0f}")),  # a relay's edge -> server
    ("downlink_bytes_per_token_decode", "downlink B/tok decode", _fmt("{:.0f}")),  # a U-shape's return
    ("delta_ppl_pct", "Δppl % [95% CI]", _with_ci),
    (QUALITY_BOUND, "abs Δppl ≤ % (95%)", _bound),  # no "|" in a Markdown header
    ("kl_mean", "KL nats/tok", _fmt("{:.2g}")),
    ("top1_agreement", "top-1", _fmt("{:.3f}")),
    ("exact_match_rate", "exact match", _fmt("{:.2f}")),
    ("device_memory_mb", "device MB", _fmt("{:.1f}")),
    ("device_decode_s_per_token", "device s/tok", _fmt("{:.4f}")),
    ("server_decode_s_per_token", "server s/tok", _fmt("{:.4f}")),
    ("ttft_s", "TTFT s", _fmt("{:.3f}")),
    ("tpot_s", "s/token", _fmt("{:.3f}")),
    ("tpot_all_device_s", "all-device s/tok", _fmt("{:.3f}")),
    ("tpot_all_server_s", "all-server s/tok", _fmt("{:.3f}")),
    (LEAK_ATTACK, "strongest attack", _fmt("{}")),
    (LEAK, "tokens recovered %", _pct),
    ("pareto", "Pareto", _fmt("{}")),
]
_ONLY_IF_VARYING = ("defense", "attack", "link", "topology")


def pareto_front(
    rows: Sequence[dict], objectives: Sequence[str], rel_tol: Sequence[float] | None = None
) -> list[int]:
    """Indices of rows no other row beats on every objective (all minimised).

    `rel_tol[k]` makes objective k a tie when two values differ by less than that fraction (e.g. 0.01 for
    bytes that vary by a few header bytes between cuts): then it neither beats nor loses."""
    tol = list(rel_tol) if rel_tol is not None else [0.0] * len(objectives)
    pts = [(i, [num(r.get(o)) for o in objectives]) for i, r in enumerate(rows)]
    pts = [(i, p) for i, p in pts if all(v is not None for v in p)]

    def beats(q: list[float], p: list[float]) -> bool:
        no_worse = all(a <= b + t * abs(b) for a, b, t in zip(q, p, tol, strict=True))
        better = any(a < b - t * abs(b) for a, b, t in zip(q, p, tol, strict=True))
        return no_worse and better

    return [i for i, p in pts if not any(beats(q, p) for j, q in pts if j != i)]


BYTES_TIE = 0.01  # uplink bytes within 1 % are the same bandwidth (header bytes vary a little between cuts)


def tradeoff_tolerances(objectives: Sequence[str]) -> list[float]:
    """Per-objective tie tolerance of the frontier: bytes within BYTES_TIE, the rest exact."""
    return [BYTES_TIE if o.startswith("up_bytes") else 0.0 for o in objectives]


def tradeoff_objectives(rows: Sequence[dict]) -> list[str]:
    """Bandwidth and the quality bound (upper 95 % bound of |Δppl|), plus the strongest attack's token
    recovery when an attack ran. Signed Δppl is never an objective: noise would decide the frontier."""
    objs = ["up_bytes_per_token_decode", QUALITY_BOUND]
    if any(num(r.get(LEAK)) is not None for r in rows):
        objs.append(LEAK)
    return objs


def mark_pareto(rows: list[dict]) -> list[dict]:
    """Star (`pareto` = "★") every job of a configuration on the frontier; return those configurations."""
    configs = configurations(rows)
    objectives = tradeoff_objectives(configs)
    front = [configs[i] for i in pareto_front(configs, objectives, tradeoff_tolerances(objectives))]
    keys = {config_key(r) for r in front}
    for r in rows:
        r.pop("pareto", None)
        if config_key(r) in keys:
            r["pareto"] = "★"
    return sorted(front, key=lambda r: (num(r.get("up_bytes_per_token_decode")) or 0, r.get("cut", 0)))


def write_csv(rows: Sequence[dict], path: str | Path, *, float_format: str | None = None) -> None:
    """All columns of all rows (the union of their keys, in first-seen order); floats as `float_format`
    (e.g. ".6g") when given, else Python's own repr. The one CSV writer of reports and benchmarks."""
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: format(v, float_format) if float_format and isinstance(v, float) else v
                        for k, v in r.items()})


def markdown_table(
    rows: Sequence[dict], extra: Iterable[str] = (), columns: Sequence[str] | None = None
) -> str:
    """A Markdown table of `rows`: the TABLE_COLUMNS they have (or only `columns`), then `extra` columns."""
    varying = {k for k in _ONLY_IF_VARYING if len({str(r.get(k)) for r in rows}) > 1}
    if any(str(r.get("topology") or "single") not in ("single", "None") for r in rows):
        varying.add("topology")  # a relay or U-shape: say which (and at which cuts) on every row
    cols = [
        c
        for c in TABLE_COLUMNS
        if any(c[0] in r for r in rows)
        and (c[0] not in _ONLY_IF_VARYING or c[0] in varying)
        and (columns is None or c[0] in columns)
    ]
    cols += [(c, c.removeprefix("privacy/"), _fmt("{:.4g}")) for c in extra]
    if columns is None:
        cols += task_table_columns(rows)
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(cell(r, key) for key, _, cell in cols) + " |")
    return "\n".join(lines)


def _series(rows: Sequence[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(str(r.get(key)), []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r.get("cut", 0))
    return out


def latency_pivot(rows: Sequence[dict]) -> str:
    """Markdown: one row per cut, per-token latency and TTFT per link; then the baselines and the
    best cut per link (Neurosurgeon's table)."""
    by_link = _series(rows, "link")
    links = list(by_link)
    # one row per cut, or per topology at a cut (a relay and a U-shape start at the same first cut)
    labels = sorted({(r["cut"], topology_label(r)) for r in rows})
    cell = {(str(r.get("link")), topology_label(r)): r for r in rows}
    several = len({str(r.get("topology") or "single") for r in rows}) > 1

    def fmt(r: dict[str, Any] | None, key: str) -> str:
        v = num(r.get(key)) if r else None
        return "" if v is None else f"{v:.3f}"

    head = ["cut"] + [f"{link} s/token" for link in links] + [f"{link} TTFT s" for link in links]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for c, label in labels:
        vals = [fmt(cell.get((link, label)), "tpot_s") for link in links]
        vals += [fmt(cell.get((link, label)), "ttft_s") for link in links]
        lines.append(f"| {label if several else c} | " + " | ".join(vals) + " |")
    for label, key in (("all on device", "all_device"), ("all on server", "all_server")):
        vals = [fmt(by_link[link][0], f"tpot_{key}_s") for link in links]
        vals += [fmt(by_link[link][0], f"ttft_{key}_s") for link in links]
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    best = []
    for link in links:
        timed = [r for r in by_link[link] if num(r.get("tpot_s")) is not None]
        best.append(topology_label(min(timed, key=lambda r: r["tpot_s"])) if timed else "")
    lines.append("| best split (s/token) | " + " | ".join(best) + " |" + " |" * len(links))
    return "\n".join(lines)
