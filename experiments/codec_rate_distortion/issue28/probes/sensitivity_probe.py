"""Probe, modelled from measured gradients: how much could a fixed per-channel or per-position step save?

    python experiments/codec_rate_distortion/issue28/probes/sensitivity_probe.py [CUTS]   # -> sensitivity_probe.txt
    (default cuts 1,4,8,15,22,29; ~35 min on 2 loaded cores; the gradients are cached in /tmp, so printing the
    tables again takes seconds)

The step quantizer gives every value of a row the same noise, variance ~ (step * rms_r)^2 / 12. To second
order the KL it costs is 1/2 sum F[t, c] * noise[t, c], with F the diagonal Fisher of the hidden state
(E[g^2], g = dNLL/dh for labels sampled from the model, all later tokens' losses included). A step scaled by
a[c] (per channel) or a[t] (per position), with geometric mean 1, keeps the rate at high resolution and
multiplies that KL by sum w a^2 / sum w (w = F * rms^2). The best a ~ w^(-1/2) saves 1/2 log2(AM(w)/GM(w))
bits per value at equal KL. Weights are fitted on pydoc; the saving is then evaluated on licenses and readmes
with the pydoc weights (a clipped to [1/4, 4]). Outlier (sink) rows are left out: they travel in float16.
The second table models a two-pass prefill: the server ranks rows by the Fisher it can compute itself (at the
quantized hidden state it received, one label draw) and asks for a finer step on its top rows.
This is a model (diagonal, second order, high-rate); it says where a measured codec change could pay.
"""

import os
import sys
from types import SimpleNamespace

import torch

from splitinfer.codecs.registry import OUTLIER_TOKEN_RATIO
from splitinfer.codecs.tokens import find_outlier_rows
from splitinfer.experiment import compute_reference
from splitinfer.metrics.codec_bench import corpus_spec
from splitinfer.models import load_model, split_model

CUTS = [int(c) for c in (sys.argv[1] if len(sys.argv) > 1 else "1,4,8,15,22,29").split(",")]
SAMPLES = 2  # label draws per window
STEP = 0.23  # x row RMS: the step the server-side estimate sees
torch.set_num_threads(2)
torch.manual_seed(0)
lm = load_model("smollm2-135m-instruct")
stages = split_model(lm, list(range(lm.num_layers + 1)))
args = SimpleNamespace(n_windows=8, seq_len=256, seed=0)


def fisher(hs: dict[int, torch.Tensor], samples: int) -> dict[int, torch.Tensor]:
    """cut -> diagonal Fisher (T, C) of the hidden state hs[cut] (1, T, C), from `samples` label draws."""
    f2 = {c: 0.0 for c in hs}
    for _ in range(samples):
        leaves = {c: h.clone().requires_grad_(True) for c, h in hs.items()}
        loss = 0.0
        for c, h in leaves.items():  # one graph per cut, one backward for all
            x = h
            for st in stages[c + 1:]:
                x = st(x)
            logits = x[0, :-1].float()
            labels = torch.distributions.Categorical(logits=logits.detach()).sample()
            loss = loss + torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        loss.backward()
        for c, h in leaves.items():
            f2[c] = f2[c] + h.grad[0].double() ** 2 / samples
    return f2


def quantized(v: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the server holds: v centred, rounded to STEP x row RMS, un-centred (outlier rows exact), and rms^2."""
    mean = v[keep].mean(0)
    cen = v[keep] - mean
    rms2 = torch.zeros(v.shape[0], dtype=torch.float64)
    rms2[keep] = cen.double().pow(2).mean(1)
    steps = STEP * cen.pow(2).mean(1, keepdim=True).sqrt()
    out = v.clone()
    out[keep] = (cen / steps).round() * steps + mean
    return out, rms2


def weights(source: str) -> dict[int, torch.Tensor]:
    """cut -> (window, T, C + 2): w = F * rms^2 per value (0 on outlier rows), then rms^2, then the server's
    per-row estimate of sum_c w (one label draw, Fisher taken at the quantized hidden state it received)."""
    corpus = corpus_spec(args, source).build(lm)
    ref = compute_reference(lm, corpus)
    out = {c: [] for c in CUTS}
    for w in range(ref.window_hidden[0].shape[0]):
        hs = {c: ref.window_hidden[c][w:w + 1].float() for c in CUTS}
        f2 = fisher(hs, SAMPLES)
        kept, hq, r2 = {}, {}, {}
        for c in CUTS:
            v = hs[c][0]
            kept[c] = torch.ones(v.shape[0], dtype=torch.bool)
            kept[c][find_outlier_rows(v, OUTLIER_TOKEN_RATIO)] = False
            q, r2[c] = quantized(v, kept[c])
            hq[c] = q[None]
        fq = fisher(hq, 1)
        for c in CUTS:
            server = (fq[c] * r2[c][:, None]).sum(1, keepdim=True)
            out[c].append(torch.cat([f2[c] * r2[c][:, None], r2[c][:, None], server], 1))
        print(f"# {source}: window {w + 1} done", file=sys.stderr, flush=True)
    return {c: torch.stack(v) for c, v in out.items()}


def refine(w: torch.Tensor, frac: float, levels: int, oracle: bool) -> float:
    """Modelled saving (bits per value, at equal KL) of a second round trip: the server ranks the rows by its
    estimate (or, oracle, by the true weights), and the top `frac` of them get `levels` extra bits (step / 2^levels)."""
    true, est = w[..., :-2].sum(2).flatten(), w[..., -1].flatten()
    live = w[..., -2].flatten() > 0
    true, est = true[live], est[live]
    k = round(frac * true.numel())
    top = (true if oracle else est).argsort(descending=True)[:k]
    d = true.sum() - true[top].sum() * (1 - 4.0 ** -levels)
    return 0.5 * float(torch.log2(true.sum() / d)) - frac * levels


def row_rule(w: torch.Tensor, beta: float | None = None) -> tuple[float, torch.Tensor]:
    """Per-row step ~ rms^(-beta) on top of step * rms (beta fitted by least squares of log W_row on log rms^2)."""
    rw, r2 = w[..., :-2].sum(2), w[..., -2]
    m = r2 > 0
    x, y = r2[m].log(), rw[m].clamp(min=1e-30).log()
    if beta is None:
        beta = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()) / 2
    a = torch.zeros_like(r2)
    a[m] = r2[m].pow(-beta / 2)
    a[m] = a[m] / a[m].log().mean().exp()
    return beta, a


def best_scale(wv: torch.Tensor) -> torch.Tensor:
    a = wv.clamp(min=wv[wv > 0].min()).pow(-0.5)
    a = a / a.log().mean().exp()
    return a.clamp(0.25, 4.0) / a.clamp(0.25, 4.0).log().mean().exp()


def saving(wv: torch.Tensor, a: torch.Tensor) -> float:
    """Bits per value saved at equal modelled KL when the step is scaled by a (geometric mean 1)."""
    return -0.5 * float(torch.log2((wv * a ** 2).sum() / wv.sum()))


CACHE = "/tmp/sensitivity_probe_v2.pt"  # rerun the table without recomputing
if os.path.exists(CACHE):
    fit, held = torch.load(CACHE, weights_only=True)
else:
    fit = weights("pydoc")
    held = {s: weights(s) for s in ("licenses", "readmes")}
    torch.save((fit, held), CACHE)
print("| cut | axis | pydoc (in sample) | licenses (pydoc weights) | readmes (pydoc weights) | licenses (own weights) |")
print("|---|---|---|---|---|---|")
for c in CUTS:
    for axis, dims in (("channel", (0, 1)), ("position", (0, 2))):
        def agg(w, dims=dims):
            return w[..., :-2].sum(dim=dims)
        a = best_scale(agg(fit[c]))
        row = [saving(agg(fit[c]), a)] + [saving(agg(held[s][c]), a) for s in held]
        row.append(saving(agg(held["licenses"][c]), best_scale(agg(held["licenses"][c]))))
        print(f"| {c} | {axis} | " + " | ".join(f"{x:+.3f}" for x in row) + " |", flush=True)
    beta, a = row_rule(fit[c])
    row = [saving(fit[c][..., :-2].sum(2), a)]
    for s in ("licenses", "readmes", "licenses"):
        b, a2 = row_rule(held[s][c], beta if len(row) < 3 else None)
        row.append(saving(held[s][c][..., :-2].sum(2), a2))
    print(f"| {c} | rms^{-beta:+.2f} (row) | " + " | ".join(f"{x:+.3f}" for x in row) + " |", flush=True)
    # how unequal the rows are within a window (a per-row oracle, not implementable without labels)
    for s, w in (("pydoc", fit[c]), *((s, held[s][c]) for s in held)):
        rows = w[..., :-2].sum(2)
        rows = rows[rows > 0]
        full = w[..., :-2].sum(2).flatten()
        order = full.argsort(descending=True)
        half = int((full[order].cumsum(0) < full.sum() / 2).sum()) + 1
        top = ""
        if c == CUTS[0]:  # which tokens those rows hold
            ids = corpus_spec(args, s).build(lm).windows.flatten()
            top = "; top rows: " + " ".join(repr(lm.tokenizer.decode([int(ids[i])])) for i in order[:10])
        print(f"#   cut {c} {s}: per-row oracle {0.5 * float(torch.log2(rows.mean() / rows.log().mean().exp())):+.3f} bit; "
              f"modelled KL weight sum {float(w[..., :-2].sum()) / w.shape[0]:.3g} per window; half of it in "
              f"{half} of {full.numel()} rows{top}")

PLANS = ((0.05, 1), (0.1, 1), (0.2, 1), (0.1, 2), (0.2, 2))
print("\nServer-guided refinement, modelled: a second round trip sends `levels` more bits per value for the top rows")
print("the server ranks by its own one-draw Fisher estimate at the quantized state (oracle: by the true weights).")
print("Saving in bits per value at equal modelled KL, refinement bits paid; server estimate (oracle).\n")
print("| cut | corpus | " + " | ".join(f"top {f:.0%}, +{lv} bit" for f, lv in PLANS) + " |")
print("|---|---|" + "---|" * len(PLANS))
for c in CUTS:
    for s, w in (("pydoc", fit[c]), *((s, held[s][c]) for s in held)):
        cells = [f"{refine(w, f, lv, False):+.3f} ({refine(w, f, lv, True):+.3f})" for f, lv in PLANS]
        print(f"| {c} | {s} | " + " | ".join(cells) + " |", flush=True)
