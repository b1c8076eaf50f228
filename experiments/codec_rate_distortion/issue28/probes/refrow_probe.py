"""Probe, modelled from the codes: how much could a prefill row coded against an earlier row of its window save?

    python experiments/codec_rate_distortion/issue28/probes/refrow_probe.py licenses,readmes 1,8,15,22,29
    # -> refrow_probe.txt (~3 min)

Per corpus and cut, 16 windows x 256 tokens (seed 0), the codes of a 0.21 x row-RMS step after centring (outlier
rows left out, as the codec does). Per-channel empirical entropy (pooled over the windows) of: the codes; the
better per row of the codes and their difference to the previous row (a crude stand-in for the codec's
previous-token prediction); and that, or for rows where it is smaller in L1, the difference to the nearest earlier
row of the window (exhaustive L1 search). An entropy estimate (no table or side-data cost, per-channel
tables slightly optimistic), not a codec: it said where codecs/refrows.py could pay, and the codec's measured
figures are in the README (issue 28, fifth pass).
"""

import sys
from types import SimpleNamespace

import numpy as np
import torch

from splitinfer.codecs.registry import OUTLIER_TOKEN_RATIO
from splitinfer.codecs.tokens import find_outlier_rows
from splitinfer.experiment import compute_reference
from splitinfer.metrics.codec_bench import corpus_spec
from splitinfer.models import load_model

torch.set_num_threads(2)
lm = load_model("smollm2-135m-instruct")
args = SimpleNamespace(n_windows=16, seq_len=256, seed=0)
STEP = 0.21


def ent(x: np.ndarray) -> float:
    """Empirical entropy (bits) of an integer array."""
    _, c = np.unique(x, return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


for src in sys.argv[1].split(","):
    ref = compute_reference(lm, corpus_spec(args, src).build(lm))
    for cut in [int(c) for c in sys.argv[2].split(",")]:
        Q, P, R, used = [], [], [], []
        for w in range(args.n_windows):
            v = ref.window_hidden[cut][w].float()
            keep = torch.ones(v.shape[0], dtype=torch.bool)
            keep[find_outlier_rows(v, OUTLIER_TOKEN_RATIO)] = False
            v = v[keep]
            v = v - v.mean(0)
            s = STEP * v.pow(2).mean(1, keepdim=True).sqrt()
            q = (v / s).round().numpy().astype(np.int64)
            prev = np.vstack([np.zeros((1, q.shape[1]), np.int64), q[:-1]])
            p = q - prev
            best = q.copy()
            u = 0
            for t in range(1, len(q)):
                d = np.abs(q[t][None] - q[:t]).sum(1)
                j = int(d.argmin())
                if d[j] < min(np.abs(q[t]).sum(), np.abs(p[t]).sum()):
                    best[t] = q[t] - q[j]
                    u += 1
                elif np.abs(p[t]).sum() < np.abs(q[t]).sum():
                    best[t] = p[t]
            Q.append(q)
            P.append(np.where(np.abs(p).sum(1, keepdims=True) < np.abs(q).sum(1, keepdims=True), p, q))
            R.append(best)
            used.append(u / len(q))
        Q, P, R = (np.vstack(x) for x in (Q, P, R))
        hq, hp, hr = (np.mean([ent(a[:, c]) for c in range(a.shape[1])]) for a in (Q, P, R))
        print(f"{src} cut {cut}: per-channel entropy raw {hq:.3f}, best of raw/prev-row {hp:.3f}, "
              f"+ named earlier row {hr:.3f} bits; rows using a named row {np.mean(used):.0%}", flush=True)
