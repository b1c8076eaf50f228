"""Probe, an entropy estimate from the codes: would one-token steps gain from a model conditioned on the previous step?

    python experiments/codec_rate_distortion/issue28/probes/decode_context_probe.py   # -> decode_context_probe.txt (~4 min)

The issue lists "entropy models conditioned on the channel and on the previous step". The adaptive model of a
session (codecs/adaptive.py) already conditions on the channel (8 channel groups) and predicts each code from the
previous token's code (or a named history row). Here: the residual symbols of the one-token steps of the benchmark's
decode replay (2 prompts of 32 tokens, 16 steps each; ec25g_s:refs=true at step 0.21), and their empirical entropy
given the group, against given the group and the bucket of the same channel's |residual| at the previous step
(0, 1-2, 3-6, >= 7). Pooled static estimates, optimistic for both, more so for the 4x larger model.
"""

from types import SimpleNamespace

import numpy as np
import torch

from splitinfer.codecs import adaptive, build_codec
from splitinfer.experiment import compute_reference
from splitinfer.metrics.codec_bench import corpus_spec
from splitinfer.models import load_model

torch.set_num_threads(1)
lm = load_model("smollm2-135m-instruct")
args = SimpleNamespace(n_windows=16, seq_len=256, seed=0)
seen = []
_encode = adaptive.encode


def spy(q, st, ref, coder):
    """adaptive.encode, recording each step's residuals and channel groups."""
    seen.append(((q - adaptive.prediction(q, st, ref))[0].copy(), st.groups.copy()))
    return _encode(q, st, ref, coder)


adaptive.encode = spy


def entropy(x: np.ndarray) -> float:
    _, c = np.unique(x, return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def conditional(sym: np.ndarray, ctx: np.ndarray) -> float:
    return sum((ctx == v).sum() * entropy(sym[ctx == v]) for v in np.unique(ctx)) / len(sym)


for src in ("licenses", "readmes", "pydoc"):
    corpus = corpus_spec(args, src).build(lm)
    ref = compute_reference(lm, corpus)
    tp, g = corpus.prompts.shape[1], corpus.gen_tokens
    for cut in (1, 8, 15, 29):
        sym, grp, ctx = [], [], []
        for p in range(corpus.prompts.shape[0]):
            seen.clear()
            enc = build_codec("ec25g_s", step=0.21, refs=True)
            h = ref.gen_hidden[cut][p:p + 1]
            enc.encode_step(h[:, :tp])
            last = None
            for i in range(tp, tp + g - 1):
                n = len(seen)
                enc.encode_step(h[:, i:i + 1])
                if len(seen) > n:  # coded with the session model (not zstd / bytes)
                    res, groups = seen[-1]
                    if last is not None:
                        sym.append(np.clip(res, -31, 31))
                        grp.append(groups)
                        ctx.append(np.digitize(np.abs(last), [1, 3, 7]))
                    last = res
        s, gr, cx = np.concatenate(sym), np.concatenate(grp), np.concatenate(ctx)
        print(f"{src} cut {cut}: {len(s)} residuals; H(symbol | group) {conditional(s, gr):.3f}, "
              f"H(symbol | group, previous |residual| bucket) {conditional(s, gr * 4 + cx):.3f} bits", flush=True)
