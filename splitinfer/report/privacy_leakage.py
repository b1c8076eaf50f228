"""The tables, figures and README of the privacy-leakage experiment (experiments/privacy_leakage_vs_cut/)
from the per-job CSVs that `scripts/bench_privacy.py` appends (`privacy*.csv`, one row per job).

Reads only the CSVs: `load_rows` keeps the latest row per job across runs, `delta_ppl_pct` converts rows
saved in the older absolute unit from their own perplexities (never guessed), `summary_lines` states the
findings with every figure read from the rows, and `plot_and_table` rewrites the folder's outputs.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path


def _num(x):
    try:
        v = float(x)
        return v if math.isfinite(v) else None
    except (TypeError, ValueError):
        return None


# The per-job CSV's columns, in file order (`row_from` fills them; `scripts/bench_privacy.py` writes them).
COLUMNS = ["part", "cut", "attack", "defense", "strength", "codec", "token_acc", "content_token_acc",
           "exact_match", "rouge_l", "pii_recovery", "dcor", "delta_ppl_pct", "top1_agreement", "prepare_s",
           "invert_s", "invert_s_per_token", "prepare_cpu_s", "invert_cpu_s", "tokens", "victims_done", "verified_frac",
           "candidates_per_token", "train_steps", "train_tokens", "partial", "metrics_json"]


def attack_spec(name: str, noisy: bool, inverter_arch: str = "gru", inverter_budget_s: float = 15.0,
                inverter_steps: int | None = None, whitebox_max_candidates: int = 512) -> dict:
    """The attack config of one job: the learned inverter's architecture and budget; whitebox's candidate
    limit when the payload is noisy (a defense or a lossy codec)."""
    if name == "learned_inverter":
        return {"name": name, "arch": inverter_arch, "train_budget_s": inverter_budget_s, "max_steps": inverter_steps}
    if name == "whitebox" and noisy:
        return {"name": name, "max_candidates": whitebox_max_candidates}
    return {"name": name}


def defense_spec(defense: str, strength: float) -> dict | None:
    """None for "none"; gaussian's strength is its sigma, every other defense's its eta."""
    if defense == "none":
        return None
    return {"name": defense, ("sigma" if defense == "gaussian" else "eta"): strength}


def row_from(part, cut, attack, defense, strength, codec, m: dict, victims) -> dict:
    """One CSV row (COLUMNS) of a job from `evaluate_privacy`'s metrics `m`."""
    p = f"privacy/{attack}"
    return {
        "part": part, "cut": cut, "attack": attack, "defense": defense, "strength": strength, "codec": codec,
        "token_acc": m.get(f"{p}/token_acc"), "content_token_acc": m.get(f"{p}/content_token_acc"),
        "exact_match": m.get(f"{p}/exact_match"), "rouge_l": m.get(f"{p}/rouge_l"),
        "pii_recovery": m.get(f"{p}/pii_recovery"), "dcor": m.get("privacy/dcor"),
        "delta_ppl_pct": m.get("privacy/utility/delta_ppl_pct"),
        "top1_agreement": m.get("privacy/utility/top1_agreement"),
        "prepare_s": m.get(f"{p}/prepare_s"), "invert_s": m.get(f"{p}/invert_s"),
        "invert_s_per_token": m.get(f"{p}/invert_s_per_token"), "tokens": sum(v.num_tokens for v in victims),
        "prepare_cpu_s": m.get(f"{p}/prepare_cpu_s"), "invert_cpu_s": m.get(f"{p}/invert_cpu_s"),
        "victims_done": m.get(f"{p}/victims_done"), "verified_frac": m.get(f"{p}/verified_frac"),
        "candidates_per_token": m.get(f"{p}/candidates_per_token"),
        "train_steps": m.get(f"{p}/train_steps"), "train_tokens": m.get(f"{p}/train_tokens"),
        "partial": m.get(f"{p}/partial"), "metrics_json": json.dumps(m, default=str),
    }


# Which run's row a job's table entry comes from: a later run here replaces an earlier one for the same
# (part, cut, attack, defense, strength, codec); runs not listed come after these, by name.
RUN_ORDER = ("baselines", "defenses", "whitebox", "whitebox_v2", "inverter")


def delta_ppl_pct(row: dict) -> float | None:
    """Δperplexity in percent of the clean perplexity: the row's own column, or, for rows saved before the
    unit was fixed (absolute `delta_ppl` points), from the `ppl` and `ppl_clean` stored in its metrics_json."""
    if _num(row.get("delta_ppl_pct")) is not None:
        return _num(row["delta_ppl_pct"])
    try:
        m = json.loads(row.get("metrics_json") or "{}")
    except json.JSONDecodeError:
        return None
    ppl, clean = _num(m.get("privacy/utility/ppl")), _num(m.get("privacy/utility/ppl_clean"))
    return 100.0 * (ppl / clean - 1.0) if ppl is not None and clean else None


def load_rows(out: Path) -> list[dict]:
    """The latest row per job over every privacy*.csv in `out`, in table order."""
    rank = {name: i for i, name in enumerate(RUN_ORDER)}
    paths = sorted(out.glob("privacy*.csv"),
                   key=lambda q: (rank.get(q.stem.removeprefix("privacy_"), len(rank)), q.name))
    latest = {}
    for path in paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                r["run"] = path.stem.removeprefix("privacy_")
                r["delta_ppl_pct"] = delta_ppl_pct(r)
                latest[(r["part"], r["cut"], r["attack"], r["defense"], r["strength"], r["codec"])] = r
    rows = list(latest.values())
    order = {"t32": 0, "cut": 1, "defense": 2, "codec": 3}
    rows.sort(key=lambda r: (order.get(r["part"], 9), int(r["cut"]), r["defense"], _num(r["strength"]) or 0,
                             r["codec"], r["attack"]))
    return rows


def plot(out: Path, rows: list[dict]) -> None:
    from splitinfer.report.plots import pyplot

    plt = pyplot()

    cut_rows = [r for r in rows if r["part"] == "cut"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for attack in sorted({r["attack"] for r in cut_rows}):
        rs = sorted((r for r in cut_rows if r["attack"] == attack), key=lambda r: int(r["cut"]))
        for ax, key in zip(axes, ("token_acc", "pii_recovery"), strict=True):
            pts = [(int(r["cut"]), 100 * _num(r[key])) for r in rs if _num(r[key]) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=attack)
    for ax, title in zip(axes, ("tokens recovered (%)", "PII items recovered whole (%)"), strict=True):
        ax.set_xlabel("cut (layers on the device)")
        ax.set_ylabel(title)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct: leakage against cut depth, no defense")
    fig.tight_layout()
    fig.savefig(out / "leakage_vs_cut.png", dpi=120)
    plt.close(fig)

    frontier = [r for r in rows if r["part"] in ("defense", "codec")]
    if frontier:
        fig, ax = plt.subplots(figsize=(6, 4))
        for attack in sorted({r["attack"] for r in frontier}):
            pts = [(_num(r["top1_agreement"]), _num(r["token_acc"]), f"{r['defense']}:{r['strength']}"
                    if r["part"] == "defense" else r["codec"]) for r in frontier if r["attack"] == attack]
            pts = [p for p in pts if p[0] is not None and p[1] is not None]
            if pts:
                ax.scatter([100 * p[0] for p in pts], [100 * p[1] for p in pts], label=attack)
                for x, y, lab in pts:
                    ax.annotate(lab, (100 * x, 100 * y), fontsize=6)
        ax.set_xlabel("utility: top-1 agreement with the clean model (%)")
        ax.set_ylabel("leakage: tokens recovered (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"privacy-utility frontier at cut {frontier[0]['cut']}")
        fig.tight_layout()
        fig.savefig(out / "privacy_utility_frontier.png", dpi=120)
        plt.close(fig)


def _fmt(x, pct=True, nd=1, sign=False):
    v = _num(x)
    if v is None:
        return "–"
    v = 100 * v if pct else v
    return f"{v:+.{nd}f}" if sign else f"{v:.{nd}f}"


def table_text(rows: list[dict]) -> str:
    lines = ["| part | cut | attack | defense | codec | token acc % | user-text acc % | exact % | ROUGE-L % | "
             "PII % | dCor | Δppl % | top-1 agree % | prepare s | invert s/token | invert CPU s | tokens | partial "
             "| run |",
             "|" + "---|" * 19]
    for r in rows:
        d = "none" if r["defense"] == "none" else f"{r['defense']} {r['strength']}"
        lines.append(f"| {r['part']} | {r['cut']} | {r['attack']} | {d} | {r['codec']} | {_fmt(r['token_acc'])} | "
                     f"{_fmt(r['content_token_acc'])} | {_fmt(r['exact_match'], nd=0)} | {_fmt(r['rouge_l'])} | "
                     f"{_fmt(r['pii_recovery'])} | {_fmt(r['dcor'], False, 3)} | "
                     f"{_fmt(r['delta_ppl_pct'], False, 2, sign=True)} | "
                     f"{_fmt(r['top1_agreement'])} | {_fmt(r['prepare_s'], False)} | "
                     f"{_fmt(r['invert_s_per_token'], False, 2)} | {_fmt(r.get('invert_cpu_s'), False)} | "
                     f"{r['tokens']} | {r['partial']} | {r['run']} |")
    return "\n".join(lines) + "\n"


def _pii_kinds(rows: list[dict]) -> list[str]:
    kinds = set()
    for r in rows:
        m = json.loads(r.get("metrics_json") or "{}")
        kinds |= {k.rsplit("/", 1)[1] for k in m if f"/{r['attack']}/pii_recovery/" in k}
    return sorted(kinds)


def summary_lines(rows: list[dict]) -> list[str]:
    """The README's findings, every figure read from `rows`."""
    lines = []
    wb = sorted((r for r in rows if r["attack"] == "whitebox" and r["part"] == "cut"), key=lambda r: int(r["cut"]))
    noisy = [r for r in rows if r["attack"] == "whitebox" and r["part"] in ("defense", "codec")]
    if wb:
        accs = [_num(r["token_acc"]) for r in wb]
        piis = [_num(r["pii_recovery"]) for r in wb]
        cuts = ", ".join(r["cut"] for r in wb)
        if all(a == 1.0 for a in accs) and all(p == 1.0 for p in piis):
            head = (f"**Splitting alone does not keep the prompt private.** Without a defense the white-box "
                    f"attacker recovered 100 % of the tokens and 100 % of the PII items at every cut tested "
                    f"({cuts})")
        else:
            head = ("White-box inversion, no defense: tokens " + ", ".join(
                f"cut {r['cut']}: {_fmt(r['token_acc'])} %" for r in wb) + "; PII " + ", ".join(
                f"cut {r['cut']}: {_fmt(r['pii_recovery'])} %" for r in wb))
        if noisy:
            low = min(noisy, key=lambda r: _num(r["token_acc"]) or 0)
            costly = max(noisy, key=lambda r: _num(r["delta_ppl_pct"]) or 0)
            head += (f"; under every tested defense and codec at cut {low['cut']} it still recovered at least "
                     f"{_fmt(low['token_acc'])} % of the tokens and {_fmt(min(_num(r['pii_recovery']) for r in noisy))} "
                     f"% of the PII items, while the strongest setting cost "
                     f"{_fmt(costly['delta_ppl_pct'], False, 0, sign=True)} % perplexity")
        lines.append("- " + head + ".")
    for r in noisy:
        what = f"{r['defense']} {r['strength']}" if r["part"] == "defense" else f"codec {r['codec']}"
        lines.append(f"  - {what} at cut {r['cut']} (Δppl {_fmt(r['delta_ppl_pct'], False, 1, sign=True)} %, "
                     f"top-1 agreement {_fmt(r['top1_agreement'])} %): white-box {_fmt(r['token_acc'])} % of tokens, "
                     f"{_fmt(r['pii_recovery'])} % of PII.")
    for r in rows:
        if r["part"] == "t32":
            lines.append(f"- 32-token prompts at cut {r['cut']}: {_fmt(r['token_acc'])} % of tokens, "
                         f"{_num(r['invert_s']) / 2:.0f} s wall per prompt ({(_num(r.get('invert_cpu_s')) or 0) / 2:.0f} "
                         f"CPU s), plus {_num(r['prepare_s']):.0f} s one-off probe fit per cut.")
    li = sorted((int(r["cut"]), _num(r["token_acc"])) for r in rows if r["attack"] == "learned_inverter"
                and r["part"] == "cut")
    if li:
        lines.append("- Learned inverter (1-layer bi-GRU, width 256; see the `train_steps` / `train_tokens` CSV "
                     "columns): " + ", ".join(f"cut {c}: {100 * a:.1f} %" for c, a in li if a is not None) + ".")
    base = [r for r in rows if r["part"] == "cut" and r["attack"] in ("nearest_embedding", "logit_lens")
            and int(r["cut"]) > 0 and _num(r["token_acc"]) is not None]
    if base:
        top = max(base, key=lambda r: _num(r["token_acc"]))
        lines.append(f"- Nearest-embedding and logit-lens baselines past cut 0: at most {_fmt(top['token_acc'])} % "
                     f"of tokens ({top['attack']}, cut {top['cut']}).")
    kinds = _pii_kinds(wb)
    if kinds:
        lines.append(f"- PII % counts the items inside the truncated prompts: {', '.join(kinds)} "
                     "(the later items lie past the first tokens).")
    return lines


README = """# Privacy: leakage against cut depth (SmolLM2-135M-Instruct)

How much of a private prompt an honest-but-curious server rebuilds from the payload it decodes, per
attack and per cut, and what defenses buy at what utility cost. Generated by `scripts/bench_privacy.py`
(edit `splitinfer/report/privacy_leakage.py`, not this file's table).

## Threat model

The server runs its half honestly and sees exactly `codec.decode(codec.encode(defense(device(ids))))`.
White-box: it knows the public weights, the cut, the chat template, the defense kind and parameters and
the codec (only the noise draws are secret). Black-box with auxiliary data: it can push public text
through the device side (same defense kind and codec, its own noise) to train an inverse model. Victim
texts are never in its data: victims are Faker prompts (en_US, ja_JP, seed 0) holding a name, phone,
address, e-mail, date and a medical term; the auxiliary corpus is Python's documentation plus Faker
requests on other templates and seeds. Details: `splitinfer/privacy/README.md`.

## Command

    python scripts/bench_privacy.py --full --attacks whitebox --parts t32,cut --tag whitebox --job-budget 1200
    python scripts/bench_privacy.py --full --attacks nearest_embedding,logit_lens,learned_inverter --parts cut \\
        --inverter-budget 30 --tag baselines
    python scripts/bench_privacy.py --full --attacks nearest_embedding,logit_lens,learned_inverter,whitebox \\
        --parts defense,codec --codecs int8,int4_b32 --whitebox-max-candidates 256 --inverter-budget 30 \\
        --tag defenses
    python scripts/bench_privacy.py --full --attacks learned_inverter --parts cut,defense --inverter-steps 40 \\
        --inverter-budget 100 --tag inverter     # replaces the 30-s inverter rows: fixed step count
    python scripts/bench_privacy.py --full --plot-only   # merge the CSVs, redraw, rewrite this README

(`--full` selects this folder and the settings these runs used; without it the script makes a quick
run into `outputs/privacy_bench/`. Three processes in parallel, torch single-threaded each, on a 2-core
machine shared with other jobs: load average 4-10 during the run, so wall-clock seconds are 2-4x what
an idle core needs; the `invert CPU s` column is the process CPU time.)

Victims: 2 prompts (1 en_US, 1 ja_JP), no chat template, first 48 tokens each (96 tokens in all;
the `t32` row: the same prompts cut to 32 tokens). Token accuracy excludes special tokens. PII % is
the share of private items present in the (truncated) prompt that appear whole in the recovered text.

## Results

{summary}

![leakage against cut](leakage_vs_cut.png)

![privacy-utility frontier](privacy_utility_frontier.png)

{table}
Columns: `prepare s` = attack set-up (probe fit / inverter data collection + training), `invert s/token`
= wall seconds per recovered token, `dCor` = distance correlation of input embeddings and payload,
`Δppl %` = perplexity with the defense + codec over the clean perplexity, minus 1, in percent, and
`top-1 agree` = agreement of the next-token argmax with the clean model, both on the victims' own text.
The runs saved Δppl in absolute perplexity points (`delta_ppl`); the CSVs were converted to
`delta_ppl_pct` from each row's own `ppl` and `ppl_clean` (kept in `metrics_json`), nothing re-measured.
"""


QUICK_README = """# Privacy benchmark: a quick run

Written by `python scripts/bench_privacy.py` (a quick set-up: see `PRESETS` in the script, or the
command line it was given). The experiment with the full set-up is `experiments/privacy_leakage_vs_cut/`
(`--full`). Victims per job: {tokens} tokens in all; `Δppl %` is the defense + codec's perplexity cost
in percent of the clean perplexity.

{summary}

{table}"""


def readme_text(rows: list[dict], experiment: bool = True) -> str:
    """The experiment's README (`experiment=True`) or a short one for any other output folder."""
    summary = "\n".join(summary_lines(rows)) or "(no rows yet)"
    if not experiment:
        tokens = sorted({r["tokens"] for r in rows}) or ["?"]
        return QUICK_README.format(summary=summary, table=table_text(rows), tokens=" / ".join(map(str, tokens)))
    return README.format(summary=summary, table=table_text(rows))


def plot_and_table(out: Path, experiment: bool) -> None:
    """Merge the folder's CSVs, redraw its figures, write table.md and README.md (the experiment's README
    when `experiment`, else a short one)."""
    rows = load_rows(out)
    plot(out, rows)
    table = table_text(rows)
    (out / "table.md").write_text(table)
    print(table)
    (out / "README.md").write_text(readme_text(rows, experiment=experiment))
