"""The multiple-choice knapsack DP against brute force."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mixcodec import allocate
from mixcodec.allocate import InfeasibleBudget, solve
from mixcodec.eval import read_rows


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


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mixcodec.cli", *map(str, args)], capture_output=True, text=True, timeout=600)


def test_allocate_cli_meets_the_budget_and_reports_infeasible_targets(tiny_ladder, tmp_path):
    import json

    from conftest import smooth_image
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(64, 64 + 32 * i, seed=i)).save(data / f"{i}.png")
    proc = run_cli("allocate", data, "--target-bpp", "100", "--metric", "psnr", "--models", "ladder", "-o", tmp_path / "big")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "big" / "allocation.json").read_text())
    written = sum(f.stat().st_size for f in (tmp_path / "big").glob("*.mxc"))
    assert report["bytes"] == written <= report["budget_bytes"]
    assert len(report["images"]) == 3 and report["best_single_model"] is not None
    proc = run_cli("allocate", data, "--target-bpp", "0.001", "--metric", "psnr", "--models", "ladder", "-o", tmp_path / "none")
    assert proc.returncode == 2 and "infeasible" in proc.stderr and "bpp" in proc.stderr


def test_compress_max_bytes_picks_the_highest_quality_that_fits(tiny_ladder, tmp_path):
    from conftest import smooth_image
    from PIL import Image

    from mixcodec.bitstream import parse

    Image.fromarray(smooth_image(64, 96)).save(tmp_path / "a.png")
    sizes = {}
    for q in (1, 2):
        assert run_cli("compress", tmp_path / "a.png", "--model", "ladder", "--quality", q, "-o", tmp_path / f"q{q}.mxc").returncode == 0
        sizes[q] = (tmp_path / f"q{q}.mxc").stat().st_size
    assert sizes[1] < sizes[2]
    limit = (sizes[1] + sizes[2]) // 2
    proc = run_cli("compress", tmp_path / "a.png", "--model", "ladder", "--max-bytes", limit, "-o", tmp_path / "fit.mxc")
    assert proc.returncode == 0, proc.stderr
    fit = (tmp_path / "fit.mxc").read_bytes()
    quality = parse(fit)[0].quality
    assert sizes[1] <= len(fit) <= limit and 1 <= quality < 2 and quality * 64 == int(quality * 64)  # between the levels, to 1/64
    finer = run_cli("compress", tmp_path / "a.png", "--model", "ladder", "--quality", quality + 1 / 64, "-o", tmp_path / "finer.mxc")
    assert finer.returncode == 0 and (tmp_path / "finer.mxc").stat().st_size > limit  # the next step up does not fit
    proc = run_cli("compress", tmp_path / "a.png", "--model", "ladder", "--max-bytes", 10, "-o", tmp_path / "none.mxc")
    assert proc.returncode == 2 and "lowest quality" in proc.stderr


def test_benchmark_from_measured_rows_never_exceeds_the_budget(tmp_path):
    """benchmarks/allocation.py on rows of a measured eval: within budget and never worse than one quality for all."""
    from mixcodec.eval import Row, write_rows

    rng = np.random.default_rng(3)
    rows = []
    for i in range(6):
        pixels = 1000 * (i + 1)
        for q in (1, 2, 3):
            size = int(pixels * q * rng.uniform(0.02, 0.06))
            rows.append(Row("m", float(q), f"{i}.png", size, 8 * size / pixels, 25 + 3 * q + rng.normal(), 1 - 0.1 / q, 10.0, 0.0, 0.0))
    rows.append(Row("m", 1.0, "lacks-qualities.png", 10, 0.1, 20.0, 0.5, 3.0, 0.0, 0.0))
    write_rows(rows, tmp_path / "rows.csv")
    table, pixels = allocate.candidates_from_rows(read_rows(tmp_path / "rows.csv"), "m")
    assert len(table) == 6 and pixels == [1000 * (i + 1) for i in range(6)]
    script = Path(__file__).parents[1] / "benchmarks" / "allocation.py"
    proc = subprocess.run([sys.executable, str(script), "--rows", str(tmp_path / "rows.csv"), "--codec", "m", "--budgets", "0.1,0.5,0.9",
                           "-o", str(tmp_path / "a.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "a.json").read_text())["results"]
    assert len(results) == 6, proc.stdout
    assert all("infeasible_min_bpp" in r for r in results[:2])
    for r in results[2:]:
        assert r["allocated"]["bpp"] <= r["budget_bpp"]
        assert np.isnan(r["gain"]) or r["gain"] >= -1e-12
