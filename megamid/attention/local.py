"""Attention over one rank's tensors, in [b, heads, s, d] (SDPA's layout); no process groups here.

- `causal_sdpa`: PyTorch SDPA, causal, GQA through `enable_gqa` (flash / memory-efficient / cuDNN on
  a GPU pick themselves; math on CPU). No s x s matrix and no repeated K/V on the fused GPU backends.
- `varlen_sdpa`: packed documents on CPU: SDPA per document (so nothing attends across a boundary).
- `block_attention`: output and log-sum-exp of queries against a block of keys, masked by global token
  positions (causal) and document ids; FlexAttention with a block mask on a GPU (fully masked tiles are
  skipped, nothing s x s is stored), an explicit masked softmax on CPU. Differentiable in q, k, v,
  through both outputs: what context parallelism builds on.
- `reference_attention`: a plain softmax over an explicit mask, the test oracle.

GQA everywhere follows Megatron's grouping: query head j reads key/value head j // (hq / hk).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


def document_ids(cu_seqlens: Tensor, batch: int, seq_len: int) -> Tensor:
    """Document index (int64 [batch, seq_len]) of every token of packed rows.

    cu_seqlens: int32 boundaries over the rows concatenated (row r starts at r * seq_len), as
    MixtureDataset.get_batch writes them; a row's end always ends a document."""
    cu = cu_seqlens.to(torch.int64)
    total = batch * seq_len
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with >= 2 entries, got shape {tuple(cu.shape)}")
    if cu.device.type == "cpu" and (int(cu[0]) != 0 or int(cu[-1]) != total):
        raise ValueError(f"cu_seqlens must rise from 0 to batch * seq_len = {batch} * {seq_len} = {total}, "
                         f"got {int(cu[0])} .. {int(cu[-1])}")
    tokens = torch.arange(total, device=cu.device)
    return torch.searchsorted(cu[1:-1].contiguous(), tokens, right=True).reshape(batch, seq_len)


def causal_sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float, dropout_p: float = 0.0,
                attn_mask: Tensor | None = None, window: int | None = None) -> Tensor:
    """SDPA with GQA; causal (within `window` keys back, if given) unless attn_mask (bool, True = may
    attend) is given. [b, hq, s, d] out."""
    gqa = q.shape[1] != k.shape[1]
    if window is not None and attn_mask is None:
        pos = torch.arange(q.shape[2], device=q.device)
        attn_mask = allowed(pos, pos, None, None, window)[0]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=attn_mask is None, scale=scale, enable_gqa=gqa)


def varlen_sdpa(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, scale: float,
                dropout_p: float = 0.0, window: int | None = None) -> Tensor:
    """Causal attention within each document of packed rows: SDPA per document (a CPU path: one
    host sync for the boundaries, then small dense problems)."""
    b, _, s, _ = q.shape
    bounds = cu_seqlens.to(torch.int64).tolist()
    out = torch.empty_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end <= start:
            continue
        row, lo = divmod(start, s)
        hi = lo + (end - start)
        if hi > s:
            raise ValueError(f"cu_seqlens: document [{start}, {end}) crosses row {row}'s end at {(row + 1) * s}")
        out[row, :, lo:hi] = causal_sdpa(q[row:row + 1, :, lo:hi], k[row:row + 1, :, lo:hi],
                                         v[row:row + 1, :, lo:hi], scale, dropout_p, window=window)[0]
    return out


def allowed(q_pos: Tensor, k_pos: Tensor, q_doc: Tensor | None, k_doc: Tensor | None,
            window: int | None = None) -> Tensor:
    """Bool mask [b or 1, sq, sk]: key at or before the query (global positions), fewer than `window`
    positions before it (a sliding window, HF Mistral's meaning), same document."""
    mask = (k_pos[None, :] <= q_pos[:, None])[None]
    if window is not None:
        mask = mask & (k_pos[None, :] > q_pos[:, None] - window)[None]
    if q_doc is not None:
        mask = mask & (q_doc[:, :, None] == k_doc[:, None, :])
    return mask


def _math_block(q, k, v, mask, scale):
    """Masked softmax (at least float32) with the log-sum-exp; rows with no allowed key give out 0,
    lse -inf (and zero gradients, not NaN)."""
    b, hq, sq, d = q.shape
    hk = k.shape[1]
    work = torch.promote_types(q.dtype, torch.float32)
    qg = q.to(work).reshape(b, hk, hq // hk, sq, d)
    scores = torch.matmul(qg, k.to(work)[:, :, None].transpose(-1, -2)) * scale   # [b, hk, g, sq, sk]
    scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    m = scores.amax(-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(scores - m)
    total = p.sum(-1, keepdim=True)
    seen = total > 0
    total = torch.where(seen, total, torch.ones_like(total))
    out = torch.matmul(p, v.to(work)[:, :, None]) / total
    lse = torch.where(seen, m + torch.log(total), torch.full_like(total, float("-inf")))
    return out.reshape(b, hq, sq, d), lse.reshape(b, hq, sq)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # compiled, flex attention runs fused tiles; eager it would build the full score matrix
    return torch.compile(flex_attention, dynamic=False)


def flex_block_mask(q_pos: Tensor, k_pos: Tensor, q_doc: Tensor | None, k_doc: Tensor | None, batch: int,
                    window: int | None = None):
    """create_block_mask over the mask function (dense evaluation, S x S booleans): the plain twin of
    megamid.attention.block_mask.sparse_block_mask, for tests and benchmarks."""
    from torch.nn.attention.flex_attention import create_block_mask

    def causal(qi, ki):
        seen = k_pos[ki] <= q_pos[qi]
        return seen if window is None else seen & (k_pos[ki] > q_pos[qi] - window)

    if q_doc is None:
        def mask_mod(b, h, qi, ki):
            return causal(qi, ki)
        rows = None
    else:
        def mask_mod(b, h, qi, ki):
            return causal(qi, ki) & (q_doc[b, qi] == k_doc[b, ki])
        rows = batch
    return create_block_mask(mask_mod, B=rows, H=None, Q_LEN=q_pos.numel(), KV_LEN=k_pos.numel(),
                             device=q_pos.device)


def block_attention(q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, q_doc: Tensor | None = None,
                    k_doc: Tensor | None = None, scale: float | None = None, block_mask=None,
                    window: int | None = None, mask_key: tuple | None = None,
                    mask_doc: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(out [b, hq, sq, d], lse [b, hq, sq]) of q against the block k, v [b, hk, sk, d], both float32
    (float64 for float64 inputs on CPU).

    q_pos [sq], k_pos [sk]: global token positions (a key is seen at or before its query);
    q_doc [b, sq], k_doc [b, sk]: document ids, or None for one document per row. window: a sliding
    window (see `allowed`). block_mask: a precomputed FlexAttention mask for these positions, document
    ids and window (GPU; built here when None, from block extremes: megamid.attention.block_mask);
    mask_key, mask_doc: build it once per micro-batch (`mask_doc`, its document ids) and `mask_key` (what
    fixes the positions, e.g. the CP rank pair) and reuse it in every layer."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.is_cuda:
        if block_mask is None:
            from megamid.attention.block_mask import cached_block_mask, key_bucket, pad_keys, sparse_block_mask

            if mask_key is None:
                # uncached calls have varying key lengths (a growing KV cache): pad to a bucket, compile once per bucket
                k, v, k_pos, k_doc = pad_keys(k, v, k_pos, k_doc, key_bucket(k.shape[2]))
                block_mask = sparse_block_mask(q_pos, k_pos, q_doc, k_doc, q.shape[0], window)
            else:
                block_mask = cached_block_mask(q_pos, k_pos, q_doc, k_doc, q.shape[0], window, mask_key, mask_doc)
        out, lse = _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale,
                                    enable_gqa=q.shape[1] != k.shape[1], return_lse=True)
        return out.float(), lse.float()
    return _math_block(q, k, v, allowed(q_pos, k_pos, q_doc, k_doc, window), scale)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float | None = None) -> Tensor:
    """Plain softmax(q k^T * scale + mask) v with K/V repeated per group; mask bool [b or 1, sq, sk]."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


__all__ = ["allowed", "block_attention", "causal_sdpa", "document_ids", "flex_block_mask",
           "reference_attention", "varlen_sdpa"]
