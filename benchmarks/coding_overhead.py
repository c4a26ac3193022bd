"""Real file bytes vs the model's own estimate of the bits, per image and in total.

    python benchmarks/coding_overhead.py ../shared/data/kodak [--model gllmm] [--quality Q] [--schedule wavefront]

The estimate is ``-sum(log2 p)`` of the rounded latents under the float model used in
training; the file is coded through the exact integer path.  Prints a table and the
total ratio ``stream bytes / estimated bytes`` (header bytes are listed separately).
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
from mixcodec.eval import environment
from mixcodec.losses import bits_per_image
from mixcodec.models.registry import find_model, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--model", default="gllmm")
    parser.add_argument("--quality", type=int)
    parser.add_argument("--schedule", default="wavefront")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    info = find_model(args.model, args.quality)
    net = load_model(info)
    total_stream = total_estimate = total_header = 0
    print(f"{'image':<14}{'file B':>9}{'header B':>9}{'streams B':>11}{'estimate B':>12}{'ratio':>8}")
    for path in list_images(args.dataset)[: args.limit]:
        array = np.asarray(Image.open(path).convert("RGB"))
        data = codec.compress(array, model=info, schedule=args.schedule)
        _, z_stream, y_stream = codec.bitstream.parse(data)
        x = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].contiguous().float() / 255
        with torch.no_grad():
            estimate = bits_per_image(net(codec._pad(x), info.quality, noise=False)).item() / 8
        streams = len(z_stream) + len(y_stream)
        total_stream += streams
        total_estimate += estimate
        total_header += len(data) - streams
        print(
            f"{path.name:<14}{len(data):>9}{len(data) - streams:>9}{streams:>11}"
            f"{estimate:>12.0f}{streams / estimate:>8.4f}"
        )
    print(
        f"{'total':<14}{total_stream + total_header:>9}{total_header:>9}{total_stream:>11}"
        f"{total_estimate:>12.0f}{total_stream / total_estimate:>8.4f}"
    )
    print(
        json.dumps(
            {
                "model": f"{info.name} q{info.quality}",
                "schedule": args.schedule,
                "ratio": total_stream / total_estimate,
                **environment(),
            }
        )
    )


if __name__ == "__main__":
    main()
