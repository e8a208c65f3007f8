// Fused RoPE for Q and K (and the V copy of Megatron's fused QKV projection) on CUDA, behind a plain C
// API: the argument struct of rope_args.h and a cudaStream_t. No torch types, so nvcc compiles it on a
// machine without a GPU and the binding needs no torch headers. The CPU twin is rope_cpu.h; both run
// the per-element arithmetic of rope_math.h.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "rope/rope_args.h"

#ifdef __cplusplus
extern "C" {
#endif

// Returns MEGAMID_ROPE_OK or MEGAMID_ROPE_BAD_ARGUMENT without touching the device.
int megamid_rope_check(const megamid_rope_args_t* args);

// Checks the arguments and launches one kernel on `stream` for all head sets.
int megamid_rope(const megamid_rope_args_t* args, cudaStream_t stream);

// Megatron's fused QKV projection output qkv [s, b, groups, (q_per_group + 2) * d] (THD: s = t, b = 1):
// per group, q_per_group query heads, then one key head, then one value head. Forward (direction 0)
// rotates Q and K into q [s, b, groups * q_per_group, d] and k [s, b, groups, d] and copies V into
// v [s, b, groups, d], in one pass. Backward (direction 1) reads the gradients q, k, v and writes the
// gradient of qkv (transposed rotation for Q and K, V copied). Strides are {s, b, head} in elements
// (qkv: {s, b, group}); the last dim is contiguous. `args` gives everything else; its rotate / copy
// sets and `backward` are ignored.
int megamid_rope_fused_qkv(const megamid_rope_args_t* args, void* qkv, const int64_t qkv_stride[3],
                           int64_t groups, int64_t q_per_group, void* q, const int64_t q_stride[3],
                           void* k, const int64_t k_stride[3], void* v, const int64_t v_stride[3],
                           int backward, cudaStream_t stream);

// A static description of a status (and, for MEGAMID_ROPE_BAD_ARGUMENT, of the last failed check on
// this thread).
const char* megamid_rope_error_string(int status);

#ifdef __cplusplus
}
#endif
