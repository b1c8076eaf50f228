"""Adapters: the standard decoder stack is found by role in every tested type, a new type of that shape
loads with no code (checked on a small random copy first), and anything else gets one clear error
before its weights load."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig

from splitinfer import cache
from splitinfer.errors import ConfigError, UserError
from splitinfer.models import adapters, load_model, peek_num_layers, run_chain, split_model, tiny_model
from splitinfer.models.loading import check_supported


@pytest.mark.parametrize("family, norm, head", [
    ("llama", "norm", "lm_head"), ("gpt2", "ln_f", "lm_head"), ("gpt_neox", "final_layer_norm", "lm_head"),
    ("phi", "final_layernorm", "lm_head"), ("gemma3_text", "norm", "lm_head"),
])
def test_parts_are_found_by_role(family, norm, head):
    lm = tiny_model(family)
    parts = adapters.decoder_parts(lm.model)
    names = {id(m): n for n, m in lm.model.named_modules()}
    assert names[id(parts.norm)].endswith(norm) and names[id(parts.head)] == head
    assert len(parts.layers) == 4 and parts.embed is lm.model.get_input_embeddings()
    assert (parts.positions is not None) == (family == "gpt2")  # GPT-2's learned positions
    assert (parts.rotary is None) == (family == "gpt2")


def _config_only_dir(tmp_path, model_type, **kw):
    """A model directory with a config and no weights: loading it must fail from the config alone."""
    cfg = AutoConfig.for_model(model_type, **kw)
    cfg.save_pretrained(tmp_path)
    return str(tmp_path)


@pytest.mark.parametrize("model_type, says", [
    ("t5", "encoder-decoder"),
    ("bart", "encoder-decoder"),
    ("gemma3", "multimodal"),
    ("qwen3_next", "linear_attention"),
    ("roberta", "lacks the standard decoder stack"),  # an encoder we have no adapter for
    ("clip", "has no causal-LM class"),
])
def test_unsupported_architectures_fail_from_the_config(tmp_path, model_type, says):
    path = _config_only_dir(tmp_path, model_type)
    with pytest.raises(ConfigError) as e:
        load_model(path)
    msg = str(e.value)
    assert says in msg and repr(model_type) in msg and "gemma3_text" in msg and "\n" not in msg
    assert isinstance(e.value, UserError)


def test_unknown_model_type_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-arch", "num_hidden_layers": 2}))
    with pytest.raises(ConfigError, match="model type 'no-such-arch' is unknown to transformers .*decoder-only"):
        load_model(str(tmp_path))


def test_untested_type_of_the_standard_shape_needs_no_code(tmp_path):
    """Helium is not among the tested types: it is verified on a small random copy, then splits exactly."""
    cfg = AutoConfig.for_model("helium", vocab_size=256, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16, intermediate_size=96, pad_token_id=0,
                               bos_token_id=1, eos_token_id=2)
    assert "helium" not in adapters.TESTED_TYPES
    model = adapters.random_model(cfg, seed=1)
    model.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    assert lm.family == "helium" and lm.is_causal_lm and cache.memo("models.verified")["helium"] is None
    ids = torch.randint(3, 256, (2, 9))
    with torch.no_grad():
        ref = lm.model(ids).logits
    for k in range(4):
        assert (run_chain(split_model(lm, [k]), ids) - ref).abs().max() <= 1e-5


def test_untested_type_that_does_not_split_exactly_is_refused_before_weights(tmp_path):
    """Cohere multiplies its logits by a `logit_scale` the standard stack knows nothing of: the check on
    a small random copy catches that, from the config alone (the directory holds no weights)."""
    path = _config_only_dir(tmp_path, "cohere", logit_scale=0.5)
    with pytest.raises(ConfigError, match=r"'cohere' cannot be split exactly: .* differ .* by") as e:
        load_model(path)
    assert "decoder-only" in str(e.value)
    assert peek_num_layers(path) == AutoConfig.for_model("cohere").num_hidden_layers  # peeking is unaffected


def test_check_supported_kinds():
    assert check_supported(tiny_model("bert").config) == "encoder"
    assert check_supported(tiny_model("gemma2").config) == "decoder"
    assert adapters.attn_implementation(tiny_model("gemma2").config) == "eager"  # soft-capped attention


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "smollm3", "gpt2", "gpt_neox"])
def test_shrink_config_keeps_per_layer_settings(family):
    lm = tiny_model(family)
    cfg = adapters.shrink_config(lm.config, [0, 3], head_dim=8, mlp=16, vocab=64)
    model = adapters.random_model(cfg)
    assert (cfg.num_hidden_layers, cfg.vocab_size) == (2, 64)
    assert adapters.layer_kinds(cfg) == [adapters.layer_kinds(lm.config)[i] for i in (0, 3)]
    if family == "smollm3":
        assert cfg.no_rope_layers == [1, 0]
    assert len(adapters.decoder_parts(model).layers) == 2
