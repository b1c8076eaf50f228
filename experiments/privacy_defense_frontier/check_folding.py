"""secret_permutation's server side on the real model: the folded server weights compute the unsplit model's
output on the permuted payload, and a server holding them reads the secret off them (weight matching).

    python experiments/privacy_defense_frontier/check_folding.py
"""

import time

import torch

from splitinfer.models import DEFAULT_MODEL, load_model, split_model
from splitinfer.privacy import SecretPermutation
from splitinfer.privacy.folding import fold_permutation, match_folded_weights
from splitinfer.privacy.victims import victim_set


def main() -> None:
    torch.set_num_threads(1)
    lm = load_model(DEFAULT_MODEL)
    ids = victim_set(lm, 1, seed=5)[0].ids
    for cut in (4, 8, 15):
        d = SecretPermutation(seed=0)
        dev, srv = split_model(lm, [cut])
        perm = d.permutation(lm.hidden_size)
        folded = fold_permutation(srv, perm)
        with torch.no_grad():
            want = lm.model(ids).logits
            got = folded(d(dev(ids)))
        t = time.perf_counter()
        est = match_folded_weights(srv, folded)
        dt = time.perf_counter() - t
        print(f"cut {cut}: folded server vs unsplit max |Δlogit| {float((got - want).abs().max()):.2e}, top-1 equal "
              f"{bool((got.argmax(-1) == want.argmax(-1)).all())}; weight matching recovered "
              f"{int((est == perm).sum())}/{lm.hidden_size} channels in {dt * 1000:.0f} ms")


if __name__ == "__main__":
    main()
