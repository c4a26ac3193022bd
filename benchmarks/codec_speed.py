"""Encode/decode speed and peak memory per image, for each shipped model, at 1 and 2 threads.

    python benchmarks/codec_speed.py ../shared/data/kodak [--limit 4] [--repeats 3] [-o speed.json]
        [--compressai-python ../venvs/cai/bin/python]
    python benchmarks/codec_speed.py ../shared/data/kodak --limit 6 --repeats 1 --threads 2 \
        --models gllmm:4,weights-archive/gllmm-v7.safetensors:4     # a file beside the shipped one

Each (codec, thread count) runs in a fresh process so peak memory (max RSS) is its
own.  When ``compressai`` is importable (by this Python, or by the one given with
``--compressai-python``, e.g. a virtual environment with a torch that torchvision
supports), its ``Cheng2020Attention`` (random weights: speed does not depend on
training, and no download is possible here) at the same N runs on the same images
in the same run, and the table shows our/their ratio.
Prints a table and writes JSON with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(kind: str, model: str, threads: int, images: list[str], repeats: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    if kind == "mixcodec":
        from mixcodec import codec
        from mixcodec.models.registry import find_model, load_model

        name, _, quality = model.partition(":")
        info = find_model(name, int(quality) if quality else None)  # an installed name or a weight file
        load_model(info)

        def encode(a):
            return codec.compress(a, model=info)

        def decode(d):
            return codec.decompress(d, model=info)

        n = info.config.n
    else:
        from compressai.models import Cheng2020Attention

        n = int(model)
        net = Cheng2020Attention(N=n).eval()
        net.update(force=True)

        def to_tensor(a):
            x = torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255
            h, w = x.shape[2:]
            return torch.nn.functional.pad(x, (0, -w % 64, 0, -h % 64), mode="replicate")

        def encode(a):
            with torch.no_grad():
                return net.compress(to_tensor(a))

        def decode(d):
            with torch.no_grad():
                return net.decompress(d["strings"], d["shape"])

    enc, dec = [], []
    for a in arrays:
        e, d = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            data = encode(a)
            t1 = time.perf_counter()
            decode(data)
            t2 = time.perf_counter()
            e.append(t1 - t0)
            d.append(t2 - t1)
        enc.append(statistics.median(e))
        dec.append(statistics.median(d))
    return {
        "codec": kind,
        "model": model,
        "n": n,
        "threads": threads,
        "encode_s": statistics.mean(enc),
        "decode_s": statistics.mean(dec),
        "per_image_encode_s": enc,
        "per_image_decode_s": dec,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("-o", "--output", type=Path, default=Path("speed.json"))
    parser.add_argument(
        "--models",
        help="comma-separated NAME:QUALITY of installed models, or FILE.safetensors:QUALITY of weight files "
        "to time side by side with them (an archived version, a candidate); default: every installed model",
    )
    parser.add_argument(
        "--compressai-python", default=sys.executable, help="Python interpreter that can import compressai"
    )
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "MODEL", "THREADS"), help=argparse.SUPPRESS)
    parser.add_argument("--images", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, model, threads = args.worker
        print(json.dumps(worker(kind, model, int(threads), args.images, args.repeats)))
        return

    from mixcodec.data import list_images
    from mixcodec.eval import environment
    from mixcodec.models.registry import installed_models

    images = [str(p) for p in list_images(args.dataset)[: args.limit]]
    jobs = [("mixcodec", f"{i.name}:{i.quality}") for i in installed_models()]
    if args.models:
        wanted = args.models.split(",")
        files = [("mixcodec", spec) for spec in wanted if spec.partition(":")[0].endswith(".safetensors")]
        jobs = [job for job in jobs if job[1] in wanted] + files
        unknown = [spec for spec in wanted if spec not in {model for _, model in jobs}]
        if unknown:
            parser.error(f"--models: no installed model {', '.join(unknown)} (`mixcodec models` lists them)")
    if subprocess.run([args.compressai_python, "-c", "import compressai"], capture_output=True).returncode == 0:
        jobs += [("compressai", str(n)) for n in sorted({i.config.n for i in installed_models()})]
    else:
        print(f"{args.compressai_python} cannot import compressai: no side-by-side comparison (see the README)")
    width = max(14, *(len(model) + 2 for _, model in jobs))
    results = []
    for kind, model in jobs:
        for threads in map(int, args.threads.split(",")):
            python = args.compressai_python if kind == "compressai" else sys.executable
            cmd = [
                python,
                "-W",
                "ignore",
                __file__,
                str(args.dataset),
                "--repeats",
                str(args.repeats),
                "--worker",
                kind,
                model,
                str(threads),
                "--images",
                *images,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(
                f"{kind:<11}{model:<{width}}N={r['n']:<5}threads={threads}  "
                f"encode {r['encode_s']:.2f} s  decode {r['decode_s']:.2f} s  peak {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    theirs = {(r["n"], r["threads"]): r for r in results if r["codec"] == "compressai"}
    for r in results:
        ref = theirs.get((r["n"], r["threads"]))
        if r["codec"] == "mixcodec" and ref:
            print(
                f"{r['model']} vs compressai cheng2020-attn N={r['n']}, {r['threads']} threads: "
                f"decode {ref['decode_s'] / r['decode_s']:.1f}x faster, "
                f"encode {ref['encode_s'] / r['encode_s']:.1f}x faster"
            )
    theirs_versions = subprocess.run(
        [args.compressai_python, "-c", "import compressai, torch; print(compressai.__version__, torch.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    args.output.write_text(
        json.dumps(
            {
                "environment": environment(),
                "compressai_torch_versions": theirs_versions,
                "images": images,
                "results": results,
            },
            indent=1,
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
