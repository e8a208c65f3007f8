"""The GPU catalogue `megamid plan --gpu NAME` and `make gpu-check` read: memory, architecture, peak dense
TFLOP/s (BF16, FP8), and what the architecture can run (FP8 needs Ada/Hopper/Blackwell, MXFP8 Blackwell).

memory_gib is what torch.cuda.get_device_properties(i).total_memory reports (not the marketing GB);
TFLOP/s are the vendor's dense (no sparsity) numbers for the SXM parts, the MFU denominators.
"""

from dataclasses import dataclass
from typing import Optional

from megamid.config.base import ConfigError


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gib: float
    arch: str                       # ampere | ada | hopper | blackwell
    bf16_tflops: float
    fp8_tflops: Optional[float]     # None: no FP8 tensor cores

    @property
    def fp8(self) -> bool:
        return self.fp8_tflops is not None

    @property
    def mxfp8(self) -> bool:
        return self.arch == "blackwell"


GPUS = {g.name: g for g in (
    GpuSpec("a100-40gb", 39.4, "ampere", 312.0, None),
    GpuSpec("a100-80gb", 79.2, "ampere", 312.0, None),
    GpuSpec("l40s-48gb", 44.4, "ada", 362.0, 733.0),
    GpuSpec("h100-80gb", 79.2, "hopper", 989.0, 1979.0),
    GpuSpec("h100-94gb", 93.1, "hopper", 835.0, 1671.0),     # H100 NVL
    GpuSpec("h200-141gb", 139.8, "hopper", 989.0, 1979.0),
    GpuSpec("b200-192gb", 179.1, "blackwell", 2250.0, 4500.0),
    GpuSpec("gb200-186gb", 184.0, "blackwell", 2500.0, 5000.0),
)}


def gpu_spec(name: str) -> GpuSpec:
    """The catalogue entry for `name` (case-insensitive); ConfigError listing the known ones otherwise."""
    spec = GPUS.get(str(name).lower())
    if spec is None:
        raise ConfigError(f"--gpu={name!r} is invalid: expected one of {', '.join(GPUS)}")
    return spec


def gpu_from_device_name(device_name: str, total_memory_gib: float) -> Optional[GpuSpec]:
    """The catalogue entry for a CUDA device name such as 'NVIDIA H100 80GB HBM3' (None if unknown)."""
    text = device_name.lower()
    for key, arch in (("gb200", "blackwell"), ("b200", "blackwell"), ("h200", "hopper"), ("h100", "hopper"),
                      ("a100", "ampere"), ("l40s", "ada")):
        if key in text:
            candidates = [g for g in GPUS.values() if g.name.startswith(key + "-") and g.arch == arch]
            if candidates:
                return min(candidates, key=lambda g: abs(g.memory_gib - total_memory_gib))
    return None
