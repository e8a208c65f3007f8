"""python benchmarks/mixture_index.py [--samples 100000000] [--python-samples 1000000] [--streams 4]

Speed of the blended index on a constant blend: megamid's C++ helper (megamid._C.mixture_index)
vs megatron-core's build_blending_indices (megatron.core.datasets.helpers_cpp, the baseline) vs
the plain-Python twin (build_mixture_index_reference, timed on --python-samples and reported per
sample, since 100M samples in Python take minutes). Also prints each method's worst deviation of a
stream's count from its target over every prefix, as a check that speed did not cost accuracy.
"""

import argparse
import time

import numpy as np


def worst_deviation(source_index: np.ndarray, weights: np.ndarray, block: int = 1 << 22) -> float:
    """max over prefixes n and streams s of |count_s(n) - w_s * n|, in blocks to bound memory."""
    worst, counts = 0.0, np.zeros(len(weights))
    for start in range(0, len(source_index), block):
        chunk = source_index[start:start + block]
        n = np.arange(start + 1, start + len(chunk) + 1)
        for s, w in enumerate(weights):
            c = counts[s] + np.cumsum(chunk == s)
            worst = max(worst, float(np.abs(c - w * n).max()))
            counts[s] = c[-1]
    return worst


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000_000)
    parser.add_argument("--python-samples", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs for the C++ paths")
    args = parser.parse_args()

    from megatron.core.datasets import helpers_cpp

    from megamid import _C
    from megamid.data.mixture_index import build_mixture_index_reference

    rng = np.random.default_rng(0)
    weights = rng.random(args.streams) + 0.1
    weights /= weights.sum()
    n = args.samples

    def megatron():
        ds_index = np.empty(n, dtype=np.int16)
        ds_sample = np.empty(n, dtype=np.int64)
        helpers_cpp.build_blending_indices(ds_index, ds_sample, weights, len(weights), n, False)
        return ds_index

    def ours():
        return _C.mixture_index(np.zeros(1, np.int64), weights[None], n)[0]

    rows = []
    for name, fn in (("megatron-core build_blending_indices", megatron), ("megamid C++ mixture_index", ours)):
        best, index = min((timed(fn) for _ in range(args.repeats)), key=lambda r: r[0])
        rows.append((name, n, best, worst_deviation(index, weights)))
        del index
    m = args.python_samples
    seconds, (index, _, _) = timed(lambda: build_mixture_index_reference([0], weights[None], m))
    rows.append(("megamid Python reference loop", m, seconds, worst_deviation(index, weights)))

    base = rows[0][2] / rows[0][1]
    print(f"constant blend of {args.streams} streams, weights {np.round(weights, 3).tolist()}")
    print("| method | samples | seconds | ns/sample | vs megatron-core | worst |count - target| |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, samples, secs, worst in rows:
        per = secs / samples
        print(f"| {name} | {samples:,} | {secs:.3f} | {per * 1e9:.2f} | {base / per:.2f}x | {worst:.3f} |")


if __name__ == "__main__":
    main()
