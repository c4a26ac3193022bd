"""Entropy-family ablation (Gaussian vs GMM vs GLLMM ...) on the same latents, from real files.

    python benchmarks/entropy_ablation.py --data ../shared/data/train --kodak ../shared/data/kodak \\
        [--model gllmm] [--quality 4] [--families gaussian,gmm,gllmm] [--steps 2000] [-o ablation.json]

The transforms, the hyperprior and the quality gains of an installed model are kept
frozen, so every variant codes *the same* ``ŷ`` and ``ẑ`` and decodes to the same
image: only the rate differs, and it differs only through the entropy model.  For
each family the 5x5 context convolution and the entropy-parameter network are
trained from the same fresh initialization (seed) on the same cached latents of
training crops with :func:`mixcodec.refit.refit` (rounded latents, qualities drawn
uniformly from the model's levels, code length ``-log2 P(ŷ | ẑ)``); then every Kodak image is compressed
to a real ``.mxc`` file with each variant at ``--quality`` (and the first
``--check`` files are decoded to check the latents).  The shipped model's own entropy
model (trained jointly with the transforms) is listed for reference.

This is the entropy half of the papers' ablations at a CPU budget; the transform
half (plain residual blocks vs CRM, trained from scratch) is ``transform_ablation.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mixcodec import codec
from mixcodec.data import list_images
from mixcodec.entropy.distributions import ENTROPY_FAMILIES
from mixcodec.eval import environment
from mixcodec.models.context_model import ContextMixtureModel
from mixcodec.models.registry import export, find_model, load_model, read_infos
from mixcodec.refit import REFIT_MODULES, cached_latents, refit


def variant(base: ContextMixtureModel, family: str, seed: int) -> ContextMixtureModel:
    """A model of ``family`` with ``base``'s transforms, hyperprior and gains, and a freshly
    initialized context and entropy-parameter network (the same draw for every family up to
    the output layer, whose width depends on the family)."""
    torch.manual_seed(seed)
    model = ContextMixtureModel(dataclasses.replace(base.config, family=family))
    kept = {k: v for k, v in base.state_dict().items() if k.split(".")[0] not in REFIT_MODULES}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    assert not unexpected and all(k.split(".")[0] in REFIT_MODULES for k in missing)
    return model


def kodak_bytes(info, images: list[np.ndarray], check: int) -> tuple[int, int]:
    """Total file bytes of ``images`` coded with ``info``, and how many were decoded and checked."""
    total = 0
    for i, array in enumerate(images):
        data = codec.compress(array, model=info)
        total += len(data)
        if i < check:
            _, net, y_decoded = codec.decode_latents(data, info)
            x = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].contiguous().float() / 255
            y_hat, _ = codec.quantize_latents(net, codec._pad(x), info.quality)
            if not torch.equal(y_decoded, y_hat):
                raise SystemExit(f"{info.name}: decoded latents differ from the encoder's on image {i}")
    return total, min(check, len(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="training images (latents of random crops are cached)")
    parser.add_argument("--kodak", type=Path, required=True, help="evaluation images (real files)")
    parser.add_argument("--model", default="gllmm")
    parser.add_argument("--quality", type=int, default=4)
    parser.add_argument("--families", default="gaussian,gmm,gllmm")
    parser.add_argument("--crops", type=int, default=1024)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="(from scratch; mixcodec refit starts from trained weights at 3e-4)"
    )
    parser.add_argument(
        "--check", type=int, default=2, help="files per variant decoded and compared with the encoder's latents"
    )
    parser.add_argument("--limit", type=int, help="first images of --kodak only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    families = args.families.split(",")
    for family in families:
        if family not in ENTROPY_FAMILIES:
            parser.error(f"unknown family {family!r}; choose from {', '.join(ENTROPY_FAMILIES)}")

    base_info = find_model(args.model, args.quality)
    base = load_model(base_info)
    start = time.monotonic()
    y_hats, hypers = cached_latents(base, args.data, args.crops, args.crop, args.seed)
    print(f"cached {len(y_hats)} crops of {args.crop}x{args.crop} in {time.monotonic() - start:.0f} s")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in list_images(args.kodak)[: args.limit]]
    pixels = sum(a.shape[0] * a.shape[1] for a in images)

    rows = []
    shipped_bytes, _ = kodak_bytes(base_info, images, 0)
    rows.append(
        {
            "variant": f"{base_info.name} as shipped (trained jointly)",
            "family": base_info.config.family,
            "bpp": 8 * shipped_bytes / pixels,
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        for family in families:
            start = time.monotonic()
            model = variant(base, family, args.seed)
            trace = refit(model, y_hats, hypers, args.steps, args.batch, args.lr, args.seed)
            path = Path(folder) / f"ablation-{family}.safetensors"
            export(
                model.state_dict(),
                model.config,
                path,
                name=f"ablation-{family}",
                lmbdas=[i.lmbda for i in read_infos(base_info.path)],
            )
            info = read_infos(path)[args.quality - 1]
            total, checked = kodak_bytes(info, images, args.check)
            rows.append(
                {
                    "variant": f"{family} (retrained here)",
                    "family": family,
                    "params_per_channel": model.spec.params_per_channel,
                    "bpp": 8 * total / pixels,
                    "train_bits_per_element": trace,
                    "decoded_and_checked": checked,
                    "seconds": time.monotonic() - start,
                }
            )
            print(
                f"{family:<20} {rows[-1]['bpp']:.4f} bpp  "
                f"(training bits/element {trace[0]:.3f} -> {trace[-1]:.3f}, {rows[-1]['seconds']:.0f} s)"
            )

    reference = next((r["bpp"] for r in rows[1:] if r["family"] == "gllmm"), rows[-1]["bpp"])
    print(
        f"\n{args.model} q{args.quality}, {len(images)} images of {args.kodak.name}, same ŷ/ẑ/image for every row; "
        f"{args.steps} steps x {args.batch} crops of {args.crop}x{args.crop} from {args.crops} cached crops"
    )
    print(f"{'variant':<40}{'params/ch':>10}{'bpp':>9}{'vs gllmm':>10}")
    for r in rows:
        print(
            f"{r['variant']:<40}{r.get('params_per_channel', ''):>10}{r['bpp']:>9.4f}"
            f"{100 * (r['bpp'] / reference - 1):>+9.2f}%"
        )
    if args.output:
        result = {
            "model": f"{args.model} q{args.quality}",
            "images": len(images),
            "args": {k: str(v) for k, v in vars(args).items()},
            "rows": rows,
            "environment": environment(),
        }
        args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
