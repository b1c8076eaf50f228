"""Where a half computes: a torch device (`cpu`, `cuda`, `cuda:N`, `mps`) and a dtype (`float32`,
`bfloat16`, `float16`), checked up front with one clear line, and the stages moved there.

Each half has its own placement (a phone half on CPU in fp32, a server half on a GPU in bf16); the wire
carries what the codec says either way. Placing stages that are not already there copies them first,
so the model the halves were cut from, and the other half, keep their weights: when the halves sit on
different devices or dtypes each owns its copy of tied weights (an LM head tied to the device's token
embeddings is copied with the server's stage, never dragged away from the device). Only parameters
take the dtype: buffers such as rotary inverse frequencies stay in float32, as transformers computes
them, so a bf16 split and a bf16 unsplit model (`place_module` on the whole model) compute alike.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from splitinfer.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
                 "float": "float32"}
DEVICE_KINDS = ("cpu", "cuda", "mps")


def _use(what: str, value: str) -> str:
    """How to set `what` to `value`: a flag (`--server-device cpu`) or a config key (`placement.x.device=cpu`)."""
    return f"{what}={value}" if "." in what else f"--{what.replace('_', '-')} {value}"


def visible_devices() -> list[str]:
    """The torch devices this process can use, for error messages: ['cpu', 'cuda:0', ...]."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(spec: object, what: str = "device") -> torch.device:
    """`spec` as a usable torch device, or a ConfigError naming what is visible."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{what} {spec!r} is not a device: give one of {', '.join(DEVICE_KINDS)} "
                          "(or cuda:N)")
    try:
        dev = torch.device(spec.strip().lower())
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in DEVICE_KINDS:
        raise ConfigError(f"{what} {spec!r} is not a device splitinfer runs on: give cpu, cuda, cuda:N or mps "
                          f"(visible here: {', '.join(visible_devices())})")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"{what} {spec!r}: no CUDA GPU is visible to this process (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); visible: "
                              f"{', '.join(visible_devices())}. Use {_use(what, 'cpu')}, or run "
                              "where a GPU and a CUDA build of torch are")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"{what} {spec!r}: only {n} CUDA GPU(s) visible ({', '.join(visible_devices())})")
    if dev.type == "mps" and "mps" not in visible_devices():
        raise ConfigError(f"{what} {spec!r}: MPS (Apple GPU) is not available here; visible: "
                          f"{', '.join(visible_devices())}")
    return dev


def resolve_dtype(spec: object, what: str = "dtype") -> torch.dtype:
    """`spec` ('float32', 'bfloat16', 'float16', their short names, or a torch dtype) as a torch dtype."""
    if isinstance(spec, torch.dtype):
        if spec in DTYPES.values():
            return spec
        spec = str(spec).removeprefix("torch.")
    name = DTYPE_ALIASES.get(str(spec).strip().lower(), str(spec).strip().lower()) if isinstance(spec, str) else None
    if name not in DTYPES:
        raise ConfigError(f"{what} {spec!r} is not supported: choose one of {', '.join(DTYPES)} "
                          f"(or {', '.join(DTYPE_ALIASES)})")
    return DTYPES[name]


def check_runs(device: torch.device, dtype: torch.dtype, what: str = "dtype") -> None:
    """Refuse a dtype the device cannot compute in, before any weights move (one matmul tells)."""
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{what} bfloat16 is not supported by {torch.cuda.get_device_name(device)} "
                          f"({device}); use {_use(what, 'float16')} or float32")
    try:
        a = torch.ones(2, 2, device=device, dtype=dtype)
        float((a @ a).sum())
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{what} {str(dtype).removeprefix('torch.')} cannot run on {device}: "
                          f"{str(e).splitlines()[0][:160]}; use {_use(what, 'float32')}") from None


@dataclass(frozen=True)
class Placement:
    """A half's torch device and dtype, checked (see `Placement.of`)."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @classmethod
    def of(cls, device: object = "cpu", dtype: object = "float32", *, prefix: str = "") -> Placement:
        """Resolve and check a device and dtype; `prefix` names them in errors ('server_' -> --server-device,
        'placement.server_half.' -> placement.server_half.device=...)."""
        dev = resolve_device("cpu" if device is None else device, f"{prefix}device")
        dt = resolve_dtype("float32" if dtype is None else dtype, f"{prefix}dtype")
        check_runs(dev, dt, f"{prefix}dtype")
        return cls(dev, dt)

    @property
    def name(self) -> str:
        return f"{self.device}/{str(self.dtype).removeprefix('torch.')}"

    @property
    def is_default(self) -> bool:
        return self.device.type == "cpu" and self.dtype is torch.float32


def place_module(module: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    """Move `module` in place: parameters to the device and dtype, buffers to the device only."""
    module.to(placement.device)
    for p in module.parameters():
        if p.is_floating_point() and p.dtype is not placement.dtype:
            p.data = p.data.to(placement.dtype)
    return module


def is_placed(module: torch.nn.Module, placement: Placement) -> bool:
    return all(p.device == placement.device and (not p.is_floating_point() or p.dtype is placement.dtype)
               for p in module.parameters())


def place_stages(stages: Sequence[torch.nn.Module], placement: Placement | None) -> list[torch.nn.Module]:
    """The stages on `placement`: as they are when already there, else copies moved there (the model
    they were cut from keeps its weights, tied ones included). Copies of one chain share nothing with it."""
    stages = list(stages)
    if placement is None or all(is_placed(s, placement) for s in stages):
        return stages
    copies = copy.deepcopy(stages)  # one deepcopy: modules shared between the stages stay shared
    for s in copies:
        place_module(s, placement)
    return copies


def synchronize(device: torch.device | None) -> None:
    """Wait for the device's queued work, so a timer read after it counts the work (CPU: nothing)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()
