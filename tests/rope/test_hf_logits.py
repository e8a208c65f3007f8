"""python -m pytest -q tests/rope/test_hf_logits.py

A tiny megatron GPTModel (fp32, GQA 4 heads / 2 groups) and the transformers model its weights convert
to (megamid.checkpoint.hf_llama: Llama, Qwen2 with qkv biases, Phi3 for partial rotary) give the same
logits for every rope type, at a length past the switch points (48 > 32) and one before (24); and the
conversion functions themselves (layout, round trip, config.json) without megatron.

The megatron half runs in tests/rope/hf_logits_driver.py, one subprocess for every case: megamid's CPU
mode is a process-global TorchFunctionMode that must stay out of pytest's process.
"""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig

from helpers.hf_state import hf_to_megatron, megatron_to_hf
from megamid.checkpoint.hf_llama import fuse_qkv, hf_config, split_qkv
from megamid.config import ConfigError, ModelConfig
from megamid.rope import RopeScaling

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "tests", "rope", "hf_logits_driver.py")
# fp32 on CPU: both sides run the same float32 ops, so most cases agree bit for bit; dynamic NTK differs
# by float32 ulps of its base (HF derives it from a tensor seq_len, megamid in double), ~4e-6 on logits
# of magnitude ~7. A wrong rope or mapping moves them by O(1) (asserted below).
TOL = 1e-4
TYPES = ["default", "abf", "linear", "ntk", "dynamic", "yarn", "yarn_deepseek", "longrope", "llama3",
         "llama3_tied", "yarn_qwen2_bias", "longrope_partial_phi3"]


@pytest.fixture(scope="module")
def results():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, DRIVER], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("HF_LOGITS_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"{DRIVER} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("HF_LOGITS_RESULT "))


@pytest.mark.parametrize("case", TYPES)
def test_logits_match_transformers(results, case):
    got = results[case]
    assert got["round_trip_exact"], "hf_to_megatron(megatron_to_hf(state)) != state"
    assert got["logit_scale"] > 1.0  # the random weights give logits large enough to compare
    for seq_len, diff in got["max_abs_diff"].items():
        assert diff < TOL, f"{case} at {seq_len} tokens: max |megatron - HF| = {diff}"


@pytest.mark.parametrize("case", [c for c in TYPES if c not in ("default", "abf")])
def test_a_wrong_rope_would_fail(results, case):
    # HF with plain RoPE (same theta) differs by O(1) past the switch point: the comparison sees the rope
    assert results[case]["plain_rope_diff"]["48"] > 100 * TOL
    if case != "dynamic":  # dynamic NTK is plain RoPE up to its original length, as in HF
        assert results[case]["plain_rope_diff"]["24"] > 100 * TOL


def test_a_wrong_qkv_layout_would_fail(results):
    assert results["default"]["naive_qkv_diff"] > 100 * TOL


# ---- the pure functions, without megatron --------------------------------------------------------
def tiny(**kw):
    return ModelConfig(**{**dict(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                                 vocab_size=50, ffn_hidden_size=40), **kw})


def fake_megatron_state(cfg):
    """Random tensors with a GPTModel's local-spec names and shapes (and an _extra_state entry)."""
    gen = torch.Generator().manual_seed(0)
    h, d, f = cfg.hidden_size, cfg.head_dim, cfg.ffn_size
    qkv_rows = (cfg.num_attention_heads + 2 * cfg.query_groups) * d
    shapes = {"embedding.word_embeddings.weight": (cfg.vocab_size, h), "decoder.final_layernorm.weight": (h,)}
    if not cfg.tie_embeddings:
        shapes["output_layer.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_layers):
        p = f"decoder.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "self_attention.linear_qkv.weight": (qkv_rows, h),
                       p + "self_attention.linear_proj.weight": (h, cfg.num_attention_heads * d),
                       p + "pre_mlp_layernorm.weight": (h,), p + "mlp.linear_fc1.weight": (2 * f, h),
                       p + "mlp.linear_fc2.weight": (h, f)})
        if cfg.add_qkv_bias or cfg.add_bias_linear:
            shapes[p + "self_attention.linear_qkv.bias"] = (qkv_rows,)
        if cfg.qk_layernorm:
            shapes.update({p + "self_attention.q_layernorm.weight": (d,), p + "self_attention.k_layernorm.weight": (d,)})
        if cfg.add_bias_linear:
            shapes.update({p + "self_attention.linear_proj.bias": (h,), p + "mlp.linear_fc1.bias": (2 * f,),
                           p + "mlp.linear_fc2.bias": (h,)})
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def test_split_qkv_takes_each_groups_heads_then_its_key_and_value():
    cfg = tiny(hidden_size=8, num_attention_heads=4, num_query_groups=2, kv_channels=2)
    # per group of 2 query heads (2 rows each): [q, q, k, v]; row r holds value r
    q, k, v = split_qkv(torch.arange(16.0), cfg)
    assert q.tolist() == [0, 1, 2, 3, 8, 9, 10, 11] and k.tolist() == [4, 5, 12, 13] and v.tolist() == [6, 7, 14, 15]
    assert fuse_qkv(q, k, v, cfg).tolist() == list(range(16))
    mha = tiny(hidden_size=8, num_attention_heads=2, num_query_groups=None, kv_channels=2)
    q, k, v = split_qkv(torch.arange(12.0)[:, None].expand(12, 3), mha)
    assert q[:, 0].tolist() == [0, 1, 6, 7] and k[:, 0].tolist() == [2, 3, 8, 9] and v[:, 0].tolist() == [4, 5, 10, 11]


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": True}, {"add_qkv_bias": True}, {"add_bias_linear": True},
                                {"num_query_groups": 1}, {"num_query_groups": None, "kv_channels": 16},
                                {"qk_layernorm": True, "kv_channels": 16}])
def test_round_trip_is_exact(kw):
    cfg = tiny(**kw)
    state = fake_megatron_state(cfg)
    hf = megatron_to_hf({**state, "decoder.layers.0.mlp.linear_fc1._extra_state": None}, cfg)
    assert ("lm_head.weight" in hf) != cfg.tie_embeddings
    assert hf["model.layers.1.mlp.gate_proj.weight"].shape == (cfg.ffn_size, cfg.hidden_size)
    assert ("model.layers.0.self_attn.q_proj.bias" in hf) == (cfg.add_qkv_bias or cfg.add_bias_linear)
    assert ("model.layers.0.mlp.down_proj.bias" in hf) == cfg.add_bias_linear
    assert ("model.layers.1.self_attn.k_norm.weight" in hf) == cfg.qk_layernorm
    back = hf_to_megatron(hf, cfg)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    again = megatron_to_hf(back, cfg)
    assert again.keys() == hf.keys() and all(torch.equal(again[k], hf[k]) for k in hf)


def test_unknown_and_missing_keys_raise():
    cfg = tiny()
    state = fake_megatron_state(cfg)
    with pytest.raises(ConfigError, match="decoder.layers.5"):
        megatron_to_hf({**state, "decoder.layers.5.input_layernorm.weight": torch.ones(32)}, cfg)
    hf = megatron_to_hf(state, cfg)
    del hf["lm_head.weight"]
    with pytest.raises(ConfigError, match="lm_head.weight"):
        hf_to_megatron(hf, cfg)
    with pytest.raises(ConfigError, match="linear_qkv"):
        split_qkv(torch.zeros(10, 32), cfg)
    # the config decides which weights a layer has: an extra bias or a missing q/k norm is named
    hf = megatron_to_hf(state, cfg)
    with pytest.raises(ConfigError, match="model.layers.1.self_attn.o_proj.bias"):
        hf_to_megatron({**hf, "model.layers.1.self_attn.o_proj.bias": torch.zeros(32)}, cfg)
    qwen3 = tiny(qk_layernorm=True)
    hf = megatron_to_hf(fake_megatron_state(qwen3), qwen3)
    del hf["model.layers.0.self_attn.k_norm.weight"]
    with pytest.raises(ConfigError, match="model.layers.0.self_attn.k_norm.weight.*missing"):
        hf_to_megatron(hf, qwen3)


ROPES = [{"type": "default", "theta": 500000.0}, {"type": "linear", "factor": 4.0}, {"type": "ntk", "factor": 4.0},
         {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 64},
         {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
         {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
          "original_max_position_embeddings": 64},
         {"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64}]


@pytest.mark.parametrize("rope", ROPES, ids=lambda r: r["type"])
def test_hf_config_builds_a_llama_config_with_the_same_rope(rope):
    cfg = tiny(rope=rope, max_position_embeddings=512)
    d = hf_config(cfg)
    assert d["architectures"] == ["LlamaForCausalLM"] and d["num_key_value_heads"] == 2
    assert d["intermediate_size"] == 40 and d["head_dim"] == 8 and d["dtype"] == "float32"
    # dynamic NTK scales past HF's max_position_embeddings: that must be the original length
    assert d["max_position_embeddings"] == (64 if rope["type"] == "dynamic" else 512)
    # transformers < 5 reads the legacy rope_scaling: the same parameters, rope_theta stays top-level
    legacy = d.get("rope_scaling")
    if d["rope_parameters"]["rope_type"] == "default":
        assert legacy is None
    else:
        assert legacy == {k: v for k, v in d["rope_parameters"].items() if k != "rope_theta"}
        old_style = copy.deepcopy({k: v for k, v in d.items() if k != "rope_parameters"})
        assert RopeScaling.from_hf(LlamaConfig(**old_style)) == RopeScaling.from_dict(rope, head_dim=8)
    config = LlamaConfig(**copy.deepcopy(d))  # transformers fills defaults into the dicts it is given
    assert RopeScaling.from_hf(config) == RopeScaling.from_dict(rope, head_dim=8)


def test_hf_config_architecture_and_errors():
    assert hf_config(tiny(add_qkv_bias=True))["model_type"] == "qwen2"
    qwen3 = hf_config(tiny(qk_layernorm=True, kv_channels=16))
    assert qwen3["architectures"] == ["Qwen3ForCausalLM"] and qwen3["head_dim"] == 16 and not qwen3["attention_bias"]
    with pytest.raises(ConfigError, match="qk_layernorm"):
        hf_config(tiny(qk_layernorm=True, add_qkv_bias=True))
    full_bias = hf_config(tiny(add_bias_linear=True))
    assert full_bias["model_type"] == "llama" and full_bias["attention_bias"] and full_bias["mlp_bias"]
    assert hf_config(tiny(), {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8})[
        "rope_parameters"]["rope_type"] == "yarn"
    with pytest.raises(ConfigError, match="partial_rotary_factor"):
        hf_config(tiny(rope={"type": "default", "partial_rotary_factor": 0.5}))
    with pytest.raises(ConfigError, match="model.normalization"):
        hf_config(tiny(normalization="LayerNorm"))
