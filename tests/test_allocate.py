"""The multiple-choice knapsack solvers against brute force and each other."""

from __future__ import annotations

import importlib.util
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

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def brute_force(costs, scores, budget):
    best = None
    for combo in itertools.product(*(range(len(r)) for r in costs)):
        cost = sum(costs[i][j] for i, j in enumerate(combo))
        if cost <= budget:
            score = sum(scores[i][j] for i, j in enumerate(combo))
            best = score if best is None else max(best, score)
    return best


def random_instance(seed, max_images=5, max_options=5, max_cost=40):
    rng = np.random.default_rng(seed)
    images, options = rng.integers(1, max_images), rng.integers(1, max_options)
    costs = rng.integers(0, max_cost, (images, options)).tolist()
    # coarse scores make ties frequent (every other seed), fine ones make hulls with many points
    scores = (
        (rng.integers(0, 4, (images, options)) * 0.5).tolist()
        if seed % 2
        else rng.normal(size=(images, options)).tolist()
    )
    return costs, scores, int(rng.integers(0, max_cost * images))


def check(result, costs, scores, budget):
    """The allocation is consistent, within budget, and its bound is not below its score."""
    assert len(result.choice) == len(costs)
    assert result.cost == sum(costs[i][j] for i, j in enumerate(result.choice)) <= budget
    assert result.score == pytest.approx(sum(scores[i][j] for i, j in enumerate(result.choice)))
    assert result.bound >= result.score - 1e-9 and result.gap >= 0


@pytest.mark.parametrize("method", ["dp", "lagrangian", "auto"])
@pytest.mark.parametrize("seed", range(60))
def test_methods_against_brute_force(seed, method):
    """The DP is optimal; the Lagrangian method is within its reported gap of the optimum and its bound is above it."""
    costs, scores, budget = random_instance(seed)
    optimum = brute_force(costs, scores, budget)
    if optimum is None:
        with pytest.raises(InfeasibleBudget) as info:
            solve(costs, scores, budget, method)
        assert info.value.minimum == sum(min(r) for r in costs) > budget
        return
    result = solve(costs, scores, budget, method)
    check(result, costs, scores, budget)
    assert result.method == ("lagrangian" if method == "lagrangian" else "dp")
    assert result.bound >= optimum - 1e-9
    assert optimum - result.gap - 1e-9 <= result.score <= optimum + 1e-9
    if result.method == "dp":
        assert result.score == pytest.approx(optimum) and result.gap == 0
    assert solve(costs, scores, budget, method) == result  # deterministic


@pytest.mark.parametrize("core", [0, 8, 32])
@pytest.mark.parametrize("seed", range(20))
def test_lagrangian_against_the_dp_on_larger_instances(seed, core, monkeypatch):
    """Up to 120 images x 8 candidates, exact repair of ``core`` images (0: greedy only): the
    Lagrangian choice is within its gap of the DP optimum, and its gap is at most one image's
    range of scores (the fractional segment of the relaxation)."""
    monkeypatch.setattr(allocate, "CORE_IMAGES", core)
    costs, scores, _ = random_instance(1000 + seed, max_images=121, max_options=9, max_cost=300)
    low, high = sum(min(r) for r in costs), sum(max(r) for r in costs)
    budget = low + (high - low) * (seed + 1) // 22  # between the smallest and the largest files
    exact = solve(costs, scores, budget, "dp")
    fast = solve(costs, scores, budget, "lagrangian")
    check(exact, costs, scores, budget)
    check(fast, costs, scores, budget)
    assert fast.bound >= exact.score - 1e-9
    assert exact.score - fast.gap - 1e-9 <= fast.score <= exact.score + 1e-9
    assert fast.gap <= max(max(s) - min(s) for s in scores) + 1e-9


def test_ties_are_broken_the_same_way_every_time():
    costs = [[10, 10, 20], [10, 20, 20], [5, 15, 15]]
    scores = [[1.0, 1.0, 2.0], [1.0, 2.0, 2.0], [0.0, 1.0, 1.0]]
    for method in ("dp", "lagrangian"):
        results = {tuple(solve(costs, scores, 40, method).choice) for _ in range(3)}
        assert len(results) == 1
        result = solve(costs, scores, 40, method)
        check(result, costs, scores, 40)
        assert result.score == pytest.approx(brute_force(costs, scores, 40))  # 3.0: one upgrade of 10 bytes
    # equal candidates: the first index
    assert solve([[7, 7]], [[1.0, 1.0]], 7, "lagrangian").choice == [0] == solve([[7, 7]], [[1.0, 1.0]], 7, "dp").choice


def test_infeasible_and_bad_input():
    with pytest.raises(InfeasibleBudget) as info:
        solve([[10, 20], [5]], [[1.0, 2.0], [1.0]], 14, "lagrangian")
    assert info.value.minimum == 15
    assert solve([[10, 20], [5]], [[1.0, 2.0], [1.0]], 15, "lagrangian").choice == [0, 0]
    with pytest.raises(ValueError, match="finite"):
        solve([[1, 2]], [[0.5, float("nan")]], 10)
    with pytest.raises(ValueError, match="method"):
        solve([[1]], [[0.5]], 10, "simplex")
    with pytest.raises(ValueError, match="candidates"):
        solve([[1], []], [[0.5], []], 10)


def test_large_byte_counts_with_common_divisor():
    costs = [[10_000, 20_000, 40_000], [12_000, 30_000, 50_000]]
    scores = [[30.0, 32.0, 34.5], [29.0, 31.0, 35.0]]
    for method in ("dp", "lagrangian"):
        assert solve(costs, scores, 60_000, method).choice == [0, 2]  # 60 000 bytes, score 65
        assert solve(costs, scores, 59_999, method).choice == [2, 0]  # 52 000 bytes, score 63.5 (beats [1, 1] at 63)
    assert allocate.dp_cells(costs, 60_000) == 2 * (38_000 // 2_000 + 1)  # in units of the gcd, 2 000 bytes


def synthetic(images):
    """The Kodak-like candidates of benchmarks/allocation_scale.py: bytes and MS-SSIM."""
    spec = importlib.util.spec_from_file_location("allocation_scale", BENCHMARKS / "allocation_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    costs, ms_ssim, _ = module.synthetic(images)
    return costs, ms_ssim, module.PIXELS


def test_5000_images_of_8_candidates():
    """Far beyond the DP (about 10^11 cells): auto runs the Lagrangian method, within budget, and
    the gap is at most one image's range of scores, i.e. under 1e-4 on the mean MS-SSIM."""
    costs, scores, pixels = synthetic(5000)
    budget = int(0.3 * 5000 * pixels / 8)
    assert allocate.dp_cells(costs, budget) > allocate.MAX_TABLE_CELLS
    result = solve(costs, scores, budget)
    check(result, costs, scores, budget)
    assert result.method == "lagrangian"
    assert budget - result.cost < max(max(c) - min(c) for c in costs)  # the budget is spent
    assert result.gap <= max(max(s) - min(s) for s in scores) and result.gap / 5000 < 1e-4
    with pytest.raises(MemoryError):
        solve(costs, scores, budget, "dp")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "mixcodec.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def test_allocate_cli_meets_the_budget_and_reports_infeasible_targets(tiny_ladder, tmp_path):
    import json

    from PIL import Image

    from conftest import smooth_image

    data = tmp_path / "images"
    data.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(64, 64 + 32 * i, seed=i)).save(data / f"{i}.png")
    proc = run_cli(
        "allocate", data, "--target-bpp", "100", "--metric", "psnr", "--models", "ladder", "-o", tmp_path / "big"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "big" / "allocation.json").read_text())
    written = sum(f.stat().st_size for f in (tmp_path / "big").glob("*.mxc"))
    assert report["bytes"] == written <= report["budget_bytes"]
    assert len(report["images"]) == 3 and report["best_single_model"] is not None
    assert report["method"] == "dp" and report["gap"] == 0 and "method: dp (exact optimum)" in proc.stdout
    middle = (
        8 * (report["bytes"] + report["best_single_model"]["bytes"]) / 2 / sum(64 * (64 + 32 * i) for i in range(3))
    )
    proc = run_cli(
        "allocate",
        data,
        "--target-bpp",
        middle,
        "--metric",
        "psnr",
        "--models",
        "ladder",
        "--method",
        "lagrangian",
        "-o",
        tmp_path / "mid",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "mid" / "allocation.json").read_text())
    assert report["method"] == "lagrangian" and report["gap"] >= 0 and "method: lagrangian, gap" in proc.stdout
    assert report["bytes"] == sum(f.stat().st_size for f in (tmp_path / "mid").glob("*.mxc")) <= report["budget_bytes"]
    assert report["mean_score"] <= report["bound_mean_score"]
    proc = run_cli(
        "allocate", data, "--target-bpp", "0.001", "--metric", "psnr", "--models", "ladder", "-o", tmp_path / "none"
    )
    assert proc.returncode == 2 and "infeasible" in proc.stderr and "bpp" in proc.stderr
    proc = run_cli(
        "allocate", data, "--target-bpp", "100", "--metric", "ms-ssim", "--models", "ladder", "-o", tmp_path / "small"
    )
    assert proc.returncode == 2 and "finite" in proc.stderr  # MS-SSIM is undefined on images this small


def test_compress_max_bytes_picks_the_highest_quality_that_fits(tiny_ladder, tmp_path):
    from PIL import Image

    from conftest import smooth_image
    from mixcodec.bitstream import parse

    Image.fromarray(smooth_image(64, 96)).save(tmp_path / "a.png")
    sizes = {}
    for q in (1, 2):
        assert (
            run_cli(
                "compress", tmp_path / "a.png", "--model", "ladder", "--quality", q, "-o", tmp_path / f"q{q}.mxc"
            ).returncode
            == 0
        )
        sizes[q] = (tmp_path / f"q{q}.mxc").stat().st_size
    assert sizes[1] < sizes[2]
    limit = (sizes[1] + sizes[2]) // 2
    proc = run_cli(
        "compress", tmp_path / "a.png", "--model", "ladder", "--max-bytes", limit, "-o", tmp_path / "fit.mxc"
    )
    assert proc.returncode == 0, proc.stderr
    fit = (tmp_path / "fit.mxc").read_bytes()
    quality = parse(fit)[0].quality
    assert (
        sizes[1] <= len(fit) <= limit and 1 <= quality < 2 and quality * 64 == int(quality * 64)
    )  # between the levels, to 1/64
    finer = run_cli(
        "compress", tmp_path / "a.png", "--model", "ladder", "--quality", quality + 1 / 64, "-o", tmp_path / "finer.mxc"
    )
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
            rows.append(
                Row(
                    "m",
                    float(q),
                    f"{i}.png",
                    size,
                    8 * size / pixels,
                    25 + 3 * q + rng.normal(),
                    1 - 0.1 / q,
                    10.0,
                    0.0,
                    0.0,
                )
            )
    rows.append(Row("m", 1.0, "lacks-qualities.png", 10, 0.1, 20.0, 0.5, 3.0, 0.0, 0.0))
    write_rows(rows, tmp_path / "rows.csv")
    table, pixels = allocate.candidates_from_rows(read_rows(tmp_path / "rows.csv"), "m")
    assert len(table) == 6 and pixels == [1000 * (i + 1) for i in range(6)]
    script = BENCHMARKS / "allocation.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--rows",
            str(tmp_path / "rows.csv"),
            "--codec",
            "m",
            "--budgets",
            "0.1,0.5,0.9",
            "-o",
            str(tmp_path / "a.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "a.json").read_text())["results"]
    assert len(results) == 6, proc.stdout
    assert all("infeasible_min_bpp" in r for r in results[:2])
    for r in results[2:]:
        assert r["allocated"]["bpp"] <= r["budget_bpp"]
        assert np.isnan(r["gain"]) or r["gain"] >= -1e-12


def test_scale_benchmark_reports_gaps_that_hold(tmp_path):
    """benchmarks/allocation_scale.py: within budget, and the DP optimum within each reported gap."""
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "allocation_scale.py"),
            "--sizes",
            "20,300",
            "--budgets",
            "0.15,0.4",
            "--dp-max-cells",
            "3e7",
            "-o",
            str(tmp_path / "s.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "s.json").read_text())["results"]
    assert len(rows) == 8 and any("dp_s" in r for r in rows) and any(r["auto_method"] == "lagrangian" for r in rows)
    for r in rows:
        assert r["bpp"] <= r["budget_bpp"] and r["gap_mean"] >= 0
        if "dp_s" in r:
            assert -1e-9 <= r["true_gap_mean"] <= r["gap_mean"] + 1e-9


def test_kattolab_track_from_reused_rows(tiny_ladder, tmp_path):
    """benchmarks/kattolab_track.py on measured rows only (nothing coded): per-quality means, an
    infeasible budget said as such, an allocation within budget and not worse than the best single quality."""
    from PIL import Image

    from mixcodec.eval import Row, write_rows

    data = tmp_path / "images"
    data.mkdir()
    rows = []
    for i in range(4):
        Image.new("RGB", (8, 8)).save(data / f"{i}.png")  # only listed: every row is reused
        for q in (1, 2):
            size = 1000 * q + 300 * i
            rows.append(
                Row(
                    "ladder",
                    float(q),
                    f"{i}.png",
                    size,
                    8 * size / 40_000,
                    25.0 + q,
                    0.9 + 0.02 * q + 0.01 * i,
                    10.0,
                    0.0,
                    0.0,
                )
            )
    write_rows(rows, tmp_path / "rows.csv")
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "kattolab_track.py"),
            str(data),
            "--model",
            "ladder",
            "--reuse",
            str(tmp_path / "rows.csv"),
            "--budgets",
            "0.1,0.35",
            "-o",
            str(tmp_path / "k.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "0 coded" in proc.stdout and "infeasible" in proc.stdout and "Kattolab" in proc.stdout
    report = json.loads((tmp_path / "k.json").read_text())
    assert [p["bpp"] for p in report["single"]] == pytest.approx([8 * 1450 / 40_000, 8 * 2450 / 40_000])
    infeasible, allocated = report["allocation"]
    assert infeasible["infeasible_min_bpp"] == pytest.approx(8 * 1450 / 40_000)
    assert allocated["allocated"]["bpp"] <= 0.35 and allocated["allocated"]["method"] == "dp"
    assert allocated["gain"] >= 0 and allocated["best_single"]["quality"] == 1
