"""MegamidCoreAttention: megatron's `core_attention` contract on SDPA / FlexAttention, with context parallelism.

Drop-in for megatron's DotProductAttention in a layer spec (same constructor and forward):
forward(query [sq, b, hq, d], key, value [sk, b, hk, d], attention_mask, attn_mask_type,
attention_bias=None, packed_seq_params=None) -> [sq, b, hq * d].

Paths, per call:
- CP = 1, no documents: SDPA, causal, GQA without repeating K/V (flash / efficient / cuDNN on GPU).
- CP = 1, packed documents (packed_seq_params with cu_seqlens, see megamid.attention.packed): per
  document SDPA on CPU, FlexAttention with a document block mask on GPU.
- A sliding window (model.sliding_window; megatron's window_size (window - 1, 0)) joins every mask:
  SDPA with an explicit mask on CPU, FlexAttention on GPU, and the CP schemes' position masks.
- CP > 1: the sequence is this rank's dual-chunk shard; K/V all-gather or ring (cp_comm_type
  "all_gather" / "p2p", as megatron's TransformerConfig.cp_comm_type names them).
"""

from __future__ import annotations

import math

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from megamid.attention.context_parallel import CP_SCHEMES
from megamid.attention.local import block_attention, causal_sdpa, varlen_sdpa
from megamid.config.base import ConfigError

# megatron's cp_comm_type names -> megamid's parallel.cp_comm names
CP_COMM_TYPES = {None: "allgather", "all_gather": "allgather", "allgather": "allgather", "p2p": "ring",
                 "ring": "ring"}


_LAST_PREFIX: list = [None, 0]  # (weakref to the mask, its causal prefix): every layer of a forward gets one mask


def causal_prefix(attention_mask: torch.Tensor) -> int:
    """How many leading query rows of megatron's [b, 1 or h, s, s] mask (True = masked out) are plain
    causal (row i sees keys 0..i and nothing else) in every batch row and head."""
    import weakref

    ref, cached = _LAST_PREFIX
    if ref is not None and ref() is attention_mask:
        return cached
    s = attention_mask.shape[-1]
    future = torch.ones(s, s, dtype=torch.bool, device=attention_mask.device).triu(1)
    rows_ok = (attention_mask.bool() == future).flatten(0, -3).all(dim=(0, 2))  # [s]: row i is causal everywhere
    prefix = s if bool(rows_ok.all()) else int(rows_ok.to(torch.int8).argmin())
    _LAST_PREFIX[:] = [weakref.ref(attention_mask), prefix]
    return prefix


class MegamidCoreAttention(MegatronModule):
    """Core attention (softmax(q k^T / sqrt(d)) v) for megatron's SelfAttention without Transformer Engine."""

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None):
        super().__init__(config=config)
        if pg_collection is None:
            from megatron.core.process_groups_config import ProcessGroupCollection

            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp"])
        self.pg_collection = pg_collection
        self.cp_group = getattr(pg_collection, "cp", None)
        tp = pg_collection.tp.size()
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.heads = config.num_attention_heads // tp
        self.head_dim = config.kv_channels
        # The query-key layer scaling megatron offers cancels out in exact arithmetic; SDPA is already fp32-accurate.
        self.softmax_scale = 1.0 / math.sqrt(self.head_dim) if softmax_scale is None else softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        if cp_comm_type not in CP_COMM_TYPES:
            raise ConfigError(f"cp_comm_type={cp_comm_type!r} is not supported by megamid attention: use "
                              "'all_gather' or 'p2p' (parallel.cp_comm: allgather | ring)")
        self.cp_comm = CP_COMM_TYPES[cp_comm_type]
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            raise ConfigError(f"softmax_type={config.softmax_type!r}: megamid attention has the vanilla softmax only")
        window = getattr(config, "window_size", None)
        if window is not None and (len(window) != 2 or window[1] != 0 or window[0] < 0):
            raise ConfigError(f"window_size={window}: megamid attention takes a causal sliding window (left, 0) "
                              "(model.sliding_window sets it)")
        # keys fewer than `window` positions back (the query itself included), as model.sliding_window says
        self.window = None if window is None else window[0] + 1

    @property
    def cp_size(self) -> int:
        return 1 if self.cp_group is None else self.cp_group.size()

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if attention_bias is not None:
            raise NotImplementedError("megamid attention takes no attention_bias (ALiBi etc.)")
        if packed_seq_params is not None and getattr(packed_seq_params, "qkv_format", "sbhd") == "thd":
            raise NotImplementedError("megamid attention takes packed rows in sbhd with cu_seqlens "
                                      "(megamid.attention.packed_seq_params), not the thd format")
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        sq, b = query.shape[:2]
        # [s, b, h, d] -> [b, h, s, d] views (last dim stays contiguous, as the fused kernels want)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        dropout = self.dropout_p if self.training else 0.0
        doc = getattr(packed_seq_params, "document_ids", None)
        cu = getattr(packed_seq_params, "cu_seqlens_q", None)
        if doc is None and cu is not None:
            from megamid.attention.local import document_ids

            doc = document_ids(cu, b, sq * self.cp_size)
        if self.cp_size > 1:
            if mask_type != AttnMaskType.causal or attention_mask is not None:
                raise NotImplementedError(f"context parallelism in megamid attention is for causal "
                                          f"self-attention without an explicit mask (got {mask_type})")
            if dropout > 0:
                raise ConfigError(f"model.attention_dropout={dropout} is not supported with context parallelism "
                                  "in megamid attention: set it to 0")
            out = CP_SCHEMES[self.cp_comm](q, k, v, self.softmax_scale, self.cp_group, doc, self.window)
        else:
            with self._rng():
                out = self._attend(q, k, v, attention_mask, mask_type, doc, cu, dropout)
        # [b, h, s, d] -> [s, b, h * d]
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)

    def _attend(self, q, k, v, attention_mask, mask_type, doc, cu, dropout):
        window = self.window
        if attention_mask is not None:
            if doc is not None:
                raise NotImplementedError("pass either packed_seq_params or an attention_mask, not both")
            if window is not None:
                raise NotImplementedError("an explicit attention_mask with a sliding window is not supported")
            prefix = causal_prefix(attention_mask) if q.shape[2] == k.shape[2] else 0
            if prefix == 0:
                return causal_sdpa(q, k, v, self.softmax_scale, dropout, attn_mask=~attention_mask.bool())
            # a shared prompt (megamid.eval.scoring): its rows are plain causal, the fast kernel's case; only
            # the rows after it need the mask (over all keys)
            head = causal_sdpa(q[:, :, :prefix], k[:, :, :prefix], v[:, :, :prefix], self.softmax_scale, dropout)
            if prefix == q.shape[2]:
                return head
            tail = causal_sdpa(q[:, :, prefix:], k, v, self.softmax_scale, dropout,
                               attn_mask=~attention_mask[..., prefix:, :].bool())
            return torch.cat([head, tail], dim=2)
        if mask_type not in (AttnMaskType.causal, AttnMaskType.no_mask, AttnMaskType.padding):
            raise NotImplementedError(f"attn_mask_type={mask_type} is not supported by megamid attention")
        if mask_type != AttnMaskType.causal:
            if window is not None:
                raise NotImplementedError(f"attn_mask_type={mask_type} with a sliding window is not supported")
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, scale=self.softmax_scale, enable_gqa=q.shape[1] != k.shape[1])
        if doc is None and q.shape[2] != k.shape[2]:
            # queries are the last sq of sk tokens (decoding with a KV cache): SDPA's is_causal would
            # align them with the first keys instead
            if dropout > 0:
                raise ConfigError("attention dropout with cached keys (sq != sk) is not supported")
            k_pos = torch.arange(k.shape[2], device=q.device)
            out, _ = block_attention(q, k, v, k_pos[k.shape[2] - q.shape[2]:], k_pos, None, None, self.softmax_scale,
                                     window=window)
            return out.to(q.dtype)
        if doc is None and (window is None or not q.is_cuda or dropout > 0):
            return causal_sdpa(q, k, v, self.softmax_scale, dropout, window=window)
        if doc is not None and not q.is_cuda:
            return varlen_sdpa(q, k, v, cu, self.softmax_scale, dropout, window=window)
        if dropout > 0:
            raise ConfigError(f"model.attention_dropout={dropout}: FlexAttention (packed documents on GPU) "
                              "has no dropout; set it to 0")
        # GPU, packed documents or a sliding window: FlexAttention's block-sparse mask skips what is masked
        # one mask per micro-batch (its document ids), reused by every layer
        pos = torch.arange(q.shape[2], device=q.device)
        out, _ = block_attention(q, k, v, pos, pos, doc, doc, self.softmax_scale, window=window,
                                 mask_key=("local",), mask_doc=doc)
        return out.to(q.dtype)

    def _rng(self):
        """megatron forks its model-parallel RNG for attention dropout; do the same when dropping out."""
        import contextlib

        if self.dropout_p == 0 or not self.training:
            return contextlib.nullcontext()
        from megatron.core import tensor_parallel

        return tensor_parallel.get_cuda_rng_tracker().fork()


__all__ = ["CP_COMM_TYPES", "MegamidCoreAttention"]
