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


def test_parallel_branch_runs_report_the_failing_one(tmp_path):
    """megamid_train_many runs `megamid train` subprocesses two at a time; a failure names its recipe and log."""
    import pytest

    from megamid.study.runs import megamid_train_many

    runs = [(f"r{i}", str(tmp_path / f"missing{i}.yaml"), ["--branch", f"r{i}"], str(tmp_path / f"r{i}.log"))
            for i in range(2)]
    logged = []
    with pytest.raises(RuntimeError, match=r"megamid train .*missing\d\.yaml --branch r\d failed \(2\); log .*r\d\.log"):
        megamid_train_many(runs, logged.append, threads=1, jobs=2)
    assert all(line.startswith("$ megamid train") for line in logged) and len(logged) == 2
