"""Wire bytes and decoded tensors of the ecNNg codecs before and after the s3b change, on SmolLM2 pydoc hidden
states (the first 2 windows x 256 tokens of the speed run's corpus, cuts 1/8/15/22/29).

    python bytes_before_after.py BEFORE_TREE AFTER_TREE     # e.g. /work/main /work/wt/s3b

The hidden states come from AFTER's model code; each tree's codecs encode and decode them in turn (their
modules are swapped in sys.modules). Asserts identical decoded tensors; prints bytes and bits per value.
"""

import sys
import types

import torch


def _use(tree: str) -> None:
    for m in [m for m in sys.modules if m == "splitinfer" or m.startswith("splitinfer.")]:
        del sys.modules[m]
    sys.path = [p for p in sys.path if p not in (BEFORE, AFTER)]
    sys.path.insert(0, tree)


def hidden_states() -> dict[int, torch.Tensor]:
    from splitinfer.experiment import compute_reference
    from splitinfer.metrics import codec_bench
    from splitinfer.models import load_model

    lm = load_model("smollm2-135m-instruct")
    args = types.SimpleNamespace(n_windows=2, seq_len=256, seed=0)
    ref = compute_reference(lm, codec_bench.corpus_spec(args, "pydoc").build(lm))
    return {c: ref.window_hidden[c][:2].clone() for c in (1, 8, 15, 22, 29)}


def code(hs) -> dict:
    from splitinfer.codecs import build_codec

    out = {}
    for name in ("ec25g_s", "ec37g_s", "ec37g"):
        for cut, h in hs.items():
            for w in range(h.shape[0]):
                codec = build_codec(name)
                msg = codec.encode(h[w:w + 1])
                out[name, cut, w] = sum(len(bytes(b)) for b in msg.buffers), codec.decode(msg), h[w].numel()
    return out


if __name__ == "__main__":
    BEFORE, AFTER = sys.argv[1:3]
    torch.set_num_threads(1)
    _use(AFTER)
    hs = hidden_states()
    _use(BEFORE)
    old = code(hs)
    _use(AFTER)
    new = code(hs)
    for name in ("ec25g_s", "ec37g_s", "ec37g"):
        keys = [k for k in old if k[0] == name]
        assert all(torch.equal(old[k][1], new[k][1]) for k in keys), name
        a, b = (sum(d[k][0] for k in keys) for d in (old, new))
        n = sum(old[k][2] for k in keys)
        print(f"{name}: buffers {a} -> {b} bytes ({8 * a / n:.4f} -> {8 * b / n:.4f} bits/value) over {n} values; "
              "decoded tensors identical")
