"""Rate-constrained bit allocation over a set of images (Kattolab, CLIC 2020).

Each image has several candidate encodings (one per model/quality) with a size
in bytes and a quality score.  Choosing one per image to maximize the total
score subject to a total size budget is a multiple-choice knapsack problem;
:func:`solve` solves it exactly by dynamic programming over bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
from PIL import Image

from . import codec
from . import metadata as photo_metadata
from .bitstream import Metadata
from .models.registry import ModelInfo

#: Largest DP table (images x budget cells, one byte each) :func:`solve` builds.
MAX_TABLE_CELLS = 2_000_000_000


class InfeasibleBudget(ValueError):
    """Even the smallest candidate of every image does not fit the budget."""

    def __init__(self, minimum: int, budget: int):
        super().__init__(f"a budget of {budget} bytes is infeasible; the smallest files need {minimum} bytes")
        self.minimum = minimum


def solve(costs: list[list[int]], scores: list[list[float]], budget: int) -> list[int]:
    """Choose one candidate per image maximizing the summed score with total cost <= budget.

    Args:
        costs: ``costs[i][j]`` bytes of candidate ``j`` of image ``i`` (non-negative ints).
        scores: ``scores[i][j]`` quality of that candidate (higher is better).
        budget: total bytes allowed.
    Returns:
        ``choice[i]``, the chosen candidate index per image.  Ties between equally
        good solutions are broken deterministically (the same input always gives
        the same choice).
    Raises:
        InfeasibleBudget: the cheapest candidates already exceed the budget.
        MemoryError: the DP table would exceed :data:`MAX_TABLE_CELLS`.
    """
    base = [min(c) for c in costs]
    if sum(base) > budget:
        raise InfeasibleBudget(sum(base), budget)
    extra = [[c - b for c in row] for row, b in zip(costs, base)]
    # costs above the minimum, in units of their gcd; capacity never needs to exceed the sum of maxima
    unit = 0
    for row in extra:
        for c in row:
            unit = gcd(unit, c)
    unit = unit or 1
    capacity = min((budget - sum(base)) // unit, sum(max(row) for row in extra) // unit)
    if len(costs) * (capacity + 1) > MAX_TABLE_CELLS:
        raise MemoryError(f"allocation table of {len(costs)} x {capacity + 1} cells is too large")
    best = np.zeros(capacity + 1)  # best[b]: max score of the images so far using at most b units
    choices = np.zeros((len(costs), capacity + 1), dtype=np.uint8 if max(map(len, costs)) <= 256 else np.int32)
    for i, (row, score_row) in enumerate(zip(extra, scores)):
        new = np.full(capacity + 1, -np.inf)
        for j, (c, s) in enumerate(zip(row, score_row)):
            c //= unit
            if c > capacity:
                continue
            candidate = np.full(capacity + 1, -np.inf)
            candidate[c:] = best[: capacity + 1 - c] + s
            better = candidate > new
            new[better] = candidate[better]
            choices[i, better] = j
        best = new
    # backtrack from the best final capacity (smallest one on ties)
    b = int(np.argmax(best))
    picked = [0] * len(costs)
    for i in range(len(costs) - 1, -1, -1):
        j = int(choices[i, b])
        picked[i] = j
        b -= extra[i][j] // unit
    return picked


@dataclass
class Candidate:
    """One image coded by one model: its size (bytes of the real file), quality, and the file
    itself when it was coded in this run (``None`` when taken from measured rows)."""

    image: str
    model: str
    quality_index: int
    size: int
    psnr: float
    ms_ssim: float
    data: bytes | None = None


def encode_candidates(paths: list[Path], infos: list[ModelInfo], progress=None, strip: bool = False) -> list[list[Candidate]]:
    """Every image coded with every model (real files, decoded and measured once): upright,
    as RGB, with the image's ICC profile, EXIF and XMP unless ``strip`` (counted in the sizes)."""
    from .eval import ms_ssim_rgb, psnr_rgb

    table = []
    for path in paths:
        with Image.open(path) as im:
            upright = photo_metadata.upright(im)
        original = np.asarray(upright.convert("RGB"))
        kept = Metadata() if strip else photo_metadata.read(upright, "RGB")
        row = []
        for info in infos:
            data = codec.compress(original, model=info, metadata=kept)
            decoded = np.asarray(codec.decompress(data, model=info).convert("RGB"))
            row.append(Candidate(path.name, info.name, info.quality, len(data), psnr_rgb(original, decoded), ms_ssim_rgb(original, decoded), data))
            if progress:
                progress()
        table.append(row)
    return table


def candidates_from_rows(rows: list, codec_name: str) -> tuple[list[list[Candidate]], list[int]]:
    """Candidates from measured :class:`~mixcodec.eval.Row` s of one codec (e.g. ``mixcodec eval``'s
    ``rows.csv``), and each image's pixel count.  Images lacking a quality are left out."""
    mine = [r for r in rows if r.codec == codec_name]
    qualities = sorted({r.quality for r in mine})
    table, pixels = [], []
    for image in sorted({r.image for r in mine}):
        by_quality = {r.quality: r for r in mine if r.image == image}
        if len(by_quality) != len(qualities):
            continue
        row = [Candidate(image, codec_name, int(q), by_quality[q].bytes, by_quality[q].psnr, by_quality[q].ms_ssim) for q in qualities]
        table.append(row)
        pixels.append(round(8 * row[0].size / by_quality[qualities[0]].bpp))
    return table, pixels


def allocate(candidates: list[list[Candidate]], pixels: list[int], target_bpp: float, metric: str) -> dict:
    """Best choice per image under ``target_bpp`` over the whole set, and the best single model.

    Returns a report with ``choice`` (candidate index per image), totals and the
    best single model (the one of highest mean score whose total fits the budget).
    """
    budget = int(target_bpp * sum(pixels) / 8)
    key = "psnr" if metric == "psnr" else "ms_ssim"
    costs = [[c.size for c in row] for row in candidates]
    scores = [[getattr(c, key) for c in row] for row in candidates]
    try:
        choice = solve(costs, scores, budget)
    except InfeasibleBudget as exc:
        raise InfeasibleBudget(exc.minimum, budget) from None
    total = sum(costs[i][j] for i, j in enumerate(choice))
    single = None
    for j in range(len(candidates[0])):
        size = sum(row[j] for row in costs)
        mean = float(np.mean([row[j] for row in scores]))
        if size <= budget and (single is None or mean > single["mean_score"]):
            single = {"model": candidates[0][j].model, "quality": candidates[0][j].quality_index, "bytes": size, "bpp": 8 * size / sum(pixels), "mean_score": mean}
    return {
        "metric": key,
        "budget_bytes": budget,
        "choice": choice,
        "bytes": total,
        "bpp": 8 * total / sum(pixels),
        "mean_score": float(np.mean([scores[i][j] for i, j in enumerate(choice)])),
        "best_single_model": single,
    }
