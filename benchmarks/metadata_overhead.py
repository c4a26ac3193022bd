"""What a phone photo's metadata adds to a ``.mxc`` file.

    python benchmarks/metadata_overhead.py ../shared/data/kodak/kodim04.png [--model gllmm] [--qualities 1,4,8]

Makes a phone JPEG of the image (EXIF orientation 6, a Display P3 ICC profile, a phone
camera's EXIF block with maker note, GPS and a 160x120 thumbnail in IFD1, an XMP
packet; ``tests/photos.py``), compresses it with and without ``--strip``, and prints
the bytes of each kind of metadata in the JPEG and in the ``.mxc``, the file sizes per
quality, and what the same metadata adds to a 12-Mpixel photo at the model's measured
Kodak bpp.  Also an orientation-1 photo, whose EXIF (thumbnail included) is kept byte
for byte.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mixcodec import bitstream, codec  # noqa: E402
from mixcodec.eval import environment  # noqa: E402
from mixcodec.models.registry import find_model  # noqa: E402
from photos import phone_exif, phone_jpeg, stored_for, xmp_packet  # noqa: E402

PHONE_PIXELS = 4032 * 3024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("--model", default="gllmm")
    parser.add_argument("--qualities", default="1,4,8")
    args = parser.parse_args()
    with Image.open(args.image) as im:
        display = im.convert("RGB")
    array = np.asarray(display)
    small = np.asarray(
        display.resize((160, 120) if display.width >= display.height else (120, 160), Image.Resampling.LANCZOS)
    )
    rows = []
    for orientation in (6, 1):
        thumb = io.BytesIO()  # stored the way the camera stores the pixels
        Image.fromarray(stored_for(small, orientation)).save(thumb, format="JPEG", quality=80)
        exif = phone_exif(orientation, maker_note=2000, thumbnail=thumb.getvalue())
        jpeg = phone_jpeg(array, orientation, exif=exif, xmp=xmp_packet())
        with Image.open(io.BytesIO(jpeg)) as photo:
            for quality in [float(q) for q in args.qualities.split(",")]:
                info = find_model(args.model, quality)
                t0 = time.perf_counter()
                kept = codec.compress(photo, model=info)
                seconds = time.perf_counter() - t0
                stripped = codec.compress(photo, model=info, metadata=bitstream.Metadata())
                metadata = bitstream.parse(kept)[0].metadata
                assert len(kept) - len(stripped) == metadata.size()
                kodak_bpp = info.kodak.get("bpp", 8 * len(stripped) / (array.shape[0] * array.shape[1]))
                phone_bytes = kodak_bpp * PHONE_PIXELS / 8
                rows.append(
                    {
                        "orientation": orientation,
                        "quality": quality,
                        "jpeg_icc": len(photo.info["icc_profile"]),
                        "jpeg_exif": len(photo.info["exif"]),
                        "jpeg_xmp": len(photo.info["xmp"]),
                        "mxc_icc": len(metadata.icc_profile),
                        "mxc_exif": len(metadata.exif),
                        "mxc_xmp": len(metadata.xmp),
                        "section": metadata.size(),
                        "file_stripped": len(stripped),
                        "file_kept": len(kept),
                        "added_pct": 100 * metadata.size() / len(stripped),
                        "kodak_bpp": kodak_bpp,
                        "phone_12mp_added_pct": 100 * metadata.size() / phone_bytes,
                        "encode_s": seconds,
                    }
                )
    header = (
        f"{'orient':>6}{'q':>5}{'JPEG icc/exif/xmp B':>22}{'mxc icc/exif/xmp B':>21}{'section B':>10}"
        f"{'stripped B':>11}{'kept B':>8}{'added':>8}{'12 MP at Kodak bpp':>20}"
    )
    print(f"{args.image.name}, {array.shape[1]}x{array.shape[0]}, {args.model}")
    print(header)
    for r in rows:
        print(
            f"{r['orientation']:>6}{r['quality']:>5g}{r['jpeg_icc']:>8}/{r['jpeg_exif']}/{r['jpeg_xmp']:<6}{r['mxc_icc']:>8}/{r['mxc_exif']}/{r['mxc_xmp']:<6}"
            f"{r['section']:>9}{r['file_stripped']:>11}{r['file_kept']:>8}{r['added_pct']:>7.1f}%"
            f"{r['phone_12mp_added_pct']:>10.2f}% of {r['kodak_bpp']:.3f} bpp"
        )
    print(json.dumps({"image": args.image.name, "model": args.model, "rows": rows, **environment()}))


if __name__ == "__main__":
    main()
