"""How a side waits for the other side's next message, as one setting: `WaitPolicy`.

    server = SplitServer(lm, [15], wait=WaitPolicy(busy_poll_ms=500, wake_early_ms=3))
    gen = remote_generator(lm, [15], server.url, wait=WaitPolicy(busy_poll_ms=500))
    WaitPolicy.mode("warm")   # bench_transport's modes: block, busy, warm, early

`busy_poll_ms` > 0 spins that long per wait instead of sleeping in poll; `rehearse` (with spinning)
runs the side's own step path on a tiny shadow model between polls (`splitinfer.transport.warm`);
`wake_early_ms` > 0 sleeps first and starts that spin only so long before the message is due. The
executor is `protocol.Waiter`. No torch or ZeroMQ here, so the CLI's `--help` stays fast.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from splitinfer.errors import ConfigError

_HINTS = {
    "busy_poll_ms": "0 = always wait in the kernel; e.g. 500 to spin while the other side computes",
    "wake_early_ms": "0 = spin from the start of each wait; e.g. 3 to sleep until 3 ms before the expected message",
}


def _check_ms(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ConfigError(f"{name}={value!r} must be a finite number of milliseconds >= 0 ({_HINTS[name]})")
    return float(value)


@dataclass(frozen=True)
class WaitPolicy:
    """How one side waits: sleep (the default), spin (`busy_poll_ms`), rehearse while spinning
    (`rehearse`, only with spinning) and sleep until `wake_early_ms` before the message is due."""

    busy_poll_ms: float = 0.0
    rehearse: bool = True
    wake_early_ms: float = 0.0

    MODES: ClassVar[tuple[str, ...]] = ("block", "busy", "warm", "early")

    def __post_init__(self) -> None:
        object.__setattr__(self, "busy_poll_ms", _check_ms(self.busy_poll_ms, "busy_poll_ms"))
        object.__setattr__(self, "wake_early_ms", _check_ms(self.wake_early_ms, "wake_early_ms"))
        if not isinstance(self.rehearse, bool):
            raise ConfigError(f"rehearse={self.rehearse!r} must be true or false (rehearse the step path on a "
                              "tiny shadow model while busy-polling; false = a plain spin)")

    @property
    def busy_poll_s(self) -> float:
        return self.busy_poll_ms / 1e3

    @property
    def wake_early_s(self) -> float:
        return self.wake_early_ms / 1e3

    @property
    def rehearses(self) -> bool:
        """True when a rehearsal is built and run: rehearsal is on and the side spins."""
        return self.rehearse and self.busy_poll_ms > 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_flags(self) -> list[str]:
        """The command-line flags that give this policy (`add_wait_arguments`' flags), e.g. to start
        `splitinfer serve` with it."""
        return ["--busy-poll-ms", repr(self.busy_poll_ms), "--rehearse" if self.rehearse else "--no-rehearse",
                "--wake-early-ms", repr(self.wake_early_ms)]

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The setting names, as in conf/server/default.yaml and the keyword arguments."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_config(cls, cfg: Any) -> WaitPolicy:
        """From a mapping or an object with (some of) the settings as keys or attributes: ServerConfig, a
        Hydra DictConfig, a dict. Missing or None settings keep their defaults; other keys are ignored."""
        get = cfg.get if isinstance(cfg, Mapping) else (lambda k, default=None: getattr(cfg, k, default))
        return cls(**{k: v for k in cls.names() if (v := get(k, None)) is not None})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WaitPolicy:
        """From parsed flags: busy_poll_ms, wake_early_ms, and rehearse (`--rehearse/--no-rehearse`) or
        no_rehearse (a plain `--no-rehearse` switch); flags left at None keep the defaults."""
        values = {k: getattr(args, k, None) for k in ("busy_poll_ms", "wake_early_ms", "rehearse")}
        if values["rehearse"] is None and getattr(args, "no_rehearse", None) is not None:
            values["rehearse"] = not args.no_rehearse
        return cls.from_config(values)

    @classmethod
    def mode(cls, name: str, *, busy_poll_ms: float = 500.0, wake_early_ms: float = 3.0) -> WaitPolicy:
        """A named mode: block (sleep), busy (plain spin), warm (spin and rehearse), early (sleep, then
        spin and rehearse from `wake_early_ms` before the message is due); `busy_poll_ms` is the spin
        window of all but block."""
        modes = {"block": lambda: cls(0.0, False, 0.0), "busy": lambda: cls(busy_poll_ms, False, 0.0),
                 "warm": lambda: cls(busy_poll_ms, True, 0.0), "early": lambda: cls(busy_poll_ms, True, wake_early_ms)}
        if name not in modes:
            raise ConfigError(f"wait mode {name!r} is not one of {', '.join(cls.MODES)}")
        return modes[name]()

    @classmethod
    def resolve(cls, wait: WaitPolicy | Mapping | str | None = None) -> WaitPolicy:
        """The one place a `wait=` argument becomes a WaitPolicy: a WaitPolicy, a mapping of settings, a
        mode name, or None (the default: sleep)."""
        if wait is None:
            return cls()
        if isinstance(wait, cls):
            return wait
        if isinstance(wait, str):
            return cls.mode(wait)
        if isinstance(wait, Mapping):
            unknown = sorted(set(wait) - set(cls.names()))
            if unknown:
                raise ConfigError(f"wait settings {unknown} are unknown; allowed: {list(cls.names())}")
            return cls(**wait)
        raise ConfigError(f"wait={wait!r} must be a WaitPolicy, a mapping of {list(cls.names())} or a mode name "
                          f"({', '.join(cls.MODES)})")


def add_wait_arguments(parser: argparse.ArgumentParser, defaults: Mapping | None = None, *,
                       awaits: str = "the next message") -> None:
    """`--busy-poll-ms`, `--rehearse/--no-rehearse`, `--wake-early-ms` (read back with
    `WaitPolicy.from_args`). Each defaults to `defaults`' value, else None (= keep the config's)."""
    d = defaults or {}
    parser.add_argument("--busy-poll-ms", type=float, default=d.get("busy_poll_ms"),
                        help=f"spin this many ms waiting for {awaits} before sleeping: lower per-step "
                             "latency for a busy core (default 0)")
    parser.add_argument("--rehearse", action=argparse.BooleanOptionalAction, default=d.get("rehearse"),
                        help="while busy-polling, rehearse the step path on a tiny shadow model so the next "
                             "step starts warm (default on; --no-rehearse for a plain spin)")
    parser.add_argument("--wake-early-ms", type=float, default=d.get("wake_early_ms"),
                        help=f"with --busy-poll-ms: sleep, and start spinning this many ms before {awaits} "
                             "is due (the median of recent waits): most of busy polling's latency at a "
                             "fraction of its CPU (default 0: spin at once)")
