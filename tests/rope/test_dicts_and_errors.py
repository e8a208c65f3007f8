"""python -m pytest -q tests/rope/test_dicts_and_errors.py

Round trips through recipe dicts and HF configs (dict, legacy rope_scaling, PretrainedConfig), and
one test per kind of bad input: each raises ConfigError naming the field, the value and what is valid.
"""

import json

import pytest
from transformers import LlamaConfig

from megamid.config import ConfigError
from megamid.rope import RopeScaling, registered_types

LONG = [1.0 + i / 10 for i in range(32)]
EXAMPLES = [
    {"type": "default", "theta": 500000, "head_dim": 128},
    {"type": "default", "theta": 10000, "head_dim": 80, "partial_rotary_factor": 0.4},
    {"type": "linear", "factor": 2.5, "theta": 10000, "head_dim": 64},
    {"type": "ntk", "factor": 4, "theta": 10000, "head_dim": 128, "partial_rotary_factor": 0.5},
    {"type": "dynamic", "factor": 2, "original_max_position_embeddings": 4096, "head_dim": 128},
    {"type": "yarn", "factor": 8, "original_max_position_embeddings": 4096, "theta": 500000, "head_dim": 128},
    {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1,
     "mscale": 0.707, "mscale_all_dim": 1.0, "truncate": False, "head_dim": 64},
    {"type": "yarn", "factor": 4, "original_max_position_embeddings": 2048, "attention_factor": 1.1, "head_dim": 64},
    {"type": "longrope", "short_factor": [1.0] * 32, "long_factor": LONG, "original_max_position_embeddings": 4096,
     "factor": 32, "head_dim": 64},
    {"type": "longrope", "short_factor": [1.0] * 16, "long_factor": LONG[:16], "attention_factor": 1.2,
     "original_max_position_embeddings": 4096, "head_dim": 64, "partial_rotary_factor": 0.5},
    {"type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
     "original_max_position_embeddings": 8192, "theta": 500000, "head_dim": 128},
]


@pytest.mark.parametrize("d", EXAMPLES, ids=lambda d: d["type"])
def test_round_trips(d):
    rope = RopeScaling.from_dict(d)
    assert RopeScaling.from_dict(rope.to_dict()) == rope
    assert RopeScaling.from_hf(rope.to_hf()) == rope
    assert RopeScaling.from_hf(json.loads(json.dumps(rope.to_hf()))) == rope  # through config.json text
    # what to_hf writes, loaded by transformers itself, comes back to the same object
    base = dict(hidden_size=rope.head_dim * 4, num_attention_heads=4, num_hidden_layers=1, vocab_size=32,
                max_position_embeddings=131072)
    hf = LlamaConfig(**{**base, **rope.to_hf()})
    assert RopeScaling.from_hf(hf) == rope
    assert RopeScaling.from_hf(hf.to_dict()) == rope


def test_every_type_has_an_example():
    assert {d["type"] for d in EXAMPLES} == set(registered_types())


def test_aliases_and_head_dim_from_model():
    assert RopeScaling.from_dict({"type": "abf", "theta": 1e6}, head_dim=64) == RopeScaling.from_dict(
        {"type": "default", "theta": 1e6, "head_dim": 64})
    assert RopeScaling.from_dict({"type": "pi", "factor": 4}, head_dim=64).type == "linear"
    rope = RopeScaling.from_dict({"type": "yarn", "factor": 4, "original_max_position_embeddings": 4096,
                                  "rotary_dim": 32}, head_dim=64)
    assert rope.rotary_dim == 32 and rope.partial_rotary_factor == 0.5 and rope.inv_freq().shape == (16,)


def test_legacy_rope_scaling_form_and_defaults():
    legacy = {"rope_scaling": {"type": "linear", "factor": 4.0}, "rope_theta": 1e6, "hidden_size": 4096,
              "num_attention_heads": 32}
    assert RopeScaling.from_hf(legacy) == RopeScaling.from_dict({"type": "linear", "factor": 4, "theta": 1e6,
                                                                 "head_dim": 128})
    # no rope keys at all: plain RoPE with HF's default theta
    plain = RopeScaling.from_hf({"hidden_size": 512, "num_attention_heads": 8})
    assert plain.type == "default" and plain.theta == 10000.0 and plain.head_dim == 64
    # top-level partial_rotary_factor (Phi-2, GPT-NeoX style)
    phi2 = RopeScaling.from_hf({"hidden_size": 2560, "num_attention_heads": 32, "partial_rotary_factor": 0.4})
    assert phi2.rotary_dim == 32
    # Llama-3.1 config.json as published (legacy form)
    llama31 = RopeScaling.from_hf({"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 131072,
                                   "rope_theta": 500000.0, "rope_scaling": {
                                       "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}})
    assert llama31 == RopeScaling.from_dict({"type": "llama3", "factor": 8, "theta": 500000}, head_dim=128)


BAD = [
    # (dict, field named in the message, fragment of the valid-values text)
    ({"type": "yarnn", "head_dim": 64}, "rope.type", "expected one of"),
    ({"type": 3, "head_dim": 64}, "rope.type", "expected one of"),
    ({"type": "linear", "head_dim": 64}, "factor", "missing"),
    ({"type": "linear", "factor": 0.5, "head_dim": 64}, "rope.factor", ">= 1"),
    ({"type": "linear", "factor": "2", "head_dim": 64}, "rope.factor", "number"),
    ({"type": "linear", "factor": True, "head_dim": 64}, "rope.factor", "number"),
    ({"type": "ntk", "factor": 0.9, "head_dim": 64}, "rope.factor", ">= 1"),
    ({"type": "ntk", "factor": 2, "head_dim": 2}, "rope.head_dim", "> 2"),
    ({"type": "dynamic", "factor": 2, "head_dim": 64}, "original_max_position_embeddings", "missing"),
    ({"type": "dynamic", "factor": 2, "original_max_position_embeddings": 0, "head_dim": 64},
     "rope.original_max_position_embeddings", "> 0"),
    ({"type": "yarn", "factor": 0.5, "original_max_position_embeddings": 4096, "head_dim": 64}, "rope.factor", ">= 1"),
    ({"type": "yarn", "factor": 4, "original_max_position_embeddings": 4096.5, "head_dim": 64},
     "rope.original_max_position_embeddings", "integer"),
    ({"type": "yarn", "factor": 4, "original_max_position_embeddings": 4096, "beta_fast": 1, "beta_slow": 2,
      "head_dim": 64}, "rope.beta_fast", "beta_slow"),
    ({"type": "yarn", "factor": 4, "original_max_position_embeddings": 4096, "beta_slow": 0, "head_dim": 64},
     "rope.beta_slow", "> 0"),
    ({"type": "yarn", "factor": 4, "original_max_position_embeddings": 4096, "attention_factor": -1,
      "head_dim": 64}, "rope.attention_factor", "> 0"),
    ({"type": "yarn", "factor": 4, "original_max_position_embeddings": 4096, "mscale": -1, "head_dim": 64},
     "rope.mscale", ">= 0"),
    ({"type": "yarn", "factor": 4, "original_max_position_embeddings": 4096, "truncate": "no", "head_dim": 64},
     "rope.truncate", "true or false"),
    ({"type": "yarn", "factor": 4, "original_max_position_embeddings": 4096, "beta": 3, "head_dim": 64},
     "rope.beta", "beta_fast"),
    ({"type": "longrope", "short_factor": [1.0] * 31, "long_factor": LONG, "original_max_position_embeddings": 4096,
      "head_dim": 64}, "rope.short_factor", "32 numbers"),
    ({"type": "longrope", "short_factor": [1.0] * 32, "long_factor": LONG[:16],
      "original_max_position_embeddings": 4096, "head_dim": 64}, "rope.long_factor", "32 numbers"),
    ({"type": "longrope", "short_factor": [1.0] * 32, "long_factor": LONG[:31] + [0.0],
      "original_max_position_embeddings": 4096, "head_dim": 64}, "rope.long_factor[31]", "> 0"),
    ({"type": "longrope", "short_factor": 1.0, "long_factor": LONG, "original_max_position_embeddings": 4096,
      "head_dim": 64}, "rope.short_factor", "list"),
    ({"type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1, "head_dim": 64},
     "rope.low_freq_factor", "< high_freq_factor"),
    ({"type": "llama3", "factor": 8, "low_freq_factor": 2, "high_freq_factor": 2, "head_dim": 64},
     "rope.low_freq_factor", "< high_freq_factor"),
    ({"type": "llama3", "factor": 8, "low_freq_factor": 0, "head_dim": 64}, "rope.low_freq_factor", "> 0"),
    ({"type": "llama3", "factor": 0.25, "head_dim": 64}, "rope.factor", ">= 1"),
    ({"type": "default", "theta": 1, "head_dim": 64}, "rope.theta", "> 1"),
    ({"type": "default", "head_dim": 0}, "rope.head_dim", "> 0"),
    ({"type": "default", "head_dim": 64, "partial_rotary_factor": 1.5}, "rope.partial_rotary_factor", "(0, 1]"),
    ({"type": "default", "head_dim": 64, "partial_rotary_factor": 0.3}, "rope.partial_rotary_factor", "even"),
    ({"type": "default", "head_dim": 64, "rotary_dim": 32, "partial_rotary_factor": 0.5}, "rope.rotary_dim",
     "not both"),
    ({"type": "default"}, "rope.head_dim", "head_dim"),
]


@pytest.mark.parametrize("d,field,valid", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_recipe_dicts_raise(d, field, valid):
    with pytest.raises(ConfigError) as err:
        RopeScaling.from_dict(d)
    assert field in str(err.value) and valid in str(err.value)
    assert isinstance(err.value, ValueError)


def test_missing_dataclass_field_is_a_config_error():
    # a required method field left out surfaces as ConfigError too, not TypeError
    with pytest.raises(ConfigError, match="factor"):
        RopeScaling.from_dict({"type": "yarn", "original_max_position_embeddings": 4096, "head_dim": 64})


BAD_HF = [
    ({"rope_parameters": {"rope_type": "su"}, "head_dim": 64}, "rope_parameters.rope_type", "expected one of"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}, "head_dim": 64, "max_position_embeddings": 8192},
     "rope_parameters.low_freq_factor", "required"),
    ({"rope_parameters": {"rope_type": "linear"}, "head_dim": 64}, "rope_parameters.factor", "required"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}, "head_dim": 64}, "max_position_embeddings",
     "dynamic"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}, "head_dim": 64},
     "original_max_position_embeddings", "max_position_embeddings"),
    ({"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0] * 32}, "head_dim": 64,
      "max_position_embeddings": 4096}, "rope_parameters.long_factor", "list"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}},
      "head_dim": 64}, "rope_parameters", "per-layer"),
    ({"rope_parameters": {"rope_type": "default"}}, "head_dim", "hidden_size"),
    ({"rope_parameters": {"rope_type": "default", "megamid_ntk": {"factor": 2}}, "head_dim": 64},
     "rope_parameters.megamid_ntk", "theta"),
]


@pytest.mark.parametrize("config,field,valid", BAD_HF, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD_HF)])
def test_bad_hf_configs_raise(config, field, valid):
    with pytest.raises(ConfigError) as err:
        RopeScaling.from_hf(config)
    assert field in str(err.value) and valid in str(err.value)


def test_objects_are_frozen_and_hashable():
    rope = RopeScaling.from_dict(EXAMPLES[8])
    with pytest.raises(AttributeError):
        rope.factor = 2.0
    assert hash(rope) == hash(RopeScaling.from_dict(rope.to_dict()))
