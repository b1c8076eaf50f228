"""Probe, modelled from measured gradients: can the device predict which rows are sensitive from the row itself?

    python experiments/codec_rate_distortion/issue28/probes/sensitivity_probe.py   # first: its gradient cache
    python experiments/codec_rate_distortion/issue28/probes/row_predictor_probe.py  # -> row_predictor_probe.txt

The sensitivity probe found half of a window's modelled KL weight in 4-15 % of its rows and a per-row oracle
worth 0.6-1.1 bit, but fixed rules (per channel, position, row RMS) fitted on pydoc recovered <= 0.13 bit on the
held-out corpora. Here a ridge regression from what the device holds (the row's values over its RMS, log RMS,
log position) to the log of the row's weight (w = sum over channels of Fisher x rms^2, sensitivity_probe's
cache: 8 windows x 256 tokens per corpus) is fitted on pydoc (lambda by a split of pydoc's rows), and the
per-row step ~ predicted w^(-1/2) (geometric mean 1 on pydoc, clipped to [1/4, 4]) is scored in the same
high-rate model: B = 1/2 log2 mean(w a^2) - mean log2 a is the bits a corpus needs, up to a constant, for a
fixed modelled KL. "base" is a = 1 (today's codec), "oracle" a ~ w^(-1/2) from the corpus's own weights.
Reported: the correlation r of predicted and true log w (in sample on pydoc, held out on the others), and B
for base / rule / oracle per corpus.
"""

from types import SimpleNamespace

import torch

from splitinfer.experiment import compute_reference
from splitinfer.metrics.codec_bench import corpus_spec
from splitinfer.models import load_model

torch.set_num_threads(2)
fit, held = torch.load("/tmp/sensitivity_probe_v2.pt", weights_only=True)  # tensors only, never code
lm = load_model("smollm2-135m-instruct")
args = SimpleNamespace(n_windows=8, seq_len=256, seed=0)  # sensitivity_probe.py's windows
CUTS = [1, 4, 8, 15, 22, 29]
LAMBDAS = (1e-1, 1, 10, 100, 1e3, 1e4, 1e5)
W = {"pydoc": fit, **held}
hid = {}
for s in W:
    ref = compute_reference(lm, corpus_spec(args, s).build(lm))
    hid[s] = {c: ref.window_hidden[c].float() for c in CUTS}


def features(h: torch.Tensor) -> torch.Tensor:
    """(N, T, C) hidden states -> (N*T, C + 3): the row over its RMS, log RMS, log position, 1."""
    n, t, c = h.shape
    v = h.reshape(-1, c)
    pos = torch.arange(t).repeat(n).float()
    rms = (v - v.mean(1, keepdim=True)).pow(2).mean(1).sqrt()
    return torch.cat([v / rms[:, None], rms.log()[:, None], (pos + 1).log()[:, None], torch.ones(len(v), 1)], 1)


def bits(w: torch.Tensor, a: torch.Tensor) -> float:
    return 0.5 * float(torch.log2((w * a * a).mean())) - float(torch.log2(a).mean())


def ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    eye[-1, -1] = 0  # the intercept is not shrunk
    return torch.linalg.solve(x.T @ x + lam * eye, x.T @ y)


print("| cut | lambda | corpus | r (predicted vs true log w) | bits: base | rule | oracle |")
print("|---|---|---|---|---|---|---|")
for c in CUTS:
    data = {}
    for s in W:
        w = W[s][c]
        rw, live = w[..., :-2].sum(2).flatten(), w[..., -2].flatten() > 0  # outlier rows: not coded by step
        data[s] = (features(hid[s][c])[live].double(), rw[live].double())
    x, rw = data["pydoc"]
    y = rw.clamp(min=rw[rw > 0].min()).log()
    half = len(y) // 2  # lambda: fitted on the first half of pydoc's rows, scored on the second
    lam = min(LAMBDAS, key=lambda lm_: float((y[half:] - x[half:] @ ridge(x[:half], y[:half], lm_)).var()))
    beta = ridge(x, y, lam)
    norm = (-(x @ beta) / 2).exp().log().mean().exp()  # geometric mean 1 on pydoc, kept for the other corpora
    for s, (xs, ws) in data.items():
        ys = ws.clamp(min=ws[ws > 0].min()).log()
        pred = xs @ beta
        r = float(torch.corrcoef(torch.stack([pred, ys]))[0, 1])
        a = ((-pred / 2).exp() / norm).clamp(0.25, 4)
        ao = ws.clamp(min=1e-30) ** -0.5
        ao = (ao / ao.log().mean().exp()).clamp(0.25, 4)
        print(f"| {c} | {lam:g} | {s}{' (fitted on)' if s == 'pydoc' else ''} | {r:+.2f} | "
              f"{bits(ws, torch.ones_like(a)):+.2f} | {bits(ws, a):+.2f} | {bits(ws, ao):+.2f} |", flush=True)
