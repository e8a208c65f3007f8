"""Fused RoPE for Q and K (and Megatron's fused QKV output) as torch.library custom ops.

    from megamid.kernels.rope import apply_rope, apply_rope_fused_qkv
    q, k = apply_rope(q, k, inv_freq, attention_factor, layout="sbhd", cp_size=2, cp_rank=0)

inv_freq (float32, rotary_dim / 2) is the output of any scaling method (PI, NTK, ABF, YaRN, LongRoPE,
Llama-3); attention_factor multiplies cos and sin (YaRN's mscale). On CUDA tensors with megamid._cuda
built, one kernel launch (csrc/rope) rotates every Q and K head; on CPU tensors megamid._C runs the same
per-element arithmetic (csrc/rope/rope_math.h) as a loop; elsewhere (float64, meta, extensions not built)
the pure-PyTorch reference in rope_reference.py runs. MEGAMID_KERNELS=auto|cuda|cpu|reference picks (read
at each call): auto = the kernel of the tensors' device when it is built, cuda / cpu = that kernel or an
error, reference = always the reference. inv_freq and attention_factor are constants for autograd.
"""

import contextlib
import os
from typing import Optional

import torch
from torch import Tensor

from megamid.kernels.rope_reference import (
    LAYOUTS,
    join_fused_qkv,
    rope_fused_qkv_backward_reference,
    rope_fused_qkv_reference,
    rope_reference,
)

try:
    from megamid import _cuda
except ImportError:  # not built (CPU machines): the CPU loop or the reference serves
    _cuda = None
try:
    from megamid import _C as _cpu
except ImportError:  # the C++ helpers are not built: the reference serves
    _cpu = None
if _cpu is not None and not hasattr(_cpu, "rope_qk"):  # an older build without the RoPE loop
    _cpu = None

KERNEL_MODES = ("auto", "cuda", "cpu", "reference")
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def kernel_backend(device: torch.device, dtype: torch.dtype) -> str:
    """'cuda', 'cpu' or 'reference' for tensors on `device` of `dtype`, by MEGAMID_KERNELS."""
    mode = os.environ.get("MEGAMID_KERNELS", "auto").lower()
    if mode not in KERNEL_MODES:
        raise ValueError(f"MEGAMID_KERNELS={mode!r} is not valid; use one of {KERNEL_MODES}")
    usable = {"cuda": _cuda is not None and device.type == "cuda" and dtype in _KERNEL_DTYPES,
              "cpu": _cpu is not None and device.type == "cpu" and dtype in _KERNEL_DTYPES}
    if mode in usable and not usable[mode]:
        module = "megamid._cuda" if mode == "cuda" else "megamid._C"
        fix = ("reinstall with MEGAMID_BUILD_CUDA=1 where nvcc exists" if mode == "cuda"
               else "pip install -e . (or python setup.py build_ext --inplace)")
        built = _cuda if mode == "cuda" else _cpu
        why = (f"{module} is not built with the RoPE kernel ({fix})" if built is None
               else f"the tensors are {dtype} on {device} (needs {mode.upper()}, fp32/fp16/bf16)")
        raise RuntimeError(f"MEGAMID_KERNELS={mode} but the RoPE kernel cannot run: {why}")
    if mode == "reference":
        return "reference"
    for backend in ("cuda", "cpu"):
        if usable[backend] and mode in ("auto", backend):
            return backend
    return "reference"


# ---- the kernel paths: views, strides and pointers for megamid._cuda and megamid._C ---------------

def _dtype_code(module, dtype):
    return {torch.float32: module.DTYPE_FLOAT32, torch.float16: module.DTYPE_FLOAT16,
            torch.bfloat16: module.DTYPE_BFLOAT16}[dtype]


def _module(device):
    """The extension that runs the kernel for tensors on `device`, and a context to launch it in."""
    if device.type == "cuda":
        return _cuda, torch.cuda.device(device)
    return _cpu, contextlib.nullcontext()


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _sbhd(t, layout):
    """A [s, b, h, d] view (THD [t, h, d] -> [t, 1, h, d])."""
    return t if layout == "sbhd" else t.unsqueeze(1)


def _common(ref, inv_freq, attention_factor, layout, interleaved, cu_seqlens, position_ids, cp_size,
            cp_rank, backward):
    """Keyword arguments shared by both bindings; `ref` is a [s, b, h, d] view giving s, b, d, dtype."""
    pos_ptr, pos_s, pos_b = 0, 0, 0
    if position_ids is not None:
        pos = position_ids.to(device=ref.device, dtype=torch.int64)  # the kernel reads int64 on device
        pos_ptr = pos.data_ptr()
        if pos.dim() == 1:
            pos_s = pos.stride(0)
        else:  # [b, s]
            pos_s, pos_b = pos.stride(1), pos.stride(0)
    cu = None if cu_seqlens is None else cu_seqlens.to(device=ref.device, dtype=torch.int32).contiguous()
    module, _ = _module(ref.device)
    kwargs = dict(
        dtype=_dtype_code(module, ref.dtype), seq_len=ref.shape[0], batch=ref.shape[1], head_dim=ref.shape[3],
        rotary_dim=2 * inv_freq.numel(), interleaved=interleaved, backward=backward,
        inv_freq=inv_freq.data_ptr(), attention_factor=float(attention_factor),
        position_ids=pos_ptr, pos_stride_s=pos_s, pos_stride_b=pos_b,
        cu_seqlens=0 if cu is None else cu.data_ptr(), num_docs=0 if cu is None else cu.numel() - 1,
        cp_size=cp_size, cp_rank=cp_rank)
    if ref.device.type == "cuda":
        kwargs["stream"] = torch.cuda.current_stream(ref.device).cuda_stream
    # Tensors that must outlive the (asynchronous) launch are kept by the caller through `keep`.
    return kwargs, (pos if position_ids is not None else None, cu)


def _kernel_rope_qk(q, k, q_out, k_out, inv_freq, attention_factor, layout, interleaved, cu_seqlens,
                  position_ids, cp_size, cp_rank, backward):
    q4, k4, qo4, ko4 = (_sbhd(t, layout) for t in (q, k, q_out, k_out))
    inv_freq = inv_freq.to(device=q.device, dtype=torch.float32).contiguous()
    kwargs, keep = _common(q4, inv_freq, attention_factor, layout, interleaved, cu_seqlens, position_ids,
                           cp_size, cp_rank, backward)
    module, context = _module(q.device)
    with context:
        module.rope_qk(q_in=q4.data_ptr(), q_out=qo4.data_ptr(), q_heads=q4.shape[2],
                      q_in_stride=q4.stride()[:3], q_out_stride=qo4.stride()[:3],
                      k_in=k4.data_ptr(), k_out=ko4.data_ptr(), k_heads=k4.shape[2],
                      k_in_stride=k4.stride()[:3], k_out_stride=ko4.stride()[:3], **kwargs)
    del keep  # the caching allocator orders reuse on the current stream, so freeing here is safe


def _kernel_rope_fused_qkv(qkv, q, k, v, inv_freq, attention_factor, layout, interleaved, cu_seqlens,
                         position_ids, cp_size, cp_rank, backward):
    qkv4, q4, k4, v4 = (_sbhd(t, layout) for t in (qkv, q, k, v))
    inv_freq = inv_freq.to(device=qkv.device, dtype=torch.float32).contiguous()
    kwargs, keep = _common(q4, inv_freq, attention_factor, layout, interleaved, cu_seqlens, position_ids,
                           cp_size, cp_rank, backward)
    groups = k4.shape[2]
    module, context = _module(qkv.device)
    with context:
        module.rope_fused_qkv(qkv=qkv4.data_ptr(), qkv_stride=qkv4.stride()[:3], groups=groups,
                             q_per_group=q4.shape[2] // groups, q=q4.data_ptr(), q_stride=q4.stride()[:3],
                             k=k4.data_ptr(), k_stride=k4.stride()[:3], v=v4.data_ptr(),
                             v_stride=v4.stride()[:3], **kwargs)
    del keep


def _fused_shapes(qkv_shape, head_dim):
    """Shapes of q, k, v split from a fused QKV [..., groups, (q_per_group + 2) * head_dim]."""
    *lead, groups, width = qkv_shape
    q_per_group = width // head_dim - 2
    return ((*lead, groups * q_per_group, head_dim), (*lead, groups, head_dim), (*lead, groups, head_dim))


def _like(result, t):
    """result laid out like t (empty_like's strides), as the fake implementations promise."""
    if result.stride() == t.stride():
        return result
    return torch.empty_like(t).copy_(result)


# ---- custom ops -------------------------------------------------------------------------------------

def _rope(q, k, inv_freq, attention_factor, layout, interleaved, cu_seqlens, position_ids, cp_size,
          cp_rank, backward):
    if kernel_backend(q.device, q.dtype) != "reference":
        q, k = _last_dim_contiguous(q), _last_dim_contiguous(k)
        q_out, k_out = torch.empty_like(q), torch.empty_like(k)
        _kernel_rope_qk(q, k, q_out, k_out, inv_freq, attention_factor, layout, interleaved, cu_seqlens,
                      position_ids, cp_size, cp_rank, backward)
        return q_out, k_out
    q_out, k_out = rope_reference(q, k, inv_freq, attention_factor, layout=layout, interleaved=interleaved,
                                  cu_seqlens=cu_seqlens, position_ids=position_ids, cp_size=cp_size,
                                  cp_rank=cp_rank, backward=backward)
    return _like(q_out, q), _like(k_out, k)


@torch.library.custom_op("megamid::rope_fwd", mutates_args=())
def rope_fwd(q: Tensor, k: Tensor, inv_freq: Tensor, attention_factor: float, layout: str,
             interleaved: bool, cu_seqlens: Optional[Tensor], position_ids: Optional[Tensor],
             cp_size: int, cp_rank: int) -> tuple[Tensor, Tensor]:
    return _rope(q, k, inv_freq, attention_factor, layout, interleaved, cu_seqlens, position_ids,
                 cp_size, cp_rank, backward=False)


@torch.library.custom_op("megamid::rope_bwd", mutates_args=())
def rope_bwd(grad_q: Tensor, grad_k: Tensor, inv_freq: Tensor, attention_factor: float, layout: str,
             interleaved: bool, cu_seqlens: Optional[Tensor], position_ids: Optional[Tensor],
             cp_size: int, cp_rank: int) -> tuple[Tensor, Tensor]:
    return _rope(grad_q, grad_k, inv_freq, attention_factor, layout, interleaved, cu_seqlens,
                 position_ids, cp_size, cp_rank, backward=True)


@torch.library.custom_op("megamid::rope_fwd_", mutates_args=("q", "k"))
def rope_fwd_(q: Tensor, k: Tensor, inv_freq: Tensor, attention_factor: float, layout: str,
              interleaved: bool, cu_seqlens: Optional[Tensor], position_ids: Optional[Tensor],
              cp_size: int, cp_rank: int) -> None:
    if kernel_backend(q.device, q.dtype) != "reference" and q.stride(-1) == 1 and k.stride(-1) == 1:
        _kernel_rope_qk(q, k, q, k, inv_freq, attention_factor, layout, interleaved, cu_seqlens,
                      position_ids, cp_size, cp_rank, backward=False)
        return
    q_out, k_out = _rope(q, k, inv_freq, attention_factor, layout, interleaved, cu_seqlens, position_ids,
                         cp_size, cp_rank, backward=False)
    q.copy_(q_out)
    k.copy_(k_out)


@torch.library.custom_op("megamid::rope_fused_qkv_fwd", mutates_args=())
def rope_fused_qkv_fwd(qkv: Tensor, inv_freq: Tensor, attention_factor: float, head_dim: int, layout: str,
                       interleaved: bool, cu_seqlens: Optional[Tensor], position_ids: Optional[Tensor],
                       cp_size: int, cp_rank: int) -> tuple[Tensor, Tensor, Tensor]:
    if kernel_backend(qkv.device, qkv.dtype) != "reference":
        qkv = _last_dim_contiguous(qkv)
        q, k, v = (qkv.new_empty(shape) for shape in _fused_shapes(qkv.shape, head_dim))
        _kernel_rope_fused_qkv(qkv, q, k, v, inv_freq, attention_factor, layout, interleaved, cu_seqlens,
                             position_ids, cp_size, cp_rank, backward=False)
        return q, k, v
    return rope_fused_qkv_reference(qkv, inv_freq, attention_factor, head_dim=head_dim, layout=layout,
                                    interleaved=interleaved, cu_seqlens=cu_seqlens,
                                    position_ids=position_ids, cp_size=cp_size, cp_rank=cp_rank)


@torch.library.custom_op("megamid::rope_fused_qkv_bwd", mutates_args=())
def rope_fused_qkv_bwd(grad_q: Tensor, grad_k: Tensor, grad_v: Tensor, inv_freq: Tensor,
                       attention_factor: float, layout: str, interleaved: bool,
                       cu_seqlens: Optional[Tensor], position_ids: Optional[Tensor], cp_size: int,
                       cp_rank: int) -> Tensor:
    if kernel_backend(grad_q.device, grad_q.dtype) != "reference":
        gq, gk, gv = (_last_dim_contiguous(t) for t in (grad_q, grad_k, grad_v))
        *lead, heads, d = gq.shape
        groups = gk.shape[-2]
        grad_qkv = gq.new_empty(*lead, groups, (heads // groups + 2) * d)
        _kernel_rope_fused_qkv(grad_qkv, gq, gk, gv, inv_freq, attention_factor, layout, interleaved,
                             cu_seqlens, position_ids, cp_size, cp_rank, backward=True)
        return grad_qkv
    return rope_fused_qkv_backward_reference(
        grad_q, grad_k, grad_v, inv_freq, attention_factor, layout=layout, interleaved=interleaved,
        cu_seqlens=cu_seqlens, position_ids=position_ids, cp_size=cp_size, cp_rank=cp_rank)


@rope_fwd.register_fake
def _(q, k, *args):
    return torch.empty_like(q), torch.empty_like(k)


@rope_bwd.register_fake
def _(grad_q, grad_k, *args):
    return torch.empty_like(grad_q), torch.empty_like(grad_k)


@rope_fwd_.register_fake
def _(q, k, *args):
    return None


@rope_fused_qkv_fwd.register_fake
def _(qkv, inv_freq, attention_factor, head_dim, *args):
    return tuple(qkv.new_empty(shape) for shape in _fused_shapes(qkv.shape, head_dim))


@rope_fused_qkv_bwd.register_fake
def _(grad_q, grad_k, grad_v, *args):
    *lead, heads, d = grad_q.shape
    groups = grad_k.shape[-2]
    return grad_q.new_empty(*lead, groups, (heads // groups + 2) * d)


# ---- autograd: the gradient is the transposed rotation (rope_bwd), and its gradient rope_fwd ---------

def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2], inputs[6], inputs[7])  # inv_freq, cu_seqlens, position_ids
    ctx.options = (inputs[3], inputs[4], inputs[5], inputs[8], inputs[9])


def _rope_options(ctx):
    inv_freq, cu, pos = ctx.saved_tensors
    factor, layout, interleaved, cp_size, cp_rank = ctx.options
    return inv_freq, factor, layout, interleaved, cu, pos, cp_size, cp_rank


def _zeros_if_none(grad, like):
    return torch.zeros_like(like) if grad is None else grad


def _rope_fwd_backward(ctx, grad_q, grad_k):
    dq, dk = rope_bwd(grad_q, grad_k, *_rope_options(ctx))
    return dq, dk, None, None, None, None, None, None, None, None


def _rope_bwd_backward(ctx, grad_q, grad_k):
    dq, dk = rope_fwd(grad_q, grad_k, *_rope_options(ctx))
    return dq, dk, None, None, None, None, None, None, None, None


rope_fwd.register_autograd(_rope_fwd_backward, setup_context=_setup)
rope_bwd.register_autograd(_rope_bwd_backward, setup_context=_setup)


def _fused_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[6], inputs[7])
    ctx.options = (inputs[2], inputs[4], inputs[5], inputs[8], inputs[9])


def _fused_backward(ctx, grad_q, grad_k, grad_v):
    inv_freq, cu, pos = ctx.saved_tensors
    factor, layout, interleaved, cp_size, cp_rank = ctx.options
    grad = rope_fused_qkv_bwd(grad_q, grad_k, grad_v, inv_freq, factor, layout, interleaved, cu, pos,
                              cp_size, cp_rank)
    return grad, None, None, None, None, None, None, None, None, None


rope_fused_qkv_fwd.register_autograd(_fused_backward, setup_context=_fused_setup)


class _RopeInPlace(torch.autograd.Function):
    """In-place RoPE of one tensor that autograd can still differentiate (mutating custom ops take no
    autograd). One tensor per Function: autograd refuses a Function that mutates two views (q and k
    split from one QKV projection) and returns both."""

    @staticmethod
    def forward(ctx, x, inv_freq, factor, layout, interleaved, cu, pos, cp_size, cp_rank):
        rope_fwd_(x, _no_heads(x), inv_freq, factor, layout, interleaved, cu, pos, cp_size, cp_rank)
        ctx.mark_dirty(x)
        ctx.save_for_backward(inv_freq, cu, pos)
        ctx.options = (factor, layout, interleaved, cp_size, cp_rank)
        return x

    @staticmethod
    def backward(ctx, grad):
        dx, _ = rope_bwd(grad, _no_heads(grad), *_rope_options(ctx))
        return dx, None, None, None, None, None, None, None, None


def _no_heads(x):
    """A zero-head partner for x: the kernel skips a head set with no heads."""
    return x.new_empty(*x.shape[:-2], 0, x.shape[-1])


# ---- the public functions ---------------------------------------------------------------------------

def _check(where, ref, inv_freq, layout, cu_seqlens, position_ids, cp_size, cp_rank, head_dim):
    """Validates what the kernel would otherwise trust; errors name the argument and what is valid."""
    if layout not in LAYOUTS:
        raise ValueError(f"{where}: layout={layout!r} is not valid; use one of {LAYOUTS}")
    if inv_freq.dim() != 1 or inv_freq.numel() == 0:
        raise ValueError(f"{where}: inv_freq must be 1-D [rotary_dim / 2], got shape {tuple(inv_freq.shape)}")
    if 2 * inv_freq.numel() > head_dim:
        raise ValueError(f"{where}: rotary_dim = 2 * len(inv_freq) = {2 * inv_freq.numel()} exceeds "
                         f"head_dim {head_dim}")
    if not (isinstance(cp_size, int) and cp_size >= 1 and 0 <= cp_rank < cp_size):
        raise ValueError(f"{where}: cp_size={cp_size}, cp_rank={cp_rank}; need cp_size >= 1 and "
                         "0 <= cp_rank < cp_size")
    seq_len = ref.shape[0]
    if position_ids is not None:
        if cu_seqlens is not None or cp_size > 1:
            raise ValueError(f"{where}: position_ids are used as given (already this rank's global "
                             "positions); pass them without cu_seqlens and with cp_size=1")
        batch = ref.shape[1] if layout == "sbhd" else 1
        if tuple(position_ids.shape) not in ((seq_len,), (batch, seq_len)):
            raise ValueError(f"{where}: position_ids shape {tuple(position_ids.shape)}; expected "
                             f"({seq_len},) or ({batch}, {seq_len}) (HF's [batch, seq])")
    if layout == "thd" and cu_seqlens is None and position_ids is None:
        raise ValueError(f"{where}: layout='thd' needs cu_seqlens (document boundaries) or position_ids")
    if layout == "sbhd" and cu_seqlens is not None:
        raise ValueError(f"{where}: cu_seqlens is for layout='thd'; with 'sbhd' pass position_ids")
    if layout == "sbhd" and position_ids is None and cp_size > 1 and seq_len % 2:
        raise ValueError(f"{where}: with cp_size={cp_size} the local sequence holds two chunks, so its "
                         f"length must be even, got {seq_len}")
    if cu_seqlens is not None:
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"{where}: cu_seqlens must be 1-D with >= 2 entries, got {tuple(cu_seqlens.shape)}")
        if cu_seqlens.device.type == "cpu":  # on a GPU, checking would cost a sync: the kernel trusts it
            lengths = cu_seqlens[1:] - cu_seqlens[:-1]
            if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != seq_len * cp_size or bool((lengths < 0).any()):
                raise ValueError(f"{where}: cu_seqlens must rise from 0 to t * cp_size = {seq_len * cp_size}")
            if cp_size > 1 and bool((lengths % (2 * cp_size)).any()):
                raise ValueError(f"{where}: with cp_size={cp_size} every document length must be a "
                                 f"multiple of 2 * cp_size = {2 * cp_size} (pad the documents)")


def apply_rope(q: Tensor, k: Tensor, inv_freq: Tensor, attention_factor: float = 1.0, *,
               layout: str = "sbhd", interleaved: bool = False, cu_seqlens: Optional[Tensor] = None,
               position_ids: Optional[Tensor] = None, cp_size: int = 1, cp_rank: int = 0,
               rotary_dim: Optional[int] = None, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """Rotate q and k by RoPE; returns (q, k).

    q [s, b, hq, d], k [s, b, hk, d] ("sbhd") or packed [t, hq, d], [t, hk, d] ("thd"); bf16, fp16 or
    fp32 (fp64 runs the reference). inv_freq: float32 [rotary_dim / 2], already scaled by the rope
    method; the first rotary_dim elements of each head rotate, the rest pass through (rotary_dim,
    if given, must equal 2 * len(inv_freq)). attention_factor multiplies cos and sin.
    interleaved: pairs (x[2i], x[2i+1]) (GPT-J) instead of rotate_half's (x[i], x[i + rotary_dim/2]).
    Positions: position_ids ([s] or [b, s]; THD [t]) as given; else THD restarts at every document of
    cu_seqlens (global boundaries, int32, as Megatron's PackedSeqParams); else 0..s-1. cp_size /
    cp_rank: this rank's shard of Megatron's dual-chunk context-parallel layout (chunks r and
    2cp-1-r); with THD each document is sharded so (its length must be a multiple of 2 * cp_size).
    inplace: overwrite q and k. Without autograd, one launch; with autograd (q, k non-leaf) one launch
    each, since autograd takes one mutated view per Function: for training prefer the fused QKV path.
    """
    d = q.shape[-1]
    _check("apply_rope", q, inv_freq, layout, cu_seqlens, position_ids, cp_size, cp_rank, d)
    expected_dim = 4 if layout == "sbhd" else 3
    if q.dim() != expected_dim or k.dim() != expected_dim or q.shape[:-2] != k.shape[:-2] or k.shape[-1] != d:
        raise ValueError(f"apply_rope: layout={layout!r} needs q and k of {expected_dim} dims sharing all "
                         f"but the head count; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.dtype != k.dtype:
        raise ValueError(f"apply_rope: q is {q.dtype} but k is {k.dtype}")
    if rotary_dim is not None and rotary_dim != 2 * inv_freq.numel():
        raise ValueError(f"apply_rope: rotary_dim={rotary_dim} but inv_freq has {inv_freq.numel()} "
                         f"frequencies; pass rotary_dim={2 * inv_freq.numel()} or inv_freq[:rotary_dim // 2]")
    inv_freq = inv_freq.to(device=q.device, dtype=torch.float32)
    args = (inv_freq, float(attention_factor), layout, bool(interleaved), cu_seqlens, position_ids,
            int(cp_size), int(cp_rank))
    if inplace:
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            return _RopeInPlace.apply(q, *args), _RopeInPlace.apply(k, *args)  # two launches
        rope_fwd_(q, k, *args)  # one launch
        return q, k
    return rope_fwd(q, k, *args)


def apply_rope_fused_qkv(qkv: Tensor, inv_freq: Tensor, attention_factor: float = 1.0, *,
                         head_dim: Optional[int] = None, layout: str = "sbhd", interleaved: bool = False,
                         cu_seqlens: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                         cp_size: int = 1, cp_rank: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Split Megatron's fused QKV projection output and rotate Q and K, in one pass; returns (q, k, v).

    qkv: [s, b, groups, (hq / groups + 2) * d] ("sbhd") or [t, groups, (hq / groups + 2) * d] ("thd"),
    each group holding its hq / groups query heads, then its key head, then its value head.
    q: [s, b, hq, d], k and v: [s, b, groups, d] (THD without b), contiguous. head_dim defaults to
    2 * len(inv_freq) (full rotary); pass it for partial rotary. Other arguments as apply_rope.
    """
    head_dim = 2 * inv_freq.numel() if head_dim is None else int(head_dim)
    _check("apply_rope_fused_qkv", qkv, inv_freq, layout, cu_seqlens, position_ids, cp_size, cp_rank,
           head_dim)
    expected_dim = 4 if layout == "sbhd" else 3
    if qkv.dim() != expected_dim or qkv.shape[-1] % head_dim or qkv.shape[-1] // head_dim < 3:
        raise ValueError(f"apply_rope_fused_qkv: qkv {tuple(qkv.shape)} is not [{'s, b' if layout == 'sbhd' else 't'}, "
                         f"groups, (q_per_group + 2) * head_dim] with head_dim={head_dim}")
    inv_freq = inv_freq.to(device=qkv.device, dtype=torch.float32)
    return rope_fused_qkv_fwd(qkv, inv_freq, float(attention_factor), head_dim, layout, bool(interleaved),
                              cu_seqlens, position_ids, int(cp_size), int(cp_rank))


__all__ = ["apply_rope", "apply_rope_fused_qkv", "kernel_backend", "rope_reference", "join_fused_qkv"]
