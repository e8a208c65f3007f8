"""CPU mode: lets Megatron-Core, which assumes CUDA in a few dozen places, run on a CPU over gloo.

Applied only when CUDA is absent (`enable_cpu_mode()` is a no-op otherwise). What it changes, and
why (measured facts in shared/notes/megatron-core-on-cpu.md):
- the CUDA RNG API used by megatron's RNG tracker is routed to the CPU generator;
- `torch.cuda.current_device()` returns the cpu device (megatron passes it as `device=` ~175 times);
- streams and events are dummies, synchronize / empty_cache are no-ops;
- a TorchFunctionMode rewrites `device="cuda"` in factory calls and `.to()` to cpu, makes
  `Tensor.cuda()` a no-op, and reports `Tensor.type()` with the `torch.cuda.` prefix that megatron's
  grad clipping and mixed-precision optimizers compare against.
The function mode is thread-local: `enable_cpu_mode()` enters it in the calling thread for good.
"""

import threading

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_state = threading.local()
_patched = False


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


def _to_cpu(device):
    return _CPU if _is_cuda(device) else device


class _CudaToCpuMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs:
            kwargs["device"] = _to_cpu(kwargs["device"])
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)


class _DummyStream:
    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args):
        pass

    def wait_event(self, *args):
        pass

    def record_event(self, event=None):
        return event or _DummyEvent()

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _DummyEvent(_DummyStream):
    def record(self, *args):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


def _patch_cuda_api() -> None:
    """Process-wide replacements of the CUDA API calls megatron makes (idempotent)."""
    global _patched
    if _patched:
        return
    from megatron.core.tensor_parallel import random as mpu_random

    cuda = torch.cuda
    cuda.current_device = lambda: _CPU
    cuda.device_count = lambda: 0
    cuda.set_device = lambda *a, **k: None
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda *a, **k: None
    cuda.get_rng_state = lambda device=None: torch.get_rng_state()
    cuda.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.random.set_rng_state = cuda.set_rng_state
    # torch.manual_seed itself calls cuda.manual_seed_all: seed the CPU generator directly.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: None
    cuda.Stream = _DummyStream
    cuda.Event = _DummyEvent
    cuda.current_stream = lambda *a, **k: _DummyStream()
    cuda.stream = lambda *a, **k: _DummyStream()
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    mpu_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mpu_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    _patched = True


def cpu_mode_active() -> bool:
    return getattr(_state, "mode", None) is not None


def enable_cpu_mode() -> bool:
    """Apply CPU mode in this process and thread when CUDA is absent. Returns whether it is active."""
    if torch.cuda.is_available():
        return False
    _patch_cuda_api()
    if not cpu_mode_active():
        _state.mode = _CudaToCpuMode()
        _state.mode.__enter__()
    return True


def disable_cpu_mode() -> None:
    """Leave the function mode in this thread (the process-wide API patches stay; they are inert)."""
    mode = getattr(_state, "mode", None)
    if mode is not None:
        mode.__exit__(None, None, None)
        _state.mode = None
