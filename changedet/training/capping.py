"""The scene change cap measured on out-of-fold maps, and the threshold chosen under it.

``run`` applies a model's cap (:mod:`changedet.changecap`) by raising a scene's threshold where
more than ``max_fraction`` of its valid pixels score above it. The threshold that is best
*without* the cap is not the best one *with* it: the cap already removes the flood of false
positives a hot scene would add at a low threshold, so the pooled F1 under the cap can peak at a
lower threshold, where the calm scenes gain recall. :func:`change_cap_report` measures both
choices on the out-of-fold maps, each estimated **leave-one-fold-out** (threshold chosen on the
other folds' scenes, applied to this fold's), keeps the re-chosen threshold only where that
nested figure beats the cap at the model's own threshold, and keeps the cap only where the rule
that would ship beats the threshold alone, nested as well.

Per scene, the cap's raised threshold ``q`` does not depend on the model's threshold ``t``
(it is the order statistic at the cap), so the effective threshold is ``max(t, q)``: the counts
at every candidate ``t`` come from one sort of the scene's labelled scores.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from changedet import metrics
from changedet.data import Scene

__all__ = ["change_cap_for", "change_cap_report"]

log = logging.getLogger(__name__)


def change_cap_for(scenes: Sequence[Scene]) -> float:
    """The change cap a model trained on ``scenes`` gets: the largest share of changed pixels
    among their valid labelled pixels, rounded up to a whole percent (at least 1 %).

    The cap applies to all of a scene's valid pixels; where labels are sparse (a few labelled
    samples, the rest unlabelled), the labelled share usually overstates the scene's change,
    which errs towards a looser cap."""
    worst = 0.0
    for s in scenes:
        labelled = s.valid & (s.label <= 1)
        if labelled.any():
            worst = max(worst, float((s.label[labelled] == 1).mean()))
    return float(min(1.0, max(0.01, np.ceil(100 * worst - 1e-9) / 100)))


class _SceneTable(NamedTuple):
    """One scene's labelled out-of-fold scores, sorted (float32), and its cap threshold."""

    changed: np.ndarray
    unchanged: np.ndarray
    cap_threshold: float  # the raised threshold at any model threshold below it (-inf: none)

    def counts(self, thresholds: np.ndarray, capped: bool) -> np.ndarray:
        """``[len(thresholds), 4]`` int64 (tp, fp, fn, tn) of ``score > threshold``, the
        threshold raised to the cap's where ``capped``."""
        t = np.asarray(thresholds, np.float32)
        if capped:
            t = np.maximum(t, np.float32(self.cap_threshold))
        tp = self.changed.size - np.searchsorted(self.changed, t, side="right")
        fp = self.unchanged.size - np.searchsorted(self.unchanged, t, side="right")
        return np.stack([tp, fp, self.changed.size - tp, self.unchanged.size - fp],
                        axis=-1).astype(np.int64)


def _table(score: np.ndarray, scene: Scene, cap: float) -> _SceneTable:
    score = np.asarray(score, np.float32)
    labelled = scene.valid & np.isfinite(score)
    label = scene.label[labelled] == 1
    values = score[labelled]
    # the cap's threshold at any model threshold below it: the (allowed + 1)-th largest valid
    # score, as changecap.capped_threshold finds it (a test checks they agree)
    pool = score[scene.pixels_valid & np.isfinite(score)]
    allowed = math.floor(cap * pool.size + 1e-9)
    q = (float(np.partition(pool, pool.size - 1 - allowed)[pool.size - 1 - allowed])
         if allowed < pool.size else -np.inf)
    return _SceneTable(np.sort(values[label]), np.sort(values[~label]), q)


def _f1(counts: np.ndarray) -> np.ndarray:
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)


def _best(tables: Sequence[_SceneTable], grid: np.ndarray, capped: bool) -> float:
    """The F1-best threshold of ``grid`` over the pooled ``tables`` (ties: the lowest)."""
    pooled = np.sum([t.counts(grid, capped) for t in tables], axis=0)
    return float(grid[int(np.argmax(_f1(pooled)))])


def _nested(tables: dict[str, _SceneTable], folds: Sequence[Sequence[str]],
            grid: np.ndarray) -> dict[str, float]:
    """Leave-one-fold-out F1 of three decision rules, each fold's threshold chosen on the other
    folds (at least two folds): the threshold alone, the cap at that threshold (what ``run``
    did with a threshold chosen without the cap) and the cap with the threshold chosen under
    it."""
    totals = {"threshold_only": np.zeros(4, np.int64), "cap": np.zeros(4, np.int64),
              "cap_rechosen": np.zeros(4, np.int64)}
    for k, held_out in enumerate(folds):
        others = [tables[n] for i, f in enumerate(folds) if i != k for n in f]
        plain_t = _best(others, grid, capped=False)
        cap_t = _best(others, grid, capped=True)
        for n in held_out:
            totals["threshold_only"] += tables[n].counts(np.array([plain_t]), False)[0]
            totals["cap"] += tables[n].counts(np.array([plain_t]), True)[0]
            totals["cap_rechosen"] += tables[n].counts(np.array([cap_t]), True)[0]
    return {k: float(_f1(v)) for k, v in totals.items()}


def change_cap_report(scores: dict[str, np.ndarray], scenes: Sequence[Scene],
                      folds: Sequence[Sequence[str]], threshold: float,
                      max_fraction: float | None = None, *, num_thresholds: int = 512
                      ) -> dict[str, Any]:
    """Out-of-fold figures of the scene change cap (:mod:`changedet.changecap`): every held-out
    scene's threshold raised as ``run`` raises it, at the model's ``threshold`` or at one
    re-chosen under the cap.

    Args:
      scores: Out-of-fold score maps by scene name (NaN where invalid).
      scenes: The scenes (labels, valid masks).
      folds: Scene names per fold.
      threshold: The model's threshold (the pooled-OOF one, chosen without the cap).
      max_fraction: The cap; default :func:`change_cap_for` of ``scenes``.
      num_thresholds: Grid of candidate thresholds over the scores' range.

    Returns:
      ``max_fraction``; ``threshold``: the threshold to ship with the cap: the one maximising
      pooled OOF F1 under the cap when its leave-one-fold-out F1 (``nested["cap_rechosen"]``)
      beats the cap at the model's threshold (``nested["cap"]``), else ``model_threshold``
      (``rechosen`` says which); ``pooled``, ``per_scene`` metrics and ``per_fold_f1`` with
      the cap at ``threshold``; ``raised``: the scenes whose threshold it raised, with the
      threshold; ``f1_without``: pooled F1 at the model's threshold without the cap;
      ``nested``: leave-one-fold-out F1 of the threshold alone, the cap, and the cap with the
      threshold re-chosen (None for a single fold); ``kept``: whether the rule that would ship
      (the cap at ``threshold``) beats the threshold alone leave-one-fold-out (one fold: pooled,
      in sample) — what ``train_with_cv`` decides by: a cap that never binds, or costs F1, is
      not stored.
    """
    by_name = {s.name: s for s in scenes}
    cap = change_cap_for(scenes) if max_fraction is None else float(max_fraction)
    names = [n for fold in folds for n in fold]
    tables = {n: _table(scores[n], by_name[n], cap) for n in names}
    # the scores' range, from the ends of the sorted tables
    ends = [a[[0, -1]] for t in tables.values() for a in (t.changed, t.unchanged) if a.size]
    lo, hi = (float(np.min(ends)), float(np.max(ends))) if ends else (0.0, 1.0)
    grid = np.linspace(lo, max(hi, lo + 1e-6), num_thresholds)
    # one fold (a screening run): nothing to nest; the model's threshold and the in-sample test
    nested = _nested(tables, folds, grid) if len(folds) > 1 else None
    rechosen = bool(nested and nested["cap_rechosen"] > nested["cap"])
    chosen = _best(list(tables.values()), grid, capped=True) if rechosen else float(threshold)
    at = np.array([chosen], np.float64)
    capped = {n: metrics.Counts(*tables[n].counts(at, True)[0]) for n in names}
    plain = {n: metrics.Counts(*tables[n].counts(np.array([threshold]), False)[0])
             for n in names}

    def scores_of(counts: Sequence[metrics.Counts]) -> metrics.Metrics:
        return metrics.scores_from_counts(*metrics.sum_counts(*counts))

    pooled = scores_of(list(capped.values()))
    without = scores_of(list(plain.values()))
    raised = {n: tables[n].cap_threshold for n in names if tables[n].cap_threshold > chosen}
    if nested is None:
        kept = pooled.f1 > without.f1
    else:  # the rule that would ship must beat the threshold alone, leave-one-fold-out
        kept = nested["cap_rechosen" if rechosen else "cap"] > nested["threshold_only"]
        log.info("change cap %.3g %%: leave-one-fold-out F1 %.3f with the threshold alone, "
                 "%.3f with the cap, %.3f with the threshold re-chosen under it; threshold "
                 "%.4f (%s), cap %s", 100 * cap, nested["threshold_only"], nested["cap"],
                 nested["cap_rechosen"], chosen, "re-chosen" if rechosen else "the model's",
                 "kept" if kept else "dropped")
    return {
        "max_fraction": cap,
        "threshold": chosen,
        "model_threshold": float(threshold),
        "rechosen": bool(rechosen),
        "pooled": pooled._asdict(),
        "per_scene": {n: scores_of([c])._asdict() for n, c in capped.items()},
        "per_fold_f1": [scores_of([capped[n] for n in fold]).f1 for fold in folds],
        "raised": raised,
        "f1_without": without.f1,
        "nested": nested,
        "kept": bool(kept),
    }
