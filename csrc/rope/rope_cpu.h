// Fused RoPE on the CPU: the CUDA kernel's C API (rope.h) as a plain loop over tokens, running the same
// per-element arithmetic (rope_math.h). It is what CPU tests check against the PyTorch reference, and
// what megamid's ops run on CPU tensors. No CUDA or torch headers.
#pragma once

#include <stdint.h>

#include "rope/rope_args.h"

#ifdef __cplusplus
extern "C" {
#endif

// As megamid_rope (rope.h), on host memory; returns MEGAMID_ROPE_OK or MEGAMID_ROPE_BAD_ARGUMENT.
int megamid_rope_cpu(const megamid_rope_args_t* args);

// As megamid_rope_fused_qkv (rope.h), on host memory.
int megamid_rope_fused_qkv_cpu(const megamid_rope_args_t* args, void* qkv, const int64_t qkv_stride[3],
                               int64_t groups, int64_t q_per_group, void* q, const int64_t q_stride[3],
                               void* k, const int64_t k_stride[3], void* v, const int64_t v_stride[3],
                               int backward);

// A static description of a status (for MEGAMID_ROPE_BAD_ARGUMENT, of the last failed check on this thread).
const char* megamid_rope_cpu_error_string(int status);

#ifdef __cplusplus
}
#endif
