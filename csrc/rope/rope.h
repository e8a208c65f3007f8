// Fused RoPE for Q and K (and the V copy of Megatron's fused QKV projection) behind a plain C API:
// raw pointers, sizes, strides in elements, a dtype enum and a cudaStream_t. No torch types, so nvcc
// compiles it on a machine without a GPU and the binding needs no torch headers.
//
// Every tensor is described as a 5-D view [s, b, groups, heads_per_group, d] with the last dim
// contiguous. A plain Q [s, b, h, d] is groups = h, heads_per_group = 1; the Q part of a fused QKV row
// [s, b, g, (h/g + 2) * d] is groups = g, heads_per_group = h/g with a group stride of (h/g + 2) * d.
// THD (packed) tensors are s = t, b = 1.
//
// Forward, for each rotated pair (x1, x2) with angle a = float(pos) * inv_freq[f] (fp32, accurate
// sincosf, no fast-math intrinsics) and c = cos(a) * attention_factor, s = sin(a) * attention_factor:
//   y1 = x1 * c - x2 * s,   y2 = x2 * c + x1 * s
// Pairs are (x[f], x[f + rotary_dim/2]) when half-split (rotate_half: NeoX, Llama) or (x[2f], x[2f+1])
// when interleaved (GPT-J). Elements past rotary_dim pass through. Backward is the transposed
// rotation (s -> -s), still times the factor.
//
// Positions, per token (s_idx, b_idx) or packed index t, in order of precedence:
//   position_ids given:   position_ids[s_idx * pos_stride_s + b_idx * pos_stride_b]
//   cu_seqlens given:     index within its document; cu_seqlens are the global (unsharded) boundaries,
//                         so the local document i spans [cu[i] / cp_size, cu[i+1] / cp_size)
//   otherwise:            s_idx
// and, without position_ids and with cp_size > 1, the local index j of a sequence (or document) of local
// length L = 2 * chunk maps through Megatron's dual-chunk layout (rank r holds chunks r and 2cp-1-r):
//   j < chunk: r * chunk + j,   else: (2 * cp_size - 1 - r) * chunk + (j - chunk).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  MEGAMID_DTYPE_FLOAT32 = 0,
  MEGAMID_DTYPE_FLOAT16 = 1,
  MEGAMID_DTYPE_BFLOAT16 = 2,
} megamid_dtype_t;

typedef enum {
  MEGAMID_ROPE_OK = 0,
  MEGAMID_ROPE_BAD_ARGUMENT = 1,  // a size or pointer is invalid (see megamid_rope_check)
  MEGAMID_ROPE_CUDA_ERROR = 2,    // a CUDA call or the launch failed: megamid_rope_error_string says why
} megamid_rope_status_t;

// One set of heads: read from `in`, written to `out` (out == in is in place).
typedef struct {
  const void* in;
  void* out;
  int64_t groups;
  int64_t heads_per_group;
  int64_t in_stride[4];   // s, b, group, head (elements)
  int64_t out_stride[4];  // s, b, group, head (elements)
} megamid_rope_heads_t;

typedef struct {
  megamid_dtype_t dtype;
  int64_t seq_len;     // s (sbhd) or t (thd)
  int64_t batch;       // b (sbhd) or 1 (thd)
  int64_t head_dim;    // d
  int64_t rotary_dim;  // even, <= d; the first rotary_dim elements of each head rotate
  int interleaved;     // 0: half-split (rotate_half), 1: interleaved pairs
  int backward;        // 1: apply the transposed rotation (gradient)
  const float* inv_freq;  // rotary_dim / 2 floats, any scaling already applied
  float attention_factor;
  const int64_t* position_ids;  // optional (NULL)
  int64_t pos_stride_s, pos_stride_b;
  const int32_t* cu_seqlens;  // optional (NULL): num_docs + 1 global boundaries
  int64_t num_docs;
  int cp_size, cp_rank;
  megamid_rope_heads_t rotate[2];  // Q and K; a set with groups == 0 is skipped
  megamid_rope_heads_t copy;       // copied unchanged (V of the fused QKV path); groups == 0: none
} megamid_rope_args_t;

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
