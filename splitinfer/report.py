"""Turn a sweep's `metrics.json` files into a CSV, a Markdown table, plots, and a recommendation.

Reads only metrics files (and, to re-evaluate latency for another link, `conf/link/*.yaml`); never
runs a model, so a report of a finished sweep takes a second.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitinfer.metrics.latency import DeviceProfile, LinkProfile, estimate_latency

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# (column, header, format) for the Markdown table; missing columns are skipped.
TABLE_COLUMNS: list[tuple[str, str, str]] = [
    ("cut", "cut", "{:d}"),
    ("codec", "codec", "{}"),
    ("defense", "defense", "{}"),
    ("link", "link", "{}"),
    ("up_bytes_per_token_prefill", "up B/tok prefill", "{:.0f}"),
    ("up_bytes_per_token_decode", "up B/tok decode", "{:.0f}"),
    ("up_ratio_vs_fp32_decode", "vs fp32", "{:.3f}"),
    ("delta_ppl_pct", "Δppl %", "{:.2f}"),
    ("kl_mean", "KL", "{:.4f}"),
    ("top1_agreement", "top-1", "{:.3f}"),
    ("exact_match_rate", "exact match", "{:.2f}"),
    ("device_memory_mb", "device MB", "{:.1f}"),
    ("device_decode_s_per_token", "device s/tok", "{:.4f}"),
    ("server_decode_s_per_token", "server s/tok", "{:.4f}"),
    ("ttft_s", "TTFT s", "{:.3f}"),
    ("tpot_s", "s/token", "{:.3f}"),
    ("tpot_all_device_s", "all-device s/tok", "{:.3f}"),
    ("tpot_all_server_s", "all-server s/tok", "{:.3f}"),
    ("pareto", "Pareto", "{}"),
]

PLOT_METRICS: list[tuple[str, str]] = [
    ("up_bytes_per_token_decode", "uplink bytes / generated token"),
    ("up_bytes_per_token_prefill", "uplink bytes / prompt token"),
    ("delta_ppl_pct", "Δ perplexity (%)"),
    ("kl_mean", "KL(unsplit ‖ split) (nats/token)"),
    ("top1_agreement", "top-1 agreement (fraction)"),
    ("exact_match_rate", "greedy exact match (fraction)"),
    ("device_memory_mb", "device memory (MB)"),
    ("tpot_s", "per-token latency (s)"),
    ("ttft_s", "time to first token (s)"),
]


class ReportError(ValueError):
    """No usable jobs in the folder, or an unknown column/constraint; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def load_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job's metrics under `sweep_dir` (searched recursively), sorted by codec then cut."""
    root = Path(sweep_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a folder; give the multirun folder of a sweep "
                                "(e.g. multirun/default_sweep/2026-01-01_12-00-00)")
    rows = []
    for f in sorted(root.rglob("metrics.json")):
        try:
            row = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue  # a job killed while writing: skip it, the others still count
        row["job_dir"] = str(f.parent)
        if "device_memory_bytes" in row:
            row["device_memory_mb"] = row["device_memory_bytes"] / 1e6
        rows.append(row)
    if not rows:
        raise ReportError(f"no metrics.json under {str(root)!r}: did the sweep run (python -m splitinfer.run -m ...)?")
    rows.sort(key=lambda r: (str(r.get("codec")), str(r.get("defense")), str(r.get("link")), r.get("cut", 0)))
    return rows


def load_link(name: str) -> LinkProfile:
    """A link profile from conf/link/NAME.yaml."""
    from omegaconf import OmegaConf

    path = CONF_DIR / "link" / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (CONF_DIR / "link").glob("*.yaml"))
        raise ReportError(f"link {name!r} is not one of {names} (conf/link/*.yaml)")
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    node.pop("_target_", None)
    return LinkProfile(**node)


def available_links() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "link").glob("*.yaml"))


def with_latency(rows: list[dict], link: LinkProfile, slowdown: float | None = None,
                 server_speedup: float = 1.0) -> list[dict]:
    """Rows re-evaluated for another link/device slowdown (from their stored bytes and timings)."""
    out = []
    for r in rows:
        if "device_decode_s_per_token" not in r or "up_bytes_per_token_decode" not in r:
            raise ReportError("these jobs have no timing/bandwidth metrics (metrics.timing / generation were "
                              "off); latency for another link cannot be computed")
        device = DeviceProfile(str(r.get("device")), slowdown if slowdown else r.get("device_slowdown", 1.0))
        prompt = int(r.get("latency_prompt_tokens", 128))
        out.append({**r, "link": link.name, **estimate_latency(r, link, device, prompt, server_speedup)})
    return out


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
# Leakage metrics of splitinfer.privacy (`privacy/<attack>/<metric>`, `privacy/dcor`), most telling first;
# utility, timing and bookkeeping columns under privacy/ are not leakage.
LEAKAGE_SUFFIXES = ("/token_acc", "/content_token_acc", "/rouge_l", "/pii_recovery", "/exact_match", "dcor")


def privacy_columns(rows: Sequence[dict]) -> list[str]:
    """Leakage columns present in `rows`, ordered by LEAKAGE_SUFFIXES (so [0] is the headline one)."""
    keys = {k for r in rows for k in r if k.startswith("privacy") and "/utility/" not in k
            and k.endswith(LEAKAGE_SUFFIXES) and _num(r.get(k)) is not None}
    rank = {suf: i for i, suf in enumerate(LEAKAGE_SUFFIXES)}
    return sorted(keys, key=lambda k: (min(rank[s] for s in LEAKAGE_SUFFIXES if k.endswith(s)), k))


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def pareto_front(rows: Sequence[dict], objectives: Sequence[str]) -> list[int]:
    """Indices of rows no other row beats on every objective (all minimised)."""
    pts = [(i, [_num(r.get(o)) for o in objectives]) for i, r in enumerate(rows)]
    pts = [(i, p) for i, p in pts if all(v is not None for v in p)]
    front = []
    for i, p in pts:
        dominated = any(all(a <= b for a, b in zip(q, p, strict=True)) and any(a < b for a, b in zip(q, p, strict=True))
                        for j, q in pts if j != i)
        if not dominated:
            front.append(i)
    return front


def tradeoff_objectives(rows: Sequence[dict]) -> list[str]:
    """Bandwidth and quality, plus the first leakage metric when an attack ran."""
    objs = ["up_bytes_per_token_decode", "delta_ppl_pct"]
    priv = privacy_columns(rows)
    return objs + priv[:1]


def mark_pareto(rows: list[dict]) -> None:
    for i in pareto_front(rows, tradeoff_objectives(rows)):
        rows[i]["pareto"] = "★"


def write_csv(rows: Sequence[dict], path: Path) -> None:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def markdown_table(rows: Sequence[dict], extra: Iterable[str] = ()) -> str:
    varying = {k for k in ("defense", "link") if len({str(r.get(k)) for r in rows}) > 1}
    cols = [c for c in TABLE_COLUMNS if any(c[0] in r for r in rows)
            and (c[0] not in ("defense", "link") or c[0] in varying)]
    cols += [(c, c.removeprefix("privacy/"), "{:.4g}") for c in extra]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key, "")
            try:
                cells.append(fmt.format(v) if v not in ("", None) else "")
            except (ValueError, TypeError):
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latency_pivot(rows: Sequence[dict]) -> str:
    """Markdown: one row per cut, per-token latency and TTFT per link; then the baselines and the
    best cut per link (Neurosurgeon's table)."""
    by_link = _series(rows, "link")
    links = list(by_link)
    cuts = sorted({r["cut"] for r in rows})
    cell = {(str(r.get("link")), r["cut"]): r for r in rows}
    head = ["cut"] + [f"{link} s/token" for link in links] + [f"{link} TTFT s" for link in links]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for c in cuts:
        vals = [f"{cell[(link, c)]['tpot_s']:.3f}" if (link, c) in cell else "" for link in links]
        vals += [f"{cell[(link, c)]['ttft_s']:.3f}" if (link, c) in cell else "" for link in links]
        lines.append(f"| {c} | " + " | ".join(vals) + " |")
    for label, key in (("all on device", "all_device"), ("all on server", "all_server")):
        vals = [f"{by_link[link][0][f'tpot_{key}_s']:.3f}" for link in links]
        vals += [f"{by_link[link][0][f'ttft_{key}_s']:.3f}" for link in links]
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    best = []
    for link in links:
        b = min(by_link[link], key=lambda r: r["tpot_s"])
        best.append(f"cut {b['cut']}")
    lines.append("| best split (s/token) | " + " | ".join(best) + " |" + " |" * len(links))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def _series(rows: Sequence[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(str(r.get(key)), []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r.get("cut", 0))
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics_vs_cut(rows: Sequence[dict], path: Path, title: str = "") -> Path | None:
    metrics = [(k, label) for k, label in PLOT_METRICS if any(_num(r.get(k)) is not None for r in rows)]
    metrics += [(k, k.removeprefix("privacy/") + " (leakage)") for k in privacy_columns(rows)]
    if not metrics:
        return None
    plt = _plt()
    ncol = 3
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.4 * nrow), squeeze=False)
    for ax, (key, label) in zip(axes.flat, metrics, strict=False):
        for codec, rs in _series(rows, "codec").items():
            pts = [(r["cut"], _num(r.get(key))) for r in rs if _num(r.get(key)) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", label=codec)
        ax.set_xlabel("cut (layers on the device)")
        ax.set_ylabel(label)
        if key in ("up_bytes_per_token_decode", "up_bytes_per_token_prefill", "kl_mean", "tpot_s", "ttft_s") \
                and all((_num(r.get(key)) or 0) > 0 for r in rows if key in r):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(title="codec", fontsize=8)
    fig.suptitle(title or "metrics against the cut, per codec")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_tradeoff(rows: Sequence[dict], path: Path) -> Path | None:
    """Bandwidth against Δppl (and against leakage when an attack ran), Pareto frontier marked."""
    usable = [r for r in rows if _num(r.get("up_bytes_per_token_decode")) is not None
              and _num(r.get("delta_ppl_pct")) is not None]
    if not usable:
        return None
    priv = privacy_columns(usable)
    plt = _plt()
    panels = 2 if priv else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
    front = set(pareto_front(usable, tradeoff_objectives(usable)))
    pairs = [("up_bytes_per_token_decode", "delta_ppl_pct", "Δ perplexity (%)")]
    if priv:
        pairs.append(("up_bytes_per_token_decode", priv[0], priv[0].removeprefix("privacy/") + " (leakage)"))
    for ax, (xk, yk, ylabel) in zip(axes.flat, pairs, strict=True):
        for codec, rs in _series(usable, "codec").items():
            sc = ax.scatter([r[xk] for r in rs], [r[yk] for r in rs], s=18, label=codec, alpha=0.8)
            for r in rs:
                if r.get("cut") is not None and usable.index(r) in front:
                    ax.annotate(str(r["cut"]), (r[xk], r[yk]), fontsize=7, color=sc.get_facecolor()[0])
        fr = sorted((usable[i] for i in front if _num(usable[i].get(yk)) is not None), key=lambda r: r[xk])
        if fr:
            ax.plot([r[xk] for r in fr], [r[yk] for r in fr], "k--", lw=1, label="Pareto frontier")
        ax.set_xscale("log")
        ax.set_xlabel("uplink bytes per generated token (log)")
        ax.set_ylabel(ylabel)
        if yk == "delta_ppl_pct" and all(r[yk] > 0 for r in usable):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(title="codec (labels: cut)", fontsize=8)
    fig.suptitle("bandwidth–quality" + ("–privacy" if priv else "") + " trade-off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency_by_link(rows: Sequence[dict], path: Path, title: str = "") -> Path | None:
    """Neurosurgeon-style: TTFT and per-token latency at each cut, one line per link, with the
    all-on-device (black) and all-on-server (dotted, per link) baselines."""
    if not any(_num(r.get("tpot_s")) is not None for r in rows):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, key, label in ((axes[0], "ttft", "time to first token (s)"), (axes[1], "tpot", "per-token latency (s)")):
        device_line = None
        for link, rs in _series(rows, "link").items():
            rs = [r for r in rs if _num(r.get(f"{key}_s")) is not None]
            if not rs:
                continue
            (line,) = ax.plot([r["cut"] for r in rs], [r[f"{key}_s"] for r in rs], marker=".", label=f"split, {link}")
            ax.axhline(rs[0][f"{key}_all_server_s"], color=line.get_color(), ls=":", lw=1)
            device_line = rs[0][f"{key}_all_device_s"]
        if device_line is not None:
            ax.axhline(device_line, color="k", ls="--", lw=1, label="all on device")
        ax.plot([], [], color="gray", ls=":", label="all on server (per link)")
        ax.set_yscale("log")
        ax.set_xlabel("cut (layers on the device)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=8)
    fig.suptitle(title or "latency at each cut per link")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
@dataclass
class Report:
    rows: list[dict]
    out_dir: Path
    csv: Path
    markdown: Path
    table: str
    plots: list[Path] = field(default_factory=list)


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None,
                 links: Sequence[str] | None = None) -> Report:
    """Aggregate a sweep into `report.csv`, `report.md` and PNG plots under `out_dir`
    (default SWEEP_DIR/report). `links` adds a latency-by-link figure re-evaluated from the jobs'
    bytes and timings (e.g. all of conf/link for a single-link sweep)."""
    rows = load_runs(sweep_dir)
    out = Path(out_dir) if out_dir else Path(sweep_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r.pop("pareto", None)
    groups = _series(rows, "link")
    for rs in groups.values():  # the frontier is per link (latency does not enter it, but keep sweeps apart)
        mark_pareto(rs)
    table = markdown_table(rows, privacy_columns(rows))
    csv_path, md_path = out / "report.csv", out / "report.md"
    write_csv(rows, csv_path)
    title = str(rows[0].get("name", "sweep"))
    md_path.write_text(f"# {title}: {len(rows)} jobs from {sweep_dir}\n\n{table}\n", encoding="utf-8")
    plots = [p for p in (
        plot_metrics_vs_cut(rows if len(groups) == 1 else next(iter(groups.values())), out / "metrics_vs_cut.png",
                            f"{title}: metrics against the cut"),
        plot_tradeoff(rows, out / "tradeoff_pareto.png"),
    ) if p]
    if len(groups) > 1:
        codecs = _series(rows, "codec")
        pick = next(iter(codecs.values())) if len(codecs) == 1 else rows
        p = plot_latency_by_link(pick, out / "latency_by_link.png", f"{title}: latency at each cut per link")
        if p:
            plots.append(p)
            (out / "latency_by_link.md").write_text(latency_pivot(pick) + "\n", encoding="utf-8")
    elif links:
        per_codec = _series(rows, "codec")
        for codec, rs in per_codec.items():
            relinked = [r2 for name in links for r2 in with_latency(rs, load_link(name))]
            p = plot_latency_by_link(relinked, out / f"latency_by_link_{codec}.png",
                                     f"{title}: latency at each cut per link ({codec})")
            if p:
                plots.append(p)
    return Report(rows, out, csv_path, md_path, table, plots)


def log_report(report: Report, group: str | None = None, mode: str = "offline") -> None:
    """Send the report's table and plots to W&B as a `report` run in the sweep's group (JSONL too)."""
    from splitinfer.loggers import build_logger

    cols = sorted({k for r in report.rows for k in r if _num(r.get(k)) is not None or k in ("codec", "link")})
    logger = build_logger(report.out_dir, "report.jsonl", {"project": "splitinfer", "mode": mode},
                          group=group or str(report.rows[0].get("name")), job_type="report", name="report")
    try:
        logger.log_table("sweep_table", cols, [[r.get(c) for c in cols] for r in report.rows])
        for p in report.plots:
            logger.log_image(p.stem, p)
    finally:
        logger.close()


# ---------------------------------------------------------------------------------------------
# recommendation
# ---------------------------------------------------------------------------------------------
OBJECTIVES = {
    "latency": ("tpot_s", "per-token latency", "s"),
    "ttft": ("ttft_s", "time to first token", "s"),
    "bytes": ("up_bytes_per_token_decode", "uplink bytes per generated token", "B"),
    "energy": ("energy_j_per_token", "device energy per token", "J"),
}


@dataclass
class Constraints:
    max_device_mb: float | None = None
    max_delta_ppl_pct: float | None = None
    max_leakage: float | None = None
    leakage_metric: str | None = None
    min_exact_match: float | None = None

    def check(self, r: dict) -> list[str]:
        """Reasons this row fails (empty = it satisfies every constraint)."""
        fails = []
        if self.max_device_mb is not None and not (_num(r.get("device_memory_mb")) or math.inf) <= self.max_device_mb:
            fails.append(f"device memory {r.get('device_memory_mb', float('nan')):.1f} MB > {self.max_device_mb} MB")
        if self.max_delta_ppl_pct is not None:
            v = _num(r.get("delta_ppl_pct"))
            if v is None or v > self.max_delta_ppl_pct:
                fails.append(f"Δppl {v if v is not None else float('nan'):.2f}% > {self.max_delta_ppl_pct}%")
        if self.min_exact_match is not None:
            v = _num(r.get("exact_match_rate"))
            if v is None or v < self.min_exact_match:
                fails.append(f"exact match {v} < {self.min_exact_match}")
        if self.max_leakage is not None:
            key = self.leakage_metric
            v = _num(r.get(key)) if key else None
            if v is None or v > self.max_leakage:
                fails.append(f"{key} {v} > {self.max_leakage}")
        return fails


@dataclass
class Recommendation:
    best: dict | None
    explanation: str
    feasible: int
    total: int


def recommend(rows: list[dict], objective: str = "latency", constraints: Constraints | None = None,
              link: str | None = None, slowdown: float | None = None) -> Recommendation:
    """The (cut, codec) minimising `objective` under `constraints`, with the reasons."""
    if objective not in OBJECTIVES:
        raise ReportError(f"objective {objective!r} is not one of {sorted(OBJECTIVES)}")
    c = constraints or Constraints()
    if c.max_leakage is not None:
        priv = privacy_columns(rows)
        if not priv:
            raise ReportError("--max-leakage needs jobs run with an attack (attack=... in the sweep); these have "
                              "no privacy/* leakage columns")
        if c.leakage_metric is None:
            c.leakage_metric = priv[0]
        elif c.leakage_metric not in priv:
            raise ReportError(f"leakage metric {c.leakage_metric!r} is not one of {priv}")
    if link is not None or slowdown is not None:
        lp = load_link(link) if link else None
        if lp is None:
            links = {str(r.get("link")) for r in rows}
            if len(links) != 1:
                raise ReportError(f"the sweep has several links {sorted(links)}; name one with --link")
            lp = load_link(links.pop())
        rows = with_latency(rows, lp, slowdown)
    elif len({str(r.get("link")) for r in rows}) > 1 and objective in ("latency", "ttft", "energy"):
        raise ReportError("the sweep has several links; choose one with --link "
                          f"({sorted({str(r.get('link')) for r in rows})})")
    key, what, unit = OBJECTIVES[objective]
    scored = [r for r in rows if _num(r.get(key)) is not None]
    if not scored:
        raise ReportError(f"no job has {key!r}; was metrics.{'latency' if objective != 'bytes' else 'generation'} off?")
    feasible = [r for r in scored if not c.check(r)]
    if not feasible:
        closest = min(scored, key=lambda r: len(c.check(r)))
        why = "; ".join(c.check(closest))
        return Recommendation(None, f"No configuration meets the constraints ({len(scored)} tried). Closest: cut "
                              f"{closest.get('cut')} + {closest.get('codec')}, which fails: {why}. Relax a "
                              "constraint or sweep more codecs.", 0, len(scored))
    feasible.sort(key=lambda r: r[key])
    best = feasible[0]
    runs = "only the embeddings" if best["cut"] == 0 else f"embeddings + layers 0..{best['cut'] - 1}"
    lines = [f"Recommended: cut {best['cut']} (the device runs {runs}) with codec "
             f"{best['codec']}" + (f", defense {best['defense']}" if best.get("defense") not in (None, "none") else "")
             + f" on {best.get('link')}.",
             f"It has the lowest {what} ({best[key]:.4g} {unit}) of the {len(feasible)} of {len(scored)} "
             "configurations that meet the constraints."]
    facts = []
    for k, label, fmt in (("up_bytes_per_token_decode", "uplink", "{:.0f} B/token"),
                          ("up_ratio_vs_fp32_decode", "vs fp32", "{:.3f}x"),
                          ("delta_ppl_pct", "Δppl", "{:.2f}%"), ("kl_mean", "KL", "{:.4f}"),
                          ("exact_match_rate", "greedy exact match", "{:.2f}"),
                          ("device_memory_mb", "device memory", "{:.1f} MB"),
                          ("ttft_s", "TTFT", "{:.3f} s"), ("tpot_s", "per token", "{:.3f} s")):
        if _num(best.get(k)) is not None:
            facts.append(f"{label} {fmt.format(best[k])}")
    for k in privacy_columns([best])[:1] + ([c.leakage_metric] if c.leakage_metric else []):
        if _num(best.get(k)) is not None and f"{k} " not in " ".join(facts):
            facts.append(f"{k} {best[k]:.3g} (leakage)")
    lines.append("Its figures: " + ", ".join(facts) + ".")
    if objective in ("latency", "ttft") and _num(best.get("tpot_all_device_s")) is not None:
        k2 = "tpot" if objective == "latency" else "ttft"
        dev, srv = best[f"{k2}_all_device_s"], best[f"{k2}_all_server_s"]
        beaten = [name for name, v in (("all on the server", srv), ("all on the device", dev)) if v < best[key]]
        lines.append(f"Baselines on this link: all on the device {dev:.3f} s, all on the server {srv:.3f} s"
                     + (f" - {' and '.join(beaten)} {'beat' if len(beaten) > 1 else 'beats'} every split; split for privacy (the text "
                        "stays on the device) or memory, not for speed." if beaten else
                        " - the split beats both."))
    active = [n for n, v in (("device memory", c.max_device_mb), ("Δppl", c.max_delta_ppl_pct),
                             ("leakage", c.max_leakage), ("exact match", c.min_exact_match)) if v is not None]
    if active:
        unconstrained = min(scored, key=lambda r: r[key])
        if unconstrained is not best:
            lines.append(f"Without the constraints ({', '.join(active)}) cut {unconstrained['cut']} + "
                         f"{unconstrained['codec']} would be best ({unconstrained[key]:.4g} {unit}) but fails: "
                         + "; ".join(c.check(unconstrained)) + ".")
        else:
            lines.append(f"The constraints ({', '.join(active)}) do not bind: this is also the unconstrained best.")
    if len(feasible) > 1:
        nxt = feasible[1]
        lines.append(f"Runner-up: cut {nxt['cut']} + {nxt['codec']} ({nxt[key]:.4g} {unit}).")
    return Recommendation(best, "\n".join(lines), len(feasible), len(scored))
