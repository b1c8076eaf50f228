"""Probe, measured (licenses, held out): how many step codes escape int8, and what their side buffer costs.

    python experiments/codec_rate_distortion/issue28/probes/escape_probe.py   # -> escape_probe.txt

The bench's licenses windows (16 x 256 tokens, seed 0), SmolLM2 hidden states at cuts 3/4/5/8 (the cliff of
bisect.md), through `ec25g_s` at steps 0.17 and 0.15 in one session per window: a 224-token prefill, then 32
one-token steps of the same window. Per (cut, step): the share of messages with escapes, escapes per escaped
message, their buffers' bytes as sent (uint32 positions + int16 values: 6 per escape) and what varint-coded
position deltas would send instead, both as bits per value of the messages that carry them.
"""

import numpy as np
import torch

from splitinfer.codecs import build_codec
from splitinfer.codecs.session import MODES
from splitinfer.data import CorpusSpec
from splitinfer.models import load_model


def varint_bytes(deltas: np.ndarray) -> int:
    return int(sum(max(1, (int(d).bit_length() + 6) // 7) for d in deltas))


torch.set_num_threads(2)
lm = load_model("smollm2-135m-instruct")
corpus = CorpusSpec(source="licenses", num_windows=16, window_tokens=256, num_prompts=0, seed=0).build(lm)
with torch.no_grad():
    hs = [lm.model(corpus.windows[w:w + 1], output_hidden_states=True).hidden_states
          for w in range(corpus.windows.shape[0])]
print("cut step  kind     msgs  escaped  esc/msg(max)  esc bytes  varint bytes  bits/value: esc  varint")
for cut in (3, 4, 5, 8):
    for step in (0.17, 0.15):
        stats = {"prefill": [], "step": []}  # per escaped message: (escapes, values, varint bytes of positions)
        total = {"prefill": 0, "step": 0}
        for h in hs:
            codec = build_codec({"name": "ec25g_s", "step": step})
            x = h[cut]
            for kind, part in [("prefill", x[:, :224])] + [("step", x[:, i:i + 1]) for i in range(224, 256)]:
                msg = codec.encode_step(part)
                total[kind] += 1
                n = msg.header["meta"].get("e", 0)
                if n:
                    n_code_bufs = 3 if MODES[msg.header["code"] % 4] == "r" else 1  # then esc_pos, esc_val
                    pos = np.frombuffer(bytes(msg.buffers[-n_code_bufs - 2]), "<u4").astype(np.int64)
                    stats[kind].append((n, part.numel(), varint_bytes(np.diff(pos, prepend=0)) + 2 * n))
        for kind, rows in stats.items():
            if not rows:
                print(f"{cut:3d} {step:.2f}  {kind:7s} {total[kind]:5d}  {0:7d}")
                continue
            n, vals, var = (np.array(c) for c in zip(*rows, strict=True))
            print(f"{cut:3d} {step:.2f}  {kind:7s} {total[kind]:5d}  {len(rows):7d}  {n.mean():6.1f} ({n.max():3d})"
                  f"  {6 * n.mean():9.1f}  {var.mean():12.1f}  {8 * (6 * n / vals).mean():15.4f}"
                  f"  {8 * (var / vals).mean():6.4f}")
