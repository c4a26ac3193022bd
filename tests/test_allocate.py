"""The multiple-choice knapsack DP against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mixcodec.allocate import InfeasibleBudget, solve


def brute_force(costs, scores, budget):
    best = None
    for combo in itertools.product(*(range(len(r)) for r in costs)):
        cost = sum(costs[i][j] for i, j in enumerate(combo))
        if cost <= budget:
            score = sum(scores[i][j] for i, j in enumerate(combo))
            best = score if best is None else max(best, score)
    return best


@pytest.mark.parametrize("seed", range(60))
def test_dp_equals_brute_force_and_respects_the_budget(seed):
    rng = np.random.default_rng(seed)
    images, options = rng.integers(1, 5), rng.integers(1, 5)
    costs = rng.integers(0, 40, (images, options)).tolist()
    # coarse scores make ties frequent
    scores = (rng.integers(0, 4, (images, options)) * 0.5).tolist()
    budget = int(rng.integers(0, 40 * images))
    optimum = brute_force(costs, scores, budget)
    if optimum is None:
        with pytest.raises(InfeasibleBudget) as info:
            solve(costs, scores, budget)
        assert info.value.minimum == sum(min(r) for r in costs) > budget
        return
    choice = solve(costs, scores, budget)
    assert sum(costs[i][j] for i, j in enumerate(choice)) <= budget
    assert sum(scores[i][j] for i, j in enumerate(choice)) == pytest.approx(optimum)
    assert solve(costs, scores, budget) == choice  # deterministic


def test_large_byte_counts_with_common_divisor():
    costs = [[10_000, 20_000, 40_000], [12_000, 30_000, 50_000]]
    scores = [[30.0, 32.0, 34.5], [29.0, 31.0, 35.0]]
    assert solve(costs, scores, 60_000) == [0, 2]  # 60 000 bytes, score 65
    assert solve(costs, scores, 59_999) == [2, 0]  # 52 000 bytes, score 63.5 (beats [1, 1] at 63)
