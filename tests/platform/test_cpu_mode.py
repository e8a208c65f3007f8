"""CPU mode: applied only without CUDA; megatron's CUDA calls land on the CPU (in a subprocess, since
the mode is process-global)."""

import subprocess
import sys

import pytest
import torch

SCRIPT = r"""
import torch
from megamid.platform.cpu_mode import enable_cpu_mode, cpu_mode_active
assert enable_cpu_mode() and cpu_mode_active()
x = torch.zeros(3, device="cuda")
assert x.device.type == "cpu"
assert x.type() == "torch.cuda.FloatTensor"          # what megatron's grad clipping asserts
assert torch.ones(2).to("cuda").device.type == "cpu"
assert x.cuda() is x
assert torch.cuda.current_device() == torch.device("cpu")
# megatron's RNG tracker forks the CPU generator
from megatron.core import tensor_parallel
from megamid.platform import init_model_parallel, Layout, set_seed
init_model_parallel(Layout())
set_seed(5)
tracker = tensor_parallel.get_cuda_rng_tracker()
with tracker.fork():
    a = torch.rand(4)
with tracker.fork():
    b = torch.rand(4)
assert not torch.equal(a, b)     # the forked stream advanced
set_seed(5)
with tracker.fork():
    c = torch.rand(4)
assert torch.equal(a, c)         # and is reproducible from the seed
print("OK")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU mode applies only where CUDA is absent")
def test_cpu_mode_redirects_cuda_calls_and_rng():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


def test_cpu_mode_is_not_applied_in_plain_imports():
    import megamid.platform  # noqa: F401
    from megamid.platform.cpu_mode import cpu_mode_active

    assert not cpu_mode_active()
    assert torch.zeros(1).type() == "torch.FloatTensor"
