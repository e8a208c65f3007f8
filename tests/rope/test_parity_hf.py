"""python -m pytest -q tests/rope/test_parity_hf.py

inv_freq and attention factor of every rope type against transformers' own init functions
(ROPE_INIT_FUNCTIONS; GPT-NeoX's default, which honours partial rotary), over a grid of configs.
"""

import itertools
import math

import pytest
import torch
from transformers import LlamaConfig, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding

from megamid.rope import RopeScaling

# (head_dim, partial_rotary_factor): full, half, Phi-2-like 80 * 0.4 = 32, NeoX-like 0.25
DIMS = [(64, 1.0), (128, 1.0), (128, 0.5), (80, 0.4), (96, 0.25)]
THETAS = [10_000.0, 500_000.0, 1_000_000.0]
FACTORS = [1.0, 1.7, 2.5, 8.0, 16.0]


def hf_config(params, head_dim, partial, max_position_embeddings=4096, **top):
    params = dict(params)
    if partial != 1.0:
        params["partial_rotary_factor"] = partial
    return LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim, num_hidden_layers=1,
                       vocab_size=32, max_position_embeddings=max_position_embeddings, rope_parameters=params, **top)


def hf_tables(config, seq_len=None):
    kind = config.rope_parameters["rope_type"]
    if kind == "default":
        return GPTNeoXRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[kind](config, None, seq_len=seq_len)


def assert_same(ours, config, seq_len=None):
    want_freq, want_factor = hf_tables(config, seq_len)
    got = ours.inv_freq(seq_len)
    assert got.dtype == torch.float32 and got.shape == (ours.rotary_dim // 2,) == want_freq.shape
    # same float32 operations in the same order: bit-identical with transformers 5.23; allow ~2 ulp
    torch.testing.assert_close(got, want_freq, rtol=2.4e-7, atol=0)
    assert ours.attention_factor_at(seq_len) == pytest.approx(want_factor, rel=1e-12)
    assert ours.attention_factor == pytest.approx(want_factor, rel=1e-12)


@pytest.mark.parametrize("head_dim,partial", DIMS)
@pytest.mark.parametrize("theta", THETAS)
def test_default_and_abf(head_dim, partial, theta):
    config = hf_config({"rope_type": "default", "rope_theta": theta}, head_dim, partial)
    ours = RopeScaling.from_hf(config)
    assert type(ours).type == "default" and ours.rotary_dim == int(head_dim * partial)
    assert_same(ours, config)
    abf = RopeScaling.from_dict({"type": "abf", "theta": theta, "head_dim": head_dim, "partial_rotary_factor": partial})
    assert abf == ours


@pytest.mark.parametrize("head_dim,partial", DIMS)
@pytest.mark.parametrize("factor", FACTORS)
def test_linear(head_dim, partial, factor):
    config = hf_config({"rope_type": "linear", "factor": factor, "rope_theta": 500_000.0}, head_dim, partial)
    assert_same(RopeScaling.from_hf(config), config)


@pytest.mark.parametrize("head_dim,partial", DIMS)
@pytest.mark.parametrize("factor", FACTORS)
def test_ntk_static_equals_default_with_scaled_base(head_dim, partial, factor):
    ours = RopeScaling.from_dict({"type": "ntk", "factor": factor, "theta": 10_000.0, "head_dim": head_dim,
                                  "partial_rotary_factor": partial})
    d = ours.rotary_dim
    config = hf_config({"rope_type": "default", "rope_theta": 10_000.0 * factor ** (d / (d - 2))}, head_dim, partial)
    assert_same(ours, config)
    # and what to_hf writes is loadable by transformers and gives the same table
    hf = ours.to_hf()
    loaded = hf_config(hf["rope_parameters"], head_dim, 1.0)
    assert_same(ours, loaded)


@pytest.mark.parametrize("head_dim,partial", DIMS)
@pytest.mark.parametrize("factor", [1.0, 2.5, 4.0])
def test_dynamic_ntk_around_switch(head_dim, partial, factor):
    original = 2048
    config = hf_config({"rope_type": "dynamic", "factor": factor, "rope_theta": 10_000.0}, head_dim, partial,
                       max_position_embeddings=original)
    ours = RopeScaling.from_hf(config)
    assert ours.original_max_position_embeddings == original
    for seq_len in [None, 1, original - 1, original, original + 1, 2 * original, 3 * original + 517, 16 * original]:
        assert_same(ours, config, seq_len)
    if factor > 1:  # the base actually moves past the switch point
        assert not torch.equal(ours.inv_freq(original + 1), ours.inv_freq(original))


YARN_CASES = [
    dict(factor=4.0),
    dict(factor=2.5, beta_fast=16.0, beta_slow=2.0),
    dict(factor=8.0, truncate=False),
    dict(factor=40.0, mscale=1.0, mscale_all_dim=1.0),  # DeepSeek-V3: attention factor exactly 1
    dict(factor=40.0, mscale=0.707, mscale_all_dim=1.0),
    dict(factor=16.0, mscale=1.0),  # mscale without mscale_all_dim: ignored, as in HF
    dict(factor=6.3, attention_factor=1.25),
    dict(factor=1.0),
    dict(factor=3.0, beta_fast=64.0, beta_slow=0.5, truncate=False),
]


@pytest.mark.parametrize("head_dim,partial", DIMS)
@pytest.mark.parametrize("theta", [10_000.0, 1_000_000.0])
@pytest.mark.parametrize("case", YARN_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_yarn(head_dim, partial, theta, case):
    params = {"rope_type": "yarn", "rope_theta": theta, "original_max_position_embeddings": 4096, **case}
    config = hf_config(params, head_dim, partial, max_position_embeddings=int(4096 * case["factor"]))
    ours = RopeScaling.from_hf(config)
    assert_same(ours, config)
    assert RopeScaling.from_dict({**ours.to_dict()}) == ours


def test_yarn_factor_from_lengths_and_deepseek_attention_factor():
    # no factor: HF takes max_position_embeddings / original_max_position_embeddings
    config = hf_config({"rope_type": "yarn", "rope_theta": 10_000.0, "original_max_position_embeddings": 4096,
                        "factor": None}, 128, 1.0, max_position_embeddings=4096 * 32)
    ours = RopeScaling.from_hf(config)
    assert ours.factor == 32.0
    assert_same(ours, config)
    plain = RopeScaling.from_dict({"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                   "head_dim": 64})
    assert plain.attention_factor == pytest.approx(0.1 * math.log(40) + 1)


def longrope_lists(n, seed):
    g = torch.Generator().manual_seed(seed)
    short = (1.0 + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)).tolist()
    long = (1.0 + 30 * torch.rand(n, generator=g, dtype=torch.float64)).sort().values.tolist()
    return short, long


@pytest.mark.parametrize("head_dim,partial", DIMS)
@pytest.mark.parametrize("factor,attention_factor", [(None, None), (8.0, None), (1.0, None), (32.0, 1.19)])
def test_longrope_around_switch(head_dim, partial, factor, attention_factor):
    original = 4096
    short, long = longrope_lists(int(head_dim * partial) // 2, seed=head_dim)
    params = {"rope_type": "longrope", "rope_theta": 10_000.0, "short_factor": short, "long_factor": long,
              "original_max_position_embeddings": original, "factor": factor, "attention_factor": attention_factor}
    params = {k: v for k, v in params.items() if v is not None}
    config = hf_config(params, head_dim, partial, max_position_embeddings=32 * original)
    ours = RopeScaling.from_hf(config)
    for seq_len in [None, 1, original - 1, original, original + 1, 32 * original]:
        assert_same(ours, config, seq_len)
    assert not torch.equal(ours.inv_freq(original), ours.inv_freq(original + 1))


@pytest.mark.parametrize("head_dim,partial", DIMS)
@pytest.mark.parametrize("theta", THETAS)
@pytest.mark.parametrize("factor,low,high,original", [(8.0, 1.0, 4.0, 8192), (32.0, 1.0, 4.0, 8192),
                                                      (2.5, 0.5, 3.0, 4096), (16.0, 2.0, 8.0, 2048)])
def test_llama3(head_dim, partial, theta, factor, low, high, original):
    params = {"rope_type": "llama3", "rope_theta": theta, "factor": factor, "low_freq_factor": low,
              "high_freq_factor": high, "original_max_position_embeddings": original}
    config = hf_config(params, head_dim, partial, max_position_embeddings=int(original * factor))
    assert_same(RopeScaling.from_hf(config), config)


def test_phi3_config_top_level_original_length_wins():
    # Phi-3 keeps original_max_position_embeddings at the top level; HF lets it override the rope dict
    short, long = longrope_lists(48, seed=1)
    config = Phi3Config(hidden_size=96 * 4, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=1,
                        max_position_embeddings=131072, original_max_position_embeddings=4096,
                        rope_scaling={"type": "longrope", "short_factor": short, "long_factor": long})
    ours = RopeScaling.from_hf(config)
    assert ours.original_max_position_embeddings == 4096 and ours.factor == 32.0
    for seq_len in [None, 4096, 4097]:
        want = ROPE_INIT_FUNCTIONS["longrope"](config, None, seq_len=seq_len)
        torch.testing.assert_close(ours.inv_freq(seq_len), want[0], rtol=2.4e-7, atol=0)
        assert ours.attention_factor == pytest.approx(want[1], rel=1e-12)


@pytest.mark.parametrize("head_dim,partial,theta,factor", list(itertools.product([64, 128], [1.0, 0.5],
                                                                                  [1e4, 5e5], [2.0, 8.0])))
def test_hf_dynamic_module_matches_at_forward_lengths(head_dim, partial, theta, factor):
    """HF's dynamic module recomputes inv_freq from max(position_ids) + 1 in forward; so do we.
    (It computes the new base from a tensor length, in float32, hence ulp-level differences.)"""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = hf_config({"rope_type": "dynamic", "factor": factor, "rope_theta": theta}, head_dim, partial,
                       max_position_embeddings=512)
    module = LlamaRotaryEmbedding(config)
    ours = RopeScaling.from_hf(config)
    for seq_len in [300, 512, 513, 2000]:
        module.forward(torch.zeros(1, dtype=torch.float32), torch.arange(seq_len)[None])
        torch.testing.assert_close(module.inv_freq, ours.inv_freq(seq_len), rtol=2.4e-7, atol=0)
        module.original_max_seq_len, module.max_seq_len_cached = 512, 512  # HF only grows; reset between lengths
        module.inv_freq = module.original_inv_freq.clone()
