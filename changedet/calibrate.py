"""A scene's decision threshold from a handful of labelled pixels (``run --calibrate``).

The packaged models' threshold is the best one on average over their cross-validation scenes;
on a given scene the best one can differ (a brighter season, another kind of change). Given
scores at pixels the user labelled changed (1) or unchanged (0), :func:`calibrate_threshold`
picks the threshold that maximises the **scene's expected F1**:

* the clicked changed pixels give the recall ``R(t)`` of each threshold ``t``;
* a sample of the whole scene's scores gives the share ``q(t)`` of pixels marked changed;
* the scene's share of change ``pi`` is bounded by ``q(t) >= pi R(t)`` at every threshold (the
  marked pixels include the change found): ``pi`` is taken as the tightest bound over the
  thresholds that still find a fifth of the clicked change;
* then F1 ``= 2 TP / (marked + changed) = 2 pi R(t) / (q(t) + pi)`` for every ``t``.

Clicks need not be in proportion to the classes (change is usually rare; users click it
more). Without a scene sample it maximises the points' **balanced accuracy** instead (the mean
of both classes' hit rates, also independent of the click proportions). Among equally good
thresholds it takes the one nearest the model's own (the prior), so a few points move it only
as far as they must. With fewer than ``min_per_class`` pixels of either class it keeps the
prior and says so.

:func:`calibrate_threshold` is NumPy only; :func:`calibrate_on_points` evaluates a run's lazy
score map (dask) at the points and on a few sampled blocks, in the run's own graph.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from changedet import io
from changedet.errors import CalibrationError
from changedet.io.points import read_points

log = logging.getLogger(__name__)

__all__ = ["MIN_PER_CLASS", "Calibration", "calibrate_threshold"]

#: Fewest labelled pixels of each class for the threshold to move.
MIN_PER_CLASS = 5


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The outcome of calibrating a threshold on labelled pixels.

    Attributes:
      threshold: The threshold to use (the prior when ``used`` is False).
      prior: The model's (or Otsu's) threshold before calibration.
      used: Whether the labelled pixels chose the threshold.
      num_features: Vector features that labelled the pixels.
      num_changed, num_unchanged: Labelled pixels of each class.
      balanced_accuracy: On the labelled pixels, at ``threshold``.
      prior_balanced_accuracy: On the labelled pixels, at ``prior``.
    """

    threshold: float
    prior: float
    used: bool
    num_features: int
    num_changed: int
    num_unchanged: int
    balanced_accuracy: float
    prior_balanced_accuracy: float

    def tags(self) -> dict[str, str]:
        """GeoTIFF tags recording the calibration."""
        return {"calibration_threshold": repr(float(self.threshold)),
                "calibration_prior_threshold": repr(float(self.prior)),
                "calibration_used": str(self.used).lower(),
                "calibration_features": str(self.num_features),
                "calibration_changed_px": str(self.num_changed),
                "calibration_unchanged_px": str(self.num_unchanged),
                "calibration_balanced_accuracy": f"{self.balanced_accuracy:.4f}",
                "calibration_prior_balanced_accuracy": f"{self.prior_balanced_accuracy:.4f}"}


def balanced_accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Mean of the changed pixels' recall and the unchanged pixels' specificity at
    ``score > threshold`` (NaN for a class with no pixel)."""
    changed = labels == 1
    hit = scores > threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = hit[changed].mean() if changed.any() else np.nan
        tnr = (~hit[~changed]).mean() if (~changed).any() else np.nan
    return float(0.5 * (tpr + tnr))


def calibrate_threshold(scores: np.ndarray, labels: np.ndarray, prior: float, *,
                        scene_scores: np.ndarray | None = None, num_features: int = 0,
                        min_per_class: int = MIN_PER_CLASS) -> Calibration:
    """The scene-F1-best threshold (balanced accuracy without ``scene_scores``) on labelled
    pixels, nearest ``prior`` among ties (see the module doc).

    Args:
      scores: Change scores at the labelled pixels (finite).
      labels: 1 changed, 0 unchanged, per pixel.
      prior: The threshold to start from (and keep, with too few pixels of a class).
      scene_scores: Finite scores of a sample of the scene's valid pixels (or all of them).
      num_features: Features the pixels came from (recorded only).
      min_per_class: Fewest pixels of each class for the threshold to move.

    Example:
      >>> cal = calibrate_threshold(np.array([.1, .2, .3, .6, .7, .8]),
      ...                           np.array([0, 0, 0, 1, 1, 1]), prior=0.9, min_per_class=3)
      >>> round(cal.threshold, 2), cal.balanced_accuracy
      (0.45, 1.0)
    """
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(np.uint8)
    num_changed = int((labels == 1).sum())
    num_unchanged = int(labels.size - num_changed)
    prior_ba = balanced_accuracy(scores, labels, prior)
    keep = Calibration(float(prior), float(prior), False, num_features, num_changed,
                       num_unchanged, prior_ba, prior_ba)
    if num_changed < min_per_class or num_unchanged < min_per_class:
        log.warning("calibration needs at least %d changed and %d unchanged labelled pixels; "
                    "got %d and %d: keeping the threshold %.4g", min_per_class, min_per_class,
                    num_changed, num_unchanged, prior)
        return keep
    values = np.unique(scores)
    # one candidate per interval between consecutive scores (its midpoint), the two open
    # ends, and the prior itself (so an already-best prior is kept exactly)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2,
                                 [values[-1]], [prior]])
    order = np.argsort(scores)
    sorted_scores, sorted_changed = scores[order], labels[order] == 1
    # pixels at or below each candidate, by class: counts of the complement of "score > t"
    below = np.searchsorted(sorted_scores, candidates, side="right")
    changed_below = np.concatenate([[0], np.cumsum(sorted_changed)])[below]
    unchanged_below = below - changed_below
    recall = (num_changed - changed_below) / num_changed
    false_alarms = 1.0 - unchanged_below / num_unchanged
    ba = 0.5 * (recall + 1.0 - false_alarms)
    objective = ba
    if scene_scores is not None and np.size(scene_scores):
        marked = 1.0 - np.searchsorted(np.sort(np.ravel(scene_scores)), candidates,
                                       side="right") / np.size(scene_scores)
        # q(t) >= share * R(t) at every t (marked pixels include the found change): the
        # tightest such bound, over thresholds that still find a fifth of the clicked change
        usable = recall >= 0.2
        share = float(np.clip(np.min(marked[usable] / recall[usable]), 1e-6, 1.0))
        objective = 2 * share * recall / (marked + share)  # F1 = 2 TP / (marked + changed)
        log.info("calibration: the scene's share of change is at most %.3g", share)
    best = objective.max()
    tied = np.flatnonzero(objective >= best - 1e-12)
    choice = tied[np.argmin(np.abs(candidates[tied] - prior))]
    return dataclasses.replace(keep, threshold=float(candidates[choice]), used=True,
                               balanced_accuracy=float(ba[choice]))


#: Blocks of the score map sampled for the scene's score distribution in calibration.
CALIBRATION_BLOCKS = 8


def _sample_blocks(score: da.Array) -> list[da.Array]:
    """Up to :data:`CALIBRATION_BLOCKS` whole blocks of the score map, spread over the scene
    (all of a small scene), for the scene's score distribution."""
    rows, cols = score.numblocks
    picks = np.unique(np.linspace(0, rows * cols - 1, min(CALIBRATION_BLOCKS, rows * cols))
                      .round().astype(int))
    return [score.blocks[int(i) // cols, int(i) % cols] for i in picks]


def calibrate_on_points(score: da.Array, pair: io.RasterPair, points: str | Path, prior: float,
                        *, prop: str = "change") -> Calibration:
    """The scene's threshold from labelled points (see :mod:`changedet.calibrate`): the score
    is computed at their pixels (the blocks holding them) and on a few sampled blocks, in one
    dask pass over the same graph the outputs are written from.

    Raises:
      CalibrationError: A point (or a whole polygon) on nodata, or as :func:`io.read_points`.
    """
    pixels = read_points(points, pair.grid, prop=prop)
    valid, values, *sample = dask.compute(pair.valid.data.vindex[pixels.rows, pixels.cols],
                                          score.vindex[pixels.rows, pixels.cols],
                                          *_sample_blocks(score))
    scene = np.concatenate([np.ravel(b) for b in sample])
    ok = np.asarray(valid, bool) & np.isfinite(values)
    usable = np.bincount(pixels.feature[ok], minlength=pixels.num_features)
    if (usable == 0).any():
        first = int(np.flatnonzero(usable == 0)[0])
        raise CalibrationError(
            f"{points}: feature {first} lies on nodata (a cloud, a nodata pixel or outside one "
            "date's footprint); move it onto clear ground or remove it.")
    cal = calibrate_threshold(values[ok], pixels.labels[ok], prior,
                              scene_scores=scene[np.isfinite(scene)],
                              num_features=pixels.num_features)
    log.info("calibration on %d labelled features (%d changed, %d unchanged px): threshold "
             "%.4g (model %.4g); balanced accuracy on them %.3f (model's threshold %.3f)",
             cal.num_features, cal.num_changed, cal.num_unchanged, cal.threshold, cal.prior,
             cal.balanced_accuracy, cal.prior_balanced_accuracy)
    return cal
