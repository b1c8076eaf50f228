"""Defenses that need the model and the cut: Fisher-shaped noise and trained device-side adapters.

- `fisher_noise` (`sigma`): Gaussian noise on the payload whose per-dimension std follows the diagonal
  inverse Fisher information of the (public, frozen) server half's output with respect to the payload,
  so each dimension costs the same expected KL; the total noise energy equals `gaussian`'s at the same
  `sigma` (std = sigma x each token's RMS on average).
- `nopeek` (`lam`): a low-rank adapter on the device stage's output, trained on public text with the task
  loss (KL from the unsplit model's next-token distribution to the frozen server half's) plus
  `lam` x distance correlation(input embeddings, payload) (NoPeek, Vepakomma et al. 2020).
- `secret_adapter` (`gamma`): a device-only adapter drawn from a secret (its seed) that the server never
  sees: a fixed secret projection, then a trained map, adding a deviation of about `gamma` x the
  payload's norm, trained to keep the frozen server half's output distribution (KL) while it keeps
  that deviation.

All three act on the payload (`acts_on == "payload"`), so they run unchanged through `DeviceHalf` on
the real wire. They are built from the config without the model; `bind(lm, cut)` (done by
`evaluate_privacy` and the Hydra job once the model is loaded) computes the Fisher diagonal or trains
the adapter. Both are cached in the content-addressed cache (`splitinfer.cache` under `privacy/`),
keyed by the model's fingerprint, the cut, the recipe and the seed: a second job with the same set-up
loads in milliseconds. The adapter's seed is its secret: `with_seed(s)` trains (or loads) the adapter
for secret `s`, which is how an attacker gets its own copy (same recipe, its own secret).

One module per concern: `public_data` (public-text windows), `base` (the bind-to-the-model base, the
cache files, shared helpers), `fisher` (Fisher estimation and `fisher_noise`), `training` (the adapter and
its training loop), `adapters` (`nopeek`, `secret_adapter`). They are registered in
`splitinfer.privacy.defenses.DEFENSES` by name, explicitly (no registration on import).
"""

from splitinfer.privacy.trained.adapters import NoPeek, SecretAdapter
from splitinfer.privacy.trained.fisher import FisherNoise, noise_shape, server_fisher
from splitinfer.privacy.trained.public_data import public_sequences
from splitinfer.privacy.trained.training import LowRankAdapter, TrainedAdapter, dcor_loss

__all__ = ["FisherNoise", "LowRankAdapter", "NoPeek", "SecretAdapter", "TrainedAdapter", "dcor_loss",
           "noise_shape", "public_sequences", "server_fisher"]
