"""Checkpoint formats megamid reads and writes besides its own: transformers Llama / Qwen2 / Qwen3 / Mistral weights."""

from megamid.checkpoint.hf_llama import fuse_qkv, hf_config, split_qkv

__all__ = ["fuse_qkv", "hf_config", "split_qkv"]
