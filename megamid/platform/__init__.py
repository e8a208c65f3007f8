"""The one place that knows about devices and process groups."""

from megamid.platform.cpu_mode import cpu_mode_active, enable_cpu_mode
from megamid.platform.distributed import (
    LaunchError,
    Layout,
    barrier,
    data_parallel_size,
    device,
    init_model_parallel,
    init_process_group,
    is_rank0,
    set_seed,
    shutdown,
)

__all__ = ["LaunchError", "Layout", "barrier", "cpu_mode_active", "data_parallel_size", "device", "enable_cpu_mode",
           "init_model_parallel", "init_process_group", "is_rank0", "set_seed", "shutdown"]
