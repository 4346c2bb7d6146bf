"""Change-detection metrics: confusion counts, scores, PR curves, threshold choice.

Counts are *summable*: compute them per batch / per scene / per device, add them up, and only
then turn them into ratios on the host (exact, unlike a mean of means). The jnp version is
pure and usable inside ``jax.jit``; the numpy twin uses int64 for whole scenes.

Precision–recall curves and the F1-optimal threshold come from per-class score histograms on
fixed threshold grids, so they are exact at the grid thresholds for any number of scenes and
need memory proportional to the grid, not the pixels. The decision rule everywhere is
``changed = score > threshold``.

Must not import rasterio, rioxarray, xarray, dask or matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from scipy.stats import rankdata

from changedet.errors import ConfigError, EmptySceneError, GridMismatchError

__all__ = [
    "Counts",
    "Metrics",
    "PRCurve",
    "best_f1_index",
    "best_threshold",
    "confusion_counts",
    "confusion_counts_np",
    "pr_curve",
    "score_histograms",
    "curve_from_histograms",
    "scores_from_counts",
    "sum_counts",
]


class Counts(NamedTuple):
    """Confusion counts of a binary change map (changed = positive class).

    Fields are scalar integer arrays (int32 from :func:`confusion_counts`, int64 from
    :func:`confusion_counts_np`); add two with :func:`sum_counts`.
    """

    tp: ArrayLike
    fp: ArrayLike
    fn: ArrayLike
    tn: ArrayLike


class Metrics(NamedTuple):
    """Scores of a binary change map, all float in [0, 1] except ``kappa`` in [-1, 1]; all NaN
    when no pixel was valid (see :func:`scores_from_counts`)."""

    precision: float
    recall: float
    f1: float
    iou: float
    overall_accuracy: float
    kappa: float


class PRCurve(NamedTuple):
    """Precision/recall/F1 at each threshold of a grid (rule: ``score > threshold``).

    All fields are 1-D arrays of length ``num_thresholds``: ``thresholds`` float64 ascending,
    ``tp``/``fp``/``fn``/``tn`` int64, ``precision``/``recall``/``f1`` float64.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray


def confusion_counts(pred: ArrayLike, label: ArrayLike, valid: ArrayLike) -> Counts:
    """Confusion counts over valid pixels, in jnp (pure, jit-friendly).

    Args:
      pred: Predicted change, bool (or 0/1) array of any shape, e.g. ``[N, H, W]``.
      label: Reference change, 0/1 (int or bool), same shape.
      valid: bool, same shape; False pixels (nodata, padding, unlabelled) are not counted.

    Returns:
      :class:`Counts` of int32 scalars.

    Example:
      >>> import numpy as np
      >>> c = confusion_counts(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]), np.ones(4, bool))
      >>> [int(v) for v in c]
      [1, 1, 1, 1]
    """
    pred = jnp.asarray(pred).astype(bool)
    label = jnp.asarray(label).astype(bool)
    valid = jnp.asarray(valid).astype(bool)
    tp = jnp.sum(pred & label & valid, dtype=jnp.int32)
    fp = jnp.sum(pred & ~label & valid, dtype=jnp.int32)
    fn = jnp.sum(~pred & label & valid, dtype=jnp.int32)
    tn = jnp.sum(~pred & ~label & valid, dtype=jnp.int32)
    return Counts(tp, fp, fn, tn)


def confusion_counts_np(pred: np.ndarray, label: np.ndarray, valid: np.ndarray) -> Counts:
    """Numpy twin of :func:`confusion_counts` with int64 counts (whole scenes on the host).

    Args:
      pred: Predicted change, bool or 0/1, any shape.
      label: Reference change, 0/1, same shape.
      valid: bool, same shape.

    Returns:
      :class:`Counts` of Python ints.
    """
    pred = np.asarray(pred).astype(bool)
    label = np.asarray(label).astype(bool)
    valid = np.asarray(valid).astype(bool)
    if not (pred.shape == label.shape == valid.shape):
        raise GridMismatchError(
            f"pred, label and valid must have the same shape; got {pred.shape}, {label.shape}, "
            f"{valid.shape}: crop or pad them to the same grid first."
        )
    tp = int(np.count_nonzero(pred & label & valid))
    fp = int(np.count_nonzero(pred & ~label & valid))
    fn = int(np.count_nonzero(~pred & label & valid))
    tn = int(np.count_nonzero(~pred & ~label & valid))
    return Counts(tp, fp, fn, tn)


def sum_counts(*counts: Counts) -> Counts:
    """Element-wise sum of several :class:`Counts` (host ints, int64)."""
    total = [0, 0, 0, 0]
    for c in counts:
        for i, v in enumerate(c):
            total[i] += int(np.asarray(v, dtype=np.int64).sum())
    return Counts(*total)


def _ratios(tp, fp, fn, tn):
    """Vectorised precision/recall/F1/IoU/OA/kappa in float64 with defined empty-class values.

    Conventions:
      * no valid pixel at all (``tp + fp + fn + tn == 0``): every score is NaN. There is
        nothing to score, and a number (1, "perfect") would let an all-nodata map pass a check;
      * otherwise every value is a number, never NaN:
      * no predicted and no true positives: precision = recall = F1 = IoU = 1 (perfect);
      * predicted none but some exist: precision = 0; none exist but some predicted: recall = 0;
      * kappa = 1 when the agreement is perfect, else 0 when the chance agreement is 1 (a
        single class in both maps).
    """
    tp, fp, fn, tn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    pred_pos = tp + fp
    true_pos = tp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_pos > 0, tp / pred_pos, np.where(fn > 0, 0.0, 1.0))
        recall = np.where(true_pos > 0, tp / true_pos, np.where(fp > 0, 0.0, 1.0))
        f1_den = 2 * tp + fp + fn
        f1 = np.where(f1_den > 0, 2 * tp / f1_den, 1.0)
        iou_den = tp + fp + fn
        iou = np.where(iou_den > 0, tp / iou_den, 1.0)
        oa = np.where(n > 0, (tp + tn) / n, 1.0)
        n_safe = np.where(n > 0, n, 1.0)
        expected = (pred_pos * true_pos + (tn + fn) * (tn + fp)) / (n_safe * n_safe)
        kappa = np.where(
            expected < 1.0,
            (oa - expected) / np.where(expected < 1.0, 1.0 - expected, 1.0),
            np.where(oa >= 1.0, 1.0, 0.0),
        )
    empty = n == 0
    return tuple(np.where(empty, np.nan, v) for v in (precision, recall, f1, iou, oa, kappa))


def scores_from_counts(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike, tn: ArrayLike) -> Metrics:
    """Precision, recall, F1, IoU (of the change class), overall accuracy and Cohen's kappa.

    Computed on the host in float64. Empty classes give defined values: predicting no change
    where there is none scores 1. No valid pixel at all (all four counts 0) gives NaN
    everywhere: nothing was scored, and NaN fails every ``>`` check a report or test makes.

    Args:
      tp: True positives (changed, predicted changed), pixels.
      fp: False positives, pixels.
      fn: False negatives, pixels.
      tn: True negatives, pixels.

    Returns:
      :class:`Metrics` of Python floats (all NaN when no pixel is valid).

    Example:
      >>> m = scores_from_counts(tp=6, fp=2, fn=4, tn=88)
      >>> round(m.precision, 3), round(m.recall, 3), round(m.f1, 3)
      (0.75, 0.6, 0.667)
      >>> scores_from_counts(0, 0, 0, 0).f1
      nan
    """
    values = _ratios(*(int(np.asarray(v)) for v in (tp, fp, fn, tn)))
    return Metrics(*(float(v) for v in values))


def _as_list(x: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(x, np.ndarray):
        return [x]
    return [np.asarray(a) for a in x]


def score_histograms(
    score: np.ndarray, label: np.ndarray, valid: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of changed / unchanged valid pixels per threshold bin (summable across scenes).

    Bin ``k + 1`` holds scores in ``(thresholds[k], thresholds[k+1]]`` (the last bin is open
    above); bin 0 holds scores ``<= thresholds[0]``. NaN scores are treated as invalid.

    Args:
      score: float array, any shape.
      label: 0/1 array, same shape.
      valid: bool array, same shape.
      thresholds: 1-D ascending float64 grid.

    Returns:
      ``(changed_hist, unchanged_hist)``, int64 arrays of length ``len(thresholds) + 1``.
    """
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label).astype(bool)
    ok = np.asarray(valid).astype(bool) & np.isfinite(score)
    bins = np.searchsorted(np.asarray(thresholds, np.float64), score[ok], side="left")
    n = len(thresholds) + 1
    lab = label[ok]
    changed = np.bincount(bins[lab], minlength=n).astype(np.int64)
    unchanged = np.bincount(bins[~lab], minlength=n).astype(np.int64)
    return changed, unchanged


def curve_from_histograms(
    thresholds: np.ndarray, changed_hist: np.ndarray, unchanged_hist: np.ndarray
) -> PRCurve:
    """Builds a :class:`PRCurve` from (summed) :func:`score_histograms` output."""
    # Pixels predicted changed at threshold k: bins k+1 .. end (score > thresholds[k]).
    pos_at_or_above = np.cumsum(changed_hist[::-1])[::-1][1:]
    neg_at_or_above = np.cumsum(unchanged_hist[::-1])[::-1][1:]
    total_pos = int(changed_hist.sum())
    total_neg = int(unchanged_hist.sum())
    tp = pos_at_or_above.astype(np.int64)
    fp = neg_at_or_above.astype(np.int64)
    fn = total_pos - tp
    tn = total_neg - fp
    precision, recall, f1, _, _, _ = _ratios(tp, fp, fn, tn)
    return PRCurve(np.asarray(thresholds, np.float64), tp, fp, fn, tn, precision, recall, f1)


def _threshold_grid(
    scores: list[np.ndarray], valids: list[np.ndarray], num_thresholds: int, score_range
) -> np.ndarray:
    if num_thresholds < 2:
        raise ConfigError(f"num_thresholds must be >= 2; got {num_thresholds}.")
    if score_range is None:
        lo, hi = np.inf, -np.inf
        for s, v in zip(scores, valids, strict=True):
            s = np.asarray(s, dtype=np.float64)[np.asarray(v, bool) & np.isfinite(s)]
            if s.size:
                lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
        if not np.isfinite(lo):
            lo, hi = 0.0, 1.0
    else:
        lo, hi = (float(v) for v in score_range)
    if hi <= lo:
        hi = lo + 1e-6 * max(1.0, abs(lo))
    return np.linspace(lo, hi, num_thresholds)


def pr_curve(
    score: np.ndarray | Sequence[np.ndarray],
    label: np.ndarray | Sequence[np.ndarray],
    valid: np.ndarray | Sequence[np.ndarray],
    num_thresholds: int = 256,
    *,
    score_range: tuple[float, float] | None = None,
) -> PRCurve:
    """Precision–recall curve over one scene or many, exact at ``num_thresholds`` thresholds.

    Args:
      score: Change score map(s), float ``(h, w)`` (or any shape); or a list of them, one per
        scene (shapes may differ between scenes).
      label: Matching 0/1 reference map(s).
      valid: Matching bool mask(s); invalid and non-finite-score pixels are ignored.
      num_thresholds: Grid size; thresholds are evenly spaced over ``score_range``.
      score_range: ``(low, high)`` of the grid; default: min and max valid score.

    Returns:
      :class:`PRCurve`; rule ``changed = score > threshold``.
    """
    scores, labels, valids = _as_list(score), _as_list(label), _as_list(valid)
    if not (len(scores) == len(labels) == len(valids)):
        raise ConfigError(
            f"pr_curve needs as many label and valid maps as score maps; got {len(scores)}, "
            f"{len(labels)}, {len(valids)}."
        )
    thresholds = _threshold_grid(scores, valids, num_thresholds, score_range)
    changed = np.zeros(num_thresholds + 1, np.int64)
    unchanged = np.zeros(num_thresholds + 1, np.int64)
    for s, lab, v in zip(scores, labels, valids, strict=True):
        c, u = score_histograms(s, lab, v, thresholds)
        changed += c
        unchanged += u
    return curve_from_histograms(thresholds, changed, unchanged)


def best_f1_index(curve: PRCurve) -> int:
    """Index of the F1-best threshold of ``curve``; ties go to the lowest threshold.

    Raises:
      EmptySceneError: The curve counts no valid pixel (its F1 is NaN at every threshold, and
        ``argmax`` would silently pick the first).
    """
    if curve.tp.size == 0 or int(curve.tp[0] + curve.fp[0] + curve.fn[0] + curve.tn[0]) == 0:
        raise EmptySceneError(
            "no valid labelled pixel to choose a threshold on: every score is NaN or every "
            "pixel is masked (nodata, unlabelled); check the scenes' labels and valid masks."
        )
    return int(np.argmax(curve.f1))


def best_threshold(
    score: np.ndarray | Sequence[np.ndarray],
    label: np.ndarray | Sequence[np.ndarray],
    valid: np.ndarray | Sequence[np.ndarray],
    num_thresholds: int = 256,
    *,
    score_range: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """The grid threshold maximising F1 of the change class, pooled over all scenes.

    Ties go to the lowest threshold. Arguments are those of :func:`pr_curve`.

    Returns:
      ``(threshold, f1)`` as floats; apply as ``score > threshold``.

    Raises:
      EmptySceneError: No valid pixel with a finite score in any scene.

    Example:
      >>> import numpy as np
      >>> s = np.array([0.1, 0.2, 0.8, 0.9]); y = np.array([0, 0, 1, 1])
      >>> t, f1 = best_threshold(s, y, np.ones(4, bool), num_thresholds=9)
      >>> f1, 0.2 <= t < 0.8
      (1.0, True)
    """
    curve = pr_curve(score, label, valid, num_thresholds, score_range=score_range)
    k = best_f1_index(curve)
    return float(curve.thresholds[k]), float(curve.f1[k])


def auroc(score: ArrayLike, positive: ArrayLike) -> float:
    """Area under the ROC curve of ``score`` for telling ``positive`` from the rest.

    The probability that a random positive scores above a random negative (ties count half),
    from the ranks (Mann-Whitney U). Non-finite scores are dropped.

    Raises:
      EmptySceneError: When either class is empty (the area is undefined).

    Example:
      >>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
      0.75
    """
    s = np.asarray(score, np.float64).ravel()
    p = np.asarray(positive, bool).ravel()
    keep = np.isfinite(s)
    s, p = s[keep], p[keep]
    n_pos = int(p.sum())
    n_neg = int(p.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise EmptySceneError(f"AUROC needs both classes; got {n_pos} positive and {n_neg} "
                              "negative pixels.")
    ranks = rankdata(s)
    u = ranks[p].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


__all__ += ["auroc"]
