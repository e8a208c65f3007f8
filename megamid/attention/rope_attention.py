"""RopeFusedSelfAttention: megatron's SelfAttention with RoPE applied by megamid's kernel (model.rope_fusion: megamid).

The layer spec names it in place of SelfAttention (`with_fused_rope(spec, rotary_dim)`); the model's
ScaledRotaryEmbedding (fusion="megamid") then hands every layer, in megatron's rotary_pos_emb slot, the
kernel's inputs (inv_freq and positions in one float32 tensor, see megamid.rope.fusion) instead of an
angle table. Q and K are rotated in one launch (csrc/rope; on CPU the loop of the same arithmetic):
  - straight from the fused QKV projection (split, Q and K rotated, V written, one pass) when no
    q/k layernorm sits between the projection and RoPE;
  - else on the split Q and K.
sbhd takes the positions (already this rank's, context-parallel included); THD (qkv_format "thd")
computes them in the kernel from cu_seqlens with the dual-chunk CP offsets. The attention factor is
read from the config as megatron's own path reads it.
"""

from __future__ import annotations

import copy

from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
    _yarn_get_concentration_factor_from_config,
)
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.identity_op import IdentityOp

from megamid.kernels.rope import apply_rope, apply_rope_fused_qkv
from megamid.rope.fusion import unpack_rope_inputs


class RopeFusedSelfAttention(SelfAttention):
    """SelfAttention whose RoPE runs in megamid's fused kernel (no angle table is read)."""

    def __init__(self, config, submodules, layer_number, attn_mask_type, rotary_dim: int, **kwargs):
        super().__init__(config, submodules, layer_number, attn_mask_type, **kwargs)
        self.rotary_dim = rotary_dim
        self._rope_call = None  # (rope_inputs, packed_seq_params) during one forward

    def forward(self, hidden_states, attention_mask, *args, rotary_pos_emb=None, packed_seq_params=None,
                **kwargs):
        if rotary_pos_emb is None:  # a layer without RoPE (no_rope_freq) or a caller that passes none
            return super().forward(hidden_states, attention_mask, *args, packed_seq_params=packed_seq_params,
                                   **kwargs)
        if args or kwargs.get("inference_context") is not None or kwargs.get("inference_params") is not None:
            raise NotImplementedError("model.rope_fusion=megamid has no KV-cache inference path; build the model "
                                      "with model.rope_fusion: none for megatron's inference engines")
        self._rope_call = (rotary_pos_emb, packed_seq_params)
        try:
            # megatron sees no rotary embedding: Q and K leave get_query_key_value_tensors rotated
            return super().forward(hidden_states, attention_mask, rotary_pos_emb=None,
                                   packed_seq_params=packed_seq_params, **kwargs)
        finally:
            self._rope_call = None

    def get_query_key_value_tensors(self, hidden_states, key_value_states=None, output_gate=False, split_qkv=True):
        if self._rope_call is None or not split_qkv:
            return super().get_query_key_value_tensors(hidden_states, key_value_states, output_gate=output_gate,
                                                       split_qkv=split_qkv)
        rope_inputs, packed = self._rope_call
        thd = packed is not None and getattr(packed, "qkv_format", "sbhd") == "thd"
        if not output_gate and not self._norm_between_qkv_and_rope() and \
                self.config.num_query_groups >= self.world_size:
            mixed, _ = super().get_query_key_value_tensors(hidden_states, key_value_states, split_qkv=False)
            kwargs = self._rope_kwargs(rope_inputs, packed, mixed.shape[0], mixed.shape[1])
            if thd:
                mixed = mixed.squeeze(1)
            q, k, v = apply_rope_fused_qkv(mixed, head_dim=self.hidden_size_per_attention_head, **kwargs)
            return (q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)) if thd else (q, k, v)
        out = super().get_query_key_value_tensors(hidden_states, key_value_states, output_gate=output_gate,
                                                  split_qkv=True)
        query, key = out[0], out[1]
        kwargs = self._rope_kwargs(rope_inputs, packed, query.shape[0], query.shape[1])
        if thd:
            query, key = query.squeeze(1), key.squeeze(1)
        query, key = apply_rope(query, key, **kwargs)
        if thd:
            query, key = query.unsqueeze(1), key.unsqueeze(1)
        return (query, key, *out[2:])

    def _norm_between_qkv_and_rope(self) -> bool:
        norms = (self.q_layernorm, self.k_layernorm)
        return any(norm is not None and not isinstance(norm, IdentityOp) for norm in norms)

    def _rope_kwargs(self, rope_inputs, packed, seq_len: int, batch: int) -> dict:
        inv_freq, positions = unpack_rope_inputs(rope_inputs, self.rotary_dim, seq_len, batch)
        kwargs = dict(inv_freq=inv_freq, attention_factor=_yarn_get_concentration_factor_from_config(self.config),
                      interleaved=self.config.rotary_interleaved)
        if packed is not None and getattr(packed, "qkv_format", "sbhd") == "thd":
            cu = packed.cu_seqlens_q_padded if packed.cu_seqlens_q_padded is not None else packed.cu_seqlens_q
            cp = self.pg_collection.cp
            return dict(kwargs, layout="thd", cu_seqlens=cu, cp_size=cp.size() if cp is not None else 1,
                        cp_rank=cp.rank() if cp is not None else 0)
        if positions is None:
            raise ValueError(f"rotary_pos_emb holds {rope_inputs.numel() - self.rotary_dim // 2} positions, "
                             f"expected s * b = {seq_len * batch}: the rotary module is not megamid's fused one")
        return dict(kwargs, layout="sbhd", position_ids=positions.t())  # [b, s], as HF's position_ids


def with_fused_rope(layer_spec, rotary_dim: int):
    """The layer spec with RopeFusedSelfAttention in place of its SelfAttention."""
    spec = copy.deepcopy(layer_spec)
    attention = spec.submodules.self_attention
    attention.module = RopeFusedSelfAttention
    attention.params = {**(attention.params or {}), "rotary_dim": rotary_dim}
    return spec


__all__ = ["RopeFusedSelfAttention", "with_fused_rope"]
