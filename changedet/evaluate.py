"""Accuracy of a change detector on labelled in-memory scenes, side by side with the CVA baseline.

Per scene and pooled (counts summed over scenes, then ratios) precision, recall, F1, IoU, overall
accuracy and kappa of the change class, over valid labelled pixels only. Detectors follow the
pipeline protocol (``prepare``-free here: ``score_block``, ``threshold``, ``halo_px``, ``name``);
each scene is scored whole, reflect-padded by ``halo_px`` like the pipeline's blocks. A detector
without a threshold (CVA) is thresholded with Otsu per scene. Rule: ``changed = score > t``.
NumPy only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from changedet import metrics
from changedet.changecap import cap_in_force, capped_threshold
from changedet.data import Scene
from changedet.detectors.cva import BandStats, CVADetector, otsu_threshold
from changedet.detectors.prepare import match_bands
from changedet.errors import BandMismatchError, EmptySceneError
from changedet.tiling import PAD_MODE
from changedet.types import ScoringDetector

log = logging.getLogger(__name__)

__all__ = ["EvalReport", "SceneResult", "cva_for_scene", "evaluate", "otsu_over", "score_scene"]


@dataclasses.dataclass(frozen=True)
class SceneResult:
    """One detector on one scene: threshold used, confusion counts and scores."""

    scene: str
    method: str
    threshold: float
    counts: metrics.Counts
    metrics: metrics.Metrics


@dataclasses.dataclass(frozen=True)
class EvalReport:
    """Per-scene and pooled metrics for one or more detectors on the same pixels.

    Attributes:
      results: One :class:`SceneResult` per (scene, method), scenes in input order.
      pooled: Method name -> metrics from the counts summed over all scenes.
      methods: Method names in column order (the detector first, then the baseline).
    """

    results: tuple[SceneResult, ...]
    pooled: dict[str, metrics.Metrics]
    methods: tuple[str, ...]

    def to_table(self) -> str:
        """A fixed-width text table: one row per scene and method, then the pooled rows."""
        head = f"{'scene':<28} {'method':<22} {'thr':>8} {'P':>6} {'R':>6} {'F1':>6} " \
               f"{'IoU':>6} {'OA':>6} {'kappa':>6}"
        lines = [head, "-" * len(head)]

        def row(scene: str, method: str, thr: str, m: metrics.Metrics) -> str:
            return (f"{scene[:28]:<28} {method[:22]:<22} {thr:>8} {m.precision:6.3f} "
                    f"{m.recall:6.3f} {m.f1:6.3f} {m.iou:6.3f} {m.overall_accuracy:6.3f} "
                    f"{m.kappa:6.3f}")

        for r in self.results:
            lines.append(row(r.scene, r.method, f"{r.threshold:.4g}", r.metrics))
        lines.append("-" * len(head))
        for method in self.methods:
            lines.append(row("POOLED", method, "", self.pooled[method]))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "methods": list(self.methods),
            "pooled": {k: m._asdict() for k, m in self.pooled.items()},
            "scenes": [
                {"scene": r.scene, "method": r.method, "threshold": r.threshold,
                 "counts": {k: int(v) for k, v in r.counts._asdict().items()},
                 **r.metrics._asdict()}
                for r in self.results
            ],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as an indented JSON string."""
        return json.dumps(self.to_dict(), indent=2)


def score_scene(detector: ScoringDetector, scene: Scene) -> np.ndarray:
    """Change score ``(h, w)`` float32 of a whole in-memory scene.

    The scene is mirrored by ``detector.halo_px`` on each side exactly as the pipeline mirrors
    its edge blocks (``tiling.PAD_MODE``, dask's ``reflect``) and scored with that context, so
    evaluation sees the same scores as ``changedet.run`` on the same pixels.
    """
    if hasattr(detector, "prepare_scene"):  # a LearnedDetector: bind it to this scene first
        detector = detector.prepare_scene(scene)
    halo = int(detector.halo_px)
    pad = ((0, 0), (halo, halo), (halo, halo))
    ok = scene.pixels_valid[None]
    fill = getattr(detector, "fill_values", None)  # as the pipeline fills invalid pixels
    fills = fill() if fill is not None else (np.float32(0), np.float32(0))
    before, after = (
        np.pad(np.where(ok, x.astype(np.float32), np.reshape(f, (-1, 1, 1))), pad, mode=PAD_MODE)
        for x, f in zip((scene.before, scene.after), fills, strict=True)
    )
    score = detector.score_block(before, after, context_px=halo)
    return np.asarray(score, dtype=np.float32)


def cva_for_scene(scene: Scene):
    """A :class:`changedet.detectors.cva.CVADetector` prepared with this scene's per-date statistics
    (mean and population std per band over the scene's valid pixels, as ``prepare`` computes)."""
    if not scene.valid.any():
        raise EmptySceneError(f"scene {scene.name!r} has no valid pixel; drop it from the set.")

    def stats(img: np.ndarray) -> BandStats:
        values = img[:, scene.valid].astype(np.float64)
        return BandStats(mean=values.mean(axis=1), std=values.std(axis=1))

    return CVADetector(before_stats=stats(scene.before), after_stats=stats(scene.after))


def otsu_over(scores: Sequence[np.ndarray], valids: Sequence[np.ndarray],
              num_bins: int = 256) -> float:
    """Otsu's threshold of the finite scores at the valid pixels of all ``scores`` together
    (per scene in :func:`evaluate`; over all training scenes in ``fit`` without validation)."""
    values = np.concatenate([s[v & np.isfinite(s)] for s, v in zip(scores, valids, strict=True)]
                            ).astype(np.float64)
    if values.size == 0:
        raise EmptySceneError("no valid pixel to compute an Otsu threshold on.")
    lo, hi = float(values.min()), float(values.max())
    counts, edges = np.histogram(values, bins=num_bins, range=(lo, max(hi, lo + 1e-6)))
    return float(otsu_threshold(counts, edges))


def _result(scene: Scene, method: str, score: np.ndarray, threshold: float | None,
            max_change: float | None = None) -> SceneResult:
    thr = otsu_over([score], [scene.valid]) if threshold is None else float(threshold)
    if max_change is not None:  # as run raises it on this scene
        thr = capped_threshold(np.where(scene.pixels_valid, score, np.nan), thr,
                               max_change).threshold
    counts = metrics.confusion_counts_np(score > thr, scene.label, scene.valid)
    return SceneResult(scene.name, method, thr, counts, metrics.scores_from_counts(*counts))


def _bands_fit(detector: ScoringDetector, found: tuple[str, ...]) -> bool:
    if not hasattr(detector, "prepare_scene"):
        wanted = tuple(getattr(detector, "band_ids", None) or found)
        return wanted == found
    try:
        match_bands(detector, found)  # type: ignore[arg-type]
    except BandMismatchError:
        return False
    return True


def evaluate(
    detector: ScoringDetector,
    scenes: Sequence[Scene],
    *,
    baseline: bool = True,
    threshold: float | None = None,
    max_change: float | None = None,
) -> EvalReport:
    """Evaluates ``detector`` (and the CVA baseline) on labelled scenes, on the same pixels.

    Args:
      detector: A pipeline detector, e.g. a
        :class:`changedet.detectors.learned.LearnedDetector`. Its ``band_ids`` (if set) must
        equal each scene's.
      scenes: Labelled scenes (raw values); ``valid=False`` pixels (nodata, unlabelled) are
        ignored by every method.
      baseline: Also evaluate CVA with a per-scene Otsu threshold.
      threshold: Override the detector's threshold (None: its own, else Otsu per scene).
      max_change: The scene change cap, as ``changedet.run`` takes it (default: the model's
        stored cap with its own threshold, none with ``threshold``; 1: none): each scene's
        threshold is raised as ``run`` raises it (:mod:`changedet.changecap`).

    Returns:
      An :class:`EvalReport`.

    Raises:
      BandMismatchError: A scene's bands differ from the detector's.
      EmptySceneError: No scene, or a scene without valid pixels.
    """
    if not scenes:
        raise EmptySceneError("evaluate needs at least one labelled scene; got none.")
    wanted = getattr(detector, "band_ids", None)
    thr = threshold if threshold is not None else detector.threshold
    cap = cap_in_force(max_change, getattr(detector, "max_change_fraction", None),
                       own_threshold=threshold is None)
    methods = [detector.name] + (["cva"] if baseline else [])
    results = []
    for scene in scenes:
        if wanted is not None and not _bands_fit(detector, tuple(scene.band_ids)):
            raise BandMismatchError(
                f"scene {scene.name!r} has bands {scene.band_ids} but {detector.name} expects "
                f"{tuple(wanted)}; load the scene with bands={tuple(wanted)}."
            )
        if not scene.valid.any():
            raise EmptySceneError(f"scene {scene.name!r} has no valid labelled pixel.")
        results.append(_result(scene, detector.name, score_scene(detector, scene), thr, cap))
        if baseline:
            cva = cva_for_scene(scene)
            results.append(_result(scene, "cva", score_scene(cva, scene), None))
        log.info("evaluated %s", scene.name)
    pooled = {}
    for method in methods:
        counts = metrics.sum_counts(*(r.counts for r in results if r.method == method))
        pooled[method] = metrics.scores_from_counts(*counts)
    return EvalReport(tuple(results), pooled, tuple(methods))
