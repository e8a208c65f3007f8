"""Where each GPTModel weight lives in a megamid (megatron-core torch_dist) checkpoint, without a model.

A checkpoint stores global tensors under megatron's sharded keys: decoder layers stacked on a leading
layer axis (`decoder.layers.self_attention.linear_qkv.weight`, shape [num_layers, rows, hidden]; the
norms under their TE-compatible `...layer_norm_weight` names), each rank writing its TP slice as a chunk
with its global offset. This module makes the same ShardedTensors from full (TP=1) tensors for any TP,
so one process can write what TP ranks would: column-parallel weights (qkv, embedding, output layer)
split rows, row-parallel ones (linear_proj, linear_fc2) split columns, and SwiGLU's linear_fc1 is
[gate; up] globally with rank r's gate slice at chunk r and its up slice at chunk TP + r of 2 TP (as
megatron's apply_swiglu_sharded_factory). Norms and row-parallel biases are replicated: written once.
Pipeline stages change nothing here: layers are separate chunks on their global layer index in every
layout. dist_checkpointing reshards on load, so a checkpoint written at one TP loads at any TP/PP.
"""

from __future__ import annotations

from torch import Tensor

_SWIGLU = "swiglu"
# local state-dict suffix of decoder.layers.{i}. -> (checkpoint key after decoder.layers., TP axis / swiglu / None)
LAYER_KEYS = {
    "input_layernorm.weight": ("self_attention.linear_qkv.layer_norm_weight", None),
    "self_attention.linear_qkv.weight": ("self_attention.linear_qkv.weight", 0),
    "self_attention.linear_qkv.bias": ("self_attention.linear_qkv.bias", 0),
    "self_attention.q_layernorm.weight": ("self_attention.q_layernorm.weight", None),
    "self_attention.k_layernorm.weight": ("self_attention.k_layernorm.weight", None),
    "self_attention.linear_proj.weight": ("self_attention.linear_proj.weight", 1),
    "self_attention.linear_proj.bias": ("self_attention.linear_proj.bias", None),
    "pre_mlp_layernorm.weight": ("mlp.linear_fc1.layer_norm_weight", None),
    "mlp.linear_fc1.weight": ("mlp.linear_fc1.weight", _SWIGLU),
    "mlp.linear_fc1.bias": ("mlp.linear_fc1.bias", _SWIGLU),
    "mlp.linear_fc2.weight": ("mlp.linear_fc2.weight", 1),
    "mlp.linear_fc2.bias": ("mlp.linear_fc2.bias", None),
}
TOP_KEYS = {"embedding.word_embeddings.weight": 0, "output_layer.weight": 0, "decoder.final_layernorm.weight": None}
# megatron's linear layers save an (empty, on the local spec) _extra_state object per layer; loads expect it
EXTRA_STATE_LINEARS = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")


def checkpoint_key(name: str) -> tuple[str, int | None, int | str | None]:
    """A local GPTModel state-dict name -> (checkpoint key, layer index or None, TP axis / 'swiglu' / None)."""
    if name in TOP_KEYS:
        return name, None, TOP_KEYS[name]
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["decoder", "layers"] and parts[2].isdigit() and parts[3] in LAYER_KEYS:
        key, axis = LAYER_KEYS[parts[3]]
        return "decoder.layers." + key, int(parts[2]), axis
    raise KeyError(f"{name}: not a weight of a Llama-style GPTModel (local spec names expected)")


def tp_slices(tensor: Tensor, axis: int | str | None, tp: int) -> list[tuple[Tensor, tuple]]:
    """(local view, (axis, chunk index, chunks)) for each TP chunk of a full tensor; one unsplit entry
    for a replicated tensor. The views are not made contiguous (a meta placeholder stays data-free)."""
    if axis is None:
        return [(tensor, ())]
    if axis == _SWIGLU:
        gate, up = tensor.chunk(2, dim=0)
        return ([(g, (0, r, 2 * tp)) for r, g in enumerate(gate.chunk(tp, dim=0))]
                + [(u, (0, tp + r, 2 * tp)) for r, u in enumerate(up.chunk(tp, dim=0))])
    if tensor.shape[axis] % tp:
        raise ValueError(f"dimension {axis} of size {tensor.shape[axis]} does not split into TP={tp} slices")
    return [(t, (axis, r, tp)) for r, t in enumerate(tensor.chunk(tp, dim=axis))]


def sharded_tensors(name: str, tensor: Tensor, num_layers: int, tp: int) -> list:
    """megatron ShardedTensors holding a full tensor as TP ranks would write it (main replicas only).

    A real tensor's slices are copied contiguous; a meta tensor gives data-free placeholders."""
    from megatron.core.dist_checkpointing import ShardedTensor

    key, layer, axis = checkpoint_key(name)
    layer_offset = () if layer is None else ((0, layer, num_layers),)
    prepend = len(layer_offset)
    out = []
    for local, offset in tp_slices(tensor, axis, tp):
        local = local if local.is_meta else local.contiguous()
        offsets = layer_offset + ((offset[0] + prepend, offset[1], offset[2]),) if offset else layer_offset
        out.append(ShardedTensor.from_rank_offsets(key, local, *offsets, replica_id=0, prepend_axis_num=prepend))
    return out


def extra_state_objects(num_layers: int) -> list:
    """The per-layer _extra_state objects of the local spec's linear layers (None, as megatron saves them)."""
    from megatron.core.dist_checkpointing import ShardedObject

    return [ShardedObject(f"decoder.layers.{linear}._extra_state", None, (num_layers,), (layer,), replica_id=0)
            for layer in range(num_layers) for linear in EXTRA_STATE_LINEARS]


__all__ = ["EXTRA_STATE_LINEARS", "LAYER_KEYS", "TOP_KEYS", "checkpoint_key", "extra_state_objects",
           "sharded_tensors", "tp_slices"]
