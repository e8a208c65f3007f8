"""Document masking for packed rows: the PackedSeqParams the trainer passes when a batch has cu_seqlens.

Rows stay in megatron's sbhd layout ([s, b, ...], CP-sharded along s); `qkv_format="sbhd"` keeps
megatron's attention and RoPE on their unpacked paths, and megamid's core attention reads
`document_ids` (computed once per micro-batch, for the global sequence) to mask across documents.
`cu_seqlens_q/kv` stay the global boundaries over the rows concatenated (row r starts at r * S).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.core.packed_seq_params import PackedSeqParams
from torch import Tensor

from megamid.attention.local import document_ids


@dataclass
class DocumentPackedSeqParams(PackedSeqParams):
    document_ids: Tensor = None   # int64 [b, S]: document index of every token of the global rows


def packed_seq_params(batch: dict, cp_size: int = 1, attention: str = "megamid"):
    """DocumentPackedSeqParams for a (possibly CP-sharded) micro-batch with `cu_seqlens`, else None.

    `attention` is the model's resolved backend. Under Transformer Engine attention: the thd PackedSeqParams
    that megamid.attention.thd.thd_batch put on the micro-batch (it replaces shard_batch there: TE shards
    every document, not the rows)."""
    if batch.get("packed_seq_params") is not None:
        return batch["packed_seq_params"]
    cu = batch.get("cu_seqlens")
    if cu is None:
        return None
    if attention == "te":
        from megamid.config.base import ConfigError

        raise ConfigError("packed documents (data.pack: true) under Transformer Engine attention take the thd "
                          "layout: prepare the micro-batch with megamid.attention.thd.thd_batch in place of "
                          "shard_batch (or set MEGAMID_ATTENTION=megamid)")
    if attention == "megatron":
        raise NotImplementedError("megatron's DotProductAttention cannot mask documents (data.pack: true): "
                                  "unset MEGAMID_ATTENTION or set it to megamid")
    b, s_local = batch["tokens"].shape
    seq_len = s_local * cp_size
    return DocumentPackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=seq_len,
                                   max_seqlen_kv=seq_len, document_ids=document_ids(cu, b, seq_len))


__all__ = ["DocumentPackedSeqParams", "packed_seq_params"]
