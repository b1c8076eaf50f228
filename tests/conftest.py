"""Shared fixtures: tiny models are cheap; the real model is loaded once per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def one_torch_thread():
    """torch on one intra-op thread for the test, restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def real_model():
    """SmolLM2-135M-Instruct from the bundled GGUF (converted once into the safetensors cache)."""
    from splitinfer.models import load_model

    return load_model("smollm2-135m-instruct")


def check_plot(path, min_size: tuple[int, int] = (320, 240)) -> dict:
    """The PNG at `path` shows a plot, not just a valid file: at least `min_size` pixels (width, height),
    ink beyond the background, ink inside the middle of the figure (the plot area, not only labels), and
    at least one coloured series. Returns what it measured."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(path)  # raises on a file that is not an image
    h, w = img.shape[:2]
    rgb = np.round(img[..., :3] * 255).astype(int)
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]
    ink = np.abs(rgb - background).sum(-1) > 60  # pixels clearly unlike the background
    coloured = (rgb.max(-1) - rgb.min(-1)) > 60  # not white, grey or black: a series, a marker, a band
    seen = {"width": w, "height": h, "ink": float(ink.mean()),
            "ink_in_plot_area": float(ink[h // 5: 4 * h // 5, w // 5: 4 * w // 5].mean()),
            "coloured": float(coloured.mean())}
    assert w >= min_size[0] and h >= min_size[1], (path, seen)
    assert seen["ink"] > 0.01 and seen["ink_in_plot_area"] > 0.002 and seen["coloured"] > 0.001, (path, seen)
    return seen


@pytest.fixture
def plot_check():
    """plot_check(path): assert the PNG shows a plot (size, ink in the plot area, a coloured series)."""
    return check_plot
