// CUDA implementation of attention_merge_cuda.h. One block of threads per group of rows: each thread
// strides over the columns of its row, so a row's two weights are computed once per thread (registers)
// and every load and store is coalesced along dim.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention/attention_merge_cuda.h"

namespace {

thread_local cudaError_t last_cuda_error = cudaSuccess;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

constexpr int kThreadsX = 32;  // columns per step of a row
constexpr int kRowsPerBlock = 8;

template <typename T>
__global__ void merge_kernel(const T* __restrict__ out1, const float* __restrict__ lse1,
                             const T* __restrict__ out2, const float* __restrict__ lse2, int64_t rows,
                             int64_t dim, T* out, float* lse) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  const bool valid = r < rows;  // no early return: every thread must reach __syncthreads below
  const float a = valid ? lse1[r] : 0.f, b = valid ? lse2[r] : 0.f;
  const float m = fmaxf(a, b);
  const bool empty = isinf(m) && m < 0.f;
  float wa = 0.f, wb = 0.f, merged = m;
  if (!empty && !isnan(m)) {
    const float ea = expf(a - m), eb = expf(b - m);
    const float total = ea + eb;
    wa = ea / total;
    wb = eb / total;
    merged = m + logf(total);
  }
  const int64_t base = r * dim;
  for (int64_t i = threadIdx.x; valid && i < dim; i += kThreadsX) {
    float z;
    if (isnan(m)) {
      z = m;
    } else {
      // An empty block's output may hold garbage: never multiply it, not even by 0.
      const float xa = wa == 0.f ? 0.f : wa * to_float(out1[base + i]);
      const float yb = wb == 0.f ? 0.f : wb * to_float(out2[base + i]);
      z = xa + yb;
    }
    out[base + i] = from_float<T>(z);
  }
  // Every thread of this row has read lse1[r] / lse2[r] above; sync the row before lse may alias them.
  __syncthreads();
  if (valid && threadIdx.x == 0) lse[r] = merged;
}

template <typename T>
int launch(const void* out1, const float* lse1, const void* out2, const float* lse2, int64_t rows,
           int64_t dim, void* out, float* lse, cudaStream_t stream) {
  const dim3 block(kThreadsX, kRowsPerBlock);
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > 2147483647LL) return MEGAMID_MERGE_BAD_ARGUMENT;
  merge_kernel<T><<<static_cast<unsigned>(blocks), block, 0, stream>>>(
      static_cast<const T*>(out1), lse1, static_cast<const T*>(out2), lse2, rows, dim, static_cast<T*>(out),
      lse);
  last_cuda_error = cudaGetLastError();
  return last_cuda_error == cudaSuccess ? MEGAMID_MERGE_OK : MEGAMID_MERGE_CUDA_ERROR;
}

}  // namespace

extern "C" int megamid_attention_merge_cuda(int dtype, const void* out1, const float* lse1, const void* out2,
                                            const float* lse2, int64_t rows, int64_t dim, void* out,
                                            float* lse, cudaStream_t stream) {
  if (rows < 0 || dim < 0) return MEGAMID_MERGE_BAD_ARGUMENT;
  if (rows == 0) return MEGAMID_MERGE_OK;
  if (!lse1 || !lse2 || !lse || (dim > 0 && (!out1 || !out2 || !out))) return MEGAMID_MERGE_BAD_ARGUMENT;
  switch (dtype) {
    case 0: return launch<float>(out1, lse1, out2, lse2, rows, dim, out, lse, stream);
    case 1: return launch<__half>(out1, lse1, out2, lse2, rows, dim, out, lse, stream);
    case 2: return launch<__nv_bfloat16>(out1, lse1, out2, lse2, rows, dim, out, lse, stream);
    default: return MEGAMID_MERGE_BAD_ARGUMENT;
  }
}

extern "C" const char* megamid_attention_merge_error_string(int status) {
  switch (status) {
    case MEGAMID_MERGE_OK: return "ok";
    case MEGAMID_MERGE_BAD_ARGUMENT: return "bad argument (negative size, NULL pointer or unknown dtype)";
    case MEGAMID_MERGE_CUDA_ERROR: return cudaGetErrorString(last_cuda_error);
    default: return "unknown status";
  }
}
