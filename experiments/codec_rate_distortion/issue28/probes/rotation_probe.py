"""Probe (pydoc, the tuning corpus): does a randomized Hadamard rotation before the step quantizer pay?

    python experiments/codec_rate_distortion/issue28/probes/rotation_probe.py   # -> rotation_probe.txt

One 256-token window of pydoc text, SmolLM2 hidden states at cuts 1/8/15/22/29, through `ec25g` with and
without `rotate=true` (the pipeline's seeded sign flip + Walsh-Hadamard over blocks of 64 channels), at
steps 0.25 and 0.37, and the rotated codec again at the step that gives the plain codec's relative L2
error (bisected). Both errors are isotropic in the original space (the rotation is orthonormal), so equal
L2 error means about equal damage; the rate difference is the rotation's price or gain.
"""

import torch

from splitinfer.codecs import build_codec
from splitinfer.data import load_texts
from splitinfer.models import load_model

torch.set_num_threads(1)
lm = load_model("smollm2-135m-instruct")
ids = lm.tokenizer(load_texts("pydoc")[5], return_tensors="pt").input_ids[:, :256]
with torch.no_grad():
    hs = lm.model(ids, output_hidden_states=True).hidden_states


def run(h, step, rotate):
    c = build_codec({"name": "ec25g", "step": step, "rotate": rotate, "rot_block": 64})
    e = c.encode(h)
    return e.nbytes * 8 / h.numel(), float((c.decode(e) - h).norm() / h.norm())


print("| cut | step | bits plain | rel L2 plain | bits rotated | rel L2 rotated | bits rotated at plain's L2 (step) |")
print("|---|---|---|---|---|---|---|")
for k in (1, 8, 15, 22, 29):
    h = hs[k]
    for step in (0.25, 0.37):
        bp, ep = run(h, step, False)
        br, er = run(h, step, True)
        lo, hi = 0.05, step
        for _ in range(12):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if run(h, mid, True)[1] <= ep else (lo, mid)
        print(f"| {k} | {step} | {bp:.3f} | {ep:.4f} | {br:.3f} | {er:.4f} | {run(h, lo, True)[0]:.3f} ({lo:.3f}) |")
