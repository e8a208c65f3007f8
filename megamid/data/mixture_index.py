"""Blended sample index for a piecewise-linear mixture schedule: which stream each phase sample
comes from, and which of that stream's samples it is.

The C++ helper (csrc/data/mixture_index.cpp, bound as `megamid._C.mixture_index`) is the fast path;
`build_mixture_index_reference` below is its plain twin, the oracle in tests and the fallback when
the extension is not built. Both run the deficit / greedy rule of megatron-core's
`build_blending_indices` (always pick the stream most behind its target), with the target the
running sum of the scheduled shares, so realised counts stay within about one sample of target at
every prefix, also while shares move.
"""

import numpy as np

INDEX_BYTES_PER_SAMPLE = 2 + 8   # source_index int16 + source_sample_index int64

try:
    from megamid import _C
except ImportError:  # extension not built: the reference serves
    _C = None
if _C is not None and not hasattr(_C, "mixture_index"):  # an extension built before this helper
    _C = None


def _check(knot_samples, knot_shares, num_samples: int):
    knot_samples = np.ascontiguousarray(knot_samples, dtype=np.int64)
    knot_shares = np.ascontiguousarray(knot_shares, dtype=np.float64)
    if knot_samples.ndim != 1 or knot_shares.ndim != 2 or len(knot_samples) != len(knot_shares):
        raise ValueError(f"knot_samples {knot_samples.shape} must be [knots], knot_shares "
                         f"{knot_shares.shape} [knots, streams]")
    if len(knot_samples) == 0 or knot_samples[0] != 0 or np.any(np.diff(knot_samples) <= 0):
        raise ValueError(f"knot_samples={knot_samples.tolist()} must ascend strictly from 0")
    if not 1 <= knot_shares.shape[1] <= 32767:
        raise ValueError(f"{knot_shares.shape[1]} streams; valid: 1..32767")
    if np.any(~np.isfinite(knot_shares)) or np.any(knot_shares < 0):
        raise ValueError(f"knot_shares must be finite and >= 0, got {knot_shares.tolist()}")
    if num_samples < 0:
        raise ValueError(f"num_samples={num_samples} must be >= 0")
    return knot_samples, knot_shares


def build_mixture_index(knot_samples, knot_shares, num_samples: int):
    """(source_index int16 [n], source_sample_index int64 [n], counts int64 [streams]).

    knot_samples [knots] ascend from 0; knot_shares [knots, streams] hold each stream's share at its
    knot (linear between knots, constant after the last)."""
    knot_samples, knot_shares = _check(knot_samples, knot_shares, int(num_samples))
    if _C is None:
        return build_mixture_index_reference(knot_samples, knot_shares, num_samples)
    return _C.mixture_index(knot_samples, knot_shares, int(num_samples))


def build_mixture_index_reference(knot_samples, knot_shares, num_samples: int):
    """The plain-Python twin of the C++ helper: same rule, same float operations, same result."""
    knot_samples, knot_shares = _check(knot_samples, knot_shares, int(num_samples))
    n_streams = knot_shares.shape[1]
    source_index = np.empty(num_samples, dtype=np.int16)
    source_sample_index = np.empty(num_samples, dtype=np.int64)
    counts = [0] * n_streams
    deficit = [0.0] * n_streams
    knots = [int(k) for k in knot_samples]
    for k, begin in enumerate(knots):
        if begin >= num_samples:
            break
        a = [float(x) for x in knot_shares[k]]
        last = k + 1 == len(knots)
        end = num_samples if last else min(knots[k + 1], num_samples)
        slope = [0.0] * n_streams
        if not last:
            span = float(knots[k + 1] - begin)
            slope = [(float(b) - x) / span for b, x in zip(knot_shares[k + 1], a)]
        for n in range(begin, end):
            j = float(n - begin)
            best, best_deficit = 0, None
            for s in range(n_streams):
                deficit[s] += a[s] + slope[s] * j if slope[s] != 0.0 else a[s]
                if best_deficit is None or deficit[s] > best_deficit:
                    best, best_deficit = s, deficit[s]
            deficit[best] -= 1.0
            source_index[n] = best
            source_sample_index[n] = counts[best]
            counts[best] += 1
    return source_index, source_sample_index, np.asarray(counts, dtype=np.int64)
