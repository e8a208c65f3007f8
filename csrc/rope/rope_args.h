// Arguments of the fused RoPE kernels (CUDA: rope.h, CPU: rope_cpu.h): raw pointers, sizes, strides
// in elements and a dtype enum. Plain C types, no CUDA or torch headers, so both extensions share it.
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
// rotation (s -> -s), still times the factor. The per-element arithmetic is in rope_math.h.
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

#ifdef __cplusplus
}

// ---- host helpers shared by rope.cu and rope_cpu.cpp (C++ only) -----------------------------------
namespace megamid::rope {

constexpr int64_t kMaxRotaryDim = 8192;  // the CUDA kernel keeps rotary_dim floats per token in shared memory

inline const char* check_set(const megamid_rope_heads_t& h, const char* name) {
  if (h.groups < 0) return name;
  if (h.groups == 0) return nullptr;
  if (h.heads_per_group < 1 || !h.in || !h.out) return name;
  return nullptr;
}

// nullptr when the arguments are valid, else what is wrong.
inline const char* check_args(const megamid_rope_args_t* a) {
  if (!a) return "args is NULL";
  if (a->dtype < MEGAMID_DTYPE_FLOAT32 || a->dtype > MEGAMID_DTYPE_BFLOAT16)
    return "dtype must be float32, float16 or bfloat16";
  if (a->seq_len < 0 || a->batch < 1) return "seq_len must be >= 0 and batch >= 1";
  if (a->head_dim < 1) return "head_dim must be >= 1";
  if (a->rotary_dim < 2 || a->rotary_dim % 2 || a->rotary_dim > a->head_dim)
    return "rotary_dim must be even, >= 2 and <= head_dim";
  if (a->rotary_dim > kMaxRotaryDim) return "rotary_dim must be <= 8192";
  if (!a->inv_freq) return "inv_freq is NULL";
  if (a->cp_size < 1 || a->cp_rank < 0 || a->cp_rank >= a->cp_size)
    return "cp_size must be >= 1 and 0 <= cp_rank < cp_size";
  if (a->cu_seqlens && a->num_docs < 1) return "cu_seqlens needs num_docs >= 1";
  if (a->cp_size > 1 && !a->position_ids && !a->cu_seqlens && a->seq_len % 2)
    return "with cp_size > 1 the local seq_len must be even (two chunks)";
  if (a->position_ids && a->cu_seqlens) return "pass position_ids or cu_seqlens, not both";
  if (a->seq_len * a->batch > ((int64_t)1 << 40)) return "too many tokens";
  const char* why;
  if ((why = check_set(a->rotate[0], "rotate[0] (Q): groups >= 0, heads_per_group >= 1, in/out set"))) return why;
  if ((why = check_set(a->rotate[1], "rotate[1] (K): groups >= 0, heads_per_group >= 1, in/out set"))) return why;
  return check_set(a->copy, "copy (V): groups >= 0, heads_per_group >= 1, in/out set");
}

// The arguments both bindings fill from Python (pointers as integers; 0 = absent); head sets empty.
inline megamid_rope_args_t make_args(int dtype, int64_t seq_len, int64_t batch, int64_t head_dim,
                                     int64_t rotary_dim, bool interleaved, bool backward, uintptr_t inv_freq,
                                     double attention_factor, uintptr_t position_ids, int64_t pos_stride_s,
                                     int64_t pos_stride_b, uintptr_t cu_seqlens, int64_t num_docs, int cp_size,
                                     int cp_rank) {
  megamid_rope_args_t a{};
  a.dtype = static_cast<megamid_dtype_t>(dtype);
  a.seq_len = seq_len;
  a.batch = batch;
  a.head_dim = head_dim;
  a.rotary_dim = rotary_dim;
  a.interleaved = interleaved ? 1 : 0;
  a.backward = backward ? 1 : 0;
  a.inv_freq = reinterpret_cast<const float*>(inv_freq);
  a.attention_factor = static_cast<float>(attention_factor);
  a.position_ids = reinterpret_cast<const int64_t*>(position_ids);
  a.pos_stride_s = pos_stride_s;
  a.pos_stride_b = pos_stride_b;
  a.cu_seqlens = reinterpret_cast<const int32_t*>(cu_seqlens);
  a.num_docs = num_docs;
  a.cp_size = cp_size;
  a.cp_rank = cp_rank;
  return a;
}

// A plain [s, b, heads, d] tensor (strides {s, b, head}) as `heads` groups of one head each.
inline megamid_rope_heads_t plain_heads(const void* in, void* out, int64_t heads, const int64_t in_st[3],
                                        const int64_t out_st[3]) {
  megamid_rope_heads_t h{};
  h.in = in;
  h.out = out;
  h.groups = heads;
  h.heads_per_group = 1;
  for (int i = 0; i < 3; ++i) {
    h.in_stride[i] = in_st[i];
    h.out_stride[i] = out_st[i];
  }
  h.in_stride[3] = in_st[2];
  h.out_stride[3] = out_st[2];
  return h;
}

// The head sets of the fused QKV entry (see megamid_rope_fused_qkv in rope.h): Q and K rotated, V copied,
// between the packed qkv [s, b, groups, (q_per_group + 2) * d] and the split q, k, v; backward swaps
// the direction. Returns nullptr or what is wrong.
inline const char* fused_qkv_args(megamid_rope_args_t* a, void* qkv, const int64_t qkv_stride[3],
                                  int64_t groups, int64_t q_per_group, void* q, const int64_t q_stride[3],
                                  void* k, const int64_t k_stride[3], void* v, const int64_t v_stride[3],
                                  int backward) {
  if (!qkv || !q || !k || !v || !qkv_stride || !q_stride || !k_stride || !v_stride)
    return "fused qkv: a pointer is NULL";
  if (groups < 1 || q_per_group < 1) return "fused qkv: groups and q_per_group must be >= 1";
  a->backward = backward;
  const int64_t d = a->head_dim;
  const int64_t elem = a->dtype == MEGAMID_DTYPE_FLOAT32 ? 4 : 2;
  megamid_rope_heads_t sets[3];
  const int64_t first[3] = {0, q_per_group, q_per_group + 1}, per_group[3] = {q_per_group, 1, 1};
  void* split[3] = {q, k, v};
  const int64_t* split_stride[3] = {q_stride, k_stride, v_stride};
  for (int i = 0; i < 3; ++i) {
    megamid_rope_heads_t h{};
    h.groups = groups;
    h.heads_per_group = per_group[i];
    // The packed side: one group row holds q_per_group + 2 heads of d elements.
    h.in = static_cast<char*>(qkv) + first[i] * d * elem;
    h.in_stride[0] = qkv_stride[0];
    h.in_stride[1] = qkv_stride[1];
    h.in_stride[2] = qkv_stride[2];
    h.in_stride[3] = d;
    // The split side: head g * heads_per_group + j of a [s, b, heads, d] tensor.
    h.out = split[i];
    h.out_stride[0] = split_stride[i][0];
    h.out_stride[1] = split_stride[i][1];
    h.out_stride[2] = split_stride[i][2] * per_group[i];
    h.out_stride[3] = split_stride[i][2];
    if (backward) {  // read the split gradients, write the packed one
      void* packed = const_cast<void*>(h.in);
      h.in = h.out;
      h.out = packed;
      for (int j = 0; j < 4; ++j) {
        const int64_t t = h.in_stride[j];
        h.in_stride[j] = h.out_stride[j];
        h.out_stride[j] = t;
      }
    }
    sets[i] = h;
  }
  a->rotate[0] = sets[0];
  a->rotate[1] = sets[1];
  a->copy = sets[2];
  return nullptr;
}

}  // namespace megamid::rope
#endif
