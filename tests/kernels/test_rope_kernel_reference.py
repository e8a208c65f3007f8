"""python -m pytest -q tests/kernels/test_rope_kernel_reference.py

The pure-PyTorch RoPE reference (the kernel's oracle) against a float64 loop, against itself sharded
(context parallel, packed documents), and against megatron-core's and HF's own RoPE code.
"""

import math

import pytest
import torch

from megamid.kernels.rope import apply_rope, apply_rope_fused_qkv
from megamid.kernels.rope_reference import rope_positions, rope_reference
from rope_kernel_oracle import (
    SCALINGS,
    cp_shard_indices,
    cu_seqlens_of,
    doc_positions,
    inv_freq_for,
    naive_rope,
)


def _sbhd_as_tokens(x):
    """[s, b, h, d] -> [s * b, h, d] with token n = s_idx * b + b_idx (the kernel's order)."""
    return x.reshape(-1, *x.shape[2:])


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim", [16, 8])
@pytest.mark.parametrize("method", ["default", "yarn", "longrope"])
def test_reference_matches_float64_loop_sbhd(interleaved, rotary_dim, method):
    torch.manual_seed(0)
    s, b, hq, hk, d = 12, 2, 4, 2, 16
    inv_freq, factor = inv_freq_for(method, rotary_dim, base=10000.0)
    q, k = torch.randn(s, b, hq, d), torch.randn(s, b, hk, d)
    out_q, out_k = rope_reference(q, k, inv_freq, factor, interleaved=interleaved)
    positions = [si for si in range(s) for _ in range(b)]
    for x, y in ((q, out_q), (k, out_k)):
        want = naive_rope(_sbhd_as_tokens(x), positions, inv_freq, factor, interleaved=interleaved)
        torch.testing.assert_close(_sbhd_as_tokens(y).double(), want, atol=2e-6, rtol=2e-6)


def test_reference_in_float64_matches_exact_angles():
    torch.manual_seed(1)
    q, k = torch.randn(20, 1, 3, 8, dtype=torch.float64), torch.randn(20, 1, 1, 8, dtype=torch.float64)
    inv_freq, _ = inv_freq_for("default", 8, base=10000.0)
    out_q, _ = rope_reference(q, k, inv_freq, 1.3)
    want = naive_rope(q[:, 0], list(range(20)), inv_freq, 1.3, fp32_angle=False)
    torch.testing.assert_close(out_q[:, 0], want, atol=1e-12, rtol=1e-12)


def test_positions_near_one_million_keep_fp32_angle_convention():
    # At 1M the float32 angle itself is off by up to half an ulp (~0.03 rad): the convention HF and
    # Megatron share. The reference follows it exactly; the float64 angle differs within that bound.
    torch.manual_seed(2)
    positions = torch.tensor([999_000, 999_999, 1_000_000, 1_048_575, 524_287, 131_071])
    inv_freq, factor = inv_freq_for("yarn", 16, factor=40.0)
    q, k = torch.randn(6, 2, 16), torch.randn(6, 1, 16)
    out_q, _ = rope_reference(q, k, inv_freq, factor, layout="thd", position_ids=positions)
    want = naive_rope(q, positions.tolist(), inv_freq, factor)
    torch.testing.assert_close(out_q.double(), want, atol=5e-6, rtol=5e-6)
    exact = naive_rope(q, positions.tolist(), inv_freq, factor, fp32_angle=False)
    angle_error = 1_048_575 * 2.0 ** -24  # half an ulp of the largest angle
    assert (out_q.double() - exact).abs().max() <= 2 * angle_error * factor * q.abs().max() + 1e-5


def test_thd_positions_restart_at_each_document():
    lengths = [5, 1, 0, 7, 3]
    pos = rope_positions("thd", sum(lengths), 1, cu_seqlens=cu_seqlens_of(lengths))
    assert pos[:, 0].tolist() == doc_positions(lengths)


@pytest.mark.parametrize("cp_size", [2, 4, 8])
def test_sbhd_cp_shards_equal_the_full_sequence(cp_size):
    torch.manual_seed(3)
    length, d = 16 * cp_size, 16
    inv_freq, factor = inv_freq_for("llama3", d)
    q, k = torch.randn(length, 2, 4, d), torch.randn(length, 2, 1, d)
    full_q, full_k = rope_reference(q, k, inv_freq, factor)
    for rank in range(cp_size):
        idx = torch.tensor(cp_shard_indices(length, cp_size, rank))
        shard_q, shard_k = rope_reference(q[idx], k[idx], inv_freq, factor, cp_size=cp_size, cp_rank=rank)
        torch.testing.assert_close(shard_q, full_q[idx], atol=0, rtol=0)
        torch.testing.assert_close(shard_k, full_k[idx], atol=0, rtol=0)


@pytest.mark.parametrize("cp_size", [1, 2, 4])
def test_thd_cp_shards_equal_each_full_document(cp_size):
    torch.manual_seed(4)
    lengths = [2 * cp_size * n for n in (3, 1, 5, 2)]
    d = 8
    inv_freq, factor = inv_freq_for("ntk", d)
    q, k = torch.randn(sum(lengths), 3, d), torch.randn(sum(lengths), 1, d)
    full_q, full_k = rope_reference(q, k, inv_freq, factor, layout="thd", cu_seqlens=cu_seqlens_of(lengths))
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    for rank in range(cp_size):
        idx = torch.tensor([start + j for start, length in zip(starts, lengths)
                            for j in cp_shard_indices(length, cp_size, rank)])
        shard_q, shard_k = rope_reference(q[idx], k[idx], inv_freq, factor, layout="thd",
                                          cu_seqlens=cu_seqlens_of(lengths), cp_size=cp_size, cp_rank=rank)
        torch.testing.assert_close(shard_q, full_q[idx], atol=0, rtol=0)
        torch.testing.assert_close(shard_k, full_k[idx], atol=0, rtol=0)


def test_explicit_position_ids():
    torch.manual_seed(5)
    s, b, d = 10, 3, 8
    inv_freq, _ = inv_freq_for("default", d)
    q, k = torch.randn(s, b, 2, d), torch.randn(s, b, 1, d)
    same = rope_reference(q, k, inv_freq, position_ids=torch.arange(s))
    torch.testing.assert_close(same[0], rope_reference(q, k, inv_freq)[0], atol=0, rtol=0)
    pos = torch.randint(0, 5000, (b, s))  # HF's [batch, seq]
    out_q, _ = rope_reference(q, k, inv_freq, position_ids=pos)
    for bi in range(b):
        want = naive_rope(q[:, bi], pos[bi].tolist(), inv_freq)
        torch.testing.assert_close(out_q[:, bi].double(), want, atol=2e-6, rtol=2e-6)


def test_interleaved_is_half_split_on_permuted_dims():
    torch.manual_seed(6)
    d, rd = 12, 8
    inv_freq, factor = inv_freq_for("linear", rd)
    q, k = torch.randn(9, 2, 3, d), torch.randn(9, 2, 1, d)
    # Interleaved pair (2i, 2i+1) is half-split pair (i, i + rd/2) after this permutation.
    perm = torch.cat((torch.arange(0, rd, 2), torch.arange(1, rd, 2), torch.arange(rd, d)))
    inter_q, _ = rope_reference(q, k, inv_freq, factor, interleaved=True)
    half_q, _ = rope_reference(q[..., perm], k[..., perm], inv_freq, factor)
    torch.testing.assert_close(inter_q[..., perm], half_q, atol=0, rtol=0)
    torch.testing.assert_close(inter_q[..., rd:], q[..., rd:], atol=0, rtol=0)  # partial rotary passes


def test_backward_is_the_adjoint_of_forward():
    torch.manual_seed(7)
    inv_freq, factor = inv_freq_for("yarn", 16)
    x, y = torch.randn(14, 2, 3, 16, dtype=torch.float64), torch.randn(14, 2, 3, 16, dtype=torch.float64)
    (fx, _), (by, _) = rope_reference(x, x, inv_freq, factor), rope_reference(y, y, inv_freq, factor, backward=True)
    assert torch.allclose((fx * y).sum(), (x * by).sum(), rtol=1e-12)
    back, _ = rope_reference(fx, fx, inv_freq, factor, backward=True)
    torch.testing.assert_close(back, x * factor**2, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim", [32, 16])
def test_matches_megatron_unfused_bshd_with_mscale(interleaved, rotary_dim):
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    torch.manual_seed(8)
    s, d = 24, 32
    inv_freq, mscale = inv_freq_for("yarn", rotary_dim, factor=16.0)
    q = torch.randn(s, 2, 4, d)
    freqs = torch.outer(torch.arange(s, dtype=torch.float32), inv_freq)
    # Megatron's RotaryEmbedding layout: halves concatenated, or each frequency repeated when interleaved.
    emb = freqs.repeat_interleave(2, dim=-1) if interleaved else torch.cat((freqs, freqs), dim=-1)
    want = _apply_rotary_pos_emb_bshd(q, emb[:, None, None, :], rotary_interleaved=interleaved, mscale=mscale)
    got, _ = rope_reference(q, q, inv_freq, mscale, interleaved=interleaved)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cp_size", [1, 2, 4])
def test_matches_megatron_thd_with_cp(cp_size):
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_thd

    torch.manual_seed(9)
    d = 16
    lengths = [2 * cp_size * n for n in (4, 1, 6)]
    inv_freq, mscale = inv_freq_for("yarn", d, factor=4.0)
    cu = cu_seqlens_of(lengths)
    freqs = torch.outer(torch.arange(max(lengths) + 3, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, None, :]
    for rank in range(cp_size):
        group = type("Group", (), {"size": lambda self: cp_size, "rank": lambda self, r=rank: r})()
        t = torch.randn(sum(lengths) // cp_size, 3, d)
        want = _apply_rotary_pos_emb_thd(t, cu, emb, mscale=mscale, cp_group=group)
        got, _ = rope_reference(t, t, inv_freq, mscale, layout="thd", cu_seqlens=cu, cp_size=cp_size, cp_rank=rank)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_matches_hf_apply_rotary_pos_emb():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    torch.manual_seed(10)
    b, h, s, d = 2, 4, 16, 32
    inv_freq, factor = inv_freq_for("llama3", d)
    pos = torch.arange(s)[None].expand(b, s) + torch.tensor([[0], [100]])
    angle = pos[..., None].float() * inv_freq
    emb = torch.cat((angle, angle), dim=-1)
    q, k = torch.randn(b, h, s, d), torch.randn(b, 1, s, d)
    want_q, want_k = llama.apply_rotary_pos_emb(q, k, emb.cos() * factor, emb.sin() * factor)
    got_q, got_k = rope_reference(q.permute(2, 0, 1, 3), k.permute(2, 0, 1, 3), inv_freq, factor, position_ids=pos)
    torch.testing.assert_close(got_q.permute(1, 2, 0, 3), want_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k.permute(1, 2, 0, 3), want_k, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["sbhd", "thd"])
@pytest.mark.parametrize("rotary_dim", [16, 8])
def test_fused_qkv_equals_split_then_separate_calls(layout, rotary_dim):
    torch.manual_seed(11)
    groups, q_per_group, d = 2, 3, 16
    lead = (10, 2) if layout == "sbhd" else (12,)
    qkv = torch.randn(*lead, groups, (q_per_group + 2) * d)
    inv_freq, factor = inv_freq_for("yarn", rotary_dim)
    kw = dict(layout=layout, cu_seqlens=cu_seqlens_of([5, 7]) if layout == "thd" else None)
    q, k, v = apply_rope_fused_qkv(qkv, inv_freq, factor, head_dim=d, **kw)
    x = qkv.view(*lead, groups, q_per_group + 2, d)
    want_q, want_k = apply_rope(x[..., :q_per_group, :].reshape(*lead, groups * q_per_group, d),
                                x[..., q_per_group, :], inv_freq, factor, **kw)
    torch.testing.assert_close(q, want_q, atol=0, rtol=0)
    torch.testing.assert_close(k, want_k, atol=0, rtol=0)
    torch.testing.assert_close(v, x[..., q_per_group + 1, :], atol=0, rtol=0)
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()


@pytest.mark.parametrize("method", SCALINGS)
def test_every_scaling_goes_through_the_same_op(method):
    torch.manual_seed(12)
    inv_freq, factor = inv_freq_for(method, 16)
    q = torch.randn(6, 1, 2, 16)
    out, _ = apply_rope(q, q, inv_freq, factor, position_ids=torch.arange(100_000, 100_006))
    want = naive_rope(q[:, 0], list(range(100_000, 100_006)), inv_freq, factor)
    torch.testing.assert_close(out[:, 0].double(), want, atol=5e-6, rtol=5e-6)
    assert math.isfinite(float(out.abs().max()))
