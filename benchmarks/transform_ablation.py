"""Transform ablation: plain residual blocks (Cheng 2020) vs concatenated residual modules
(CRM, Fu et al.), trained alike and measured on real files.

    python benchmarks/transform_ablation.py --data ../shared/data/train --kodak ../shared/data/kodak \\
        --runs runs/transform-ablation [--n 32] [--steps 4000] [--seeds 0,1] \\
        [--lmbdas 0.0022,0.0088,0.0352,0.1408] [-o ablation.json]

Each backbone is trained from scratch with :func:`mixcodec.train.train` under the same
config and seed (so both see the same crops at the same quality levels in the same
order), with the same entropy family (``--family``, GLLMM by default): the only
difference is every stride-1 refinement block of ``g_a`` and ``g_s``, one residual
block or a CRM (two residual blocks in series plus an outer shortcut).  The runs are
variable-rate (one quality level per λ, levels balanced as in the shipped presets), so
one run gives a curve.  Both follow the shipped models' schedule: ``--lr``, then a
cool-down at ``--lr-final`` for the last ``--cool`` fraction of the steps, then
:func:`mixcodec.refit.refit` of the entropy model to the rounded latents of training
crops.  Every image of ``--kodak`` is then coded to a real ``.mxc`` file at every
quality; the table gives mean bpp / PSNR-RGB / MS-SSIM per quality, the BD-rate of
CRM against the residual backbone, parameter counts and seconds per training step
(CRM has twice the refinement convolutions, so it also costs more per step: compare
at equal steps *and* think of equal time).

Every seed in ``--seeds`` repeats the pair of runs from another initialization and
crop order; the BD-rate is given per seed and as their mean and range, the spread
that says whether the difference is more than noise.

With ``--train-only`` the runs are trained and nothing else, so that the backbones can
train side by side (``--backbones residual --threads 1`` and ``--backbones crm --threads
1``, one per core); the same command without it and without ``--backbones`` then refits,
measures and compares them.

``--runs`` keeps the checkpoints (``RUNS/seedS/BACKBONE``): running again with more
``--steps`` continues the runs (``--resume``) instead of starting over (the cool-down
then moves to the end of the longer run).  Each run's refit and Kodak measurement is kept
beside it (``measured.json``) and reused by a rerun with the same steps, refit and images,
so seeds can be measured as they finish.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import tempfile
from pathlib import Path

from mixcodec import eval as ev
from mixcodec.data import list_images
from mixcodec.models.registry import export
from mixcodec.models.transforms import BACKBONES
from mixcodec.refit import cached_latents, refit
from mixcodec.train import TrainConfig, train


def seconds_per_step(log: Path) -> float:
    """Mean seconds per step over the second half of a run's ``log.csv`` (after start-up)."""
    rows = list(csv.DictReader(log.open()))
    first, last = rows[len(rows) // 2], rows[-1]
    return (float(last["time_s"]) - float(first["time_s"])) / max(1, int(last["step"]) - int(first["step"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="training images")
    parser.add_argument("--kodak", type=Path, required=True, help="evaluation images (real files)")
    parser.add_argument(
        "--runs", type=Path, required=True, help="folder for the two training runs (kept; a rerun continues them)"
    )
    parser.add_argument("--backbones", default="residual,crm")
    parser.add_argument("--family", default="gllmm")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--m", type=int, default=0, help="latent channels (0: n)")
    parser.add_argument("--lmbdas", default="0.0022,0.0088,0.0352,0.1408")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lr-final", type=float, default=1e-5, help="learning rate of the cool-down")
    parser.add_argument("--cool", type=float, default=0.1, help="fraction of --steps at --lr-final")
    parser.add_argument("--refit-steps", type=int, default=1000, help="entropy-model refit after training (0: none)")
    parser.add_argument("--refit-crops", type=int, default=512, help="training crops whose latents the refit caches")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--limit", type=int, help="first images of --kodak only")
    parser.add_argument("--seeds", default="0", help="comma-separated; one pair of runs per seed")
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="train the runs and stop (to train backbones side by side, one process per core with --threads 1; "
        "a rerun without it then refits and measures them)",
    )
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    backbones = args.backbones.split(",")
    for backbone in backbones:
        if backbone not in BACKBONES:
            parser.error(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
    lmbdas = [float(v) for v in args.lmbdas.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    images = list_images(args.kodak)[: args.limit]

    curves: dict[int, dict[str, list[dict]]] = {}
    runs: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for seed in seeds:
            curves[seed], runs[seed] = {}, {}
            for backbone in backbones:
                cfg = TrainConfig(
                    architecture="gllmm",
                    backbone=backbone,
                    family=args.family,
                    n=args.n,
                    m=args.m,
                    lmbdas=lmbdas,
                    balance_levels=True,
                    crop=args.crop,
                    batch=args.batch,
                    steps=args.steps,
                    lr=args.lr,
                    lr_final=args.lr_final,
                    lr_drop_at=1.0 - args.cool,
                    threads=args.threads,
                    checkpoint_minutes=5.0,
                    log_every=max(1, min(50, args.steps // 10)),
                    seed=seed,
                )
                run = args.runs / f"seed{seed}" / backbone
                model = train(cfg, args.data, run, resume=True)
                if args.train_only:
                    continue
                wanted = {
                    "steps": args.steps,
                    "refit_steps": args.refit_steps,
                    "refit_crops": args.refit_crops,
                    "images": [str(path) for path in images],
                }
                measured = run / "measured.json"
                done = json.loads(measured.read_text()) if measured.exists() else {}
                if done.get("key") != wanted:
                    bits = []
                    if args.refit_steps:
                        y_hats, hypers = cached_latents(model, args.data, args.refit_crops, seed=seed)
                        bits = refit(model, y_hats, hypers, steps=args.refit_steps, seed=seed)
                    name = f"{backbone}-s{seed}"
                    infos = export(
                        model.state_dict(),
                        model.config,
                        Path(folder) / f"{name}.safetensors",
                        name=name,
                        lmbdas=lmbdas,
                        metric="mse",
                    )
                    curve = ev.mean_curve(ev.evaluate(ev.learned_codec(infos), images))[name]
                    done = {"key": wanted, "curve": curve, "refit_bits": bits}
                    measured.write_text(json.dumps(done, indent=1))
                curves[seed][backbone] = done["curve"]
                bits = done["refit_bits"]
                runs[seed][backbone] = {
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "transform_parameters": sum(
                        p.numel() for param, p in model.named_parameters() if param.startswith(("g_a.", "g_s."))
                    ),
                    "seconds_per_step": seconds_per_step(run / "log.csv"),
                    "refit_bits_per_element": [bits[0], bits[-1]] if bits else None,
                    "config": dataclasses.asdict(cfg),
                }

    if args.train_only:
        return
    print(
        f"\n{args.steps} steps x {args.batch} crops of {args.crop}x{args.crop} (lr {args.lr:g}, "
        f"{args.lr_final:g} for the last {args.cool:.0%}), refit {args.refit_steps} steps, N={args.n}, "
        f"{args.family}; {len(images)} images of {args.kodak.name}, real files"
    )
    print(f"{'backbone':<10}{'seed':>5}{'transform params':>18}{'s/step':>8}   bpp / PSNR / MS-SSIM per quality")
    for seed in seeds:
        for backbone, points in curves[seed].items():
            run = runs[seed][backbone]
            cells = "  ".join(f"{p['bpp']:.3f}/{p['psnr']:.2f}/{p['ms_ssim']:.4f}" for p in points)
            print(f"{backbone:<10}{seed:>5}{run['transform_parameters']:>18,}{run['seconds_per_step']:>8.3f}   {cells}")
    bd: dict[str, dict] = {}
    if len(backbones) == 2:
        anchor, other = backbones
        per_seed = {seed: ev.bd_table(curves[seed])[other][anchor] for seed in seeds}
        for seed, row in per_seed.items():
            print(
                f"seed {seed}: BD-rate of {other} vs {anchor}: {row['psnr']:+.1f} % (PSNR), "
                f"{row['ms_ssim_db']:+.1f} % (MS-SSIM dB)"
            )
        for metric in ("psnr", "ms_ssim_db"):
            values = [row[metric] for row in per_seed.values()]
            bd[metric] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
        print(
            f"mean over {len(seeds)} seeds: {bd['psnr']['mean']:+.1f} % (PSNR, {bd['psnr']['min']:+.1f} .. "
            f"{bd['psnr']['max']:+.1f}), {bd['ms_ssim_db']['mean']:+.1f} % (MS-SSIM dB, "
            f"{bd['ms_ssim_db']['min']:+.1f} .. {bd['ms_ssim_db']['max']:+.1f})"
        )
        bd["per_seed"] = {str(seed): row for seed, row in per_seed.items()}
    if args.output:
        result = {
            "images": len(images),
            "args": {k: str(v) for k, v in vars(args).items()},
            "curves": {str(seed): c for seed, c in curves.items()},
            "runs": {str(seed): r for seed, r in runs.items()},
            "bd_rate": bd,
            "environment": ev.environment(),
        }
        args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
