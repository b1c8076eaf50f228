"""`splitinfer serve`: load a model, cut it, serve the server half on a ZeroMQ ROUTER socket.

The one way to start a server process (benchmarks and the reliability harness start it so too:
`python -m splitinfer serve ...`). Settings come from conf/server/default.yaml (installed with the
package as `splitinfer.conf`, composed with Hydra), then `key=value` overrides, then flags (generated
from `ServerConfig`'s fields, splitinfer.transport.server_config):
`splitinfer serve port=6000 cut=10 device=cuda dtype=bfloat16` or `splitinfer serve --port 6000 --cut 10`.
The port, the cuts, the device and the dtype are checked before any weights load.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from splitinfer.errors import ConfigError, NotFoundError
from splitinfer.transport.server_config import (
    ServerConfig,
    add_server_arguments,
    check_port,
    config_from_args,
)

__all__ = ["add_server_arguments", "add_arguments", "compose_config", "conf_dir", "main", "run_server", "HELP"]

HELP = "serve the server stage of a cut model over ZeroMQ (tcp://HOST:PORT)"


def conf_dir() -> Path:
    """The folder of the server configs: `server/` of the installed `splitinfer.conf`, else of the
    checkout's top-level conf/ (see splitinfer.run.config_path)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("splitinfer.conf")
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if (Path(location) / "server").is_dir():
                return Path(location) / "server"
    return Path(__file__).resolve().parents[2] / "conf" / "server"


CONF_DIR = conf_dir()


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_server_arguments(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra overrides of conf/server/default.yaml, e.g. port=6000 cut=10")
    p.add_argument("--config-dir", default=str(CONF_DIR), help="folder holding the server config "
                   "(default: the installed conf/server)")
    p.add_argument("--config-name", default="default", help="server config file name (without .yaml)")


def compose_config(config_dir: str, config_name: str, overrides: list[str]):
    """The ServerConfig from a Hydra config file plus overrides; the file must exist (no silent defaults)."""
    path = Path(config_dir) / f"{config_name}.yaml"
    if not path.is_file():
        found = sorted(p.stem for p in Path(config_dir).glob("*.yaml")) if Path(config_dir).is_dir() else []
        raise NotFoundError(f"server config {path} does not exist"
                            + (f"; configs there: {', '.join(found)}" if found else "")
                            + ". Pass --config-dir/--config-name of an existing file (or reinstall splitinfer, "
                              "which ships conf/server/default.yaml)")
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        out = instantiate(cfg)
    except Exception as e:  # Hydra's override/composition errors: one clear line, not a traceback
        raise ConfigError(f"server config {config_name!r} in {config_dir} with overrides {overrides}: {e}") from None
    if not isinstance(out, ServerConfig):
        raise ConfigError(f"server config {path} builds a {type(out).__name__}, not a ServerConfig "
                          "(its _target_ must be splitinfer.transport.server_config.ServerConfig)")
    return out


def check_config(cfg: ServerConfig) -> list[int]:
    """Refuse a bad port, cut, device or dtype before any weights load; returns the cuts."""
    from splitinfer.models import peek_num_layers, validate_cuts

    cfg.port = check_port(cfg.port)
    cfg.placement()
    try:
        cuts = cfg.cuts()
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    num_layers = peek_num_layers(cfg.model)
    try:
        cuts = validate_cuts(cuts, num_layers)
    except ConfigError:
        raise
    except ValueError as e:  # validate_cuts' plain ValueError: bad input here
        raise ConfigError(f"cut {cfg.cut}: {e}") from None
    if cfg.u_shape or cfg.codec is not None:  # --next is checked (the next hop asked) when the server builds
        cfg.check_topology(num_layers)
    return cuts


def run_server(cfg: ServerConfig) -> int:
    """Build the server, bind, announce one line (tests and scripts wait for it), serve until SIGINT or
    SIGTERM."""
    import signal
    import threading
    import time

    import torch
    import zmq

    from splitinfer.transport.server import SplitServer

    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    server: SplitServer = cfg.build()
    torch.set_grad_enabled(False)
    try:
        server.start()
    except zmq.ZMQError as e:
        raise ConfigError(f"cannot bind {server.url}: {e}; is another server running there? "
                          "Pick another --port (0 = any free port)") from None
    print(f"splitinfer serve: {server.lm.name} (fingerprint {server.lm.fingerprint}) cut {server.cuts} on "
          f"{server.url}, {server.placement.name}, curve {'on' if server.curve else 'off'}, ready in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if not server.serving:
                break
    finally:
        server.stop()
    if server.error is not None:
        raise server.error
    return 0


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, compose_config(args.config_dir, args.config_name, args.overrides))
    check_config(cfg)
    return run_server(cfg)
