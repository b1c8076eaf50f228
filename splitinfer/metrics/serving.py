"""Server load: how the per-token latency of a split generation grows with the clients one server serves.

A decode step of one client costs the server `s` seconds; between two of its steps a client spends
`Z = tpot - s` on its own half and the network. With N clients per server:

* unbatched server (steps one after another): the server needs N·s per round of N steps, so
  tpot(N) = max(Z + s, N·s) (the asymptotic bound of a closed queue: latency-bound, then server-bound);
* continuous batching (`SplitServer(batching=True)`): one forward serves all waiting clients, costing
  S(b) for a batch of b. In the worst case every client waits for the batch of all N, so
  tpot(N) = Z + s·S(N)/S(1), with S measured (`BatchProfile`, `measure_batch_profile`).

The measured profile's shape S(b)/S(1) is applied to the server time of any cut (a decode step is
bound by reading the weights of the server's layers, which a batch reads once); prefill contention is
not modelled (chunked prefill bounds it per step, see `splitinfer.transport.scheduler`).
`clients_per_server` inverts the model: the most clients that keep tpot within a budget.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

from splitinfer.errors import ConfigError


@dataclass(frozen=True)
class BatchProfile:
    """Measured time of one batched decode step, `step_s[i]` for `batch_sizes[i]` sessions."""

    batch_sizes: tuple[int, ...]
    step_s: tuple[float, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if (len(self.batch_sizes) != len(self.step_s) or not self.batch_sizes or self.batch_sizes[0] != 1
                or list(self.batch_sizes) != sorted(set(self.batch_sizes))
                or not all(s > 0 for s in self.step_s)):
            raise ConfigError(f"batch profile {self.source or ''}: batch sizes {list(self.batch_sizes)} must "
                              f"start at 1 and increase, with one time > 0 each (got {list(self.step_s)})")

    def step(self, b: float) -> float:
        """S(b): interpolated between measured sizes, extrapolated linearly past the largest."""
        xs, ys = self.batch_sizes, self.step_s
        if b <= xs[0]:
            return ys[0]
        for i in range(1, len(xs)):
            if b <= xs[i]:
                f = (b - xs[i - 1]) / (xs[i] - xs[i - 1])
                return ys[i - 1] + f * (ys[i] - ys[i - 1])
        if len(xs) == 1:
            return ys[0] * b
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return ys[-1] + slope * (b - xs[-1])

    def relative(self, b: float) -> float:
        """S(b) / S(1): how much longer a step of b sessions takes than a step of one."""
        return self.step(b) / self.step_s[0]

    def write_csv(self, path: str | Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["batch", "step_s"])
            for b, s in zip(self.batch_sizes, self.step_s, strict=True):
                w.writerow([b, f"{s:.6g}"])

    @classmethod
    def from_csv(cls, path: str | Path) -> BatchProfile:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"batch profile {p} does not exist; write one with "
                              "`python scripts/bench_serving.py` (batch_profile.csv) or measure_batch_profile()")
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
        try:
            pairs = sorted((int(r["batch"]), float(r["step_s"])) for r in rows)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"batch profile {p}: needs columns batch,step_s with numbers ({e})") from None
        return cls(tuple(b for b, _ in pairs), tuple(s for _, s in pairs), str(p))


def measure_batch_profile(lm, cut: int, sizes=(1, 2, 4, 8, 16, 32, 64), context: int = 64,
                          repeats: int = 5) -> BatchProfile:
    """Time one batched decode step through the server stages of `lm` cut at `cut` (`forward_batch`),
    for each batch size, every session holding `context` tokens; the median of `repeats`."""
    import statistics

    import torch

    from splitinfer.models import split_model
    from splitinfer.split import ServerSession
    from splitinfer.split.batch import forward_batch

    stages = split_model(lm, [cut])[1:]
    g = torch.Generator().manual_seed(0)
    times = []
    with torch.no_grad():
        for b in sizes:
            sessions = [ServerSession(stages) for _ in range(b)]
            for s in sessions:
                s.forward(torch.randn(1, context, lm.hidden_size, generator=g), 0)
            ts = []
            for _ in range(repeats + 1):  # the first is a warm-up
                x = torch.randn(b, 1, lm.hidden_size, generator=g)
                t0 = time.perf_counter()
                forward_batch(sessions, x)
                ts.append(time.perf_counter() - t0)
                for s in sessions:
                    s.rollback(context)
            times.append(statistics.median(ts[1:]))
    return BatchProfile(tuple(sizes), tuple(times), f"{lm.name} cut {cut}, context {context}, measured")


@dataclass(frozen=True)
class ServerLoad:
    """N clients per server, and how the server runs their steps (a measured batch profile, or None
    for a server that runs them one after another)."""

    clients: int
    profile: BatchProfile | None = None

    def __post_init__(self) -> None:
        if isinstance(self.clients, bool) or not isinstance(self.clients, int) or self.clients < 1:
            raise ConfigError(f"clients per server {self.clients!r}: must be an int >= 1")

    @property
    def batching(self) -> bool:
        return self.profile is not None

    def tpot(self, tpot_s: float, server_s: float) -> float:
        """Per-token latency of one client under this load, from its single-client `tpot_s` of which
        `server_s` is the server's step."""
        n = self.clients
        if self.profile is None:
            return max(tpot_s, n * server_s)
        return tpot_s + server_s * (self.profile.relative(n) - 1.0)

    def tokens_per_s(self, tpot_s: float, server_s: float) -> float:
        """Tokens per second the server produces for all its clients together."""
        return self.clients / self.tpot(tpot_s, server_s)


def clients_per_server(tpot_s: float, server_s: float, budget_s: float, profile: BatchProfile | None = None,
                       limit: int = 4096) -> int:
    """The most clients one server can take while each client's per-token latency stays within
    `budget_s` (0 if even one client exceeds it)."""
    if tpot_s > budget_s:
        return 0
    n = 1
    while n < limit and ServerLoad(n + 1, profile).tpot(tpot_s, server_s) <= budget_s:
        n += 1
    return n
