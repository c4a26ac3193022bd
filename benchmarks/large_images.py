"""Time and peak memory of compress/decompress on large images made of real photos.

    python benchmarks/large_images.py PHOTO_FOLDER [--megapixels 3 12 48] [--threads 2]
        [--model gllmm] [--exactness] [-o large_images.json]

Builds a 4:3 mosaic of the photos of ``PHOTO_FOLDER`` (sorted, each tiled as it is,
cropped at the right and bottom edges: real content, not noise) of each size, saves it
as a PNG (zlib level 1) and runs, each in a fresh process so that its peak RSS is its
own (``os.wait4``): compress (PNG read + ``codec.compress``) and decompress
(``codec.decompress`` of that file), both through the public API.  With
``--exactness`` the smallest size is also transformed whole and in stripes and the
differences are printed (float max abs and the fraction of differing 8-bit pixels).

Prints a table and the issue-23 ratios: decode time / synthesis time at 12 Mpixel
(entropy decoding and synthesis alone timed one after the other in another process), peak RSS at
48 Mpixel, and time per pixel at 48 over 3 Mpixel.  Writes JSON with the machine and
versions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def mosaic(folder: Path, megapixels: float) -> np.ndarray:
    """A 4:3 ``HxWx3`` uint8 mosaic of about ``megapixels`` of the photos in ``folder``."""
    from PIL import Image

    from mixcodec.data import list_images

    width = int(math.sqrt(megapixels * 1e6 * 4 / 3)) // 16 * 16
    height = width * 3 // 4
    out = np.empty((height, width, 3), dtype=np.uint8)
    photos = iter([])
    y = 0
    while y < height:
        x, row_height = 0, 0
        while x < width:
            photo = next(photos, None)
            if photo is None:
                photos = iter(list_images(folder))
                photo = next(photos)
            with Image.open(photo) as im:
                tile = np.asarray(im.convert("RGB"))[: height - y, : width - x]
            out[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
            x += tile.shape[1]
            row_height = max(row_height, tile.shape[0])
        y += row_height
    return out


def _child(args: list[str]) -> dict:
    """Run this script's worker in a fresh process: its JSON result plus its peak RSS (MiB)."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--worker", *args],
        stdout=subprocess.PIPE,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"worker {args} failed")
    return {**json.loads(out), "peak_rss_mib": usage.ru_maxrss / 1024}


def worker(kind: str, model: str, threads: int, png: str, mxc: str) -> dict:
    import torch
    from PIL import Image

    from mixcodec import codec
    from mixcodec.models.registry import find_model, load_model

    torch.set_num_threads(threads)
    info = find_model(model)
    load_model(info)
    Image.MAX_IMAGE_PIXELS = None  # our own mosaic
    if kind == "compress":
        t0 = time.perf_counter()
        array = np.asarray(Image.open(png).convert("RGB"))
        t1 = time.perf_counter()
        data = codec.compress(array, model=info)
        t2 = time.perf_counter()
        Path(mxc).write_bytes(data)
        return {"read_s": t1 - t0, "compress_s": t2 - t1, "bytes": len(data), "pixels": array.shape[0] * array.shape[1]}
    data = Path(mxc).read_bytes()
    t0 = time.perf_counter()
    if kind == "decompress":
        image = codec.decompress(data, model=info)
        return {"decompress_s": time.perf_counter() - t0, "pixels": image.width * image.height}
    t1, result = t0, {}
    if kind == "stages":  # each stage alone, one after the other (the sequential decoder)
        header, net, y_hat = codec.decode_latents(data, model=info)
        t2 = time.perf_counter()
        codec.reconstruct(net, y_hat, header.quality, header.height, header.width)
        result["entropy_s"], result["synthesis_s"] = t2 - t1, time.perf_counter() - t2
    return result


def exactness(model: str, threads: int, png: str) -> dict:
    """Whole-image versus striped transforms on one image (float max abs diff, differing pixels)."""
    import torch
    from PIL import Image

    from mixcodec import codec, tiling
    from mixcodec.models.registry import find_model, load_model

    torch.set_num_threads(threads)
    info = find_model(model)
    net = load_model(info)
    array = np.asarray(Image.open(png).convert("RGB"))
    whole, striped = (
        codec.image_latents(net, array, info.quality, rows=10**6),
        codec.image_latents(net, array, info.quality),
    )
    y_hat = whole[0]
    h, w = array.shape[:2]
    a = codec.reconstruct(net, y_hat, info.quality, h, w, rows=10**6).astype(int)
    b = codec.reconstruct(net, y_hat, info.quality, h, w).astype(int)
    return {
        "stripe_rows": tiling.stripe_rows(w + (-w % 64)),
        "y_max_abs_diff": (whole[0] - striped[0]).abs().max().item(),
        "z_equal": bool(torch.equal(whole[1], striped[1])),
        "pixels_max_abs_diff": int(np.abs(a - b).max()),
        "pixels_differing": float((a != b).mean()),
    }


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        kind, model, threads, png, mxc = sys.argv[2:7]
        print(
            json.dumps(
                exactness(model, int(threads), png)
                if kind == "exactness"
                else worker(kind, model, int(threads), png, mxc)
            )
        )
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="photos to tile (e.g. a training set; any folder of images)")
    parser.add_argument("--megapixels", type=float, nargs="+", default=[3, 12, 48])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="gllmm")
    parser.add_argument(
        "--exactness", action="store_true", help="also compare whole and striped transforms at the smallest size"
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("large_images.json"))
    args = parser.parse_args()

    from PIL import Image

    from mixcodec.eval import environment

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in args.megapixels:
            png, mxc = Path(tmp) / f"{mp:g}.png", Path(tmp) / f"{mp:g}.mxc"
            Image.fromarray(mosaic(args.folder, mp)).save(png, compress_level=1)
            common = [args.model, str(args.threads), str(png), str(mxc)]
            enc = _child(["compress", *common])
            dec = _child(["decompress", *common])
            if mp == 12:
                dec["stages"] = _child(["stages", *common])
            row = {"megapixels": enc["pixels"] / 1e6, "compress": enc, "decompress": dec}
            if args.exactness and mp == min(args.megapixels):
                row["exactness"] = _child(["exactness", *common])
            rows.append(row)
            print(
                f"{enc['pixels'] / 1e6:6.1f} Mpixel: read {enc['read_s']:6.2f} s, compress {enc['compress_s']:7.2f} s "
                f"({enc['peak_rss_mib']:6.0f} MiB), decompress {dec['decompress_s']:7.2f} s "
                f"({dec['peak_rss_mib']:6.0f} MiB)"
                + (
                    f"; alone: entropy decoding {dec['stages']['entropy_s']:.2f} s, "
                    f"synthesis {dec['stages']['synthesis_s']:.2f} s"
                    if "stages" in dec
                    else ""
                ),
                flush=True,
            )
            if "exactness" in row:
                print("  whole vs striped:", row["exactness"], flush=True)
    by_size = {round(r["megapixels"]): r for r in rows}
    bars = {}
    if 12 in by_size:
        d = by_size[12]["decompress"]
        bars["decode / synthesis alone at 12 Mpixel (bar <= 1.3)"] = d["decompress_s"] / d["stages"]["synthesis_s"]
    if 48 in by_size:
        bars["compress peak RSS at 48 Mpixel, GB (bar <= 2.5)"] = by_size[48]["compress"]["peak_rss_mib"] * 2**20 / 1e9
        bars["decompress peak RSS at 48 Mpixel, GB (bar <= 2.5)"] = (
            by_size[48]["decompress"]["peak_rss_mib"] * 2**20 / 1e9
        )
    if 48 in by_size and 3 in by_size:
        for kind, key in (("compress", "compress_s"), ("decompress", "decompress_s")):
            per = {mp: by_size[mp][kind][key] / by_size[mp]["megapixels"] for mp in (3, 48)}
            bars[f"{kind} time per pixel, 48 / 3 Mpixel (bar <= 1.1)"] = per[48] / per[3]
    for name, value in bars.items():
        print(f"{name}: {value:.2f}")
    args.output.write_text(
        json.dumps(
            {
                "environment": environment(),
                "model": args.model,
                "threads": args.threads,
                "folder": str(args.folder),
                "rows": rows,
                "bars": bars,
            },
            indent=1,
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
