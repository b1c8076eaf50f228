"""Probe, modelled (pydoc, the tuning corpus): what could per-channel steps fitted on text save?

    python experiments/codec_rate_distortion/issue28/probes/fisher_probe.py   # -> fisher_probe.txt

Per cut, the empirical Fisher diagonal F_c = sum over tokens of (dNLL/dh_c)^2 of the hidden state at the cut
(4 pydoc windows x 256 tokens, the attention-sink token left out). With quantization noise of variance
s_c^2 / 12 per channel the loss grows ~ sum_c F_c s_c^2; a per-channel step s_c ~ F_c^(-1/2) (what a
channel-scale table fitted on text would do) reaches the same weighted error as one common step with
0.5 log2(AM(F) / GM(F)) fewer bits per value (high-rate theory). That figure is modelled, not measured.
"""

import numpy as np
import torch

from splitinfer.data import CorpusSpec
from splitinfer.models import load_model

torch.set_num_threads(2)
lm = load_model("smollm2-135m-instruct")
torch.set_grad_enabled(True)
lm.model.requires_grad_(True)
corpus = CorpusSpec(source="pydoc", num_windows=4, window_tokens=256, num_prompts=0, seed=0).build(lm)
F = None
for w in range(corpus.windows.shape[0]):
    ids = corpus.windows[w:w + 1]
    out = lm.model(ids, output_hidden_states=True)
    for h in out.hidden_states:
        h.retain_grad()
    logp = torch.log_softmax(out.logits[0, :-1].float(), -1)
    (-logp.gather(1, ids[0, 1:, None]).sum()).backward()
    g = torch.stack([h.grad[0, 1:].pow(2).sum(0) for h in out.hidden_states[1:30]]).double()
    F = g if F is None else F + g
    lm.model.zero_grad(set_to_none=True)
print("| cut | modelled saving 0.5 log2(AM/GM F), bits/value | max / median F |")
print("|---|---|---|")
for k in range(29):
    f = F[k]
    am_gm = float(f.mean()) / float(f.log().mean().exp())
    print(f"| {k + 1} | {0.5 * np.log2(am_gm):.3f} | {float(f.max() / f.median()):.0f} |")
