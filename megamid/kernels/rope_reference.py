"""Pure-PyTorch RoPE: the oracle for csrc/rope's kernel and the fallback where it is not built.

It does the kernel's arithmetic in the kernel's order: positions as int64, the angle
float32(position) * inv_freq rounded to float32 (as HF and Megatron form it), cos and sin times the
attention factor in float32, the rotation in float32, one rounding to the output dtype. float64
inputs are computed in float64 throughout (for gradcheck). Unlike HF, cos and sin are not rounded to
bf16/fp16 before the multiply: one rounding instead of three.
"""

import torch

from megamid.rope.positions import cp_shard_positions, packed_cp_shard_positions

LAYOUTS = ("sbhd", "thd")


def rope_positions(layout: str, seq_len: int, batch: int, *, cu_seqlens=None, position_ids=None,
                   cp_size: int = 1, cp_rank: int = 0, device=None) -> torch.Tensor:
    """int64 positions [seq_len, batch] (THD: seq_len = t, batch = 1), by the rules of csrc/rope/rope.h.

    position_ids ([s], [b, s] or THD [t]) are used as given; else THD positions restart at every
    document of cu_seqlens (global boundaries: local document i is [cu[i] / cp_size, cu[i+1] / cp_size));
    else the index along s. Without position_ids, cp_size > 1 maps through the dual-chunk layout."""
    if position_ids is not None:
        pos = position_ids.to(device=device, dtype=torch.int64)
        if pos.dim() == 1:
            return pos[:, None].expand(seq_len, batch)
        return pos.t().expand(seq_len, batch)  # [b, s] (HF's layout) -> [s, b]
    if cu_seqlens is not None:
        pos = packed_cp_shard_positions(cu_seqlens.to(device=device, dtype=torch.int64), cp_size, cp_rank)
    else:
        pos = cp_shard_positions(seq_len * cp_size, cp_size, cp_rank, device=device)
    return pos[:, None].expand(seq_len, batch)


def _rotate(x, cos, sin, rotary_dim: int, interleaved: bool):
    """x [..., d] in the compute dtype; cos, sin broadcast against x[..., :rotary_dim // 2]."""
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        y = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = rot[..., : rotary_dim // 2], rot[..., rotary_dim // 2 :]
        y = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((y, rest), dim=-1)


def rope_reference(q, k, inv_freq, attention_factor: float = 1.0, *, layout: str = "sbhd",
                   interleaved: bool = False, cu_seqlens=None, position_ids=None, cp_size: int = 1,
                   cp_rank: int = 0, backward: bool = False):
    """(q_out, k_out), new contiguous tensors. q [s, b, hq, d] and k [s, b, hk, d] (THD: [t, h, d]).

    rotary_dim = 2 * len(inv_freq); the rest of d passes through. backward=True applies the transposed
    rotation (the gradient): sin -> -sin."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not valid; use one of {LAYOUTS}")
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    seq_len, batch = q.shape[0], (q.shape[1] if layout == "sbhd" else 1)
    pos = rope_positions(layout, seq_len, batch, cu_seqlens=cu_seqlens, position_ids=position_ids,
                         cp_size=cp_size, cp_rank=cp_rank, device=q.device)
    freq = inv_freq.to(device=q.device, dtype=torch.float32)
    if compute == torch.float64:
        angle = pos.to(torch.float64)[..., None] * freq.to(torch.float64)
    else:
        angle = pos.to(torch.float32)[..., None] * freq  # rounded to float32, like the kernel
    cos = torch.cos(angle) * attention_factor
    sin = torch.sin(angle) * attention_factor
    if backward:
        sin = -sin
    if layout == "sbhd":
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [s, b, 1, rd/2]
    else:
        cos, sin = cos[:, 0, None, :], sin[:, 0, None, :]  # [t, 1, rd/2]
    rotary_dim = 2 * freq.numel()
    out = tuple(_rotate(t.to(compute), cos.to(compute), sin.to(compute), rotary_dim, interleaved).to(t.dtype)
                for t in (q, k))
    return out


def split_fused_qkv(qkv, head_dim: int):
    """Megatron's fused QKV [..., groups, (q_per_group + 2) * d] -> views q [..., groups * q_per_group, d],
    k [..., groups, d], v [..., groups, d] (what its SelfAttention does before RoPE)."""
    *lead, groups, width = qkv.shape
    x = qkv.reshape(*lead, groups, width // head_dim, head_dim)
    q_per_group = width // head_dim - 2
    q = x[..., :q_per_group, :].reshape(*lead, groups * q_per_group, head_dim)
    return q, x[..., q_per_group, :], x[..., q_per_group + 1, :]


def join_fused_qkv(q, k, v, groups: int):
    """The inverse of split_fused_qkv: [..., groups, (q_per_group + 2) * d], contiguous."""
    *lead, heads, d = q.shape
    x = torch.cat((q.reshape(*lead, groups, heads // groups, d), k[..., None, :], v[..., None, :]), dim=-2)
    return x.reshape(*lead, groups, (heads // groups + 2) * d)


def rope_fused_qkv_reference(qkv, inv_freq, attention_factor: float = 1.0, *, head_dim: int,
                             layout: str = "sbhd", interleaved: bool = False, cu_seqlens=None,
                             position_ids=None, cp_size: int = 1, cp_rank: int = 0):
    """(q, k, v) from the fused QKV projection output, Q and K rotated, all contiguous."""
    q, k, v = split_fused_qkv(qkv, head_dim)
    q, k = rope_reference(q, k, inv_freq, attention_factor, layout=layout, interleaved=interleaved,
                          cu_seqlens=cu_seqlens, position_ids=position_ids, cp_size=cp_size,
                          cp_rank=cp_rank)
    return q, k, v.contiguous()


def rope_fused_qkv_backward_reference(grad_q, grad_k, grad_v, inv_freq, attention_factor: float = 1.0, *,
                                      layout: str = "sbhd", interleaved: bool = False, cu_seqlens=None,
                                      position_ids=None, cp_size: int = 1, cp_rank: int = 0):
    """The gradient of the fused QKV input from the gradients of q, k and v."""
    dq, dk = rope_reference(grad_q, grad_k, inv_freq, attention_factor, layout=layout,
                            interleaved=interleaved, cu_seqlens=cu_seqlens, position_ids=position_ids,
                            cp_size=cp_size, cp_rank=cp_rank, backward=True)
    return join_fused_qkv(dq, dk, grad_v, groups=grad_k.shape[-2])
