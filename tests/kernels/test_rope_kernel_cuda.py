"""python -m pytest -q -m gpu tests/kernels/test_rope_kernel_cuda.py   (needs a CUDA device and megamid._cuda)

The CUDA RoPE kernel against the pure-PyTorch reference, forward and backward, over a grid of layouts,
dtypes, head counts, partial rotary, CP sizes, packed documents, scalings and positions near 1M.
Criterion: the kernel's max error against float64 is within 2x the reference's own error in the same
dtype (plus one ulp of the output scale). Outputs are NaN-filled before every run; inputs are fresh.
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
from rope_kernel_oracle import SCALINGS, cu_seqlens_of, inv_freq_for

pytestmark = pytest.mark.gpu
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@pytest.fixture(autouse=True)
def _kernel_built():
    if rope_ops._cuda is None:
        pytest.fail("CUDA is available but megamid._cuda is not built: pip install -e . with MEGAMID_BUILD_CUDA=1")


def _assert_within_reference_error(got, low, exact, dtype, what):
    assert not torch.isnan(got).any(), f"{what}: NaN left in the output (a position was not written)"
    exact = exact.double()
    ref_err = (low.double() - exact).abs().max().item()
    err = (got.double() - exact).abs().max().item()
    floor = torch.finfo(dtype).eps * max(exact.abs().max().item(), 1e-30)
    assert err <= 2 * ref_err + floor, f"{what}: kernel error {err:.3g} > 2 x reference error {ref_err:.3g}"


def _run(dtype, layout, hq, hk, d, rotary_dim, *, interleaved=False, cp_size=1, cp_rank=0,
         method="default", lengths=None, seq_len=64, batch=2, positions=None, misalign=False):
    # A seed per case: fresh inputs for each, reproducible across runs (str hashes are salted).
    torch.manual_seed(zlib.crc32(repr((dtype, layout, hq, hk, d, rotary_dim, interleaved, cp_size, cp_rank, method, misalign)).encode()))
    dev = torch.device("cuda")
    inv_freq, factor = inv_freq_for(method, rotary_dim)
    inv_freq = inv_freq.to(dev)
    cu = None
    if layout == "thd":
        cu = cu_seqlens_of(lengths, device=dev)
        lead = (sum(lengths) // cp_size,)
    else:
        lead = (seq_len, batch)
    pos = None if positions is None else positions.to(dev)

    def fresh(h):
        x = torch.randn(*lead, h, d, device=dev).to(dtype)
        if misalign:  # one element off a 16-byte boundary: the kernel's element-wise path
            buf = torch.empty(x.numel() + 1, device=dev, dtype=dtype)
            x = buf[1:].view_as(x).copy_(x)
        return x

    kw = dict(layout=layout, interleaved=interleaved, cu_seqlens=cu, position_ids=pos, cp_size=cp_size,
              cp_rank=cp_rank)
    for backward in (False, True):
        q, k = fresh(hq), fresh(hk)
        q_out, k_out = torch.full_like(q, math.nan), torch.full_like(k, math.nan)
        rope_ops._kernel_rope_qk(q, k, q_out, k_out, inv_freq, factor, layout, interleaved, cu, pos, cp_size,
                               cp_rank, backward)
        low = rope_reference(q, k, inv_freq, factor, backward=backward, **kw)
        exact = rope_reference(q.double(), k.double(), inv_freq, factor, backward=backward, **kw)
        torch.cuda.synchronize()
        for name, got, lo, ex in (("q", q_out, low[0], exact[0]), ("k", k_out, low[1], exact[1])):
            _assert_within_reference_error(got, lo, ex, dtype, f"{name} {'backward' if backward else 'forward'}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("hq,hk,d,rotary_dim", [(32, 8, 128, 128), (4, 1, 128, 64), (1, 1, 64, 64),
                                                 (12, 12, 80, 32), (6, 2, 40, 20)])
def test_sbhd_grid(dtype, interleaved, hq, hk, d, rotary_dim):
    _run(dtype, "sbhd", hq, hk, d, rotary_dim, interleaved=interleaved)


@pytest.mark.parametrize("cp_size", [1, 2, 4, 8])
@pytest.mark.parametrize("layout", ["sbhd", "thd"])
def test_context_parallel_ranks(cp_size, layout):
    gen = torch.Generator().manual_seed(cp_size)
    lengths = [2 * cp_size * int(n) for n in torch.randint(1, 12, (40,), generator=gen)]
    for rank in sorted({0, cp_size // 2, cp_size - 1}):
        _run(torch.bfloat16, layout, 8, 2, 128, 128, cp_size=cp_size, cp_rank=rank, method="yarn",
             lengths=lengths, seq_len=64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_many_short_documents(dtype):
    gen = torch.Generator().manual_seed(0)
    lengths = [int(n) for n in torch.randint(1, 40, (2000,), generator=gen)] + [0, 3]
    _run(dtype, "thd", 8, 1, 128, 128, method="llama3", lengths=lengths)


@pytest.mark.parametrize("method", SCALINGS)
def test_scalings_near_one_million(method):
    positions = 1_048_575 - torch.arange(64)
    _run(torch.bfloat16, "sbhd", 8, 2, 128, 128, method=method, positions=positions)
    _run(torch.bfloat16, "thd", 4, 1, 128, 128, method=method, positions=positions, lengths=[64])


def test_hf_position_ids_per_batch_row():
    positions = torch.stack((torch.arange(64), torch.arange(500_000, 500_064), torch.arange(64).flip(0)))
    _run(torch.bfloat16, "sbhd", 4, 2, 128, 96, batch=3, positions=positions, method="longrope")


@pytest.mark.parametrize("interleaved", [False, True])
def test_misaligned_inputs_take_the_elementwise_path(interleaved):
    _run(torch.bfloat16, "sbhd", 4, 2, 64, 64, interleaved=interleaved, misalign=True)


@pytest.mark.parametrize("layout", ["sbhd", "thd"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_qkv_forward_and_backward(layout, dtype):
    torch.manual_seed(5)
    dev = torch.device("cuda")
    groups, q_per_group, d = 8, 4, 128
    inv_freq, factor = inv_freq_for("yarn", 64)  # partial rotary
    inv_freq = inv_freq.to(dev)
    lengths = [12, 30, 2, 20]
    lead = (48, 2) if layout == "sbhd" else (sum(lengths),)
    cu = cu_seqlens_of(lengths, device=dev) if layout == "thd" else None
    kw = dict(layout=layout, cu_seqlens=cu)
    qkv = torch.randn(*lead, groups, (q_per_group + 2) * d, device=dev).to(dtype)
    shapes = rope_ops._fused_shapes(qkv.shape, d)
    q, k, v = (torch.full(s, math.nan, device=dev, dtype=dtype) for s in shapes)
    rope_ops._kernel_rope_fused_qkv(qkv, q, k, v, inv_freq, factor, layout, False, cu, None, 1, 0, False)
    low = rope_fused_qkv_reference(qkv, inv_freq, factor, head_dim=d, **kw)
    exact = rope_fused_qkv_reference(qkv.double(), inv_freq, factor, head_dim=d, **kw)
    for name, got, lo, ex in zip("qkv", (q, k, v), low, exact):
        _assert_within_reference_error(got, lo, ex, dtype, f"fused {name}")
    torch.testing.assert_close(v, low[2], atol=0, rtol=0)
    grads = [torch.randn(s, device=dev).to(dtype) for s in shapes]
    grad_qkv = torch.full_like(qkv, math.nan)
    rope_ops._kernel_rope_fused_qkv(grad_qkv, *grads, inv_freq, factor, layout, False, cu, None, 1, 0, True)
    low = rope_fused_qkv_backward_reference(*grads, inv_freq, factor, **kw)
    exact = rope_fused_qkv_backward_reference(*(g.double() for g in grads), inv_freq, factor, **kw)
    _assert_within_reference_error(grad_qkv, low, exact, dtype, "fused backward")


def test_public_api_autograd_and_inplace(monkeypatch):
    dev = torch.device("cuda")
    inv_freq, factor = inv_freq_for("yarn", 128)
    x = torch.randn(256, 2, 40, 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn_like(x)

    def run(mode, inplace):
        monkeypatch.setenv("MEGAMID_KERNELS", mode)
        y = x * 1.0
        q, k = apply_rope(y[:, :, :32], y[:, :, 32:], inv_freq, factor, inplace=inplace)
        loss = (torch.cat((q, k), dim=2).float() * weight.float()).sum()
        return q.detach(), k.detach(), torch.autograd.grad(loss, x)[0]

    cuda = run("cuda", False)
    for a, b in zip(cuda, run("cuda", True)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # in place computes the same bits
    for a, b in zip(cuda, run("reference", False)):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
    monkeypatch.setenv("MEGAMID_KERNELS", "cuda")
    qkv = torch.randn(64, 2, 8, 6 * 128, device=dev, dtype=torch.bfloat16, requires_grad=True)
    q, k, v = apply_rope_fused_qkv(qkv, inv_freq, factor)
    (q.float().sum() + k.float().sum() + v.float().sum()).backward()
    assert qkv.grad is not None and not torch.isnan(qkv.grad).any()


def test_opcheck_on_cuda():
    dev = torch.device("cuda")
    inv_freq, factor = inv_freq_for("default", 64)
    q, k = torch.randn(16, 2, 4, 64, device=dev), torch.randn(16, 2, 2, 64, device=dev)
    args = (inv_freq.to(dev), factor, "sbhd", False, None, None, 1, 0)
    torch.library.opcheck(torch.ops.megamid.rope_fwd, (q, k, *args))
    torch.library.opcheck(torch.ops.megamid.rope_bwd, (q, k, *args))
