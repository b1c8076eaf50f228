"""Public text for fitting defenses: token windows from the auxiliary corpus (never victims), kept in the
`privacy.public_sequences` memo of `splitinfer.cache`."""

from __future__ import annotations

import torch

from splitinfer import cache

_DATA_MEMO = cache.memo("privacy.public_sequences")  # (fingerprint, n, seq_len, split, seed) -> windows


def public_sequences(lm, n: int, seq_len: int, *, split: str = "train", seed: int = 0) -> list[torch.Tensor]:
    """Public token windows (1, seq_len): the auxiliary corpus (Python docs + Faker requests on auxiliary
    templates; never victims). `split="train"` keeps 4 of every 5 texts (defense training), `"heldout"`
    the fifth (utility). A model without a tokenizer gets seeded random ids."""
    memo = (lm.fingerprint, n, seq_len, split, seed)
    if memo in _DATA_MEMO:
        return _DATA_MEMO[memo]
    g = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
    if lm.tokenizer is None:
        out = [torch.randint(3, lm.vocab_size, (1, seq_len), generator=g) for _ in range(n)]
    else:
        from splitinfer.privacy.victims import aux_corpus

        texts = [t for i, t in enumerate(aux_corpus()) if (i % 5 == 0) == (split == "heldout")]
        windows = []
        for t in texts:
            ids = lm.tokenizer(t, return_tensors="pt")["input_ids"]
            windows += [ids[:, s: s + seq_len] for s in range(0, ids.shape[1] - seq_len + 1, seq_len)]
        order = torch.randperm(len(windows), generator=g).tolist()
        out = [windows[i] for i in order[:n]]
    _DATA_MEMO[memo] = out
    return out
