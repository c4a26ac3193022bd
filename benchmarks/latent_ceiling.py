"""What limits the high qualities: the transforms, the rounding, or the latent width M?

    python benchmarks/latent_ceiling.py ../shared/data/kodak --limit 4 [--model gllmm] [--qualities 1,4,8]

Per image (padded to a multiple of 64 like the codec does; PSNR on 8-bit RGB of the
original area):

* ``q<Q> unquantized``: ``g_s(g_a(x))`` with the gains of quality Q and no rounding;
  what the transforms can carry at all;
* ``q<Q> rounded``: ``g_s(round(g_a(x)))``, the image a file of quality Q decodes to
  (the float synthesis; files use the same values);
* ``PCA-k``: the best *linear* code of the same width, fitted to the image itself: every
  16x16 block (768 values, one latent position) projected on the image's own first k
  principal components, k = M and 2M.  A learned transform that does no better than
  PCA-M is limited by M, not by training.

Prints a table and a JSON line with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mixcodec import codec
from mixcodec.data import list_images
from mixcodec.eval import environment, psnr_rgb
from mixcodec.models.registry import find_model, load_model

BLOCK = 16  # pixels per latent position along each side


def pca_psnr(array: np.ndarray, components: int) -> float:
    """PSNR of the image's 16x16x3 blocks projected on their own first ``components`` principal components."""
    h, w = (s - s % BLOCK for s in array.shape[:2])
    blocks = (
        array[:h, :w]
        .astype(np.float64)
        .reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK, 3)
        .transpose(0, 2, 1, 3, 4)
        .reshape(-1, 3 * BLOCK**2)
    )
    centred = blocks - blocks.mean(0)
    basis = np.linalg.svd(centred, full_matrices=False)[2][:components]
    error = centred - centred @ basis.T @ basis
    return float(10 * np.log10(255**2 / np.mean(error**2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--model", default="gllmm")
    parser.add_argument("--qualities", default="1,4,8")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    info = find_model(args.model)
    net = load_model(info)
    qualities = [float(q) for q in args.qualities.split(",")]
    m = info.config.m
    columns = [f"q{q:g} {kind}" for q in qualities for kind in ("unquantized", "rounded")] + [
        f"PCA-{m}",
        f"PCA-{2 * m}",
    ]
    print(f"{info.name} (N={info.config.n}, M={m}); PSNR-RGB in dB")
    print(f"{'image':<14}" + "".join(f"{c:>17}" for c in columns))
    results = []
    for path in list_images(args.dataset)[: args.limit]:
        array = np.asarray(Image.open(path).convert("RGB"))
        h, w = array.shape[:2]
        x = codec._pad(torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255)
        row = {}
        with torch.no_grad():
            for q in qualities:
                y = net.analyse(x, q)
                for kind, latent in (("unquantized", y), ("rounded", torch.round(y))):
                    row[f"q{q:g} {kind}"] = psnr_rgb(array, codec.reconstruct(net, latent, q, h, w))
        row[f"PCA-{m}"], row[f"PCA-{2 * m}"] = pca_psnr(array, m), pca_psnr(array, 2 * m)
        results.append({"image": path.name, **row})
        print(f"{path.name:<14}" + "".join(f"{row[c]:>17.2f}" for c in columns))
    means = {c: float(np.mean([r[c] for r in results])) for c in columns}
    print(f"{'mean':<14}" + "".join(f"{means[c]:>17.2f}" for c in columns))
    print(json.dumps({"model": info.name, "m": m, "mean": means, "images": results, **environment()}))


if __name__ == "__main__":
    main()
