"""The server's command-line flags, shared by `splitinfer serve` (serve_cmd) and
`python -m splitinfer.transport.server` (server.main).

A module of its own, importing neither: the command imports the server, the server's `main` imports
these flags, and nothing imports back (no serve_cmd <-> server cycle). No torch here, so
`splitinfer --help` stays fast.
"""

from __future__ import annotations

import argparse

from splitinfer.errors import ConfigError

MAX_PORT = 65535


def check_port(port: object, name: str = "port") -> int:
    """The port as an int in 0..65535 (0 = the OS picks a free one); ConfigError otherwise."""
    if isinstance(port, bool) or not isinstance(port, int | str):
        raise ConfigError(f"{name} {port!r} is not a TCP port: give an int in 0..{MAX_PORT} (0 = any free port)")
    try:
        value = int(port)
    except ValueError:
        raise ConfigError(f"{name} {port!r} is not a TCP port: give an int in 0..{MAX_PORT} "
                          "(0 = any free port)") from None
    if not 0 <= value <= MAX_PORT:
        raise ConfigError(f"{name} {value} is out of range: give a TCP port in 0..{MAX_PORT} (0 = any free port)")
    return value


def port_number(text: str) -> int:
    """argparse type for --port: refuses what is not a TCP port before anything loads."""
    try:
        return check_port(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("port ")) from None


def add_server_arguments(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """The server's flags; each defaults to None (= keep the config's value) unless `defaults` names one."""
    d = defaults or {}
    parser.add_argument("--model", default=d.get("model"), help="model name or path")
    parser.add_argument("--cut", default=d.get("cut"), help="cut layer k (or a comma list for a chain)")
    parser.add_argument("--host", default=d.get("host"), help="address to bind")
    parser.add_argument("--port", type=port_number, default=d.get("port"), help=f"TCP port, 0..{MAX_PORT}; 0 = any free port")
    parser.add_argument("--curve", choices=("auto", "on", "off"), default=d.get("curve"),
                        help="CurveZMQ encryption + client authentication; auto = on unless the host is loopback")
    parser.add_argument("--keys", default=d.get("keys"),
                        help="key folder from `splitinfer keygen` (server.key_secret, allowed_clients/)")
    parser.add_argument("--max-sessions", type=int, default=d.get("max_sessions"))
    parser.add_argument("--max-tokens", type=int, default=d.get("max_tokens_per_session"),
                        help="tokens per session")
    parser.add_argument("--idle-timeout", type=float, default=d.get("idle_timeout_s"), help="seconds")
    parser.add_argument("--max-kv-bytes", type=int, default=d.get("max_kv_bytes"),
                        help="KV-cache bytes of all sessions together")
    parser.add_argument("--max-message-bytes", type=int, default=d.get("max_message_bytes"))
    parser.add_argument("--threads", type=int, default=d.get("threads"),
                        help="torch threads (default: all cores; 1 is faster on a small shared CPU)")
    parser.add_argument("--busy-poll-ms", type=float, default=d.get("busy_poll_ms"),
                        help="after each message, spin this many ms waiting for the next before sleeping: "
                             "lower per-step latency for a busy core (default 0)")
    parser.add_argument("--rehearse", action=argparse.BooleanOptionalAction, default=d.get("rehearse"),
                        help="while busy-polling, rehearse the step path on a tiny shadow model so the next "
                             "step starts warm (default on; --no-rehearse for a plain spin)")
    parser.add_argument("--wake-early-ms", type=float, default=d.get("wake_early_ms"),
                        help="with --busy-poll-ms: sleep between requests and start spinning this many ms "
                             "before the next one is due (the median of recent waits): most of busy "
                             "polling's latency at a fraction of its CPU (default 0: spin at once)")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=d.get("batching"),
                        help="run the queued decode steps of different sessions as one forward (default on; "
                             "--no-batching runs steps one after another)")
    parser.add_argument("--max-batch", type=int, default=d.get("max_batch"),
                        help="most sessions in one batched forward (default 64)")
    parser.add_argument("--batch-wait-ms", type=float, default=d.get("batch_wait_ms"),
                        help="after the first queued step, wait this long for more to batch (default 0: "
                             "batch what is queued, never wait)")
    parser.add_argument("--step-token-budget", type=int, default=d.get("step_token_budget"),
                        help="tokens one scheduler turn computes: queued decode steps, then prefill chunks "
                             "(default 256; a long prompt is computed in chunks between decode batches)")
    parser.add_argument("--max-sessions-per-client", type=int, default=d.get("max_sessions_per_client"),
                        help="sessions one client (its CURVE key; its IP address with curve off) may hold; "
                             "0 = no quota (default)")
    parser.add_argument("--client-tokens-per-s", type=float, default=d.get("client_tokens_per_s"),
                        help="tokens per second one client may have computed (a token bucket of "
                             "max(max step tokens, 2 s) tokens); 0 = no quota (default)")
