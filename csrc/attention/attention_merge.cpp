// CPU implementation of attention_merge.h: one pass over the rows, weights computed once per row.
#include "attention/attention_merge.h"

#include <cmath>
#include <limits>

namespace {

template <typename T>
int merge(const T* out1, const T* lse1, const T* out2, const T* lse2, int64_t rows, int64_t dim, T* out,
          T* lse) {
  if (rows < 0 || dim < 0) return MEGAMID_MERGE_BAD_ARGUMENT;
  if (rows == 0) return MEGAMID_MERGE_OK;
  if (!lse1 || !lse2 || !lse || (dim > 0 && (!out1 || !out2 || !out))) return MEGAMID_MERGE_BAD_ARGUMENT;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    const T a = lse1[r], b = lse2[r];
    const T m = a > b ? a : b;
    const T* x = out1 + r * dim;
    const T* y = out2 + r * dim;
    T* z = out + r * dim;
    if (m == neg_inf || std::isnan(m)) {  // neither block saw a key (or bad input): propagate
      for (int64_t i = 0; i < dim; ++i) z[i] = std::isnan(m) ? m : T(0);
      lse[r] = m;
      continue;
    }
    const T ea = std::exp(a - m), eb = std::exp(b - m);  // exp(-inf) = 0 for an empty block
    const T total = ea + eb;
    const T wa = ea / total, wb = eb / total;
    for (int64_t i = 0; i < dim; ++i) {
      // An empty block's output may hold garbage: never multiply it, not even by 0 (NaN * 0 = NaN).
      const T xa = wa == T(0) ? T(0) : wa * x[i];
      const T yb = wb == T(0) ? T(0) : wb * y[i];
      z[i] = xa + yb;
    }
    lse[r] = m + std::log(total);
  }
  return MEGAMID_MERGE_OK;
}

}  // namespace

extern "C" int megamid_attention_merge_f32(const float* out1, const float* lse1, const float* out2,
                                           const float* lse2, int64_t rows, int64_t dim, float* out,
                                           float* lse) {
  return merge(out1, lse1, out2, lse2, rows, dim, out, lse);
}

extern "C" int megamid_attention_merge_f64(const double* out1, const double* lse1, const double* out2,
                                           const double* lse2, int64_t rows, int64_t dim, double* out,
                                           double* lse) {
  return merge(out1, lse1, out2, lse2, rows, dim, out, lse);
}
