// CUDA twin of attention_merge.h (same formula and aliasing rules): partial outputs in float32,
// float16 or bfloat16 (dtype codes as megamid._cuda.DTYPE_*: 0 fp32, 1 fp16, 2 bf16; the merged output
// has the same dtype), log-sum-exps always float32, math in float32. Raw device pointers, contiguous
// [rows, dim] and [rows]; launched on `stream`. No torch types: nvcc compiles it on any machine.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "attention/attention_merge.h"

#ifdef __cplusplus
extern "C" {
#endif

int megamid_attention_merge_cuda(int dtype, const void* out1, const float* lse1, const void* out2,
                                 const float* lse2, int64_t rows, int64_t dim, void* out, float* lse,
                                 cudaStream_t stream);

// A static description of a status (for MEGAMID_MERGE_CUDA_ERROR, the last CUDA error on this thread).
const char* megamid_attention_merge_error_string(int status);

#ifdef __cplusplus
}
#endif
