// Deficit / greedy blending, as megatron-core's build_blending_indices, extended to shares that
// change linearly between knots. The Python twin is megamid/data/mixture_index.py
// (build_mixture_index_reference); both use the same floating-point operations in the same order.
#include "data/mixture_index.h"

#include <algorithm>
#include <vector>

namespace {

// One segment with constant shares: the hot loop of the constant-blend case.
inline void run_constant(const double* share, int64_t num_sources, int64_t begin, int64_t end,
                         double* deficit, int64_t* counts, int16_t* source_index,
                         int64_t* source_sample_index) {
  for (int64_t n = begin; n < end; ++n) {
    int64_t best = 0;
    double best_deficit = deficit[0] += share[0];
    for (int64_t s = 1; s < num_sources; ++s) {
      const double d = deficit[s] += share[s];
      if (d > best_deficit) {
        best_deficit = d;
        best = s;
      }
    }
    deficit[best] -= 1.0;
    source_index[n] = static_cast<int16_t>(best);
    source_sample_index[n] = counts[best]++;
  }
}

inline void run_linear(const double* share, const double* slope, int64_t num_sources, int64_t knot,
                       int64_t begin, int64_t end, double* deficit, int64_t* counts,
                       int16_t* source_index, int64_t* source_sample_index) {
  for (int64_t n = begin; n < end; ++n) {
    const double j = static_cast<double>(n - knot);
    int64_t best = 0;
    double best_deficit = deficit[0] += share[0] + slope[0] * j;
    for (int64_t s = 1; s < num_sources; ++s) {
      const double d = deficit[s] += share[s] + slope[s] * j;
      if (d > best_deficit) {
        best_deficit = d;
        best = s;
      }
    }
    deficit[best] -= 1.0;
    source_index[n] = static_cast<int16_t>(best);
    source_sample_index[n] = counts[best]++;
  }
}

}  // namespace

extern "C" int64_t megamid_mixture_index(const int64_t* knot_samples, const double* knot_shares,
                                         int64_t num_knots, int64_t num_sources, int64_t num_samples,
                                         int16_t* source_index, int64_t* source_sample_index,
                                         int64_t* counts) {
  if (num_sources < 1 || num_sources > 32767 || num_knots < 1 || knot_samples[0] != 0) return -1;
  for (int64_t k = 1; k < num_knots; ++k)
    if (knot_samples[k] <= knot_samples[k - 1]) return -1;
  std::vector<double> deficit(num_sources, 0.0), slope(num_sources, 0.0);
  for (int64_t s = 0; s < num_sources; ++s) counts[s] = 0;
  for (int64_t k = 0; k < num_knots; ++k) {
    const int64_t begin = knot_samples[k];
    if (begin >= num_samples) break;
    const double* a = knot_shares + k * num_sources;
    const bool last = k + 1 == num_knots;
    const int64_t end = last ? num_samples : std::min(knot_samples[k + 1], num_samples);
    bool constant = true;
    if (!last) {
      const double span = static_cast<double>(knot_samples[k + 1] - begin);
      const double* b = a + num_sources;
      for (int64_t s = 0; s < num_sources; ++s) {
        slope[s] = (b[s] - a[s]) / span;
        constant = constant && slope[s] == 0.0;
      }
    }
    if (constant)
      run_constant(a, num_sources, begin, end, deficit.data(), counts, source_index, source_sample_index);
    else
      run_linear(a, slope.data(), num_sources, begin, begin, end, deficit.data(), counts, source_index,
                 source_sample_index);
  }
  return 0;
}
