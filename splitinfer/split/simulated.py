"""A simulated network in front of any link: bandwidth, round-trip time and optional jitter.

    link = SimulatedLink(InProcessLink(server_half), bandwidth_bps=10e6, rtt_s=0.05, jitter_s=0.005)
    link = SimulatedLink(remote_link, bandwidth_bps=1e6, rtt_s=0.1, sleep=False)   # account only

Each step costs rtt + jitter + bytes_up*8/uplink + bytes_down*8/downlink on top of what the inner link
took, from the bytes the inner link really moved in that step. With `sleep=True` the delay is slept
(wall-clock experiments); with `sleep=False` it is only added to `simulated_s`.
"""

from __future__ import annotations

import random
import time

from splitinfer.errors import ConfigError
from splitinfer.split.link import LinkWrapper


class SimulatedLink(LinkWrapper):
    """Wraps a Link and delays each step as a network of the given bandwidth and round trip would."""

    def __init__(self, inner, *, bandwidth_bps: float, rtt_s: float = 0.0, jitter_s: float = 0.0,
                 downlink_bps: float | None = None, seed: int = 0, sleep: bool = True) -> None:
        for name, v in (("bandwidth_bps", bandwidth_bps), ("downlink_bps", downlink_bps or bandwidth_bps)):
            if not isinstance(v, int | float) or not v > 0:
                raise ConfigError(f"{name}={v!r}: must be a number of bits per second > 0")
        for name, v in (("rtt_s", rtt_s), ("jitter_s", jitter_s)):
            if not isinstance(v, int | float) or v < 0:
                raise ConfigError(f"{name}={v!r}: must be a number of seconds >= 0")
        super().__init__(inner)
        self.uplink_bps = float(bandwidth_bps)
        self.downlink_bps = float(downlink_bps or bandwidth_bps)
        self.rtt_s = float(rtt_s)
        self.jitter_s = float(jitter_s)
        self.sleep = sleep
        self._seed = seed
        self._rng = random.Random(seed)
        self.delays: list[float] = []  # simulated network seconds of each step

    @classmethod
    def from_profile(cls, inner, profile, *, jitter_s: float = 0.0, seed: int = 0,
                     sleep: bool = True) -> SimulatedLink:
        """From anything with uplink_mbps, downlink_mbps and rtt_ms (e.g. conf/link/*.yaml's LinkProfile)."""
        return cls(inner, bandwidth_bps=float(profile.uplink_mbps) * 1e6,
                   downlink_bps=float(profile.downlink_mbps) * 1e6, rtt_s=float(profile.rtt_ms) / 1e3,
                   jitter_s=jitter_s, seed=seed, sleep=sleep)

    @property
    def simulated_s(self) -> float:
        return sum(self.delays)

    def delay_for(self, up: int, down: int) -> float:
        """Seconds the network adds to one round trip that moves `up` and `down` bytes."""
        jitter = abs(self._rng.gauss(0.0, self.jitter_s)) if self.jitter_s else 0.0
        return self.rtt_s + jitter + up * 8 / self.uplink_bps + down * 8 / self.downlink_bps

    def step(self, enc, start: int) -> int:
        up0, down0 = self.inner.bytes_up, self.inner.bytes_down
        token = self.inner.step(enc, start)
        delay = self.delay_for(self.inner.bytes_up - up0, self.inner.bytes_down - down0)
        self.delays.append(delay)
        if self.sleep and delay > 0:
            time.sleep(delay)
        return token

    def reset(self) -> None:
        super().reset()
        self.delays = []
        self._rng = random.Random(self._seed)
