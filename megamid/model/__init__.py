"""Megatron-Core GPT models built from megamid configs."""

from megamid.model.builder import build_gpt_chunks, transformer_config, unwrap, validate_layout, wrap_ddp

__all__ = ["build_gpt_chunks", "transformer_config", "unwrap", "validate_layout", "wrap_ddp"]
