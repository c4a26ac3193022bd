"""The ``mixcodec`` command.

Exit codes: 0 on success, 2 on bad input: every :class:`~.errors.MixcodecError` is
printed as one line on stderr, without a traceback (anything else is a bug and keeps
its traceback).  Outputs are written atomically (temporary file + rename); inputs are
never overwritten and existing outputs only with ``--force``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import click
from PIL import Image, UnidentifiedImageError

from . import __version__, bitstream
from . import metadata as photo_metadata
from .bitstream import Metadata
from .codec import compress, decompress
from .errors import InputError, MixcodecError
from .models.registry import DEFAULT_MODEL, find_model, installed_models
from .refine import EFFORT_ITERATIONS, effort_iterations

EXIT_BAD_INPUT = 2


class BadInput(click.ClickException):
    """One-line error with exit code 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file=None) -> None:
        click.echo(f"mixcodec: error: {self.message}", err=True)


def refuse_overwrite(path: Path, force: bool) -> None:
    """Raise :class:`BadInput` if ``path`` exists and ``force`` is not set."""
    if path.exists() and not force:
        raise BadInput(f"{path} exists (use --force to overwrite)")


def write_atomic(path: Path, data: bytes, force: bool) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    refuse_overwrite(path, force)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_input(path: Path) -> bytes:
    """The bytes of an input file (:class:`InputError` when it cannot be read)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


#: Pillow plugins for more input formats, used when installed: (module, function that
#: registers it, or ``None`` where importing registers).
OPTIONAL_OPENERS = (("pillow_heif", "register_heif_opener"), ("pillow_jxl", None))


def _register_optional_openers() -> None:
    import importlib

    for module_name, function in OPTIONAL_OPENERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if function is not None:
            getattr(module, function)()


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image (any format Pillow and the installed
    :data:`OPTIONAL_OPENERS` read), checking its size before decoding pixels.

    Raises:
        InputError: the file cannot be read, is not an image Pillow knows, or is too large.
    """
    _register_optional_openers()
    Image.MAX_IMAGE_PIXELS = bitstream.MAX_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
            bitstream.check_size(image.height, image.width)
            image.load()
        except UnidentifiedImageError:
            raise InputError(f"{path} is not an image file that Pillow can read") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"{path}: {exc}") from None
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return image


def _outputs(inputs: tuple[Path, ...], output: Path | None, out_dir: Path | None, suffix: str) -> list[Path]:
    if output is not None and out_dir is not None:
        raise BadInput("give either -o or --out-dir, not both")
    if output is not None and len(inputs) > 1:
        raise BadInput("-o takes a single input; use --out-dir for several")
    if output is not None:
        outs = [output]
    else:
        folder = out_dir
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create {folder}: {exc.strerror or exc}") from None
        outs = [(folder or p.parent) / (p.stem + suffix) for p in inputs]
    resolved_inputs = {p.resolve() for p in inputs}
    for out in outs:
        if out.resolve() in resolved_inputs:
            raise BadInput(f"refusing to overwrite the input {out}")
    if len({o.resolve() for o in outs}) != len(outs):
        raise BadInput("several inputs would be written to the same output")
    return outs


def _run_each(inputs, outputs, job, force: bool) -> None:
    """Run ``job(input) -> bytes`` for each file, with a progress bar for several files."""
    failures = 0
    pairs = list(zip(inputs, outputs))
    if len(pairs) > 1:
        from tqdm import tqdm

        pairs = tqdm(pairs, unit="file", file=sys.stderr)
    for src, dst in pairs:
        try:
            refuse_overwrite(dst, force)  # before the job: an existing output costs no coding
            write_atomic(dst, job(src), force)
        except BadInput as exc:
            failures += 1
            exc.show()
        except MixcodecError as exc:
            failures += 1
            BadInput(f"{src}: {exc}").show()
    if failures:
        sys.exit(EXIT_BAD_INPUT)


#: Halvings of the interval between two levels when a file must fit a size (1/64 of a level).
FIT_STEPS = 6


def _largest_that_fits(
    image: Image.Image, model: str, levels: int, limit: int, metadata: Metadata | None = None, effort: int = 0
) -> bytes:
    """The file of the highest quality of ``model`` whose size (metadata included) is at most
    ``limit`` bytes: the highest level that fits, then bisection towards the next level (file
    sizes grow with the quality).  ``metadata`` and ``effort`` as :func:`mixcodec.compress`
    takes them (every file tried is refined: up to ``levels + FIT_STEPS`` encodes)."""
    files = {}

    def size(quality: float) -> int:
        files[quality] = compress(image, model=find_model(model, quality), metadata=metadata, effort=effort)
        return len(files[quality])

    fitting = next((q for q in range(levels, 0, -1) if size(q) <= limit), None)
    if fitting is None:
        smallest = files[1]
        extra = bitstream.parse(smallest)[0].metadata.size()
        note = f", {extra} of them metadata (--strip drops it)" if extra else ""
        raise InputError(
            f"even the lowest quality needs {len(smallest)} bytes "
            f"({8 * len(smallest) / (image.width * image.height):.4f} bpp{note}), over the limit of {limit}"
        )
    low, high = float(fitting), float(fitting + 1)
    if fitting < levels:
        for _ in range(FIT_STEPS):
            middle = (low + high) / 2
            low, high = (middle, high) if size(middle) <= limit else (low, middle)
    return files[low]


def _model_set(spec: str, separator: str) -> list:
    """The models of one curve: an installed name (all its qualities), or weight files joined by ``separator``."""
    from .models.registry import read_infos

    paths = [Path(p) for p in spec.split(separator)]
    if all(p.suffix == ".safetensors" for p in paths):
        return [info for p in paths for info in read_infos(p)]
    chosen = find_model(spec)
    return [i for i in installed_models() if i.sha256 == chosen.sha256]


class _Group(click.Group):
    """The command group: a :class:`MixcodecError` from any command is one line and exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MixcodecError as exc:
            raise BadInput(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, package_name="mixcodec")
def main() -> None:
    """Learned image compression with Gaussian-Laplacian-Logistic mixture models."""


@main.command("compress")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Output file (one input only).")
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False), help="Folder for the outputs.")
@click.option(
    "--model",
    default=DEFAULT_MODEL,
    show_default=True,
    help="Installed model name (its newest version), NAME@VERSION, or a weight file.",
)
@click.option(
    "--quality",
    type=float,
    default=None,
    help="1 to the model's number of levels, fractions between levels (default: the middle level).",
)
@click.option(
    "--target-bpp", type=float, help="Highest quality (to 1/64 of a level) whose file fits this many bits per pixel."
)
@click.option("--max-bytes", type=int, help="Highest quality (to 1/64 of a level) whose file fits this many bytes.")
@click.option(
    "--strip",
    is_flag=True,
    help="Leave out the ICC profile, EXIF and XMP (kept by default; the orientation is applied either way).",
)
@click.option(
    "--effort",
    type=int,
    default=0,
    show_default=True,
    help=f"Encoder effort 0-{len(EFFORT_ITERATIONS) - 1}: above 0 the latents are refined for each image "
    f"({', '.join(map(str, EFFORT_ITERATIONS[1:]))} iterations; smaller files at the same quality, minutes per photo).",
)
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def compress_command(inputs, output, out_dir, model, quality, target_bpp, max_bytes, strip, effort, force) -> None:
    """Compress images to .mxc files (default: next to each input), upright and with their
    colour profile, EXIF and XMP; sizes and --target-bpp/--max-bytes count the metadata."""
    if (target_bpp is not None or max_bytes is not None) and quality is not None:
        raise BadInput("--quality cannot be combined with --target-bpp/--max-bytes")
    iterations = effort_iterations(effort)
    info = find_model(model, quality)
    outs = _outputs(inputs, output, out_dir, ".mxc")

    metadata = Metadata() if strip else None

    def job(path: Path) -> bytes:
        image = open_image(path)
        if target_bpp is None and max_bytes is None:
            if not iterations:
                return compress(image, model=info, metadata=metadata)
            from tqdm import tqdm

            with tqdm(total=iterations, unit="it", desc=f"refining {path.name}", leave=False, file=sys.stderr) as bar:
                return compress(image, model=info, metadata=metadata, effort=effort, progress=lambda: bar.update(1))
        limit = max_bytes if max_bytes is not None else int(target_bpp * image.width * image.height / 8)
        return _largest_that_fits(image, str(info.path), info.config.qualities, limit, metadata, effort)

    _run_each(inputs, outs, job, force)


def output_format(path: Path) -> str:
    """The Pillow format that writes ``path``, by its extension (``BadInput`` for none)."""
    from .pillow_plugin import FORMAT

    suffix = path.suffix.lower()
    name = Image.registered_extensions().get(suffix)
    if name is None or name not in Image.SAVE or name == FORMAT:
        raise BadInput(f"{path}: no image format to write for the extension {suffix!r} (e.g. .png, .jpg, .webp, .tif)")
    return name


@main.command("decompress")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Output image (one input only); its extension chooses the format: .png, .jpg, .webp, .tif, ...",
)
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False), help="Folder for the outputs (PNG).")
@click.option(
    "--model",
    "weights",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Weight file to decode with (default: the installed weights each file names).",
)
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def decompress_command(inputs, output, out_dir, weights, force) -> None:
    """Decode .mxc files to images with their colour profile, EXIF and XMP (default: PNG next to
    each input; lossless WebP, JPEG at quality 95 without chroma subsampling), with the installed
    weights each file names or the weight file given."""
    from .models.registry import read_infos

    outs = _outputs(inputs, output, out_dir, ".png")
    formats = {src: output_format(dst) for src, dst in zip(inputs, outs)}
    if weights is not None and not weights.is_file():
        raise BadInput(f"no weight file {weights}")
    model = read_infos(weights)[0] if weights is not None else None

    def job(path: Path) -> bytes:
        import io

        image = decompress(read_input(path), model)
        options, dropped = photo_metadata.save_options(image, formats[path])
        if dropped:
            names = ", ".join(photo_metadata.LABELS[key] for key in dropped)
            click.echo(
                f"mixcodec: note: {path}: {formats[path]} files do not carry the {names}; written without", err=True
            )
        buffer = io.BytesIO()
        image.save(buffer, format=formats[path], **options)
        return buffer.getvalue()

    _run_each(inputs, outs, job, force)


@main.command("info")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def info_command(path: Path) -> None:
    """Describe a .mxc file: model, size, bytes, bpp, per-stream sizes."""
    from .models import releases

    data = read_input(path)
    try:
        header, z_stream, y_stream = bitstream.parse(data)
    except MixcodecError as exc:
        raise BadInput(f"{path}: {exc}") from None
    pixels = header.height * header.width
    extra = header.metadata.size()
    release = releases.find(header.digest.hex())
    known = f", {release.name} version {release.version}" if release is not None else ""
    click.echo(f"model:    {header.model} quality {header.quality:g} (weights {header.digest.hex()}{known})")
    click.echo(f"image:    {header.width}x{header.height} {header.mode}")
    click.echo(f"bytes:    {len(data)} ({8 * len(data) / pixels:.4f} bpp)")
    click.echo(
        f"streams:  z {len(z_stream)} B, y {len(y_stream)} B, "
        f"header+crc {len(data) - len(z_stream) - len(y_stream) - extra} B"
    )
    click.echo(f"metadata: {_describe_metadata(header.metadata)}")
    click.echo(f"latents:  {header.active.size}/{header.channels} channels coded, {header.schedule} schedule")


def _describe_metadata(metadata: Metadata) -> str:
    """One line: each chunk's size (and the ICC profile's description), and the bytes they take."""
    if not metadata:
        return "none"
    parts = []
    if metadata.icc_profile:
        parts.append(f"ICC profile {len(metadata.icc_profile)} B ({_icc_description(metadata.icc_profile)})")
    parts += [f"{label} {len(data)} B" for label, data in (("EXIF", metadata.exif), ("XMP", metadata.xmp)) if data]
    return ", ".join(parts) + f"; {metadata.size()} B in the file"


def _icc_description(icc_profile: bytes) -> str:
    import io

    try:
        from PIL import ImageCms

        return ImageCms.ImageCmsProfile(io.BytesIO(icc_profile)).profile.profile_description
    except (ImportError, OSError):  # Pillow without LittleCMS, or a profile it cannot read (PyCMSError is an OSError)
        return "no description"


@main.command("models")
def models_command() -> None:
    """List the installed models with their measured Kodak rate-distortion."""
    rows = installed_models()
    if not rows:
        click.echo("no models installed")
        return
    newest = {}
    for info in rows:  # sorted by version: the last one of a name is what the name means
        newest[info.name] = info.sha256
    click.echo(
        f"{'name':<16}{'v':>4}{'q':>3}{'N':>5}{'M':>5}{'lambda':>9}  "
        f"{'metric':<8}{'bpp':>7}{'PSNR':>7}{'MS-SSIM':>9}{'MB':>6}  digest"
    )
    for info in rows:
        k = info.kodak
        cells = [
            f"{k[key]:{fmt}}" if key in k else "-" for key, fmt in (("bpp", ".3f"), ("psnr", ".2f"), ("ms_ssim", ".4f"))
        ]
        version = ("-" if info.version is None else str(info.version)) + (
            "*" if newest[info.name] == info.sha256 else ""
        )
        click.echo(
            f"{info.name:<16}{version:>4}{info.quality:>3}{info.config.n:>5}{info.config.m:>5}{info.lmbda:>9.4g}  "
            f"{info.metric:<8}{cells[0]:>7}{cells[1]:>7}{cells[2]:>9}"
            f"{info.path.stat().st_size / 1e6:>6.1f}  {info.sha256[:16]}"
        )
    click.echo(
        "(v: version, * the one a bare name compresses with, NAME@V picks another; "
        "bpp, PSNR-RGB, MS-SSIM: means over the images of "
        "`export --measure` (Kodak for the shipped models), from real files; "
        "MB: the weight file, without tensors it shares with another; "
        "digest: of the tensors and config, what .mxc files name)"
    )


@main.command("eval")
@click.argument("dataset", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--models",
    default=DEFAULT_MODEL,
    show_default=True,
    help=(
        "Comma-separated installed model names (NAME@VERSION) or weight files ('' for none); "
        "a suffix :eE codes at encoder effort E (gllmm:e2)."
    ),
)
@click.option(
    "--codecs",
    default="jpeg,webp,avif,jxl,hevc",
    show_default=True,
    help="Comma-separated classic codecs ('' for none).",
)
@click.option(
    "--reference",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="CSV of published RD points to plot and compare.",
)
@click.option("--limit", type=int, help="Use only the first N images.")
@click.option(
    "--visual", multiple=True, help="Image file name in DATASET for a visual comparison at matched bpp (repeatable)."
)
@click.option(
    "--reuse",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="rows.csv of an earlier run (repeatable): its (codec, quality, image) rows are taken instead of coded again.",
)
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False))
def eval_command(dataset, models, codecs, reference, limit, visual, reuse, out) -> None:
    """Rate-distortion of models and classic codecs on a folder of images (real files)."""
    from tqdm import tqdm

    from . import eval as ev
    from .data import list_images

    images = list_images(dataset)[:limit]
    if not images:
        raise BadInput(f"no images under {dataset}")
    available = ev.classic_codecs()
    learned = []
    for name in filter(None, models.split(",")):
        spec, effort = ev.split_effort(name)
        learned.append(ev.learned_codec(_model_set(spec, "+"), effort))
    under_test = list(learned)
    reused = [r for path in reuse for r in ev.read_rows(path)]
    for name in filter(None, codecs.split(",")):
        if name not in available:
            raise BadInput(f"unknown codec {name!r} (known: {', '.join(available)})")
        candidate = available[name]()
        note = ev.missing_tools(name)
        if note:  # a codec whose tools are missing still takes part when --reuse holds all its rows
            needed = {(candidate.name, float(q), p.name) for q in candidate.qualities for p in images}
            if needed <= {(r.codec, r.quality, r.image) for r in reused}:
                click.echo(f"{name}: its tools are not installed here; its rows come from --reuse", err=True)
            else:
                click.echo(note, err=True)
                continue
        under_test.append(candidate)
    wanted = {(c.name, float(q), p.name) for c in under_test for q in c.qualities for p in images}
    rows = [r for r in reused if (r.codec, r.quality, r.image) in wanted]
    with tqdm(total=len(wanted) - len(rows), unit="file", file=sys.stderr) as bar:
        for candidate in under_test:
            rows += ev.evaluate(candidate, images, progress=lambda: bar.update(1), done=rows)
    published = ev.read_reference(reference) if reference else None
    result = ev.write_results(rows, out, published)
    ev.plot_rd(result["curves"], out / "rd.png", published)
    for name, points in result["curves"].items():
        click.echo(f"{name}:")
        for p in points:
            click.echo(
                f"  q={p['quality']:<6g} bpp={p['bpp']:.4f} PSNR={p['psnr']:.2f} MS-SSIM={p['ms_ssim']:.4f} "
                f"enc={p['encode_s']:.2f}s dec={p['decode_s']:.2f}s"
            )
    names = list(result["curves"])
    click.echo("BD-rate % (PSNR), row vs column anchor:")
    click.echo(" " * 14 + "".join(f"{n[:12]:>13}" for n in names))
    for n in names:
        click.echo(f"{n[:13]:<14}" + "".join(f"{result['bd_rate'][n][a]['psnr']:>13.1f}" for a in names))
    click.echo(ev.psnr_at_rates_table(result["psnr_at_bpp"]))
    if published:
        click.echo("BD-rate % vs published curves (PSNR / MS-SSIM dB; nan: too few points or no overlap):")
        for n in [c.name for c in learned]:
            for anchor in published:
                bd = result["bd_rate"][n][ev.PUBLISHED_PREFIX + anchor]
                click.echo(f"  {n} vs {anchor}: {bd['psnr']:.1f} / {bd['ms_ssim_db']:.1f}")
    for name in visual:
        if not learned:
            raise BadInput("--visual needs a model")
        ours = learned[0]
        target = out / f"visual-{Path(name).stem}.png"
        ev.visual_comparison(dataset / name, ours, ours.qualities[len(ours.qualities) // 2], target)
        click.echo(f"wrote {target}")
    click.echo(f"wrote {out / 'rows.csv'}, {out / 'results.json'}, {out / 'rd.png'}")


@main.command("allocate")
@click.argument("dataset", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--target-bpp", type=float, required=True, help="Budget for the whole set, in bits per pixel.")
@click.option(
    "--metric",
    type=click.Choice(["ms-ssim", "psnr"]),
    default="ms-ssim",
    show_default=True,
    help="Quality to maximize (mean over images).",
)
@click.option(
    "--models",
    default=DEFAULT_MODEL,
    show_default=True,
    help="Installed model name (all its qualities) or comma-separated weight files.",
)
@click.option(
    "--method",
    type=click.Choice(["auto", "dp", "lagrangian"]),
    default="auto",
    show_default=True,
    help=(
        "dp: exact; lagrangian: convex-hull bound and repair, for thousands of images, with its gap; "
        "auto: dp on small tables."
    ),
)
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--strip",
    is_flag=True,
    help="Leave out the images' ICC profile, EXIF and XMP (kept and counted in the budget by default).",
)
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def allocate_command(dataset, target_bpp, metric, models, method, out, strip, force) -> None:
    """Choose one model per image to maximize mean quality under a total size budget (multiple-choice knapsack)."""
    from tqdm import tqdm

    from . import allocate as al
    from .data import list_images

    infos = _model_set(models, ",")
    paths = list_images(dataset)
    if not paths:
        raise BadInput(f"no images under {dataset}")
    pixels = []
    for p in paths:
        image = open_image(p)  # InputError for a file that is not an image
        pixels.append(image.width * image.height)
    with tqdm(total=len(paths) * len(infos), unit="file", file=sys.stderr) as bar:
        table = al.encode_candidates(paths, infos, progress=lambda: bar.update(1), strip=strip)
    try:
        report = al.allocate(table, pixels, target_bpp, metric, method)
    except al.InfeasibleBudget as exc:
        raise BadInput(
            f"target of {target_bpp} bpp is infeasible: the smallest files give {8 * exc.minimum / sum(pixels):.4f} bpp"
        ) from None
    except MemoryError as exc:
        raise BadInput(f"{exc} for --method dp (try --method auto)") from None
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for row, j in zip(table, report["choice"]):
        chosen = row[j]
        write_atomic(out / (Path(chosen.image).stem + ".mxc"), chosen.data, force)
        rows.append(
            {
                "image": chosen.image,
                "model": chosen.model,
                "quality": chosen.quality_index,
                "bytes": chosen.size,
                "psnr": chosen.psnr,
                "ms_ssim": chosen.ms_ssim,
            }
        )
        click.echo(
            f"{chosen.image:<20} q{chosen.quality_index:<3} {chosen.size:>8} B  "
            f"PSNR {chosen.psnr:6.2f}  MS-SSIM {chosen.ms_ssim:.4f}"
        )
    report["images"] = rows
    (out / "allocation.json").write_text(json.dumps(report, indent=1))
    single = report["best_single_model"]
    click.echo(
        f"allocated: {report['bytes']} B = {report['bpp']:.4f} bpp (budget {report['budget_bytes']} B), "
        f"mean {report['metric']} {report['mean_score']:.4f}"
    )
    if report["method"] == "dp":
        click.echo("method: dp (exact optimum)")
    else:
        click.echo(
            f"method: lagrangian, gap {report['gap']:.2e} "
            f"(no choice under the budget has a mean {report['metric']} above {report['bound_mean_score']:.6f})"
        )
    if single:
        click.echo(
            f"best single model under the same budget: q{single['quality']} {single['bpp']:.4f} bpp, "
            f"mean {report['metric']} {single['mean_score']:.4f}"
        )
    else:
        click.echo("no single model fits the budget")


@main.command("sample")
@click.argument("output", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def sample_command(output: Path, force: bool) -> None:
    """Write a sample photo (Grace Hopper, 512x600, shipped with matplotlib) as PNG."""
    import io

    from matplotlib import cbook

    buffer = io.BytesIO()
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        image.convert("RGB").save(buffer, format="PNG")
    write_atomic(output, buffer.getvalue(), force)
    click.echo(f"wrote {output}")


@main.command("train")
@click.option("--preset", default="cpu-gllmm-n64", show_default=True, help="Preset name or TOML file.")
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path, exists=True),
    help="Folder of training images, or a packed-crop file (.npy, `mixcodec pack`).",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="Run folder (checkpoints, log)."
)
@click.option(
    "--lmbda", "lmbdas", help="Override the preset's λ ladder: comma-separated, ascending, one quality level each."
)
@click.option("--metric", type=click.Choice(["mse", "ms-ssim"]), help="Override the preset's distortion metric.")
@click.option("--steps", type=int, help="Override the preset's number of steps.")
@click.option(
    "--lr",
    type=float,
    help="Override the preset's learning rate (before its drop; e.g. a cool-down with --resume in a copy of a run).",
)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt if it exists.")
@click.option(
    "--init",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Start from another checkpoint's weights.",
)
@click.option("--minutes", type=float, help="Stop (with a checkpoint) after this many minutes.")
@click.option(
    "--val",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Validation images (e.g. Kodak), coded to real files every --val-every steps and at the end (OUT/val.csv).",
)
@click.option("--val-every", type=int, help="Override the preset's steps between validations.")
@click.option("--workers", type=int, help="Override the preset's number of DataLoader workers.")
@click.option(
    "--tensorboard",
    is_flag=True,
    help="Also write the log and validation results as TensorBoard scalars (OUT/tensorboard).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where to train (auto: CUDA when there is a GPU; cuda without one falls back to the CPU with a message).",
)
def train_command(
    preset, data, out, lmbdas, metric, steps, lr, resume, init, minutes, val, val_every, workers, tensorboard, device
) -> None:
    """Train a model (see the presets for every hyperparameter)."""
    import dataclasses
    import importlib.util

    from .train import load_preset, train

    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise BadInput("--tensorboard needs the tensorboard package: pip install 'mixcodec[tensorboard]'")

    cfg = load_preset(preset)
    try:
        lmbdas = [float(v) for v in lmbdas.split(",")] if lmbdas else None
    except ValueError:
        raise BadInput(f"--lmbda takes comma-separated numbers, got {lmbdas!r}") from None
    overrides = {
        "lmbdas": lmbdas,
        "metric": metric,
        "steps": steps,
        "lr": lr,
        "val_every": val_every,
        "workers": workers,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    train(
        cfg, data, out, resume=resume, init=init, max_minutes=minutes, val=val, tensorboard=tensorboard, device=device
    )


@main.command("pack")
@click.argument("data", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Packed-crop file (.npy)."
)
@click.option("--size", default=256, show_default=True, help="Side of the square crops in pixels.")
@click.option(
    "--max-mb", default=40.0, show_default=True, help="Size of the file in MB (10^6 bytes); as many crops as fit."
)
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def pack_command(data, output, size, max_mb, seed, force) -> None:
    """Pack random crops of a folder of images into one uint8 file for `mixcodec train --data`."""
    from .data import PACKED_SUFFIX, pack_crops, save_packed

    if output.suffix != PACKED_SUFFIX:
        raise BadInput(f"{output}: packed-crop files end in {PACKED_SUFFIX}")
    refuse_overwrite(output, force)
    try:
        crops = pack_crops(data, size, int(max_mb * 1e6), seed)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    save_packed(crops, output)
    click.echo(f"wrote {output}: {len(crops)} crops of {size}x{size} ({output.stat().st_size / 1e6:.1f} MB)")


@main.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", default=DEFAULT_MODEL, show_default=True)
@click.option(
    "--model-version",
    type=click.IntRange(min=1),
    help="Version of the model in the file (default: the output's own when it holds the same weights, "
    "else one above the newest installed or released version of --name).",
)
@click.option(
    "--measure",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help=(
        "Folder of images (e.g. Kodak) to measure from real files at every quality; "
        "the mean bpp/PSNR/MS-SSIM is stored in the file."
    ),
)
@click.option(
    "--rows",
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --measure: also write the per-image rows as CSV (for `mixcodec eval --reuse`).",
)
@click.option(
    "--base",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help=(
        "Weight file in the output's folder to share identical tensors with "
        "(a model fine-tuned from it with frozen modules)."
    ),
)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def export_command(checkpoint, output, name, model_version, measure, rows, base, force) -> None:
    """Write a training checkpoint as an fp16 safetensors weight file (one quality level per λ it was trained with)."""
    from . import eval as ev
    from .data import list_images
    from .models.context_model import ModelConfig
    from .models.registry import export, export_digest, newest_version, read_infos
    from .train import TrainConfig, load_checkpoint

    refuse_overwrite(output, force)
    if base is not None and base.resolve().parent != output.resolve().parent:
        raise BadInput(
            f"--base {base} must be in the output's folder ({output.resolve().parent}): "
            "shared tensors are looked up there"
        )
    state = load_checkpoint(checkpoint)
    train_cfg = TrainConfig(**state["train_config"])
    config = ModelConfig.from_json(state["config"])
    if model_version is None:  # re-exporting the same weights (e.g. to measure them again) keeps their version
        previous = read_infos(output) if output.is_file() else []
        same = (
            previous and previous[0].sha256 == export_digest(state["model"], config) and previous[0].version is not None
        )
        model_version = previous[0].version if same else newest_version(name) + 1
    meta = {
        "name": name,
        "lmbdas": train_cfg.lmbdas,
        "metric": train_cfg.metric,
        "train_steps": state.get("step", 0),
        "version": model_version,
    }
    infos = export(state["model"], config, output, base=base, **meta)
    if measure is not None:
        measured = ev.evaluate(ev.learned_codec(infos), list_images(measure))
        if rows is not None:
            ev.write_rows(measured, rows)
        points = ev.mean_curve(measured)[name]
        kodak = [
            {"bpp": p["bpp"], "psnr": p["psnr"], "ms_ssim": p["ms_ssim"], "images": p["images"], "set": measure.name}
            for p in points
        ]
        infos = export(state["model"], config, output, base=base, kodak=kodak, **meta)
        for p in points:
            click.echo(
                f"{measure.name} q{p['quality']:g}: {p['bpp']:.4f} bpp, {p['psnr']:.2f} dB PSNR, "
                f"MS-SSIM {p['ms_ssim']:.4f} over {p['images']} images"
            )
    click.echo(f"wrote {infos[0].path} ({infos[0].label}, {len(infos)} qualities, digest {infos[0].sha256})")


def _checkpoint_output(help: str):
    """The ``-o/--output`` option of the commands that write a training checkpoint."""
    return click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False), help=help)


@main.command("reanchor")
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--at",
    "positions",
    required=True,
    help="One real quality per level, increasing, e.g. 1.4,2.5,3.3,4,4.8,6,7,8: where each level moves to.",
)
@_checkpoint_output("Checkpoint to write (e.g. the run's last.pt after moving the old one away, then --resume).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def reanchor_command(checkpoint, positions, output, force) -> None:
    """Move the quality levels of a variable-rate training checkpoint to real qualities of it.

    Each level takes the gains the model uses at its new quality (so it codes exactly as
    before there) and the interpolated λ; train on with the λ ladder it prints."""
    from .train import atomic_save, load_checkpoint, reanchor_levels

    try:
        at = [float(v) for v in positions.split(",")]
    except ValueError:
        raise BadInput(f"--at must be comma-separated numbers, got {positions!r}") from None
    refuse_overwrite(output, force)
    moved = reanchor_levels(load_checkpoint(checkpoint), at)
    atomic_save(moved, output)
    ladder = ",".join(f"{v:g}" for v in moved["train_config"]["lmbdas"])
    click.echo(f"wrote {output}; train on with --lmbdas {ladder} (or that ladder in the preset)")


@main.command("refit")
@click.argument("checkpoint", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path, exists=True),
    help="Training images (never the evaluation set): a folder, or a packed-crop file (.npy).",
)
@_checkpoint_output("Checkpoint to write (for `mixcodec export`).")
@click.option("--steps", default=2000, show_default=True)
@click.option("--crops", default=1024, show_default=True, help="Random crops whose latents are cached.")
@click.option("--crop", default=256, show_default=True, help="Side of the crops (a multiple of 64).")
@click.option("--lr", default=3e-4, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def refit_command(checkpoint, data, output, steps, crops, crop, lr, force) -> None:
    """Refit the context and entropy-parameter networks of a training checkpoint to the rounded
    latents that files code (transforms, hyperprior and gains untouched: same images, smaller files)."""
    from .models.context_model import PAD_MULTIPLE, ContextMixtureModel, ModelConfig
    from .refit import cached_latents, refit
    from .train import atomic_save, load_checkpoint

    refuse_overwrite(output, force)
    if crop <= 0 or crop % PAD_MULTIPLE:
        raise BadInput(f"--crop must be a positive multiple of {PAD_MULTIPLE}, got {crop}")
    state = load_checkpoint(checkpoint)
    model = ContextMixtureModel(ModelConfig.from_json(state["config"]))
    model.load_state_dict(state["model"])
    y_hats, hypers = cached_latents(model, data, crops, crop)
    trace = refit(model, y_hats, hypers, steps=steps, lr=lr, progress=True)
    click.echo(
        f"bits per latent element on the cached crops: {trace[0]:.4f} (first tenth) -> {trace[-1]:.4f} (last tenth)"
    )
    atomic_save(
        {
            **state,
            "model": model.state_dict(),
            "refit": {"steps": steps, "crops": crops, "crop": crop, "lr": lr, "bits": trace},
        },
        output,
    )
    click.echo(f"wrote {output}")


if __name__ == "__main__":  # pragma: no cover
    main()
