"""Change vector analysis (CVA): the unsupervised baseline detector, and Otsu thresholding.

CVA standardises each band of each date by that date's mean and standard deviation over the
pixels valid in both dates, and scores a pixel by the Euclidean norm of the difference vector.
``prepare`` computes the statistics in one dask pass; ``score_block`` is pure NumPy. Must not
import jax.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np

from changedet.errors import BandMismatchError, ConfigError, EmptySceneError, NotPreparedError

if TYPE_CHECKING:
    import dask.array as da

    from changedet.io.pair import RasterPair

logger = logging.getLogger(__name__)

__all__ = ["BandStats", "CVADetector", "otsu_threshold", "otsu_threshold_dask"]

#: Standard deviations below this are treated as 1 (a constant band contributes only its shift).
_MIN_STD = 1e-12


@dataclasses.dataclass(frozen=True)
class BandStats:
    """Per-band statistics of one date over the valid pixels.

    Attributes:
      mean: ``(band,)`` float64 mean, in the raster's units.
      std: ``(band,)`` float64 population standard deviation, same units.
    """

    mean: np.ndarray
    std: np.ndarray


@dataclasses.dataclass(frozen=True)
class CVADetector:
    """Change vector analysis on per-date standardised bands (detector protocol of the pipeline).

    Attributes:
      name: ``"cva"``.
      halo_px: 0 (purely per-pixel).
      threshold: None: the pipeline thresholds the score map with Otsu.
      band_ids: None: any bands (the pair's own).
      before_stats: Statistics of the first date (set by :meth:`prepare`).
      after_stats: Statistics of the second date (set by :meth:`prepare`).
    """

    name: str = "cva"
    halo_px: int = 0
    threshold: float | None = None
    band_ids: tuple[str, ...] | None = None
    before_stats: BandStats | None = None
    after_stats: BandStats | None = None

    def prepare(self, pair: RasterPair) -> CVADetector:
        """Computes per-band mean/std of each date over pixels valid in both, in one dask pass.

        Args:
          pair: An opened :class:`~changedet.io.pair.RasterPair`.

        Returns:
          A new detector carrying the statistics.

        Raises:
          EmptySceneError: No pixel is valid in both dates.
        """
        import dask

        valid = pair.valid.data
        sums = []
        for arr in (pair.before.data, pair.after.data):
            values = arr.astype(np.float64)
            values = dask.array.where(valid[None], values, 0.0)
            sums.append((values.sum(axis=(1, 2)), (values * values).sum(axis=(1, 2))))
        count = valid.sum()
        (b1, b2), (a1, a2), n = dask.compute(*sums, count)
        n = int(n)
        if n == 0:
            raise EmptySceneError(
                f"{pair.before_path} / {pair.after_path}: no pixel is valid in both dates "
                f"(nodata everywhere or no overlap); check the inputs' nodata and extents."
            )

        def stats(s1: np.ndarray, s2: np.ndarray) -> BandStats:
            mean = s1 / n
            var = np.maximum(s2 / n - mean * mean, 0.0)
            return BandStats(mean=mean, std=np.sqrt(var))

        before_stats, after_stats = stats(b1, b2), stats(a1, a2)
        logger.debug("cva stats over %d px: before %s, after %s", n, before_stats, after_stats)
        return dataclasses.replace(self, before_stats=before_stats, after_stats=after_stats)

    def score_block(self, before: np.ndarray, after: np.ndarray, *,
                    context_px: int = 0) -> np.ndarray:
        """Euclidean norm of the difference of the standardised bands.

        Args:
          before: ``(band, h, w)`` float32 raw values of the first date.
          after: ``(band, h, w)`` float32 raw values of the second date.
          context_px: Context on every side to drop from the result (CVA needs none).

        Returns:
          ``(h, w)`` float32 change magnitude, in units of standard deviations.

        Raises:
          RuntimeError: :meth:`prepare` was not called.
        """
        if self.before_stats is None or self.after_stats is None:
            raise NotPreparedError("CVADetector.score_block called before prepare(pair); call "
                                   "prepare(pair) first (run and evaluate do).")
        if context_px:
            core = (slice(None), slice(context_px, -context_px), slice(context_px, -context_px))
            before, after = before[core], after[core]
        z_before = _standardise(before, self.before_stats)
        z_after = _standardise(after, self.after_stats)
        diff = z_after - z_before
        return np.sqrt(np.sum(diff * diff, axis=0, dtype=np.float32)).astype(np.float32)


def _standardise(values: np.ndarray, stats: BandStats) -> np.ndarray:
    if values.shape[0] != stats.mean.shape[0]:
        raise BandMismatchError(
            f"block has {values.shape[0]} bands, statistics {stats.mean.shape[0]}")
    std = np.where(stats.std > _MIN_STD, stats.std, 1.0)
    mean = stats.mean.astype(np.float32)[:, None, None]
    scale = (1.0 / std).astype(np.float32)[:, None, None]
    return (values.astype(np.float32) - mean) * scale


def otsu_threshold(hist_counts: np.ndarray, bin_edges: np.ndarray) -> float:
    """Otsu's threshold of a histogram: the cut maximising the between-class variance.

    Args:
      hist_counts: ``(num_bins,)`` counts (any non-negative numbers).
      bin_edges: ``(num_bins + 1,)`` increasing bin edges.

    Returns:
      The bin edge separating the two classes (values ``> threshold`` are the upper class).

    Raises:
      ValueError: Shapes do not match or the histogram is empty.

    Example:
      >>> counts = np.array([10, 10, 0, 0, 0, 0, 10, 10])  # modes in [0, 2) and [6, 8)
      >>> otsu_threshold(counts, np.arange(9.0))  # the middle of the empty gap
      4.0
    """
    counts = np.asarray(hist_counts, dtype=np.float64)
    edges = np.asarray(bin_edges, dtype=np.float64)
    if counts.ndim != 1 or edges.shape != (counts.size + 1,):
        raise ConfigError(
            f"need counts (n,) and edges (n+1,), got {counts.shape} and {edges.shape}")
    total = counts.sum()
    if total <= 0:
        raise EmptySceneError("histogram is empty: no values to threshold")
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight_low = np.cumsum(counts)[:-1]  # class 0 = bins [0, k]
    weight_high = total - weight_low
    sum_low = np.cumsum(counts * centres)[:-1]
    mean_low = sum_low / np.maximum(weight_low, 1e-300)
    mean_high = (np.sum(counts * centres) - sum_low) / np.maximum(weight_high, 1e-300)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between[(weight_low == 0) | (weight_high == 0)] = -1.0
    if between.size == 0 or between.max() < 0:
        return float(edges[-1] if counts[-1] == total else edges[1])
    # the middle of a flat optimum (empty bins between two modes) is the natural cut
    best = np.flatnonzero(between == between.max())
    k = int(best[len(best) // 2]) if np.all(np.diff(best) == 1) else int(best[0])
    return float(edges[k + 1])


def otsu_threshold_dask(score: da.Array, *, num_bins: int = 256) -> float:
    """Otsu's threshold of a lazy score map, ignoring NaN (two passes: range, histogram).

    Args:
      score: ``(y, x)`` float dask (or NumPy) array; NaN/inf pixels are ignored.
      num_bins: Histogram bins over ``[min, max]``.

    Returns:
      The threshold, in the units of ``score``.

    Raises:
      EmptySceneError: No finite value in ``score``.
    """
    import dask
    import dask.array as darr

    score = darr.asarray(score)
    finite = darr.isfinite(score)
    low, high = dask.compute(
        darr.where(finite, score, np.inf).min(), darr.where(finite, score, -np.inf).max()
    )
    low, high = float(low), float(high)
    if not np.isfinite(low):
        raise EmptySceneError("score map has no valid pixel; check the inputs' nodata and extents.")
    if high <= low:
        return low
    below = low - (high - low)  # NaN -> below the histogram range, i.e. not counted
    counts, edges = darr.histogram(
        darr.where(finite, score, below), bins=num_bins, range=(low, high)
    )
    return otsu_threshold(counts.compute(), np.asarray(edges))
