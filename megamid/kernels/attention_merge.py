"""Merge of two partial attention results over disjoint keys, as a torch.library custom op.

    from megamid.kernels.attention_merge import merge_attention
    out, lse = merge_attention(out1, lse1, out2, lse2)   # out [..., d], lse [...] (natural log)

Each partial result is a softmax-normalised output over its own keys and the log-sum-exp of its
scaled scores (-inf: no key seen). The merge is lse = logaddexp(lse1, lse2) and
out = exp(lse1 - lse) * out1 + exp(lse2 - lse) * out2: how ring attention combines its blocks.
Backends (MEGAMID_KERNELS=auto|cuda|cpu|reference, as megamid.kernels.rope):
auto = csrc/attention's CUDA kernel for CUDA tensors (megamid._cuda built), its C++ twin in
megamid._C for contiguous float32/float64 CPU tensors, the pure-PyTorch reference otherwise;
cuda / cpu = that kernel or an error; reference = always the reference below. Autograd uses the
closed-form gradient (merge_backward_reference) whichever backend ran forward.
"""

import os

import torch
from torch import Tensor

try:
    from megamid import _C
except ImportError:  # extension not built: the reference serves
    _C = None
try:
    from megamid import _cuda
except ImportError:  # not built (CPU machines)
    _cuda = None

KERNEL_MODES = ("auto", "cuda", "cpu", "reference")
_CUDA_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def merge_attention_reference(out1: Tensor, lse1: Tensor, out2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """The merge in plain PyTorch (math in lse's dtype, at least float32); the oracle for the kernels."""
    work = torch.promote_types(lse1.dtype, torch.float32)
    a, b = lse1.to(work), lse2.to(work)
    m = torch.maximum(a, b)
    empty = torch.isneginf(m)
    m_safe = torch.where(empty, torch.zeros_like(m), m)
    ea, eb = torch.exp(a - m_safe), torch.exp(b - m_safe)
    total = ea + eb
    total_safe = torch.where(empty, torch.ones_like(total), total)
    wa, wb = (ea / total_safe)[..., None], (eb / total_safe)[..., None]
    # an empty block's output is never read (0 * NaN would poison the row)
    x = torch.where(wa > 0, wa * out1.to(work), torch.zeros((), dtype=work, device=out1.device))
    y = torch.where(wb > 0, wb * out2.to(work), torch.zeros((), dtype=work, device=out2.device))
    lse = torch.where(empty, m, m_safe + torch.log(total_safe))
    return (x + y).to(out1.dtype), lse.to(lse1.dtype)


def merge_backward_reference(grad_out: Tensor, grad_lse: Tensor, out1: Tensor, lse1: Tensor, out2: Tensor,
                             lse2: Tensor, out: Tensor, lse: Tensor) -> tuple[Tensor, ...]:
    """Gradients (out1, lse1, out2, lse2) of the merge: w_i = exp(lse_i - lse) and
    d out_i = w_i * g, d lse_i = w_i * (<g, out_i - out> + g_lse)."""
    work = torch.promote_types(lse1.dtype, torch.float32)
    g = grad_out.to(work)
    gl = grad_lse.to(work)
    finite = torch.isfinite(lse)
    lse_safe = torch.where(finite, lse, torch.zeros_like(lse)).to(work)
    grads = []
    for o, l in ((out1, lse1), (out2, lse2)):
        w = torch.where(finite & torch.isfinite(l), torch.exp(l.to(work) - lse_safe), torch.zeros_like(lse_safe))
        diff = torch.where(w[..., None] > 0, o.to(work) - out.to(work), torch.zeros((), dtype=work, device=o.device))
        grads += [(w[..., None] * g).to(o.dtype), (w * ((g * diff).sum(-1) + gl)).to(l.dtype)]
    return tuple(grads)


def kernel_backend(device: torch.device, dtype: torch.dtype, lse_dtype: torch.dtype = torch.float32) -> str:
    """'cuda', 'cpp' or 'reference' for partial outputs of `dtype` on `device`, by MEGAMID_KERNELS."""
    mode = os.environ.get("MEGAMID_KERNELS", "auto").lower()
    if mode not in KERNEL_MODES:
        raise ValueError(f"MEGAMID_KERNELS={mode!r} is not valid; use one of {KERNEL_MODES}")
    cuda_ok = (_cuda is not None and hasattr(_cuda, "attention_merge") and device.type == "cuda"
               and dtype in _CUDA_DTYPES and lse_dtype == torch.float32)
    if mode == "cuda" and not cuda_ok:
        why = ("megamid._cuda is not built with attention_merge (reinstall with MEGAMID_BUILD_CUDA=1)"
               if _cuda is None or not hasattr(_cuda, "attention_merge")
               else f"the tensors are {dtype} (lse {lse_dtype}) on {device}: needs CUDA, "
                    "fp32/fp16/bf16 outputs and float32 lse")
        raise RuntimeError(f"MEGAMID_KERNELS=cuda but the attention merge kernel cannot run: {why}")
    if mode == "reference":
        return "reference"
    if cuda_ok:
        return "cuda"
    cpp_ok = (_C is not None and hasattr(_C, "attention_merge") and device.type == "cpu"
              and dtype in (torch.float32, torch.float64) and lse_dtype == dtype)
    if mode == "cpu" and not cpp_ok:
        raise RuntimeError(f"MEGAMID_KERNELS=cpu but the attention merge C++ kernel cannot run: the tensors are "
                           f"{dtype} (lse {lse_dtype}) on {device} (needs megamid._C and float32/float64 on CPU)")
    return "cpp" if cpp_ok else "reference"


def _rows(out: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    return out.contiguous().reshape(-1, out.shape[-1]), lse.contiguous().reshape(-1)


@torch.library.custom_op("megamid::attention_merge", mutates_args=())
def attention_merge(out1: Tensor, lse1: Tensor, out2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    backend = kernel_backend(out1.device, out1.dtype, lse1.dtype)
    if backend == "reference":
        return merge_attention_reference(out1, lse1, out2, lse2)
    (o1, l1), (o2, l2) = _rows(out1, lse1), _rows(out2, lse2)
    if backend == "cpp":
        out, lse = _C.attention_merge(o1.numpy(), l1.numpy(), o2.numpy(), l2.numpy())
        return torch.from_numpy(out).reshape(out1.shape), torch.from_numpy(lse).reshape(lse1.shape)
    out, lse = torch.empty_like(o1), torch.empty_like(l1)
    _cuda.attention_merge(_CUDA_DTYPES[out1.dtype], o1.data_ptr(), l1.data_ptr(), o2.data_ptr(), l2.data_ptr(),
                          o1.shape[0], o1.shape[1], out.data_ptr(), lse.data_ptr(),
                          torch.cuda.current_stream(out1.device).cuda_stream)
    return out.reshape(out1.shape), lse.reshape(lse1.shape)


@attention_merge.register_fake
def _(out1, lse1, out2, lse2):
    return torch.empty_like(out1), torch.empty_like(lse1)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)


def _backward(ctx, grad_out, grad_lse):
    out1, lse1, out2, lse2, out, lse = ctx.saved_tensors
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out
    grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse
    return merge_backward_reference(grad_out, grad_lse, out1, lse1, out2, lse2, out, lse)


attention_merge.register_autograd(_backward, setup_context=_setup)


def merge_attention(out1: Tensor, lse1: Tensor, out2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """(out, lse) of two partial attention results: out_i [..., d], lse_i [...] (natural log, -inf where
    the part saw no key). Outputs keep out1's dtype, lse lse1's."""
    if out1.shape != out2.shape or lse1.shape != lse2.shape or out1.shape[:-1] != lse1.shape:
        raise ValueError(f"merge_attention: need out1, out2 [..., d] and lse1, lse2 [...] of the same shapes; got "
                         f"{tuple(out1.shape)}, {tuple(lse1.shape)}, {tuple(out2.shape)}, {tuple(lse2.shape)}")
    if out1.dtype != out2.dtype or lse1.dtype != lse2.dtype:
        raise ValueError(f"merge_attention: dtypes differ (out {out1.dtype}/{out2.dtype}, lse {lse1.dtype}/{lse2.dtype})")
    return attention_merge(out1, lse1, out2, lse2)


__all__ = ["merge_attention", "merge_attention_reference", "merge_backward_reference", "kernel_backend"]
