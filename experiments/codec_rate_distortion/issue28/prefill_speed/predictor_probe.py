"""Would a predictor with a vectorizable inverse pay? Prediction weights k in {0, 4} only (0 or the previous code:
its inverse is a cumulative sum) against k in 0..4 (the codec's): static-rANS bytes of the ecNNg_s codes and the
time to undo each, on the speed run's SmolLM2 pydoc hidden states (2 windows x 256 tokens, cuts 8/15/22/29).

    OPENBLAS_NUM_THREADS=1 python predictor_probe.py     # from the repository root's venv
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bytes_before_after import hidden_states  # noqa: E402

from splitinfer.codecs import build_codec, entropy, rans  # noqa: E402
from splitinfer.codecs.session import _merge_meta  # noqa: E402


def only_0_or_4(q: np.ndarray) -> np.ndarray:
    qi = q.astype(np.int16)
    prev = np.zeros_like(qi)
    prev[1:] = qi[:-1]
    return np.where(np.abs(qi - prev).sum(0) < np.abs(qi).sum(0), 4, 0).astype(np.uint8)


def best_ms(f, n: int = 20) -> float:
    f()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


if __name__ == "__main__":
    torch.set_num_threads(1)
    hs = hidden_states()
    full = rans.predict_weights
    for name in ("ec37g_s", "ec25g_s"):
        size, n, t_table, t_cumsum = {"0..4": 0, "{0,4}": 0}, 0, [], []
        for cut in (8, 15, 22, 29):
            for w in range(2):
                msg = build_codec(name).encode(hs[cut][w:w + 1])
                meta = _merge_meta(msg.header["code"], msg.header["meta"])
                q = entropy.decode_static(*msg.buffers[-3:], 256 - meta.get("outlier_rows", 0), 576, 8, *meta["rans"])
                for key, weights in (("0..4", full), ("{0,4}", only_0_or_4)):
                    rans.predict_weights = weights
                    size[key] += sum(map(len, entropy.encode_static(q, 8)[:3]))
                rans.predict_weights = full
                n += q.size
                ks = full(q)
                prev = np.zeros(q.shape, np.int64)
                prev[1:] = q[:-1]
                res = q - ((ks.astype(np.int64) * prev + 2) >> 2)
                t_table.append(best_ms(lambda res=res, ks=ks: rans.unpredict(res.copy(), ks)))
                t_cumsum.append(best_ms(lambda res=res: np.cumsum(res, axis=0).astype(np.int8)))
        a, b = (8 * size[k] / n for k in ("0..4", "{0,4}"))
        print(f"{name}: k in 0..4 {a:.4f}, k in {{0,4}} {b:.4f} bits/value (+{b - a:.4f}); undo: table-driven "
              f"{np.median(t_table):.3f} ms, a cumsum of the whole window {np.median(t_cumsum):.3f} ms (median)")
