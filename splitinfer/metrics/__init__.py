"""What a split costs: bandwidth, quality, compute/memory and Neurosurgeon-style latency figures.

Pure functions over tensors, byte counts and timings; nothing here loads models or knows Hydra, so
`report.py` can reuse the latency model on stored metrics. `codec_bench` (the codec benchmark's loops) runs the
split path on a model its caller loaded; it is not imported here.
"""

from splitinfer.metrics.bandwidth import bandwidth_metrics
from splitinfer.metrics.latency import DeviceProfile, LinkProfile, estimate_latency
from splitinfer.metrics.quality import QualityAccumulator, first_mismatch, generation_metrics
from splitinfer.stats import wilson_interval

__all__ = [
    "DeviceProfile",
    "LinkProfile",
    "QualityAccumulator",
    "bandwidth_metrics",
    "estimate_latency",
    "first_mismatch",
    "generation_metrics",
    "wilson_interval",
]
