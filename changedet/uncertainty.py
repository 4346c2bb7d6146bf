"""Per-pixel uncertainty of a change mask: the probability that each pixel's decision is wrong.

A cross-validated model carries a :class:`ScoreCalibration`: the frequency of real change
among the out-of-fold pixels at each score (64 bins), measured on scenes its fold models had
not trained on. Applied to a new scene's score ``s`` at threshold ``t``::

    p = P(change | s)                      # from the calibration table
    u = 1 - p  where s > t  (mapped change: wrong if the ground did not change)
    u = p      elsewhere    (mapped no change: wrong if it did)

``u`` is an error probability in ``[0, 1]``: over many pixels, its mean predicts the mask's
error rate, and high ``u`` marks the pixels that are wrong. It costs nothing beyond the score
(one lookup per pixel). ``docs/uncertainty.md`` reports, across leave-cities-out folds, how
well it ranks the wrong pixels (AUROC) and how well it is calibrated; the spread of the score
over test-time transforms was measured too and ranked them worse.

Must not import rasterio, rioxarray, xarray or matplotlib (dask arrays pass through).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from changedet.errors import ConfigError, EmptySceneError

__all__ = ["NUM_BINS", "ScoreCalibration", "error_probability", "fit_calibration"]

#: Score bins of a calibration table fitted by :func:`fit_calibration`.
NUM_BINS = 64


@dataclasses.dataclass(frozen=True)
class ScoreCalibration:
    """How often the ground really changed at each score, measured out of fold.

    Attributes:
      edges: ``n + 1`` increasing bin edges on the score; scores outside fall in the end bins.
      p_change: ``n`` frequencies of change among the labelled pixels of each bin (smoothed
        towards 1/2 by one pseudo-pixel of each class, so an empty bin says 0.5).
      pixels: Labelled pixels the table was measured on.
    """

    edges: tuple[float, ...]
    p_change: tuple[float, ...]
    pixels: int = 0

    def __post_init__(self) -> None:
        edges = np.asarray(self.edges, np.float64)
        if len(self.p_change) < 1 or len(edges) != len(self.p_change) + 1:
            raise ConfigError(f"a score calibration needs n >= 1 frequencies and n + 1 edges; "
                              f"got {len(self.p_change)} and {len(edges)}.")
        if not (np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0)):
            raise ConfigError("score calibration edges must be finite and increasing.")
        p = np.asarray(self.p_change, np.float64)
        if not np.all((p >= 0) & (p <= 1)):
            raise ConfigError("score calibration frequencies must lie in [0, 1].")

    def probability(self, score: Any) -> Any:
        """``P(change | score)`` elementwise (float32; NaN where ``score`` is NaN). Numpy or
        dask in, the same out (dask stays lazy)."""
        if hasattr(score, "map_blocks"):
            return score.map_blocks(self.probability, dtype=np.float32)
        score = np.asarray(score)
        inner = np.asarray(self.edges[1:-1], np.float64)
        table = np.asarray(self.p_change, np.float32)
        p = table[np.searchsorted(inner, np.nan_to_num(score), side="right")]
        return np.where(np.isnan(score), np.float32(np.nan), p).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (model files)."""
        return {"edges": list(self.edges), "p_change": list(self.p_change),
                "pixels": self.pixels}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreCalibration:
        return cls(edges=tuple(float(e) for e in data["edges"]),
                   p_change=tuple(float(p) for p in data["p_change"]),
                   pixels=int(data.get("pixels", 0)))


def fit_calibration(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                    valids: Sequence[np.ndarray], *, num_bins: int = NUM_BINS,
                    score_range: tuple[float, float] | None = None) -> ScoreCalibration:
    """The change frequency per score bin over labelled pixels of several scenes.

    Fit it on out-of-fold scores (each scene scored by a model that did not train on it), or
    it will claim the confidence a model has on its own training scenes.

    Args:
      scores, labels, valids: Per scene, the score map, the 0/1 labels and the labelled mask.
      num_bins: Equal-width bins over ``score_range``.
      score_range: Default ``(0, 1)`` for probabilities, else the scores' min and max.

    Raises:
      EmptySceneError: Without labelled pixels of both classes.

    Example:
      >>> s = np.array([[0.1, 0.2, 0.8, 0.9]]); lab = np.array([[0, 0, 1, 0]])
      >>> cal = fit_calibration([s], [lab], [np.ones_like(s, bool)], num_bins=2)
      >>> cal.p_change, cal.pixels
      ((0.25, 0.5), 4)
    """
    flat = [(np.asarray(s)[v & np.isfinite(s)], np.asarray(lab)[v & np.isfinite(s)])
            for s, lab, v in zip(scores, labels, valids, strict=True)]
    s = np.concatenate([f[0] for f in flat]) if flat else np.empty(0)
    lab = np.concatenate([f[1] for f in flat]).astype(bool) if flat else np.empty(0, bool)
    if not 0 < lab.sum() < lab.size:
        raise EmptySceneError(f"a score calibration needs labelled pixels of both classes; got "
                              f"{int(lab.sum())} changed of {lab.size}.")
    if score_range is None:
        lo, hi = float(s.min()), float(s.max())
        score_range = (0.0, 1.0) if lo >= 0 and hi <= 1 else (lo, hi)
    lo, hi = score_range
    if not hi > lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, num_bins + 1)
    idx = np.clip(np.searchsorted(edges[1:-1], s, side="right"), 0, num_bins - 1)
    total = np.bincount(idx, minlength=num_bins)
    changed = np.bincount(idx, weights=lab, minlength=num_bins)
    p = (changed + 1.0) / (total + 2.0)
    return ScoreCalibration(tuple(float(e) for e in edges), tuple(float(x) for x in p),
                            int(s.size))


def error_probability(score: Any, threshold: float, calibration: ScoreCalibration) -> Any:
    """``P(the mask is wrong here)``: ``1 - P(change | score)`` where ``score > threshold``,
    ``P(change | score)`` elsewhere; float32, NaN where ``score`` is NaN. Numpy or dask.

    Example:
      >>> cal = ScoreCalibration((0.0, 0.5, 1.0), (0.1, 0.7))
      >>> error_probability(np.array([0.2, 0.6, 0.9, np.nan]), 0.8, cal)
      array([0.1, 0.7, 0.3, nan], dtype=float32)
    """
    p = calibration.probability(score)
    # np.where dispatches to dask for dask arrays (NEP 18): lazy, blockwise
    return np.where(score > threshold, np.float32(1) - p, p).astype(np.float32)
