"""Image folders, packed crops and the random crops that training and refitting read.

A training source is either a folder of images (read recursively, :data:`IMAGE_SUFFIXES`)
or a *packed-crop file*: one ``.npy`` array ``(N, S, S, 3)`` of uint8 RGB crops made by
:func:`pack_crops` (``mixcodec pack``), so that a run on a machine without the image
folder (e.g. a rented GPU) needs a single file of a few tens of MB.  Both give the same
:class:`CropSampler`: random crops of the training size, random flips, optional random
down-scaling.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".tif", ".tiff"}
#: Suffix of packed-crop files.
PACKED_SUFFIX = ".npy"


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _source_images(source: Path) -> list[Image.Image]:
    """RGB images of a folder, or the crops of a packed-crop file."""
    if source.is_file() and source.suffix == PACKED_SUFFIX:
        crops = np.load(source, mmap_mode="r")
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[3] != 3 or crops.shape[1] != crops.shape[2]:
            raise InputError(
                f"{source} is not a packed-crop file (uint8 array N x S x S x 3), got {crops.dtype} {crops.shape}"
            )
        return [Image.fromarray(np.array(c)) for c in crops]
    images = []
    for path in list_images(source):
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    return images


def pack_crops(folder: Path, size: int = 256, max_bytes: int = 40_000_000, seed: int = 0) -> np.ndarray:
    """Random ``size`` x ``size`` crops of the images under ``folder`` that fit in ``max_bytes``.

    Images are visited in a seeded random order, one crop each, round after round, until
    ``max_bytes // (3 size²)`` crops are taken (images smaller than ``size`` are skipped).

    Returns:
        ``(N, size, size, 3)`` uint8 RGB.
    Raises:
        InputError: no image is large enough, or ``max_bytes`` holds no crop.
    """
    count = max_bytes // (3 * size * size)
    rng = random.Random(seed)
    images = [im for im in _source_images(folder) if min(im.size) >= size]
    if not images or count < 1:
        raise InputError(
            f"no crop of {size}x{size} fits: {len(images)} images large enough under {folder}, room for {count} crops"
        )
    order = list(range(len(images)))
    crops = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        if i % len(order) == 0:
            rng.shuffle(order)
        im = images[order[i % len(order)]]
        x0, y0 = rng.randint(0, im.width - size), rng.randint(0, im.height - size)
        crops[i] = np.asarray(im.crop((x0, y0, x0 + size, y0 + size)))
    return crops


def save_packed(crops: np.ndarray, path: Path) -> None:
    """Write packed crops to ``path`` (``.npy``) through a temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        np.save(handle, crops)
    os.replace(tmp, path)


class CropSampler:
    """Random crops (with random flips and optional down-scaling) from images held in memory.

    Args:
        source: a folder of images or a packed-crop file (any size at least ``crop`` on
            both sides after down-scaling).
        crop: side of the square crops.
        min_downscale: each crop comes from the image scaled by a random factor in
            ``[min_downscale, 1]``, which makes the training content more like photos
            viewed at lower resolution.
    """

    def __init__(self, source: Path, crop: int, min_downscale: float = 1.0, seed: int = 0):
        self.crop = crop
        self.min_downscale = min_downscale
        self.rng = random.Random(seed)
        self.images = [im for im in _source_images(source) if min(im.size) >= crop]
        if not self.images:
            raise InputError(f"no images of at least {crop}x{crop} in {source}")

    def sample(self, batch: int) -> torch.Tensor:
        """``(batch, 3, crop, crop)`` float32 in ``[0, 1]``."""
        crops = []
        for _ in range(batch):
            im = self.rng.choice(self.images)
            w, h = im.size
            scale = self.rng.uniform(max(self.min_downscale, self.crop / min(w, h)), 1.0)
            size = max(self.crop, round(self.crop / scale))
            x0, y0 = self.rng.randint(0, w - size), self.rng.randint(0, h - size)
            patch = im.crop((x0, y0, x0 + size, y0 + size))
            if size != self.crop:
                patch = patch.resize((self.crop, self.crop), Image.Resampling.BICUBIC)
            array = np.asarray(patch)
            if self.rng.random() < 0.5:
                array = array[:, ::-1]
            crops.append(torch.from_numpy(array.copy()))
        # contiguous NCHW: channels-last strides hit a crash in torch 2.13 CPU conv backward
        return torch.stack(crops).permute(0, 3, 1, 2).contiguous().float() / 255


class CropDataset(torch.utils.data.IterableDataset):
    """Endless batches of :class:`CropSampler` crops, for a ``DataLoader`` with workers
    (each worker samples with its own seed; ``batch_size=None`` in the loader)."""

    def __init__(self, source: Path, crop: int, min_downscale: float, batch: int, seed: int):
        super().__init__()
        self.source, self.crop, self.min_downscale, self.batch, self.seed = source, crop, min_downscale, batch, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        sampler = CropSampler(self.source, self.crop, self.min_downscale, seed=self.seed + 104729 * worker)
        while True:
            yield sampler.sample(self.batch)
