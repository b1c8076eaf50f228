"""The report of a search folder (an Optuna multirun from conf/hparams_search, marked by `search.json`):
the Pareto set found (feasible trials only), the trials in order, a plot of the front and the hypervolume
the search reached after each trial.

Reads only the jobs' metrics.json and search.json (no Optuna needed): each job folder is one trial, its
name the trial number, its `objective/<name>` and `constraint/<name>` values written by the job
(`splitinfer.objectives.trial_metrics`; constraint = measured - limit, <= 0 is feasible).

Hypervolume (`hypervolume`) is exact (slicing over the last objective, then 2-D sweeps), all objectives
minimised, points at or beyond the reference point add nothing. `normalise` maps each objective to
[0, 1] between given bounds (by default the lowest and highest value any trial reached) so objectives in
bytes, percent and seconds weigh alike; the reference point is then 1.1 on every axis.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitinfer.report.runs import num

SEARCH_FILE = "search.json"
OBJ = "objective/"
CON = "constraint/"
REF = 1.1  # reference point of the normalised hypervolume, on every axis
PARAM_KEYS = ("cut", "codec", "defense")


def is_search(sweep_dir: str | Path) -> bool:
    """Whether `sweep_dir` is a search (an Optuna multirun of conf/hparams_search)."""
    return (Path(sweep_dir) / SEARCH_FILE).is_file()


def trial_number(row: dict) -> int | None:
    """The Optuna trial number of a search job: its folder name."""
    name = Path(str(row.get("job_dir", ""))).name
    return int(name) if name.isdigit() else None


def feasible(row: dict, limits: dict[str, float] | None = None) -> bool:
    """Within every limit of the search (`search.json` constraints, re-checked on the job's metrics, so
    trials run before a constraint was added are judged by it too); without `limits`, every stored
    `constraint/*` value <= 0. A missing measurement is not feasible."""
    if limits is None:
        return all(num(v) is not None and num(v) <= 0 for k, v in row.items() if k.startswith(CON))
    from splitinfer.objectives import CONSTRAINTS

    ok = True
    for name, limit in limits.items():
        v = CONSTRAINTS[name][0](row)
        row[CON + name] = None if v is None else v - float(limit)
        ok = ok and v is not None and v - float(limit) <= 0
    return ok


def values(row: dict, objectives: Sequence[str]) -> list[float] | None:
    """The row's objective values (`objective/<name>`, else read from its metrics), None if one is missing."""
    from splitinfer.objectives import OBJECTIVES

    vals = [num(row.get(OBJ + o)) if num(row.get(OBJ + o)) is not None
            else (OBJECTIVES[o][0](row) if o in OBJECTIVES else None) for o in objectives]
    return None if any(v is None for v in vals) else vals  # type: ignore[return-value]


def nondominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (all minimised; equal points are all kept)."""

    def dominates(q: Sequence[float], p: Sequence[float]) -> bool:
        return all(a <= b for a, b in zip(q, p, strict=True)) and any(a < b for a, b in zip(q, p, strict=True))

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def _hv2(points: list[tuple[float, float]], ref: Sequence[float]) -> float:
    area, best_y = 0.0, ref[1]
    for x, y in sorted(points):
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def hypervolume(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Exact hypervolume dominated by `points` (minimised) up to the reference point `ref`."""
    pts = [tuple(float(v) for v in p) for p in points if all(v < r for v, r in zip(p, ref, strict=True))]
    if not pts:
        return 0.0
    pts = [pts[i] for i in nondominated(pts)]
    d = len(ref)
    if d == 1:
        return ref[0] - min(p[0] for p in pts)
    if d == 2:
        return _hv2(pts, ref)  # type: ignore[arg-type]
    pts.sort(key=lambda p: p[-1])
    vol = 0.0
    for i, p in enumerate(pts):
        top = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if top > p[-1]:
            vol += (top - p[-1]) * hypervolume([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return vol


def bounds(points: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Per-objective lowest and highest value."""
    cols = list(zip(*points, strict=True))
    return [min(c) for c in cols], [max(c) for c in cols]


def normalise(points: Sequence[Sequence[float]], lo: Sequence[float], hi: Sequence[float]) -> list[list[float]]:
    """Each objective mapped to [0, 1] between lo and hi (a constant objective maps to 0)."""
    return [[(v - a) / (b - a) if b > a else 0.0 for v, a, b in zip(p, lo, hi, strict=True)] for p in points]


def hypervolume_curve(points: Sequence[Sequence[float] | None], lo: Sequence[float], hi: Sequence[float],
                      ok: Sequence[bool] | None = None) -> list[float]:
    """Normalised hypervolume of the feasible points among the first n, for n = 1 .. len(points)
    (None = a failed trial, it adds nothing), as a fraction of the reference box (REF on every axis)."""
    ref = [REF] * len(lo)
    box = REF ** len(lo)
    out, seen = [], []
    for i, p in enumerate(points):
        if p is not None and (ok is None or ok[i]):
            seen.append(p)
            seen = [seen[j] for j in nondominated(seen)]
        out.append(hypervolume(normalise(seen, lo, hi), ref) / box if seen else 0.0)
    return out


@dataclass
class Search:
    """A search folder, read back: settings (search.json), trials in order, the feasible Pareto set."""

    settings: dict[str, Any]
    objectives: list[str]
    trials: list[dict]
    front: list[dict]
    hv_curve: list[float] = field(default_factory=list)
    plot: Path | None = None
    trials_csv: Path | None = None
    markdown: str = ""


def load_search(sweep_dir: str | Path, rows: list[dict]) -> Search | None:
    """The search in `sweep_dir` (None when it is not one), from its jobs' rows (`load_runs`)."""
    root = Path(sweep_dir)
    if not is_search(root):
        return None
    settings = json.loads((root / SEARCH_FILE).read_text())
    objectives = [str(o) for o in settings.get("objectives", [])]
    trials = sorted((r for r in rows if trial_number(r) is not None), key=trial_number)
    for r in trials:
        r["trial"] = trial_number(r)
        r["feasible"] = feasible(r, {str(k): float(v) for k, v in (settings.get("constraints") or {}).items()})
    ok = [r for r in trials if r["feasible"] and values(r, objectives) is not None]
    idx = nondominated([values(r, objectives) for r in ok]) if ok else []
    front, seen = [], set()
    for i in idx:  # one row per configuration (NSGA-II may try one twice)
        key = (ok[i].get("cut"), ok[i].get("codec"), ok[i].get("defense"), _strength(ok[i]))
        if key not in seen:
            seen.add(key)
            front.append(ok[i])
    front.sort(key=lambda r: values(r, objectives))
    pts = [values(r, objectives) for r in trials]
    known = [p for p in pts if p is not None]
    curve = hypervolume_curve(pts, *bounds(known), ok=[r["feasible"] for r in trials]) if known else []
    for r, hv in zip(trials, curve, strict=True):
        r["hypervolume_so_far"] = hv
    return Search(settings, objectives, trials, front, curve)


def _strength(r: dict) -> str:
    """The defense's knob of a trial (e.g. sigma=0.12), from its overrides."""
    ov = str(r.get("overrides", ""))
    return " ".join(p for p in ov.split() if p.startswith("defense."))


def _fmt(v: Any) -> str:
    x = num(v)
    if x is None:
        return "—" if v is None else str(v)
    return f"{x:.4g}"


def _table(rows: Sequence[dict], objectives: Sequence[str], extra: Sequence[str] = ()) -> str:
    cons = sorted({k for r in rows for k in r if k.startswith(CON)})
    head = ["trial", "cut", "codec", "defense", *[OBJ + o for o in objectives], *cons, *extra]
    lines = ["| " + " | ".join(h.replace(OBJ, "").replace(CON, "") for h in head) + " |",
             "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for h in head:
            if h == "defense":
                cells.append(" ".join(x for x in (str(r.get("defense", "none")), _strength(r)) if x))
            elif h == "feasible":
                cells.append("yes" if r.get(h) else "no")
            else:
                cells.append(_fmt(r.get(h)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def search_markdown(s: Search) -> str:
    st = s.settings
    n = len(s.trials)
    hv = s.hv_curve[-1] if s.hv_curve else None
    reach = ""
    if hv:
        first = next(i for i, v in enumerate(s.hv_curve) if v >= 0.95 * hv) + 1
        reach = f" It reached 95 % of its final hypervolume after {first} of {n} trials."
    cons = st.get("constraints") or {}
    out = [
        "## Search",
        "",
        f"{n} trials of a {st.get('sampler', '?').rsplit('.', 1)[-1]} search (seed {st.get('seed')}, "
        f"batches of {st.get('batch')}; study `{st.get('study_name')}` in {st.get('storage')}), minimising "
        + ", ".join(f"`{o}`" for o in s.objectives)
        + (" under " + ", ".join(f"{k} = {v}" for k, v in cons.items()) if cons else ", no constraints")
        + ". Rerun the same command with `hydra.sweep.dir=` this folder to add trials.",
        "",
        f"**Pareto set** ({len(s.front)} configurations, feasible trials only, all objectives lower is better). "
        f"Normalised hypervolume {_fmt(hv)} (each objective scaled to [0, 1] over the trials; the share of "
        f"the box up to the reference point {REF} on every axis).{reach}",
        "",
        _table(s.front, s.objectives),
        "",
        "**Trials in order** (also `search_trials.csv`):",
        "",
        _table(s.trials, s.objectives, ("feasible", "hypervolume_so_far")),
        "",
    ]
    if s.plot:
        out += [f"![search front]({s.plot.name})", ""]
    return "\n".join(out)


def plot_search(s: Search, path: Path) -> Path | None:
    """Left: every trial on the first two objectives, coloured by trial number, the Pareto set ringed.
    Right: the normalised hypervolume after each trial."""
    from splitinfer.report.plots import pyplot, save

    pts = [(r, values(r, s.objectives)) for r in s.trials]
    pts = [(r, v) for r, v in pts if v is not None]
    if not pts or len(s.objectives) < 2:
        return None
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    xo, yo = s.objectives[0], s.objectives[1]
    sc = ax.scatter([v[0] for _, v in pts], [v[1] for _, v in pts], c=[r["trial"] for r, _ in pts],
                    cmap="viridis", s=22, marker="o", alpha=0.85)
    bad = [(r, v) for r, v in pts if not r["feasible"]]
    if bad:
        ax.scatter([v[0] for _, v in bad], [v[1] for _, v in bad], marker="x", c="grey", s=30,
                   label="infeasible")
    fr = sorted((values(r, s.objectives) for r in s.front), key=lambda v: (v[0], v[1]))
    if fr:
        ax.scatter([v[0] for v in fr], [v[1] for v in fr], facecolors="none", edgecolors="red", s=90,
                   linewidths=1.3, label=f"Pareto set ({len(fr)})")
        two = [fr[i] for i in nondominated([v[:2] for v in fr])]
        two.sort()
        ax.step([v[0] for v in two], [v[1] for v in two], where="post", color="red", lw=0.8, alpha=0.6)
    ax.set_xlabel(xo)
    ax.set_ylabel(yo)
    if all(v[0] > 0 for _, v in pts) and max(v[0] for _, v in pts) > 20 * min(v[0] for _, v in pts):
        ax.set_xscale("log")
    if all(v[1] > 0 for _, v in pts) and max(v[1] for _, v in pts) > 20 * min(v[1] for _, v in pts):
        ax.set_yscale("log")
    fig.colorbar(sc, ax=ax, label="trial")
    ax.legend(fontsize=8)
    ax.set_title(f"trials on {xo} × {yo}" + (f" (of {len(s.objectives)} objectives)" if len(s.objectives) > 2 else ""))
    ax2.plot(range(1, len(s.hv_curve) + 1), s.hv_curve, color="C0")
    ax2.set_xlabel("trials")
    ax2.set_ylabel("normalised hypervolume")
    ax2.set_title("hypervolume of the feasible front so far")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def write_trials_csv(s: Search, path: Path) -> Path:
    cols = ["trial", "cut", "codec", "defense", "overrides", *[OBJ + o for o in s.objectives],
            *sorted({k for r in s.trials for k in r if k.startswith(CON)}), "feasible", "hypervolume_so_far"]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in s.trials:
            w.writerow([r.get(c) for c in cols])
    return path


def front_summary(sweep_dir: str | Path) -> str:
    """A few lines for the end of a search: the Pareto set exactly as the report's Search section has it
    (feasible trials, one per configuration), each with its labelled objective values, and why that count
    can differ from Optuna's and from the ★ column of the report's main table."""
    from splitinfer.objectives import labelled
    from splitinfer.report.runs import load_runs

    s = load_search(sweep_dir, load_runs(sweep_dir))
    if s is None:
        return f"{sweep_dir} is not a search folder (no {SEARCH_FILE})"
    lines = [f"Pareto set: {len(s.front)} configuration{'' if len(s.front) == 1 else 's'} from {len(s.trials)} trials (feasible trials, one per "
             f"configuration: the report's Search section), all of {', '.join(s.objectives)} minimised:"]
    for r in s.front:
        where = f"cut {r.get('cut')} {r.get('codec')}" + (
            f" {r.get('defense')} {_strength(r)}".rstrip() if r.get("defense") not in (None, "none") else "")
        lines.append(f"  trial {r['trial']:>3}  {where:<32} {labelled(s.objectives, values(r, s.objectives))}")
    lines.append(f"(Optuna's count above also keeps infeasible trials and repeats of one configuration; the ★ in "
                 f"the report's main table marks another frontier, bytes x the |Δppl| bound only.)\n"
                 f"Report: splitinfer report {sweep_dir}")
    return "\n".join(lines)


def search_report(sweep_dir: str | Path, rows: list[dict], out: Path) -> Search | None:
    """For `build_report`: the search section, `search_front.png` and `search_trials.csv` (None when the
    folder is not a search)."""
    s = load_search(sweep_dir, rows)
    if s is None:
        return None
    s.plot = plot_search(s, out / "search_front.png")
    s.trials_csv = write_trials_csv(s, out / "search_trials.csv")
    s.markdown = search_markdown(s)
    return s
