"""Token positions for RoPE: context-parallel shards and packed documents. Pure torch, no megatron."""

from __future__ import annotations

import torch

from megamid.config.base import fail


def cp_shard_positions(seq_len: int, cp_size: int, cp_rank: int, device=None) -> torch.Tensor:
    """Positions (int64 [seq_len // cp_size]) held by one rank in Megatron's load-balanced layout.

    The sequence is cut into 2 * cp_size equal chunks; rank r holds chunk r then chunk 2*cp_size-1-r,
    so every rank gets the same causal-attention work (what `get_pos_emb_on_this_cp_rank` slices)."""
    if cp_size < 1 or not 0 <= cp_rank < cp_size:
        fail("cp_rank", cp_rank, f"expected 0 <= cp_rank < cp_size={cp_size}")
    if cp_size == 1:
        return torch.arange(seq_len, device=device)
    if seq_len % (2 * cp_size):
        fail("seq_len", seq_len, f"must be divisible by 2 * cp_size = {2 * cp_size}")
    chunk = seq_len // (2 * cp_size)
    first = torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk, device=device)
    second_start = (2 * cp_size - 1 - cp_rank) * chunk
    return torch.cat([first, torch.arange(second_start, second_start + chunk, device=device)])


def packed_positions(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Positions (int64 [cu_seqlens[-1]]) that restart at 0 at every document boundary.

    cu_seqlens: [n_docs + 1] cumulative lengths starting at 0 (the THD / flash-attn convention)."""
    cu = torch.as_tensor(cu_seqlens).to(torch.int64)
    if cu.dim() != 1 or cu.numel() < 1 or cu[0].item() != 0 or bool((cu[1:] < cu[:-1]).any()):
        fail("cu_seqlens", cu.tolist(), "expected a 1-D non-decreasing sequence starting at 0")
    total = int(cu[-1])
    lengths = cu[1:] - cu[:-1]
    starts = torch.repeat_interleave(cu[:-1], lengths, output_size=total)
    return torch.arange(total, device=cu.device) - starts


def packed_cp_shard_positions(cu_seqlens: torch.Tensor, cp_size: int, cp_rank: int) -> torch.Tensor:
    """Positions held by one CP rank for packed documents under Megatron's THD CP layout: each document
    (length divisible by 2 * cp_size) is split into 2 * cp_size chunks and the rank keeps chunks r and
    2*cp_size-1-r of every document, documents in order."""
    cu = torch.as_tensor(cu_seqlens).to(torch.int64)
    pieces = [cp_shard_positions(int(cu[i + 1] - cu[i]), cp_size, cp_rank) for i in range(cu.numel() - 1)]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64)
