"""Encoder effort levels: BD-rate vs effort 0 and encode seconds per image, from real files.

    nice -n 10 python benchmarks/effort_sweep.py KODAK_DIR --crop 384x256            # the sweep of docs/effort.md
    nice -n 10 python benchmarks/effort_sweep.py KODAK_DIR --images all --qualities 2,4,6,8 --efforts 0,3 \\
        --rows effort-all.csv

Every image is compressed at every quality and effort level (``mixcodec.compress(...,
effort=E)``), the bytes decoded with ``mixcodec.decompress`` and PSNR / MS-SSIM measured on
the decoded 8-bit image (:func:`mixcodec.eval.evaluate`); the rate is the file size.  The
rows go to a CSV (``--rows``, the columns of ``mixcodec eval``), written after every image
and read back on the next run, so an interrupted sweep resumes and a finished one only
prints its table (codec names ``gllmm`` and ``gllmm:eE``, as ``mixcodec eval`` writes them:
its ``--reuse`` takes these rows).  BD-rate is computed from the per-quality means over the
images; ``s/iter`` is the extra encode time over effort 0 per refinement iteration.
``--crop WxH`` codes the top-left crop of each image (written to a temporary folder).
``--fp32`` refines in float32 on a CPU where bf16 is fast (AMX or AVX512-BF16), where it would otherwise run
the relaxed steps in bf16 (the JSON's ``refine_bf16`` says which).
``--anchors ROWS`` (e.g. ``docs/results/kodak/rows.csv`` of ``mixcodec eval``) adds the BD-rate
of every effort level against each other codec in that file, on the same images.  Prints a
table, every curve's PSNR at 0.25, 0.5 and 1.0 bpp (:func:`mixcodec.eval.psnr_at_rates`: with
two qualities, e.g. 7 and 8, the BD-rates are NaN but PSNR at 1.0 bpp is defined), and writes
JSON with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def _images(dataset: Path, names: str, crop: str | None, folder: Path) -> list[Path]:
    from PIL import Image

    from mixcodec.data import list_images

    paths = (
        list_images(dataset)
        if names == "all"
        else [dataset / (n if Path(n).suffix else f"{n}.png") for n in names.split(",")]
    )
    if not crop:
        return paths
    width, height = map(int, crop.split("x"))
    folder.mkdir(parents=True, exist_ok=True)
    cropped = []
    for path in paths:
        target = folder / f"{path.stem}-{crop}.png"
        if not target.exists():
            with Image.open(path) as im:
                im.convert("RGB").crop((0, 0, width, height)).save(target)
        cropped.append(target)
    return cropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="folder of the images (e.g. Kodak)")
    parser.add_argument(
        "--images",
        default="kodim01,kodim05,kodim14,kodim23",
        help="comma-separated file names (stem or name) in DATASET, or 'all'",
    )
    parser.add_argument("--crop", help="code the top-left WxH crop of each image (e.g. 384x256)")
    parser.add_argument("--qualities", default="2,4,6,8", help="comma-separated quality levels")
    parser.add_argument(
        "--efforts", default="0,1,2,3", help="comma-separated effort levels (0 is the anchor and is always coded)"
    )
    parser.add_argument("--model", default="gllmm", help="installed model name (NAME@VERSION) or weight file")
    parser.add_argument(
        "--rows", type=Path, default=Path("effort-sweep.csv"), help="CSV of per-file rows (read back, extended)"
    )
    parser.add_argument(
        "--anchors", type=Path, help="rows CSV of other codecs (mixcodec eval): BD-rate against each of them too"
    )
    parser.add_argument(
        "--fp32",
        action="store_true",
        help="refine in float32 even where bf16 is fast (mixcodec.refine.bf16_is_fast), to compare the two",
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("effort-sweep.json"))
    args = parser.parse_args()

    from mixcodec import eval as ev
    from mixcodec import refine
    from mixcodec.models.registry import find_model, installed_models, read_infos
    from mixcodec.refine import EFFORT_ITERATIONS

    if args.fp32:
        refine.bf16_is_fast = lambda: False  # this process only: codec.compress asks it per image
    chosen = find_model(args.model)
    family = (
        read_infos(chosen.path)
        if args.model.endswith(".safetensors")
        else [i for i in installed_models() if i.sha256 == chosen.sha256]
    )
    qualities = [float(q) for q in args.qualities.split(",")]
    infos = [i for i in family if float(i.quality) in qualities]
    efforts = sorted({0, *(int(e) for e in args.efforts.split(","))})
    codecs = {e: ev.learned_codec(infos, e) for e in efforts}
    images = _images(args.dataset, args.images, args.crop, Path(tempfile.gettempdir()) / "mixcodec-effort-crops")

    rows = ev.read_rows(args.rows) if args.rows.exists() else []
    for path in images:
        for effort in efforts:
            new = ev.evaluate(codecs[effort], [path], done=rows)
            if new:
                rows += new
                ev.write_rows(rows, args.rows)
                print(
                    f"{path.name} e{effort}: "
                    + " ".join(f"q{r.quality:g} {r.bpp:.4f} bpp {r.psnr:.2f} dB {r.encode_s:.1f} s" for r in new),
                    flush=True,
                )

    names = {p.name for p in images}
    selected = [
        r for r in rows if r.image in names and r.quality in qualities and r.codec in {c.name for c in codecs.values()}
    ]
    curves = ev.mean_curve(selected)
    anchor = curves[codecs[0].name]
    base_seconds = np.mean([r.encode_s for r in selected if r.codec == codecs[0].name])
    table = []
    for effort, codec_ in codecs.items():
        points = curves[codec_.name]
        seconds = float(np.mean([r.encode_s for r in selected if r.codec == codec_.name]))
        iterations = EFFORT_ITERATIONS[effort]
        table.append(
            {
                "effort": effort,
                "codec": codec_.name,
                "iterations": iterations,
                "files": sum(p["images"] for p in points),
                "bd_rate_psnr": ev.bd_rate(
                    [p["bpp"] for p in anchor],
                    [p["psnr"] for p in anchor],
                    [p["bpp"] for p in points],
                    [p["psnr"] for p in points],
                ),
                "bd_rate_ms_ssim_db": ev.bd_rate(
                    [p["bpp"] for p in anchor],
                    [p["ms_ssim_db"] for p in anchor],
                    [p["bpp"] for p in points],
                    [p["ms_ssim_db"] for p in points],
                ),
                "encode_s": seconds,
                "s_per_iteration": (seconds - base_seconds) / iterations if iterations else None,
                "bpp": [p["bpp"] for p in points],
                "psnr": [p["psnr"] for p in points],
            }
        )
    versus: dict[str, dict[str, dict[str, float]]] = {}
    anchors: dict[str, list[dict]] = {}
    if args.anchors:
        others = [r for r in ev.read_rows(args.anchors) if r.image in names and r.codec not in curves]
        anchors = {
            name: ref
            for name, ref in ev.mean_curve(others).items()
            if {p["images"] for p in ref} == {len(names)}  # codecs measured on every image of the sweep
        }
        pairs = ev.bd_table({**curves, **anchors})
        versus = {name: {t["codec"]: pairs[t["codec"]][name] for t in table} for name in anchors}
    environment = {**ev.environment(), "refine_bf16": refine.bf16_is_fast()}
    print(
        f"{len(images)} images ({args.images}{', crop ' + args.crop if args.crop else ''}), "
        f"{args.model} qualities {args.qualities}; {environment}"
    )
    print(
        f"{'effort':<8}{'iter':>6}{'files':>7}{'BD PSNR %':>11}{'BD MS-SSIM %':>14}{'enc s/img':>11}{'s/iter':>8}   "
        "bpp / PSNR per quality"
    )
    for t in table:
        per_quality = "  ".join(f"{b:.4f}/{p:.2f}" for b, p in zip(t["bpp"], t["psnr"]))
        per_iteration = f"{t['s_per_iteration']:.2f}" if t["s_per_iteration"] is not None else "-"
        print(
            f"{t['codec']:<8}{t['iterations']:>6}{t['files']:>7}{t['bd_rate_psnr']:>11.2f}"
            f"{t['bd_rate_ms_ssim_db']:>14.2f}{t['encode_s']:>11.1f}{per_iteration:>8}   {per_quality}"
        )
    if versus:
        print(f"BD-rate (PSNR / MS-SSIM dB, %) against the codecs of {args.anchors}, the same images:")
        print(f"{'anchor':<14}" + "".join(f"{t['codec']:>20}" for t in table))
        for name, row in versus.items():
            cells = "".join(
                f"{row[t['codec']]['psnr']:>+10.1f} /{row[t['codec']]['ms_ssim_db']:>+7.1f} " for t in table
            )
            print(f"{name:<14}{cells}")
    at_rates = ev.psnr_at_rates({**curves, **anchors})
    print(ev.psnr_at_rates_table(at_rates))
    args.output.write_text(
        json.dumps(
            {
                "environment": environment,
                "images": sorted(names),
                "crop": args.crop,
                "model": args.model,
                "qualities": qualities,
                "table": table,
                "curves": curves,
                "bd_rate_vs_anchors": versus,
                "psnr_at_bpp": at_rates,
            },
            indent=1,
        )
    )
    print(f"rows in {args.rows}; wrote {args.output}")


if __name__ == "__main__":
    main()
