"""Probe, measured: does a server-guided second pass (finer step on the rows the server finds sensitive) pay?

    python experiments/codec_rate_distortion/issue28/probes/refine_probe.py [CUTS [FRAC]]   # -> refine_probe.txt
    (default cuts 1,15,29 and FRAC 0.2; 24 min on 2 loaded cores)

sensitivity_probe.py models it; this measures it through the real split path (`codec_bench.evaluate`, as a
sweep job does). Prefill only: a message of at least 16 tokens goes through per-message `ec25g` at `step`; the
server decodes it, runs its half forward and back once at what it received (labels drawn from its own
prediction), ranks the rows by sum_c F[t, c] * step_t^2 (the diagonal Fisher times the row's step, which the
message carries), and asks for one more bit on each value of its top FRAC of rows (outlier rows excluded: they
went in float16): which half of its quantization bin the value lies in. It then reconstructs those values at the
half-bin centre (noise variance / 4). Bits: the first message's wire bytes as measured, plus the refinement
counted as sent: 1 bit per refined value and a 256-bit row mask per message (a refinement is a fixed-length bit
string, so its size needs no coder to be exact). The second round trip's latency and the server's backward
pass are not counted here. One-token messages pass through unrefined (bits reported for prefill only).
"""

import math
import sys
from types import SimpleNamespace

import torch

from splitinfer.codecs import build_codec
from splitinfer.codecs.registry import OUTLIER_TOKEN_RATIO
from splitinfer.codecs.tokens import find_outlier_rows
from splitinfer.experiment import compute_reference
from splitinfer.metrics.codec_bench import corpus_spec, evaluate
from splitinfer.models import load_model, split_model

CUTS = [int(c) for c in (sys.argv[1] if len(sys.argv) > 1 else "1,15,29").split(",")]
FRAC = float(sys.argv[2]) if len(sys.argv) > 2 else 0.2
torch.set_num_threads(2)
torch.manual_seed(0)
lm = load_model("smollm2-135m-instruct")
stages = split_model(lm, list(range(lm.num_layers + 1)))


class Refined:
    """ec25g at `step`, then the server-guided refinement of its top `frac` rows (frac 0: plain ec25g)."""

    def __init__(self, step: float, cut: int, frac: float):
        self.inner, self.cut, self.frac, self.step = build_codec({"name": "ec25g", "step": step}), cut, frac, step
        self.name, self.wire_format = f"ec25g:step={step}+refine{frac:g}", self.inner.wire_format
        self.refine_bits = self.values = 0

    def encode(self, x):
        enc = self.inner.encode(x)
        self._x = x  # the device keeps its hidden state for the second pass
        return enc

    def decode(self, enc, dtype=None):
        got = self.inner.decode(enc)
        x = self._x.reshape(got.shape).float()
        if self.frac == 0 or got.shape[-2] < 16:
            return got
        h = got.float().reshape(-1, got.shape[-1])
        rows = h.shape[0]
        live = torch.ones(rows, dtype=torch.bool)
        live[find_outlier_rows(h, OUTLIER_TOKEN_RATIO)] = False
        cen = h[live] - h[live].mean(0)
        s = torch.zeros(rows)
        s[live] = self.step * cen.pow(2).mean(1).sqrt()  # the row steps (on the wire in the real message)
        with torch.enable_grad():  # server side: one backward at what it received
            leaf = got.float().reshape(1, rows, -1).clone().requires_grad_(True)
            out = leaf
            for st in stages[self.cut + 1:]:
                out = st(out)
            logits = out[0, :-1].float()
            labels = torch.distributions.Categorical(logits=logits.detach()).sample()
            torch.nn.functional.cross_entropy(logits, labels, reduction="sum").backward()
        score = (leaf.grad[0].double() ** 2).sum(1) * s.double() ** 2
        score[~live] = -1
        top = score.argsort(descending=True)[:round(self.frac * int(live.sum()))]
        # device side: one bit per value of those rows, which half of its bin; server: the half-bin centre
        xr = x.reshape(-1, x.shape[-1])[top]
        up = (xr >= h[top]).float() * 2 - 1
        h[top] = h[top] + up * s[top, None] / 4
        self.refine_bits += top.numel() * h.shape[1] + rows  # values + the row mask
        self.values += rows * h.shape[1]
        return h.reshape(got.shape).to(got.dtype)


args = SimpleNamespace(n_windows=16, seq_len=256, seed=0)
PLAN = [(0.21, 0.0), (0.25, 0.0), (0.29, 0.0), (0.29, FRAC), (0.35, FRAC), (0.41, FRAC)]
print("| corpus | cut | step | refined rows | bits prefill (first pass + refinement) | Δppl % [95 % CI] | KL (nats) |")
print("|---|---|---|---|---|---|---|")
seen: dict[tuple[str, int], dict[str, list[tuple[float, float]]]] = {}
for source in ("licenses", "readmes", "pydoc"):
    corpus = corpus_spec(args, source).build(lm)
    ref = compute_reference(lm, corpus)
    for cut in CUTS:
        for step, frac in PLAN:
            codec = Refined(step, cut, frac)
            m = evaluate(lm, cut, codec, corpus, ref, seed=0)
            extra = codec.refine_bits / codec.values if codec.values else 0.0
            seen.setdefault((source, cut), {"plain": [], "refined": []})["refined" if frac else "plain"].append(
                (m["kl_nats"], m["bits_per_value"] + extra))
            print(f"| {source} | {cut} | {step} | {frac:.0%} | {m['bits_per_value'] + extra:.2f} "
                  f"({m['bits_per_value']:.2f} + {extra:.2f}) | {m['delta_ppl_pct']:+.2f} "
                  f"[{m['delta_ppl_ci_lo']:+.2f}, {m['delta_ppl_ci_hi']:+.2f}] | {m['kl_nats']:.4f} |", flush=True)

print("\nAt equal KL (plain ec25g's bits interpolated linearly in log KL between its three steps; '-' outside their range):\n")
print("| corpus | cut | refined step: KL, bits saved at equal KL |")
print("|---|---|---|")
for (source, cut), d in seen.items():
    plain, cells = sorted(d["plain"]), []
    for kl, bits in sorted(d["refined"]):
        saved = "-"
        for (k0, b0), (k1, b1) in zip(plain, plain[1:], strict=False):
            if k0 <= kl <= k1:
                t = (math.log(kl) - math.log(k0)) / (math.log(k1) - math.log(k0))
                saved = f"{b0 + t * (b1 - b0) - bits:+.2f}"
        cells.append(f"KL {kl:.4f}: {saved}")
    print(f"| {source} | {cut} | " + "; ".join(cells) + " |")
