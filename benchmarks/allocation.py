"""Rate-constrained allocation over an image set vs the best single model (Kattolab's Table 1).

    python benchmarks/allocation.py ../shared/data/kodak --budgets 0.2,0.3,0.5 [--models gllmm]
    python benchmarks/allocation.py --rows eval-out/rows.csv --codec gllmm --budgets 0.2,0.3,0.5

Every image is coded with every quality of the model set (real files; or the rows of an
earlier ``mixcodec eval`` / ``mixcodec export --rows``, which hold the same real file
sizes).  For each budget (bpp over the whole set) and each metric,
:func:`mixcodec.allocate.allocate` chooses one quality per image (the exact DP at this size); the best single quality
under the same budget is the baseline.  Prints a table and writes JSON with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def summarize(table, choice: list[int], pixels: list[int]) -> dict:
    picked = [row[j] for row, j in zip(table, choice)]
    return {
        "bpp": 8 * sum(c.size for c in picked) / sum(pixels),
        "psnr": float(np.mean([c.psnr for c in picked])),
        "ms_ssim": float(np.mean([c.ms_ssim for c in picked])),
        "qualities": [c.quality_index for c in picked],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, nargs="?")
    parser.add_argument("--models", default="gllmm", help="installed model name (all its qualities)")
    parser.add_argument(
        "--rows", type=Path, nargs="*", help="rows.csv files to take the candidates from instead of coding"
    )
    parser.add_argument("--codec", default="gllmm", help="codec name in --rows")
    parser.add_argument("--budgets", default="0.2,0.3,0.5", help="comma-separated budgets in bpp over the set")
    parser.add_argument("-o", "--output", type=Path, default=Path("allocation.json"))
    args = parser.parse_args()

    from mixcodec import allocate as al
    from mixcodec.eval import environment, read_rows

    if args.rows:
        table, pixels = al.candidates_from_rows([r for path in args.rows for r in read_rows(path)], args.codec)
    else:
        from PIL import Image

        from mixcodec.data import list_images
        from mixcodec.models.registry import installed_models

        infos = sorted((i for i in installed_models() if i.name == args.models), key=lambda i: i.quality)
        paths = list_images(args.dataset)
        table = al.encode_candidates(paths, infos)
        pixels = []
        for p in paths:
            with Image.open(p) as im:
                pixels.append(im.width * im.height)
    qualities = [c.quality_index for c in table[0]]
    print(f"{len(table)} images, qualities {qualities}")
    results = []
    header = (
        f"{'budget':>7} {'metric':>8} | {'allocated bpp':>13} {'PSNR':>6} {'MS-SSIM':>8} | "
        f"{'single':>6} {'bpp':>6} {'PSNR':>6} {'MS-SSIM':>8} | gain"
    )
    print(header)
    print("-" * len(header))
    for budget in map(float, args.budgets.split(",")):
        for metric in ("psnr", "ms-ssim"):
            try:
                report = al.allocate(table, pixels, budget, metric)
            except al.InfeasibleBudget as exc:
                print(f"{budget:>7.3f} infeasible: minimum {8 * exc.minimum / sum(pixels):.4f} bpp")
                results.append(
                    {"budget_bpp": budget, "metric": metric, "infeasible_min_bpp": 8 * exc.minimum / sum(pixels)}
                )
                continue
            ours = summarize(table, report["choice"], pixels)
            single = report["best_single_model"]
            base = summarize(table, [qualities.index(single["quality"])] * len(table), pixels) if single else None
            key = "psnr" if metric == "psnr" else "ms_ssim"
            gain = ours[key] - base[key] if base else float("nan")
            results.append(
                {
                    "budget_bpp": budget,
                    "metric": metric,
                    "allocated": ours,
                    "best_single": base,
                    "best_single_quality": single and single["quality"],
                    "gain": gain,
                    "method": report["method"],
                    "gap": report["gap"],
                }
            )
            if base:
                print(
                    f"{budget:>7.3f} {metric:>8} | {ours['bpp']:>13.4f} {ours['psnr']:>6.2f} {ours['ms_ssim']:>8.4f} | "
                    f"{'q' + str(single['quality']):>6} {base['bpp']:>6.4f} {base['psnr']:>6.2f} "
                    f"{base['ms_ssim']:>8.4f} | "
                    f"{gain:+.4f} {'dB' if metric == 'psnr' else ''}"
                )
            else:
                print(
                    f"{budget:>7.3f} {metric:>8} | {ours['bpp']:>13.4f} {ours['psnr']:>6.2f} {ours['ms_ssim']:>8.4f} | "
                    "no single quality fits"
                )
    args.output.write_text(
        json.dumps(
            {"environment": environment(), "images": len(table), "qualities": qualities, "results": results}, indent=1
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
