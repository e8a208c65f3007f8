"""Megatron-Core GPT models built from megamid configs."""

from megamid.model.builder import ModelBackends, build_gpt_chunks, resolve_backends, transformer_config, unwrap, wrap_ddp

__all__ = ["ModelBackends", "build_gpt_chunks", "resolve_backends", "transformer_config", "unwrap", "wrap_ddp"]
