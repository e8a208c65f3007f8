// Blended sample index for a piecewise-linear mixture schedule (deficit / greedy assignment).
#pragma once
#include <cstdint>

#ifdef __cplusplus
extern "C" {
#endif

// knot_samples: [num_knots] ascending sample positions, the first one 0.
// knot_shares:  [num_knots, num_sources] row-major; each stream's share at its knot. Between knots k
//               and k+1 the share at sample n is a + (b - a) / (p[k+1] - p[k]) * (n - p[k]);
//               from the last knot on it stays constant.
// For every sample n (0 <= n < num_samples) the stream most behind its target is picked:
//   deficit[s] += share[s](n);  pick s = argmax deficit (lowest id on ties);  deficit[s] -= 1
// so after every prefix of n samples each stream's count is within ~1 of sum_{j<n} share[s](j).
// source_index[n] receives the stream id, source_sample_index[n] the stream's own running count
// (0, 1, 2, ... per stream), counts[s] the per-stream totals.
// Returns 0, or -1 for bad arguments (num_sources outside 1..32767, knots not ascending from 0).
int64_t megamid_mixture_index(const int64_t* knot_samples, const double* knot_shares, int64_t num_knots,
                              int64_t num_sources, int64_t num_samples, int16_t* source_index,
                              int64_t* source_sample_index, int64_t* counts);

#ifdef __cplusplus
}
#endif
