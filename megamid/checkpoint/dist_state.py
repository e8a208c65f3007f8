"""Training state (model, optimizer, RNG) saved and loaded through megatron-core dist_checkpointing.

    save_checkpoint(ckpt_dir, step, chunks, optimizer, state, config, use_distributed_optimizer, keep_last)
    load_checkpoint(path, chunks, optimizer, use_distributed_optimizer, load_optimizer=True) -> megamid.json

Every rank writes its shards into the Checkpointer's `iter_N.partial/`; each rank checksums a share of
the files; rank 0 publishes (megamid.json, manifest, rename, `latest`) and prunes. A save refuses
non-finite weights on any rank: nothing is published and `latest` does not move. A load verifies the
manifest (ranks split the checksums) before megatron opens a file. All functions here are collective:
every rank of the job calls them, in the same order.
"""

from __future__ import annotations

import os
import random
from typing import Optional

import numpy as np
import torch

from megamid.checkpoint.checkpointer import (
    Checkpointer,
    CheckpointError,
    file_entries,
    iter_name,
    list_files,
    read_state,
    resolve,
    verify,
)
from megamid.platform import barrier, is_rank0


# ---- collectives over the (optional) process group ----------------------------------------------------
def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather(obj) -> list:
    rank, world = _rank_world()
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def verify_collective(path: str) -> None:
    """checkpointer.verify with the checksums split across ranks; every rank raises the first error found."""
    rank, world = _rank_world()
    try:
        verify(path, share=(rank, world))
        error = None
    except CheckpointError as exc:
        error = str(exc)
    errors = [e for e in _gather(error) if e]
    if errors:
        raise CheckpointError(errors[0])


def _warn_rank0(message: str) -> None:
    if is_rank0():
        print(f"warning: {message}", flush=True)


def checkpointer(ckpt_dir: str, on_corrupt: str = "fail") -> Checkpointer:
    """A Checkpointer whose verification is collective (call its readers on every rank)."""
    return Checkpointer(ckpt_dir, on_corrupt, verify_fn=verify_collective, warn=_warn_rank0)


def find_latest(ckpt_dir: str, on_corrupt: str = "fail") -> Optional[str]:
    """The verified checkpoint `latest` names (None when there is none), after removing what a dead
    process left in ckpt_dir (partial saves, half-done prunes)."""
    if is_rank0():
        Checkpointer(ckpt_dir).clean_stale()
    barrier()
    return checkpointer(ckpt_dir, on_corrupt).latest()


def find_phase_end(ckpt_dir: str, phase: str, phase_steps: int) -> Optional[str]:
    """The newest verified checkpoint saved at the last step of `phase`, or None."""
    return checkpointer(ckpt_dir).find_phase_end(phase, phase_steps)


def resolve_checkpoint(path: str, field: str = "checkpoint", on_corrupt: str = "fail") -> str:
    """A verified checkpoint from an iter_N directory or a directory with `latest`; errors name `field`."""
    return resolve(path, field, on_corrupt, verify_collective)


# ---- megatron state -----------------------------------------------------------------------------------
def model_state(chunks: list) -> dict:
    """The innermost GPTModel's sharded keys: the same whatever DDP / Float16Module wraps it."""
    from megamid.model import unwrap

    if len(chunks) == 1:
        return {"model": unwrap(chunks[0]).sharded_state_dict()}
    return {f"model{i}": unwrap(c).sharded_state_dict() for i, c in enumerate(chunks)}


def _layout() -> dict:
    from megatron.core import parallel_state as ps

    return {"tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size(),
            "dp": ps.get_data_parallel_world_size(), "cp": ps.get_context_parallel_world_size()}


def _rng_object():
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    layout = _layout()
    shape = (layout["pp"], layout["tp"], layout["cp"], layout["dp"])
    offset = (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank(),
              ps.get_context_parallel_rank(), ps.get_data_parallel_rank())
    return ShardedObject("rng_state", state, shape, offset, replica_id=0)


def _restore_rng(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


# ---- the distributed optimizer's Adam step ---------------------------------------------------------
def _inner_optimizers(optimizer) -> list:
    return [opt.optimizer for opt in getattr(optimizer, "chained_optimizers", [optimizer])]


def _has_per_param_step(inner) -> bool:
    """torch's Adam/AdamW keep a per-param `step` tensor; TE's FusedAdam keeps it in the param group and
    its state_dict() breaks on a per-param one (KeyError 'step'), so the fix-ups below are torch-only."""
    return isinstance(inner, (torch.optim.Adam, torch.optim.AdamW))


def _create_adam_state(optimizer) -> None:
    """The distributed optimizer builds its load template from existing Adam state (exp_avg,
    exp_avg_sq and torch's per-param `step`); a fresh process has none, so make zeroed state."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        opt.init_state_fn(inner, opt.config)
        if _has_per_param_step(inner):
            for group in inner.param_groups:
                for param in group["params"]:
                    inner.state[param].setdefault("step", torch.tensor(0.0))


def _saved_steps(node, found: set) -> set:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "param_groups" and isinstance(value, list):
                found.update(float(g["step"]) for g in value if isinstance(g, dict) and "step" in g)
            else:
                _saved_steps(value, found)
    return found


def _restore_adam_steps(optimizer, loaded_optimizer: dict) -> None:
    """After DistributedOptimizer.load_state_dict, torch Adam's per-param `step` holds the load
    template's value (the dp_reshardable bucket state does not persist it), and megatron gives every
    param one shared tensor that Adam would increment once per param. Set each param its own copy of
    the step saved in the param groups."""
    inners = [inner for inner in _inner_optimizers(optimizer) if _has_per_param_step(inner)]
    if not inners:
        return
    steps = _saved_steps(loaded_optimizer, set())
    if len(steps) != 1:
        raise CheckpointError(f"distributed optimizer checkpoint holds {len(steps)} different Adam steps "
                              f"{sorted(steps)}; expected one")
    step = steps.pop()
    for inner in inners:
        for state in inner.state.values():
            state["step"] = torch.tensor(step, dtype=torch.float32)


def _optimizer_metadata(use_distributed_optimizer: bool):
    # The default distributed-optimizer sharding fails to save on megatron-core 0.16-0.19
    # ("flattened_range is not supported"); dp_reshardable round-trips exactly.
    return {"distrib_optim_sharding_type": "dp_reshardable"} if use_distributed_optimizer else None


def _in_process_write_results() -> None:
    """megatron's FileSystemWriterAsync passes write results through a queue served by a spawn-context
    multiprocessing Manager (a ~270 MB process plus a resource tracker) that outlives a main process
    killed by SIGKILL. Saves here are synchronous, where that queue is only used inside this process:
    give megatron a plain in-process queue before its first save, so no helper process is started."""
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", None) is None:
        filesystem_async._results_queue = queue.Queue()


def save_strategy():
    """The fully-parallel torch_dist save strategy (synchronous, no helper processes)."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    _in_process_write_results()
    group = ps.get_data_parallel_group(with_context_parallel=True)
    return FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy("torch_dist"), group)


def _load_strategy(path: str):
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelLoadStrategyWrapper

    return FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(path),
                                            ps.get_data_parallel_group(with_context_parallel=True))


# ---- save / load ------------------------------------------------------------------------------------
def non_finite_weight(chunks: list) -> Optional[str]:
    """The first floating weight on any rank holding NaN or inf, as 'name (rank r)'; None when all are finite."""
    from megamid.model import unwrap

    named = [(f"{name}" + (f" of chunk {i}" if len(chunks) > 1 else ""), param)
             for i, chunk in enumerate(chunks) for name, param in unwrap(chunk).named_parameters()
             if param.is_floating_point()]
    bad = None
    if named:
        finite = torch.stack([torch.isfinite(param).all() for _, param in named])  # one device sync, not one per weight
        if not bool(finite.all()):
            bad = named[int((~finite).nonzero()[0])][0]
    found = [f"{b} (rank {r})" for r, b in enumerate(_gather(bad)) if b]
    return found[0] if found else None


def save_checkpoint(ckpt_dir: str, step: int, chunks: list, optimizer, state: dict, config: dict,
                    use_distributed_optimizer: bool, keep_last=None, record_layout: bool = True,
                    record: dict = None) -> str:
    """Saves step `step` and publishes it as `latest`. `state` is megamid's own JSON-able state; `record`
    (megamid.checkpoint.record.checkpoint_record) goes to megamid.json's top level.

    optimizer=None saves the model only; record_layout=False records a null layout and no RNG state, so a
    load never restores RNG from it (converted and averaged checkpoints). Raises CheckpointError,
    publishing nothing, on non-finite weights."""
    from megatron.core import dist_checkpointing

    bad = non_finite_weight(chunks)
    if bad:
        raise CheckpointError(f"refusing to save step {step} to {ckpt_dir}: weight {bad} holds NaN or inf; "
                              f"nothing was written and {os.path.join(ckpt_dir, 'latest')} did not move")
    ckpt = Checkpointer(ckpt_dir)
    partial = os.path.join(ckpt_dir, iter_name(step) + ".partial")
    if is_rank0():
        ckpt.begin(step)
    barrier()
    sharded = model_state(chunks)
    if optimizer is not None:
        sharded["optimizer"] = optimizer.sharded_state_dict(
            sharded, metadata=_optimizer_metadata(use_distributed_optimizer))
    layout = _layout() if record_layout else None
    if record_layout:
        sharded["rng_state"] = _rng_object()
    dist_checkpointing.save(sharded, partial, sharded_strategy=save_strategy())
    barrier()
    # Each rank checksums (and fsyncs) a share of the files: rank 0 alone would read the whole checkpoint.
    rank, world = _rank_world()
    names = list_files(partial)
    entries = {}
    for part in _gather(file_entries(partial, names[rank::world])):
        entries.update(part)
    final = os.path.join(ckpt_dir, iter_name(step))
    if is_rank0():
        meta = {"step": step, "layout": layout, "state": state, "config": config, **(record or {})}
        ckpt.publish(partial, step, meta, entries)
        if keep_last:
            ckpt.prune(keep_last, keep=(iter_name(step),))
    barrier()
    return final


def load_checkpoint(path: str, chunks: list, optimizer, use_distributed_optimizer: bool,
                    load_optimizer: bool = True) -> dict:
    """Loads a checkpoint into model chunks (and optimizer). Returns megamid.json's content.

    The manifest is verified first (CheckpointError naming the bad file). Any TP/PP/DP layout can load
    any other (dist_checkpointing reshards); RNG state is restored only when the layout is the same. Only
    Transformer Engine's `_extra_state` entries may be absent on one side (a checkpoint saved with the
    local spec loaded under TE, or the reverse); any other missing weight fails, named."""
    from megamid.model import unwrap
    from megamid.model.state_keys import load_model_state, load_sharded_tolerant

    verify_collective(path)
    meta = read_state(path)
    same_layout = meta.get("layout") == _layout()
    sharded = model_state(chunks)
    if load_optimizer:
        if use_distributed_optimizer:
            _create_adam_state(optimizer)
        sharded["optimizer"] = optimizer.sharded_state_dict(
            sharded, is_loading=True, metadata=_optimizer_metadata(use_distributed_optimizer))
    if same_layout:
        sharded["rng_state"] = _rng_object()
    loaded = load_sharded_tolerant(sharded, path, sharded_strategy=_load_strategy(path))
    for i, c in enumerate(chunks):
        load_model_state(unwrap(c), loaded["model" if len(chunks) == 1 else f"model{i}"], f"checkpoint {path}")
    if load_optimizer:
        # Mixed-precision optimizers restore their fp32 main params from the checkpoint itself.
        with torch.no_grad():
            optimizer.load_state_dict(loaded["optimizer"])
        if use_distributed_optimizer:
            _restore_adam_steps(optimizer, loaded["optimizer"])
    if same_layout and "rng_state" in loaded:
        _restore_rng(loaded["rng_state"])
    return meta


__all__ = ["CheckpointError", "checkpointer", "find_latest", "find_phase_end", "load_checkpoint", "model_state",
           "non_finite_weight", "read_state", "resolve_checkpoint", "save_checkpoint", "save_strategy",
           "verify_collective"]
