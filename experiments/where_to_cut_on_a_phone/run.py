"""Where to cut a 7-8B model for a phone: every cut of Llama-3.1-8B and Qwen2.5-7B (int4 device weights) on four
phone profiles over 3G / 4G / 5G / Wi-Fi, and a ~1.3B model wholly on the phone against a split 7B model.

    python experiments/where_to_cut_on_a_phone/run.py          # ~10 s; writes plan.csv, best.md, scenario.md, figures

Every figure here is MODELLED (the roofline of `splitinfer.metrics.hardware` applied to each model's shape,
`splitinfer.plan`), none measured; the profiles' sources and assumptions are in conf/hardware/*.yaml and
conf/link/*.yaml. It loads no weights.
"""

from __future__ import annotations

import csv
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ("llama3_1_8b", "qwen2_5_7b")
PHONES = ("snapdragon_8_gen3", "dimensity_9300", "apple_a17_pro", "tensor_g3")
LINKS = ("3g", "4g_lte", "5g", "wifi")
SMALL = ("llama3_2_1b", "qwen2_5_1_5b")  # the "~1.3B wholly on the phone" side of the seed's scenario
SERVER = "h100"


def main() -> None:
    from splitinfer.plan import COLUMNS, PlanOptions, make_plan

    opts = PlanOptions(weight_bits=4, codec_bits=8, prompt_tokens=512, context_tokens=1024)
    rows, best_rows = [], []
    for model in MODELS:
        for phone in PHONES:
            for link in LINKS:
                shape, plan, best, why = make_plan(model, phone, SERVER, link, opts)
                rows += [{"model": model, "hardware": phone, "link": link, **r} for r in plan]
                base = {r["mode"]: r for r in plan}
                # the best cut that keeps at least a quarter of the layers on the phone (the privacy-motivated
                # split the field studies), next to the unconstrained best
                deep = [r for r in plan if r["mode"] == "split" and r["fits"] and r["cut"] >= shape.num_layers // 4]
                d = min(deep, key=lambda r: r["e2e_ms_per_token"]) if deep else None
                best_rows.append({"model": model, "hardware": phone, "link": link, "best_cut": best["cut"],
                                  "best_ms": best["e2e_ms_per_token"], "best_mj": best["device_mj_per_token"],
                                  "deep_cut": d["cut"] if d else None, "deep_ms": d["e2e_ms_per_token"] if d else None,
                                  "deep_mj": d["device_mj_per_token"] if d else None,
                                  "deep_gb": d["device_memory_bytes"] / 1e9 if d else None,
                                  "all_server_ms": base["all_server"]["e2e_ms_per_token"],
                                  "all_device_ms": base["all_device"]["e2e_ms_per_token"],
                                  "all_device_fits": base["all_device"]["fits"],
                                  "all_device_gb": base["all_device"]["device_memory_bytes"] / 1e9})
    with open(HERE / "plan.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "hardware", "link", *COLUMNS])
        w.writeheader()
        w.writerows(rows)
    md = ["| model | phone | link | best cut | ms/token | mJ/token | best cut ≥ L/4 | ms/token | mJ/token | phone GB "
          "| all-server ms/token | all-on-phone ms/token (fits?) |", "|" + "---|" * 12]
    for b in best_rows:
        md.append(f"| {b['model']} | {b['hardware']} | {b['link']} | {b['best_cut']} | {b['best_ms']:.1f} | "
                  f"{b['best_mj']:.0f} | {b['deep_cut']} | {b['deep_ms']:.1f} | {b['deep_mj']:.0f} | {b['deep_gb']:.2f} | "
                  f"{b['all_server_ms']:.1f} | {b['all_device_ms']:.0f} ({'yes' if b['all_device_fits'] else 'no'}, "
                  f"{b['all_device_gb']:.1f} GB) |")
    (HERE / "best.md").write_text("\n".join(md) + "\n")
    scenario(opts)
    figures(rows)
    print("\n".join(md))


def scenario(opts) -> None:
    """The seed's scene: a ~1.3B model wholly on the phone against a 7B-class model split phone/cloud."""
    from splitinfer.plan import make_plan

    lines = ["| link | setting | phone GB | fits | TTFT ms | ms/token | phone mJ/token |", "|---|---|---|---|---|---|---|"]
    for link in LINKS:
        for small in SMALL:
            _, plan, _, _ = make_plan(small, "snapdragon_8_gen3", SERVER, link, opts)
            r = next(r for r in plan if r["mode"] == "all_device")
            lines.append(f"| {link} | {small} wholly on the phone (int4) | {r['device_memory_bytes'] / 1e9:.2f} | "
                         f"{r['fits']} | {r['ttft_ms']:.0f} | {r['e2e_ms_per_token']:.1f} | {r['device_mj_per_token']:.0f} |")
        shape, plan, best, _ = make_plan("qwen2_5_7b", "snapdragon_8_gen3", SERVER, link, opts)
        for r in (next(r for r in plan if r["mode"] == "split" and r["cut"] == shape.num_layers // 4), best,
                  next(r for r in plan if r["mode"] == "all_server")):
            label = "all on the server" if r["mode"] == "all_server" else f"qwen2_5_7b split at cut {r['cut']}"
            lines.append(f"| {link} | {label} | {r['device_memory_bytes'] / 1e9:.2f} | {r['fits']} | {r['ttft_ms']:.0f} | "
                         f"{r['e2e_ms_per_token']:.1f} | {r['device_mj_per_token']:.0f} |")
    (HERE / "scenario.md").write_text("\n".join(lines) + "\n")


def figures(rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex="col")
    for col, model in enumerate(MODELS):
        for link in LINKS:
            sel = [r for r in rows if r["model"] == model and r["hardware"] == "snapdragon_8_gen3"
                   and r["link"] == link and r["mode"] == "split"]
            cuts = [r["cut"] for r in sel]
            axes[0][col].plot(cuts, [r["e2e_ms_per_token"] for r in sel], label=link)
            axes[1][col].plot(cuts, [r["device_mj_per_token"] for r in sel], label=link)
        base = {r["mode"]: r for r in rows if r["model"] == model and r["hardware"] == "snapdragon_8_gen3"
                and r["link"] == "wifi" and r["mode"] != "split"}
        axes[0][col].axhline(base["all_device"]["e2e_ms_per_token"], color="k", ls="--", lw=1,
                             label="all on the phone")
        axes[0][col].axhline(base["all_server"]["e2e_ms_per_token"], color="grey", ls=":", lw=1,
                             label="all on the server")
        axes[0][col].set_title(f"{model}, Snapdragon 8 Gen 3 (int4) + H100 (modelled)")
        axes[0][col].set_ylabel("decode latency, ms/token")
        axes[1][col].set_ylabel("phone energy, mJ/token")
        axes[1][col].set_xlabel("cut (layers on the phone)")
        axes[0][col].legend()
    fig.tight_layout()
    fig.savefig(HERE / "latency_energy_vs_cut.png", dpi=110)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for phone in PHONES:
        sel = [r for r in rows if r["model"] == "llama3_1_8b" and r["hardware"] == phone and r["link"] == "5g"
               and r["mode"] == "split"]
        ax.plot([r["cut"] for r in sel], [r["device_ms_per_token"] for r in sel], label=phone)
    ax.set_xlabel("cut (layers on the phone)")
    ax.set_ylabel("phone compute, ms/token (decode)")
    ax.set_title("Llama-3.1-8B int4 device half per phone (modelled)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "phones.png", dpi=110)


if __name__ == "__main__":
    main()
