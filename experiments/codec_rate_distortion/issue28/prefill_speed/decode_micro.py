"""Decode-only micro-benchmark of one prefill window (SmolLM2 cut 15, pydoc, 256 x 576), one core.

    python -c "..."  # first save the window: torch.save(ref.window_hidden[15][:1], "/tmp/h15.pt")
    for t in BEFORE AFTER; do OPENBLAS_NUM_THREADS=1 PYTHONPATH=$t python decode_micro.py; done   # -> decode_micro.txt

300 decodes of the same key message per codec; best and median. The tree imported is printed first.
"""

import os
import statistics
import time

import torch

import splitinfer
from splitinfer.codecs import build_codec

torch.set_num_threads(1)
h = torch.load("/tmp/h15.pt", weights_only=True)  # tensors only, never code
out = []
for name in ("ec25g_s", "ec37g_s"):
    c = build_codec(name)
    enc = c.encode(h)
    ts = []
    for _ in range(300):
        t0 = time.perf_counter()
        c.decode(enc)
        ts.append(time.perf_counter() - t0)
    mb = h.numel() * 4 / 1e6
    out.append(f"{name} decode best {1e3 * min(ts):.3f} ms ({mb / min(ts):.0f} MB/s) median "
               f"{1e3 * statistics.median(ts):.3f} ms")
print(os.path.dirname(splitinfer.__file__), "|", " | ".join(out))
