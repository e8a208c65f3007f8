"""LongRoPE's factor search (Ding et al., 2024, section 3): per-dimension rescale factors found by an
evolutionary search that minimises perplexity at the target length, instead of a fixed formula.

The search space is a factor lambda_i >= 1 for every rotary frequency i (position / lambda_i in that
dimension), non-decreasing from the highest frequency (i = 0) to the lowest, as the paper constrains
it. The first population holds the closed-form mappings the paper seeds it with, each written as
per-dimension factors: PI (every lambda = s), NTK-aware (lambda_i = s^(2i / (d - 2)), theta scaled by
s^(d / (d - 2))), YaRN's by-parts ramp (1 for wavelengths that fit the original window many times, s
for those longer than it) and a geometric ramp from 1 to s. Each generation keeps the best `elite`,
and fills the population with mutants (a few factors multiplied by exp(N(0, sigma)), re-sorted to stay
monotone) and crossovers (each factor from either parent). A candidate is scored by `score(factors)`:
the study's is perplexity at 4L on training-split code documents (never the held-out set it reports).

Not searched here (kept fixed): the paper's number of initial positions left unscaled, and its
short-window factors (1 for every dimension: the base's own rope up to the original window).
"""

import math
from typing import Callable, Dict, List, Sequence

import numpy as np


def seed_factors(num: int, factor: float, original: int, theta: float = 10000.0) -> Dict[str, List[float]]:
    """The closed-form mappings as per-dimension factors (num = rotary_dim // 2 frequencies)."""
    d = 2 * num
    wavelengths = [2 * math.pi * theta ** (2 * i / d) for i in range(num)]
    low, high = original / 32.0, original / 1.0    # YaRN's beta_fast = 32, beta_slow = 1 rotations
    ramp = [min(1.0, max(0.0, (w - low) / (high - low))) for w in wavelengths]
    return {
        "pi": [float(factor)] * num,
        "ntk": [float(factor) ** (2 * i / (d - 2)) for i in range(num)],
        "yarn": [1.0 + (factor - 1.0) * r for r in ramp],
    }


def _legal(x: np.ndarray, top: float) -> np.ndarray:
    return np.sort(np.clip(x, 1.0, top))   # lambda >= 1, at most `top`, non-decreasing


def search(score: Callable[[List[float]], float], num: int, factor: float, original: int, theta: float = 10000.0,
           generations: int = 4, population: int = 8, elite: int = 3, sigma: float = 0.3, seed: int = 0) -> Dict:
    """Evolutionary search of LongRoPE factors. Returns {"factors": best list, "score": its score,
    "seeds": {name: score of each closed-form seed}, "history": [best score per generation],
    "evaluations": count}. Factors are bounded by [1, 2 * factor] (the paper lets them exceed s)."""
    rng = np.random.default_rng(seed)
    top = 2.0 * float(factor)
    cache: Dict[tuple, float] = {}

    def fitness(x: np.ndarray) -> float:
        key = tuple(np.round(x, 6))
        if key not in cache:
            value = float(score([float(v) for v in key]))
            cache[key] = value if math.isfinite(value) else math.inf
        return cache[key]

    seeds = {name: _legal(np.array(v), top) for name, v in seed_factors(num, factor, original, theta).items()}
    seed_scores = {name: fitness(x) for name, x in seeds.items()}
    pop = list(seeds.values())
    history = []
    for _ in range(generations):
        pop.sort(key=fitness)
        history.append(fitness(pop[0]))
        parents, children = pop[:elite], []
        while len(parents) + len(children) < population:
            a = parents[int(rng.integers(len(parents)))]
            if rng.random() < 0.5:
                b = parents[int(rng.integers(len(parents)))]
                child = np.where(rng.random(num) < 0.5, a, b)
            else:
                child = a.copy()
            picks = rng.random(num) < max(1.0 / num, 0.25)
            child = child * np.exp(rng.normal(0.0, sigma, num) * picks)
            children.append(_legal(child, top))
        pop = parents + children
    pop.sort(key=fitness)
    history.append(fitness(pop[0]))
    return {"factors": [round(float(v), 6) for v in pop[0]], "score": fitness(pop[0]), "seeds": seed_scores,
            "history": history, "evaluations": len(cache)}


def monotone(factors: Sequence[float]) -> bool:
    return all(b >= a for a, b in zip(factors, factors[1:]))
