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
# Headers hold shared arithmetic (csrc/rope/rope_math.h): a change to one must rebuild its users.
HEADERS = _rel(glob.glob(os.path.join(HERE, "csrc", "**", "*.h"), recursive=True))

ext_modules = [
    Pybind11Extension(
        "megamid._C",
        CPU_SOURCES,
        depends=HEADERS,
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
            # The relative path in the name: two kernels may share a basename in different folders.
            obj = os.path.join(self.build_temp, src.replace(os.sep, "_") + ".o")
            cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                   "-Icsrc", *gencode]
            print(" ".join(cmd))
            subprocess.check_call(cmd)
            objects.append(obj)
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        ext.extra_objects = list(ext.extra_objects or []) + objects
        return super().build_extension(ext)


def _cuda_home():
    """The toolkit root holding include/cuda_runtime.h (nvcc on PATH may be a wrapper script)."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  nvcc and os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for home in filter(None, candidates):
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    sys.exit("CUDA build wanted but no toolkit with include/cuda_runtime.h found (set CUDA_HOME)")


if _cuda_wanted() and CUDA_SOURCES:
    cuda_home = _cuda_home()
    cuda_libs = [d for d in (os.path.join(cuda_home, "lib64"), os.path.join(cuda_home, "lib")) if os.path.isdir(d)]
    # Static cudart where the toolkit has it: the module then needs only the driver at import, not a
    # libcudart.so of the same version as the build machine's (torch wheels ship their own).
    static = any(os.path.exists(os.path.join(d, "libcudart_static.a")) for d in cuda_libs)
    ext_modules.append(
        Pybind11Extension(
            "megamid._cuda",
            CUDA_SOURCES + _rel(glob.glob(os.path.join(HERE, "csrc", "cuda_bindings.cpp"))),
            depends=HEADERS,
            include_dirs=["csrc", os.path.join(cuda_home, "include")],
            library_dirs=cuda_libs,
            libraries=["cudart_static", "dl", "rt", "pthread"] if static else ["cudart"],
            runtime_library_dirs=[] if static else cuda_libs,
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
        # matplotlib (plan --plot, eval figures) and tensorboard (training scalars) are optional at run time
        "dev": ["pytest", "transformers", "safetensors", "tokenizers", "matplotlib", "tensorboard"],
        "plot": ["matplotlib"],
    },
    entry_points={"console_scripts": ["megamid=megamid.cli:main"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
