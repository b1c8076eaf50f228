"""The reliability report's figures: every scenario of `scenarios` at the given sizes, as one table of
(scenario, figure, value, ok) rows. `scripts/reliability_report.py` is the recipe that prints them;
`tests/reliability/` asserts on the same scenarios.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from splitinfer_testing.reliability import scenarios as sc
from splitinfer_testing.reliability.harness import Zygote

Row = tuple[str, str, str, bool]  # (scenario, figure, value, ok)


@dataclass
class Sizes:
    """How much of each scenario to run (the script's flags; defaults are tests/reliability's sizes)."""

    messages: int = 10_000
    auth_messages: int = 1000
    seed: int | None = None
    kills: int = 4
    kill_tokens: int = 40
    clients: int = 32
    steps: int = 50
    flood: int = 20_000
    churn: int = 300
    idle: float = 1.0


def run_report(lm, sizes: Sizes) -> list[Row]:
    """Hostile input (plain and with curve on), load, abuse, server kills, a killed client and the auth
    cases against forked servers on loopback; progress lines and failures go to stderr."""
    rows: list[Row] = []

    def row(scenario: str, figure: str, value, ok: bool = True) -> None:
        rows.append((scenario, figure, str(value), bool(ok)))

    with Zygote() as zygote:
        zygote.wait_ready()
        server = zygote.spawn(args=sc.SERVER_ARGS).wait_ready()

        print(f"hostile input: {sizes.messages} messages ...", file=sys.stderr, flush=True)
        h, consistent, served = sc.run_hostile(lm, server, sizes.messages, seed=sizes.seed,
                                               time_limit_s=max(600.0, sizes.messages / 50))
        rss = [b for _, b in h.rss]
        growth = (max(rss) - rss[0]) / 2**20
        row("hostile", "messages tried", h.tried)
        row("hostile", "answered with an error", h.answered_error, h.answered_error + h.ignored >= sizes.messages)
        row("hostile", "answered ok (turned out valid)", h.answered_ok)
        row("hostile", "ignored by design (frame > MAXMSGSIZE)", h.ignored, h.ignored == h.kinds.get("oversize", 0))
        row("hostile", "unanswered / malformed / internal", f"{h.no_reply} / {h.malformed_reply} / {h.internal}",
            h.bad == 0)
        row("hostile", "server crashes", 0 if h.server_alive else 1, h.server_alive)
        row("hostile", "server RSS start -> end (MiB)", f"{rss[0] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} "
            f"(max +{growth:.0f})", growth < 64)
        row("hostile", "good request served afterwards", consistent and served, consistent and served)
        row("hostile", "messages/s", f"{h.tried / h.seconds:.0f}")
        for plan, what in h.failures:
            print(f"  hostile failure: {plan} -> {what}", file=sys.stderr)
        with tempfile.TemporaryDirectory() as d:
            ha, consistent, alive, forbidden = sc.run_hostile_authenticated(lm, d, sizes.auth_messages)
        row("hostile", "curve on, allowed key: messages tried", ha.tried)
        row("hostile", "curve on: unanswered / malformed / internal / crashes",
            f"{ha.no_reply} / {ha.malformed_reply} / {ha.internal} / {0 if alive else 1}",
            ha.bad == 0 and alive and consistent and ha.answered_error + ha.ignored >= sizes.auth_messages)
        for plan, what in ha.failures:
            print(f"  hostile (curve) failure: {plan} -> {what}", file=sys.stderr)

        print(f"load: {sizes.clients} clients x {sizes.steps} steps ...", file=sys.stderr, flush=True)
        ld = sc.run_load(lm, server.url, clients=sizes.clients, steps=sizes.steps)
        print("abuse: a reply-ignoring flood and connection churn ...", file=sys.stderr, flush=True)
        ab = sc.run_abuse(lm, server, flood=sizes.flood, churn=sizes.churn)
        server.kill()
        row("load", "clients x decode steps", f"{ld.clients} x {ld.steps_per_client}")
        row("load", "errors", len(ld.errors) + ld.mismatched, not ld.errors and not ld.mismatched)
        row("load", "outputs equal to single-client reference", f"{ld.clients - ld.mismatched - len(ld.errors)}/"
            f"{ld.clients}", ld.mismatched == 0 and not ld.errors)
        row("load", "lost / duplicated steps", f"{ld.lost_steps} / {ld.duplicated_steps}",
            ld.lost_steps == ld.duplicated_steps == 0)
        row("load", "steps applied by server / expected", f"{ld.server_steps} / {ld.expected_steps}",
            ld.server_steps == ld.expected_steps)
        row("load", "resends / replays", f"{ld.resends} / {ld.replays}", ld.resends == ld.replays == 0)
        row("load", "aggregate tokens/s", f"{ld.tokens_per_s:.0f}")
        row("load", "step latency p50 / p99 (ms)", f"{ld.p50_ms:.1f} / {ld.p99_ms:.1f}")
        for e in ld.errors[:5]:
            print(f"  load error: {e}", file=sys.stderr)
        growth = (ab.rss_after - ab.rss_before) / 2**20
        row("abuse", "unread requests flooded / connections churned", f"{ab.flood_sent} / {ab.churn_connections}",
            ab.flood_sent == sizes.flood and ab.churn_connections == sizes.churn)
        row("abuse", "good client meanwhile: output equal, time (s)", f"{ab.good_identical}, {ab.good_seconds:.2f}",
            ab.good_identical and ab.server_alive)
        row("abuse", "server RSS growth (MiB)", f"{growth:+.0f}", growth < 32)

        print(f"faults: {sizes.kills} server SIGKILLs in one generation ...", file=sys.stderr, flush=True)
        k = sc.run_kill_restart(lm, zygote, kills=sizes.kills, new_tokens=sizes.kill_tokens)
    ok = not k.error and k.identical and k.kills == sizes.kills and sizes.kills - 1 <= k.replays <= sizes.kills
    row("faults", "server SIGKILLs survived in one generation", f"{k.kills if ok else 0}/{sizes.kills}", ok)
    row("faults", "killed at (client steps done)", ", ".join(map(str, k.kill_steps)))
    row("faults", "text equals the fault-free run", k.identical, k.identical)
    row("faults", "client resends / session replays", f"{k.resends} / {k.replays}")
    if k.error:
        print(f"  fault error: {k.error}", file=sys.stderr)

    print("faults: a client SIGKILLed mid-session ...", file=sys.stderr, flush=True)
    ev = sc.run_client_killed(lm, idle_timeout_s=sizes.idle)
    ok = (ev.sessions_after == 0 and ev.kv_bytes_after == 0 and ev.tensors_alive_after == 0
          and ev.session_object_freed and ev.served_after)
    row("faults", "killed client: session evicted after (s)", f"{ev.seconds_to_evict:.1f} (idle limit {sizes.idle:g})",
        ok and sizes.idle * 0.9 <= ev.seconds_to_evict <= sizes.idle + 5)
    row("faults", "killed client: KV bytes before -> after", f"{ev.kv_bytes_before} -> {ev.kv_bytes_after}",
        ev.kv_bytes_after == 0)
    row("faults", "killed client: KV tensors still alive", f"{ev.tensors_alive_after}/{ev.tensors_tracked}",
        ev.tensors_alive_after == 0)

    print("auth: CurveZMQ cases ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as d:
        au = sc.run_auth(lm, d)
    row("auth", "cases passed", f"{au.passed}/{len(au.cases)}", au.passed == len(au.cases) and au.server_alive)
    for name, expected, outcome, passed in au.cases:
        row("auth", f"{name} -> {expected}", outcome, passed)

    return rows


def print_table(rows: list[Row]) -> None:
    """The rows as a Markdown table with a yes/NO column."""
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    widths = [max(w, len(h)) for w, h in zip(widths, ("scenario", "figure", "value"), strict=True)]
    line = f"| {'scenario':<{widths[0]}} | {'figure':<{widths[1]}} | {'value':<{widths[2]}} | ok |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|----|")
    for scenario, figure, value, ok in rows:
        mark = "yes" if ok else "NO"
        print(f"| {scenario:<{widths[0]}} | {figure:<{widths[1]}} | {value:<{widths[2]}} | {mark:<3}|")




def write_csv(rows: list[Row], path: Path) -> None:
    """The rows as CSV (scenario, figure, value, ok)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scenario", "figure", "value", "ok"])
        w.writerows(rows)
