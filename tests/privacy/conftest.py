import pytest
import torch

from splitinfer.models import tiny_model


@pytest.fixture(scope="module")
def tiny_llama():
    torch.set_num_threads(1)
    return tiny_model("llama")
