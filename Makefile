# make demo | make test   (each works on a fresh machine: creates .venv, installs, runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.megamid-installed
CSRC   := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
DEMO_DIR ?= runs/demo

.PHONY: install demo test test-fast nvcc-check gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first where no torch is installed: a bare `torch` requirement would pull a CUDA build.
$(STAMP): $(BIN)/python setup.py pyproject.toml $(CSRC)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel pybind11
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python examples/tiny_cpu/run_demo.py --out $(DEMO_DIR)

# Compiles every .cu under csrc/ to an object with nvcc where nvcc exists, so CUDA build breaks show in CI.
nvcc-check:
	@if command -v nvcc >/dev/null 2>&1; then \
	  set -e; tmp=$$(mktemp -d); for f in $$(find csrc -name '*.cu'); do \
	    echo "nvcc -c $$f"; nvcc -c $$f -o $$tmp/$$(basename $$f).o -std=c++17 -Icsrc -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80; \
	  done; rm -rf $$tmp; \
	else echo "nvcc not found: skipping the CUDA compile check"; fi

# --basetemp: this checkout's own temp folder (pytest prunes the shared /tmp/pytest-of-USER between sessions)
test: install nvcc-check
	$(BIN)/python -m pytest -q -ra --basetemp=.pytest_tmp tests

test-fast: install
	$(BIN)/python -m pytest -q -ra --basetemp=.pytest_tmp -m "not slow" tests

# One GPU (H100/H200), < 8 minutes: CUDA build, gpu tests, benchmarks, ~1B training at 8K/32K, save/resume,
# BF16 vs FP8 with TE; writes runs/gpu_check/gpu_check.json. Runs with the Python that has CUDA torch and
# megatron-core (the container's: make gpu-check PYTHON=python), not the CPU venv `make test` builds.
gpu-check:
	$(PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf build *.egg-info megamid/*.so
