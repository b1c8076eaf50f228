"""`splitinfer serve`: load a model, cut it, serve the server stage on a ZeroMQ ROUTER socket.

Settings come from conf/server/default.yaml (composed with Hydra), then `key=value` overrides, then
flags: `splitinfer serve port=6000 cut=10` or `splitinfer serve --port 6000 --cut 10`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "serve the server stage of a cut model over ZeroMQ (tcp://HOST:PORT)"

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "server"


def add_server_arguments(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    d = defaults or {}
    parser.add_argument("--model", default=d.get("model"), help="model name or path")
    parser.add_argument("--cut", default=d.get("cut"), help="cut layer k (or a comma list for a chain)")
    parser.add_argument("--host", default=d.get("host"), help="address to bind")
    parser.add_argument("--port", type=int, default=d.get("port"), help="TCP port; 0 = random")
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_server_arguments(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra overrides of conf/server/default.yaml, e.g. port=6000 cut=10")
    p.add_argument("--config-dir", default=str(CONF_DIR), help="folder holding the server config")
    p.add_argument("--config-name", default="default", help="server config file name (without .yaml)")


def compose_config(config_dir: str, config_name: str, overrides: list[str]):
    """The ServerConfig from a Hydra config file plus overrides; plain defaults when there is no file."""
    from splitinfer.transport.server import ServerConfig

    if not (Path(config_dir) / f"{config_name}.yaml").is_file():
        if overrides:
            raise ValueError(f"overrides {overrides} need {config_dir}/{config_name}.yaml, which does not exist")
        return ServerConfig()
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        return instantiate(cfg)
    except Exception as e:  # Hydra's override/composition errors: one clear line, not a traceback
        raise ValueError(f"server config {config_name!r} in {config_dir} with overrides {overrides}: {e}") from None


def main(args: argparse.Namespace) -> int:
    from splitinfer.transport.server import config_from_args, run_server

    cfg = compose_config(args.config_dir, args.config_name, args.overrides)
    return run_server(config_from_args(args, cfg))
