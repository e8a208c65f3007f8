"""Python faces of the kernels in csrc/: each op has a pure-PyTorch/NumPy reference used as the test
oracle and as the fallback where the extension is not built. MEGAMID_KERNELS=auto|cuda|reference."""
