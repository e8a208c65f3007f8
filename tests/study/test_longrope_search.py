"""python -m pytest -q tests/study/test_longrope_search.py

LongRoPE's evolutionary factor search (megamid.study.longrope) on a score with a known optimum: it
keeps factors legal (>= 1, monotone, bounded), never returns worse than its closed-form seeds, and
moves towards the optimum; the seeds are the closed forms written per dimension."""

import math

import numpy as np

from megamid.study.longrope import monotone, search, seed_factors


def test_seeds_are_the_closed_forms():
    seeds = seed_factors(8, 4.0, 128)
    assert seeds["pi"] == [4.0] * 8
    assert seeds["ntk"][0] == 1.0 and math.isclose(seeds["ntk"][-1], 4.0)    # s^(2i/(d-2)): 1 .. s
    assert seeds["yarn"][0] < 1.1 and seeds["yarn"][-1] == 4.0                 # high freq kept, low freq PI
    assert all(monotone(v) for v in seeds.values())


def test_search_moves_towards_the_optimum_and_stays_legal():
    target = np.array([1.0, 1.0, 1.3, 1.9, 2.6, 3.4, 4.6, 6.5])
    calls = []

    def score(factors):
        calls.append(list(factors))
        return float(np.sum((np.log(np.array(factors)) - np.log(target)) ** 2))

    r = search(score, 8, 4.0, 128, generations=12, population=10, seed=1)
    assert r["score"] <= min(r["seeds"].values()) and r["history"] == sorted(r["history"], reverse=True)
    assert r["score"] < 0.5 * min(r["seeds"].values())
    for f in calls:
        assert monotone(f) and min(f) >= 1.0 and max(f) <= 8.0
    assert r["evaluations"] == len({tuple(np.round(c, 6)) for c in calls})  # each candidate scored once
