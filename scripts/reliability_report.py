"""Reliability figures of the split server: hostile input, faults, load and authentication.

    python scripts/reliability_report.py                                   # the sizes of tests/reliability
    python scripts/reliability_report.py --messages 50000 --clients 64 --csv results/reliability.csv

Runs the same scenarios as `tests/reliability/` (`splitinfer_testing.reliability`; loopback only,
tiny-llama cut 2, every process it starts is killed on exit) and prints one table. Exit status 1 if any
check failed.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000, help="hostile messages to send (default 10000)")
    ap.add_argument("--auth-messages", type=int, default=1000,
                    help="hostile messages from an allowed client with curve on (default 1000)")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed for the hostile messages")
    ap.add_argument("--kills", type=int, default=4,
                    help="server SIGKILLs during one generation, the 2nd one during a replay (default 4)")
    ap.add_argument("--kill-tokens", type=int, default=40, help="tokens of that generation (default 40)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    ap.add_argument("--steps", type=int, default=50, help="decode steps per client (default 50)")
    ap.add_argument("--flood", type=int, default=20_000, help="requests from a client that never reads replies")
    ap.add_argument("--churn", type=int, default=300, help="connections that send one request and vanish")
    ap.add_argument("--idle", type=float, default=1.0, help="idle limit (s) for the killed-client case")
    ap.add_argument("--csv", type=Path, default=None, help="also write the table as CSV here")
    args = ap.parse_args(argv)
    for name in ("messages", "auth_messages", "kills", "kill_tokens", "clients", "steps", "flood", "churn"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if args.kills * 3 > args.kill_tokens:
        ap.error(f"--kill-tokens={args.kill_tokens} leaves too few steps for --kills={args.kills}; "
                 f"use at least {args.kills * 3}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import torch

    from splitinfer.models import tiny_model
    from splitinfer_testing.reliability import scenarios as sc
    from splitinfer_testing.reliability.harness import Zygote

    torch.set_num_threads(1)  # on a small shared CPU one thread is several times faster
    lm = tiny_model("llama")
    rows: list[tuple[str, str, str, bool]] = []  # (scenario, figure, value, ok)

    def row(scenario: str, figure: str, value, ok: bool = True) -> None:
        rows.append((scenario, figure, str(value), bool(ok)))

    t_all = time.monotonic()
    with Zygote() as zygote:
        zygote.wait_ready()
        server = zygote.spawn(args=sc.SERVER_ARGS).wait_ready()

        print(f"hostile input: {args.messages} messages ...", file=sys.stderr, flush=True)
        h, consistent, served = sc.run_hostile(lm, server, args.messages, seed=args.seed,
                                               time_limit_s=max(600.0, args.messages / 50))
        rss = [b for _, b in h.rss]
        growth = (max(rss) - rss[0]) / 2**20
        row("hostile", "messages tried", h.tried)
        row("hostile", "answered with an error", h.answered_error, h.answered_error + h.ignored >= args.messages)
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
            ha, consistent, alive, forbidden = sc.run_hostile_authenticated(lm, d, args.auth_messages)
        row("hostile", "curve on, allowed key: messages tried", ha.tried)
        row("hostile", "curve on: unanswered / malformed / internal / crashes",
            f"{ha.no_reply} / {ha.malformed_reply} / {ha.internal} / {0 if alive else 1}",
            ha.bad == 0 and alive and consistent and ha.answered_error + ha.ignored >= args.auth_messages)
        for plan, what in ha.failures:
            print(f"  hostile (curve) failure: {plan} -> {what}", file=sys.stderr)

        print(f"load: {args.clients} clients x {args.steps} steps ...", file=sys.stderr, flush=True)
        ld = sc.run_load(lm, server.url, clients=args.clients, steps=args.steps)
        print("abuse: a reply-ignoring flood and connection churn ...", file=sys.stderr, flush=True)
        ab = sc.run_abuse(lm, server, flood=args.flood, churn=args.churn)
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
            ab.flood_sent == args.flood and ab.churn_connections == args.churn)
        row("abuse", "good client meanwhile: output equal, time (s)", f"{ab.good_identical}, {ab.good_seconds:.2f}",
            ab.good_identical and ab.server_alive)
        row("abuse", "server RSS growth (MiB)", f"{growth:+.0f}", growth < 32)

        print(f"faults: {args.kills} server SIGKILLs in one generation ...", file=sys.stderr, flush=True)
        k = sc.run_kill_restart(lm, zygote, kills=args.kills, new_tokens=args.kill_tokens)
    ok = not k.error and k.identical and k.kills == args.kills and args.kills - 1 <= k.replays <= args.kills
    row("faults", "server SIGKILLs survived in one generation", f"{k.kills if ok else 0}/{args.kills}", ok)
    row("faults", "killed at (client steps done)", ", ".join(map(str, k.kill_steps)))
    row("faults", "text equals the fault-free run", k.identical, k.identical)
    row("faults", "client resends / session replays", f"{k.resends} / {k.replays}")
    if k.error:
        print(f"  fault error: {k.error}", file=sys.stderr)

    print("faults: a client SIGKILLed mid-session ...", file=sys.stderr, flush=True)
    ev = sc.run_client_killed(lm, idle_timeout_s=args.idle)
    ok = (ev.sessions_after == 0 and ev.kv_bytes_after == 0 and ev.tensors_alive_after == 0
          and ev.session_object_freed and ev.served_after)
    row("faults", "killed client: session evicted after (s)", f"{ev.seconds_to_evict:.1f} (idle limit {args.idle:g})",
        ok and args.idle * 0.9 <= ev.seconds_to_evict <= args.idle + 5)
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

    total_s = time.monotonic() - t_all
    print_table(rows)
    print(f"\n{sum(r[3] for r in rows)}/{len(rows)} checks passed in {total_s:.0f} s "
          f"(tiny-llama cut 2 on loopback; {'all ok' if all(r[3] for r in rows) else 'FAILURES above'})")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["scenario", "figure", "value", "ok"])
            w.writerows(rows)
    return 0 if all(r[3] for r in rows) else 1


def print_table(rows) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    widths = [max(w, len(h)) for w, h in zip(widths, ("scenario", "figure", "value"), strict=True)]
    line = f"| {'scenario':<{widths[0]}} | {'figure':<{widths[1]}} | {'value':<{widths[2]}} | ok |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|----|")
    for scenario, figure, value, ok in rows:
        mark = "yes" if ok else "NO"
        print(f"| {scenario:<{widths[0]}} | {figure:<{widths[1]}} | {value:<{widths[2]}} | {mark:<3}|")


if __name__ == "__main__":
    sys.exit(main())
