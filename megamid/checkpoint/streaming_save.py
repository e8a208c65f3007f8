"""Write a megatron-core torch_dist checkpoint whose tensors are made one at a time while it is written.

`dist_checkpointing.save` takes a state dict of ShardedTensors holding their data, so the whole model is
in memory before the first byte is written, and megatron's writer resolves every item up front (it is
built for asynchronous saves). A converter does not need that: `save_streaming` declares each tensor by
name, shape and dtype with a data-free (meta) placeholder, lets megatron lay the checkpoint out exactly
as for a real save (same sharded keys, chunks, metadata.json, common.pt and DCP `.metadata`), and writes
it with torch.distributed.checkpoint's own synchronous FileSystemWriter through a planner that asks
`make(name, chunk)` for each TP chunk only when it is written. Peak memory is about two chunks (the one
being made and the one just written, which DCP still references), whatever the model size.

Uses megatron-core's torch_dist translation helpers (`_replace_state_dict_keys_with_sharded_keys`,
`mcore_to_pyt_state_dict`, `MCoreSavePlanner`), as its own TorchDistSaveShardedStrategy does; the
checkpoint's backend is 'torch_dist' version 1 and megatron's loader reads it like any other.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from megamid.checkpoint.dist_layout import sharded_tensors


def _strategy(resolve: Callable[[str, tuple], Tensor]):
    from megatron.core.dist_checkpointing.strategies.base import SaveShardedStrategy
    from megatron.core.dist_checkpointing.strategies.torch import (
        MCoreSavePlanner,
        _replace_state_dict_keys_with_sharded_keys,
        mcore_to_pyt_state_dict,
    )
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.planner import WriteItemType

    class LazyPlanner(MCoreSavePlanner):
        """Resolves each tensor write item (key, global offset) through `resolve` when it is written."""

        def resolve_data(self, write_item):
            if write_item.type == WriteItemType.BYTE_IO:
                return super().resolve_data(write_item)
            index = write_item.index
            data = resolve(index.fqn, tuple(index.offset))
            return data.reshape(tuple(write_item.tensor_data.chunk.sizes))

    class StreamingSaveStrategy(SaveShardedStrategy):
        def __init__(self):
            super().__init__("torch_dist", 1)

        def can_handle_sharded_objects(self):
            return True

        def save(self, sharded_state_dict, checkpoint_dir):
            state, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, True)
            pyt_state = mcore_to_pyt_state_dict(state, False)
            # thread_count=1: one file, items written (and so made) one after another
            writer = FileSystemWriter(str(checkpoint_dir), single_file_per_rank=True, thread_count=1)
            dcp_save(pyt_state, storage_writer=writer, planner=LazyPlanner(flatten_state_dict=False))

    return StreamingSaveStrategy()


def save_streaming(checkpoint_dir: str, tensors: dict[str, tuple[tuple, torch.dtype]],
                   make: Callable[[str, int], Tensor], num_layers: int, tp: int, objects: list = ()) -> None:
    """Write the GPTModel weights `tensors` ({local state-dict name: (full shape, dtype)}) laid out for TP=tp
    (dist_layout), plus megatron ShardedObjects `objects`, into the empty directory `checkpoint_dir`.

    make(name, i) returns chunk i of `name` as dist_layout.tp_slices orders them (the whole tensor for a
    replicated weight; SwiGLU's fc1 has 2 x TP chunks) when it is written: once per chunk, in the declared
    shape and dtype."""
    from megatron.core import dist_checkpointing

    sharded: dict = {}
    chunk_of: dict[tuple[str, tuple], tuple[str, int, tuple]] = {}
    for name, (shape, dtype) in tensors.items():
        placeholder = torch.empty(tuple(shape), dtype=dtype, device="meta")
        for i, st in enumerate(sharded_tensors(name, placeholder, num_layers, tp)):
            sharded[f"{name}/{i}"] = st
            chunk_of[(st.key, tuple(st.global_offset))] = (name, i, tuple(st.local_shape))
    for obj in objects:
        sharded[f"{obj.key}/{obj.global_offset}"] = obj

    def resolve(key: str, offset: tuple) -> Tensor:
        name, i, shape = chunk_of[(key, offset)]
        chunk = make(name, i)
        dtype = tensors[name][1]
        if tuple(chunk.shape) != shape or chunk.dtype != dtype:
            raise ValueError(f"{name} chunk {i}: made {chunk.dtype} {list(chunk.shape)}, declared {dtype} {list(shape)}")
        return chunk.contiguous()

    dist_checkpointing.save(sharded, checkpoint_dir, sharded_strategy=_strategy(resolve))


__all__ = ["save_streaming"]
