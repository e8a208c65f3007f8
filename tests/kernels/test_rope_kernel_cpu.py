"""python -m pytest -q tests/kernels/test_rope_kernel_cpu.py

The RoPE kernel's arithmetic (csrc/rope/rope_math.h) through megamid._C's CPU loop against the
pure-PyTorch reference, forward and backward, over a sampled grid: sbhd and THD, fp32/bf16/fp16,
few-head K, partial and interleaved rotary, CP 1/2/4/8 dual-chunk shards, 2,000 packed documents,
positions near 1M, every scaling method of megamid.rope, and the fused QKV entry. Only the CUDA launch
(tests/kernels/test_rope_kernel_cuda.py, gpu-marked) is left for a GPU.
Criterion as on the GPU: the loop's max error against float64 is within 2x the reference's own error
in the same dtype (plus one ulp of the output scale); outputs are NaN-filled so unwritten ones show.
"""

import math
import zlib

import pytest
import torch

from megamid.kernels import rope as rope_ops
from megamid.kernels.rope import apply_rope, apply_rope_fused_qkv
from megamid.kernels.rope_reference import (
    rope_fused_qkv_backward_reference,
    rope_fused_qkv_reference,
    rope_reference,
)
from megamid.rope import RopeScaling
from rope_kernel_oracle import cu_seqlens_of, inv_freq_for

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# megamid.rope's methods: (rope dict, the length its table is for); LongRoPE's factors sized at use
_LONGROPE = {"type": "longrope", "original_max_position_embeddings": 4096, "factor": 32.0}
ROPES = {
    "default": ({"type": "default", "theta": 500000.0}, None),
    "linear": ({"type": "linear", "factor": 4.0}, None),
    "ntk": ({"type": "ntk", "factor": 4.0}, None),
    "dynamic": ({"type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 8192}, 1 << 20),
    "yarn": ({"type": "yarn", "factor": 32.0, "original_max_position_embeddings": 32768, "theta": 1e6}, None),
    "longrope_short": (_LONGROPE, 1024),
    "longrope_long": (_LONGROPE, 1 << 20),
    "llama3": ({"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}, None),
}


def _scaling(name, head_dim=128):
    rope, seq_len = ROPES[name]
    rope = dict(rope)
    if rope["type"] == "longrope":
        n = head_dim // 2
        rope.update(short_factor=[1.0 + i / n for i in range(n)], long_factor=[1.0 + 8 * i / n for i in range(n)])
    inv_freq, factor = RopeScaling.from_dict(rope, head_dim=head_dim).compute(seq_len)
    if name.startswith("yarn") or name.startswith("longrope"):
        assert factor != 1.0  # the attention factor is exercised
    return inv_freq.float(), factor


@pytest.fixture(autouse=True)
def _loop_built():
    if rope_ops._cpu is None:
        pytest.fail("megamid._C has no rope_qk: rebuild it (python setup.py build_ext --inplace)")


def _assert_within_reference_error(got, low, exact, dtype, what):
    assert not torch.isnan(got).any(), f"{what}: NaN left in the output (a position was not written)"
    exact = exact.double()
    ref_err = (low.double() - exact).abs().max().item()
    err = (got.double() - exact).abs().max().item()
    floor = torch.finfo(dtype).eps * max(exact.abs().max().item(), 1e-30)
    assert err <= 2 * ref_err + floor, f"{what}: loop error {err:.3g} > 2 x reference error {ref_err:.3g}"


def _run(dtype, layout, hq, hk, d, rotary_dim, *, interleaved=False, cp_size=1, cp_rank=0, scaling=None,
         lengths=None, seq_len=32, batch=2, positions=None, strided=False):
    torch.manual_seed(zlib.crc32(repr((dtype, layout, hq, hk, d, rotary_dim, interleaved, cp_size, cp_rank,
                                       scaling, strided)).encode()))
    if scaling is None:
        inv_freq, factor = inv_freq_for("yarn", rotary_dim)
    else:
        inv_freq, factor = _scaling(scaling, head_dim=rotary_dim)
    cu = cu_seqlens_of(lengths) if layout == "thd" and positions is None else None
    lead = (sum(lengths) // cp_size,) if layout == "thd" else (seq_len, batch)

    def fresh(h):
        x = torch.randn(*lead, h, d).to(dtype)
        if strided:  # heads interleaved with other data: strides that are not the contiguous ones
            x = torch.randn(*lead, 2 * h, d).to(dtype)[..., ::2, :].copy_(x)
        return x

    kw = dict(layout=layout, interleaved=interleaved, cu_seqlens=cu, position_ids=positions, cp_size=cp_size,
              cp_rank=cp_rank)
    for backward in (False, True):
        q, k = fresh(hq), fresh(hk)
        q_out, k_out = torch.full_like(q, math.nan), torch.full_like(k, math.nan)
        rope_ops._kernel_rope_qk(q, k, q_out, k_out, inv_freq, factor, layout, interleaved, cu, positions, cp_size,
                                 cp_rank, backward)
        low = rope_reference(q, k, inv_freq, factor, backward=backward, **kw)
        exact = rope_reference(q.double(), k.double(), inv_freq, factor, backward=backward, **kw)
        for name, got, lo, ex in (("q", q_out, low[0], exact[0]), ("k", k_out, low[1], exact[1])):
            _assert_within_reference_error(got, lo, ex, dtype, f"{name} {'backward' if backward else 'forward'}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("factor", [1.0, 0.5, 3.0])
def test_every_16_bit_value_converts_and_rounds_as_cuda(dtype, factor):
    # angle 0 (position 0): y1 = x1 * factor exactly in fp32, so the output is the fp32 product rounded
    # once to the dtype: every bit pattern (subnormals, ties, overflow, inf, NaN) against torch's RNE.
    x = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype)
    q = torch.stack((x, torch.zeros_like(x)), dim=-1)[:, None, :]  # [t, 1 head, d = 2]
    out, _ = rope_ops.rope_fwd(q, q[:, :0], torch.ones(1), factor, "thd", False, None,
                               torch.zeros(x.numel(), dtype=torch.int64), 1, 0)
    want = (x.float() * factor).to(dtype)
    got = out[:, 0, 0]
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("hq,hk,d,rotary_dim", [(32, 8, 128, 128), (4, 1, 128, 64), (12, 12, 80, 32), (6, 2, 40, 20)])
def test_sbhd_grid(dtype, interleaved, hq, hk, d, rotary_dim):
    _run(dtype, "sbhd", hq, hk, d, rotary_dim, interleaved=interleaved)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_heads(dtype):
    _run(dtype, "sbhd", 4, 2, 64, 48, strided=True)


@pytest.mark.parametrize("cp_size", [1, 2, 4, 8])
@pytest.mark.parametrize("layout", ["sbhd", "thd"])
def test_context_parallel_ranks(cp_size, layout):
    gen = torch.Generator().manual_seed(cp_size)
    lengths = [2 * cp_size * int(n) for n in torch.randint(1, 6, (12,), generator=gen)]
    for rank in sorted({0, cp_size // 2, cp_size - 1}):
        _run(torch.bfloat16, layout, 4, 2, 64, 64, cp_size=cp_size, cp_rank=rank, lengths=lengths, seq_len=32,
             interleaved=cp_size == 4)


@pytest.mark.parametrize("cp_size", [2, 4, 8])
def test_cp_shards_reassemble_the_unsharded_rotation(cp_size):
    # Kernel against kernel: every rank's output, placed at its dual-chunk positions, is the CP=1 output.
    torch.manual_seed(cp_size)
    inv_freq, factor = _scaling("yarn", head_dim=32)
    lengths = [2 * cp_size * n for n in (3, 1, 5)]
    cu = cu_seqlens_of(lengths)
    for layout in ("sbhd", "thd"):
        full = torch.randn(sum(lengths) if layout == "thd" else 8 * cp_size, *(() if layout == "thd" else (2,)), 3, 32)
        want, _ = apply_rope(full, full[..., :1, :], inv_freq, factor, layout=layout,
                             cu_seqlens=cu if layout == "thd" else None)
        for rank in range(cp_size):
            if layout == "thd":
                idx = torch.cat([_shard(torch.arange(int(cu[i]), int(cu[i + 1])), cp_size, rank)
                                 for i in range(len(lengths))])
            else:
                idx = _shard(torch.arange(full.shape[0]), cp_size, rank)
            got, _ = apply_rope(full[idx], full[idx][..., :1, :], inv_freq, factor, layout=layout,
                                cu_seqlens=cu if layout == "thd" else None, cp_size=cp_size, cp_rank=rank)
            torch.testing.assert_close(got, want[idx], atol=0, rtol=0)


def _shard(idx, cp_size, rank):
    chunks = idx.chunk(2 * cp_size)
    return torch.cat((chunks[rank], chunks[2 * cp_size - 1 - rank]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_thousands_of_documents(dtype):
    gen = torch.Generator().manual_seed(0)
    lengths = [int(n) for n in torch.randint(1, 12, (2000,), generator=gen)] + [0, 3]
    _run(dtype, "thd", 2, 1, 32, 32, scaling="llama3" if dtype != torch.float32 else "longrope_long",
         lengths=lengths)


@pytest.mark.parametrize("scaling", sorted(ROPES))
def test_every_scaling_near_one_million(scaling):
    positions = 1_048_575 - torch.arange(32)
    _run(torch.bfloat16, "sbhd", 8, 2, 128, 128, scaling=scaling, positions=positions)
    _run(torch.float32, "thd", 4, 1, 128, 128, scaling=scaling, positions=positions, lengths=[32])


def test_hf_position_ids_per_batch_row():
    positions = torch.stack((torch.arange(32), torch.arange(500_000, 500_032), torch.arange(32).flip(0)))
    _run(torch.bfloat16, "sbhd", 4, 2, 128, 96, batch=3, positions=positions, scaling="longrope_short")


@pytest.mark.parametrize("layout", ["sbhd", "thd"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_qkv_forward_and_backward(layout, dtype):
    torch.manual_seed(5)
    groups, q_per_group, d = 4, 3, 64
    inv_freq, factor = inv_freq_for("yarn", 48)  # partial rotary
    lengths = [12, 30, 2, 20]
    lead = (24, 2) if layout == "sbhd" else (sum(lengths),)
    cu = cu_seqlens_of(lengths) if layout == "thd" else None
    kw = dict(layout=layout, cu_seqlens=cu)
    qkv = torch.randn(*lead, groups, (q_per_group + 2) * d).to(dtype)
    shapes = rope_ops._fused_shapes(qkv.shape, d)
    q, k, v = (torch.full(s, math.nan, dtype=dtype) for s in shapes)
    rope_ops._kernel_rope_fused_qkv(qkv, q, k, v, inv_freq, factor, layout, False, cu, None, 1, 0, False)
    low = rope_fused_qkv_reference(qkv, inv_freq, factor, head_dim=d, **kw)
    exact = rope_fused_qkv_reference(qkv.double(), inv_freq, factor, head_dim=d, **kw)
    for name, got, lo, ex in zip("qkv", (q, k, v), low, exact):
        _assert_within_reference_error(got, lo, ex, dtype, f"fused {name}")
    torch.testing.assert_close(v, low[2], atol=0, rtol=0)  # V is copied bit for bit
    grads = [torch.randn(s).to(dtype) for s in shapes]
    grad_qkv = torch.full_like(qkv, math.nan)
    rope_ops._kernel_rope_fused_qkv(grad_qkv, *grads, inv_freq, factor, layout, False, cu, None, 1, 0, True)
    low = rope_fused_qkv_backward_reference(*grads, inv_freq, factor, **kw)
    exact = rope_fused_qkv_backward_reference(*(g.double() for g in grads), inv_freq, factor, **kw)
    _assert_within_reference_error(grad_qkv, low, exact, dtype, "fused backward")


def test_public_api_autograd_and_inplace(monkeypatch):
    inv_freq, factor = _scaling("yarn", head_dim=64)
    x = torch.randn(64, 2, 10, 64, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn_like(x)

    def run(mode, inplace):
        monkeypatch.setenv("MEGAMID_KERNELS", mode)
        y = x * 1.0
        q, k = apply_rope(y[:, :, :8], y[:, :, 8:], inv_freq, factor, inplace=inplace)
        loss = (torch.cat((q, k), dim=2).float() * weight.float()).sum()
        return q.detach(), k.detach(), torch.autograd.grad(loss, x)[0]

    cpu = run("cpu", False)
    for a, b in zip(cpu, run("cpu", True)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # in place computes the same bits
    for a, b in zip(cpu, run("reference", False)):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
    monkeypatch.setenv("MEGAMID_KERNELS", "cpu")
    qkv = torch.randn(32, 2, 2, 6 * 64, dtype=torch.bfloat16, requires_grad=True)
    q, k, v = apply_rope_fused_qkv(qkv, inv_freq, factor)
    (q.float().sum() + k.float().sum() + v.float().sum()).backward()
    monkeypatch.setenv("MEGAMID_KERNELS", "reference")
    qkv_ref = qkv.detach().clone().requires_grad_()
    q, k, v = apply_rope_fused_qkv(qkv_ref, inv_freq, factor)
    (q.float().sum() + k.float().sum() + v.float().sum()).backward()
    torch.testing.assert_close(qkv.grad.float(), qkv_ref.grad.float(), atol=2e-2, rtol=2e-2)


def test_bad_arguments_raise_from_the_loop():
    inv_freq, factor = inv_freq_for("default", 8)
    q = torch.randn(4, 1, 2, 8)
    with pytest.raises(ValueError, match="cp_size must be >= 1"):
        rope_ops._kernel_rope_qk(q, q, q.clone(), q.clone(), inv_freq, factor, "sbhd", False, None, None, 2, 5,
                                 False)


def test_every_kernel_module_takes_the_cpu_mode(monkeypatch):
    # MEGAMID_KERNELS is shared: the attention merge must accept "cpu" too (its C++ twin or an error)
    from megamid.kernels import attention_merge

    monkeypatch.setenv("MEGAMID_KERNELS", "cpu")
    assert attention_merge.kernel_backend(torch.device("cpu"), torch.float32) == "cpp"
    with pytest.raises(RuntimeError, match="MEGAMID_KERNELS=cpu"):
        attention_merge.kernel_backend(torch.device("cpu"), torch.bfloat16)
