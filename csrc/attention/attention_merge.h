// Merge of two partial attention results over disjoint sets of keys (the step that combines the
// blocks of ring attention, and of any split-KV attention), behind a plain C API for the CPU.
//
// Each row (one query of one head) has a partial output o_i[dim] (already normalised by its own
// softmax denominator) and the log-sum-exp lse_i (natural log) of its scaled scores; lse_i = -inf
// means the row saw no key in that block (o_i is then ignored). The merged row is
//   lse = log(exp(lse1) + exp(lse2)),   out = exp(lse1 - lse) * o1 + exp(lse2 - lse) * o2
// computed as m = max(lse1, lse2), lse = m + log(exp(lse1 - m) + exp(lse2 - m)); a row with both
// -inf gets out = 0, lse = -inf. `out` may alias out1 or out2 and `lse` may alias lse1 or lse2
// (every element is read before it is written). The CUDA twin is attention_merge_cuda.h.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  MEGAMID_MERGE_OK = 0,
  MEGAMID_MERGE_BAD_ARGUMENT = 1,  // a size is negative or a pointer is NULL with rows * dim > 0
  MEGAMID_MERGE_CUDA_ERROR = 2,    // (CUDA only) the launch failed
} megamid_merge_status_t;

// rows x dim outputs (row-major, contiguous) and rows log-sum-exps, float32.
int megamid_attention_merge_f32(const float* out1, const float* lse1, const float* out2, const float* lse2,
                                int64_t rows, int64_t dim, float* out, float* lse);

// The same in float64 (the precision tests compare against).
int megamid_attention_merge_f64(const double* out1, const double* lse1, const double* out2,
                                const double* lse2, int64_t rows, int64_t dim, double* out, double* lse);

#ifdef __cplusplus
}
#endif
