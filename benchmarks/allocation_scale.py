"""Time and optimality gap of the allocation solvers on thousands of images (synthetic RD data).

    python benchmarks/allocation_scale.py [--sizes 100,1000,5000,20000] [--candidates 8] \
        [--budgets 0.15,0.4] [--metrics ms-ssim,psnr] [-o allocation_scale.json]

Every image is 512x768 pixels (Kodak's size) with one candidate per quality level whose
size in bytes grows about 35 % a level from a per-image rate (log-normal around 0.13 bpp
at the lowest level, spread as Kodak's), and whose quality rises linearly with log2(bpp)
(MS-SSIM in dB and PSNR, per-image offset and slope, small noise; real quality
ladders are like this, with a little noise).  For each size, budget (bpp over the set) and
metric it times :func:`mixcodec.allocate.solve` with ``method="auto"`` and with the
Lagrangian method, and the exact DP where its table has at most ``--dp-max-cells`` cells;
gaps are in the metric's units of the mean over images (MS-SSIM, or dB).  Prints a
table and writes JSON with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

#: Pixels of every synthetic image (512x768, Kodak's size).
PIXELS = 512 * 768


def synthetic(
    images: int, candidates: int = 8, seed: int = 0
) -> tuple[list[list[int]], list[list[float]], list[list[float]]]:
    """Kodak-like candidates: ``(bytes, ms_ssim, psnr)``, each ``images x candidates`` nested lists."""
    rng = np.random.default_rng(seed)
    steps = np.linspace(0.45, 0.2, max(candidates - 1, 1))[
        : candidates - 1
    ]  # log rate step a level, smaller at high levels
    log_bpp = np.log(0.13) + 0.43 * rng.normal(size=(images, 1)) + np.concatenate([[0.0], np.cumsum(steps)])[None]
    bpp = np.exp(log_bpp + rng.normal(0, 0.02, (images, candidates)))
    ms_ssim_db = (
        rng.normal(19, 2, (images, 1))
        + rng.normal(2.6, 0.4, (images, 1)) * np.log2(bpp)
        + rng.normal(0, 0.05, bpp.shape)
    )
    psnr = (
        rng.normal(35, 2.5, (images, 1))
        + rng.normal(2.1, 0.3, (images, 1)) * np.log2(bpp)
        + rng.normal(0, 0.05, bpp.shape)
    )
    size = np.round(bpp * PIXELS / 8).astype(np.int64)
    return size.tolist(), (1 - 10 ** (-ms_ssim_db / 10)).tolist(), psnr.tolist()


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000,20000", help="comma-separated numbers of images")
    parser.add_argument("--candidates", type=int, default=8, help="candidates (quality levels) per image")
    parser.add_argument("--budgets", default="0.15,0.4", help="comma-separated budgets in bpp over the set")
    parser.add_argument("--metrics", default="ms-ssim,psnr")
    parser.add_argument(
        "--dp-max-cells", type=float, default=2e8, help="run the exact DP only on tables up to this many cells"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=Path("allocation_scale.json"))
    args = parser.parse_args()

    from mixcodec import allocate as al
    from mixcodec.eval import environment

    env = environment()
    print(f"{env['processor']}, python {env['python']}, numpy {np.__version__}, mixcodec {env['mixcodec']}")
    header = (
        f"{'images':>7} {'bpp':>5} {'metric':>7} {'DP cells':>9} | {'auto':>10} {'time s':>7} | {'Lagr. s':>7} "
        f"{'mean':>9} {'bound':>9} {'gap':>8} | {'DP s':>6} {'DP mean':>9} {'true gap':>8}"
    )
    print(header)
    print("-" * len(header))
    results = []
    for images in map(int, args.sizes.split(",")):
        costs, ms_ssim, psnr = synthetic(images, args.candidates, args.seed)
        for budget_bpp in map(float, args.budgets.split(",")):
            budget = int(budget_bpp * images * PIXELS / 8)
            for metric in args.metrics.split(","):
                scores = ms_ssim if metric == "ms-ssim" else psnr
                cells = al.dp_cells(costs, budget)
                auto, auto_s = timed(al.solve, costs, scores, budget)
                fast, fast_s = timed(al.solve, costs, scores, budget, "lagrangian")
                row = {
                    "images": images,
                    "candidates": args.candidates,
                    "budget_bpp": budget_bpp,
                    "metric": metric,
                    "dp_cells": cells,
                    "auto_method": auto.method,
                    "auto_s": auto_s,
                    "lagrangian_s": fast_s,
                    "lagrangian_mean": fast.score / images,
                    "bound_mean": fast.bound / images,
                    "gap_mean": fast.gap / images,
                    "bpp": 8 * fast.cost / (images * PIXELS),
                }
                dp_text = f"{'-':>6} {'-':>9} {'-':>8}"
                if cells <= args.dp_max_cells:
                    choice, dp_s = timed(al.solve_dp, costs, scores, budget)
                    optimum = sum(scores[i][j] for i, j in enumerate(choice)) / images
                    row.update(dp_s=dp_s, dp_mean=optimum, true_gap_mean=optimum - fast.score / images)
                    dp_text = f"{dp_s:>6.2f} {optimum:>9.6f} {row['true_gap_mean']:>8.1e}"
                results.append(row)
                print(
                    f"{images:>7} {budget_bpp:>5.2f} {metric:>7} {cells:>9.1e} | "
                    f"{auto.method:>10} {auto_s:>7.3f} | {fast_s:>7.3f} "
                    f"{row['lagrangian_mean']:>9.6f} {row['bound_mean']:>9.6f} {row['gap_mean']:>8.1e} | {dp_text}"
                )
    print(
        "gap: bound of the linear relaxation minus the achieved mean (an upper bound on the distance to the optimum); "
        "true gap: the DP optimum minus the Lagrangian mean"
    )
    args.output.write_text(
        json.dumps(
            {"environment": {**env, "numpy": np.__version__}, "pixels_per_image": PIXELS, "results": results}, indent=1
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
