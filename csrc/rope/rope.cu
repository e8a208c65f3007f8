// Fused RoPE kernel: one launch rotates every Q and K head (and copies V for the fused QKV path).
// See rope.h for the math, the tensor views and the position rules.
//
// Layout of the work: a block takes `tokens_per_iter` tokens at a time (grid-stride over tokens).
//  1. one warp per token finds its position (lane 0; a binary search over cu_seqlens for THD) and the
//     warp computes cos/sin for all rotary_dim/2 frequencies into shared memory, so each
//     (token, frequency) costs one sincosf whatever the number of heads;
//  2. all threads stride over (token, head, item), where an item is one 16-byte vector (or, for
//     half-split pairs, the two vectors x[i..] and x[i + rotary_dim/2 ..] that pair up).
#include "rope/rope.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdio>

namespace {

constexpr int kThreads = 256;
constexpr int kMaxTokensPerIter = 16;
constexpr int kMaxSmemBytes = 32 * 1024;  // under the 48 KB that needs no opt-in

thread_local char g_error[256] = "";

struct Heads {
  const char* in;
  char* out;
  int64_t heads_per_group;
  int64_t in_s, in_b, in_g, in_h;
  int64_t out_s, out_b, out_g, out_h;
};

struct Params {
  int64_t seq_len, batch, tokens;
  int half_rd;
  float factor, sign;
  const float* inv_freq;
  const int64_t* pos;
  int64_t pos_s, pos_b;
  const int32_t* cu;
  int64_t num_docs;
  int cp_size, cp_rank;
  Heads set[3];  // Q, K, copy
  int heads[3];
  int rot_items, pass_items, copy_items;  // per head
  int work_rot;                           // per token: (heads[0] + heads[1]) * (rot + pass)
  int work;                               // per token, all sets
  int tokens_per_iter;
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T x[N];
};

// ALIGNED: one N*sizeof(T)-byte access (16 bytes on the fast path); otherwise element by element.
template <typename T, int N, bool ALIGNED>
__device__ __forceinline__ void load(const T* p, float (&v)[N]) {
  if constexpr (ALIGNED) {
    const Vec<T, N> a = *reinterpret_cast<const Vec<T, N>*>(p);
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = to_float(a.x[k]);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = to_float(p[k]);
  }
}

template <typename T, int N, bool ALIGNED>
__device__ __forceinline__ void store(T* p, const float (&v)[N]) {
  if constexpr (ALIGNED) {
    Vec<T, N> a;
#pragma unroll
    for (int k = 0; k < N; ++k) a.x[k] = from_float<T>(v[k]);
    *reinterpret_cast<Vec<T, N>*>(p) = a;
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) p[k] = from_float<T>(v[k]);
  }
}

template <typename T, int N, bool ALIGNED>
__device__ __forceinline__ void copy(const T* in, T* out) {
  if constexpr (ALIGNED) {
    *reinterpret_cast<Vec<T, N>*>(out) = *reinterpret_cast<const Vec<T, N>*>(in);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = in[k];
  }
}

// Megatron's dual-chunk context-parallel layout: local index j of a local length len = 2 * chunk.
__device__ __forceinline__ int64_t cp_position(int64_t j, int64_t len, int cp_size, int cp_rank) {
  if (cp_size == 1) return j;
  const int64_t chunk = len / 2;
  return j < chunk ? cp_rank * chunk + j : (2 * cp_size - 1 - cp_rank) * chunk + (j - chunk);
}

__device__ int64_t position_of(const Params& p, int64_t tok) {
  const int64_t si = tok / p.batch, bi = tok - si * p.batch;
  if (p.pos) return p.pos[si * p.pos_s + bi * p.pos_b];
  if (!p.cu) return cp_position(si, p.seq_len, p.cp_size, p.cp_rank);
  // The last document whose local start is <= si (empty documents resolve to the later one).
  int64_t lo = 0, hi = p.num_docs - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (p.cu[mid] / p.cp_size <= si) lo = mid; else hi = mid - 1;
  }
  const int64_t start = p.cu[lo] / p.cp_size;
  const int64_t len = (p.cu[lo + 1] - p.cu[lo]) / p.cp_size;
  return cp_position(si - start, len, p.cp_size, p.cp_rank);
}

__device__ __forceinline__ int64_t in_offset(const Heads& h, int64_t si, int64_t bi, int64_t hh) {
  const int64_t g = hh / h.heads_per_group, j = hh - g * h.heads_per_group;
  return si * h.in_s + bi * h.in_b + g * h.in_g + j * h.in_h;
}
__device__ __forceinline__ int64_t out_offset(const Heads& h, int64_t si, int64_t bi, int64_t hh) {
  const int64_t g = hh / h.heads_per_group, j = hh - g * h.heads_per_group;
  return si * h.out_s + bi * h.out_b + g * h.out_g + j * h.out_h;
}

// V: elements per vector; HALF: pairs (x[f], x[f + rd/2]) else (x[2f], x[2f+1]).
template <typename T, int V, bool ALIGNED, bool HALF>
__global__ void __launch_bounds__(kThreads) rope_kernel(const __grid_constant__ Params p) {
  extern __shared__ float smem[];
  float* s_cos = smem;
  float* s_sin = smem + p.tokens_per_iter * p.half_rd;
  constexpr int U = ALIGNED ? V : 1;  // elements per copy unit
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  const int rd = 2 * p.half_rd;

  for (int64_t tok0 = (int64_t)blockIdx.x * p.tokens_per_iter; tok0 < p.tokens;
       tok0 += (int64_t)gridDim.x * p.tokens_per_iter) {
    const int ntok = (int)min((int64_t)p.tokens_per_iter, p.tokens - tok0);
    for (int tl = warp; tl < ntok; tl += nwarps) {
      long long pos = 0;
      if (lane == 0) pos = position_of(p, tok0 + tl);
      pos = __shfl_sync(0xffffffffu, pos, 0);
      // float(pos) * inv_freq rounded to fp32, as HF and Megatron form the angle; exact for pos < 2^24.
      const float fpos = (float)pos;
      for (int f = lane; f < p.half_rd; f += 32) {
        float s, c;
        // __fmul_rn: the rounded product, never contracted into sincosf's reduction (an FMA there
        // would use the unrounded angle and part from the reference at large positions).
        sincosf(__fmul_rn(fpos, p.inv_freq[f]), &s, &c);
        s_cos[tl * p.half_rd + f] = c * p.factor;
        s_sin[tl * p.half_rd + f] = s * p.factor * p.sign;
      }
    }
    __syncthreads();

    const int per_head = p.rot_items + p.pass_items;
    const int total = ntok * p.work;
    for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
      const int tl = idx / p.work;
      int rem = idx - tl * p.work;
      const int64_t tok = tok0 + tl;
      const int64_t si = tok / p.batch, bi = tok - si * p.batch;
      if (rem < p.work_rot) {
        int hh = rem / per_head;
        const int item = rem - hh * per_head;
        const int set = hh < p.heads[0] ? 0 : 1;
        if (set) hh -= p.heads[0];
        const Heads& h = p.set[set];
        const T* in = reinterpret_cast<const T*>(h.in) + in_offset(h, si, bi, hh);
        T* out = reinterpret_cast<T*>(h.out) + out_offset(h, si, bi, hh);
        if (item < p.rot_items) {
          const float* cs = s_cos + tl * p.half_rd;
          const float* sn = s_sin + tl * p.half_rd;
          if constexpr (HALF) {
            const int e = item * V;
            float a[V], b[V];
            load<T, V, ALIGNED>(in + e, a);
            load<T, V, ALIGNED>(in + e + p.half_rd, b);
#pragma unroll
            for (int k = 0; k < V; ++k) {
              const float c = cs[e + k], s = sn[e + k], x1 = a[k], x2 = b[k];
              a[k] = x1 * c - x2 * s;
              b[k] = x2 * c + x1 * s;
            }
            store<T, V, ALIGNED>(out + e, a);
            store<T, V, ALIGNED>(out + e + p.half_rd, b);
          } else {
            const int e = item * V;
            float x[V];
            load<T, V, ALIGNED>(in + e, x);
#pragma unroll
            for (int k = 0; k < V / 2; ++k) {
              const float c = cs[e / 2 + k], s = sn[e / 2 + k], x1 = x[2 * k], x2 = x[2 * k + 1];
              x[2 * k] = x1 * c - x2 * s;
              x[2 * k + 1] = x2 * c + x1 * s;
            }
            store<T, V, ALIGNED>(out + e, x);
          }
        } else {
          const int e = rd + (item - p.rot_items) * U;
          copy<T, U, ALIGNED>(in + e, out + e);
        }
      } else {
        rem -= p.work_rot;
        const int hh = rem / p.copy_items, unit = rem - hh * p.copy_items;
        const Heads& h = p.set[2];
        copy<T, U, ALIGNED>(reinterpret_cast<const T*>(h.in) + in_offset(h, si, bi, hh) + unit * U,
                            reinterpret_cast<T*>(h.out) + out_offset(h, si, bi, hh) + unit * U);
      }
    }
    __syncthreads();  // the next tokens overwrite s_cos / s_sin
  }
}

int fail(const char* msg) {
  snprintf(g_error, sizeof(g_error), "%s", msg);
  return MEGAMID_ROPE_BAD_ARGUMENT;
}

// Keeps the CUDA error text: cudaGetLastError() clears it, so the caller could not ask again.
int cuda_fail(cudaError_t err, const char* what) {
  snprintf(g_error, sizeof(g_error), "%s: %s", what, cudaGetErrorString(err));
  return MEGAMID_ROPE_CUDA_ERROR;
}

bool set_used(const megamid_rope_heads_t& h) { return h.groups > 0; }

int check_set(const megamid_rope_heads_t& h, const char* name) {
  if (h.groups < 0) return fail(name);
  if (h.groups == 0) return MEGAMID_ROPE_OK;
  if (h.heads_per_group < 1 || !h.in || !h.out) return fail(name);
  return MEGAMID_ROPE_OK;
}

Heads make_heads(const megamid_rope_heads_t& h, const megamid_rope_args_t& a) {
  // A stride of a size-1 dim is never used; zeroing it keeps it out of the alignment test.
  auto s = [](int64_t size, int64_t stride) { return size == 1 ? 0 : stride; };
  Heads r{};
  r.in = static_cast<const char*>(h.in);
  r.out = static_cast<char*>(h.out);
  r.heads_per_group = h.heads_per_group > 0 ? h.heads_per_group : 1;
  r.in_s = s(a.seq_len, h.in_stride[0]);
  r.in_b = s(a.batch, h.in_stride[1]);
  r.in_g = s(h.groups, h.in_stride[2]);
  r.in_h = s(h.heads_per_group, h.in_stride[3]);
  r.out_s = s(a.seq_len, h.out_stride[0]);
  r.out_b = s(a.batch, h.out_stride[1]);
  r.out_g = s(h.groups, h.out_stride[2]);
  r.out_h = s(h.heads_per_group, h.out_stride[3]);
  return r;
}

bool vector_ok(const Heads& h, int v, int elem) {
  const uintptr_t bytes = (uintptr_t)v * elem;
  return (uintptr_t)h.in % bytes == 0 && (uintptr_t)h.out % bytes == 0 && h.in_s % v == 0 &&
         h.in_b % v == 0 && h.in_g % v == 0 && h.in_h % v == 0 && h.out_s % v == 0 &&
         h.out_b % v == 0 && h.out_g % v == 0 && h.out_h % v == 0;
}

template <typename T, int V, bool ALIGNED, bool HALF>
int launch_one(Params& p, const megamid_rope_args_t& a, cudaStream_t stream) {
  constexpr int U = ALIGNED ? V : 1;
  const int d = (int)a.head_dim, rd = (int)a.rotary_dim;
  const bool in_place = (!p.heads[0] || p.set[0].in == p.set[0].out) &&
                        (!p.heads[1] || p.set[1].in == p.set[1].out);
  p.rot_items = HALF ? rd / (2 * V) : rd / V;
  p.pass_items = in_place ? 0 : (d - rd) / U;
  p.copy_items = d / U;
  p.work_rot = (p.heads[0] + p.heads[1]) * (p.rot_items + p.pass_items);
  p.work = p.work_rot + p.heads[2] * p.copy_items;
  if (p.work == 0 || p.tokens == 0) return MEGAMID_ROPE_OK;
  // Enough (token, head, item) work per iteration to keep every thread busy between the two syncs.
  int tpi = (4 * kThreads + p.work - 1) / p.work;
  tpi = tpi < 1 ? 1 : (tpi > kMaxTokensPerIter ? kMaxTokensPerIter : tpi);
  const int tpi_smem = kMaxSmemBytes / (rd * (int)sizeof(float));
  if (tpi > tpi_smem) tpi = tpi_smem;
  p.tokens_per_iter = tpi;
  const size_t smem = (size_t)tpi * rd * sizeof(float);

  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err;
  if ((err = cudaGetDevice(&device)) != cudaSuccess) return cuda_fail(err, "cudaGetDevice");
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess)
    return cuda_fail(err, "cudaDeviceGetAttribute");
  if ((err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, rope_kernel<T, V, ALIGNED, HALF>,
                                                           kThreads, smem)) != cudaSuccess)
    return cuda_fail(err, "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  // One resident wave (132 SMs x blocks per SM on an H100), grid-striding over the tokens.
  const int64_t wanted = (p.tokens + tpi - 1) / tpi;
  const int64_t wave = (int64_t)sms * (per_sm > 0 ? per_sm : 1);
  const int blocks = (int)(wanted < wave ? wanted : wave);
  rope_kernel<T, V, ALIGNED, HALF><<<blocks, kThreads, smem, stream>>>(p);
  if ((err = cudaGetLastError()) != cudaSuccess) return cuda_fail(err, "rope kernel launch");
  return MEGAMID_ROPE_OK;
}

template <typename T>
int launch(Params& p, const megamid_rope_args_t& a, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const int d = (int)a.head_dim, rd = (int)a.rotary_dim;
  bool aligned = d % V == 0 && (a.interleaved ? rd % V == 0 : (rd / 2) % V == 0);
  for (int i = 0; i < 3; ++i)
    if (p.heads[i]) aligned = aligned && vector_ok(p.set[i], V, sizeof(T));
  if (a.interleaved) {
    return aligned ? launch_one<T, V, true, false>(p, a, stream)
                   : launch_one<T, 2, false, false>(p, a, stream);
  }
  return aligned ? launch_one<T, V, true, true>(p, a, stream)
                 : launch_one<T, 1, false, true>(p, a, stream);
}

}  // namespace

extern "C" int megamid_rope_check(const megamid_rope_args_t* a) {
  if (!a) return fail("args is NULL");
  if (a->dtype < MEGAMID_DTYPE_FLOAT32 || a->dtype > MEGAMID_DTYPE_BFLOAT16)
    return fail("dtype must be float32, float16 or bfloat16");
  if (a->seq_len < 0 || a->batch < 1) return fail("seq_len must be >= 0 and batch >= 1");
  if (a->head_dim < 1) return fail("head_dim must be >= 1");
  if (a->rotary_dim < 2 || a->rotary_dim % 2 || a->rotary_dim > a->head_dim)
    return fail("rotary_dim must be even, >= 2 and <= head_dim");
  if ((int64_t)a->rotary_dim * (int64_t)sizeof(float) > kMaxSmemBytes)
    return fail("rotary_dim must be <= 8192");
  if (!a->inv_freq) return fail("inv_freq is NULL");
  if (a->cp_size < 1 || a->cp_rank < 0 || a->cp_rank >= a->cp_size)
    return fail("cp_size must be >= 1 and 0 <= cp_rank < cp_size");
  if (a->cu_seqlens && a->num_docs < 1) return fail("cu_seqlens needs num_docs >= 1");
  if (a->cp_size > 1 && !a->position_ids && !a->cu_seqlens && a->seq_len % 2)
    return fail("with cp_size > 1 the local seq_len must be even (two chunks)");
  if (a->position_ids && a->cu_seqlens) return fail("pass position_ids or cu_seqlens, not both");
  if (a->seq_len * a->batch > ((int64_t)1 << 40)) return fail("too many tokens");
  int rc;
  if ((rc = check_set(a->rotate[0], "rotate[0] (Q): groups >= 0, heads_per_group >= 1, in/out set")))
    return rc;
  if ((rc = check_set(a->rotate[1], "rotate[1] (K): groups >= 0, heads_per_group >= 1, in/out set")))
    return rc;
  if ((rc = check_set(a->copy, "copy (V): groups >= 0, heads_per_group >= 1, in/out set"))) return rc;
  return MEGAMID_ROPE_OK;
}

extern "C" int megamid_rope(const megamid_rope_args_t* a, cudaStream_t stream) {
  const int rc = megamid_rope_check(a);
  if (rc) return rc;
  Params p{};
  p.seq_len = a->seq_len;
  p.batch = a->batch;
  p.tokens = a->seq_len * a->batch;
  p.half_rd = (int)(a->rotary_dim / 2);
  p.factor = a->attention_factor;
  p.sign = a->backward ? -1.f : 1.f;
  p.inv_freq = a->inv_freq;
  p.pos = a->position_ids;
  p.pos_s = a->pos_stride_s;
  p.pos_b = a->pos_stride_b;
  p.cu = a->cu_seqlens;
  p.num_docs = a->num_docs;
  p.cp_size = a->cp_size;
  p.cp_rank = a->cp_rank;
  const megamid_rope_heads_t* sets[3] = {&a->rotate[0], &a->rotate[1], &a->copy};
  for (int i = 0; i < 3; ++i) {
    p.set[i] = make_heads(*sets[i], *a);
    p.heads[i] = set_used(*sets[i]) ? (int)(sets[i]->groups * sets[i]->heads_per_group) : 0;
  }
  switch (a->dtype) {
    case MEGAMID_DTYPE_FLOAT32: return launch<float>(p, *a, stream);
    case MEGAMID_DTYPE_FLOAT16: return launch<__half>(p, *a, stream);
    case MEGAMID_DTYPE_BFLOAT16: return launch<__nv_bfloat16>(p, *a, stream);
  }
  return fail("dtype");
}

extern "C" int megamid_rope_fused_qkv(const megamid_rope_args_t* args, void* qkv,
                                      const int64_t qkv_stride[3], int64_t groups, int64_t q_per_group,
                                      void* q, const int64_t q_stride[3], void* k,
                                      const int64_t k_stride[3], void* v, const int64_t v_stride[3],
                                      int backward, cudaStream_t stream) {
  if (!args || !qkv || !q || !k || !v || !qkv_stride || !q_stride || !k_stride || !v_stride)
    return fail("fused qkv: a pointer is NULL");
  if (groups < 1 || q_per_group < 1) return fail("fused qkv: groups and q_per_group must be >= 1");
  megamid_rope_args_t a = *args;
  a.backward = backward;
  const int64_t d = a.head_dim;
  // The packed side: one group row holds q_per_group + 2 heads of d elements.
  auto packed = [&](int64_t first_head, int64_t heads_per_group) {
    megamid_rope_heads_t h{};
    h.groups = groups;
    h.heads_per_group = heads_per_group;
    h.in = static_cast<char*>(qkv) + first_head * d * (a.dtype == MEGAMID_DTYPE_FLOAT32 ? 4 : 2);
    h.in_stride[0] = qkv_stride[0];
    h.in_stride[1] = qkv_stride[1];
    h.in_stride[2] = qkv_stride[2];
    h.in_stride[3] = d;
    return h;
  };
  // The split side: head g * heads_per_group + j of a [s, b, heads, d] tensor.
  auto attach = [](megamid_rope_heads_t& h, void* t, const int64_t st[3]) {
    h.out = t;
    h.out_stride[0] = st[0];
    h.out_stride[1] = st[1];
    h.out_stride[2] = st[2] * h.heads_per_group;
    h.out_stride[3] = st[2];
  };
  megamid_rope_heads_t sets[3] = {packed(0, q_per_group), packed(q_per_group, 1),
                                  packed(q_per_group + 1, 1)};
  void* split[3] = {q, k, v};
  const int64_t* split_stride[3] = {q_stride, k_stride, v_stride};
  for (int i = 0; i < 3; ++i) {
    attach(sets[i], split[i], split_stride[i]);
    if (backward) {  // read the split gradients, write the packed one
      megamid_rope_heads_t& h = sets[i];
      void* packed_ptr = const_cast<void*>(h.in);
      h.in = h.out;
      h.out = packed_ptr;
      for (int j = 0; j < 4; ++j) {
        const int64_t t = h.in_stride[j];
        h.in_stride[j] = h.out_stride[j];
        h.out_stride[j] = t;
      }
    }
  }
  a.rotate[0] = sets[0];
  a.rotate[1] = sets[1];
  a.copy = sets[2];
  return megamid_rope(&a, stream);
}

extern "C" const char* megamid_rope_error_string(int status) {
  switch (status) {
    case MEGAMID_ROPE_OK: return "ok";
    case MEGAMID_ROPE_BAD_ARGUMENT:
    case MEGAMID_ROPE_CUDA_ERROR: return g_error;
  }
  return "unknown status";
}
