"""FlexAttention block masks built from block extremes, never from an S x S matrix, and built once per
micro-batch for every layer.

    mask = sparse_block_mask(q_pos, k_pos, q_doc, k_doc, batch, window)   # BlockMask, O((S / 128)^2)
    mask = cached_block_mask(q_pos, k_pos, q_doc, k_doc, batch, window, key=("ring", s, cp, rank, src), doc=doc)

create_block_mask evaluates the mask function on every (query, key) pair (~17 GB of booleans at 128K).
Here each 128-token block of queries and of keys is summarised by its lowest and highest position and
document id: a key block is *full* for a query block when every pair is allowed (highest key position
<= lowest query position; lowest key position > highest query position - window; one and the same
document on both sides) and *partial* when some pair may be (lowest key <= highest query; highest key >
lowest query - window; overlapping document ranges); the mask function then decides inside partial
blocks only. Full blocks are exact, partial blocks a superset of the exact ones (an empty block marked
partial costs compute, never correctness); the tests check both against the dense mask.

Key lengths that change call by call (decoding against a growing cache, evaluation at many lengths) are
padded to a power-of-two bucket (`pad_keys`: the padding keys sit beyond every query, so no query sees
them and their blocks are skipped), which bounds torch.compile's recompiles to one per bucket.

The mask depends on the micro-batch (document ids) and the rank pair, not on the layer: cached_block_mask
keeps one per (document-id tensor, key) in a weak identity dictionary, so every layer of a micro-batch reuses it
and it goes when the micro-batch's document ids do.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

BLOCK = 128
_BY_DOCS = WeakIdKeyDictionary()      # by tensor identity (tensors compare elementwise)
_NO_DOCS: dict = {}
_NO_DOCS_LIMIT = 64


def block_extremes(values: Tensor, block: int = BLOCK) -> tuple:
    """(min, max) over each run of `block` entries along the last dim ([..., n] -> [..., ceil(n / block)])."""
    n = values.shape[-1]
    pad = (-n) % block
    if pad:
        values = torch.cat([values, values[..., -1:].expand(*values.shape[:-1], pad)], dim=-1)
    blocks = values.reshape(*values.shape[:-1], -1, block)
    return blocks.amin(-1), blocks.amax(-1)


def block_structure(q_pos: Tensor, k_pos: Tensor, q_doc: Tensor | None, k_doc: Tensor | None,
                    window: int | None = None, block: int = BLOCK) -> tuple:
    """(partial, full) bool [B or 1, Qb, Kb]: key blocks that may hold allowed pairs but not only those,
    and key blocks whose every pair is allowed (causal by global position, within `window`, same document)."""
    qmin, qmax = block_extremes(q_pos, block)
    kmin, kmax = block_extremes(k_pos, block)
    some = kmin[None, :] <= qmax[:, None]
    every = kmax[None, :] <= qmin[:, None]
    if window is not None:
        some = some & (kmax[None, :] > qmin[:, None] - window)
        every = every & (kmin[None, :] > qmax[:, None] - window)
    some, every = some[None], every[None]
    if q_doc is not None:
        qdmin, qdmax = block_extremes(q_doc, block)      # [B, Qb]
        kdmin, kdmax = block_extremes(k_doc, block)      # [B, Kb]
        some = some & (kdmin[:, None, :] <= qdmax[:, :, None]) & (qdmin[:, :, None] <= kdmax[:, None, :])
        one_doc = (qdmin == qdmax)[:, :, None] & (kdmin == kdmax)[:, None, :]
        every = every & one_doc & (qdmin[:, :, None] == kdmin[:, None, :])
    return some & ~every, every


def _as_kv_blocks(flags: Tensor) -> tuple:
    """BlockMask's (num_blocks [B, 1, Qb], indices [B, 1, Qb, Kb]) int32: the flagged key blocks first, in order."""
    num = flags.sum(-1, dtype=torch.int32)
    order = torch.argsort((~flags).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num[:, None].contiguous(), order[:, None].contiguous()


def sparse_block_mask(q_pos: Tensor, k_pos: Tensor, q_doc: Tensor | None, k_doc: Tensor | None, batch: int,
                      window: int | None = None, block: int = BLOCK):
    """The FlexAttention BlockMask of `allowed(q_pos, k_pos, q_doc, k_doc, window)` without materialising it."""
    from torch.nn.attention.flex_attention import BlockMask

    partial, full = block_structure(q_pos, k_pos, q_doc, k_doc, window, block)
    if q_doc is None:
        partial, full = partial.expand(batch, -1, -1), full.expand(batch, -1, -1)

    def mask_mod(b, h, qi, ki):
        seen = k_pos[ki] <= q_pos[qi]
        if window is not None:
            seen = seen & (k_pos[ki] > q_pos[qi] - window)
        if q_doc is not None:
            seen = seen & (q_doc[b, qi] == k_doc[b, ki])
        return seen

    kv_num, kv_idx = _as_kv_blocks(partial)
    full_num, full_idx = _as_kv_blocks(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(q_pos.numel(), k_pos.numel()))


def cached_block_mask(q_pos: Tensor, k_pos: Tensor, q_doc: Tensor | None, k_doc: Tensor | None, batch: int,
                      window: int | None, key: tuple, doc: Tensor | None = None):
    """sparse_block_mask, built once per (micro-batch, key): `key` (hashable) must fix the positions given
    the micro-batch's document ids `doc` (None: rows without documents; then the key alone decides)."""
    full_key = (key, window, batch, q_pos.numel(), k_pos.numel(), str(q_pos.device))
    if doc is None:
        table = _NO_DOCS
        if len(table) > _NO_DOCS_LIMIT:
            table.clear()
    else:
        table = _BY_DOCS.setdefault(doc, {})
        # the mask's function must not hold `doc` itself: the weak entry would then never be freed
        if q_doc is doc or k_doc is doc:
            copy = doc.clone()
            q_doc, k_doc = (copy if q_doc is doc else q_doc), (copy if k_doc is doc else k_doc)
    mask = table.get(full_key)
    if mask is None:
        mask = table[full_key] = sparse_block_mask(q_pos, k_pos, q_doc, k_doc, batch, window)
    return mask


# a key position beyond any query: padding keys are never seen (and no document id is -1)
PAD_POSITION = torch.iinfo(torch.int64).max // 4


def key_bucket(length: int, smallest: int = BLOCK) -> int:
    """The padded key length: the next power of two, at least `smallest`."""
    return max(smallest, 1 << (max(length, 1) - 1).bit_length())


def pad_keys(k: Tensor, v: Tensor, k_pos: Tensor, k_doc: Tensor | None, length: int) -> tuple:
    """k, v [b, h, sk, d], k_pos [sk], k_doc [b, sk] padded along sk to `length` with keys no query sees."""
    extra = length - k.shape[2]
    if extra <= 0:
        return k, v, k_pos, k_doc
    k = torch.nn.functional.pad(k, (0, 0, 0, extra))
    v = torch.nn.functional.pad(v, (0, 0, 0, extra))
    k_pos = torch.cat([k_pos, k_pos.new_full((extra,), PAD_POSITION)])
    if k_doc is not None:
        k_doc = torch.cat([k_doc, k_doc.new_full((k_doc.shape[0], extra), -1)], dim=1)
    return k, v, k_pos, k_doc


__all__ = ["block_extremes", "block_structure", "cached_block_mask", "key_bucket", "pad_keys", "sparse_block_mask"]
