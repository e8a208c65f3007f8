"""Which path applies RoPE in the model (model.rope_fusion), decided once when the model is built.

    from megamid.rope.fusion import rope_fusion_path, describe_rope_fusion
    path = rope_fusion_path(model_cfg, cuda=torch.cuda.is_available(), te=spec == "te")

Paths:
  te       TE's fused RoPE (megatron's apply_rope_fusion). TE refuses an attention factor, so YaRN's /
           LongRoPE's is folded into the softmax scale instead: HF multiplies cos and sin by the factor f,
           so q.k scales by f^2 and softmax_scale = f^2 / sqrt(head_dim) with cos/sin unscaled. Exact
           only when the rotary part covers the whole head (HF does not scale the pass-through dims).
  megamid  megamid's kernel (csrc/rope, or its CPU loop) through RopeFusedSelfAttention in the layer
           spec: Q and K rotated in one launch from inv_freq and positions, no angle table.
  none     megatron's unfused path with precomputed angles and the factor in cos/sin.
auto = te where TE's layer spec is used (megamid with partial rotary, where the fold is not exact),
megamid where CUDA is present without TE (none where megamid._cuda is not built), none on CPU.
"""

from __future__ import annotations

import math

import torch

from megamid.config.base import ConfigError
from megamid.rope.scaling import model_rope_scaling

PATHS = ("te", "megamid", "none")


def rope_fusion_path(model_cfg, cuda: bool, te: bool, kernel_built: bool = True) -> str:
    """'te', 'megamid' or 'none' for a model of `model_cfg` built with CUDA present (`cuda`),
    Transformer Engine's layer spec in use (`te`) and megamid._cuda importable (`kernel_built`).
    A pure function of its arguments."""
    choice = model_cfg.rope_fusion
    scaling = model_rope_scaling(model_cfg, model_cfg.rope, "model.rope")
    partial = scaling.rotary_dim != scaling.head_dim
    if choice == "auto":
        if not cuda:
            return "none"
        # a later phase may bring an attention factor, which the fold cannot carry with partial rotary
        if te and not partial:
            return "te"
        return "megamid" if kernel_built else "none"  # without the kernel it would run the PyTorch reference
    if choice == "te":
        if not (cuda and te):
            raise ConfigError("model.rope_fusion='te' is invalid here: TE's fused RoPE needs Transformer Engine's "
                              "layer spec with CUDA (TE importable, MEGAMID_SPEC=auto|te); use auto, megamid or none")
        check_te_fold(scaling, "model.rope")
    return choice


def check_te_fold(scaling, field: str) -> None:
    """Raises where the attention factor cannot move into the softmax scale (partial rotary, factor != 1)."""
    if scaling.rotary_dim != scaling.head_dim and scaling.attention_factor != 1.0:
        raise ConfigError(
            f"{field}: attention factor {scaling.attention_factor} with partial rotary ({scaling.rotary_dim} of "
            f"{scaling.head_dim} dims) cannot be folded into the softmax scale for model.rope_fusion='te' (HF does "
            "not scale the pass-through dims); use model.rope_fusion: megamid or auto")


def folded_softmax_scale(head_dim: int, attention_factor: float) -> float:
    """The softmax scale that carries the attention factor out of cos/sin: f^2 / sqrt(head_dim)."""
    return attention_factor ** 2 / math.sqrt(head_dim)


def describe_rope_fusion(path: str, attention_factor: float = 1.0) -> str:
    """One line for the start-up log."""
    if path == "te":
        return (f"rope: Transformer Engine fused RoPE, attention factor {attention_factor:g} folded into the "
                "softmax scale (f^2 / sqrt(head_dim))")
    if path == "megamid":
        kernel = "CUDA kernel" if torch.cuda.is_available() else "CPU loop of the kernel's arithmetic"
        return f"rope: megamid fused RoPE ({kernel}; Q and K in one launch from inv_freq and positions)"
    return "rope: megatron unfused RoPE (precomputed angles, attention factor in cos/sin)"


def set_softmax_scale(model, scale: float | None) -> None:
    """Puts `scale` on the model's TransformerConfig and on every core attention built from it: megatron's,
    megamid's and TE's DotProductAttention (and TE's backends inside it) read it at construction."""
    model.config.softmax_scale = scale
    for module in model.modules():
        core = getattr(module, "core_attention", None)
        if core is None:
            continue
        if getattr(module.config, "apply_query_key_layer_scaling", False):
            raise ConfigError("apply_query_key_layer_scaling divides the softmax scale per layer; megamid does "
                              "not set it and cannot fold a rope attention factor with it")
        for sub in core.modules():
            if isinstance(getattr(sub, "softmax_scale", None), float) or sub is core:
                sub.softmax_scale = scale if scale is not None else 1.0 / math.sqrt(model.config.kv_channels)


# ---- the per-call RoPE inputs of the megamid path ---------------------------------------------------
# megatron hands `rotary_pos_emb` from the GPTModel to every layer (and saves it for recompute), so it
# must stay one tensor: float32 [n + P] = inv_freq (n = rotary_dim / 2) then P positions (s-major
# [s, b]). float32 positions lose nothing at any size: float(position) is all the angle ever uses
# (here, in megatron's path and in HF's), and float32 -> int64 -> float32 returns the same value.

def pack_rope_inputs(inv_freq: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One float32 tensor for megatron's rotary_pos_emb slot; positions int [s, b] (or [s])."""
    return torch.cat((inv_freq.to(torch.float32).reshape(-1),
                      positions.to(device=inv_freq.device, dtype=torch.float32).reshape(-1)))


def unpack_rope_inputs(rope_inputs: torch.Tensor, rotary_dim: int, seq_len: int, batch: int):
    """(inv_freq float32 [rotary_dim / 2], positions int64 [s, b] or None where they are not s * b)."""
    n = rotary_dim // 2
    inv_freq = rope_inputs[:n]
    positions = rope_inputs[n:]
    if positions.numel() != seq_len * batch:
        return inv_freq, None
    return inv_freq, positions.reshape(seq_len, batch).to(torch.int64)


__all__ = ["PATHS", "check_te_fold", "describe_rope_fusion", "folded_softmax_scale", "pack_rope_inputs",
           "rope_fusion_path", "set_softmax_scale", "unpack_rope_inputs"]
