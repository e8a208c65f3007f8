"""python -m pytest -q tests/rope/test_rotary_embedding.py

ScaledRotaryEmbedding (megatron's RotaryEmbedding for any RopeScaling): its cos/sin against HF's
rotary module, megatron's apply path with the attention factor against HF's, the factor reaching
megatron's attention through the config, CP slicing, explicit positions, and a mid-run scaling change.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import _yarn_get_concentration_factor_from_config
from transformers import LlamaConfig
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding
from transformers.models.llama.modeling_llama import rotate_half

from helpers.fake_group import FakeGroup
from megamid.config import ConfigError
from megamid.rope import RopeScaling, cp_shard_positions, packed_positions
from megamid.rope.rotary_embedding import (
    PositionIdsRopeMixin,
    ScaledRotaryEmbedding,
    bind_attention_factor,
    install_rotary_embedding,
)

ORIGINAL = 64  # short lengths keep the test fast; switch points sit at 64
ROPES = {
    "default": {"type": "default", "theta": 500000},
    "linear": {"type": "linear", "factor": 2.5},
    "ntk": {"type": "ntk", "factor": 4},
    "dynamic": {"type": "dynamic", "factor": 3, "original_max_position_embeddings": ORIGINAL},
    "yarn": {"type": "yarn", "factor": 8, "original_max_position_embeddings": ORIGINAL},
    "longrope": {"type": "longrope", "short_factor": [1.0 + i / 50 for i in range(8)], "factor": 16,
                 "long_factor": [1.0 + i for i in range(8)], "original_max_position_embeddings": ORIGINAL},
    "llama3": {"type": "llama3", "factor": 8, "original_max_position_embeddings": ORIGINAL},
}


def make(kind, head_dim=32, partial=0.5):
    return RopeScaling.from_dict({**ROPES[kind], "head_dim": head_dim, "partial_rotary_factor": partial})


def hf_module(rope):
    """HF's own rotary module (GPT-NeoX's honours partial rotary) for the same config."""
    hf = rope.to_hf()
    config = LlamaConfig(hidden_size=rope.head_dim * 4, num_attention_heads=4, num_hidden_layers=1, vocab_size=32,
                         **{"max_position_embeddings": 16 * ORIGINAL, **hf})
    return GPTNeoXRotaryEmbedding(config)


def hf_apply(x, cos, sin, rotary_dim):
    """HF's partial-rotary application (Phi / GPT-NeoX): rotate the first rotary_dim channels. x [b, h, s, d]."""
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    cos, sin = cos[:, None], sin[:, None]
    return torch.cat([rot * cos + rotate_half(rot) * sin, rest], dim=-1)


MEGATRON_CONFIG = SimpleNamespace(apply_rope_fusion=False, rotary_interleaved=False, multi_latent_attention=False,
                                  mrope_section=None)


@pytest.mark.parametrize("kind", list(ROPES))
@pytest.mark.parametrize("seq_len", [ORIGINAL - 8, ORIGINAL + 8])
def test_cos_sin_match_hf_module(kind, seq_len):
    rope = make(kind)
    ours = ScaledRotaryEmbedding(rope)
    positions = torch.arange(seq_len)[None].expand(2, -1)
    cos, sin = hf_module(rope)(torch.zeros(1), positions)
    got_cos, got_sin = ours.hf_cos_sin(positions)
    torch.testing.assert_close(got_cos, cos, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_sin, sin, rtol=1e-6, atol=1e-6)
    # megatron's forward gives the same angles, [s, 1, 1, rotary_dim]
    emb = ours(seq_len)
    assert emb.shape == (seq_len, 1, 1, rope.rotary_dim)
    torch.testing.assert_close(emb[:, 0, 0].cos() * rope.attention_factor, cos[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["default", "yarn", "longrope", "dynamic"])
def test_megatron_apply_with_mscale_equals_hf_apply(kind):
    """Megatron's unfused apply with mscale=attention_factor on freqs [s, b, 1, d] from position_ids
    equals HF's q * cos + rotate_half(q) * sin with cos/sin already scaled: packed positions included."""
    rope = make(kind)
    ours = ScaledRotaryEmbedding(rope)
    torch.manual_seed(0)
    seq, batch, heads = 96, 2, 3
    position_ids = torch.stack([packed_positions(torch.tensor([0, 40, 96])),
                                packed_positions(torch.tensor([0, 96]))])
    q = torch.randn(seq, batch, heads, rope.head_dim)  # megatron's [s, b, h, d]
    freqs = ours.freqs_for_positions(position_ids)
    assert freqs.shape == (seq, batch, 1, rope.rotary_dim)
    got = apply_rotary_pos_emb(q, freqs, MEGATRON_CONFIG, mscale=rope.attention_factor, cp_group=object())
    cos, sin = ours.hf_cos_sin(position_ids)
    want = hf_apply(q.permute(1, 2, 0, 3), cos, sin, rope.rotary_dim).permute(2, 0, 1, 3)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_attention_factor_on_cos_sin_equals_on_q_and_k():
    """Scaling cos and sin by a equals scaling q and k by a (full rotary): logits scale by a**2."""
    rope = make("yarn", head_dim=32, partial=1.0)
    a = rope.attention_factor
    assert a > 1.1
    ours = ScaledRotaryEmbedding(rope)
    torch.manual_seed(0)
    q, k = torch.randn(48, 1, 2, 32, dtype=torch.float64), torch.randn(48, 1, 2, 32, dtype=torch.float64)
    freqs = ours(48).double()
    on_cos_sin = [apply_rotary_pos_emb(t, freqs, MEGATRON_CONFIG, mscale=a, cp_group=object()) for t in (q, k)]
    on_qk = [apply_rotary_pos_emb(t * a, freqs, MEGATRON_CONFIG, mscale=1.0, cp_group=object()) for t in (q, k)]
    plain = [apply_rotary_pos_emb(t, freqs, MEGATRON_CONFIG, mscale=1.0, cp_group=object()) for t in (q, k)]
    for x, y in zip(on_cos_sin, on_qk):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)

    def logits(qk):
        return torch.einsum("sbhd,tbhd->bhst", *qk)

    torch.testing.assert_close(logits(on_cos_sin), a**2 * logits(plain), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("factor", [1.0, 1.0 + 0.1 * math.log(8), 1.0 + 0.1 * math.log(40), 0.707, 1.19, 2.0, 1 / 3])
def test_bind_attention_factor_reaches_megatron_attention(factor):
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, use_cpu_initialization=True)
    assert _yarn_get_concentration_factor_from_config(config) == 1.0
    bind_attention_factor(config, factor)
    # exactly what megatron's attention passes as mscale to apply_rotary_pos_emb
    assert _yarn_get_concentration_factor_from_config(config) == pytest.approx(factor, rel=1e-15)


@pytest.mark.parametrize("kind", ["yarn", "dynamic", "longrope"])
def test_cp_slicing_is_megatrons_layout(kind):
    rope = make(kind)
    seq_len, cp = 128, 4
    full = ScaledRotaryEmbedding(rope)(seq_len)
    for rank in range(cp):
        shard = ScaledRotaryEmbedding(rope, cp_group=FakeGroup(cp, rank))(seq_len)
        # the table for the full length (dynamic / LongRoPE pick theirs from it), rows of this rank
        torch.testing.assert_close(shard, full[cp_shard_positions(seq_len, cp, rank)], rtol=0, atol=0)
    # packed THD: megatron slices per document itself, so the full table comes back
    packed = ScaledRotaryEmbedding(rope, cp_group=FakeGroup(cp, 1))(seq_len, packed_seq=True)
    torch.testing.assert_close(packed, full, rtol=0, atol=0)


def test_explicit_positions_and_seq_len():
    rope = make("longrope")
    ours = ScaledRotaryEmbedding(rope)
    positions = packed_positions(torch.tensor([0, 50, 100]))[None]  # two documents, each shorter than 64
    short = ours.freqs_for_positions(positions)
    torch.testing.assert_close(short[:50, 0, 0], ours(50)[:, 0, 0], rtol=0, atol=0)
    torch.testing.assert_close(short[50:, 0, 0], ours(50)[:, 0, 0], rtol=0, atol=0)
    # a global length past the switch point (e.g. under CP) selects the long factors
    long = ours.freqs_for_positions(positions, seq_len=200)
    torch.testing.assert_close(long[:50, 0, 0], ours(200)[:50, 0, 0], rtol=0, atol=0)
    assert not torch.equal(short, long)
    with pytest.raises(ConfigError, match="position_ids"):
        ours.freqs_for_positions(torch.arange(5))


def test_set_scaling_rebuilds_every_table():
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(num_layers=1, hidden_size=128, num_attention_heads=4, use_cpu_initialization=True)
    before, after = make("default"), make("yarn")
    module = ScaledRotaryEmbedding(before, config=config)
    calls = [((96,), {}), ((96,), {"offset": 5}), ((128,), {"cp_group": FakeGroup(2, 1)}),
             ((128,), {"packed_seq": True})]
    old = [module(*a, **k) for a, k in calls]  # fill the caches
    old_cos = module.get_cos_sin(96)
    assert _yarn_get_concentration_factor_from_config(config) == 1.0

    module.set_scaling(after)
    fresh = ScaledRotaryEmbedding(after)
    for (a, k), stale in zip(calls, old):
        got = module(*a, **k)
        torch.testing.assert_close(got, fresh(*a, **k), rtol=0, atol=0)
        assert not torch.equal(got, stale)
    for x, y in zip(module.get_cos_sin(96), fresh.get_cos_sin(96)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert not torch.equal(module.get_cos_sin(96)[0], old_cos[0])
    torch.testing.assert_close(module.inv_freq, after.inv_freq(), rtol=0, atol=0)
    positions = torch.arange(96)[None]
    torch.testing.assert_close(module.freqs_for_positions(positions), fresh.freqs_for_positions(positions))
    assert _yarn_get_concentration_factor_from_config(config) == pytest.approx(after.attention_factor, rel=1e-15)

    with pytest.raises(ConfigError, match="rotary_dim"):
        module.set_scaling(make("yarn", partial=1.0))


def test_interleaved_layout_pairs_channels():
    rope = make("yarn")
    halves, pairs = ScaledRotaryEmbedding(rope)(16), ScaledRotaryEmbedding(rope, rotary_interleaved=True)(16)
    torch.testing.assert_close(pairs[..., 0::2], halves[..., : rope.rotary_dim // 2], rtol=0, atol=0)
    torch.testing.assert_close(pairs[..., 1::2], halves[..., : rope.rotary_dim // 2], rtol=0, atol=0)


def test_install_on_a_gpt_model_shape():
    """install_rotary_embedding swaps GPTModel.rotary_pos_emb and binds the factor to its config."""
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(num_layers=1, hidden_size=128, num_attention_heads=4, use_cpu_initialization=True)
    gpt = SimpleNamespace(position_embedding_type="rope", config=config, rotary_pos_emb=SimpleNamespace(cp_group=None),
                          rotary_pos_emb_cache={96: "stale"})
    rope = make("yarn")
    module = install_rotary_embedding(gpt, rope)
    assert gpt.rotary_pos_emb is module and gpt.rotary_pos_emb_cache == {}
    assert _yarn_get_concentration_factor_from_config(config) == pytest.approx(rope.attention_factor, rel=1e-15)
    with pytest.raises(ConfigError, match="kv_channels=32"):
        install_rotary_embedding(gpt, make("yarn", head_dim=64))


def test_position_ids_mixin_replaces_megatron_freqs():
    class FakeGPT:  # GPTModel._preprocess returns (decoder_input, rotary_pos_emb, cos, sin, offset, mask)
        def __init__(self, rope):
            self.rotary_pos_emb = ScaledRotaryEmbedding(rope)

        def _preprocess(self, input_ids, position_ids, decoder_input=None, inference_context=None,
                        packed_seq_params=None, padding_mask=None):
            return ("x", self.rotary_pos_emb(input_ids.shape[1]), None, None, None, None)

    class Model(PositionIdsRopeMixin, FakeGPT):
        pass

    model = Model(make("dynamic"))
    tokens = torch.zeros(2, 80, dtype=torch.long)
    position_ids = torch.stack([packed_positions(torch.tensor([0, 30, 80])), torch.arange(80)])
    out = model._preprocess(input_ids=tokens, position_ids=position_ids)
    assert out[1].shape == (80, 1, 1, 16)  # off by default: megatron's shared table
    model.rope_position_ids = True
    out = model._preprocess(input_ids=tokens, position_ids=position_ids)
    assert out[0] == "x" and len(out) == 6
    torch.testing.assert_close(out[1], model.rotary_pos_emb.freqs_for_positions(position_ids), rtol=0, atol=0)
    model.rope_seq_len = 4 * ORIGINAL  # global length under CP picks the dynamic base for it
    out = model._preprocess(tokens, position_ids)
    torch.testing.assert_close(out[1][:, 1], model.rotary_pos_emb(4 * ORIGINAL)[:80, 0], rtol=0, atol=0)


# ---- model.rope_fusion: what the module hands megatron on the te and megamid paths ----------------
@pytest.mark.parametrize("kind", ["yarn", "dynamic", "longrope"])
def test_megamid_fusion_hands_over_inv_freq_and_positions(kind):
    from megamid.rope.fusion import unpack_rope_inputs

    rope = make(kind)
    seq_len, cp = 128, 4
    for rank in range(cp):
        ours = ScaledRotaryEmbedding(rope, cp_group=FakeGroup(cp, rank), fusion="megamid")
        inv_freq, positions = unpack_rope_inputs(ours(seq_len), rope.rotary_dim, seq_len // cp, 1)
        torch.testing.assert_close(inv_freq, rope.inv_freq(seq_len), rtol=0, atol=0)  # the full length's table
        assert torch.equal(positions[:, 0], cp_shard_positions(seq_len, cp, rank))
    ours = ScaledRotaryEmbedding(rope, fusion="megamid")
    position_ids = torch.stack((torch.arange(40), packed_positions(torch.tensor([0, 10, 40]))))  # [b, s]
    inv_freq, positions = unpack_rope_inputs(ours.freqs_for_positions(position_ids), rope.rotary_dim, 40, 2)
    torch.testing.assert_close(inv_freq, rope.inv_freq(40), rtol=0, atol=0)
    assert torch.equal(positions, position_ids.t())


def test_te_fusion_moves_the_factor_to_the_softmax_scale():
    from megatron.core.transformer import TransformerConfig

    rope = make("yarn", partial=1.0)
    config = TransformerConfig(num_layers=1, hidden_size=128, num_attention_heads=4, use_cpu_initialization=True)
    ours = ScaledRotaryEmbedding(rope, config=config, fusion="te")
    assert _yarn_get_concentration_factor_from_config(config) == 1.0  # TE's fused RoPE accepts only 1
    assert config.softmax_scale == pytest.approx(rope.attention_factor ** 2 / math.sqrt(32), rel=1e-15)
    cos, _ = ours.get_cos_sin(16)
    assert float(cos[0, 0]) == 1.0  # cos/sin unscaled
    same_rows = torch.arange(16).expand(3, 16)
    assert ours.freqs_for_positions(same_rows).shape == (16, 1, 1, 32)  # one row for the batch, as TE takes
    with pytest.raises(NotImplementedError, match="one row of positions"):
        ours.freqs_for_positions(torch.stack((torch.arange(16), torch.arange(16).flip(0))))
    partial = ScaledRotaryEmbedding(make("default"), fusion="te")  # factor 1: the fold is exact
    with pytest.raises(ConfigError, match="cannot be folded"):  # a phase bringing a factor: it would not be
        partial.set_scaling(make("yarn"))
    with pytest.raises(ConfigError, match="rope_fusion"):
        ScaledRotaryEmbedding(rope, fusion="fast")
