"""Public compress/decompress API.

Input conversion rule: RGB images are coded as they are; grayscale (``L``, ``1``,
``P`` without colour, 16-bit ``I;16``/``I``) images are coded as RGB and decoded to
``L``; 16-bit and 32-bit integer images are reduced to 8 bits (``round(v / 257)``);
palette and CMYK/YCbCr images are converted to RGB by Pillow; an alpha channel is
dropped when fully opaque and refused otherwise (flatten it first).

A PIL image is coded upright (its EXIF orientation applied) and, by default, with its
ICC profile, EXIF and XMP; see :mod:`mixcodec.metadata`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import bitstream, refine, tiling
from . import metadata as photo_metadata
from .errors import FormatError, InputError, ModelNotFoundError
from .models.context_model import PAD_MULTIPLE, ContextMixtureModel
from .models.registry import DEFAULT_MODEL, LoadedModel, ModelInfo, find_model, find_written, load


def to_rgb_array(image: Image.Image | np.ndarray) -> tuple[np.ndarray, str]:
    """Apply the input conversion rule; returns ``(HxWx3 uint8 array, "RGB" | "L")``."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"arrays must be HxWx3 uint8, got {image.dtype} of shape {image.shape}")
        bitstream.check_size(image.shape[0], image.shape[1])
        return np.ascontiguousarray(image), "RGB"
    bitstream.check_size(image.height, image.width)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(wide / 257), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2), "L"
    if mode == "F":
        raise InputError("floating-point images are not supported; convert to 8-bit first")
    if "A" in mode or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        if np.asarray(rgba)[:, :, 3].min() < 255:
            raise InputError("images with transparency are not supported; flatten the alpha channel first")
        image = rgba.convert("RGB" if mode not in ("LA", "La") else "L")
        mode = image.mode
    if mode in ("L", "1"):
        gray = np.asarray(image.convert("L"))
        return np.repeat(gray[:, :, None], 3, axis=2), "L"
    return np.asarray(image.convert("RGB")), "RGB"


def _pad(x: torch.Tensor) -> torch.Tensor:
    """Replicate-pad ``(1, 3, H, W)`` on the bottom/right to multiples of :data:`PAD_MULTIPLE`."""
    h, w = x.shape[2:]
    ph, pw = -h % PAD_MULTIPLE, -w % PAD_MULTIPLE
    while ph or pw:  # replicate padding is limited to the input size per call
        step_h, step_w = min(ph, x.shape[2]), min(pw, x.shape[3])
        x = F.pad(x, (0, step_w, 0, step_h), mode="replicate")
        ph, pw = ph - step_h, pw - step_w
    return x


def quantize_latents(model: ContextMixtureModel, x: torch.Tensor, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ŷ, ẑ)`` of a padded image ``(1, 3, H, W)`` in ``[0, 1]`` at ``quality``: the values a file stores."""
    return refine.hard_round(model, *refine.encoder_latents(model, x, quality))


def image_latents(
    model: ContextMixtureModel, image: np.ndarray, quality: float, rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ŷ, ẑ)`` of an ``HxWx3`` uint8 image (padded here): :func:`quantize_latents` of the
    padded image, in stripes of ``rows`` image rows (default :func:`tiling.stripe_rows`) when
    it is more than one stripe high (:func:`tiling.is_striped`); the same values either way."""
    padded = (image.shape[0] + (-image.shape[0] % PAD_MULTIPLE), image.shape[1] + (-image.shape[1] % PAD_MULTIPLE))
    rows = rows or tiling.stripe_rows(padded[1])
    if not tiling.is_striped(*padded, rows):
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].contiguous().float() / 255
        return quantize_latents(model, _pad(x), quality)
    with torch.no_grad():
        y = tiling.analyse(model, image, quality, padded, rows)
        z = tiling.run(model.h_a, y, rows // PAD_MULTIPLE)
    return refine.hard_round(model, y, z)


def reconstruct(
    model: ContextMixtureModel, y_hat: torch.Tensor, quality: float, height: int, width: int, rows: int | None = None
) -> np.ndarray:
    """Synthesize ``ŷ`` of ``quality`` and crop to ``height x width``: HxWx3 uint8.  In stripes of
    ``rows`` image rows (default :func:`tiling.stripe_rows`) when ``ŷ`` is more than one stripe
    high (:func:`tiling.is_striped`); the same pixels either way."""
    rows = rows or tiling.stripe_rows(16 * y_hat.shape[3])
    if tiling.is_striped(16 * y_hat.shape[2], 16 * y_hat.shape[3], rows):
        synthesis = tiling.Synthesis(model, quality, y_hat.shape[2:], height, width, rows)
        synthesis.push(y_hat)
        return synthesis.image
    with torch.no_grad():
        x_hat = model.synthesize(y_hat.contiguous(memory_format=torch.channels_last), quality)[
            0, :, :height, :width
        ].clamp(0, 1)
    return (x_hat * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def compress(
    image: Image.Image | np.ndarray,
    model: str | ModelInfo = DEFAULT_MODEL,
    quality: float | None = None,
    schedule: str = "wavefront",
    metadata: bitstream.Metadata | None = None,
    effort: int = 0,
    progress: Callable[[], None] | None = None,
) -> bytes:
    """Compress an image into the bytes of a ``.mxc`` file.

    Args:
        image: PIL image (turned upright by its EXIF orientation, then converted by the
            module's rule) or HxWx3 uint8 array (coded as it is).
        model: installed model name, path of a weight file, or a :class:`ModelInfo`.
        quality: from 1 to the model's number of trained levels; fractional values lie
            between two levels (default: the middle level).  Ignored for a :class:`ModelInfo`.
        schedule: context decoding order, ``"wavefront"`` (fast) or ``"raster"``.
        metadata: what the file carries besides the pixels.  ``None``: the image's own
            (a PIL image's ICC profile, EXIF without orientation and XMP,
            :func:`mixcodec.metadata.read`; nothing for an array); a
            :class:`~mixcodec.bitstream.Metadata` is stored as given (``Metadata()``:
            none, as ``compress --strip``).  A file without metadata is the same
            (format version 2) as before metadata existed.
        effort: encoder effort level, 0 to ``len(refine.EFFORT_ITERATIONS) - 1``: 0 codes
            the analysis transform's latents; higher levels refine them for this image by
            stochastic Gumbel annealing (:mod:`mixcodec.refine`; seconds to minutes).
            The file is an ordinary one, decoded as any other.
        progress: called after each refinement iteration (``effort > 0``).

    Raises:
        InputError: the image or its metadata is not accepted, or ``effort`` is not a level
            (or is above 0 for a model that records no λ).
    """
    iterations = refine.effort_iterations(effort)
    if schedule not in bitstream.SCHEDULES:
        raise InputError(f"unknown schedule {schedule!r}; choose one of {', '.join(bitstream.SCHEDULES)}")
    info = model if isinstance(model, ModelInfo) else find_model(model, quality)
    if iterations and not info.lmbda > 0:
        raise InputError(f"{info.label} records no λ for quality {info.quality:g}, which effort {effort} needs")
    if isinstance(image, Image.Image):
        image = photo_metadata.upright(image)
    array, mode = to_rgb_array(image)
    if iterations and array.shape[0] * array.shape[1] > refine.MAX_REFINE_PIXELS:
        raise InputError(
            f"effort {effort} refines images of up to {refine.MAX_REFINE_PIXELS / 1e6:.1f} Mpixel "
            "(about 2 GB of memory per Mpixel); "
            f"this one has {array.shape[0] * array.shape[1] / 1e6:.1f}: use effort 0"
        )
    if metadata is None:
        metadata = photo_metadata.read(image, mode) if isinstance(image, Image.Image) else bitstream.Metadata()
    try:
        bitstream.check_metadata(metadata, mode)
    except ValueError as exc:
        raise InputError(f"{exc} (compress --strip drops the metadata)") from None
    loaded = load(info)
    if iterations:  # the refinement works on the whole image (not in stripes)
        x = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].contiguous().float() / 255
        annealing = refine.Annealing(iterations, bf16=refine.bf16_is_fast())
        refined = refine.refine(
            loaded.net, _pad(x), info.quality, info.lmbda, info.metric, annealing, array.shape[:2], progress
        )
        y_hat, z_hat = refined.y_hat, refined.z_hat
    else:
        y_hat, z_hat = image_latents(loaded.net, array, info.quality)
    z_stream = loaded.hyperprior.compress(z_hat)
    y_stream, active = loaded.context.compress(
        y_hat, loaded.hyperprior.hyper(z_hat), schedule, threads=torch.get_num_threads()
    )
    header = bitstream.Header(
        model=info.name,
        quality=info.quality,
        digest=info.digest,
        height=array.shape[0],
        width=array.shape[1],
        mode=mode,
        schedule=schedule,
        active=active,
        channels=info.config.m,
        metadata=metadata,
    )
    return bitstream.pack(header, z_stream, y_stream)


def _open(
    data: bytes, model: ModelInfo | None
) -> tuple[bitstream.Header, bytes, torch.Tensor, LoadedModel, tuple[int, int]]:
    """Parse a file, load its model and decode its ``ẑ`` into hyper features:
    ``(header, y_stream, hyper features, loaded model, latent size (H/16, W/16))``."""
    header, z_stream, y_stream = bitstream.parse(data)
    info = model or find_written(header.model, header.digest)
    if not info.holds(header.digest):
        raise ModelNotFoundError(
            f"the file was written with {header.model} weights {header.digest.hex()}, "
            f"not with {info.label} ({info.digest.hex()}, {info.path})"
        )
    if info.config.m != header.channels:
        raise FormatError(
            f"the file codes {header.channels} latent channels, its model {info.label} has {info.config.m}"
        )
    if not 1 <= header.quality <= info.config.qualities:
        raise FormatError(f"quality {header.quality:g} is outside the 1..{info.config.qualities} of {info.name}")
    loaded = load(info)
    padded = (header.height + (-header.height % PAD_MULTIPLE), header.width + (-header.width % PAD_MULTIPLE))
    z_hat = loaded.hyperprior.decompress(z_stream, (padded[0] // PAD_MULTIPLE, padded[1] // PAD_MULTIPLE))
    return header, y_stream, loaded.hyperprior.hyper(z_hat), loaded, (padded[0] // 16, padded[1] // 16)


def decode_latents(
    data: bytes, model: ModelInfo | None = None
) -> tuple[bitstream.Header, ContextMixtureModel, torch.Tensor]:
    """Parse a file and decode its ``ŷ``: ``(header, model, ŷ (1, m, H/16, W/16))``."""
    header, y_stream, hyper, loaded, _ = _open(data, model)
    y_hat = loaded.context.decompress(y_stream, hyper, header.active, header.schedule, threads=torch.get_num_threads())
    return header, loaded.net, y_hat


def decode_pixels(
    data: bytes, model: ModelInfo | None = None, rows: int | None = None
) -> tuple[bitstream.Header, np.ndarray]:
    """Parse and decode a file to ``(header, HxWx3 uint8 pixels)``.

    An image more than one stripe of ``rows`` image rows high (default
    :func:`tiling.stripe_rows`) is synthesized in stripes, and, with two or more torch
    threads, beside the entropy decoding: a worker thread synthesizes the rows of ``ŷ``
    the decoder has finished (:class:`tiling.BackgroundSynthesis`: the entropy path gets
    one thread, the worker the others; while the worker waits for rows, as in the first
    third of the wavefront, the entropy path's helper thread takes half of its large
    kernel calls).  An image of one stripe (every Kodak image) is
    entropy-decoded first, with the other thread computing half of each large kernel call
    (:meth:`~.context_coding.IntegerContextCodec.decompress` ``threads``), then synthesized.
    The pixels are :func:`reconstruct` of the decoded ``ŷ`` either way.
    """
    header, y_stream, hyper, loaded, latent_size = _open(data, model)
    rows = rows or tiling.stripe_rows(16 * latent_size[1])
    threads = torch.get_num_threads()
    if not tiling.is_striped(16 * latent_size[0], 16 * latent_size[1], rows) or threads < 2:
        y_hat = loaded.context.decompress(y_stream, hyper, header.active, header.schedule, threads=threads)
        return header, reconstruct(loaded.net, y_hat, header.quality, header.height, header.width, rows)
    synthesis = tiling.Synthesis(loaded.net, header.quality, latent_size, header.height, header.width, rows)
    with tiling.BackgroundSynthesis(synthesis, threads=threads - 1, caller_threads=1) as background:
        loaded.context.decompress(
            y_stream,
            hyper,
            header.active,
            header.schedule,
            on_rows=background.feed,
            threads=threads,
            helper_when=background.idle,
        )
        del hyper  # not needed by the stripes the worker has left
    return header, synthesis.image


def decompress(data: bytes, model: ModelInfo | None = None) -> Image.Image:
    """Decode the bytes of a ``.mxc`` file to a PIL image (``RGB``, or ``L`` for grayscale input)
    whose ``info`` holds the file's metadata (:func:`mixcodec.metadata.attach`).

    ``model``: the weights to decode with (default: the installed ones the file names).

    Raises:
        FormatError: the data is not a valid file.
        ModelNotFoundError: the model that wrote it is not installed (or is not ``model``).
    """
    header, array = decode_pixels(data, model)
    image = Image.fromarray(array, "RGB")
    return photo_metadata.attach(image.convert("L") if header.mode == "L" else image, header.metadata)
