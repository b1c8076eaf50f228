"""Per-channel centering: subtract each channel's mean over the message's tokens before quantizing.

Hidden states carry a large per-channel offset shared by all tokens (in SmolLM2 22 % of the energy at
layer 1, 72 % at layer 29, e.g. one channel sits near 550 on every token). Sending the C means once
in float16 (0.06 bits per value for 256 tokens) lets the quantizer spend its levels on what varies.
Only done for messages of at least MIN_ROWS tokens: for a single decode-step token the "mean" would be
the token itself.
"""

from __future__ import annotations

import torch

MIN_ROWS = 16


def channel_means(v: torch.Tensor) -> torch.Tensor:
    """float16-representable channel means (float32 tensor of shape (cols,)); clamped into float16 range."""
    return v.mean(dim=0).clamp_(-65504.0, 65504.0).to(torch.float16).to(torch.float32)
