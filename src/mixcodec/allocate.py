"""Rate-constrained bit allocation over a set of images (Kattolab, CLIC 2020).

Each image has several candidate encodings (one per model/quality) with a size
in bytes and a quality score.  Choosing one per image to maximize the total
score subject to a total size budget is a multiple-choice knapsack problem.
:func:`solve` picks one of two methods:

* ``"dp"``: exact dynamic programming over bytes (:func:`solve_dp`); its table has
  one cell per image and byte of budget, so it serves small sets.
* ``"lagrangian"``: the linear relaxation solved on the upper convex hull of each
  image's (bytes, score) candidates, which is the Lagrangian dual of the problem
  and bounds the optimum from above, then an integer solution repaired from it by
  an exact DP over the few images at the margin and a greedy fill
  (:func:`solve_lagrangian`).  It takes O(n k log(n k)) for n images of k candidates
  plus a bounded DP, and reports its gap: the bound minus the score it achieved.
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

#: Largest DP table (images x budget cells, one byte each) :func:`solve_dp` builds.
MAX_TABLE_CELLS = 2_000_000_000
#: Largest DP table ``method="auto"`` builds (about a second); larger problems go to the Lagrangian method.
AUTO_DP_CELLS = 20_000_000
METHODS = ("auto", "dp", "lagrangian")
#: Most images, and largest DP table (about 0.1 s), of the exact repair step of :func:`solve_lagrangian`.
CORE_IMAGES = 32
CORE_CELLS = 2_000_000


class InfeasibleBudget(ValueError):
    """Even the smallest candidate of every image does not fit the budget."""

    def __init__(self, minimum: int, budget: int):
        super().__init__(f"a budget of {budget} bytes is infeasible; the smallest files need {minimum} bytes")
        self.minimum = minimum


@dataclass(frozen=True)
class Allocation:
    """One candidate per image, and how far from the optimum it can be.

    ``choice[i]``: the candidate of image ``i``; ``cost``: their total bytes; ``score``:
    their summed score; ``bound``: an upper bound on the best summed score under the
    budget (equal to ``score`` when the method is exact); ``method``: ``"dp"`` or
    ``"lagrangian"``.
    """

    choice: list[int]
    cost: int
    score: float
    bound: float
    method: str

    @property
    def gap(self) -> float:
        """Upper bound on how much the summed score falls short of the optimum (>= 0)."""
        return max(self.bound - self.score, 0.0)


def _check(costs: list[list[int]], scores: list[list[float]]) -> None:
    """Raise ValueError unless every image has candidates with a non-negative cost and a finite score."""
    if len(costs) != len(scores) or any(len(c) != len(s) or not c for c, s in zip(costs, scores)):
        raise ValueError("costs and scores need the same non-empty list of candidates for every image")
    if any(c < 0 for row in costs for c in row):
        raise ValueError("candidate costs must be non-negative")
    if not all(np.isfinite(s) for row in scores for s in row):
        raise ValueError(
            "candidate scores must be finite (MS-SSIM, for one, is undefined on images under 161 pixels a side)"
        )


def _feasible(costs: list[list[int]], budget: int) -> list[int]:
    """Each image's smallest cost; raises :class:`InfeasibleBudget` when they do not fit."""
    base = [min(c) for c in costs]
    if sum(base) > budget:
        raise InfeasibleBudget(sum(base), budget)
    return base


def _dp_shape(costs: list[list[int]], budget: int, base: list[int]) -> tuple[list[list[int]], int, int]:
    """Costs above each image's minimum, their gcd (the DP's unit) and the DP's capacity in units
    (never more than the sum of the maxima)."""
    extra = [[c - b for c in row] for row, b in zip(costs, base)]
    unit = 0
    for row in extra:
        for c in row:
            unit = gcd(unit, c)
    unit = unit or 1
    capacity = min((budget - sum(base)) // unit, sum(max(row) for row in extra) // unit)
    return extra, unit, capacity


def dp_cells(costs: list[list[int]], budget: int) -> int:
    """Cells of the table :func:`solve_dp` builds (0 when the budget is infeasible)."""
    base = [min(c) for c in costs]
    if sum(base) > budget:
        return 0
    return len(costs) * (_dp_shape(costs, budget, base)[2] + 1)


def solve(costs: list[list[int]], scores: list[list[float]], budget: int, method: str = "auto") -> Allocation:
    """Choose one candidate per image maximizing the summed score with total cost <= budget.

    Args:
        costs: ``costs[i][j]`` bytes of candidate ``j`` of image ``i`` (non-negative ints).
        scores: ``scores[i][j]`` quality of that candidate (finite, higher is better).
        budget: total bytes allowed.
        method: ``"dp"`` (exact), ``"lagrangian"`` (bounded gap), or ``"auto"``: the DP
            when its table has at most :data:`AUTO_DP_CELLS` cells, else the Lagrangian.
    Returns:
        The :class:`Allocation`; the same input always gives the same choice.
    Raises:
        InfeasibleBudget: the cheapest candidates already exceed the budget.
        MemoryError: ``method="dp"`` and its table would exceed :data:`MAX_TABLE_CELLS`.
        ValueError: malformed input or an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown allocation method {method!r} (known: {', '.join(METHODS)})")
    _check(costs, scores)
    _feasible(costs, budget)
    if method == "lagrangian" or (method == "auto" and dp_cells(costs, budget) > AUTO_DP_CELLS):
        return solve_lagrangian(costs, scores, budget)
    choice = solve_dp(costs, scores, budget)
    score = float(sum(scores[i][j] for i, j in enumerate(choice)))
    return Allocation(choice, sum(costs[i][j] for i, j in enumerate(choice)), score, score, "dp")


def solve_dp(costs: list[list[int]], scores: list[list[float]], budget: int) -> list[int]:
    """The exact optimum of :func:`solve` by dynamic programming over bytes (in units of the gcd
    of the costs above each image's minimum): ``choice[i]`` per image.  Ties between equally
    good solutions are broken deterministically.

    Raises:
        InfeasibleBudget: the cheapest candidates already exceed the budget.
        MemoryError: the DP table would exceed :data:`MAX_TABLE_CELLS`.
    """
    base = _feasible(costs, budget)
    extra, unit, capacity = _dp_shape(costs, budget, base)
    if len(costs) * (capacity + 1) > MAX_TABLE_CELLS:
        raise MemoryError(f"allocation table of {len(costs)} x {capacity + 1} cells is too large")
    best = np.zeros(capacity + 1)  # best[b]: max score of the images so far using at most b units
    choices = np.zeros(
        (len(costs), capacity + 1), dtype=np.uint8 if max(map(len, costs), default=0) <= 256 else np.int32
    )
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


def _hull(costs: list[int], scores: list[float]) -> list[int]:
    """Indices of the candidates on the upper convex hull of (cost, score), by increasing cost:
    the cheapest (best-scoring among equally cheap) first, then strictly increasing cost and
    score with strictly decreasing score per byte between neighbours (as computed here)."""
    order = sorted(range(len(costs)), key=lambda j: (costs[j], -scores[j], j))
    hull: list[int] = []
    slopes: list[float] = []  # slopes[t]: score per byte from hull[t] to hull[t + 1]
    for j in order:
        if hull and scores[j] <= scores[hull[-1]]:
            continue  # dominated: no better than a candidate at most as large
        while hull:
            slope = (scores[j] - scores[hull[-1]]) / (costs[j] - costs[hull[-1]])
            if not slopes or slope < slopes[-1]:
                break
            hull.pop()
            slopes.pop()
        if hull:
            slopes.append(slope)
        hull.append(j)
    return hull


def _core(order: np.ndarray, taken: int, image: np.ndarray, width: int) -> list[int]:
    """Up to :data:`CORE_IMAGES` images: those of the segments nearest position ``taken`` of
    ``order`` (the first segment left out), alternately after and before it."""
    window = CORE_IMAGES * max(width - 1, 1)  # an image has at most width - 1 segments
    near = (p for offset in range(window) for p in (taken + offset, taken - 1 - offset) if 0 <= p < len(order))
    return list(dict.fromkeys(int(image[order[p]]) for p in near))[:CORE_IMAGES]


def solve_lagrangian(costs: list[list[int]], scores: list[list[float]], budget: int) -> Allocation:
    """:func:`solve` by the linear relaxation on convex hulls, then an integer repair.

    Every image starts at its cheapest hull point; the hull segments of all images
    (upgrades to the next hull point) are taken by decreasing score per byte while they
    fit.  The first that does not fit, taken fractionally, completes the optimum of the
    linear relaxation (equal to the Lagrangian dual), an upper bound on the integer
    optimum.  The integer solution keeps the whole segments; then the images of the
    :data:`CORE_IMAGES` segments nearest the fractional one in that order are solved
    again exactly by the DP, all candidates open and the other images fixed (halving
    that core while its table exceeds :data:`CORE_CELLS`); then what is left of the
    budget is spent greedily: the switch of one image to any of its candidates that fits
    and gains the most, until none fits.  Each step keeps the score or raises it, so the
    gap (bound minus score) is at most the score gain of the fractional segment.

    Raises:
        InfeasibleBudget: the cheapest candidates already exceed the budget.
    """
    _feasible(costs, budget)
    n, width = len(costs), max(map(len, costs), default=1)
    cost = np.full((n, width), np.iinfo(np.int64).max // 4, dtype=np.int64)  # padding never fits
    score = np.full((n, width), -np.inf)
    hulls, gain, step, image, rank = [], [], [], [], []  # one entry per hull segment
    for i, (c_row, s_row) in enumerate(zip(costs, scores)):
        cost[i, : len(c_row)], score[i, : len(s_row)] = c_row, s_row
        hulls.append(_hull(c_row, s_row))
        for t, (a, b) in enumerate(zip(hulls[-1], hulls[-1][1:])):
            gain.append(s_row[b] - s_row[a])
            step.append(c_row[b] - c_row[a])
            image.append(i)
            rank.append(t)
    gain, step, image = np.array(gain, dtype=float), np.array(step, dtype=np.int64), np.array(image, dtype=np.int64)
    # decreasing score per byte (the ratio _hull compared, so each image's segments keep their order), then image, then
    # hull order
    order = np.lexsort((np.array(rank, dtype=np.int64), image, -(gain / step)))
    rows = np.arange(n)
    left = budget - int(cost[rows, [h[0] for h in hulls]].sum())
    spent = np.cumsum(step[order])
    taken = int(np.searchsorted(spent, left, side="right"))  # whole segments that fit
    upgrades = np.bincount(image[order[:taken]], minlength=n)
    current = np.array([h[u] for h, u in zip(hulls, upgrades)], dtype=np.int64)
    bound = float(score[rows, current].sum())
    if taken < len(order):  # plus the fractional segment of the relaxation
        critical = order[taken]
        bound += (left - (int(spent[taken - 1]) if taken else 0)) / int(step[critical]) * float(gain[critical])
    core = _core(order, taken, image, width) if taken < len(order) else []
    while core:  # exact repair of the images nearest the fractional segment, the others fixed
        sub_costs, sub_scores = [costs[i] for i in core], [scores[i] for i in core]
        sub_budget = budget - int(cost[rows, current].sum()) + int(cost[core, current[core]].sum())
        if dp_cells(sub_costs, sub_budget) <= CORE_CELLS:
            current[core] = solve_dp(sub_costs, sub_scores, sub_budget)
            break
        core = core[: len(core) // 2]
    left = budget - int(cost[rows, current].sum())
    while True:  # repair: the single switch that fits and gains the most (then the cheapest, then the first)
        more = cost - cost[rows, current][:, None]
        better = np.where(more <= left, score - score[rows, current][:, None], 0.0)
        if not (better > 0).any():
            break
        top = better == better.max()
        i, j = divmod(int(np.argmin(np.where(top, more, np.iinfo(np.int64).max))), width)
        left -= int(more[i, j])
        current[i] = j
    return Allocation(
        [int(j) for j in current],
        int(cost[rows, current].sum()),
        float(score[rows, current].sum()),
        bound,
        "lagrangian",
    )


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


def encode_candidates(
    paths: list[Path], infos: list[ModelInfo], progress=None, strip: bool = False
) -> list[list[Candidate]]:
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
            row.append(
                Candidate(
                    path.name,
                    info.name,
                    info.quality,
                    len(data),
                    psnr_rgb(original, decoded),
                    ms_ssim_rgb(original, decoded),
                    data,
                )
            )
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
        row = [
            Candidate(image, codec_name, int(q), by_quality[q].bytes, by_quality[q].psnr, by_quality[q].ms_ssim)
            for q in qualities
        ]
        table.append(row)
        pixels.append(round(8 * row[0].size / by_quality[qualities[0]].bpp))
    return table, pixels


def allocate(
    candidates: list[list[Candidate]], pixels: list[int], target_bpp: float, metric: str, method: str = "auto"
) -> dict:
    """Best choice per image under ``target_bpp`` over the whole set (:func:`solve`), and the best single model.

    Returns a report with ``choice`` (candidate index per image), totals, ``method`` (the
    one that ran), ``bound_mean_score`` (no choice under the budget has a higher mean
    score) and ``gap`` (that bound minus the achieved mean score; 0 for the exact DP), and
    the best single model (the one of highest mean score whose total fits the budget).

    Raises:
        InfeasibleBudget: the smallest candidates exceed the budget (``minimum`` in bytes).
    """
    budget = int(target_bpp * sum(pixels) / 8)
    key = "psnr" if metric == "psnr" else "ms_ssim"
    costs = [[c.size for c in row] for row in candidates]
    scores = [[getattr(c, key) for c in row] for row in candidates]
    try:
        result = solve(costs, scores, budget, method)
    except InfeasibleBudget as exc:
        raise InfeasibleBudget(exc.minimum, budget) from None
    single = None
    for j in range(len(candidates[0])):
        size = sum(row[j] for row in costs)
        mean = float(np.mean([row[j] for row in scores]))
        if size <= budget and (single is None or mean > single["mean_score"]):
            single = {
                "model": candidates[0][j].model,
                "quality": candidates[0][j].quality_index,
                "bytes": size,
                "bpp": 8 * size / sum(pixels),
                "mean_score": mean,
            }
    return {
        "metric": key,
        "budget_bytes": budget,
        "choice": result.choice,
        "bytes": result.cost,
        "bpp": 8 * result.cost / sum(pixels),
        "mean_score": result.score / len(candidates),
        "method": result.method,
        "bound_mean_score": result.bound / len(candidates),
        "gap": result.gap / len(candidates),
        "best_single_model": single,
    }
