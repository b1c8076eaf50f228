"""Model shapes from a config alone: exact parameter counts, per-layer FLOPs/bytes, KV bytes."""

from __future__ import annotations

import json

import pytest

from splitinfer.configs import CONF_DIR, load_node
from splitinfer.errors import ConfigError
from splitinfer.models import tiny_model
from splitinfer.models.shapes import bits_of, load_shape, shape_from_config

SHIPPED = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")
                 if isinstance(load_node("model", p.stem).get("config"), dict))


def test_the_seed_scale_shapes_ship():
    assert {"llama3_2_1b", "llama3_2_3b", "llama3_1_8b", "qwen2_5_1_5b", "qwen2_5_7b", "gemma3_1b", "gemma3_4b",
            "phi3_mini"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_parameter_count_matches_the_published_total(name):
    node = load_node("model", name)
    text = (CONF_DIR / "model" / f"{name}.yaml").read_text()
    assert "huggingface.co/" in text and node["source"], "a shape cites its config and its published total"
    shape = load_shape(name)
    assert shape.total_params == pytest.approx(float(node["published_params"]), rel=0.005)
    assert shape.num_layers == node["config"]["num_hidden_layers"]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen3", "gemma3_text", "phi3", "gpt2"])
def test_meta_count_equals_a_real_models_count(family):
    """The meta model is the real architecture: its count is the instantiated model's, component by component."""
    lm = tiny_model(family)
    shape = shape_from_config(lm.config)
    assert shape.total_params == sum(p.numel() for p in lm.model.parameters())
    assert shape.num_layers == lm.num_layers


def test_decode_flops_bytes_and_kv_of_llama_8b():
    s = load_shape("llama3_1_8b")
    layer = s.components[1]
    # q,o 4096x4096, k,v 4096x1024, gate/up/down 4096x14336: 218,103,808 weights
    assert layer.matmul_params == 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    c = s.decode_cost(layer, context=1000, weight_bits=16, kv_bits=16)
    assert c.flops == 2 * layer.matmul_params + 4 * 32 * 128 * 1001
    assert c.bytes > layer.matmul_params * 2  # weights at 16 bits, plus the KV it reads
    # GQA: 8 KV heads x 128 x (K and V) x 2 bytes x 32 layers = 128 KiB per token (the published figure)
    assert s.kv_bytes_per_token(s.components, 16) == 131072
    assert s.weight_bytes(s.components, 4, group_size=32) < s.weight_bytes(s.components, 8) < \
        s.weight_bytes(s.components, 16)


def test_sliding_windows_cap_attention_and_kv():
    s = load_shape("gemma3_1b")
    local, glob = s.components[1], s.components[6]  # five local layers, then a global one
    assert local.window == 512 and glob.window is None
    assert s.decode_cost(local, 4096, 16).flops < s.decode_cost(glob, 4096, 16).flops
    assert s.kv_bytes([local], 4096) == s.kv_bytes([local], 512) < s.kv_bytes([glob], 4096)


def test_tied_head_is_counted_once_but_held_by_the_server():
    s = load_shape("llama3_2_1b")
    head = s.components[-1]
    assert head.params == 2048  # the final norm only: the LM head is the embedding matrix
    assert s.weight_bytes([head], 16) >= 128256 * 2048 * 2  # the server still holds its copy


def test_a_config_json_folder_that_is_not_shipped(tmp_path):
    cfg = {"model_type": "mistral", "vocab_size": 1000, "hidden_size": 128, "intermediate_size": 256,
           "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s = load_shape(str(tmp_path))
    assert s.num_layers == 3 and s.components[1].window == 64
    assert s.total_params == sum(p.numel() for p in tiny_model("mistral", **{k: v for k, v in cfg.items()
                                                                              if k != "model_type"}).model.parameters())


def test_bad_shapes_are_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="unknown model shape 'llama9'.*llama3_1_8b"):
        load_shape("llama9")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    with pytest.raises(ConfigError, match="encoder-decoder"):
        load_shape(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "nosuchtype"}))
    with pytest.raises(ConfigError, match="nosuchtype"):
        load_shape(str(tmp_path))
    with pytest.raises(ConfigError, match="precision 'int3'"):
        bits_of("int3")
    with pytest.raises(ConfigError, match="outside 0..16"):
        load_shape("llama3_2_1b").side(17, "device")


@pytest.mark.slow
def test_smollm2_shape_is_the_loaded_model(real_model):
    assert load_shape("smollm2_135m").total_params == sum(p.numel() for p in real_model.model.parameters())


def test_prefill_attention_counts_each_query_position_within_its_window():
    s = load_shape("gemma3_1b")
    for c in (s.components[1], s.components[6]):  # local (512) and global
        for tokens in (1, 511, 512, 513, 1500):
            direct = sum(c.attended(p) for p in range(tokens))
            assert s.prefill_cost(c, tokens, 16).flops == 2.0 * c.matmul_params * tokens + 4.0 * c.heads * c.head_dim * direct
