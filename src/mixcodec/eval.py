"""Rate-distortion evaluation from real files: our models and classic codecs.

Every image is encoded to bytes and decoded; the rate is ``8 * len(file) / pixels``
(headers included) and the distortion is measured on the decoded 8-bit RGB image.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim

from . import __version__, codec, refine
from .errors import InputError
from .models.registry import ModelInfo


@dataclass
class Row:
    """One image coded at one quality."""

    codec: str
    quality: float
    image: str
    bytes: int
    bpp: float
    psnr: float
    ms_ssim: float
    ms_ssim_db: float
    encode_s: float
    decode_s: float


def psnr_rgb(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) between two HxWx3 uint8 images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse)) if mse > 0 else float("inf")


def ms_ssim_rgb(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (5 scales) on 8-bit RGB, data range 255; NaN for images under 161 px a side.

    Computed in float32: 5x faster than float64 on CPU, and within 1e-6 of it.
    """
    if min(a.shape[:2]) < 161:
        return float("nan")
    ta = torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float()
    tb = torch.from_numpy(b.copy()).permute(2, 0, 1)[None].float()
    return float(ms_ssim(ta, tb, data_range=255))


@dataclass
class CodecUnderTest:
    """A codec at a list of qualities: ``encode(array, quality) -> bytes``, ``decode(bytes) -> array``."""

    name: str
    qualities: list[float]
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]


def _pillow_codec(name: str, fmt: str, qualities: list[float], **options) -> CodecUnderTest:
    def encode(array: np.ndarray, quality: float) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt, quality=int(quality), **options)
        return buffer.getvalue()

    def decode(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    return CodecUnderTest(name, qualities, encode, decode)


def _command_codec(
    name: str, qualities: list[float], suffix: str, encode_args, decoders: tuple[str, ...]
) -> CodecUnderTest:
    """A codec driven through command-line tools (``encode_args(src, dst, quality)``; the
    first installed of ``decoders`` is run as ``decoder SRC DST``)."""
    decoder = next((d for d in decoders if shutil.which(d)), decoders[0])

    def run(args: list[str]) -> None:
        subprocess.run(args, check=True, capture_output=True, timeout=600)

    def encode(array: np.ndarray, quality: float) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.png", Path(tmp) / f"out{suffix}"
            Image.fromarray(array).save(src)
            run(encode_args(str(src), str(dst), quality))
            return dst.read_bytes()

    def decode(data: bytes) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / f"in{suffix}", Path(tmp) / "out.png"
            src.write_bytes(data)
            run([decoder, str(src), str(dst)])
            return np.asarray(Image.open(dst).convert("RGB"))

    return CodecUnderTest(name, qualities, encode, decode)


#: External tools per codec (encoder, then alternative decoders), and the Debian packages that provide them.
EXTERNAL_TOOLS = {
    "jxl": (("cjxl", ("djxl",)), "libjxl-tools"),
    "hevc": (("heif-enc", ("heif-dec", "heif-convert")), "libheif-examples"),
}


def classic_codecs() -> dict[str, Callable[[], CodecUnderTest]]:
    """Classic codecs with quality sweeps covering about 0.1-1.5 bpp on Kodak: JPEG
    (libjpeg-turbo, default settings), WebP (method 6) and AVIF (speed 4) through Pillow;
    JPEG XL (``cjxl -q``) and HEVC intra (``heif-enc -q``, x265) through their tools."""
    return {
        "jpeg": lambda: _pillow_codec("jpeg", "JPEG", [5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90]),
        "webp": lambda: _pillow_codec("webp", "WEBP", [2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90], method=6),
        "avif": lambda: _pillow_codec("avif", "AVIF", [5, 10, 20, 30, 40, 50, 60, 70, 80], speed=4),
        "jxl": lambda: _command_codec(
            "jxl",
            [5, 15, 25, 35, 45, 55, 65, 75, 85, 92],
            ".jxl",
            lambda s, d, q: ["cjxl", s, d, "-q", str(int(q)), "--quiet"],
            ("djxl",),
        ),
        "hevc": lambda: _command_codec(
            "hevc",
            [2, 5, 10, 15, 20, 25, 30, 35, 40],
            ".heic",
            lambda s, d, q: ["heif-enc", "-q", str(int(q)), "-o", d, s],
            ("heif-dec", "heif-convert"),
        ),
    }


def missing_tools(name: str) -> str | None:
    """Why codec ``name`` cannot run here (a one-line note), or None."""
    (encoder, decoders), package = EXTERNAL_TOOLS.get(name, (("", ()), ""))
    if not encoder:
        return None
    absent = [t for t in (encoder,) if shutil.which(t) is None] + (
        [] if any(shutil.which(d) for d in decoders) else [decoders[0]]
    )
    return f"{name} skipped: {', '.join(absent)} not installed (Debian: apt-get install {package})" if absent else None


#: Suffix of a model spec that names an encoder effort level: ``gllmm:e2``, ``gllmm@7:e2``
#: (``@`` names the version), ``a.safetensors+b.safetensors:e2``.
EFFORT_SEPARATOR = ":e"


def split_effort(spec: str) -> tuple[str, int]:
    """``(model spec, effort)`` of a spec ending in ``:eE`` (``E`` digits); other specs are
    returned whole, at effort 0.

    Raises:
        InputError: ``E`` is not an effort level.
    """
    base, separator, effort = spec.rpartition(EFFORT_SEPARATOR)
    if not separator or not effort.isdigit():
        return spec, 0
    refine.effort_iterations(int(effort))
    return base, int(effort)


def learned_codec(infos: list[ModelInfo], effort: int = 0) -> CodecUnderTest:
    """Qualities of one of our models (:func:`~.models.registry.read_infos`) as a codec, at an
    encoder effort level; named ``NAME`` at effort 0 and ``NAME:eE`` above."""
    by_quality = {float(i.quality): i for i in infos}
    refine.effort_iterations(effort)

    def encode(array: np.ndarray, quality: float) -> bytes:
        return codec.compress(array, model=by_quality[quality], effort=effort)

    def decode(data: bytes) -> np.ndarray:
        header = codec.bitstream.parse(data)[0]
        return np.asarray(codec.decompress(data, model=by_quality[float(header.quality)]).convert("RGB"))

    name = f"{infos[0].name}{EFFORT_SEPARATOR}{effort}" if effort else infos[0].name
    return CodecUnderTest(name, sorted(by_quality), encode, decode)


def evaluate(
    codec_: CodecUnderTest, images: Iterable[Path], progress: Callable[[], None] | None = None, done: Iterable[Row] = ()
) -> list[Row]:
    """Encode and decode every image at every quality; one :class:`Row` each.

    ``done``: rows measured earlier (e.g. :func:`read_rows`); their (codec, quality, image)
    are not coded again (and not returned).
    """
    skip = {(r.codec, r.quality, r.image) for r in done}
    rows = []
    for path in images:
        todo = [q for q in codec_.qualities if (codec_.name, float(q), path.name) not in skip]
        if not todo:
            continue
        with Image.open(path) as im:
            original = np.asarray(im.convert("RGB"))
        pixels = original.shape[0] * original.shape[1]
        for quality in todo:
            t0 = time.perf_counter()
            data = codec_.encode(original, quality)
            t1 = time.perf_counter()
            decoded = codec_.decode(data)
            t2 = time.perf_counter()
            score = ms_ssim_rgb(original, decoded)
            rows.append(
                Row(
                    codec_.name,
                    quality,
                    path.name,
                    len(data),
                    8 * len(data) / pixels,
                    psnr_rgb(original, decoded),
                    score,
                    float(-10 * np.log10(max(1 - score, 1e-12))),
                    t1 - t0,
                    t2 - t1,
                )
            )
            if progress:
                progress()
    return rows


def mean_curve(rows: list[Row]) -> dict[str, list[dict]]:
    """Per codec, the mean bpp/PSNR/MS-SSIM over images at each quality, sorted by bpp."""
    curves: dict[str, list[dict]] = {}
    for name in sorted({r.codec for r in rows}):
        points = []
        for quality in sorted({r.quality for r in rows if r.codec == name}):
            sel = [r for r in rows if r.codec == name and r.quality == quality]
            point = {"quality": quality, "images": len(sel)}
            for key in ("bpp", "psnr", "ms_ssim", "ms_ssim_db", "encode_s", "decode_s"):
                point[key] = float(np.mean([getattr(r, key) for r in sel]))
            points.append(point)
        curves[name] = sorted(points, key=lambda p: p["bpp"])
    return curves


def bd_rate(rate_a: list[float], dist_a: list[float], rate_b: list[float], dist_b: list[float]) -> float:
    """Bjøntegaard delta rate (percent) of curve B relative to anchor A.

    Cubic fits of ``log(rate)`` as a function of distortion (PSNR or MS-SSIM dB),
    integrated over the overlapping distortion interval.  Negative: B needs fewer bits.
    Points with a non-finite value (e.g. MS-SSIM of images too small for it) are left
    out; returns NaN when the curves do not overlap or have fewer than 4 points left.
    """
    curves = []
    for rate, dist in ((rate_a, dist_a), (rate_b, dist_b)):
        rate, dist = np.asarray(rate, dtype=float), np.asarray(dist, dtype=float)
        keep = np.isfinite(rate) & np.isfinite(dist) & (rate > 0)
        curves.append((rate[keep], dist[keep]))
    (rate_a, dist_a), (rate_b, dist_b) = curves
    if min(len(rate_a), len(rate_b)) < 4:
        return float("nan")
    lo = max(min(dist_a), min(dist_b))
    hi = min(max(dist_a), max(dist_b))
    if hi <= lo:
        return float("nan")
    integrals = []
    for rate, dist in ((rate_a, dist_a), (rate_b, dist_b)):
        poly = np.polyint(np.polyfit(dist, np.log(rate), 3))
        integrals.append((np.polyval(poly, hi) - np.polyval(poly, lo)) / (hi - lo))
    return float((np.exp(integrals[1] - integrals[0]) - 1) * 100)


def environment() -> dict:
    """Machine and versions, recorded with every result."""
    import PIL

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "mixcodec": __version__,
        "threads": torch.get_num_threads(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def write_rows(rows: list[Row], path: Path) -> None:
    """Per-image rows as CSV (one column per :class:`Row` field)."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def read_rows(path: Path) -> list[Row]:
    """Rows written by :func:`write_rows`.

    Raises:
        InputError: the file cannot be read, does not have exactly the columns of :class:`Row`,
            or a value does not parse.
    """
    types = {f.name: f.type for f in fields(Row)}
    cast = {"str": str, "int": int, "float": float}
    try:
        with Path(path).open(newline="") as handle:
            reader = csv.DictReader(handle)
            records = list(reader) if set(reader.fieldnames or ()) == set(types) else None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if records is None:
        raise InputError(f"{path} is not a rows file of `mixcodec eval` (columns: {', '.join(types)})")
    try:
        return [Row(**{k: cast[types[k]](v) for k, v in record.items()}) for record in records]
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: a value does not parse ({exc})") from None


#: Prefix of published curves (:func:`read_reference`) among the curves of a result.
PUBLISHED_PREFIX = "published:"


def write_results(rows: list[Row], out: Path, published: dict[str, list[dict]] | None = None) -> dict:
    """Write ``rows.csv`` and ``results.json`` (curves, BD-rates, PSNR at :data:`RATES_OF_INTEREST`,
    environment) to ``out``.

    ``published`` curves (from :func:`read_reference`) take part in the BD-rate table
    under the name ``published:<codec>``.
    """
    out.mkdir(parents=True, exist_ok=True)
    write_rows(rows, out / "rows.csv")
    curves = mean_curve(rows)
    everything = {**curves, **{PUBLISHED_PREFIX + k: v for k, v in (published or {}).items()}}
    result = {
        "environment": environment(),
        "curves": curves,
        "bd_rate": bd_table(everything),
        "psnr_at_bpp": psnr_at_rates(curves),
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return result


RATES_OF_INTEREST = (0.25, 0.5, 1.0)
"""bpp at which ``mixcodec eval`` reports each curve's PSNR (``results.json``: ``psnr_at_bpp``)."""


def quality_at_rate(points: list[dict], bpp: float, key: str = "psnr") -> float:
    """``key`` (PSNR or MS-SSIM dB) of a mean curve at ``bpp``, linear between its two neighbouring points.

    ``points`` as :func:`mean_curve` gives them (sorted by bpp).  NaN where the curve does not
    reach ``bpp`` on both sides: no extrapolation.
    """
    rates = [p["bpp"] for p in points]
    if not points or not rates[0] <= bpp <= rates[-1]:
        return float("nan")
    return float(np.interp(bpp, rates, [p[key] for p in points]))


def psnr_at_rates(curves: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Every curve's PSNR (dB) at :data:`RATES_OF_INTEREST`, keyed by ``str(bpp)`` ("0.25", ..., "1.0")."""
    return {
        name: {str(bpp): quality_at_rate(points, bpp) for bpp in RATES_OF_INTEREST} for name, points in curves.items()
    }


def psnr_at_rates_table(at_rates: dict[str, dict[str, float]]) -> str:
    """:func:`psnr_at_rates` as the text table that ``mixcodec eval`` prints."""
    lines = [
        "PSNR (dB) at equal rate, linear on the mean curves (nan: the curve does not reach it):",
        " " * 14 + "".join(f"{f'{bpp:g} bpp':>11}" for bpp in RATES_OF_INTEREST),
    ]
    for name, values in at_rates.items():
        lines.append(f"{name[:13]:<14}" + "".join(f"{value:>11.2f}" for value in values.values()))
    return "\n".join(lines)


def bd_table(curves: dict[str, list[dict]]) -> dict[str, dict[str, dict[str, float]]]:
    """BD-rate (PSNR and MS-SSIM dB) of every curve (rows) against every anchor (columns)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, points in curves.items():
        table[name] = {}
        for anchor, ref in curves.items():
            table[name][anchor] = {
                metric: bd_rate(
                    [p["bpp"] for p in ref],
                    [p[metric] for p in ref],
                    [p["bpp"] for p in points],
                    [p[metric] for p in points],
                )
                for metric in ("psnr", "ms_ssim_db")
            }
    return table


def plot_rd(curves: dict[str, list[dict]], path: Path, reference: dict[str, list[dict]] | None = None) -> None:
    """RD plot (PNG): bpp vs PSNR and bpp vs MS-SSIM dB; ``reference`` curves dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, metric, label in ((axes[0], "psnr", "PSNR-RGB (dB)"), (axes[1], "ms_ssim_db", "MS-SSIM (dB)")):
        for style, group in (("-o", curves), ("--", reference or {})):
            for name, points in group.items():
                pts = [p for p in points if np.isfinite(p.get(metric, np.nan))]
                if pts:
                    ax.plot([p["bpp"] for p in pts], [p[metric] for p in pts], style, label=name, markersize=3)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.set_xlim(0, 1.6)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_reference(path: Path) -> dict[str, list[dict]]:
    """Published points from a CSV with columns ``codec, bpp, psnr_rgb_db, ms_ssim``."""
    import csv

    curves: dict[str, list[dict]] = {}
    with Path(path).open() as handle:
        for row in csv.DictReader(handle):
            point = {
                "bpp": float(row["bpp"]),
                "psnr": float(row["psnr_rgb_db"]) if row.get("psnr_rgb_db") else float("nan"),
            }
            score = float(row["ms_ssim"]) if row.get("ms_ssim") else float("nan")
            point["ms_ssim_db"] = float(-10 * np.log10(1 - score)) if np.isfinite(score) and score < 1 else float("nan")
            curves.setdefault(row["codec"], []).append(point)
    return {k: sorted(v, key=lambda p: p["bpp"]) for k, v in curves.items()}


def closest_rate(codec_: CodecUnderTest, original: np.ndarray, target_bytes: int) -> tuple[float, bytes]:
    """The quality (1..100, bisection) whose file is the largest not above ``target_bytes``
    (the smallest file if none fits), and that file."""
    low, high = 1, 100
    best = (1.0, codec_.encode(original, 1))
    while low <= high:
        mid = (low + high) // 2
        data = codec_.encode(original, mid)
        if len(data) <= target_bytes:
            best, low = (float(mid), data), mid + 1
        else:
            high = mid - 1
    return best


def visual_comparison(path: Path, ours: CodecUnderTest, quality: float, out: Path, crop: int = 256) -> None:
    """Crops of the original, ours and JPEG/WebP/AVIF at the same or lower bpp, with captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Image.open(path) as im:
        original = np.asarray(im.convert("RGB"))
    pixels = original.shape[0] * original.shape[1]
    data = ours.encode(original, quality)
    panels = [("original", original, None), (ours.name, ours.decode(data), data)]
    for name in ("jpeg", "webp", "avif"):
        other = classic_codecs()[name]()
        _, other_data = closest_rate(other, original, len(data))
        panels.append((name, other.decode(other_data), other_data))
    h, w = original.shape[:2]
    size = min(crop, h, w)
    y0, x0 = (h - size) // 2, (w - size) // 2
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (name, image, payload) in zip(axes, panels):
        ax.imshow(image[y0 : y0 + size, x0 : x0 + size], interpolation="nearest")
        caption = (
            name
            if payload is None
            else f"{name}\n{8 * len(payload) / pixels:.3f} bpp, {psnr_rgb(original, image):.2f} dB"
        )
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
