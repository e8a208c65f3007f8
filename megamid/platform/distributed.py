"""Process groups: torch.distributed from torchrun's environment, then Megatron's parallel state.

NCCL where CUDA is present, gloo otherwise (where CPU mode is also applied). A plain `python` launch
without torchrun's variables becomes a world of one on a free local port.
"""

import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from megamid.platform.cpu_mode import enable_cpu_mode


class LaunchError(RuntimeError):
    """The launch does not fit the parallel layout (the CLI prints it as one line and exits 2)."""


@dataclass(frozen=True)
class Layout:
    """The parallel layout of one run (what Megatron's parallel state is initialised with)."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None
    context_parallel_size: int = 1
    hierarchical_context_parallel_sizes: tuple | None = None   # TE's a2a+p2p CP: (all-to-all size, ring size)


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(timeout_minutes: int = 30) -> None:
    """Initialise torch.distributed once per process from RANK/WORLD_SIZE/MASTER_* (torchrun)."""
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    import datetime

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        backend = "nccl"
    else:
        enable_cpu_mode()
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))


def init_model_parallel(layout: Layout) -> None:
    """(Re)initialise Megatron's parallel state for `layout`; the world must divide by TPxPPxCP."""
    from megatron.core import parallel_state

    init_process_group()
    world = dist.get_world_size()
    model_parallel = (layout.tensor_model_parallel_size * layout.pipeline_model_parallel_size
                      * layout.context_parallel_size)
    if world % model_parallel:
        raise LaunchError(
            f"parallel layout TP={layout.tensor_model_parallel_size} x PP={layout.pipeline_model_parallel_size}"
            f" x CP={layout.context_parallel_size} = {model_parallel} does not divide the world size {world}"
            f" (launch with a multiple of {model_parallel} processes)")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tensor_model_parallel_size,
        pipeline_model_parallel_size=layout.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=layout.virtual_pipeline_model_parallel_size,
        context_parallel_size=layout.context_parallel_size,
        # TE's a2a+p2p context parallelism: [all-to-all group, ring across groups] (None otherwise)
        hierarchical_context_parallel_sizes=(list(layout.hierarchical_context_parallel_sizes)
                                             if layout.hierarchical_context_parallel_sizes else None),
    )


def data_parallel_size() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_world_size()


def set_seed(seed: int) -> None:
    """Seed python, numpy, torch and Megatron's model-parallel RNG tracker (CPU generator in CPU mode)."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
