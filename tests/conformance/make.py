"""Make, extend and check the conformance bitstreams (run from the repository root).

    python tests/conformance/make.py            add the files of PLAN that the manifest lacks
    python tests/conformance/make.py --check    decode and re-encode every entry, write nothing
    python tests/conformance/make.py --release-src DIR --release COMMIT
                                                add files written by an earlier release's own code
                                                (DIR: its ``src`` tree, e.g. from ``git archive``)

What is here: ``images/`` (tiny PNGs: odd sizes, grayscale, 1x1), ``models/`` (tiny random
models, one per backbone x entropy family, N = M = 8, two qualities, made once with a fixed
seed and then kept as files), ``files/`` (the ``.mxc`` files) and ``manifest.json``: per
file its weights (an installed ``name@version`` or a file of ``models/``), quality, source
image, the SHA-256 of the file, of its decoded pixels (``numpy.asarray(image).tobytes()``,
HxWx3 or HxW uint8), of its latents (``ŷ`` as little-endian int32, shape (1, M, H/16, W/16))
and of its *float64 reference* (``reference_sha256``: the same ``ŷ`` synthesized in float64,
clamped, times 255, rounded, HxWx3 uint8).

The decoded pixels come from a float32 synthesis, whose last bits depend on the kind of CPU
(docs/exactness.md): on another kind of machine than the one that recorded an entry, a few
values that lie within a hair of a rounding boundary land on its other side (measured: an
Intel Xeon with AVX-512 decodes 17 of the 86 entries recorded on an AMD EPYC to 1-2 values
that differ by one level, each within 3.4e-4 of the boundary; float32 and float64 differ by at most
0.004 levels).  Such an entry conforms when its float64 reference is the recorded one (the
float64 synthesis is the same on any machine) and its float32 pixels differ from it only by
one level where the reference lies within :data:`ROUNDING_MARGIN` of a boundary.  The
reference hashes of the entries made before 0.6.3 were added in the eighteenth session.

Entries are never rewritten: an existing file must keep decoding to the same pixels and
latents for ever (``tests/test_conformance.py`` checks every one in the default test run,
and that re-encoding the image gives the same bytes).  To add a model version, add its
release to the catalog (``weights-archive/catalog.py build``) and run this script; commit
the new files with it.
Files of a release before 0.2.0 name the whole-file digest of their weights
(``"encoder"`` is that release's commit); re-encoding them today gives the same streams
under the model digest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mixcodec.models import releases

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MANIFEST = HERE / "manifest.json"
#: Folders of weights the entries need: the tiny models here and the repository's archive of released weights.
MODEL_FOLDERS = (HERE / "models", ROOT / "weights-archive")

#: The first version of each model coded here by the current encoder (the manifest began with these; files of
#: earlier releases' own code come in through ``--release-src``).
FIRST_CODED = {"gllmm": 7, "gllmm-msssim": 2}
#: Released models, each coded at its lowest and highest quality on SHIPPED_IMAGES: every version of the package's
#: catalog (``mixcodec/models/releases.json``) from FIRST_CODED on, so a release only needs the catalog rebuilt.
SHIPPED = tuple(f"{r.name}@{r.version}" for r in releases.catalog() if r.version >= FIRST_CODED[r.name])
SHIPPED_IMAGES = ("rgb-37x53.png", "gray-21x30.png")
BACKBONES = ("residual", "crm")
FAMILIES = ("gaussian", "gmm", "laplacian-mixture", "logistic-mixture", "gllmm")
#: Tiny models code the i-th image at quality ``TINY_QUALITIES[i % 3]`` (1.5: between the two trained levels).
TINY_QUALITIES = (1, 2, 1.5)
#: Images with metadata (format version 3 files), in ``images/metadata/``, coded by ``METADATA_MODEL`` at both
#: qualities: EXIF orientation 6 (coded upright) with a Display-P3 ICC profile, and orientation 1 with ICC, EXIF
#: and XMP.
METADATA_IMAGES = ("p3-orientation6-40x24.png", "p3-exif-xmp-33x21.png")
METADATA_MODEL = "models/tiny-crm-gllmm.safetensors"


def test_image(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic HxWx3 uint8 image: gradients, a flat block, an edge and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width, 1), yy * 255 / max(height, 1), (xx * 7 + yy * 3) % 64 * 4], axis=2)
    base[: height // 2, : width // 3] = 200
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def make_images() -> None:
    """Write the source images that do not exist yet."""
    (HERE / "images").mkdir(exist_ok=True)
    images = {
        "rgb-1x1.png": Image.fromarray(test_image(1, 1, 0)),
        "rgb-37x53.png": Image.fromarray(test_image(37, 53, 1)),
        "gray-21x30.png": Image.fromarray(test_image(21, 30, 2)[:, :, 0]),
        "rgb-64x80.png": Image.fromarray(test_image(64, 80, 3)),
        "rgb-70x9.png": Image.fromarray(test_image(70, 9, 4)),
    }
    for name, image in images.items():
        if not (HERE / "images" / name).exists():
            image.save(HERE / "images" / name)
    make_metadata_images()


def make_metadata_images() -> None:
    """Write the images of :data:`METADATA_IMAGES` that do not exist yet (PNG: iCCP, eXIf, iTXt XMP)."""
    from PIL import PngImagePlugin

    sys.path.insert(0, str(HERE.parent))
    from photos import icc_profile, phone_exif, xmp_packet

    folder = HERE / "images" / "metadata"
    folder.mkdir(exist_ok=True)
    xmp = PngImagePlugin.PngInfo()
    xmp.add_itxt("XML:com.adobe.xmp", xmp_packet().decode("utf-8"))
    options = {
        "p3-orientation6-40x24.png": (test_image(24, 40, 5), {"exif": phone_exif(orientation=6, maker_note=200)}),
        "p3-exif-xmp-33x21.png": (
            test_image(21, 33, 6),
            {"exif": phone_exif(orientation=1, maker_note=100), "pnginfo": xmp},
        ),
    }
    for name, (pixels, extra) in options.items():
        if not (folder / name).exists():
            Image.fromarray(pixels).save(folder / name, icc_profile=icc_profile(), **extra)


def make_tiny_models() -> None:
    """Write the tiny models that do not exist yet (seeded; the files, not the seed, are the reference)."""
    from mixcodec.models.context_model import ContextMixtureModel, ModelConfig
    from mixcodec.models.registry import export

    (HERE / "models").mkdir(exist_ok=True)
    for index, (backbone, family) in enumerate((b, f) for b in BACKBONES for f in FAMILIES):
        path = HERE / "models" / f"tiny-{backbone}-{family}.safetensors"
        if path.exists():
            continue
        torch.manual_seed(1000 + index)
        config = ModelConfig(backbone=backbone, family=family, n=8, m=8, hidden=(24, 32), qualities=2)
        model = ContextMixtureModel(config)
        model.gains.init_from_lmbdas([0.002, 0.03])
        with torch.no_grad():  # larger hyper-latents, so that z is not all zeros
            for layer in model.h_a:
                if isinstance(layer, torch.nn.Conv2d):
                    layer.weight.mul_(2.5)
        export(model.state_dict(), config, path, name=f"tiny-{backbone}-{family}", lmbdas=[0.002, 0.03])


def plan() -> list[tuple[str, str, float]]:
    """``(model, image, quality)`` of every file made by the current encoder."""
    from mixcodec.models.registry import find_model

    jobs = []
    for spec in SHIPPED:
        top = find_model(spec).config.qualities
        jobs += [(spec, image, q) for image in SHIPPED_IMAGES for q in (1, top)]
    images = sorted(p.name for p in (HERE / "images").glob("*.png"))
    for backbone in BACKBONES:
        for family in FAMILIES:
            model = f"models/tiny-{backbone}-{family}.safetensors"
            jobs += [(model, image, TINY_QUALITIES[i % len(TINY_QUALITIES)]) for i, image in enumerate(images)]
    jobs += [(METADATA_MODEL, f"metadata/{image}", q) for image in METADATA_IMAGES for q in (1, 2)]
    return jobs


def entry_id(model: str, image: str, quality: float) -> str:
    return (
        f"{Path(model).stem.split('@')[0]}{'-v' + model.split('@')[1] if '@' in model else ''}"
        f"-{Path(image).stem}-q{quality:g}"
    )


def weights(model: str) -> str:
    """The argument of ``find_model`` for a manifest's model field."""
    return str(HERE / model) if model.endswith(".safetensors") else model


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decoded_hashes(data: bytes) -> tuple[str, str]:
    """``(pixels, latents)`` SHA-256 of decoding ``data`` with the installed weights it names."""
    from mixcodec import codec

    header, _, y_hat = codec.decode_latents(data)
    pixels = np.asarray(codec.decompress(data))
    return sha256(pixels.tobytes()), sha256(y_hat.to(torch.int32).numpy().astype("<i4").tobytes())


#: Distance (8-bit levels) from a rounding boundary within which a float32 decode may round
#: the other way than the float64 reference; 5x the largest difference measured between the two.
ROUNDING_MARGIN = 0.02


def reference_values(data: bytes) -> np.ndarray:
    """The decoded ``ŷ`` of ``data`` synthesized in float64: HxWx3 float64 in 8-bit levels
    (clamped, before rounding)."""
    import copy

    from mixcodec import codec

    header, net, y_hat = codec.decode_latents(data)
    with torch.no_grad():
        wide = copy.deepcopy(net).to(torch.float64)
        x_hat = wide.synthesize(y_hat.double(), header.quality)[0, :, : header.height, : header.width]
    return (x_hat.clamp(0, 1) * 255).permute(1, 2, 0).numpy()


def reference_hash(values: np.ndarray) -> str:
    """SHA-256 of the float64 reference rounded to uint8."""
    return sha256(np.round(values).astype(np.uint8).tobytes())


def other_machine_problems(data: bytes, entry: dict) -> list[str]:
    """What is wrong with the pixels of an entry that decodes to other pixels than recorded:
    nothing when its float64 reference is the recorded one and the float32 pixels differ from it
    only by one level, only where the reference is within :data:`ROUNDING_MARGIN` of a boundary."""
    from mixcodec import codec

    values = reference_values(data)
    if reference_hash(values) != entry["reference_sha256"]:
        return [f"{entry['id']}: decodes to other pixels, and its float64 reference changed too"]
    off = codec.decode_pixels(data)[1].astype(np.int64) - np.round(values).astype(np.int64)
    boundary = np.abs(values - np.floor(values) - 0.5) < ROUNDING_MARGIN
    if np.abs(off).max() > 1 or np.any((off != 0) & ~boundary):
        return [f"{entry['id']}: decodes to other pixels than its float64 reference, away from rounding boundaries"]
    return []


def use_model_folders() -> None:
    """Make the weights of every entry visible to the registry (this process and its children)."""
    os.environ["MIXCODEC_MODELS"] = os.pathsep.join(map(str, MODEL_FOLDERS))


def read_manifest() -> dict:
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {"entries": []}


def write_manifest(manifest: dict) -> None:
    manifest["entries"].sort(key=lambda e: e["id"])
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")


def add_current(manifest: dict) -> None:
    """Encode every job of :func:`plan` that the manifest lacks."""
    from mixcodec import codec

    known = {e["id"] for e in manifest["entries"]}
    (HERE / "files").mkdir(exist_ok=True)
    for model, image, quality in plan():
        ident = entry_id(model, image, quality)
        if ident in known:
            continue
        data = codec.compress(Image.open(HERE / "images" / image), model=weights(model), quality=quality)
        (HERE / "files" / f"{ident}.mxc").write_bytes(data)
        pixels, latents = decoded_hashes(data)
        manifest["entries"].append(
            {
                "id": ident,
                "file": f"files/{ident}.mxc",
                "image": f"images/{image}",
                "model": model,
                "quality": quality,
                "encoder": "current",
                "sha256": sha256(data),
                "pixels_sha256": pixels,
                "latents_sha256": latents,
            }
        )
        print(f"added {ident} ({len(data)} B)")


#: Run by the earlier release's own code: compress and decode one image, print the decoded pixels' SHA-256.
_RELEASE_SCRIPT = """
import hashlib, sys
import numpy as np
from PIL import Image
import mixcodec
data = mixcodec.compress(Image.open(sys.argv[1]), model=sys.argv[3], quality=float(sys.argv[4]))
open(sys.argv[2], "wb").write(data)
print(hashlib.sha256(np.asarray(mixcodec.decompress(data)).tobytes()).hexdigest())
"""


def add_release(manifest: dict, source: Path, commit: str) -> None:
    """Add files written and decoded by an earlier release's code (``source``: its ``src`` tree)
    with the default model it shipped, at its default and highest quality, on SHIPPED_IMAGES."""
    env = {**os.environ, "PYTHONPATH": str(source), "MIXCODEC_MODELS": ""}
    (HERE / "files").mkdir(exist_ok=True)
    known = {e["id"] for e in manifest["entries"]}
    for image in SHIPPED_IMAGES:
        for quality in (4, 8):
            ident = f"release-{commit}-gllmm-{Path(image).stem}-q{quality}"
            if ident in known:
                continue
            out = HERE / "files" / f"{ident}.mxc"
            proc = subprocess.run(
                [sys.executable, "-c", _RELEASE_SCRIPT, str(HERE / "images" / image), str(out), "gllmm", str(quality)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            data = out.read_bytes()
            pixels, latents = decoded_hashes(data)
            if pixels != proc.stdout.strip():
                sys.exit(f"{ident}: this build decodes other pixels than release {commit} did")
            manifest["entries"].append(
                {
                    "id": ident,
                    "file": f"files/{ident}.mxc",
                    "image": f"images/{image}",
                    "model": "gllmm",
                    "quality": quality,
                    "encoder": commit,
                    "sha256": sha256(data),
                    "pixels_sha256": pixels,
                    "latents_sha256": latents,
                }
            )
            print(f"added {ident} ({len(data)} B), decoded as release {commit} did")


def check_entry(entry: dict) -> list[str]:
    """What is wrong with one entry today (empty: it conforms)."""
    from mixcodec import bitstream, codec
    from mixcodec.errors import MixcodecError
    from mixcodec.models.registry import find_model, find_written

    problems = []
    data = (HERE / entry["file"]).read_bytes()
    if sha256(data) != entry["sha256"]:
        return [f"{entry['id']}: the file itself changed"]
    try:
        pixels, latents = decoded_hashes(data)
    except MixcodecError as exc:  # e.g. other PMF tables than the encoder's: the stream reads as damaged
        return [f"{entry['id']}: does not decode ({exc})"]
    if latents != entry["latents_sha256"]:
        problems.append(f"{entry['id']}: decodes to other latents")
    if pixels != entry["pixels_sha256"]:  # on another kind of machine, or changed
        problems += other_machine_problems(data, entry)
    header = bitstream.parse(data)[0]
    model = (
        weights(entry["model"])
        if entry["encoder"] == "current"
        else str(find_written(header.model, header.digest).path)
    )
    again = codec.compress(Image.open(HERE / entry["image"]), model=find_model(model, entry["quality"]))
    if entry["encoder"] != "current":  # written before model digests: the same streams under the new digest
        old, new = bitstream.parse(data), bitstream.parse(again)
        old[0].digest = new[0].digest
        data = bitstream.pack(*old)
    if again != data:
        problems.append(f"{entry['id']}: re-encoding the image gives other bytes")
    return problems


def add_references(manifest: dict) -> None:
    """Record the float64 reference of every entry that lacks it: new ones, and those made before
    it was recorded (an addition: the file, its latents and its pixels stay as they are)."""
    for entry in manifest["entries"]:
        if "reference_sha256" not in entry:
            entry["reference_sha256"] = reference_hash(reference_values((HERE / entry["file"]).read_bytes()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="check every entry, write nothing")
    parser.add_argument("--release-src", type=Path, help="src tree of an earlier release whose files to add")
    parser.add_argument("--release", help="that release's commit (names its entries)")
    args = parser.parse_args()
    use_model_folders()
    manifest = read_manifest()
    if args.check:
        problems = [p for entry in manifest["entries"] for p in check_entry(entry)]
        print(
            "\n".join(problems) or f"all {len(manifest['entries'])} conformance files decode and re-encode as recorded"
        )
        sys.exit(1 if problems else 0)
    make_images()
    make_tiny_models()
    if args.release_src is not None:
        if not args.release:
            parser.error("--release-src needs --release")
        add_release(manifest, args.release_src.resolve(), args.release)
    else:
        add_current(manifest)
    add_references(manifest)
    write_manifest(manifest)


if __name__ == "__main__":
    main()
