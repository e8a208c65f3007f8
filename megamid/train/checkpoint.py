"""Checkpoints through megatron-core dist_checkpointing, published atomically.

    CKPT_DIR/latest                 text: the name of the newest complete checkpoint ("iter_0000200")
    CKPT_DIR/iter_0000200/          dist checkpoint (model, optimizer, RNG) + megamid.json (state, config)

A save writes into `iter_N.partial/`, then rank 0 renames it to `iter_N/` and only then replaces
`latest` (write-to-temp + os.replace). A process that dies anywhere before that leaves the previous
checkpoint as `latest`; the stale `.partial` directory is removed by the next save. keep_last removes
only complete checkpoints older than the newest N, never the one `latest` names.
"""

import json
import os
import random
import re
import shutil

import numpy as np
import torch

from megamid.platform import barrier, is_rank0

LATEST = "latest"
STATE_FILE = "megamid.json"
_ITER_RE = re.compile(r"^iter_(\d{7})$")
# Fault injection for tests: die after the shards are written, before the checkpoint is published.
CRASH_ENV = "MEGAMID_FAULT_CRASH_BEFORE_PUBLISH"


class CheckpointError(RuntimeError):
    pass


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def find_latest(ckpt_dir: str):
    """Path of the checkpoint `latest` names, or None when there is none."""
    pointer = os.path.join(ckpt_dir, LATEST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(ckpt_dir, name)
    if not _ITER_RE.match(name) or not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise CheckpointError(f"{pointer} names {name!r}, which is not a complete megamid checkpoint "
                              f"(expected a directory iter_NNNNNNN with {STATE_FILE}); fix or remove the pointer")
    return path


def find_phase_end(ckpt_dir: str, phase: str, phase_steps: int):
    """The complete checkpoint saved at the last step of `phase` in ckpt_dir, or None."""
    if not os.path.isdir(ckpt_dir):
        return None
    for name in sorted(os.listdir(ckpt_dir), reverse=True):
        path = os.path.join(ckpt_dir, name)
        if _ITER_RE.match(name) and os.path.isfile(os.path.join(path, STATE_FILE)):
            state = read_state(path)["state"]
            if state.get("phase") == phase and state.get("phase_step") == phase_steps:
                return path
    return None


def resolve_checkpoint(path: str, field: str = "checkpoint") -> str:
    """A complete checkpoint directory from `path`: an iter_N directory, or a directory with `latest`."""
    from megamid.config.base import ConfigError

    if os.path.isfile(os.path.join(path, LATEST)):
        return find_latest(path)
    if not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise ConfigError(f"{field}={path!r} is invalid: it is not a megamid checkpoint (expected a directory with "
                          f"{STATE_FILE}, or a checkpoint directory with a '{LATEST}' pointer)")
    return path


def read_state(path: str) -> dict:
    state_path = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_path):
        raise CheckpointError(f"{path} is not a megamid checkpoint: {STATE_FILE} is missing")
    with open(state_path) as f:
        return json.load(f)


def _model_state(chunks: list) -> dict:
    # The innermost GPTModel's keys: the same whatever DDP / Float16Module wraps it.
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


def _create_adam_state(optimizer) -> None:
    """The distributed optimizer builds its load template from existing Adam state (exp_avg,
    exp_avg_sq and torch's per-param `step`); a fresh process has none, so make zeroed state."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        opt.init_state_fn(inner, opt.config)
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
    steps = _saved_steps(loaded_optimizer, set())
    if len(steps) != 1:
        raise CheckpointError(f"distributed optimizer checkpoint holds {len(steps)} different Adam steps "
                              f"{sorted(steps)}; expected one")
    step = steps.pop()
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for state in opt.optimizer.state.values():
            state["step"] = torch.tensor(step, dtype=torch.float32)


def _optimizer_metadata(use_distributed_optimizer: bool):
    # The default distributed-optimizer sharding fails to save on megatron-core 0.16-0.19
    # ("flattened_range is not supported"); dp_reshardable round-trips exactly.
    return {"distrib_optim_sharding_type": "dp_reshardable"} if use_distributed_optimizer else None


def _strategies():
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import (
        get_default_load_sharded_strategy,
        get_default_save_sharded_strategy,
    )
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelLoadStrategyWrapper,
        FullyParallelSaveStrategyWrapper,
    )

    group = ps.get_data_parallel_group(with_context_parallel=True)
    return (FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy("torch_dist"), group),
            lambda path: FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(path), group))


def save_checkpoint(ckpt_dir: str, step: int, chunks: list, optimizer, state: dict, config: dict,
                    use_distributed_optimizer: bool, keep_last=None) -> str:
    """Saves step `step` and publishes it as `latest`. `state` is megamid's own JSON-able state."""
    from megatron.core import dist_checkpointing

    final = os.path.join(ckpt_dir, iter_name(step))
    partial = final + ".partial"
    if is_rank0():
        os.makedirs(ckpt_dir, exist_ok=True)
        if os.path.isdir(partial):
            shutil.rmtree(partial)  # left by a save that died: never published, never `latest`
        os.makedirs(partial)
    barrier()
    sharded = _model_state(chunks)
    sharded["optimizer"] = optimizer.sharded_state_dict(
        sharded, metadata=_optimizer_metadata(use_distributed_optimizer))
    sharded["rng_state"] = _rng_object()
    save_strategy, _ = _strategies()
    dist_checkpointing.save(sharded, partial, sharded_strategy=save_strategy)
    barrier()
    if os.environ.get(CRASH_ENV) == str(step):
        os._exit(17)
    if is_rank0():
        with open(os.path.join(partial, STATE_FILE), "w") as f:
            json.dump({"step": step, "layout": _layout(), "state": state, "config": config}, f, indent=1)
        if os.path.isdir(final):
            # A complete checkpoint of the same step from an earlier, unpublished attempt.
            shutil.rmtree(final)
        os.replace(partial, final)
        tmp = os.path.join(ckpt_dir, LATEST + ".tmp")
        with open(tmp, "w") as f:
            f.write(iter_name(step) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(ckpt_dir, LATEST))
        if keep_last:
            _prune(ckpt_dir, keep_last, keep=iter_name(step))
    barrier()
    return final


def _prune(ckpt_dir: str, keep_last: int, keep: str) -> None:
    complete = sorted(n for n in os.listdir(ckpt_dir) if _ITER_RE.match(n)
                      and os.path.isfile(os.path.join(ckpt_dir, n, STATE_FILE)))
    for name in complete[:-keep_last]:
        if name != keep:
            shutil.rmtree(os.path.join(ckpt_dir, name))


def load_checkpoint(path: str, chunks: list, optimizer, use_distributed_optimizer: bool,
                    load_optimizer: bool = True) -> dict:
    """Loads a checkpoint into model chunks (and optimizer). Returns megamid.json's content.

    Any TP/PP/DP layout can load any other (dist_checkpointing reshards); RNG state is restored only
    when the layout is the same."""
    from megatron.core import dist_checkpointing

    meta = read_state(path)
    same_layout = meta.get("layout") == _layout()
    sharded = _model_state(chunks)
    if load_optimizer:
        if use_distributed_optimizer:
            _create_adam_state(optimizer)
        sharded["optimizer"] = optimizer.sharded_state_dict(
            sharded, is_loading=True, metadata=_optimizer_metadata(use_distributed_optimizer))
    if same_layout:
        sharded["rng_state"] = _rng_object()
    _, load_strategy = _strategies()
    loaded = dist_checkpointing.load(sharded, path, sharded_strategy=load_strategy(path))
    from megamid.model import unwrap

    for i, c in enumerate(chunks):
        unwrap(c).load_state_dict(loaded["model" if len(chunks) == 1 else f"model{i}"])
    if load_optimizer:
        # Mixed-precision optimizers restore their fp32 main params from the checkpoint itself.
        with torch.no_grad():
            optimizer.load_state_dict(loaded["optimizer"])
        if use_distributed_optimizer:
            _restore_adam_steps(optimizer, loaded["optimizer"])
    if same_layout and "rng_state" in loaded:
        _restore_rng(loaded["rng_state"])
    return meta
