"""Load a sweep's `metrics.json` files and re-evaluate their latency for another link.

Reads only metrics files (and `conf/link/*.yaml`); never runs a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from splitinfer.configs import CONF_DIR, available, load_node  # noqa: F401 - CONF_DIR re-exported by report
from splitinfer.errors import ConfigError, NotFoundError
from splitinfer.metrics.latency import DeviceProfile, LinkProfile, estimate_latency
from splitinfer.report.measures import annotate, num  # noqa: F401 - num re-exported for the report modules


class ReportError(ConfigError):
    """No usable jobs in the folder, or an unknown column/constraint; the message says what to do."""


def _overrides(job_dir: Path) -> str | None:
    """The job's Hydra overrides (`.hydra/overrides.yaml`) as one sorted string, or None."""
    f = job_dir / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return None
    items = [
        line.strip()[2:].strip()
        for line in f.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("- ")
    ]
    return " ".join(sorted(items))


def load_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job's metrics under `sweep_dir` (searched recursively), sorted by codec then cut, with the
    derived columns of `splitinfer.report.measures.annotate` (quality bound, strongest attack)."""
    root = Path(sweep_dir).expanduser()
    if not root.is_dir():
        raise NotFoundError(
            f"{str(root)!r} is not a folder; give the multirun folder of a sweep "
            "(e.g. multirun/default_sweep/2026-01-01_12-00-00)"
        )
    rows = []
    for f in sorted(root.rglob("metrics.json")):
        try:
            row = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue  # a job killed while writing: skip it, the others still count
        if not isinstance(row, dict):
            continue
        row["job_dir"] = str(f.parent)
        ov = _overrides(f.parent)
        if ov is not None:
            row["overrides"] = ov
        if "device_memory_bytes" in row:
            row["device_memory_mb"] = row["device_memory_bytes"] / 1e6
        rows.append(row)
    if not rows:
        raise ReportError(
            f"no metrics.json under {str(root)!r}: did the sweep run (python -m splitinfer.run -m ...)?"
        )
    rows.sort(key=lambda r: (str(r.get("codec")), str(r.get("defense")), str(r.get("link")), r.get("cut", 0)))
    annotate(rows)
    return rows


def available_links() -> list[str]:
    """The link profiles in conf/link."""
    return available("link")


def load_link(name: str) -> LinkProfile:
    """A link profile from conf/link/NAME.yaml."""
    if name not in available("link"):
        raise ReportError(f"link {name!r} is not one of {available_links()} (conf/link/*.yaml)")
    node = load_node("link", name)
    node.pop("_target_", None)
    return LinkProfile(**node)


def with_latency(
    rows: list[dict], link: LinkProfile, slowdown: float | None = None, server_speedup: float = 1.0
) -> list[dict]:
    """Rows re-evaluated for another link/device slowdown (from their stored bytes and timings)."""
    out = []
    for r in rows:
        if str(r.get("topology") or "single") not in ("single", "None"):
            raise ReportError(
                f"a {r['topology']} job's latency is modelled per hop when it runs (splitinfer.topologies) and "
                "cannot be re-evaluated for another link here; run the sweep with that link (link=...) instead"
            )
        if "device_decode_s_per_token" not in r or "up_bytes_per_token_decode" not in r:
            raise ReportError(
                "these jobs have no timing/bandwidth metrics (metrics.timing / generation were "
                "off); latency for another link cannot be computed"
            )
        device = DeviceProfile(str(r.get("device")), slowdown if slowdown else r.get("device_slowdown", 1.0))
        prompt = int(r.get("latency_prompt_tokens", 128))
        out.append({**r, "link": link.name, **estimate_latency(r, link, device, prompt, server_speedup)})
    return out
