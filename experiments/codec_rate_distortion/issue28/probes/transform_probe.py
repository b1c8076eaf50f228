"""Probe, measured: does a transform fitted on pydoc before the step quantizer pay on held-out text?

    python experiments/codec_rate_distortion/issue28/probes/transform_probe.py [CUTS [STEPS]]   # -> transform_probe.txt
    (default cuts 1,15,29 and steps 0.23,0.29: ~1 min per evaluation at cut 1 under load, ~15 s at cut 29)

Two orthonormal bases per cut, fitted on pydoc (8 windows x 256 tokens, attention-sink rows left out):
  klt     the eigenvectors of the centred hidden states' covariance (PCA, the Karhunen-Loeve transform);
          the step is on the row RMS, which the rotation keeps, so equal step means about equal L2 error;
  fisher  the eigenvectors of the Fisher matrix E[g g^T] of the hidden state (g = dNLL/dh, labels sampled
          from the model), each component scaled by (lambda / mean lambda)^(1/4) before quantizing: noise
          shaped away from the directions the loss is sensitive to (half way to the high-rate optimum).
Each is measured through the real split path (`codec_bench.evaluate`, as a sweep job) on licenses and
readmes, 16 windows each, against plain `ec25g` at the same steps: bits per value (prefill / one-token; the
basis is not on the wire: both peers would hold it) and Δppl with its 95 % interval. The per-message codec
`ec25g` stands in for the session codec `ec25g_s` (same quantizer, no cross-step state to wrap).
"""

import sys
from types import SimpleNamespace

import torch

from splitinfer.codecs import build_codec
from splitinfer.experiment import compute_reference
from splitinfer.metrics.codec_bench import corpus_spec, evaluate
from splitinfer.models import load_model, split_model

CUTS = [int(c) for c in (sys.argv[1] if len(sys.argv) > 1 else "1,15,29").split(",")]
STEPS = [float(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "0.23,0.29").split(",")]
torch.set_num_threads(2)
lm = load_model("smollm2-135m-instruct")
stages = split_model(lm, list(range(lm.num_layers + 1)))  # embed | layer 0 | ... | norm+head


class Transformed:
    """`inner` applied to (x @ basis) * scale; the inverse after decoding."""

    def __init__(self, inner, basis: torch.Tensor, scale: torch.Tensor, name: str):
        self.inner, self.basis, self.scale, self.name = inner, basis, scale, name
        self.wire_format = inner.wire_format

    def encode(self, x):
        return self.inner.encode((x.float() @ self.basis) * self.scale)

    def decode(self, enc, dtype=None):
        return (self.inner.decode(enc).float() / self.scale) @ self.basis.T


def fit(ref, cut: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    h = ref.window_hidden[cut]
    x = torch.cat([w[1:] - w[1:].mean(0) for w in h.float()])  # row 0: the attention sink
    _, pca = torch.linalg.eigh((x.T @ x).double() / len(x))
    fisher = torch.zeros(h.shape[-1], h.shape[-1], dtype=torch.float64)
    for w in range(h.shape[0]):
        hw = h[w:w + 1].clone().requires_grad_(True)
        out = hw
        for st in stages[cut + 1:]:
            out = st(out)
        logits = out[0, :-1].float()
        labels = torch.distributions.Categorical(logits=logits.detach()).sample()
        torch.nn.functional.cross_entropy(logits, labels, reduction="sum").backward()
        g = hw.grad[0, 1:].double()
        fisher += g.T @ g
    lam, vec = torch.linalg.eigh(fisher)
    lam = (lam.clamp(min=float(lam.max()) * 1e-6) / lam.mean()).float()
    ones = torch.ones(h.shape[-1])
    return {"klt": (pca.float(), ones), "fisher": (vec.float(), lam.pow(0.25))}


args = SimpleNamespace(n_windows=8, seq_len=256, seed=0)
tune = corpus_spec(args, "pydoc").build(lm)
tune_ref = compute_reference(lm, tune)
args.n_windows = 16
held = {}
for source in ("licenses", "readmes"):
    corpus = corpus_spec(args, source).build(lm)
    held[source] = (corpus, compute_reference(lm, corpus))
print("| corpus | cut | step | transform | bits prefill / one-token | Δppl % [95 % CI] | KL (nats) |")
print("|---|---|---|---|---|---|---|")
for cut in CUTS:
    with torch.enable_grad():
        bases = fit(tune_ref, cut)
    for source, (corpus, ref) in held.items():
        for step in STEPS:
            inner = build_codec({"name": "ec25g", "step": step})
            for name, codec in [("none", inner)] + [(n, Transformed(inner, b, s, n)) for n, (b, s) in bases.items()]:
                m = evaluate(lm, cut, codec, corpus, ref, seed=0)
                print(f"| {source} | {cut} | {step} | {name} | {m['bits_per_value']:.2f} / {m['bits_per_value_1tok']:.2f} "
                      f"| {m['delta_ppl_pct']:+.2f} [{m['delta_ppl_ci_lo']:+.2f}, {m['delta_ppl_ci_hi']:+.2f}] | "
                      f"{m['kl_nats']:.4f} |", flush=True)
