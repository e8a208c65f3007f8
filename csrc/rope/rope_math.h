// The per-element arithmetic of fused RoPE, shared by the CUDA kernel (rope.cu) and the CPU loop
// (rope_cpu.cpp): token -> (s, b) index, position (position_ids, THD documents, context-parallel
// dual-chunk offsets), angle and cos/sin in fp32, the rotation and its transpose, head offsets.
// The CPU tests run this code against the pure-PyTorch reference; only the launch is GPU-only.
// See rope_args.h for the math and the position rules.
#pragma once

#include <math.h>
#include <stdint.h>

#include "rope/rope_args.h"

#ifdef __CUDACC__
#define MEGAMID_HD __host__ __device__ __forceinline__
#else
#define MEGAMID_HD inline
#endif

namespace megamid::rope {

// Where a token's position comes from (one per launch).
struct Positions {
  int64_t seq_len, batch;  // s and b (THD: t and 1)
  const int64_t* pos;      // position_ids or NULL
  int64_t pos_s, pos_b;
  const int32_t* cu;  // global document boundaries or NULL
  int64_t num_docs;
  int cp_size, cp_rank;
};

inline Positions positions_of(const megamid_rope_args_t& a) {
  return Positions{a.seq_len, a.batch, a.position_ids, a.pos_stride_s, a.pos_stride_b,
                   a.cu_seqlens, a.num_docs, a.cp_size, a.cp_rank};
}

// Token n of a launch is (s_idx, b_idx) = (n / b, n % b): tokens are s-major as sbhd is laid out.
MEGAMID_HD void token_index(int64_t tok, int64_t batch, int64_t* si, int64_t* bi) {
  *si = tok / batch;
  *bi = tok - *si * batch;
}

// Megatron's dual-chunk context-parallel layout: local index j of a local length len = 2 * chunk.
MEGAMID_HD int64_t cp_position(int64_t j, int64_t len, int cp_size, int cp_rank) {
  if (cp_size == 1) return j;
  const int64_t chunk = len / 2;
  return j < chunk ? cp_rank * chunk + j : (2 * cp_size - 1 - cp_rank) * chunk + (j - chunk);
}

// The last document whose local start is <= si (empty documents resolve to the later one).
MEGAMID_HD int64_t document_of(const int32_t* cu, int64_t num_docs, int cp_size, int64_t si) {
  int64_t lo = 0, hi = num_docs - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cu[mid] / cp_size <= si) lo = mid; else hi = mid - 1;
  }
  return lo;
}

MEGAMID_HD int64_t position_of(const Positions& p, int64_t tok) {
  int64_t si, bi;
  token_index(tok, p.batch, &si, &bi);
  if (p.pos) return p.pos[si * p.pos_s + bi * p.pos_b];
  if (!p.cu) return cp_position(si, p.seq_len, p.cp_size, p.cp_rank);
  const int64_t doc = document_of(p.cu, p.num_docs, p.cp_size, si);
  const int64_t start = p.cu[doc] / p.cp_size;
  const int64_t len = (p.cu[doc + 1] - p.cu[doc]) / p.cp_size;
  return cp_position(si - start, len, p.cp_size, p.cp_rank);
}

// float(pos) * inv_freq rounded to fp32, as HF and Megatron form the angle; exact for pos < 2^24.
MEGAMID_HD float rope_angle(int64_t pos, float inv_freq) {
  const float fpos = (float)pos;
#ifdef __CUDA_ARCH__
  // The rounded product, never contracted into sincosf's reduction (an FMA there would use the
  // unrounded angle and part from the reference at large positions).
  return __fmul_rn(fpos, inv_freq);
#else
  return fpos * inv_freq;
#endif
}

// cos and sin of the angle times the attention factor; sign = -1 gives the transposed rotation.
// Accurate sincosf (2 ulp on the GPU, libm's on the host), never the fast-math intrinsics: angles
// reach ~1e5 rad at 128K.
MEGAMID_HD void rope_cos_sin(int64_t pos, float inv_freq, float factor, float sign, float* c, float* s) {
  const float a = rope_angle(pos, inv_freq);
  float sn, cs;
#ifdef __CUDA_ARCH__
  sincosf(a, &sn, &cs);
#else
  sn = sinf(a);
  cs = cosf(a);
#endif
  *c = cs * factor;
  *s = sn * factor * sign;
}

// y = R x for the pair (x1, x2); with s negated (rope_cos_sin's sign) it is R^T, the gradient.
MEGAMID_HD void rotate_pair(float x1, float x2, float c, float s, float* y1, float* y2) {
  *y1 = x1 * c - x2 * s;
  *y2 = x2 * c + x1 * s;
}

// The elements of pair f of a head: (f, f + rotary_dim/2) half-split, (2f, 2f + 1) interleaved.
MEGAMID_HD void pair_elements(int f, int half_rd, bool interleaved, int* e1, int* e2) {
  *e1 = interleaved ? 2 * f : f;
  *e2 = interleaved ? 2 * f + 1 : f + half_rd;
}

// Offset (elements) of head hh of a set at token (si, bi): hh = g * heads_per_group + j.
MEGAMID_HD int64_t head_offset(int64_t hh, int64_t heads_per_group, int64_t si, int64_t bi, int64_t st_s,
                               int64_t st_b, int64_t st_g, int64_t st_h) {
  const int64_t g = hh / heads_per_group, j = hh - g * heads_per_group;
  return si * st_s + bi * st_b + g * st_g + j * st_h;
}

}  // namespace megamid::rope
