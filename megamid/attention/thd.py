"""Packed documents for Transformer Engine's attention: the thd layout and its context-parallel shards.

    batch, params = thd_batch(batch, cp_size, cp_rank, tp_size=tp, sequence_parallel=sp)   # in place of shard_batch
    model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"], packed_seq_params=params)
    (batch["packed_seq_params"] is params: megamid.attention.packed_seq_params(batch) returns it)

A micro-batch of b packed rows [b, S] with `cu_seqlens` (document boundaries over the rows concatenated)
becomes one row [1, T] of documents back to back (TE attends within each document from cu_seqlens).
With context parallelism every document is padded at its end to a multiple of 2 x CP (x TP under
sequence parallelism: each rank's share must split over TP), and each rank keeps chunks r and 2CP-1-r
of every document (TE's thd_get_partitioned_indices; `partition_indices` is its plain twin, used where
TE's is absent). Padding tokens carry loss_mask 0 and label 0, and positions that continue the document's
(they attend only within their own document's padding tail and are never scored).
PackedSeqParams gets the real boundaries (cu_seqlens_q/kv) and the padded ones (cu_seqlens_*_padded), as
megatron's get_thd_batch_on_this_cp_rank builds them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from megamid.config.base import fail

SEQUENCE_FIELDS = ("tokens", "labels", "loss_mask", "position_ids")


def pad_multiple(cp_size: int, tp_size: int = 1, sequence_parallel: bool = False) -> int:
    """What every document's length is padded to a multiple of."""
    return (2 * cp_size if cp_size > 1 else 1) * (tp_size if sequence_parallel else 1)


def padded_cu_seqlens(cu_seqlens: Tensor, multiple: int) -> Tensor:
    """Boundaries after padding each document's length up to a multiple of `multiple` (int32)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    padded = (lengths + multiple - 1) // multiple * multiple
    return torch.cat([torch.zeros(1, dtype=torch.int64, device=cu_seqlens.device), padded.cumsum(0)]).to(torch.int32)


def partition_indices(cu_seqlens_padded: Tensor, cp_size: int, cp_rank: int) -> Tensor:
    """The token indices rank `cp_rank` keeps: chunks cp_rank and 2cp-1-cp_rank of every (padded) document,
    in document order (what TE's thd_get_partitioned_indices returns)."""
    cu = cu_seqlens_padded.to(torch.int64).tolist()
    pieces = []
    for start, end in zip(cu[:-1], cu[1:]):
        chunk = (end - start) // (2 * cp_size)
        for c in (cp_rank, 2 * cp_size - 1 - cp_rank):
            pieces.append(torch.arange(start + c * chunk, start + (c + 1) * chunk))
    if not pieces:
        return torch.zeros(0, dtype=torch.int64, device=cu_seqlens_padded.device)
    return torch.cat(pieces).to(cu_seqlens_padded.device)


def _te_partition():
    try:
        import transformer_engine_torch as tex
    except Exception:  # TE raises more than ImportError without its libraries
        return None
    return lambda cu, total, cp, rank: tex.thd_get_partitioned_indices(cu, total, cp, rank)


def thd_batch(batch: dict, cp_size: int = 1, cp_rank: int = 0, tp_size: int = 1, sequence_parallel: bool = False,
              partition=None):
    """(this rank's [1, T_local] batch, PackedSeqParams(qkv_format="thd")) from a micro-batch of packed rows.

    `partition(cu_padded, total, cp, rank)` picks the rank's indices (default: TE's kernel where it
    imports, else partition_indices)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = batch.get("cu_seqlens")
    if cu is None:
        fail("batch['cu_seqlens']", None, "thd needs packed rows (data.pack: true)")
    tokens = batch["tokens"]
    b, s = tokens.shape
    cu64 = cu.to(torch.int64)
    if cu64.dim() != 1 or int(cu64[0]) != 0 or int(cu64[-1]) != b * s:
        fail("batch['cu_seqlens']", tuple(cu.shape), f"boundaries rising from 0 to batch x seq_len = {b * s}")
    multiple = pad_multiple(cp_size, tp_size, sequence_parallel)
    cu_padded = padded_cu_seqlens(cu64, multiple).to(cu.device)
    lengths = cu64[1:] - cu64[:-1]
    padded_lengths = cu_padded.to(torch.int64)[1:] - cu_padded.to(torch.int64)[:-1]
    total = int(cu_padded[-1])
    # where each real token lands in the padded stream: its index plus the padding of the documents before it
    shift = torch.repeat_interleave(cu_padded.to(torch.int64)[:-1] - cu64[:-1], lengths)
    target = torch.arange(b * s, device=tokens.device) + shift.to(tokens.device)
    out = {}
    for key, value in batch.items():
        if key not in SEQUENCE_FIELDS:
            continue
        if value.dim() != 2 or tuple(value.shape) != (b, s):
            fail(f"batch[{key!r}]", tuple(value.shape), f"expected [batch, {s}]")
        flat = value.reshape(-1)
        stream = torch.zeros(total, dtype=value.dtype, device=value.device)
        if key == "position_ids":
            # padding continues each document's positions (never scored; keeps RoPE tables in range)
            doc_start = torch.repeat_interleave(cu_padded.to(torch.int64)[:-1], padded_lengths)
            first_pos = torch.repeat_interleave(flat[cu64[:-1].clamp(max=b * s - 1)], padded_lengths)
            stream = (torch.arange(total, device=value.device) - doc_start.to(value.device) + first_pos).to(value.dtype)
        stream[target] = flat
        out[key] = stream.unsqueeze(0)
    if cp_size > 1:
        pick = partition or _te_partition() or (lambda c, t, cp, r: partition_indices(c, cp, r))
        index = pick(cu_padded, total, cp_size, cp_rank).to(tokens.device)
        out = {k: v.index_select(1, index) for k, v in out.items()}
    for key, value in batch.items():
        if key not in SEQUENCE_FIELDS and key != "cu_seqlens":
            out[key] = value
    max_len = int(padded_lengths.max())
    cu32 = cu64.to(torch.int32).to(cu.device)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu32, cu_seqlens_kv=cu32, cu_seqlens_q_padded=cu_padded,
                             cu_seqlens_kv_padded=cu_padded, max_seqlen_q=max_len, max_seqlen_kv=max_len)
    out["packed_seq_params"] = params
    return out, params


__all__ = ["pad_multiple", "padded_cu_seqlens", "partition_indices", "thd_batch"]
