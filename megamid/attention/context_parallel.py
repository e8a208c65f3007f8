"""Context parallelism without Transformer Engine: sharding a batch, KV all-gather and ring attention.

Layout (Megatron's load-balanced dual chunk): the global sequence of S tokens is cut into 2 * cp
chunks and rank r holds chunks r and 2cp-1-r, so every rank does the same causal work. Attention
masks are built from *global token positions* (and document ids for packed rows), so neither scheme
needs the chunks reordered:

- allgather: K and V of every rank are all-gathered (autograd: the backward reduce-scatters the K/V
  gradients) and the local queries attend to them under the position/document mask.
- ring: K/V blocks travel around the ring by point-to-point send/recv, overlapped with the block
  computed meanwhile; partial outputs merge by log-sum-exp (megamid.kernels.attention_merge). The
  backward (a torch.autograd.Function) sends the blocks round again with their K/V gradient
  accumulators, recomputing each block; dq stays local.

`shard_batch` keeps `cu_seqlens` global (as Megatron's PackedSeqParams): document ids are computed
from it for the global sequence and indexed by this rank's positions inside the attention.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from megamid.attention.local import block_attention
from megamid.config.base import fail
from megamid.kernels.attention_merge import merge_attention
from megamid.rope.positions import cp_shard_positions

SEQUENCE_FIELDS = ("tokens", "labels", "loss_mask", "position_ids")


def shard_batch(batch: dict, cp_size: int, cp_rank: int) -> dict:
    """This rank's shard of a micro-batch along the sequence, in the dual-chunk layout.

    tokens, labels, loss_mask, position_ids [b, S] -> [b, S / cp] (positions r and 2cp-1-r chunks, so
    position_ids keep their global values, which RoPE reads); `source` [b] and `cu_seqlens` (global
    boundaries over the rows concatenated) are returned unchanged. S must be divisible by 2 * cp_size."""
    if cp_size == 1:
        return dict(batch)
    seq_len = batch["tokens"].shape[1]
    if seq_len % (2 * cp_size):
        fail("training.seq_len", seq_len, f"must be divisible by 2 * parallel.context_parallel_size = {2 * cp_size}")
    index = cp_shard_positions(seq_len, cp_size, cp_rank, device=batch["tokens"].device)
    out = {}
    for key, value in batch.items():
        if key in SEQUENCE_FIELDS:
            if value.dim() != 2 or value.shape[1] != seq_len:
                fail(f"batch[{key!r}]", tuple(value.shape), f"expected [batch, {seq_len}]")
            out[key] = value.index_select(1, index)
        else:
            out[key] = value
    return out


def rank_positions(seq_len_local: int, group, rank: int, device) -> Tensor:
    """Global positions of the tokens rank `rank` of `group` holds (int64 [seq_len_local])."""
    cp = group.size()
    return cp_shard_positions(seq_len_local * cp, cp, rank, device=device)


# ---- KV all-gather ---------------------------------------------------------------------------------

class _AllGatherSequence(torch.autograd.Function):
    """All-gather along dim 2 ([b, h, s, d]) in rank order; backward sums the gradients of every rank
    and keeps this rank's slice (a reduce-scatter; all-reduce + slice where the backend has none)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(group.size())]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=2)

    @staticmethod
    def backward(ctx, grad):
        group = ctx.group
        cp, rank = group.size(), group.rank()
        parts = [p.contiguous() for p in grad.chunk(cp, dim=2)]
        if dist.get_backend(group) == "nccl":
            out = torch.empty_like(parts[rank])
            dist.reduce_scatter(out, parts, group=group)
            return out, None
        grad = grad.contiguous()
        dist.all_reduce(grad, group=group)  # gloo has no reduce-scatter
        return grad.chunk(cp, dim=2)[rank].contiguous(), None


def allgather_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, group, doc: Tensor | None = None,
                        window: int | None = None) -> Tensor:
    """Local queries [b, hq, s, d] against every rank's K/V; returns [b, hq, s, d] in q's dtype.
    doc: document ids [b, S] of the global sequence (packed rows) or None; window: a sliding window."""
    cp, rank, s = group.size(), group.rank(), q.shape[2]
    k_all = _AllGatherSequence.apply(k, group)
    v_all = _AllGatherSequence.apply(v, group)
    q_pos = rank_positions(s, group, rank, q.device)
    k_pos = torch.cat([rank_positions(s, group, j, q.device) for j in range(cp)])
    q_doc, k_doc = (None, None) if doc is None else (doc[:, q_pos], doc[:, k_pos])
    out, _ = block_attention(q, k_all, v_all, q_pos, k_pos, q_doc, k_doc, scale, window=window,
                             mask_key=("allgather", cp, rank), mask_doc=doc)
    return out.to(q.dtype)


# ---- ring ------------------------------------------------------------------------------------------

def _exchange(send: Tensor, group) -> tuple[Tensor, list]:
    """Start sending `send` to the next rank of the ring and receiving the previous rank's; returns
    (the receive buffer, the requests to wait on)."""
    cp, rank = group.size(), group.rank()
    nxt = dist.get_global_rank(group, (rank + 1) % cp)
    prv = dist.get_global_rank(group, (rank - 1) % cp)
    recv = torch.empty_like(send)
    # even ranks send first, odd ranks receive first: no rendezvous cycle on backends that block
    if rank % 2 == 0:
        reqs = [dist.isend(send, nxt, group=group), dist.irecv(recv, prv, group=group)]
    else:
        reqs = [dist.irecv(recv, prv, group=group), dist.isend(send, nxt, group=group)]
    return recv, reqs


def _wait(reqs) -> None:
    for r in reqs:
        r.wait()


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, group, doc, window):
        cp, rank, s = group.size(), group.rank(), q.shape[2]
        positions = [rank_positions(s, group, j, q.device) for j in range(cp)]
        q_pos = positions[rank]
        q_doc = None if doc is None else doc[:, q_pos]
        kv = torch.stack([k, v]).contiguous()
        out = lse = None
        for step in range(cp):
            src = (rank - step) % cp
            recv, reqs = _exchange(kv, group) if step < cp - 1 else (None, [])
            k_doc = None if doc is None else doc[:, positions[src]]
            o, l = block_attention(q, kv[0], kv[1], q_pos, positions[src], q_doc, k_doc, scale, window=window,
                                   mask_key=("ring", cp, rank, src), mask_doc=doc)
            out, lse = (o, l) if out is None else merge_attention(out, lse, o, l)
            _wait(reqs)
            kv = recv
        ctx.save_for_backward(q, k, v, out, lse, doc)
        ctx.scale, ctx.group, ctx.window = scale, group, window
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, doc = ctx.saved_tensors
        group, scale = ctx.group, ctx.scale
        cp, rank, s = group.size(), group.rank(), q.shape[2]
        positions = [rank_positions(s, group, j, q.device) for j in range(cp)]
        q_pos = positions[rank]
        q_doc = None if doc is None else doc[:, q_pos]
        g = grad_out.to(out.dtype)   # float32 (float64 for float64 inputs)
        lse_safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        dq = torch.zeros_like(q, dtype=out.dtype)
        kv = torch.stack([k, v]).contiguous()
        dkv = torch.zeros_like(kv, dtype=out.dtype)   # travels with its block; home after cp hops
        for step in range(cp):
            src = (rank - step) % cp
            recv_kv, reqs = _exchange(kv, group) if step < cp - 1 else (None, [])
            k_doc = None if doc is None else doc[:, positions[src]]
            with torch.enable_grad():
                qd, kd, vd = (t.detach().requires_grad_() for t in (q, kv[0], kv[1]))
                o, l = block_attention(qd, kd, vd, q_pos, positions[src], q_doc, k_doc, scale, window=ctx.window,
                                       mask_key=("ring", cp, rank, src), mask_doc=doc)
                # out = sum_i w_i o_i with w_i = exp(lse_i - lse): d o_i = w_i g, d lse_i = w_i <g, o_i - out>
                w = torch.where(torch.isfinite(l) & torch.isfinite(lse), torch.exp(l.detach() - lse_safe),
                                torch.zeros_like(lse))
                g_lse = w * (g * (o.detach() - out)).sum(-1)
                gq, gk, gv = torch.autograd.grad((o, l), (qd, kd, vd), (w[..., None] * g, g_lse))
            dq += gq
            dkv[0] += gk
            dkv[1] += gv
            _wait(reqs)
            recv_dkv, reqs = _exchange(dkv, group)
            _wait(reqs)
            dkv = recv_dkv
            kv = recv_kv
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None


def ring_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, group, doc: Tensor | None = None,
                   window: int | None = None) -> Tensor:
    """Ring attention of the local queries [b, hq, s, d] over every rank's K/V; [b, hq, s, d] out."""
    return _RingAttention.apply(q, k, v, scale, group, doc, window)


CP_SCHEMES = {"allgather": allgather_attention, "ring": ring_attention}

__all__ = ["CP_SCHEMES", "allgather_attention", "rank_positions", "ring_attention", "shard_batch"]
