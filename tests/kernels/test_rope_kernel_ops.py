"""python -m pytest -q tests/kernels/test_rope_kernel_ops.py

The torch.library face of the RoPE kernel: registration, fake (meta) implementations, opcheck,
float64 gradcheck through the reference, in-place autograd, MEGAMID_KERNELS and argument errors.
"""

import pytest
import torch

from megamid.kernels import rope as rope_ops
from megamid.kernels.rope import apply_rope, apply_rope_fused_qkv, kernel_backend
from rope_kernel_oracle import cu_seqlens_of, inv_freq_for

OPS = ("rope_fwd", "rope_bwd", "rope_fwd_", "rope_fused_qkv_fwd", "rope_fused_qkv_bwd")


def _args(layout="sbhd", cp_size=1, cp_rank=0, dtype=torch.float32, method="yarn", rotary_dim=8):
    inv_freq, factor = inv_freq_for(method, rotary_dim)
    cu = cu_seqlens_of([4 * cp_size, 8 * cp_size]) if layout == "thd" else None
    return inv_freq, factor, layout, False, cu, None, cp_size, cp_rank


def test_ops_are_registered():
    for name in OPS:
        assert hasattr(torch.ops.megamid, name), name


@pytest.mark.parametrize("layout", ["sbhd", "thd"])
def test_opcheck(layout):
    torch.manual_seed(0)
    lead = (6, 2) if layout == "sbhd" else (6,)
    args = _args(layout, cp_size=1)
    q, k = torch.randn(*lead, 4, 16), torch.randn(*lead, 2, 16)
    if layout == "thd":
        args = (args[0], args[1], layout, False, cu_seqlens_of([2, 4]), None, 1, 0)
    torch.library.opcheck(torch.ops.megamid.rope_fwd, (q.requires_grad_(), k.requires_grad_(), *args))
    torch.library.opcheck(torch.ops.megamid.rope_bwd, (q, k, *args))
    torch.library.opcheck(torch.ops.megamid.rope_fwd_, (q.detach().clone(), k.detach().clone(), *args))
    qkv = torch.randn(*lead, 2, 4 * 16, requires_grad=True)
    fused = (args[0], args[1], 16, *args[2:])
    torch.library.opcheck(torch.ops.megamid.rope_fused_qkv_fwd, (qkv, *fused))
    gq, gk, gv = torch.randn(*lead, 4, 16), torch.randn(*lead, 2, 16), torch.randn(*lead, 2, 16)
    torch.library.opcheck(torch.ops.megamid.rope_fused_qkv_bwd, (gq, gk, gv, *args))


def test_meta_shapes():
    q, k = torch.empty(8, 2, 32, 128, device="meta"), torch.empty(8, 2, 8, 128, device="meta")
    inv_freq, _ = inv_freq_for("default", 128)
    out_q, out_k = apply_rope(q, k, inv_freq.to("meta"))
    assert out_q.shape == q.shape and out_k.shape == k.shape and out_q.device.type == "meta"
    qkv = torch.empty(8, 2, 8, 6 * 128, device="meta", dtype=torch.bfloat16)
    q, k, v = apply_rope_fused_qkv(qkv, inv_freq.to("meta"))
    assert (q.shape, k.shape, v.shape) == ((8, 2, 32, 128), (8, 2, 8, 128), (8, 2, 8, 128))
    assert q.dtype == torch.bfloat16


@pytest.mark.parametrize("layout,cp_size,cp_rank", [("sbhd", 1, 0), ("sbhd", 2, 1), ("thd", 2, 0)])
@pytest.mark.parametrize("interleaved", [False, True])
def test_gradcheck_float64(layout, cp_size, cp_rank, interleaved):
    torch.manual_seed(1)
    inv_freq, factor = inv_freq_for("longrope", 4)
    kw = dict(layout=layout, interleaved=interleaved, cp_size=cp_size, cp_rank=cp_rank,
              cu_seqlens=cu_seqlens_of([4 * cp_size, 8 * cp_size]) if layout == "thd" else None)
    lead = (4, 2) if layout == "sbhd" else (12,)  # THD: documents of 4 and 8 local tokens
    q = torch.randn(*lead, 3, 6, dtype=torch.float64, requires_grad=True)  # d=6: partial rotary
    k = torch.randn(*lead, 1, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: apply_rope(a, b, inv_freq, factor, **kw), (q, k))
    assert torch.autograd.gradgradcheck(lambda a, b: apply_rope(a, b, inv_freq, factor, **kw), (q, k))


@pytest.mark.parametrize("layout", ["sbhd", "thd"])
def test_gradcheck_fused_qkv_float64(layout):
    torch.manual_seed(2)
    inv_freq, factor = inv_freq_for("yarn", 4)
    lead = (4, 2) if layout == "sbhd" else (6,)
    qkv = torch.randn(*lead, 2, 4 * 6, dtype=torch.float64, requires_grad=True)
    kw = dict(head_dim=6, layout=layout, cu_seqlens=cu_seqlens_of([2, 4]) if layout == "thd" else None)
    assert torch.autograd.gradcheck(lambda x: apply_rope_fused_qkv(x, inv_freq, factor, **kw), (qkv,))


def test_inplace_matches_out_of_place_with_gradients():
    torch.manual_seed(3)
    inv_freq, factor = inv_freq_for("yarn", 8)
    base = torch.randn(5, 2, 6, 8, requires_grad=True)
    weight = torch.randn(5, 2, 6, 8)

    def run(inplace):
        x = base * 1.0  # a non-leaf, like a linear layer's output
        q, k = x[:, :, :4], x[:, :, 4:]
        out_q, out_k = apply_rope(q, k, inv_freq, factor, inplace=inplace)
        if inplace:
            assert out_q.data_ptr() == q.data_ptr()
        loss = (torch.cat((out_q, out_k), dim=2) * weight).sum()
        (grad,) = torch.autograd.grad(loss, base)
        return out_q.detach(), out_k.detach(), grad

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    with torch.no_grad():
        q, k = torch.randn(5, 2, 4, 8), torch.randn(5, 2, 2, 8)
        want = apply_rope(q, k, inv_freq, factor)
        apply_rope(q, k, inv_freq, factor, inplace=True)
        torch.testing.assert_close(q, want[0], atol=0, rtol=0)


def test_non_contiguous_inputs_keep_their_layout():
    torch.manual_seed(4)
    inv_freq, _ = inv_freq_for("default", 8)
    q = torch.randn(2, 7, 4, 8).transpose(0, 1)  # [s, b, h, d] with b outermost in memory
    k = torch.randn(7, 2, 2, 8)
    out_q, _ = apply_rope(q, k, inv_freq)
    assert out_q.stride() == torch.empty_like(q).stride()
    torch.testing.assert_close(out_q, apply_rope(q.contiguous(), k, inv_freq)[0], atol=0, rtol=0)


def test_kernel_switch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("MEGAMID_KERNELS", "auto")
    assert kernel_backend(cpu, torch.bfloat16) == "cpu"  # the CPU loop of megamid._C
    assert kernel_backend(cpu, torch.float64) == "reference"  # gradcheck's dtype: the reference
    monkeypatch.setenv("MEGAMID_KERNELS", "reference")
    assert kernel_backend(torch.device("cuda"), torch.bfloat16) == "reference"
    assert kernel_backend(cpu, torch.bfloat16) == "reference"
    monkeypatch.setenv("MEGAMID_KERNELS", "fast")
    with pytest.raises(ValueError, match="MEGAMID_KERNELS='fast'"):
        kernel_backend(cpu, torch.float32)
    monkeypatch.setenv("MEGAMID_KERNELS", "cuda")
    with pytest.raises(RuntimeError, match="MEGAMID_KERNELS=cuda"):
        apply_rope(torch.randn(4, 1, 2, 8), torch.randn(4, 1, 1, 8), inv_freq_for("default", 8)[0])
    monkeypatch.setattr(rope_ops, "_cuda", None)
    with pytest.raises(RuntimeError, match="not built"):
        kernel_backend(torch.device("cuda"), torch.bfloat16)
    monkeypatch.setenv("MEGAMID_KERNELS", "cpu")
    assert kernel_backend(cpu, torch.float16) == "cpu"
    with pytest.raises(RuntimeError, match="MEGAMID_KERNELS=cpu"):
        kernel_backend(cpu, torch.float64)
    monkeypatch.setattr(rope_ops, "_cpu", None)
    with pytest.raises(RuntimeError, match="megamid._C is not built"):
        kernel_backend(cpu, torch.float32)
    monkeypatch.setenv("MEGAMID_KERNELS", "auto")
    assert kernel_backend(cpu, torch.float32) == "reference"


@pytest.mark.parametrize("kwargs,match", [
    (dict(layout="bshd"), "layout='bshd'"),
    (dict(cp_size=2, cp_rank=2), "cp_rank=2"),
    (dict(rotary_dim=4), "rotary_dim=4"),
    (dict(position_ids=torch.arange(8), cp_size=2), "position_ids"),
    (dict(position_ids=torch.arange(5)), r"position_ids shape \(5,\)"),
    (dict(cu_seqlens=cu_seqlens_of([8])), "cu_seqlens is for layout='thd'"),
])
def test_errors_name_the_argument(kwargs, match):
    inv_freq, _ = inv_freq_for("default", 8)
    with pytest.raises(ValueError, match=match):
        apply_rope(torch.randn(8, 1, 2, 8), torch.randn(8, 1, 1, 8), inv_freq, **kwargs)


def test_thd_errors():
    inv_freq, _ = inv_freq_for("default", 8)
    q, k = torch.randn(12, 2, 8), torch.randn(12, 1, 8)
    with pytest.raises(ValueError, match="needs cu_seqlens"):
        apply_rope(q, k, inv_freq, layout="thd")
    with pytest.raises(ValueError, match="rise from 0"):
        apply_rope(q, k, inv_freq, layout="thd", cu_seqlens=cu_seqlens_of([5, 5]))
    with pytest.raises(ValueError, match="multiple of 2 \\* cp_size = 4"):
        apply_rope(q, k, inv_freq, layout="thd", cu_seqlens=cu_seqlens_of([6, 18]), cp_size=2)
    with pytest.raises(ValueError, match="exceeds head_dim"):
        apply_rope(q, k, inv_freq_for("default", 16)[0], layout="thd", cu_seqlens=cu_seqlens_of([12]))
    with pytest.raises(ValueError, match="head_dim=16"):
        apply_rope_fused_qkv(torch.randn(12, 2, 40), inv_freq, head_dim=16, layout="thd",
                             cu_seqlens=cu_seqlens_of([12]))
