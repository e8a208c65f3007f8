"""Shared by the benchmark scripts (imported, not run): median CUDA-event timing of a callable."""

import torch


def median_ms(fn, iters: int, warmup: int = 3) -> float:
    """Median of `iters` CUDA-event timings after `warmup` calls, in milliseconds."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]
