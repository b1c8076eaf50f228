"""The server's settings, defined once: `ServerConfig`'s fields give conf/server/default.yaml's keys
(Hydra builds a ServerConfig from it), `splitinfer serve`'s flags (generated here from the fields and
their `flag`/`help` metadata) and the arguments of the `SplitServer` it builds.

No torch here, so `splitinfer --help` stays fast; `limits()` and `build()` import what they need.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitinfer.errors import ConfigError

log = logging.getLogger(__name__)

MAX_PORT = 65535
DEFAULT_PORT = 5555
DEFAULT_MAX_MESSAGE_BYTES = 16 * 2**20  # = server.DEFAULT_MAX_MESSAGE_BYTES (checked by a test; no torch import here)


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


def opt(default: Any, help: str, *, flag: str | None = None, type: Any = None, choices=None) -> Any:  # noqa: A002
    """A ServerConfig field with what its command-line flag needs (`flag`: its name when not --<key>)."""
    meta = {"help": help, "flag": flag, "type": type, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass
class ServerConfig:
    """Everything `splitinfer serve` needs; conf/server/default.yaml gives every key."""

    model: str = opt("smollm2-135m-instruct", "model name or path")
    cut: Any = opt(15, "cut layer k (or a comma list for a chain)", type=str)
    host: str = opt("127.0.0.1", "address to bind")
    port: int = opt(DEFAULT_PORT, f"TCP port, 0..{MAX_PORT}; 0 = any free port", type=port_number)
    curve: str = opt("auto", "CurveZMQ encryption + client authentication; auto = on unless the host is loopback",
                     choices=("auto", "on", "off"))
    keys: str | None = opt(None, "key folder from `splitinfer keygen` (server.key_secret, allowed_clients/)", type=str)
    device: str = opt("cpu", "torch device of the server half: cpu, cuda, cuda:N or mps")
    dtype: str = opt("float32", "dtype the server half computes in: float32, bfloat16 or float16")
    max_sessions: int = opt(64, "sessions held at most")
    max_tokens_per_session: int = opt(2048, "tokens per session", flag="--max-tokens")
    max_step_tokens: int = opt(2048, "longest prefill chunk one step may carry")
    idle_timeout_s: float = opt(300.0, "seconds", flag="--idle-timeout")
    max_kv_bytes: int = opt(4 * 2**30, "KV-cache bytes of all sessions together")
    max_sessions_per_client: int = opt(0, "sessions one client (its CURVE key; its IP address with curve off) "
                                          "may hold; 0 = no quota")
    client_tokens_per_s: float = opt(0.0, "tokens per second one client may have computed (a token bucket of "
                                          "max(max step tokens, 2 s) tokens); 0 = no quota")
    max_message_bytes: int = opt(DEFAULT_MAX_MESSAGE_BYTES, "largest message (also ZeroMQ's MAXMSGSIZE)")
    threads: int | None = opt(None, "torch threads (default: all cores; 1 is faster on a small shared CPU)",
                              type=int)
    # the scheduler (splitinfer.transport.scheduler)
    batching: bool = opt(True, "run the queued steps of different sessions as one forward (--no-batching runs "
                               "steps one after another)")
    max_batch: int = opt(64, "most sessions in one batched forward")
    batch_wait_ms: float = opt(0.0, "after the first queued step, wait this long for more to batch (0: batch "
                                    "what is queued, never wait)")
    step_token_budget: int = opt(512, "tokens one scheduler turn computes: queued decode steps, then prefill "
                                      "chunks (batched across sessions)")
    # topologies (splitinfer.transport.relay, splitinfer.transport.topology)
    next: str | None = opt(None, "tcp://HOST:PORT of the next hop (a comma list of replicas): with --cut A,B this "
                                 "server runs layers [A, B) and forwards to it (it must serve from B)", type=str)
    codec: str | None = opt(None, "with --next: the codec of the hop to the next server (default: the one the "
                                  "device opened with)", type=str)
    hop_timeout_s: float = opt(5.0, "with --next: seconds to wait for the next hop's reply before resending",
                               flag="--hop-timeout")
    u_shape: bool = opt(False, "with --cut a,b: a U-shaped split: run layers [a, b) only and return the hidden "
                               "state (the device runs the rest and the head, and samples)")

    def limits(self):
        from splitinfer.transport.sessions import SessionLimits

        return SessionLimits(int(self.max_sessions), int(self.max_tokens_per_session), int(self.max_step_tokens),
                             float(self.idle_timeout_s), int(self.max_kv_bytes),
                             max_sessions_per_client=int(self.max_sessions_per_client),
                             client_tokens_per_s=float(self.client_tokens_per_s))

    def cuts(self) -> list[int]:
        if isinstance(self.cut, str):
            try:
                return [int(c) for c in self.cut.split(",")]
            except ValueError:
                raise ConfigError(f"cut {self.cut!r} is not an int or a comma-separated list of ints") from None
        return [int(c) for c in self.cut] if isinstance(self.cut, list | tuple) else [int(self.cut)]

    def placement(self):
        """The server half's device and dtype, checked (one line for a device that is not visible, an
        unknown dtype, a dtype the device cannot run)."""
        from splitinfer.split.placement import Placement

        return Placement.of(self.device, self.dtype)

    def curve_config(self):
        """Resolve curve=auto|on|off; warn when a non-loopback bind goes unencrypted."""
        from splitinfer.transport.server import CurveConfig, is_loopback

        mode = str(self.curve).lower()
        if mode not in ("auto", "on", "off", "true", "false"):
            raise ConfigError(f"curve={self.curve!r}: choose auto, on or off")
        loopback = is_loopback(self.host)
        on = mode in ("on", "true") or (mode == "auto" and not loopback)
        if not on:
            if not loopback:
                log.warning("binding %s without CurveZMQ: hidden states and tokens cross the network in the "
                            "clear and anyone can connect. Run `splitinfer keygen` and serve with --curve on.",
                            self.host)
            return None
        if not self.keys:
            raise ConfigError(f"CurveZMQ is on (curve={self.curve}, host {self.host}) but no key folder was given; "
                              "run `splitinfer keygen --dir keys` and pass --keys keys "
                              "(or --curve off to serve unencrypted, which is only safe on loopback)")
        keys = Path(self.keys)
        return CurveConfig(str(keys / "server.key_secret"), str(keys / "allowed_clients"))

    def build(self, lm=None):
        """The SplitServer these settings describe (loads the model unless `lm` is given)."""
        from splitinfer.models import load_model
        from splitinfer.transport.server import SplitServer

        curve = self.curve_config()
        placement = self.placement()  # refused before the weights load
        next_info = self.check_topology()  # a chain that does not fit is refused before the weights load
        lm = lm or load_model(self.model)
        return SplitServer(lm, self.cuts(), host=self.host, port=int(self.port), limits=self.limits(),
                           max_message_bytes=int(self.max_message_bytes), curve=curve,
                           batching=bool(self.batching), max_batch=int(self.max_batch),
                           batch_wait_ms=float(self.batch_wait_ms), step_token_budget=int(self.step_token_budget),
                           device=placement.device, dtype=placement.dtype,
                           engine=self.engine(lm, next_info, placement))

    def check_topology(self, num_layers: int | None = None) -> dict | None:
        """Refuse a topology that cannot work, before any weights load: --u-shape needs two cuts a < b < L,
        --next needs --cut A,B and a next server (asked now) that serves from B. Returns its `info`."""
        if num_layers is None:
            from splitinfer.models import peek_num_layers

            num_layers = peek_num_layers(self.model)
        cuts = self.cuts()
        if self.u_shape:
            if self.next:
                raise ConfigError("--u-shape and --next together: a U-shape server returns the hidden state to the "
                                  "device; give one of them")
            from splitinfer.split.ushape import check_ushape_cuts

            check_ushape_cuts(cuts, num_layers)
            return None
        if self.codec is not None and not self.next:
            raise ConfigError(f"--codec {self.codec} sets the codec of the hop to --next; without --next the device "
                              "names the codec (generate --codec)")
        if not self.next:
            return None
        from splitinfer.transport.relay import ask_info, check_next

        if self.codec is not None:
            from splitinfer.codecs import build_codec

            build_codec(self.codec)
        info = ask_info(self.next, timeout_s=min(float(self.hop_timeout_s), 5.0))
        check_next(cuts, info, num_layers, self.next)
        return info

    def engine(self, lm, next_info: dict | None, placement):
        """The server's engine for its topology: None (the usual server half), a relay hop or a U-shape."""
        if self.u_shape:
            from splitinfer.transport.topology import UShapeEngine

            return UShapeEngine(lm, self.cuts(), placement=placement)
        if self.next:
            from splitinfer.transport.relay import RelayEngine

            return RelayEngine(lm, self.cuts(), self.next, next_info, codec=self.codec, placement=placement,
                               timeout_s=float(self.hop_timeout_s))
        return None


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerConfig field, each defaulting to None (= keep the config's value)."""
    for f in dataclasses.fields(ServerConfig):
        meta = f.metadata
        if isinstance(f.default, bool):
            parser.add_argument(_flag(f), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{meta['help']} (default {str(f.default).lower()})")
            continue
        kind = meta.get("type") or type(f.default)
        parser.add_argument(_flag(f), dest=f.name, type=kind, choices=meta.get("choices"), default=None,
                            help=f"{meta['help']} (default {f.default})")


def config_from_args(args: argparse.Namespace, base: ServerConfig | None = None) -> ServerConfig:
    """`base` (the Hydra config) with every flag that was given set on it: flags win."""
    cfg = base or ServerConfig()
    for f in dataclasses.fields(ServerConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(cfg, f.name, v)
    return cfg
