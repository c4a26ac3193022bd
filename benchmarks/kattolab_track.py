"""Kattolab's low-rate MS-SSIM track (Cheng, Sun, Katto, CLIC 2020, Table 1) on a set of images.

    python benchmarks/kattolab_track.py ../shared/data/kodak --reuse docs/results/kodak/rows.csv \
        [--model gllmm-msssim | --model W.safetensors] [--weights DIR] [--budgets 0.10,0.15,0.25] \
        [--reference ../shared/reference/kodak_rd_published.csv] [-o kattolab_track.json]

Kattolab met a 0.15 bpp budget over a whole validation set by choosing one of four
MS-SSIM models per image (a multiple-choice knapsack).  This script does the same with
the qualities of one MS-SSIM model of ours: first each quality's mean bpp and MS-SSIM
on the set (real files), then for each budget (bpp over the whole set) the allocation
of :func:`mixcodec.allocate.allocate` maximizing the mean MS-SSIM among those
qualities only (as ``mixcodec allocate --metric ms-ssim``), against the best single
quality whose total fits the same budget.  Beside them: MS-SSIM points of CompressAI's
``cheng2020-attn`` from the published reference file, and Kattolab's own numbers, which
are on the CLIC 2020 validation set, not Kodak.

``--reuse``: rows.csv files of ``mixcodec eval`` / ``mixcodec export --measure --rows``
whose (model, quality, image) rows are taken instead of coding again; only missing
files are coded (minutes for Kodak).  Rows carry the model's name, not its weights:
reuse only rows made with the same weight file (the script warns when they disagree
with the means the weight file stores from its own measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

#: Kattolab's Table 1 (CLIC 2020 validation set): single MS-SSIM models as (bpp, MS-SSIM), λ = 4.5, 6, 10, 14.
KATTOLAB_SINGLE = [(0.1254, 0.9716), (0.1487, 0.9755), (0.1999, 0.9813), (0.2424, 0.9845)]
#: Kattolab's allocation over those four models at 0.15 bpp: (budget bpp, MS-SSIM).
KATTOLAB_ALLOCATED = (0.15, 0.9761)
#: The CompressAI curve of the reference file put beside ours (MSE-trained: the file has no MS-SSIM-trained
#: cheng2020-attn).
REFERENCE_CODEC = "compressai-cheng2020-attn_mse_cuda"


def model_infos(spec: str, weights: Path | None) -> list:
    """All qualities of an installed model name (also looked up in ``weights``) or of a weight file."""
    from mixcodec.models.registry import MODELS_ENV, installed_models, read_infos

    if spec.endswith(".safetensors"):
        return read_infos(Path(spec))
    if weights is not None:
        os.environ[MODELS_ENV] = os.pathsep.join(filter(None, [str(weights), os.environ.get(MODELS_ENV, "")]))
    return [i for i in installed_models() if i.name == spec]


def best_single_under(points: list[tuple[float, float]], budget: float) -> tuple[float, float] | None:
    """The (bpp, score) of highest score among ``points`` with bpp <= ``budget``."""
    fitting = [p for p in points if p[0] <= budget]
    return max(fitting, key=lambda p: p[1]) if fitting else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="folder of images (Kodak)")
    parser.add_argument(
        "--model", default="gllmm-msssim", help="installed MS-SSIM model name, or a .safetensors weight file"
    )
    parser.add_argument("--weights", type=Path, help="extra folder of weight files to look --model up in")
    parser.add_argument("--reuse", type=Path, nargs="*", default=[], help="rows.csv files to take measured rows from")
    parser.add_argument("--budgets", default="0.10,0.15,0.25", help="comma-separated budgets in bpp over the whole set")
    parser.add_argument("--reference", type=Path, help="CSV of published RD points (kodak_rd_published.csv)")
    parser.add_argument("--reference-codec", default=REFERENCE_CODEC, help="curve of --reference to put beside ours")
    parser.add_argument("-o", "--output", type=Path, default=Path("kattolab_track.json"))
    args = parser.parse_args()

    from mixcodec import allocate as al
    from mixcodec import eval as ev
    from mixcodec.data import list_images

    infos = sorted(model_infos(args.model, args.weights), key=lambda i: i.quality)
    if not infos:
        sys.exit(f"kattolab_track: no model {args.model!r} (an installed name or a .safetensors file)")
    images = list_images(args.dataset)
    if not images:
        sys.exit(f"kattolab_track: no images under {args.dataset}")
    model = ev.learned_codec(infos)
    wanted = {(model.name, float(q), p.name) for q in model.qualities for p in images}
    rows = [r for path in args.reuse for r in ev.read_rows(path) if (r.codec, r.quality, r.image) in wanted]
    coded = len(wanted) - len(rows)
    if coded:
        print(f"coding {coded} files ({len(rows)} reused)", file=sys.stderr)
        rows += ev.evaluate(model, images, done=rows)
    env = ev.environment()
    print(
        f"Kattolab track: {model.name} ({infos[0].path.name}, sha256 {infos[0].sha256[:16]}), "
        f"{len(images)} images of {args.dataset.name}, "
        f"{len(wanted) - coded} files reused, {coded} coded; "
        f"mixcodec {env['mixcodec']}, torch {env['torch']}, {env['processor']}"
    )

    curve = ev.mean_curve(rows)[model.name]
    print("\nsingle qualities (real files):")
    print(f"  {'quality':<8} {'lambda':>7} {'bpp':>7} {'MS-SSIM':>8} {'PSNR':>6}")
    for info, point in zip(infos, sorted(curve, key=lambda p: p["quality"])):
        print(
            f"  q{point['quality']:<7g} {info.lmbda:>7.3g} {point['bpp']:>7.4f} "
            f"{point['ms_ssim']:>8.4f} {point['psnr']:>6.2f}"
        )
        stored = info.kodak
        if (
            stored.get("set") == args.dataset.name
            and stored.get("images") == point["images"]
            and abs(stored["bpp"] - point["bpp"]) > 5e-5
        ):
            print(
                f"  warning: q{point['quality']:g} rows give {point['bpp']:.4f} bpp, "
                f"the weight file measured {stored['bpp']:.4f}: "
                "the reused rows may be from other weights"
            )
    print(
        "  Kattolab (CLIC 2020 validation set, 4 models): "
        + ", ".join(f"{b:.4f} bpp / {s:.4f}" for b, s in KATTOLAB_SINGLE)
    )
    low, high = curve[0]["bpp"], curve[-1]["bpp"]
    print(f"  our qualities span {low:.4f} to {high:.4f} bpp on this set")

    reference = []
    if args.reference:
        published = ev.read_reference(args.reference).get(args.reference_codec, [])
        reference = [(p["bpp"], 1 - 10 ** (-p["ms_ssim_db"] / 10)) for p in published if np.isfinite(p["ms_ssim_db"])]
        if reference:
            trained = (
                " (an MSE-trained model: the file has no MS-SSIM-trained curve of it)"
                if "_mse" in args.reference_codec
                else ""
            )
            print(
                f"  {args.reference_codec} (published, Kodak){trained}: "
                + ", ".join(f"{b:.4f} bpp / {s:.4f}" for b, s in reference)
            )
        else:
            print(f"  {args.reference} has no MS-SSIM points of {args.reference_codec}")

    table, pixels = al.candidates_from_rows(rows, model.name)
    print("\nallocation maximizing the mean MS-SSIM, one quality per image:")
    header = (
        f"  {'budget':>6} | {'alloc. bpp':>10} {'MS-SSIM':>8} {'method':>10} {'gap':>7} | "
        f"{'single':>6} {'bpp':>7} {'MS-SSIM':>8} | {'gain':>7} | {'ref. (interp.)':>14}"
    )
    print(header)
    results = []
    for budget in map(float, args.budgets.split(",")):
        ref = (
            float(np.interp(budget, *zip(*reference)))
            if reference and reference[0][0] <= budget <= reference[-1][0]
            else None
        )
        ref_text = f"{ref:>14.4f}" if ref is not None else f"{'-':>14}"
        entry = {"budget_bpp": budget, "reference_ms_ssim": ref}
        try:
            report = al.allocate(table, pixels, budget, "ms-ssim")
        except al.InfeasibleBudget as exc:
            entry["infeasible_min_bpp"] = 8 * exc.minimum / sum(pixels)
            print(
                f"  {budget:>6.3f} | infeasible: the lowest quality on every image already gives "
                f"{entry['infeasible_min_bpp']:.4f} bpp | {ref_text}"
            )
            results.append(entry)
            continue
        except ValueError as exc:  # e.g. MS-SSIM undefined on small images
            sys.exit(f"kattolab_track: {exc}")
        single = report["best_single_model"]
        top = sum(max(row, key=lambda c: c.ms_ssim).size for row in table)
        entry.update(
            allocated={k: report[k] for k in ("bpp", "mean_score", "method", "gap", "bound_mean_score")},
            qualities=[table[i][j].quality_index for i, j in enumerate(report["choice"])],
            best_single=single,
            gain=report["mean_score"] - single["mean_score"] if single else None,
            trivial=top <= report["budget_bytes"],
        )
        single_text = (
            f"{'q' + str(single['quality']):>6} {single['bpp']:>7.4f} {single['mean_score']:>8.4f} | "
            f"{entry['gain']:>+7.4f}"
            if single
            else f"{'none':>6} {'-':>7} {'-':>8} | {'-':>7}"
        )
        print(
            f"  {budget:>6.3f} | {report['bpp']:>10.4f} {report['mean_score']:>8.4f} {report['method']:>10} "
            f"{report['gap']:>7.1e} | {single_text} | {ref_text}"
        )
        counts = np.bincount(entry["qualities"], minlength=max(entry["qualities"]) + 1)
        print("         chosen: " + ", ".join(f"q{q} x{n}" for q, n in enumerate(counts) if n))
        if entry["trivial"]:
            print(
                f"         trivial: every image at its best quality fits ({8 * top / sum(pixels):.4f} bpp), "
                "nothing to allocate"
            )
        elif single is None:
            print("         no single quality fits: all images at one quality exceed the budget")
        results.append(entry)
    if reference:
        print(
            f"  ref. (interp.): MS-SSIM of {args.reference_codec} at the budget, "
            "linear between its points ('-': outside them)"
        )
    k_budget, k_score = KATTOLAB_ALLOCATED
    k_single = best_single_under(KATTOLAB_SINGLE, k_budget)
    print(
        f"  Kattolab (CLIC 2020): {k_budget:.2f} bpp allocated {k_score:.4f} "
        f"vs best single {k_single[1]:.4f} at {k_single[0]:.4f} bpp "
        f"({k_score - k_single[1]:+.4f})"
    )
    output = {
        "environment": env,
        "model": model.name,
        "weights": str(infos[0].path),
        "sha256": infos[0].sha256,
        "images": len(images),
        "single": curve,
        "allocation": results,
        "reference_codec": args.reference_codec,
        "reference": reference,
        "kattolab": {"single": KATTOLAB_SINGLE, "allocated": KATTOLAB_ALLOCATED},
    }
    args.output.write_text(json.dumps(output, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
