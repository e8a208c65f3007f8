"""RoPE scaling: pure math (inv_freq, attention factor, HF and YAML dicts) and token positions.

The Megatron-Core rotary module lives in megamid.rope.rotary_embedding (it imports megatron, which
this package's math does not)."""

from megamid.config.base import ConfigError
from megamid.rope.methods import DefaultRope, DynamicNtkRope, Llama3Rope, LinearRope, LongRope, NtkRope, YarnRope
from megamid.rope.positions import cp_shard_positions, packed_cp_shard_positions, packed_positions
from megamid.rope.scaling import RopeScaling, model_rope_scaling, registered_types

__all__ = [
    "ConfigError",
    "RopeScaling",
    "model_rope_scaling",
    "DefaultRope",
    "LinearRope",
    "NtkRope",
    "DynamicNtkRope",
    "YarnRope",
    "LongRope",
    "Llama3Rope",
    "registered_types",
    "cp_shard_positions",
    "packed_positions",
    "packed_cp_shard_positions",
]
