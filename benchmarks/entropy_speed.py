"""Speed of the exact entropy path alone (coding ``ŷ`` given the hyper features), against
another checkout of mixcodec, in alternating rounds.

    python benchmarks/entropy_speed.py ../shared/data/kodak [--limit 2] [--quality 4] [--rounds 5]
        [--against ../main/src] [--threads 1] [-o entropy_speed.json]

Each round runs one fresh process per source tree (this checkout's ``src``, then the one
given with ``--against``), alternating, so that the load of a shared machine falls on
both alike.  A process encodes the first ``--limit`` images with its own code, then times
:meth:`IntegerContextCodec.compress` and :meth:`IntegerContextCodec.decompress` of each
image's ``ŷ`` (a warm-up pass first, untimed).  Reports the median seconds per image
over rounds and images, and whether both trees wrote the same files and decoded the same
latents (SHA-256).  Prints a table and writes JSON with the machine and versions.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(images: list[str], model: str, quality: int, threads: int) -> dict:
    """Seconds to code and to decode each image's ``ŷ``, and digests of the files and latents."""
    import numpy as np
    import torch
    from PIL import Image

    from mixcodec import codec
    from mixcodec.models.registry import find_model

    torch.set_num_threads(threads)
    info = find_model(model, quality)
    files = [codec.compress(np.asarray(Image.open(p).convert("RGB")), model=info) for p in images]
    result: dict = {"encode_s": [], "decode_s": [], "files": [], "latents": []}
    for data in files:
        header, y_stream, hyper, loaded, _ = codec._open(data, info)
        context = loaded.context
        # the thread count of the exact path, where the tree has one (older trees: one thread)
        extra = {"threads": threads} if "threads" in inspect.signature(context.decompress).parameters else {}
        y_hat = context.decompress(y_stream, hyper, header.active, header.schedule, **extra)  # warm-up
        start = time.perf_counter()
        context.compress(y_hat, hyper, header.schedule, **extra)
        middle = time.perf_counter()
        y_hat = context.decompress(y_stream, hyper, header.active, header.schedule, **extra)
        result["encode_s"].append(middle - start)
        result["decode_s"].append(time.perf_counter() - middle)
        result["files"].append(hashlib.sha256(data).hexdigest())
        result["latents"].append(hashlib.sha256(y_hat.numpy().tobytes()).hexdigest())
    return result


def run(source: Path, args: argparse.Namespace, images: list[str]) -> dict:
    """One worker process with ``source`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(source.resolve()), "OMP_WAIT_POLICY": "PASSIVE"}
    spec = json.dumps([images, args.model, args.quality, args.threads])
    out = subprocess.run(
        [sys.executable, __file__, "--worker", spec], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def revision(source: Path) -> str:
    """The git commit of the checkout holding ``source`` (``+`` if its tracked files differ from it)."""
    git = ["git", "-C", str(source)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "."], capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("+" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, nargs="?")
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--model", default="gllmm")
    parser.add_argument("--quality", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--against", type=Path, help="the src folder of another checkout")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("-o", "--output", type=Path, default=Path("entropy_speed.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*json.loads(args.worker))))
        return

    from mixcodec.data import list_images
    from mixcodec.eval import environment

    images = [str(p) for p in list_images(args.dataset)[: args.limit]]
    sources = {"this checkout": Path(__file__).resolve().parents[1] / "src"}
    if args.against:
        sources[str(args.against)] = args.against
    runs: dict[str, list[dict]] = {name: [] for name in sources}
    for _ in range(args.rounds):
        for name, source in sources.items():
            runs[name].append(run(source, args, images))
    print(
        f"{args.model} q{args.quality}, {len(images)} images x {args.rounds} rounds, {args.threads} thread(s); "
        "median seconds per image of IntegerContextCodec.compress / .decompress"
    )
    print(f"{'source':<40}{'commit':<12}{'encode s':>10}{'decode s':>10}  same files and latents as this checkout")
    summary = {}
    reference = runs["this checkout"][0]
    for name, results in runs.items():
        encode = statistics.median(s for r in results for s in r["encode_s"])
        decode = statistics.median(s for r in results for s in r["decode_s"])
        same = all(r["files"] == reference["files"] and r["latents"] == reference["latents"] for r in results)
        commit = revision(sources[name])
        summary[name] = {"commit": commit, "encode_s": encode, "decode_s": decode, "same_bits": same}
        print(f"{name:<40}{commit:<12}{encode:10.3f}{decode:10.3f}  {same}")
    args.output.write_text(
        json.dumps(
            {
                "environment": environment(),
                "model": f"{args.model}:{args.quality}",
                "threads": args.threads,
                "images": images,
                "summary": summary,
                "runs": runs,
            },
            indent=1,
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
