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

#include "rope/rope_math.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdio>

namespace {

using namespace megamid::rope;

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
  Positions where;
  int64_t tokens;
  int half_rd;
  float factor, sign;
  const float* inv_freq;
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

__device__ __forceinline__ int64_t in_offset(const Heads& h, int64_t si, int64_t bi, int64_t hh) {
  return head_offset(hh, h.heads_per_group, si, bi, h.in_s, h.in_b, h.in_g, h.in_h);
}
__device__ __forceinline__ int64_t out_offset(const Heads& h, int64_t si, int64_t bi, int64_t hh) {
  return head_offset(hh, h.heads_per_group, si, bi, h.out_s, h.out_b, h.out_g, h.out_h);
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
      if (lane == 0) pos = position_of(p.where, tok0 + tl);
      pos = __shfl_sync(0xffffffffu, pos, 0);
      for (int f = lane; f < p.half_rd; f += 32)
        rope_cos_sin(pos, p.inv_freq[f], p.factor, p.sign, &s_cos[tl * p.half_rd + f],
                     &s_sin[tl * p.half_rd + f]);
    }
    __syncthreads();

    const int per_head = p.rot_items + p.pass_items;
    const int total = ntok * p.work;
    for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
      const int tl = idx / p.work;
      int rem = idx - tl * p.work;
      const int64_t tok = tok0 + tl;
      int64_t si, bi;
      token_index(tok, p.where.batch, &si, &bi);
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
              const float x1 = a[k], x2 = b[k];
              rotate_pair(x1, x2, cs[e + k], sn[e + k], &a[k], &b[k]);
            }
            store<T, V, ALIGNED>(out + e, a);
            store<T, V, ALIGNED>(out + e + p.half_rd, b);
          } else {
            const int e = item * V;
            float x[V];
            load<T, V, ALIGNED>(in + e, x);
#pragma unroll
            for (int k = 0; k < V / 2; ++k) {
              const float x1 = x[2 * k], x2 = x[2 * k + 1];
              rotate_pair(x1, x2, cs[e / 2 + k], sn[e / 2 + k], &x[2 * k], &x[2 * k + 1]);
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
  const char* why = check_args(a);
  return why ? fail(why) : MEGAMID_ROPE_OK;
}

extern "C" int megamid_rope(const megamid_rope_args_t* a, cudaStream_t stream) {
  const int rc = megamid_rope_check(a);
  if (rc) return rc;
  Params p{};
  p.where = positions_of(*a);
  p.tokens = a->seq_len * a->batch;
  p.half_rd = (int)(a->rotary_dim / 2);
  p.factor = a->attention_factor;
  p.sign = a->backward ? -1.f : 1.f;
  p.inv_freq = a->inv_freq;
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
  if (!args) return fail("args is NULL");
  megamid_rope_args_t a = *args;
  const char* why = fused_qkv_args(&a, qkv, qkv_stride, groups, q_per_group, q, q_stride, k, k_stride, v,
                                   v_stride, backward);
  return why ? fail(why) : megamid_rope(&a, stream);
}

extern "C" const char* megamid_rope_error_string(int status) {
  switch (status) {
    case MEGAMID_ROPE_OK: return "ok";
    case MEGAMID_ROPE_BAD_ARGUMENT:
    case MEGAMID_ROPE_CUDA_ERROR: return g_error;
  }
  return "unknown status";
}
