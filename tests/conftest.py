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
