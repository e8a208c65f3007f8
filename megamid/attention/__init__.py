"""Core attention without Transformer Engine (SDPA / FlexAttention, packed-document masks) and context
parallelism (dual-chunk sharding, KV all-gather or ring with log-sum-exp merging).

    from megamid.attention import describe_attention, shard_batch, packed_seq_params
    log(describe_attention(phase.parallel, backends.attention))      # once at start-up

The model builder puts MegamidCoreAttention in the layer spec (chosen once per model: see backend.py).
Submodules that need megatron (core_attention, packed) are imported lazily, so this package imports
without it.
"""

from megamid.attention.backend import CP_COMM_TYPE, attention_backend, describe_attention, with_core_attention
from megamid.attention.context_parallel import shard_batch


def packed_seq_params(batch: dict, cp_size: int = 1, attention: str = "megamid"):
    from megamid.attention.packed import packed_seq_params as build

    return build(batch, cp_size, attention)


__all__ = ["CP_COMM_TYPE", "attention_backend", "describe_attention", "packed_seq_params", "shard_batch",
           "with_core_attention"]
