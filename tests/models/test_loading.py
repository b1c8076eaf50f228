"""Loading: tiny models are deterministic, missing models give a clear error, nothing downloads."""

from __future__ import annotations

import pytest
import torch

from splitinfer.errors import ConfigError, NotFoundError
from splitinfer.models import ModelNotAvailableError, load_model, tiny_model


def test_tiny_models_are_seeded():
    a, b, c = tiny_model("llama", seed=0), tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert torch.equal(a.model.lm_head.weight, b.model.lm_head.weight)


def test_unknown_tiny_family():
    with pytest.raises(ConfigError, match="llama.*gemma3_text"):
        tiny_model("t5")


@pytest.mark.parametrize("spec", ["no-such-model", "/nonexistent/dir", "org/some-hub-model"])
def test_missing_model_says_what_provides_it(spec):
    with pytest.raises(ModelNotAvailableError) as e:
        load_model(spec)
    msg = str(e.value)
    assert spec in msg and "smollm2-135m-instruct" in msg and "never downloads" in msg


def test_not_a_model_path(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotAvailableError, match="config.json"):
        load_model(str(tmp_path / "weights.bin"))


def test_missing_model_is_a_user_error():
    assert issubclass(ModelNotAvailableError, NotFoundError)


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "gpt_neox"])
def test_local_hf_directory_round_trip(tmp_path, family):
    lm = tiny_model(family, seed=3)
    lm.model.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    assert again.family == family and again.fingerprint == lm.fingerprint
    assert again.config._attn_implementation == lm.config._attn_implementation
    ids = torch.randint(3, 256, (1, 9))
    assert torch.allclose(again.model(ids).logits, lm.model(ids).logits, atol=1e-6)


def test_peek_num_layers_without_loading(tmp_path):
    from splitinfer.models import peek_num_layers

    assert peek_num_layers("tiny-gpt2") == peek_num_layers("tiny-gemma3_text") == 4
    lm = tiny_model("llama", num_hidden_layers=3)
    lm.model.save_pretrained(tmp_path)
    assert peek_num_layers(str(tmp_path)) == 3
    with pytest.raises(ModelNotAvailableError):
        peek_num_layers("/no/such/dir")


@pytest.mark.slow
def test_peek_num_layers_reads_gguf_metadata(monkeypatch, tmp_path):
    from splitinfer.models import peek_num_layers

    monkeypatch.setenv("SPLITINFER_CACHE", str(tmp_path))  # no converted cache: read the GGUF header
    assert peek_num_layers("smollm2-135m-instruct") == 30
