"""pip install -e .   (the Makefile does this inside .venv; see README)

Builds two extensions:
  megamid._C     pybind11 C++ CPU helpers from csrc/**/*.cpp (always built)
  megamid._cuda  CUDA kernels from csrc/**/*.cu behind a plain C API (built only where CUDA is
                 available: nvcc on PATH and a GPU visible, or MEGAMID_BUILD_CUDA=1; =0 skips it)
Neither links against torch: the kernels take raw pointers, so no torch headers or ABI are involved.
"""

import glob
import os
import shutil
import subprocess
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def _cuda_wanted():
    flag = os.environ.get("MEGAMID_BUILD_CUDA", "auto").lower()
    if flag in ("0", "false", "no"):
        return False
    nvcc = shutil.which("nvcc") or (os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc"))
    has_nvcc = bool(nvcc) and os.path.exists(nvcc)
    if flag in ("1", "true", "yes"):
        if not has_nvcc:
            sys.exit("MEGAMID_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
        return True
    has_gpu = os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")
    return has_nvcc and has_gpu


CPU_SOURCES = _rel(glob.glob(os.path.join(HERE, "csrc", "**", "*.cpp"), recursive=True))
CPU_SOURCES = [s for s in CPU_SOURCES if not s.endswith("cuda_bindings.cpp")]
CUDA_SOURCES = _rel(glob.glob(os.path.join(HERE, "csrc", "**", "*.cu"), recursive=True))

ext_modules = [
    Pybind11Extension(
        "megamid._C",
        CPU_SOURCES,
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    )
]


class BuildExt(build_ext):
    """pybind11's build_ext, plus nvcc for .cu sources of the CUDA extension."""

    def build_extension(self, ext):
        cu = [s for s in ext.sources if s.endswith(".cu")]
        if not cu:
            return super().build_extension(ext)
        nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc")
        archs = os.environ.get("MEGAMID_CUDA_ARCHS", "80;90").split(";")
        gencode = []
        for a in archs:
            gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        objects = []
        os.makedirs(self.build_temp, exist_ok=True)
        for src in cu:
            obj = os.path.join(self.build_temp, os.path.basename(src) + ".o")
            cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                   "-Icsrc", *gencode]
            print(" ".join(cmd))
            subprocess.check_call(cmd)
            objects.append(obj)
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        ext.extra_objects = list(ext.extra_objects or []) + objects
        return super().build_extension(ext)


if _cuda_wanted() and CUDA_SOURCES:
    cuda_home = os.path.dirname(os.path.dirname(shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"))
    ext_modules.append(
        Pybind11Extension(
            "megamid._cuda",
            CUDA_SOURCES + _rel(glob.glob(os.path.join(HERE, "csrc", "cuda_bindings.cpp"))),
            include_dirs=["csrc", os.path.join(cuda_home, "include")],
            library_dirs=[os.path.join(cuda_home, "lib64")],
            libraries=["cudart"],
            cxx_std=17,
        )
    )

setup(
    name="megamid",
    version="0.1.0",
    description="Mid-training on Megatron-Core: staged annealing, data-mix shifts, RoPE context extension",
    packages=find_packages(include=["megamid", "megamid.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.16.1,<0.20",
        "numpy",
        "sentencepiece",
        "pybind11>=2.10",
        "psutil",
        "pyyaml",
    ],
    extras_require={
        "gpu": ["transformer-engine[pytorch]"],
        "dev": ["pytest", "transformers", "safetensors", "tokenizers"],
    },
    entry_points={"console_scripts": ["megamid=megamid.cli:main"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
