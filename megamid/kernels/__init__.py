"""Python faces of the kernels in csrc/: each op has a pure-PyTorch/NumPy reference used as the test
oracle and as the fallback where the extension is not built. MEGAMID_KERNELS=auto|cuda|cpu|reference.

rope: fused RoPE for Q and K (and Megatron's fused QKV) with any inv_freq and attention factor; CPU
tensors run the kernel's arithmetic (csrc/rope/rope_math.h) as a loop in megamid._C.
attention_merge: log-sum-exp merge of partial attention outputs (context-parallel ring attention).
doc_positions: positions restarting at EOD and cu_seqlens for packed rows (CPU helper).
"""
