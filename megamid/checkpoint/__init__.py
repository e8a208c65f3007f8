"""Checkpoint formats megamid reads and writes besides its own: transformers Llama / Qwen2 weights."""

from megamid.checkpoint.hf_llama import fuse_qkv, hf_config, hf_to_megatron, megatron_to_hf, split_qkv

__all__ = ["fuse_qkv", "hf_config", "hf_to_megatron", "megatron_to_hf", "split_qkv"]
