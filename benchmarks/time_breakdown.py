"""Where encode and decode time goes, per stage, for one model on a few images.

    python benchmarks/time_breakdown.py ../shared/data/kodak [--limit 2] [--threads 1] [--model gllmm]
    python benchmarks/time_breakdown.py ../shared/data/train --megapixels 12 --threads 2 --decode-only

Runs compress/decompress under cProfile and reports the cumulative seconds of each
stage (mean per image): the transforms (analysis / synthesis), the hyperprior
(z coding and the integer hyper-synthesis), the entropy-parameter network (context
taps + 1x1 layers, integer arithmetic), the PMF tables, and the range coder.
cProfile sees the calling thread only: where the synthesis runs in a worker thread
beside the entropy decoding (images over one stripe, 2+ threads), its row reads 0 and
the wall-clock lines say what it costs: the entropy decoding alone
(``codec.decode_latents``), the synthesis alone (``codec.reconstruct``), their sum (the
sequential decoder) and ``decompress`` (without cProfile).
``--megapixels``: one mosaic of the folder's photos of that size
(``benchmarks/large_images.py``) instead of the first ``--limit`` images.  For an image
over one stripe the ``decompress`` line also gives the timeline of the striped decoder:
when the first rows of ``ŷ`` are final, when the entropy decoding ends, and the seconds
the synthesis worker spent in its pushes before and after that (what the overlap hid and
what was left).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

#: stage -> (module file suffix, function or ``Class.method`` name) whose cumulative time it is
_ENTROPY_STAGES = {
    "entropy parameters": ("context_coding.py", "params"),
    "PMF tables": ("context_coding.py", "_pmf_groups"),
}
STAGES = {
    "encode": {
        "analysis": ("codec.py", "image_latents"),
        "hyper (z coding + integer h_s)": [
            ("context_coding.py", "IntegerHyperprior.compress"),
            ("context_coding.py", "IntegerHyperprior.hyper"),
        ],
        **_ENTROPY_STAGES,
        "range coder": [("coding.py", "encode_symbols"), ("coding.py", "encode_table_symbols")],
    },
    "decode": {
        "synthesis": ("codec.py", "reconstruct"),
        "hyper (z coding + integer h_s)": [
            ("context_coding.py", "IntegerHyperprior.decompress"),
            ("context_coding.py", "IntegerHyperprior.hyper"),
        ],
        **_ENTROPY_STAGES,
        "range coder": [("coding.py", "decode_symbols"), ("coding.py", "decode_table_symbols")],
    },
}


def _first_line(file: str, name: str) -> int | None:
    """First line of ``Class.method`` in the mixcodec module ``file`` (``None`` for a plain name:
    every function of that name in the file matches)."""
    if "." not in name:
        return None
    import importlib

    owner, method = name.split(".")
    module = importlib.import_module("mixcodec." + file.removesuffix(".py").replace("/", "."))
    return getattr(getattr(module, owner), method).__code__.co_firstlineno


def cumulative(stats: pstats.Stats, targets) -> float:
    targets = targets if isinstance(targets, list) else [targets]
    resolved = [(f, n.rpartition(".")[2], _first_line(f, n)) for f, n in targets]
    total = 0.0
    for (filename, line, name), (_, _, _, cum, _) in stats.stats.items():
        if any(
            filename.endswith(f) and name == n and line in (first, line if first is None else first)
            for f, n, first in resolved
        ):
            total += cum
    return total


@contextlib.contextmanager
def timeline(events: dict):
    """Record the striped decoder's timeline into ``events`` (seconds from entry): ``first_rows``
    and ``entropy_end`` (the first and last rows handed to the worker) and the worker's
    pushes ``(start, end)``."""
    from mixcodec import tiling

    feed, push = tiling.BackgroundSynthesis.feed, tiling.Synthesis.push
    start = time.perf_counter()
    events.update(first_rows=None, entropy_end=None, pushes=[])

    def timed_feed(self, done, latents):
        now = time.perf_counter() - start
        if events["first_rows"] is None:
            events["first_rows"] = now
        events["entropy_end"] = now
        feed(self, done, latents)

    def timed_push(self, *args, **kwargs):
        begin = time.perf_counter() - start
        push(self, *args, **kwargs)
        events["pushes"].append((begin, time.perf_counter() - start))

    tiling.BackgroundSynthesis.feed, tiling.Synthesis.push = timed_feed, timed_push
    try:
        yield events
    finally:
        tiling.BackgroundSynthesis.feed, tiling.Synthesis.push = feed, push


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="gllmm")
    parser.add_argument("--quality", type=int)
    parser.add_argument("--megapixels", type=float, help="one mosaic of this size made of the folder's photos")
    parser.add_argument("--decode-only", action="store_true")
    parser.add_argument("-o", "--output", type=Path, default=Path("time_breakdown.json"))
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from mixcodec import codec
    from mixcodec.data import list_images
    from mixcodec.eval import environment
    from mixcodec.models.registry import find_model, load_model

    torch.set_num_threads(args.threads)
    info = find_model(args.model, args.quality)
    load_model(info)
    if args.megapixels:
        sys.path.insert(0, str(Path(__file__).parent))
        from large_images import mosaic

        images, arrays = (
            [f"mosaic of {args.megapixels:g} Mpixel from {args.dataset}"],
            [mosaic(args.dataset, args.megapixels)],
        )
    else:
        images = list_images(args.dataset)[: args.limit]
        arrays = [np.asarray(Image.open(path).convert("RGB")) for path in images]
    codec.decompress(codec.compress(arrays[0][:64, :64].copy(), model=info), model=info)  # warm-up
    report = {}
    files = [codec.compress(array, model=info) for array in arrays]
    for kind in ("decode",) if args.decode_only else ("encode", "decode"):
        sums = dict.fromkeys(STAGES[kind], 0.0)
        wall = 0.0
        for array, data in zip(arrays, files):
            profiler = cProfile.Profile()
            start = time.perf_counter()
            profiler.enable()
            codec.compress(array, model=info) if kind == "encode" else codec.decompress(data, model=info)
            profiler.disable()
            wall += time.perf_counter() - start
            stats = pstats.Stats(profiler)
            for stage, targets in STAGES[kind].items():
                sums[stage] += cumulative(stats, targets)
        n = len(images)
        report[kind] = {"total_s": wall / n, **{k: v / n for k, v in sums.items()}}
        report[kind]["other_s"] = report[kind]["total_s"] - sum(v / n for v in sums.values())
    alone = dict.fromkeys(("entropy decoding alone", "synthesis alone", "decompress"), 0.0)
    events: dict = {}
    for data in files:
        t0 = time.perf_counter()
        header, net, y_hat = codec.decode_latents(data, model=info)
        t1 = time.perf_counter()
        codec.reconstruct(net, y_hat, header.quality, header.height, header.width)
        t2 = time.perf_counter()
        with timeline(events):
            codec.decompress(data, model=info)
        t3 = time.perf_counter()
        for key, seconds in zip(alone, (t1 - t0, t2 - t1, t3 - t2)):
            alone[key] += seconds / len(files)
    print(
        f"{info.name} q{info.quality} (N={info.config.n}), {len(images)} images, {args.threads} thread(s); "
        "seconds per image (under cProfile)"
    )
    for kind, stages in report.items():
        print(f"{kind}: {stages['total_s']:.2f} s")
        for stage, seconds in stages.items():
            if stage != "total_s":
                print(f"  {stage:<32}{seconds:6.2f} s  {100 * seconds / stages['total_s']:5.1f}%")
    sequential = alone["entropy decoding alone"] + alone["synthesis alone"]
    print(
        f"decode, wall clock without cProfile: entropy decoding alone {alone['entropy decoding alone']:.2f} s, "
        f"synthesis alone {alone['synthesis alone']:.2f} s, sum (sequential) {sequential:.2f} s; "
        f"decompress {alone['decompress']:.2f} s "
        f"= {alone['decompress'] / alone['synthesis alone']:.2f}x the synthesis alone, "
        f"{alone['decompress'] / sequential:.2f}x the sum"
    )
    if events["pushes"] and events["entropy_end"] is not None:  # the last image was decoded in stripes
        end = events["entropy_end"]
        before = sum(max(0.0, min(b, end) - a) for a, b in events["pushes"])
        after = sum(max(0.0, b - max(a, end)) for a, b in events["pushes"])
        print(
            f"striped decode of the last image: first rows of ŷ final at {events['first_rows']:.1f} s, "
            f"entropy decoding over at {end:.1f} s; synthesis worker busy {before:.1f} s before that, "
            f"{after:.1f} s after it (its last push ended at {events['pushes'][-1][1]:.1f} s)"
        )
        events.update(worker_busy_before_s=before, worker_busy_after_s=after)
    args.output.write_text(
        json.dumps(
            {
                "environment": environment(),
                "model": f"{info.name}:{info.quality}",
                "threads": args.threads,
                "images": [str(p) for p in images],
                "breakdown": report,
                "decode_wall_s": alone,
                "striped_decode_timeline_s": {k: v for k, v in events.items() if k != "pushes"},
            },
            indent=1,
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
